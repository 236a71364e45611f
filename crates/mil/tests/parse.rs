//! The parser reads back what the printer writes, byte for byte, and reads the hand-written
//! forms the spec quotes (spaced benchmarks, the ios16 dialect) into the expected IR.

use anetrain_mil::{
    examples, parse_program, print_program, Arg, DType, Dialect, FloatLit, FunctionBuilder,
    Literal, Program, Scalar, Style, Type,
};

const EXAMPLE_A: &str = include_str!("fixtures/example_a.mil");
const EXAMPLE_B: &str = include_str!("fixtures/example_b.mil");
const EXAMPLE_C: &str = include_str!("fixtures/example_c.mil");

fn parse(text: &str) -> Program {
    parse_program(text).unwrap_or_else(|e| panic!("parse failed: {e}\n{text}"))
}

/// Printing a parsed text and parsing that again changes nothing.
fn assert_print_stable(text: &str) {
    let once = print_program(&parse(text));
    let twice = print_program(&parse(&once));
    assert_eq!(once, twice);
    assert_eq!(parse(&once), parse(text));
}

fn t(dtype: DType, shape: &[usize]) -> Type {
    Type::tensor(dtype, shape.to_vec())
}

fn float(dtype: DType, text: &str) -> Literal {
    Literal::float(dtype, FloatLit::from_text(text).expect("valid float text"))
}

fn blob(dtype: DType, shape: &[usize], path: &str, offset: u64) -> Literal {
    Literal::Blob {
        dtype,
        shape: shape.to_vec(),
        path: path.to_string(),
        offset,
    }
}

#[test]
fn fixtures_print_back_byte_identical() {
    for text in [EXAMPLE_A, EXAMPLE_B, EXAMPLE_C] {
        assert_eq!(print_program(&parse(text)), text);
    }
}

#[test]
fn fixtures_parse_to_the_builders_ir() {
    assert_eq!(parse(EXAMPLE_A), examples::conv_fp32_io());
    assert_eq!(parse(EXAMPLE_B), examples::dynamic_matmul(64, 128, 32));
    assert_eq!(parse(EXAMPLE_C), examples::final_rmsnorm(768, 256));
}

#[test]
fn fixtures_are_compact_ios18() {
    let p = parse(EXAMPLE_A);
    assert_eq!(p.dialect, Dialect::Ios18);
    assert_eq!(p.style, Style::Compact);
    assert_eq!(p.build_info, Program::default_build_info(Dialect::Ios18));
}

/// The int8 lines of spec 2.7, in the benchmarks' spaced style.
const SPACED_INT8_BODY: &str = r#"        fp16 q_scale = const()[name = string("q_scale"), val = fp16(0x1p-3)];
        string q_dtype = const()[name = string("q_dtype"), val = string("int8")];
        fp16 dq_scale = const()[name = string("dq_scale"), val = fp16(0x1p-3)];
        tensor<fp16, [512, 512, 1, 1]> W0 = constexpr_affine_dequantize()[axis = int32(0), name = string("W0"), quantized_data = tensor<int8, [512, 512, 1, 1]>(BLOBFILE(path = string("@model_path/weights/weight.bin"), offset = uint64(64))), scale = fp16(0x1p-3), zero_point = int8(0)];
        tensor<fp16, [1, 512, 64, 64]> c0 = conv(weight = W0, x = x)[name = string("c0")];
        tensor<int8, [1, 512, 64, 64]> q0 = quantize(input = c0, output_dtype = q_dtype, scale = q_scale)[name = string("q0")];
        tensor<fp16, [1, 512, 64, 64]> dq0 = dequantize(input = q0, scale = dq_scale)[name = string("dq0")];
"#;

fn spaced_int8_text(indent: &str) -> String {
    let header = EXAMPLE_A.lines().take(3).collect::<Vec<_>>().join("\n");
    let body: String = SPACED_INT8_BODY
        .lines()
        .map(|l| format!("{indent}{}\n", l.trim_start()))
        .collect();
    format!(
        "{header}\n    func main<ios18>(tensor<fp16, [1, 512, 64, 64]> x) {{\n{body}    }} -> (dq0);\n}}\n"
    )
}

