//! Properties of the parser: printing and parsing are inverse on random programs, and no input,
//! however mangled, makes the parser panic or accept a truncated program.

use anetrain_mil::{
    parse_program, print_program, Arg, DType, Dialect, FloatLit, Function, Literal, Op, Param,
    Program, Scalar, Style, Type,
};
use proptest::prelude::*;
use proptest::test_runner::Config;

const EXAMPLE_A: &str = include_str!("fixtures/example_a.mil");
const EXAMPLE_B: &str = include_str!("fixtures/example_b.mil");
const EXAMPLE_C: &str = include_str!("fixtures/example_c.mil");
const FIXTURES: [&str; 3] = [EXAMPLE_A, EXAMPLE_B, EXAMPLE_C];

fn config() -> Config {
    Config {
        cases: 256,
        failure_persistence: None,
        ..Config::default()
    }
}

// --- random programs

/// Identifiers, including words the grammar gives a meaning to in other positions.
fn ident() -> impl Strategy<Value = String> {
    let reserved = prop::sample::select(vec![
        "tensor",
        "fp16",
        "string",
        "bool",
        "true",
        "false",
        "func",
        "program",
        "BLOBFILE",
        "path",
        "offset",
        "dict",
        "buildInfo",
        "const",
        "name",
        "_",
    ]);
    prop_oneof![
        8 => "[A-Za-z_][A-Za-z0-9_]{0,10}",
        1 => reserved.prop_map(String::from),
    ]
}

/// String contents, including quotes, backslashes, newlines and non-ASCII.
fn text() -> impl Strategy<Value = String> {
    prop_oneof!["[a-z@/._ -]{0,16}", r#"[a-z"\\/\n]{0,8}"#, any::<String>(),]
}

fn dtype() -> impl Strategy<Value = DType> {
    prop::sample::select(DType::ALL.to_vec())
}

fn dims(min: usize) -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(prop_oneof![4 => 0usize..1024, 1 => any::<usize>()], min..5)
}

fn ty() -> impl Strategy<Value = Type> {
    // A tensor type needs a non-empty shape: rank 0 is spelled, and parsed, as a scalar.
    prop_oneof![
        dtype().prop_map(Type::Scalar),
        (dtype(), dims(1)).prop_map(|(d, s)| Type::Tensor(d, s)),
    ]
}

fn float_lit() -> impl Strategy<Value = FloatLit> {
    let hand_picked = prop::sample::select(vec![
        "0.00001",
        "-0.5",
        "1.0",
        "-1",
        "0",
        "65504",
        "-65504",
        "0x1p-3",
        "-0x1.8p+1",
        "0X1P3",
        "0x.8p1",
        "1e-5",
        "1E+3",
        "-2.5e10",
        ".5",
        "5.",
        "+2.5",
        "0.125000",
        "1e999",
    ]);
    prop_oneof![
        (-1e6..1e6f64).prop_map(FloatLit::fixed6),
        any::<f64>()
            .prop_filter("finite", |v| v.is_finite())
            .prop_map(FloatLit::fixed6),
        hand_picked.prop_map(|t| FloatLit::from_text(t).expect("hand-picked float text")),
    ]
}

fn is_integer_text(text: &str) -> bool {
    let digits = text.strip_prefix(['-', '+']).unwrap_or(text);
    !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
}

/// A value of a `dtype` literal. The text only says "integer" by its spelling, so integers are
/// generated only for non-float dtypes and integer-spelled floats only for float dtypes.
fn scalar(dtype: DType) -> BoxedStrategy<Scalar> {
    let bool_ = any::<bool>().prop_map(Scalar::Bool);
    let str_ = text().prop_map(Scalar::Str);
    if dtype.is_float() {
        prop_oneof![8 => float_lit().prop_map(Scalar::Float), 1 => bool_, 1 => str_].boxed()
    } else {
        let float = float_lit()
            .prop_filter("spelled as a float", |f| !is_integer_text(&f.text))
            .prop_map(Scalar::Float);
        prop_oneof![6 => any::<i64>().prop_map(Scalar::Int), 1 => float, 2 => bool_, 2 => str_]
            .boxed()
    }
}

fn literal() -> impl Strategy<Value = Literal> {
    // Literal shapes may be empty: `fp16([1])` and `tensor<fp16, []>([1])` read back as rank 0.
    let scalar_lit = dtype()
        .prop_flat_map(|d| scalar(d).prop_map(move |value| Literal::Scalar { dtype: d, value }));
    let tensor_lit = (dtype(), dims(0)).prop_flat_map(|(d, shape)| {
        prop::collection::vec(scalar(d), 0..6).prop_map(move |values| Literal::Tensor {
            dtype: d,
            shape: shape.clone(),
            values,
        })
    });
    // Offsets above i64::MAX print as negative numbers (the IR stores integers as i64).
    let blob_lit =
        (dtype(), dims(0), text(), 0..=i64::MAX as u64).prop_map(|(dtype, shape, path, offset)| {
            Literal::Blob {
                dtype,
                shape,
                path,
                offset,
            }
        });
    prop_oneof![3 => scalar_lit, 2 => tensor_lit, 1 => blob_lit]
}

