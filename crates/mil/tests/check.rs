//! The type and shape checker: the spec's examples pass with the expected types, every op infers
//! hand-computed output types, and every kind of mistake is reported with the function, op,
//! argument and shapes involved.

#![allow(clippy::result_large_err)]

use anetrain_mil::{
    check_function, check_program, examples, infer_op_type, Arg, CheckError, CheckedFunction,
    DType, Dialect, FloatLit, Function, FunctionBuilder, Literal, Op, Param, Program, Scalar,
    Style, Type,
};
use proptest::prelude::*;
use std::collections::HashMap;

// ---------------------------------------------------------------------------------------------
// Helpers

fn t(dtype: DType, shape: &[usize]) -> Type {
    Type::tensor(dtype, shape.to_vec())
}

fn f16(shape: &[usize]) -> Type {
    t(DType::Fp16, shape)
}

fn ints(values: &[i32]) -> Arg {
    Arg::Literal(Literal::int32_tensor(values))
}

fn int(value: i32) -> Arg {
    Arg::Literal(Literal::int32(value))
}

fn boolean(value: bool) -> Arg {
    Arg::Literal(Literal::bool(value))
}

fn bools(values: &[bool]) -> Arg {
    Arg::Literal(Literal::Tensor {
        dtype: DType::Bool,
        shape: vec![values.len()],
        values: values.iter().map(|&b| Scalar::Bool(b)).collect(),
    })
}

fn string(value: &str) -> Arg {
    Arg::Literal(Literal::string(value))
}

fn fp16_scalar(value: f64) -> Literal {
    Literal::float(DType::Fp16, FloatLit::fixed6(value))
}

fn var(name: &str) -> Arg {
    Arg::Var(name.to_string())
}

fn blob(dtype: DType, shape: &[usize]) -> Literal {
    Literal::Blob {
        dtype,
        shape: shape.to_vec(),
        path: "@model_path/weights/w.bin".to_string(),
        offset: 64,
    }
}

/// A function `main` with the given inputs, `const` ops, then one op of `kind` (op name
/// "the_op") defining `y` with the declared type; it returns `y`.
fn function(
    inputs: &[(&str, Type)],
    consts: &[(&str, Literal)],
    kind: &str,
    args: Vec<(&str, Arg)>,
    declared: Type,
) -> Function {
    let mut b = FunctionBuilder::new("main", "ios18");
    for (name, ty) in inputs {
        b.input(name, ty.clone());
    }
    for (name, lit) in consts {
        b.constant(name, lit.clone());
    }
    let y = b.op_named(kind, "y", "the_op", declared, args);
    b.output(&y);
    b.finish()
}

/// Asserts that the op infers `expected`: the function checks with `y` declared as `expected`,
/// and `infer_op_type` agrees.
fn assert_infers(
    inputs: &[(&str, Type)],
    consts: &[(&str, Literal)],
    kind: &str,
    args: Vec<(&str, Arg)>,
    expected: Type,
) {
    let f = function(inputs, consts, kind, args, expected.clone());
    let checked = check_function(&f).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(checked.types["y"], expected);
    let op = f.ops.last().expect("the op under test");
    assert_eq!(
        infer_op_type(op, &checked.types, &checked.consts),
        Ok(expected)
    );
}

/// Asserts that the op is rejected, and that the error names the op, its kind, its output, the
/// argument, and every fragment (shapes, values) in its Display text.
fn assert_rejects(
    inputs: &[(&str, Type)],
    consts: &[(&str, Literal)],
    kind: &str,
    args: Vec<(&str, Arg)>,
    arg: &str,
    fragments: &[&str],
) -> CheckError {
    // The declared type is never reached: argument errors come first.
    let f = function(inputs, consts, kind, args, Type::Scalar(DType::Bool));
    let e = check_function(&f).expect_err("the op should be rejected");
    let text = e.to_string();
    let op_part = format!("function main, op \"the_op\" ({kind} → y), argument {arg}: ");
    assert!(
        text.starts_with(&op_part),
        "{text:?} should start with {op_part:?}"
    );
    for fragment in fragments {
        assert!(
            text.contains(fragment),
            "{text:?} should contain {fragment:?}"
        );
    }
    assert_eq!(e.arg.as_deref(), Some(arg));
    assert_eq!(e.op_kind.as_deref(), Some(kind));
    assert_eq!(e.op_name.as_deref(), Some("the_op"));
    assert_eq!(e.output.as_deref(), Some("y"));
    assert_eq!(e.op_index, Some(consts.len()));
    e
}

fn op(kind: &str, output: &str, name: &str, ty: Type, args: Vec<(&str, Arg)>) -> Op {
    Op {
        kind: kind.to_string(),
        output: output.to_string(),
        ty,
        args: args.into_iter().map(|(k, a)| (k.to_string(), a)).collect(),
        attrs: vec![("name".to_string(), Literal::string(name))],
    }
}

fn raw_function(inputs: &[(&str, Type)], ops: Vec<Op>, outputs: &[&str]) -> Function {
    Function {
        name: "main".to_string(),
        opset: "ios18".to_string(),
        inputs: inputs
            .iter()
            .map(|(n, ty)| Param {
                name: n.to_string(),
                ty: ty.clone(),
            })
            .collect(),
        ops,
        outputs: outputs.iter().map(|s| s.to_string()).collect(),
    }
}

// ---------------------------------------------------------------------------------------------
// The spec's examples

fn param(name: &str, ty: Type) -> Param {
    Param {
        name: name.to_string(),
        ty,
    }
}

#[test]
fn example_a_conv_fp32_io_checks() {
    let checked = check_program(&examples::conv_fp32_io()).unwrap_or_else(|e| panic!("{e}"));
    let io = t(DType::Fp32, &[1, 64, 1, 32]);
    assert_eq!(checked.signature.inputs, vec![param("x", io.clone())]);
    assert_eq!(checked.signature.outputs, vec![param("y", io)]);
    assert_eq!(checked.types["x16"], f16(&[1, 64, 1, 32]));
    assert_eq!(checked.types["W"], f16(&[64, 64, 1, 1]));
    assert_eq!(checked.types["y16"], f16(&[1, 64, 1, 32]));
    assert_eq!(checked.types["pt"], Type::Scalar(DType::String));
    assert_eq!(checked.consts["gr"], Literal::int32(1));
    assert_eq!(checked.consts["to16"], Literal::string("fp16"));
    assert!(matches!(checked.consts["W"], Literal::Blob { .. }));
    // Inputs and every op output have a type; only const ops have literals.
    assert_eq!(checked.types.len(), 1 + 11);
    assert_eq!(checked.consts.len(), 8);
    assert!(!checked.consts.contains_key("y16"));
}