fn spaced_int8_ir() -> Program {
    let mut b = FunctionBuilder::new("main", "ios18");
    let act = t(DType::Fp16, &[1, 512, 64, 64]);
    let x = b.input("x", act.clone());
    let q_scale = b.constant("q_scale", float(DType::Fp16, "0x1p-3"));
    let q_dtype = b.constant("q_dtype", Literal::string("int8"));
    let dq_scale = b.constant("dq_scale", float(DType::Fp16, "0x1p-3"));
    let w0 = b.attr_op(
        "constexpr_affine_dequantize",
        "W0",
        t(DType::Fp16, &[512, 512, 1, 1]),
        vec![
            ("axis", Literal::int32(0)),
            (
                "quantized_data",
                blob(
                    DType::Int8,
                    &[512, 512, 1, 1],
                    "@model_path/weights/weight.bin",
                    64,
                ),
            ),
            ("scale", float(DType::Fp16, "0x1p-3")),
            (
                "zero_point",
                Literal::Scalar {
                    dtype: DType::Int8,
                    value: Scalar::Int(0),
                },
            ),
        ],
    );
    let c0 = b.op(
        "conv",
        "c0",
        act.clone(),
        vec![("weight", (&w0).into()), ("x", (&x).into())],
    );
    let q0 = b.op(
        "quantize",
        "q0",
        t(DType::Int8, &[1, 512, 64, 64]),
        vec![
            ("input", (&c0).into()),
            ("output_dtype", (&q_dtype).into()),
            ("scale", (&q_scale).into()),
        ],
    );
    let dq0 = b.op(
        "dequantize",
        "dq0",
        act,
        vec![("input", (&q0).into()), ("scale", (&dq_scale).into())],
    );
    b.output(&dq0);
    Program::single(Dialect::Ios18, Style::Spaced, b.finish())
}

#[test]
fn spaced_int8_example_parses_to_expected_ir() {
    let p = parse(&spaced_int8_text("        "));
    assert_eq!(p, spaced_int8_ir());
    let Some(Literal::Scalar {
        value: Scalar::Float(f),
        ..
    }) = p.functions[0].ops[0].attr("val")
    else {
        panic!("q_scale is not a float scalar");
    };
    assert_eq!(f.value, 0.125);
    assert_eq!(f.text, "0x1p-3");
}

#[test]
fn spaced_int8_example_prints_back_byte_identical() {
    let text = spaced_int8_text("        ");
    assert_eq!(print_program(&parse(&text)), text);
}

#[test]
fn spaced_int8_example_with_benchmark_indent_is_stable() {
    // `ane_int8_bench.m` indents statements by 12; the printer uses 8.
    let text = spaced_int8_text("            ");
    assert_eq!(parse(&text), spaced_int8_ir());
    assert_eq!(print_program(&parse(&text)), spaced_int8_text("        "));
    assert_print_stable(&text);
}