fn arg() -> impl Strategy<Value = Arg> {
    prop_oneof![
        3 => ident().prop_map(Arg::Var),
        1 => prop::collection::vec(ident(), 0..4).prop_map(Arg::Tuple),
        2 => literal().prop_map(Arg::Literal),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    (
        ident(),
        ident(),
        ty(),
        prop::collection::vec((ident(), arg()), 0..4),
        prop::collection::vec((ident(), literal()), 0..4),
    )
        .prop_map(|(kind, output, ty, args, attrs)| Op {
            kind,
            output,
            ty,
            args,
            attrs,
        })
}

fn function() -> impl Strategy<Value = Function> {
    (
        ident(),
        ident(),
        prop::collection::vec(
            (ident(), ty()).prop_map(|(name, ty)| Param { name, ty }),
            0..3,
        ),
        prop::collection::vec(op(), 0..5),
        prop::collection::vec(ident(), 0..3),
    )
        .prop_map(|(name, opset, inputs, ops, outputs)| Function {
            name,
            opset,
            inputs,
            ops,
            outputs,
        })
}

fn program() -> impl Strategy<Value = Program> {
    let dialect = prop_oneof![Just(Dialect::Ios18), Just(Dialect::Ios16)];
    let style = prop_oneof![Just(Style::Compact), Just(Style::Spaced)];
    (
        dialect,
        style,
        prop::collection::vec((text(), text()), 0..4),
        prop::collection::vec(function(), 0..3),
    )
        .prop_map(|(dialect, style, build_info, functions)| {
            // The style is read from the first keyword in a statement; with none, the text
            // cannot tell, and the parser says Compact.
            let has_keyword = functions
                .iter()
                .flat_map(|f| &f.ops)
                .any(|op| !op.args.is_empty() || !op.attrs.is_empty());
            Program {
                dialect,
                style: if has_keyword { style } else { Style::Compact },
                build_info,
                functions,
            }
        })
}

// --- mangled inputs

#[derive(Clone, Debug)]
enum Mutation {
    Delete { at: usize, len: usize },
    Insert { at: usize, text: String },
    Replace { at: usize, len: usize, text: String },
    Truncate { at: usize },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    // Positions and lengths are taken modulo the text's length when applied.
    let insert = prop_oneof![
        prop::sample::select(vec![
            "(",
            ")",
            "[",
            "]",
            "{",
            "}",
            "<",
            ">",
            ",",
            "=",
            ";",
            "->",
            "\"",
            "\\",
            "//",
            "-",
            ".",
            "e",
            "0x",
            "tensor<",
            "fp16(",
            "BLOBFILE(",
            "}\n}",
            "\n",
            " ",
            "é",
            "\u{0}",
        ])
        .prop_map(String::from),
        any::<String>(),
    ];
    prop_oneof![
        (any::<usize>(), 1..20usize).prop_map(|(at, len)| Mutation::Delete { at, len }),
        (any::<usize>(), insert.clone()).prop_map(|(at, text)| Mutation::Insert { at, text }),
        (any::<usize>(), 1..8usize, insert).prop_map(|(at, len, text)| Mutation::Replace {
            at,
            len,
            text
        }),
        any::<usize>().prop_map(|at| Mutation::Truncate { at }),
    ]
}

/// Applies a mutation to the bytes, so that it may cut characters in half; invalid UTF-8 is then
/// replaced as a reader of the file would.
fn apply(text: &str, mutation: &Mutation) -> String {
    let mut bytes = text.as_bytes().to_vec();
    let n = bytes.len();
    let clamp = |at: usize, len: usize| {
        let start = at % (n + 1);
        (start, (start + len).min(n))
    };
    match mutation {
        Mutation::Delete { at, len } => {
            let (start, end) = clamp(*at, *len);
            bytes.drain(start..end);
        }
        Mutation::Insert { at, text } => {
            let (start, _) = clamp(*at, 0);
            bytes.splice(start..start, text.bytes());
        }
        Mutation::Replace { at, len, text } => {
            let (start, end) = clamp(*at, *len);
            bytes.splice(start..end, text.bytes());
        }
        Mutation::Truncate { at } => bytes.truncate(at % (n + 1)),
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Soup of the dialect's own tokens, which reaches far deeper into the grammar than random text.
fn token_soup() -> impl Strategy<Value = String> {
    let token = prop::sample::select(vec![
        "program",
        "(",
        "1.3",
        "1.0",
        ")",
        "[",
        "buildInfo",
        "=",
        "dict",
        "<",
        "string",
        ",",
        ">",
        "{",
        "}",
        "\"k\"",
        "func",
        "main",
        "ios18",
        "tensor",
        "fp16",
        "int32",
        "uint64",
        "]",
        "1",
        "-1",
        "0x1p-3",
        "x",
        "->",
        ";",
        "const",
        "BLOBFILE",
        "path",
        "offset",
        "true",
        "\"v\\\"\"",
        "//c\n",
        "\n",
        " ",
    ]);
    prop::collection::vec(token, 0..80).prop_map(|ts| ts.concat())
}

/// What any input must satisfy: no panic (checked by running at all), an error position inside
/// the text, and a parse that survives printing unchanged.
fn check_any_input(text: &str) -> Result<(), TestCaseError> {
    match parse_program(text) {
        Ok(p) => {
            let printed = print_program(&p);
            let reparsed = parse_program(&printed);
            prop_assert_eq!(reparsed.as_ref(), Ok(&p), "printed:\n{}", printed);
        }
        Err(e) => {
            let lines: Vec<&str> = text.split('\n').collect();
            prop_assert!(e.line >= 1 && e.line <= lines.len(), "{} in {:?}", e, text);
            let width = lines[e.line - 1].chars().count();
            prop_assert!(
                e.column >= 1 && e.column <= width + 1,
                "{} in {:?}",
                e,
                text
            );
            prop_assert!(!e.message.is_empty());
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn parse_inverts_print_on_random_programs(p in program()) {
        let text = print_program(&p);
        let parsed = parse_program(&text);
        prop_assert_eq!(parsed.as_ref(), Ok(&p), "text:\n{}", text);
    }

    #[test]
    fn print_of_parse_is_byte_identical_on_printed_programs(p in program()) {
        let text = print_program(&p);
        let parsed = parse_program(&text).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(print_program(&parsed), text);
    }

    #[test]
    fn arbitrary_strings_never_panic(text in any::<String>()) {
        check_any_input(&text)?;
    }

    #[test]
    fn token_soup_never_panics(text in token_soup()) {
        check_any_input(&text)?;
    }

    #[test]
    fn mutated_fixtures_never_panic(
        which in 0..FIXTURES.len(),
        mutations in prop::collection::vec(mutation(), 1..4),
    ) {
        let mut text = FIXTURES[which].to_string();
        for m in &mutations {
            text = apply(&text, m);
        }
        check_any_input(&text)?;
    }

    #[test]
    fn mutated_random_programs_never_panic(p in program(), m in mutation()) {
        check_any_input(&apply(&print_program(&p), &m))?;
    }
}

/// Every strict prefix that lacks the final `}` is an error; the rest (only the closing `}`
/// and the newline) parse to the full program.
fn check_every_truncation(text: &str) {
    let last_brace = text.rfind('}').expect("a closing brace");
    let full = parse_program(text).expect("the whole text parses");
    for end in 0..=text.len() {
        let Some(prefix) = text.get(..end) else {
            continue;
        };
        match parse_program(prefix) {
            Ok(p) => {
                assert!(end > last_brace, "prefix of {end} bytes parsed:\n{prefix}");
                assert_eq!(p, full);
            }
            Err(e) => {
                assert!(end <= last_brace, "prefix of {end} bytes failed: {e}");
                if let Err(failure) = check_any_input(prefix) {
                    panic!("{failure}");
                }
            }
        }
    }
}

#[test]
fn truncating_example_a_at_every_byte_fails_until_the_final_brace() {
    check_every_truncation(EXAMPLE_A);
}

#[test]
fn truncating_every_fixture_at_every_byte_never_panics() {
    for text in [EXAMPLE_B, EXAMPLE_C] {
        check_every_truncation(text);
    }
}

#[test]
fn truncating_a_non_ascii_program_at_every_char_never_panics() {
    let text = EXAMPLE_A.replace("\"valid\"", "\"välid ☃\"");
    check_every_truncation(&text);
}

#[test]
fn truncation_at_a_token_boundary_reports_end_of_input() {
    // Cut right after each `;`: the next thing is missing, not malformed.
    for (i, _) in EXAMPLE_A.match_indices(';') {
        let e = parse_program(&EXAMPLE_A[..=i]).expect_err("truncated");
        assert!(
            e.message.starts_with("unexpected end of input, expected "),
            "{e}"
        );
    }
}

#[test]
fn deeply_repeated_brackets_do_not_overflow_the_stack() {
    let opens = "(".repeat(100_000);
    let text = format!("program(1.3)\n{{\n func f<x>() {{\n fp16 a = b(c={opens}");
    assert!(parse_program(&text).is_err());
    let brackets = "[".repeat(100_000);
    let text = format!("program(1.3)\n{{\n func f<x>() {{\n fp16 a = b()[v=fp16({brackets}");
    assert!(parse_program(&text).is_err());
}