#[test]
fn example_b_dynamic_matmul_checks() {
    let checked =
        check_program(&examples::dynamic_matmul(64, 128, 32)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        checked.signature.inputs,
        vec![param("x", f16(&[1, 64, 1, 160]))]
    );
    assert_eq!(
        checked.signature.outputs,
        vec![param("mm_y", f16(&[1, 128, 1, 32]))]
    );
    assert_eq!(checked.types["mm_wt"], f16(&[1, 64, 1, 128]));
    assert_eq!(checked.types["mm_a3"], f16(&[1, 1, 32, 64]));
    assert_eq!(checked.types["mm_yh"], f16(&[1, 1, 32, 128]));
    assert_eq!(checked.types["mm_yt"], f16(&[1, 1, 128, 32]));
    assert_eq!(checked.types["bF"], Type::Scalar(DType::Bool));
    // Other sizes work too.
    check_program(&examples::dynamic_matmul(16, 48, 8)).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn example_c_final_rmsnorm_checks() {
    let checked =
        check_program(&examples::final_rmsnorm(768, 256)).unwrap_or_else(|e| panic!("{e}"));
    let full = f16(&[1, 768, 1, 256]);
    assert_eq!(checked.signature.inputs, vec![param("x", full.clone())]);
    assert_eq!(checked.signature.outputs, vec![param("out", full.clone())]);
    assert_eq!(checked.types["sq"], full);
    assert_eq!(checked.types["ss"], f16(&[1, 1, 1, 256]));
    assert_eq!(checked.types["rrms"], f16(&[1, 1, 1, 256]));
    assert_eq!(checked.types["rw"], f16(&[1, 768, 1, 1]));
    assert_eq!(checked.types["invd"], Type::Scalar(DType::Fp16));
}

// ---------------------------------------------------------------------------------------------
// const and cast

#[test]
fn const_has_its_literal_type() {
    let mut b = FunctionBuilder::new("main", "ios18");
    let m = b.constant(
        "m",
        Literal::Tensor {
            dtype: DType::Fp16,
            shape: vec![1, 1, 2, 2],
            values: vec![
                Scalar::Int(0),
                Scalar::Float(FloatLit::from_text("-65504").unwrap()),
                Scalar::Int(0),
                Scalar::Int(0),
            ],
        },
    );
    b.output(&m);
    let checked = check_function(&b.finish()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(checked.types["m"], f16(&[1, 1, 2, 2]));
}

#[test]
fn const_with_a_malformed_literal_is_rejected() {
    let mut b = FunctionBuilder::new("main", "ios18");
    let bad = Literal::Tensor {
        dtype: DType::Int32,
        shape: vec![4],
        values: vec![Scalar::Int(1), Scalar::Int(2)],
    };
    let c = b.constant("c", bad);
    b.output(&c);
    let e = check_function(&b.finish()).unwrap_err();
    assert_eq!(e.arg.as_deref(), Some("val"));
    let text = e.to_string();
    assert!(
        text.starts_with("function main, op \"c\" (const → c), argument val: "),
        "{text}"
    );
    assert!(text.contains("tensor<int32, [4]> holds 2 values"), "{text}");
}

#[test]
fn cast_changes_the_dtype_only() {
    assert_infers(
        &[("x", t(DType::Fp32, &[1, 64, 1, 32]))],
        &[],
        "cast",
        vec![("dtype", string("fp16")), ("x", var("x"))],
        f16(&[1, 64, 1, 32]),
    );
    assert_infers(
        &[("x", f16(&[3]))],
        &[],
        "cast",
        vec![("dtype", string("int32")), ("x", var("x"))],
        t(DType::Int32, &[3]),
    );
}

#[test]
fn cast_to_an_unknown_dtype_is_rejected() {
    assert_rejects(
        &[("x", f16(&[4]))],
        &[],
        "cast",
        vec![("dtype", string("fp64")), ("x", var("x"))],
        "dtype",
        &["\"fp64\"", "fp16, fp32"],
    );
}

// ---------------------------------------------------------------------------------------------
// conv

#[test]
fn grouped_strided_padded_conv() {
    // H = W = floor((16 + 1 + 1 - 1·(3-1) - 1) / 2) + 1 = 8; Cin 64 = 16 × groups 4.
    assert_infers(
        &[("x", f16(&[1, 64, 16, 16]))],
        &[("w", blob(DType::Fp16, &[32, 16, 3, 3]))],
        "conv",
        vec![
            ("dilations", ints(&[1, 1])),
            ("groups", int(4)),
            ("pad", ints(&[1, 1, 1, 1])),
            ("pad_type", string("custom")),
            ("strides", ints(&[2, 2])),
            ("weight", var("w")),
            ("x", var("x")),
        ],
        f16(&[1, 32, 8, 8]),
    );
}

#[test]
fn conv_same_padding_and_dilation() {
    // "same": W = ceil(33 / 2) = 17, whatever the kernel.
    assert_infers(
        &[("x", f16(&[2, 8, 1, 33])), ("w", f16(&[8, 8, 1, 3]))],
        &[],
        "conv",
        vec![
            ("pad_type", string("same")),
            ("strides", ints(&[1, 2])),
            ("weight", var("w")),
            ("x", var("x")),
        ],
        f16(&[2, 8, 1, 17]),
    );
    // "valid" with dilation 3: the 3-tap kernel spans 7, so W = 20 - 7 + 1 = 14. Pads are
    // ignored unless pad_type is "custom".
    assert_infers(
        &[
            ("x", f16(&[1, 4, 1, 20])),
            ("w", f16(&[6, 4, 1, 3])),
            ("b", f16(&[6])),
        ],
        &[],
        "conv",
        vec![
            ("bias", var("b")),
            ("dilations", ints(&[1, 3])),
            ("pad", ints(&[5, 5, 5, 5])),
            ("weight", var("w")),
            ("x", var("x")),
        ],
        f16(&[1, 6, 1, 14]),
    );
}

#[test]
fn conv_channel_mismatch_names_both_shapes() {
    let mut b = FunctionBuilder::new("main", "ios18");
    let x = b.input("x", f16(&[1, 64, 1, 32]));
    let w = b.constant("W", blob(DType::Fp16, &[64, 32, 1, 1]));
    let gr = b.constant("gr", Literal::int32(1));
    let y = b.op_named(
        "conv",
        "y16",
        "conv",
        f16(&[1, 64, 1, 32]),
        vec![
            ("groups", (&gr).into()),
            ("weight", (&w).into()),
            ("x", (&x).into()),
        ],
    );
    b.output(&y);
    let e = check_function(&b.finish()).unwrap_err();
    assert_eq!(
        e.to_string(),
        "function main, op \"conv\" (conv → y16), argument weight: input channels 64 \
         (x: tensor<fp16, [1, 64, 1, 32]>) do not match weight's 32 × groups 1 \
         (weight: tensor<fp16, [64, 32, 1, 1]>)"
    );
    assert_eq!(e.op_index, Some(2));
}

#[test]
fn conv_groups_must_divide_output_channels() {
    assert_rejects(
        &[("x", f16(&[1, 64, 1, 8])), ("w", f16(&[30, 16, 1, 1]))],
        &[],
        "conv",
        vec![("groups", int(4)), ("weight", var("w")), ("x", var("x"))],
        "groups",
        &["output channels 30", "[30, 16, 1, 1]", "groups 4"],
    );
}

#[test]
fn conv_strides_need_one_per_spatial_axis() {
    assert_rejects(
        &[("x", f16(&[1, 8, 1, 8])), ("w", f16(&[8, 8, 1, 1]))],
        &[],
        "conv",
        vec![
            ("strides", ints(&[1, 1, 1])),
            ("weight", var("w")),
            ("x", var("x")),
        ],
        "strides",
        &[
            "must have 2 elements",
            "tensor<fp16, [1, 8, 1, 8]>",
            "got 3",
        ],
    );
}

#[test]
fn conv_kernel_larger_than_input_is_rejected() {
    assert_rejects(
        &[("x", f16(&[1, 8, 1, 2])), ("w", f16(&[8, 8, 1, 3]))],
        &[],
        "conv",
        vec![("weight", var("w")), ("x", var("x"))],
        "weight",
        &["[1, 8, 1, 2]", "[8, 8, 1, 3]", "kernel 3"],
    );
}

#[test]
fn conv_groups_must_be_constant() {
    assert_rejects(
        &[
            ("x", f16(&[1, 8, 1, 8])),
            ("w", f16(&[8, 8, 1, 1])),
            ("g", Type::Scalar(DType::Int32)),
        ],
        &[],
        "conv",
        vec![("groups", var("g")), ("weight", var("w")), ("x", var("x"))],
        "groups",
        &["compile-time constant", "`g`"],
    );
}

// ---------------------------------------------------------------------------------------------
// matmul

#[test]
fn matmul_with_transposes_and_broadcast_batch() {
    // x [2,1,8,16]ᵀ = [2,1,16,8]; y [3,8,5]; batch [2,1] × [3] → [2,3]; result [2,3,16,5].
    assert_infers(
        &[("a", f16(&[2, 1, 8, 16])), ("b", f16(&[3, 8, 5]))],
        &[],
        "matmul",
        vec![
            ("transpose_x", boolean(true)),
            ("transpose_y", boolean(false)),
            ("x", var("a")),
            ("y", var("b")),
        ],
        f16(&[2, 3, 16, 5]),
    );
    // Attention scores: q [1,12,256,64] · kᵀ → [1,12,256,256], with the flag from a const.
    assert_infers(
        &[("q", f16(&[1, 12, 256, 64])), ("k", f16(&[1, 12, 128, 64]))],
        &[("ty", Literal::bool(true))],
        "matmul",
        vec![("transpose_y", var("ty")), ("x", var("q")), ("y", var("k"))],
        f16(&[1, 12, 256, 128]),
    );
    // The classifier backward: [1,D,V] · [1,V,S] → [1,D,S].
    assert_infers(
        &[("w", f16(&[1, 16, 100])), ("d", f16(&[1, 100, 8]))],
        &[],
        "matmul",
        vec![("x", var("w")), ("y", var("d"))],
        f16(&[1, 16, 8]),
    );
}

#[test]
fn matmul_with_vectors_drops_their_axis() {
    assert_infers(
        &[("v", f16(&[8])), ("m", f16(&[4, 8, 5]))],
        &[],
        "matmul",
        vec![("x", var("v")), ("y", var("m"))],
        f16(&[4, 5]),
    );
    assert_infers(
        &[("m", f16(&[3, 8])), ("v", f16(&[8]))],
        &[],
        "matmul",
        vec![("x", var("m")), ("y", var("v"))],
        f16(&[3]),
    );
}

#[test]
fn matmul_inner_dimension_mismatch() {
    assert_rejects(
        &[("a", f16(&[1, 1, 32, 64])), ("b", f16(&[1, 1, 32, 128]))],
        &[],
        "matmul",
        vec![("x", var("a")), ("y", var("b"))],
        "y",
        &[
            "inner dimensions differ: x has 64 columns",
            "y has 32 rows",
            "x: tensor<fp16, [1, 1, 32, 64]>",
            "y: tensor<fp16, [1, 1, 32, 128]>",
        ],
    );
}

#[test]
fn matmul_batch_dimensions_must_broadcast() {
    assert_rejects(
        &[("a", f16(&[2, 4, 4])), ("b", f16(&[3, 4, 4]))],
        &[],
        "matmul",
        vec![("x", var("a")), ("y", var("b"))],
        "y",
        &[
            "batch dimensions do not broadcast",
            "tensor<fp16, [2, 4, 4]>",
            "tensor<fp16, [3, 4, 4]>",
        ],
    );
}

// ---------------------------------------------------------------------------------------------
// Elementwise

#[test]
fn elementwise_binary_ops_broadcast() {
    for kind in ["add", "sub", "mul", "real_div", "pow", "maximum", "minimum"] {
        // Mask add: [1,12,S,S] with [1,1,S,S].
        assert_infers(
            &[("s", f16(&[1, 12, 16, 16])), ("m", f16(&[1, 1, 16, 16]))],
            &[],
            kind,
            vec![("x", var("s")), ("y", var("m"))],
            f16(&[1, 12, 16, 16]),
        );
    }
    // RMSNorm: [1,C,1,S] · [1,1,1,S] and · [1,C,1,1] weights; scalar constants on either side.
    assert_infers(
        &[("x", f16(&[1, 768, 1, 1])), ("r", f16(&[1, 1, 1, 256]))],
        &[],
        "mul",
        vec![("x", var("x")), ("y", var("r"))],
        f16(&[1, 768, 1, 256]),
    );
    assert_infers(
        &[("sig", f16(&[1, 64, 1, 32]))],
        &[("one", fp16_scalar(1.0))],
        "sub",
        vec![("x", var("one")), ("y", var("sig"))],
        f16(&[1, 64, 1, 32]),
    );
    // Different ranks align at the last axis.
    assert_infers(
        &[("a", f16(&[5])), ("b", f16(&[2, 1, 1]))],
        &[],
        "add",
        vec![("x", var("a")), ("y", var("b"))],
        f16(&[2, 1, 5]),
    );
}

#[test]
fn broadcast_failure_names_both_shapes() {
    assert_rejects(
        &[("a", f16(&[1, 64, 1, 32])), ("b", f16(&[1, 32, 1, 32]))],
        &[],
        "add",
        vec![("x", var("a")), ("y", var("b"))],
        "y",
        &[
            "shapes do not broadcast: 64 against 32 at axis -3",
            "x: tensor<fp16, [1, 64, 1, 32]>",
            "y: tensor<fp16, [1, 32, 1, 32]>",
        ],
    );
}

#[test]
fn elementwise_operands_need_one_dtype() {
    assert_rejects(
        &[("a", f16(&[4])), ("b", t(DType::Fp32, &[4]))],
        &[],
        "mul",
        vec![("x", var("a")), ("y", var("b"))],
        "y",
        &["dtype fp32 differs from x's fp16", "tensor<fp32, [4]>"],
    );
}

#[test]
fn comparisons_give_bool() {
    assert_infers(
        &[("a", f16(&[2, 3])), ("b", f16(&[3]))],
        &[],
        "less",
        vec![("x", var("a")), ("y", var("b"))],
        t(DType::Bool, &[2, 3]),
    );
}

#[test]
fn unary_ops_keep_the_type() {
    for kind in [
        "sigmoid", "exp", "log", "sqrt", "rsqrt", "relu", "silu", "tanh", "gelu", "abs", "square",
        "identity", "inverse", "erf",
    ] {
        assert_infers(
            &[("h", f16(&[1, 64, 1, 32]))],
            &[],
            kind,
            vec![("x", var("h"))],
            f16(&[1, 64, 1, 32]),
        );
    }
    assert_infers(
        &[("h", t(DType::Fp32, &[7]))],
        &[("eps", Literal::float(DType::Fp32, FloatLit::fixed6(1e-5)))],
        "rsqrt",
        vec![("epsilon", var("eps")), ("x", var("h"))],
        t(DType::Fp32, &[7]),
    );
    assert_infers(
        &[("h", f16(&[7]))],
        &[],
        "gelu",
        vec![("mode", string("TANH_APPROXIMATION")), ("x", var("h"))],
        f16(&[7]),
    );
    // identity passes any dtype through.
    assert_infers(
        &[("i", t(DType::Int32, &[2]))],
        &[],
        "identity",
        vec![("x", var("i"))],
        t(DType::Int32, &[2]),
    );
}

#[test]
fn unary_op_mistakes() {
    assert_rejects(
        &[("i", t(DType::Int32, &[2]))],
        &[],
        "sigmoid",
        vec![("x", var("i"))],
        "x",
        &["must be fp16 or fp32", "x: tensor<int32, [2]>"],
    );
    assert_rejects(
        &[("h", f16(&[2]))],
        &[("eps", Literal::float(DType::Fp32, FloatLit::fixed6(1e-5)))],
        "rsqrt",
        vec![("epsilon", var("eps")), ("x", var("h"))],
        "epsilon",
        &["must be a scalar of type fp16, got fp32"],
    );
    assert_rejects(
        &[("h", f16(&[2]))],
        &[],
        "gelu",
        vec![("mode", string("FAST")), ("x", var("h"))],
        "mode",
        &["\"FAST\"", "EXACT"],
    );
}

// ---------------------------------------------------------------------------------------------
// softmax and reductions

#[test]
fn softmax_keeps_the_type() {
    assert_infers(
        &[("s", f16(&[1, 12, 16, 16]))],
        &[("sax", Literal::int32(-1))],
        "softmax",
        vec![("axis", var("sax")), ("x", var("s"))],
        f16(&[1, 12, 16, 16]),
    );
    assert_infers(
        &[("l", f16(&[1, 100, 1, 8]))],
        &[],
        "softmax",
        vec![("x", var("l"))],
        f16(&[1, 100, 1, 8]),
    );
}

#[test]
fn softmax_axis_out_of_range() {
    assert_rejects(
        &[("s", f16(&[1, 12, 16, 16]))],
        &[],
        "softmax",
        vec![("axis", int(4)), ("x", var("s"))],
        "axis",
        &[
            "axis 4 is out of range for rank 4",
            "x: tensor<fp16, [1, 12, 16, 16]>",
        ],
    );
}

#[test]
fn reductions_remove_or_keep_axes() {
    assert_infers(
        &[("s", f16(&[1, 768, 1, 256]))],
        &[],
        "reduce_sum",
        vec![
            ("x", var("s")),
            ("axes", ints(&[1])),
            ("keep_dims", boolean(true)),
        ],
        f16(&[1, 1, 1, 256]),
    );
    assert_infers(
        &[("s", f16(&[1, 12, 16, 8]))],
        &[],
        "reduce_mean",
        vec![("x", var("s")), ("axes", ints(&[-1, 1]))],
        f16(&[1, 16]),
    );
    // No axes: everything, down to a scalar.
    assert_infers(
        &[("s", f16(&[3, 4]))],
        &[],
        "reduce_max",
        vec![("x", var("s"))],
        Type::Scalar(DType::Fp16),
    );
}

#[test]
fn reduction_axis_mistakes() {
    assert_rejects(
        &[("s", f16(&[1, 768, 1, 256]))],
        &[],
        "reduce_sum",
        vec![("x", var("s")), ("axes", ints(&[1, -3]))],
        "axes",
        &["axis -3 is listed twice"],
    );
    assert_rejects(
        &[("s", f16(&[1, 768, 1, 256]))],
        &[],
        "reduce_sum",
        vec![("x", var("s")), ("axes", ints(&[-5]))],
        "axes",
        &[
            "axis -5 is out of range for rank 4",
            "tensor<fp16, [1, 768, 1, 256]>",
        ],
    );
}

// ---------------------------------------------------------------------------------------------
// Slicing

#[test]
fn slice_by_size_with_minus_one() {
    assert_infers(
        &[("x", f16(&[1, 64, 1, 160]))],
        &[],
        "slice_by_size",
        vec![
            ("x", var("x")),
            ("begin", ints(&[0, 0, 0, 32])),
            ("size", ints(&[1, -1, 1, -1])),
        ],
        f16(&[1, 64, 1, 128]),
    );
}

#[test]
fn slice_by_size_bounds() {
    assert_rejects(
        &[("x", f16(&[1, 64, 1, 160]))],
        &[],
        "slice_by_size",
        vec![
            ("x", var("x")),
            ("begin", ints(&[0, 0, 0, 100])),
            ("size", ints(&[1, 64, 1, 128])),
        ],
        "size",
        &[
            "[100, 100 + 128) runs past axis 3 of length 160",
            "[1, 64, 1, 160]",
        ],
    );
    assert_rejects(
        &[("x", f16(&[1, 64, 1, 160]))],
        &[],
        "slice_by_size",
        vec![
            ("x", var("x")),
            ("begin", ints(&[0, 0, 0])),
            ("size", ints(&[1, 64, 1, 128])),
        ],
        "begin",
        &[
            "must have 4 elements",
            "x: tensor<fp16, [1, 64, 1, 160]>",
            "got 3",
        ],
    );
}

#[test]
fn slice_by_index_follows_numpy() {
    // axis 1: 2:8:2 → 3 elements; axis 3: -4 to the end → 4 elements.
    let args = |squeeze: Option<Arg>| {
        let mut args = vec![
            ("x", var("x")),
            ("begin", ints(&[0, 2, 0, -4])),
            ("end", ints(&[1, 8, 1, 0])),
            ("stride", ints(&[1, 2, 1, 1])),
            ("end_mask", bools(&[false, false, false, true])),
        ];
        if let Some(s) = squeeze {
            args.push(("squeeze_mask", s));
        }
        args
    };
    assert_infers(
        &[("x", f16(&[1, 8, 1, 10]))],
        &[],
        "slice_by_index",
        args(None),
        f16(&[1, 3, 1, 4]),
    );
    assert_infers(
        &[("x", f16(&[1, 8, 1, 10]))],
        &[],
        "slice_by_index",
        args(Some(bools(&[true, false, true, false]))),
        f16(&[3, 4]),
    );
}

#[test]
fn slice_by_index_mistakes() {
    assert_rejects(
        &[("x", f16(&[4, 4]))],
        &[],
        "slice_by_index",
        vec![
            ("x", var("x")),
            ("begin", ints(&[0, 3])),
            ("end", ints(&[4, 1])),
        ],
        "end",
        &["3:1:1 selects nothing along axis 1", "tensor<fp16, [4, 4]>"],
    );
    assert_rejects(
        &[("x", f16(&[4, 4]))],
        &[],
        "slice_by_index",
        vec![
            ("x", var("x")),
            ("begin", ints(&[0, 0])),
            ("end", ints(&[4, 4])),
            ("stride", ints(&[1, 0])),
        ],
        "stride",
        &["stride along axis 1 is 0"],
    );
}

// ---------------------------------------------------------------------------------------------
// concat, reshape, transpose

#[test]
fn concat_adds_up_along_the_axis() {
    assert_infers(
        &[
            ("a", f16(&[1, 64, 1, 32])),
            ("b", f16(&[1, 32, 1, 32])),
            ("c", f16(&[1, 8, 1, 32])),
        ],
        &[("cax", Literal::int32(1)), ("cid", Literal::bool(false))],
        "concat",
        vec![
            ("axis", var("cax")),
            ("interleave", var("cid")),
            (
                "values",
                Arg::Tuple(vec!["a".into(), "b".into(), "c".into()]),
            ),
        ],
        f16(&[1, 104, 1, 32]),
    );
    assert_infers(
        &[("a", f16(&[1, 2, 8, 1])), ("b", f16(&[1, 2, 8, 1]))],
        &[],
        "concat",
        vec![
            ("axis", int(-1)),
            ("values", Arg::Tuple(vec!["a".into(), "b".into()])),
        ],
        f16(&[1, 2, 8, 2]),
    );
}

#[test]
fn concat_mistakes() {
    assert_rejects(
        &[("a", f16(&[1, 64, 1, 32])), ("b", f16(&[1, 64, 1, 16]))],
        &[],
        "concat",
        vec![
            ("axis", int(1)),
            ("values", Arg::Tuple(vec!["a".into(), "b".into()])),
        ],
        "values",
        &[
            "sizes differ along axis 3, which is not the concat axis 1",
            "a: tensor<fp16, [1, 64, 1, 32]>",
            "b: tensor<fp16, [1, 64, 1, 16]>",
        ],
    );
    assert_rejects(
        &[("a", f16(&[1, 64, 1, 32]))],
        &[],
        "concat",
        vec![("axis", int(1)), ("values", var("a"))],
        "values",
        &["expects a tuple"],
    );
}

#[test]
fn reshape_keeps_the_element_count() {
    assert_infers(
        &[("x", f16(&[1, 768, 1, 256]))],
        &[("qsh", Literal::int32_tensor(&[1, 12, 64, 256]))],
        "reshape",
        vec![("shape", var("qsh")), ("x", var("x"))],
        f16(&[1, 12, 64, 256]),
    );
    assert_infers(
        &[("x", f16(&[1, 768, 1, 256]))],
        &[],
        "reshape",
        vec![("shape", ints(&[1, 12, -1, 256])), ("x", var("x"))],
        f16(&[1, 12, 64, 256]),
    );
}

#[test]
fn reshape_mistakes() {
    assert_rejects(
        &[("x", f16(&[1, 768, 1, 256]))],
        &[],
        "reshape",
        vec![("shape", ints(&[1, 12, 64, 128])), ("x", var("x"))],
        "shape",
        &[
            "element counts differ: shape [1, 12, 64, 128] holds 98304",
            "x: tensor<fp16, [1, 768, 1, 256]> holds 196608",
        ],
    );
    assert_rejects(
        &[("x", f16(&[4, 4]))],
        &[],
        "reshape",
        vec![("shape", ints(&[0, 16])), ("x", var("x"))],
        "shape",
        &["0 at position 0"],
    );
    assert_rejects(
        &[("x", f16(&[4, 4]))],
        &[],
        "reshape",
        vec![("shape", ints(&[-1, -1])), ("x", var("x"))],
        "shape",
        &["more than one -1"],
    );
    // Shapes whose byte count overflows are refused where they are declared: an input, or an
    // op's declared type (checked before its arguments).
    let f = function(
        &[("x", f16(&[usize::MAX, 2]))],
        &[],
        "reshape",
        vec![("shape", ints(&[-1])), ("x", var("x"))],
        Type::Scalar(DType::Bool),
    );
    assert_eq!(
        check_function(&f).unwrap_err().to_string(),
        format!(
            "function main, value x: input `x`: tensor<fp16, [{}, 2]> holds more bytes than any \
             buffer can ({} at most)",
            usize::MAX,
            isize::MAX
        )
    );
    let f = function(
        &[("x", f16(&[4, 4]))],
        &[],
        "reshape",
        vec![("shape", ints(&[1 << 31, 1 << 31])), ("x", var("x"))],
        f16(&[1 << 31, 1 << 31, 1 << 31]),
    );
    let text = check_function(&f).unwrap_err().to_string();
    assert!(
        text.starts_with("function main, op \"the_op\" (reshape → y)")
            && text.ends_with("holds more bytes than any buffer can (9223372036854775807 at most)"),
        "{text}"
    );
}

#[test]
fn reshape_shape_must_be_constant() {
    assert_rejects(
        &[("x", f16(&[4, 4])), ("s", t(DType::Int32, &[2]))],
        &[],
        "reshape",
        vec![("shape", var("s")), ("x", var("x"))],
        "shape",
        &["must be a compile-time constant", "`s` is not a const"],
    );
}

#[test]
fn transpose_permutes_axes() {
    assert_infers(
        &[("x", f16(&[1, 12, 64, 256]))],
        &[("pm", Literal::int32_tensor(&[0, 1, 3, 2]))],
        "transpose",
        vec![("perm", var("pm")), ("x", var("x"))],
        f16(&[1, 12, 256, 64]),
    );
    assert_infers(
        &[("x", f16(&[2, 3, 5]))],
        &[],
        "transpose",
        vec![("perm", ints(&[-1, 0, 1])), ("x", var("x"))],
        f16(&[5, 2, 3]),
    );
}

#[test]
fn transpose_needs_a_permutation() {
    assert_rejects(
        &[("x", f16(&[1, 12, 64, 256]))],
        &[],
        "transpose",
        vec![("perm", ints(&[0, 1, 1, 2])), ("x", var("x"))],
        "perm",
        &["axis 1 is listed twice"],
    );
    assert_rejects(
        &[("x", f16(&[1, 12, 64, 256]))],
        &[],
        "transpose",
        vec![("perm", ints(&[0, 2, 1])), ("x", var("x"))],
        "perm",
        &["must have 4 elements", "tensor<fp16, [1, 12, 64, 256]>"],
    );
}

// ---------------------------------------------------------------------------------------------
// Quantisation

#[test]
fn quantize_and_dequantize() {
    assert_infers(
        &[("c0", f16(&[1, 512, 4, 4]))],
        &[
            ("q_scale", fp16_scalar(0.125)),
            ("q_dtype", Literal::string("int8")),
        ],
        "quantize",
        vec![
            ("input", var("c0")),
            ("output_dtype", var("q_dtype")),
            ("scale", var("q_scale")),
        ],
        t(DType::Int8, &[1, 512, 4, 4]),
    );
    // Per channel along axis 1, with a zero point of the output dtype.
    assert_infers(
        &[
            ("c0", f16(&[1, 8, 4, 4])),
            ("s", f16(&[8])),
            ("z", t(DType::UInt8, &[8])),
        ],
        &[],
        "quantize",
        vec![
            ("axis", int(1)),
            ("input", var("c0")),
            ("output_dtype", string("uint8")),
            ("scale", var("s")),
            ("zero_point", var("z")),
        ],
        t(DType::UInt8, &[1, 8, 4, 4]),
    );
    assert_infers(
        &[("q0", t(DType::Int8, &[1, 512, 4, 4]))],
        &[(
            "dq_scale",
            Literal::float(DType::Fp32, FloatLit::fixed6(0.125)),
        )],
        "dequantize",
        vec![("input", var("q0")), ("scale", var("dq_scale"))],
        t(DType::Fp32, &[1, 512, 4, 4]),
    );
}

#[test]
fn quantisation_mistakes() {
    assert_rejects(
        &[("c0", f16(&[1, 8, 4, 4])), ("s", f16(&[4]))],
        &[],
        "quantize",
        vec![
            ("axis", int(1)),
            ("input", var("c0")),
            ("output_dtype", string("int8")),
            ("scale", var("s")),
        ],
        "scale",
        &[
            "one scale per slice along axis 1",
            "scale: tensor<fp16, [4]>",
            "input: tensor<fp16, [1, 8, 4, 4]>",
        ],
    );
    assert_rejects(
        &[("c0", f16(&[4]))],
        &[("s", fp16_scalar(0.5))],
        "quantize",
        vec![
            ("input", var("c0")),
            ("output_dtype", string("int4")),
            ("scale", var("s")),
        ],
        "output_dtype",
        &["\"int4\""],
    );
    assert_rejects(
        &[("c0", f16(&[4]))],
        &[("s", fp16_scalar(0.5))],
        "dequantize",
        vec![("input", var("c0")), ("scale", var("s"))],
        "input",
        &["must be int8 or uint8", "input: tensor<fp16, [4]>"],
    );
}

fn affine_dequantize(zero_point: Literal) -> Function {
    let mut b = FunctionBuilder::new("main", "ios18");
    let w = b.attr_op(
        "constexpr_affine_dequantize",
        "W0",
        f16(&[512, 256, 1, 1]),
        vec![
            ("axis", Literal::int32(0)),
            ("quantized_data", blob(DType::Int8, &[512, 256, 1, 1])),
            (
                "scale",
                Literal::float(DType::Fp16, FloatLit::from_text("0x1p-3").unwrap()),
            ),
            ("zero_point", zero_point),
        ],
    );
    b.output(&w);
    b.finish()
}

#[test]
fn constexpr_affine_dequantize_takes_attributes() {
    let zp = Literal::Scalar {
        dtype: DType::Int8,
        value: Scalar::Int(0),
    };
    let checked = check_function(&affine_dequantize(zp)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(checked.types["W0"], f16(&[512, 256, 1, 1]));
    assert!(checked.consts.is_empty());
}

#[test]
fn constexpr_affine_dequantize_mistakes() {
    let zp = Literal::Scalar {
        dtype: DType::UInt8,
        value: Scalar::Int(0),
    };
    let e = check_function(&affine_dequantize(zp)).unwrap_err();
    assert_eq!(e.arg.as_deref(), Some("zero_point"));
    let text = e.to_string();
    assert!(
        text.starts_with(
            "function main, op \"W0\" (constexpr_affine_dequantize → W0), argument zero_point: "
        ),
        "{text}"
    );
    assert!(
        text.contains("dtype uint8 differs from quantized_data's int8"),
        "{text}"
    );

    // Its parameters are attributes; an argument is a mistake.
    let mut f = affine_dequantize(Literal::Scalar {
        dtype: DType::Int8,
        value: Scalar::Int(0),
    });
    f.ops[0].args.push(("x".into(), ints(&[1])));
    let e = check_function(&f).unwrap_err();
    assert_eq!(e.arg.as_deref(), Some("x"));
    assert!(e.message.contains("as attributes"), "{e}");
}

// ---------------------------------------------------------------------------------------------
// Attention and layer norm

#[test]
fn scaled_dot_product_attention_shapes() {
    assert_infers(
        &[
            ("q", f16(&[1, 12, 256, 64])),
            ("k", f16(&[1, 12, 128, 64])),
            ("v", f16(&[1, 12, 128, 32])),
            ("mask", f16(&[1, 1, 256, 128])),
        ],
        &[],
        "scaled_dot_product_attention",
        vec![
            ("query", var("q")),
            ("key", var("k")),
            ("value", var("v")),
            ("attn_mask", var("mask")),
        ],
        f16(&[1, 12, 256, 32]),
    );
}

#[test]
fn scaled_dot_product_attention_mistakes() {
    let qkv = |k: &[usize], mask: &[usize]| {
        vec![
            ("q", f16(&[1, 4, 16, 8])),
            ("k", f16(k)),
            ("v", f16(&[1, 4, 16, 8])),
            ("mask", f16(mask)),
        ]
    };
    let args = || {
        vec![
            ("query", var("q")),
            ("key", var("k")),
            ("value", var("v")),
            ("attn_mask", var("mask")),
        ]
    };
    assert_rejects(
        &qkv(&[1, 4, 16, 4], &[16, 16]),
        &[],
        "scaled_dot_product_attention",
        args(),
        "key",
        &[
            "embedding size 4 differs from query's 8",
            "query: tensor<fp16, [1, 4, 16, 8]>",
            "key: tensor<fp16, [1, 4, 16, 4]>",
        ],
    );
    assert_rejects(
        &qkv(&[1, 4, 16, 8], &[1, 1, 16, 15]),
        &[],
        "scaled_dot_product_attention",
        args(),
        "attn_mask",
        &[
            "does not broadcast to the scores' shape [1, 4, 16, 16]",
            "attn_mask: tensor<fp16, [1, 1, 16, 15]>",
        ],
    );
}

#[test]
fn layer_norm_keeps_the_type() {
    assert_infers(
        &[
            ("x", f16(&[1, 8, 16])),
            ("g", f16(&[16])),
            ("b", f16(&[16])),
        ],
        &[("eps", fp16_scalar(1e-5))],
        "layer_norm",
        vec![
            ("axes", ints(&[-1])),
            ("beta", var("b")),
            ("epsilon", var("eps")),
            ("gamma", var("g")),
            ("x", var("x")),
        ],
        f16(&[1, 8, 16]),
    );
    assert_rejects(
        &[("x", f16(&[1, 8, 16])), ("g", f16(&[8]))],
        &[],
        "layer_norm",
        vec![("axes", ints(&[-1])), ("gamma", var("g")), ("x", var("x"))],
        "gamma",
        &[
            "[16]",
            "gamma: tensor<fp16, [8]>",
            "x: tensor<fp16, [1, 8, 16]>",
        ],
    );
}

// ---------------------------------------------------------------------------------------------
// Names, references and argument lists

#[test]
fn duplicate_value_name() {
    let f = raw_function(
        &[("x", f16(&[4]))],
        vec![
            op("relu", "y", "r1", f16(&[4]), vec![("x", var("x"))]),
            op("relu", "y", "r2", f16(&[4]), vec![("x", var("x"))]),
        ],
        &["y"],
    );
    let e = check_function(&f).unwrap_err();
    assert_eq!(e.op_index, Some(1));
    assert_eq!(
        e.to_string(),
        "function main, op \"r2\" (relu → y): value `y` is already defined earlier in the function"
    );
    // An op may not redefine an input either.
    let f = raw_function(
        &[("x", f16(&[4]))],
        vec![op("relu", "x", "r1", f16(&[4]), vec![("x", var("x"))])],
        &["x"],
    );
    assert!(check_function(&f)
        .unwrap_err()
        .message
        .contains("already defined"));
}

#[test]
fn duplicate_input_name() {
    let f = raw_function(&[("x", f16(&[4])), ("x", f16(&[2]))], vec![], &["x"]);
    let e = check_function(&f).unwrap_err();
    assert_eq!(e.output.as_deref(), Some("x"));
    assert_eq!(
        e.to_string(),
        "function main, value x: input `x` is declared twice"
    );
}

#[test]
fn duplicate_op_name() {
    let f = raw_function(
        &[("x", f16(&[4]))],
        vec![
            op("relu", "a", "same", f16(&[4]), vec![("x", var("x"))]),
            op("relu", "b", "same", f16(&[4]), vec![("x", var("a"))]),
        ],
        &["b"],
    );
    let e = check_function(&f).unwrap_err();
    assert_eq!(e.op_index, Some(1));
    assert_eq!(e.arg.as_deref(), Some("name"));
    assert!(e
        .to_string()
        .contains("op \"same\" (relu → b), argument name: op name \"same\" is already used"));
}

#[test]
fn missing_op_name() {
    let mut relu = op("relu", "a", "r", f16(&[4]), vec![("x", var("x"))]);
    relu.attrs.clear();
    let f = raw_function(&[("x", f16(&[4]))], vec![relu], &["a"]);
    let e = check_function(&f).unwrap_err();
    assert_eq!(e.op_name, None);
    assert_eq!(
        e.to_string(),
        "function main, op #0 (relu → a): the op has no `name` attribute"
    );
}

#[test]
fn undefined_variable() {
    assert_rejects(
        &[("a", f16(&[4]))],
        &[],
        "add",
        vec![("x", var("a")), ("y", var("nowhere"))],
        "y",
        &["`nowhere` is not defined before this op"],
    );
    // A value used before the op that defines it.
    let f = raw_function(
        &[("x", f16(&[4]))],
        vec![
            op("relu", "a", "r1", f16(&[4]), vec![("x", var("b"))]),
            op("relu", "b", "r2", f16(&[4]), vec![("x", var("x"))]),
        ],
        &["a"],
    );
    let e = check_function(&f).unwrap_err();
    assert_eq!((e.op_index, e.arg.as_deref()), (Some(0), Some("x")));
    assert!(e.message.contains("`b` is not defined before this op"));
    // Tuples are checked element by element.
    assert_rejects(
        &[("a", f16(&[4]))],
        &[],
        "concat",
        vec![
            ("axis", int(0)),
            ("values", Arg::Tuple(vec!["a".into(), "ghost".into()])),
        ],
        "values",
        &["`ghost` is not defined"],
    );
}

#[test]
fn unknown_op() {
    let f = function(
        &[("x", f16(&[4]))],
        &[],
        "frobnicate",
        vec![("x", var("x"))],
        f16(&[4]),
    );
    let e = check_function(&f).unwrap_err();
    let text = e.to_string();
    assert!(
        text.starts_with("function main, op \"the_op\" (frobnicate → y): unknown op `frobnicate`"),
        "{text}"
    );
    assert!(text.contains("conv") && text.contains("matmul"), "{text}");
}

#[test]
fn unknown_argument() {
    assert_rejects(
        &[("a", f16(&[4]))],
        &[],
        "add",
        vec![("x", var("a")), ("y", var("a")), ("z", var("a"))],
        "z",
        &["unknown argument `z` for add (accepted: x, y)"],
    );
    assert_rejects(
        &[("x", f16(&[1, 8, 1, 8])), ("w", f16(&[8, 8, 1, 1]))],
        &[],
        "conv",
        vec![
            ("stride", ints(&[1, 1])),
            ("weight", var("w")),
            ("x", var("x")),
        ],
        "stride",
        &["accepted: bias, dilations, groups, pad, pad_type, strides, weight, x"],
    );
}

#[test]
fn unknown_attribute_and_repeated_argument() {
    let mut f = function(
        &[("a", f16(&[4]))],
        &[],
        "relu",
        vec![("x", var("a"))],
        f16(&[4]),
    );
    f.ops[0].attrs.push(("val".into(), Literal::int32(1)));
    let e = check_function(&f).unwrap_err();
    assert_eq!(e.arg.as_deref(), Some("val"));
    assert!(e.message.contains("unknown attribute `val`"), "{e}");

    assert_rejects(
        &[("a", f16(&[4]))],
        &[],
        "relu",
        vec![("x", var("a")), ("x", var("a"))],
        "x",
        &["argument given twice"],
    );
}

#[test]
fn missing_required_argument() {
    assert_rejects(
        &[("x", f16(&[1, 8, 1, 8]))],
        &[],
        "conv",
        vec![("x", var("x"))],
        "weight",
        &["missing required argument"],
    );
}

#[test]
fn structural_argument_of_the_wrong_dtype() {
    assert_rejects(
        &[("s", f16(&[1, 4]))],
        &[("ax", Literal::float(DType::Fp16, FloatLit::fixed6(1.0)))],
        "softmax",
        vec![("axis", var("ax")), ("x", var("s"))],
        "axis",
        &["must be a scalar of type int32, got fp16"],
    );
    assert_rejects(
        &[("x", f16(&[4, 4]))],
        &[],
        "transpose",
        vec![("perm", ints(&[1])), ("x", var("x"))],
        "perm",
        &["must have 2 elements"],
    );
}

#[test]
fn output_not_defined() {
    let mut f = function(
        &[("a", f16(&[4]))],
        &[],
        "relu",
        vec![("x", var("a"))],
        f16(&[4]),
    );
    f.outputs = vec!["y".into(), "nope".into()];
    let e = check_function(&f).unwrap_err();
    assert_eq!(e.output.as_deref(), Some("nope"));
    assert_eq!(
        e.to_string(),
        "function main, value nope: function output `nope` is not defined by any input or op"
    );
    f.outputs = vec!["y".into(), "y".into()];
    assert!(check_function(&f)
        .unwrap_err()
        .message
        .contains("returned twice"));
    f.outputs.clear();
    assert!(check_function(&f)
        .unwrap_err()
        .message
        .contains("returns no values"));
}

#[test]
fn declared_type_mismatch() {
    let f = function(
        &[("x", f16(&[1, 768, 1, 256]))],
        &[],
        "reduce_sum",
        vec![
            ("x", var("x")),
            ("axes", ints(&[1])),
            ("keep_dims", boolean(true)),
        ],
        f16(&[1, 768, 1, 1]),
    );
    let e = check_function(&f).unwrap_err();
    assert_eq!(e.arg, None);
    assert_eq!(
        e.to_string(),
        "function main, op \"the_op\" (reduce_sum → y): declared type tensor<fp16, [1, 768, 1, 1]> \
         does not match the inferred type tensor<fp16, [1, 1, 1, 256]>"
    );
    // The dtype counts too.
    let f = function(
        &[("x", f16(&[4]))],
        &[],
        "relu",
        vec![("x", var("x"))],
        t(DType::Fp32, &[4]),
    );
    assert!(check_function(&f)
        .unwrap_err()
        .message
        .contains("declared type"));
}

// ---------------------------------------------------------------------------------------------
// Programs and the stand-alone inference

#[test]
fn check_program_checks_every_function_and_returns_main() {
    let helper = {
        let mut f = examples::final_rmsnorm(8, 4).functions.remove(0);
        f.name = "helper".into();
        f
    };
    let main = examples::dynamic_matmul(4, 4, 4).functions.remove(0);
    let program = Program {
        dialect: Dialect::Ios18,
        style: Style::Compact,
        build_info: vec![],
        functions: vec![helper.clone(), main],
    };
    let checked = check_program(&program).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(checked.signature.outputs[0].name, "mm_y");

    let mut broken = helper;
    broken.outputs = vec!["missing".into()];
    let program = Program {
        functions: vec![broken, program.functions[1].clone()],
        ..program
    };
    let e = check_program(&program).unwrap_err();
    assert_eq!(e.function, "helper");

    let empty = Program {
        functions: vec![],
        ..program
    };
    assert!(check_program(&empty)
        .unwrap_err()
        .message
        .contains("no functions"));
}

#[test]
fn infer_op_type_works_on_one_op() {
    let types = HashMap::from([
        ("a".to_string(), f16(&[1, 12, 64, 256])),
        ("pm".to_string(), t(DType::Int32, &[4])),
    ]);
    let consts = HashMap::from([("pm".to_string(), Literal::int32_tensor(&[0, 1, 3, 2]))]);
    let tr = op(
        "transpose",
        "b",
        "tb",
        f16(&[9]), // not compared
        vec![("perm", var("pm")), ("x", var("a"))],
    );
    assert_eq!(
        infer_op_type(&tr, &types, &consts),
        Ok(f16(&[1, 12, 256, 64]))
    );
    // Without the const, perm is not known at compile time.
    let e = infer_op_type(&tr, &types, &HashMap::new()).unwrap_err();
    assert_eq!(e.function, "");
    assert_eq!(e.op_index, None);
    assert!(e
        .to_string()
        .starts_with("op \"tb\" (transpose → b), argument perm: must be a compile-time constant"));
}

// ---------------------------------------------------------------------------------------------
// Robustness: arbitrary shapes and constants give errors, never panics

/// Replaces every function input's shape and every int32 tensor literal's values.
fn mutate(mut p: Program, shapes: &[Vec<usize>], values: &[i64]) -> Program {
    let mut shapes = shapes.iter().cycle();
    let mut values = values.iter().cycle();
    for f in &mut p.functions {
        for input in &mut f.inputs {
            if let Some(shape) = shapes.next() {
                input.ty = Type::tensor(input.ty.dtype(), shape.clone());
            }
        }
        for op in &mut f.ops {
            for (_, lit) in &mut op.attrs {
                if let Literal::Tensor {
                    dtype: DType::Int32,
                    values: vs,
                    ..
                } = lit
                {
                    for v in vs.iter_mut() {
                        if let Some(&n) = values.next() {
                            *v = Scalar::Int(n);
                        }
                    }
                }
            }
        }
    }
    p
}

fn dim() -> impl Strategy<Value = usize> {
    prop_oneof![
        Just(0usize),
        Just(1),
        Just(usize::MAX),
        Just(usize::MAX / 2),
        1usize..300
    ]
}

fn int_value() -> impl Strategy<Value = i64> {
    prop_oneof![
        Just(-1i64),
        Just(0),
        Just(i32::MIN as i64),
        Just(i32::MAX as i64),
        -5i64..300
    ]
}

proptest! {
    #[test]
    fn checker_never_panics(
        shapes in prop::collection::vec(prop::collection::vec(dim(), 0..6), 1..3),
        values in prop::collection::vec(int_value(), 1..12),
    ) {
        for p in [
            examples::conv_fp32_io(),
            examples::dynamic_matmul(64, 128, 32),
            examples::final_rmsnorm(768, 256),
        ] {
            let _ = check_program(&mutate(p, &shapes, &values));
        }
    }
}

#[test]
fn checked_function_is_usable_by_callers() {
    // The fields other crates read: a signature to size surfaces, and types by name.
    let checked: CheckedFunction = check_program(&examples::final_rmsnorm(64, 32)).unwrap();
    let out = &checked.signature.outputs[0];
    assert_eq!(out.ty.shape(), &[1, 64, 1, 32]);
    assert_eq!(checked.types[&out.name], out.ty);
}