/// Spec 2.9: `program(1.0)`, `ios16`, scalars as rank-0 tensors, fp16 I/O and `identity`.
const IOS16_TEXT: &str = r#"program(1.0)
[buildInfo = dict<tensor<string, []>, tensor<string, []>>({{"coremlc-version", "3505.4.1"}})]
{
    func main<ios16>(tensor<fp16, [1, 64, 1, 32]> x) {
        tensor<string, []> pt = const()[name=tensor<string, []>("pt"), val=tensor<string, []>("valid")];
        tensor<int32, [2]> st = const()[name=tensor<string, []>("st"), val=tensor<int32, [2]>([1,1])];
        tensor<int32, [4]> pd = const()[name=tensor<string, []>("pd"), val=tensor<int32, [4]>([0,0,0,0])];
        tensor<int32, [2]> dl = const()[name=tensor<string, []>("dl"), val=tensor<int32, [2]>([1,1])];
        tensor<int32, []> gr = const()[name=tensor<string, []>("gr"), val=tensor<int32, []>(1)];
        tensor<fp16, [64,64,1,1]> W = const()[name=tensor<string, []>("W"), val=tensor<fp16, [64,64,1,1]>(BLOBFILE(path=tensor<string, []>("@model_path/weights/weight.bin"), offset=tensor<uint64, []>(64)))];
        tensor<fp16, [1,64,1,32]> y = conv(dilations=dl,groups=gr,pad=pd,pad_type=pt,strides=st,weight=W,x=x)[name=tensor<string, []>("conv")];
        tensor<bool, []> kd = const()[name=tensor<string, []>("kd"), val=tensor<bool, []>(true)];
        tensor<fp16, []> s = const()[name=tensor<string, []>("s"), val=tensor<fp16, []>(0.125000)];
        tensor<fp16, [1,64,1,32]> ys = mul(x=y,y=s)[name=tensor<string, []>("ys")];
        tensor<fp16, [1,64,1,32]> out = identity(x=ys)[name=tensor<string, []>("out")];
    } -> (out);
}
"#;

fn ios16_ir() -> Program {
    let mut b = FunctionBuilder::new("main", "ios16");
    let act = t(DType::Fp16, &[1, 64, 1, 32]);
    let x = b.input("x", act.clone());
    let pt = b.constant("pt", Literal::string("valid"));
    let st = b.constant("st", Literal::int32_tensor(&[1, 1]));
    let pd = b.constant("pd", Literal::int32_tensor(&[0, 0, 0, 0]));
    let dl = b.constant("dl", Literal::int32_tensor(&[1, 1]));
    let gr = b.constant("gr", Literal::int32(1));
    let w = b.constant(
        "W",
        blob(
            DType::Fp16,
            &[64, 64, 1, 1],
            "@model_path/weights/weight.bin",
            64,
        ),
    );
    let y = b.op_named(
        "conv",
        "y",
        "conv",
        act.clone(),
        vec![
            ("dilations", (&dl).into()),
            ("groups", (&gr).into()),
            ("pad", (&pd).into()),
            ("pad_type", (&pt).into()),
            ("strides", (&st).into()),
            ("weight", (&w).into()),
            ("x", (&x).into()),
        ],
    );
    b.constant("kd", Literal::bool(true));
    let s = b.constant("s", Literal::float(DType::Fp16, FloatLit::fixed6(0.125)));
    let ys = b.op(
        "mul",
        "ys",
        act.clone(),
        vec![("x", (&y).into()), ("y", (&s).into())],
    );
    let out = b.op("identity", "out", act, vec![("x", (&ys).into())]);
    b.output(&out);
    Program::single(Dialect::Ios16, Style::Compact, b.finish())
}

#[test]
fn ios16_example_parses_to_expected_ir() {
    let p = parse(IOS16_TEXT);
    assert_eq!(p, ios16_ir());
    assert_eq!(p.functions[0].ops[4].ty, Type::Scalar(DType::Int32));
}

#[test]
fn ios16_example_prints_back_byte_identical() {
    assert_eq!(print_program(&parse(IOS16_TEXT)), IOS16_TEXT);
}

#[test]
fn ios16_example_reformatted_is_stable() {
    let reformatted = IOS16_TEXT
        .replace("=", " = ")
        .replace(", ", ",")
        .replace("    ", "\t");
    assert_eq!(parse(&reformatted).style, Style::Spaced);
    assert_print_stable(&reformatted);
    let mut p = parse(&reformatted);
    p.style = Style::Compact;
    assert_eq!(p, ios16_ir());
}

#[test]
fn ios18_scalars_in_an_ios16_program_print_as_rank0_tensors() {
    let text = IOS16_TEXT.replace("tensor<int32, []>", "int32");
    assert_eq!(parse(&text), ios16_ir());
    assert_eq!(print_program(&parse(&text)), IOS16_TEXT);
}

#[test]
fn whitespace_and_comments_are_insignificant() {
    let noisy = EXAMPLE_B
        .replace(',', " ,\n\t ")
        .replace('(', "(  // comment ( [ {\n")
        .replace(';', " ;\r\n// a whole-line comment\n\n")
        .replace('[', "[ ")
        .replace("]>", "] >");
    assert_eq!(parse(&noisy), parse(EXAMPLE_B));
}

#[test]
fn minimal_whitespace_still_parses() {
    let tight = EXAMPLE_C
        .replace(", ", ",")
        .replace("\n", "")
        .replace("    ", "")
        .replace("> ", ">")
        .replace(") {", "){")
        .replace("} -> (", "}->(");
    assert_eq!(parse(&tight), parse(EXAMPLE_C));
}

#[test]
fn style_is_read_from_the_first_keyword_in_a_statement() {
    let spaced = EXAMPLE_A.replacen("name=string(\"pt\")", "name = string(\"pt\")", 1);
    assert_eq!(parse(&spaced).style, Style::Spaced);
    // Only the first one counts.
    let later = EXAMPLE_A.replacen("name=string(\"st\")", "name = string(\"st\")", 1);
    assert_eq!(parse(&later).style, Style::Compact);
    // Space on one side is not ` = `.
    let one_side = EXAMPLE_A.replacen("name=string(\"pt\")", "name =string(\"pt\")", 1);
    assert_eq!(parse(&one_side).style, Style::Compact);
}

#[test]
fn program_without_statements_is_compact() {
    let text = "program(1.3)\n{\n    func f<ios18>() {\n    } -> ();\n}\n";
    let p = parse(text);
    assert_eq!(p.style, Style::Compact);
    assert!(p.build_info.is_empty());
    assert_eq!(p.functions[0].inputs, vec![]);
    assert_eq!(p.functions[0].outputs, Vec::<String>::new());
}

#[test]
fn several_functions_and_outputs_and_tuples() {
    let text = r#"program(1.3)
[buildInfo = dict<string, string>({})]
{
    func first<ios18>(tensor<fp16, [1, 4, 1, 2]> q, tensor<fp16, [1, 4, 1, 2]> k, fp16 s) {
        int32 ax = const()[name=string("ax"), val=int32(1)];
        bool il = const()[name=string("il"), val=bool(false)];
        tensor<fp16, [1,8,1,2]> c = concat(axis=ax,interleave=il,values=(q,k))[name=string("c")];
    } -> (c, q, k);
    func second<ios17>() {
    } -> ();
}
"#;
    let p = parse(text);
    assert_eq!(p.functions.len(), 2);
    let f = &p.functions[0];
    assert_eq!(f.name, "first");
    assert_eq!(f.inputs[2].ty, Type::Scalar(DType::Fp16));
    assert_eq!(f.outputs, vec!["c", "q", "k"]);
    assert_eq!(
        f.ops[2].arg("values"),
        Some(&Arg::Tuple(vec!["q".to_string(), "k".to_string()]))
    );
    assert_eq!(p.functions[1].opset, "ios17");
    assert_eq!(print_program(&p), text);
}

#[test]
fn literal_forms() {
    let text = r#"program(1.3)
[buildInfo = dict<string, string>({})]
{
    func main<ios18>() {
        fp16 a = const()[val=fp16(-1), i=int32(-1), u=uint64(18), e=fp32(1e-5), h=fp16(-0x1.8p+1)];
        string s = const()[val=string("q\"uo\\te // not a comment")];
        tensor<fp16, [1,1,2,2]> m = const()[val=tensor<fp16, [1,1,2,2]>([0,-65504,0.5,1E+3])];
        tensor<bool, [2]> b = const()[val=tensor<bool, [2]>([true,false])];
        tensor<string, [2]> n = const()[val=tensor<string, [2]>(["a",""])];
        tensor<int32, [0]> z = const()[val=tensor<int32, [0]>([])];
        fp16 v = f(fp16=fp16,tensor=tensor,x=fp16(1),y=tensor<int32, [1]>([2]))[];
    } -> (a);
}
"#;
    let p = parse(text);
    let ops = &p.functions[0].ops;
    let attr = |op: usize, key: &str| ops[op].attr(key).expect("attribute").clone();
    let fl = |text: &str| Scalar::Float(FloatLit::from_text(text).expect("float"));
    assert_eq!(
        attr(0, "val"),
        Literal::Scalar {
            dtype: DType::Fp16,
            value: fl("-1")
        }
    );
    assert_eq!(attr(0, "i"), Literal::int32(-1));
    assert_eq!(attr(0, "u"), Literal::uint64(18));
    assert_eq!(attr(0, "e"), float(DType::Fp32, "1e-5"));
    assert_eq!(attr(0, "h"), float(DType::Fp16, "-0x1.8p+1"));
    assert_eq!(attr(1, "val").as_str(), Some("q\"uo\\te // not a comment"));
    assert_eq!(
        attr(2, "val"),
        Literal::Tensor {
            dtype: DType::Fp16,
            shape: vec![1, 1, 2, 2],
            values: vec![fl("0"), fl("-65504"), fl("0.5"), fl("1E+3")],
        }
    );
    assert_eq!(
        attr(3, "val"),
        Literal::Tensor {
            dtype: DType::Bool,
            shape: vec![2],
            values: vec![Scalar::Bool(true), Scalar::Bool(false)],
        }
    );
    assert_eq!(
        attr(4, "val"),
        Literal::Tensor {
            dtype: DType::String,
            shape: vec![2],
            values: vec![Scalar::Str("a".into()), Scalar::Str(String::new())],
        }
    );
    assert_eq!(attr(5, "val"), Literal::int32_tensor(&[]));
    // Dtype names and `tensor` are fine as variable names; only `name(` or `tensor<` is a literal.
    assert_eq!(ops[6].arg("fp16"), Some(&Arg::Var("fp16".into())));
    assert_eq!(ops[6].arg("tensor"), Some(&Arg::Var("tensor".into())));
    assert_eq!(
        ops[6].arg("x"),
        Some(&Arg::Literal(float(DType::Fp16, "1")))
    );
    assert_eq!(
        ops[6].arg("y"),
        Some(&Arg::Literal(Literal::int32_tensor(&[2])))
    );
    assert!(ops[6].attrs.is_empty());
    assert_eq!(print_program(&p), text);
}

#[test]
fn parser_does_not_require_op_names() {
    let text = EXAMPLE_A.replace("[name=string(\"cin\")]", "[]");
    let p = parse(&text);
    assert_eq!(p.functions[0].ops[6].name(), None);
}

#[test]
fn utf8_strings_and_raw_newlines_round_trip() {
    let text = EXAMPLE_A.replace("\"valid\"", "\"vä\nlid ☃\"");
    let p = parse(&text);
    assert_eq!(
        p.functions[0].ops[0].attr("val").and_then(Literal::as_str),
        Some("vä\nlid ☃")
    );
    assert_eq!(print_program(&p), text);
}

/// A program moved to the M1's ios16 dialect prints as `program(1.0)` with the ios16 opset and
/// rank-0 scalars, reads back to the same program, and type-checks as before.
#[test]
fn a_program_moves_to_the_ios16_dialect_and_back() {
    let ios18 = examples::final_rmsnorm(64, 32);
    let ios16 = ios18.clone().into_dialect(Dialect::Ios16);
    let text = print_program(&ios16);
    assert!(text.starts_with("program(1.0)\n"), "{text}");
    assert!(text.contains("func main<ios16>"), "{text}");
    assert!(text.contains("tensor<fp16, []>"), "{text}");
    assert!(!text.contains("coremltools-version"), "{text}");
    assert_eq!(parse(&text), ios16);
    let check = anetrain_mil::check::check_program;
    let (a, b) = (check(&ios18).unwrap(), check(&ios16).unwrap());
    assert_eq!(a.signature, b.signature);
    assert_eq!(ios16.into_dialect(Dialect::Ios18), ios18);
}
