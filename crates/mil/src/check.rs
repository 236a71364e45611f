//! Type and shape checker.
//!
//! Infers the type of every value of a function from its inputs and each op's arguments, with
//! MIL (coremltools) semantics, and compares it with the type each op declares. The ANE compiler
//! answers a bad program with little more than "compile failed", so every error here names the
//! function, the op (its `name`, kind and the value it defines), the argument at fault and, when
//! shapes disagree, both shapes.
//!
//! Decisions beyond MIL's own rules:
//!
//! * Structural parameters (axes, perm, shape, begin, end, size, stride(s), masks, groups, pad,
//!   dilations, pad_type, axis, keep_dims, transpose_x/y, interleave, dtype, output_dtype, mode)
//!   must be compile-time constants: a `const` value or an inline literal. Data parameters
//!   (scale, zero_point, bias, gamma, beta, epsilon, attn_mask) may be any value of the right type.
//! * `reshape` rejects `0` in `shape` (no "copy this dimension" semantics) and accepts one `-1`.
//! * Slices that select nothing are rejected: the ANE has no empty tensors.
//! * Ops accept no attribute besides `name`, except `const` and `constexpr_affine_dequantize`, which
//!   take their parameters as attributes and no arguments.
//! * Inline literals are checked against their own type (element count, element kinds, integer
//!   ranges), so a malformed `const` is reported where it is written.
//! * A function must return at least one value and no value twice; function names in a program
//!   must be unique.
//! * Unary maths ops (all but `identity`) take fp16/fp32 only.

// `CheckError` is a plain struct of the fields callers match on (the agreed API); errors end a
// check, so returning it unboxed costs nothing that matters.
#![allow(clippy::result_large_err)]

use crate::ir::{Arg, DType, Function, Literal, Op, Param, Program, Scalar, Type};
use std::collections::{HashMap, HashSet};

/// What a function takes and returns, with types.
#[derive(Clone, Debug, PartialEq)]
pub struct Signature {
    pub inputs: Vec<Param>,
    pub outputs: Vec<Param>,
}

/// A function that passed the checker.
#[derive(Clone, Debug, PartialEq)]
pub struct CheckedFunction {
    pub signature: Signature,
    /// The type of every value: function inputs and op outputs.
    pub types: HashMap<String, Type>,
    /// The literal of every value defined by a `const` op.
    pub consts: HashMap<String, Literal>,
}

/// Why a function or program was rejected, and where.
///
/// `op_*` fields describe the op at fault (`op_index` is its position in `Function::ops`).
/// `output` is the value concerned: the value the op defines, or for errors about a function's
/// inputs and outputs, that input or output. `arg` is the argument (or attribute) at fault.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{}", self.render())]
pub struct CheckError {
    pub function: String,
    pub op_index: Option<usize>,
    pub op_name: Option<String>,
    pub op_kind: Option<String>,
    pub output: Option<String>,
    pub arg: Option<String>,
    pub message: String,
}

impl CheckError {
    /// An error about the function as a whole, or about one of its inputs or outputs.
    fn in_function(function: &str, value: Option<&str>, message: impl Into<String>) -> CheckError {
        CheckError {
            function: function.to_string(),
            op_index: None,
            op_name: None,
            op_kind: None,
            output: value.map(str::to_string),
            arg: None,
            message: message.into(),
        }
    }

    /// An error about one op.
    fn at_op(function: &str, op_index: Option<usize>, op: &Op, fail: Fail) -> CheckError {
        CheckError {
            function: function.to_string(),
            op_index,
            op_name: op.name().map(str::to_string),
            op_kind: Some(op.kind.clone()),
            output: Some(op.output.clone()),
            arg: fail.arg,
            message: fail.message,
        }
    }

    /// `function main, op "conv" (conv → y16), argument weight: <message>`, leaving out what is
    /// unknown (an op without a name is shown by its index).
    fn render(&self) -> String {
        let mut parts = Vec::new();
        if !self.function.is_empty() {
            parts.push(format!("function {}", self.function));
        }
        if let Some(kind) = &self.op_kind {
            let who = match (&self.op_name, self.op_index) {
                (Some(name), _) => format!("op \"{name}\""),
                (None, Some(index)) => format!("op #{index}"),
                (None, None) => "op".to_string(),
            };
            let output = self.output.as_deref().unwrap_or("?");
            parts.push(format!("{who} ({kind} → {output})"));
        } else if let Some(value) = &self.output {
            parts.push(format!("value {value}"));
        }
        if let Some(arg) = &self.arg {
            parts.push(format!("argument {arg}"));
        }
        if parts.is_empty() {
            self.message.clone()
        } else {
            format!("{}: {}", parts.join(", "), self.message)
        }
    }
}

/// Checks every function of a program and returns the checked `main` (see [`Program::main`]).
pub fn check_program(p: &Program) -> Result<CheckedFunction, CheckError> {
    let mut names = HashSet::new();
    for f in &p.functions {
        if !names.insert(f.name.as_str()) {
            return Err(CheckError::in_function(
                &f.name,
                None,
                "a function of this name is already defined",
            ));
        }
    }
    let mut checked = Vec::with_capacity(p.functions.len());
    for f in &p.functions {
        checked.push((f.name.as_str(), check_function(f)?));
    }
    let main = p
        .main()
        .ok_or_else(|| CheckError::in_function("", None, "the program has no functions"))?;
    checked
        .into_iter()
        .find(|(name, _)| *name == main.name)
        .map(|(_, c)| c)
        .ok_or_else(|| CheckError::in_function(&main.name, None, "main function not checked"))
}

/// Checks names, references, argument lists, types and shapes of one function.
pub fn check_function(f: &Function) -> Result<CheckedFunction, CheckError> {
    let mut types = check_inputs(f)?;
    let mut consts = HashMap::new();
    let mut op_names = HashSet::new();
    for (index, op) in f.ops.iter().enumerate() {
        let ty = check_op(op, &mut op_names, &types, &consts)
            .map_err(|fail| CheckError::at_op(&f.name, Some(index), op, fail))?;
        if op.kind == "const" {
            if let Some(val) = op.attr("val") {
                consts.insert(op.output.clone(), val.clone());
            }
        }
        types.insert(op.output.clone(), ty);
    }
    let outputs = check_outputs(f, &types)?;
    Ok(CheckedFunction {
        signature: Signature {
            inputs: f.inputs.clone(),
            outputs,
        },
        types,
        consts,
    })
}

/// The inferred type of one op's output, from the types (and const literals) of earlier values.
/// It checks the op's arguments but does not compare the result with `op.ty`. The error has an
/// empty `function` and no `op_index`, since the op is seen on its own.
pub fn infer_op_type(
    op: &Op,
    types: &HashMap<String, Type>,
    consts: &HashMap<String, Literal>,
) -> Result<Type, CheckError> {
    infer(op, types, consts).map_err(|fail| CheckError::at_op("", None, op, fail))
}

/// Function inputs: unique names; returns their types.
fn check_inputs(f: &Function) -> Result<HashMap<String, Type>, CheckError> {
    let mut types = HashMap::new();
    for input in &f.inputs {
        if types.insert(input.name.clone(), input.ty.clone()).is_some() {
            return Err(CheckError::in_function(
                &f.name,
                Some(&input.name),
                format!("input `{}` is declared twice", input.name),
            ));
        }
    }
    Ok(types)
}

/// One op in its function: a unique `name` attribute, a fresh output name, a valid argument
/// list, and a declared type equal to the inferred one.
fn check_op(
    op: &Op,
    op_names: &mut HashSet<String>,
    types: &HashMap<String, Type>,
    consts: &HashMap<String, Literal>,
) -> Res<Type> {
    let name = match op.attr("name") {
        None => return Err(Fail::op("the op has no `name` attribute")),
        Some(lit) => lit
            .as_str()
            .ok_or_else(|| Fail::at("name", format!("must be a string, got {}", lit.ty())))?,
    };
    if !op_names.insert(name.to_string()) {
        return Err(Fail::at(
            "name",
            format!("op name \"{name}\" is already used by an earlier op"),
        ));
    }
    if types.contains_key(&op.output) {
        return Err(Fail::op(format!(
            "value `{}` is already defined earlier in the function",
            op.output
        )));
    }
    let inferred = infer(op, types, consts)?;
    if inferred.dtype() != op.ty.dtype() || inferred.shape() != op.ty.shape() {
        return Err(Fail::op(format!(
            "declared type {} does not match the inferred type {}",
            op.ty, inferred
        )));
    }
    Ok(inferred)
}

/// Function outputs: at least one, each defined, none twice.
fn check_outputs(f: &Function, types: &HashMap<String, Type>) -> Result<Vec<Param>, CheckError> {
    if f.outputs.is_empty() {
        return Err(CheckError::in_function(
            &f.name,
            None,
            "the function returns no values",
        ));
    }
    let mut seen = HashSet::new();
    let mut outputs = Vec::with_capacity(f.outputs.len());
    for name in &f.outputs {
        let Some(ty) = types.get(name) else {
            return Err(CheckError::in_function(
                &f.name,
                Some(name),
                format!("function output `{name}` is not defined by any input or op"),
            ));
        };
        if !seen.insert(name.as_str()) {
            return Err(CheckError::in_function(
                &f.name,
                Some(name),
                format!("`{name}` is returned twice"),
            ));
        }
        outputs.push(Param {
            name: name.clone(),
            ty: ty.clone(),
        });
    }
    Ok(outputs)
}

// ---------------------------------------------------------------------------------------------
// Errors inside one op

/// A problem found in one op, before the function and op context is attached.
#[derive(Debug)]
struct Fail {
    arg: Option<String>,
    message: String,
}

impl Fail {
    /// A problem with one argument.
    fn at(arg: &str, message: impl Into<String>) -> Fail {
        Fail {
            arg: Some(arg.to_string()),
            message: message.into(),
        }
    }

    /// A problem with the op as a whole.
    fn op(message: impl Into<String>) -> Fail {
        Fail {
            arg: None,
            message: message.into(),
        }
    }
}

type Res<T> = Result<T, Fail>;

fn fail<T>(arg: &str, message: impl Into<String>) -> Res<T> {
    Err(Fail::at(arg, message))
}

/// A required parameter. The argument-list check has already insisted on it; this only keeps the
/// inference functions free of `unwrap`.
fn need<T>(arg: &str, found: Option<T>) -> Res<T> {
    found.ok_or_else(|| Fail::at(arg, "missing required argument"))
}

/// `x: tensor<fp16, [1, 64, 1, 32]>`, the way a value is shown in shape messages.
fn shown(arg: &str, ty: &Type) -> String {
    format!("{arg}: {ty}")
}

// ---------------------------------------------------------------------------------------------
// The op table

/// What an op accepts and how its output type follows from its arguments.
struct OpSpec {
    kind: &'static str,
    required: &'static [&'static str],
    optional: &'static [&'static str],
    /// `const` and `constexpr_affine_dequantize` take their parameters as attributes.
    in_attrs: bool,
    infer: fn(&Ctx) -> Res<Type>,
}

impl OpSpec {
    const fn args(
        kind: &'static str,
        required: &'static [&'static str],
        optional: &'static [&'static str],
        infer: fn(&Ctx) -> Res<Type>,
    ) -> OpSpec {
        OpSpec {
            kind,
            required,
            optional,
            in_attrs: false,
            infer,
        }
    }

    const fn attrs(
        kind: &'static str,
        required: &'static [&'static str],
        infer: fn(&Ctx) -> Res<Type>,
    ) -> OpSpec {
        OpSpec {
            kind,
            required,
            optional: &[],
            in_attrs: true,
            infer,
        }
    }

    fn accepts(&self, name: &str) -> bool {
        self.required.contains(&name) || self.optional.contains(&name)
    }

    fn accepted_list(&self) -> String {
        let mut all: Vec<&str> = self.required.iter().chain(self.optional).copied().collect();
        all.sort_unstable();
        all.join(", ")
    }
}

const X: &[&str] = &["x"];
const XY: &[&str] = &["x", "y"];
const NONE: &[&str] = &[];

/// Every op the checker knows.
static OPS: &[OpSpec] = &[
    OpSpec::attrs("const", &["val"], infer_const),
    OpSpec::args("cast", &["dtype", "x"], NONE, infer_cast),
    OpSpec::args(
        "conv",
        &["weight", "x"],
        &["bias", "dilations", "groups", "pad", "pad_type", "strides"],
        infer_conv,
    ),
    OpSpec::args("matmul", XY, &["transpose_x", "transpose_y"], infer_matmul),
    OpSpec::args("add", XY, NONE, infer_arithmetic),
    OpSpec::args("sub", XY, NONE, infer_arithmetic),
    OpSpec::args("mul", XY, NONE, infer_arithmetic),
    OpSpec::args("real_div", XY, NONE, infer_arithmetic),
    OpSpec::args("pow", XY, NONE, infer_arithmetic),
    OpSpec::args("maximum", XY, NONE, infer_arithmetic),
    OpSpec::args("minimum", XY, NONE, infer_arithmetic),
    OpSpec::args("equal", XY, NONE, infer_comparison),
    OpSpec::args("not_equal", XY, NONE, infer_comparison),
    OpSpec::args("less", XY, NONE, infer_comparison),
    OpSpec::args("less_equal", XY, NONE, infer_comparison),
    OpSpec::args("greater", XY, NONE, infer_comparison),
    OpSpec::args("greater_equal", XY, NONE, infer_comparison),
    OpSpec::args("identity", X, NONE, infer_identity),
    OpSpec::args("abs", X, NONE, infer_float_unary),
    OpSpec::args("ceil", X, NONE, infer_float_unary),
    OpSpec::args("cos", X, NONE, infer_float_unary),
    OpSpec::args("erf", X, NONE, infer_float_unary),
    OpSpec::args("exp", X, NONE, infer_float_unary),
    OpSpec::args("exp2", X, NONE, infer_float_unary),
    OpSpec::args("floor", X, NONE, infer_float_unary),
    OpSpec::args("relu", X, NONE, infer_float_unary),
    OpSpec::args("round", X, NONE, infer_float_unary),
    OpSpec::args("sigmoid", X, NONE, infer_float_unary),
    OpSpec::args("sign", X, NONE, infer_float_unary),
    OpSpec::args("silu", X, NONE, infer_float_unary),
    OpSpec::args("sin", X, NONE, infer_float_unary),
    OpSpec::args("sqrt", X, NONE, infer_float_unary),
    OpSpec::args("square", X, NONE, infer_float_unary),
    OpSpec::args("tanh", X, NONE, infer_float_unary),
    OpSpec::args("inverse", X, &["epsilon"], infer_unary_with_epsilon),
    OpSpec::args("log", X, &["epsilon"], infer_unary_with_epsilon),
    OpSpec::args("rsqrt", X, &["epsilon"], infer_unary_with_epsilon),
    OpSpec::args("gelu", X, &["mode"], infer_gelu),
    OpSpec::args("softmax", X, &["axis"], infer_softmax),
    OpSpec::args("reduce_sum", X, &["axes", "keep_dims"], infer_reduce),
    OpSpec::args("reduce_mean", X, &["axes", "keep_dims"], infer_reduce),
    OpSpec::args("reduce_max", X, &["axes", "keep_dims"], infer_reduce),
    OpSpec::args("reduce_min", X, &["axes", "keep_dims"], infer_reduce),
    OpSpec::args("reduce_prod", X, &["axes", "keep_dims"], infer_reduce),
    OpSpec::args(
        "slice_by_size",
        &["begin", "size", "x"],
        NONE,
        infer_slice_by_size,
    ),
    OpSpec::args(
        "slice_by_index",
        &["begin", "end", "x"],
        &["begin_mask", "end_mask", "squeeze_mask", "stride"],
        infer_slice_by_index,
    ),
    OpSpec::args("concat", &["axis", "values"], &["interleave"], infer_concat),
    OpSpec::args("reshape", &["shape", "x"], NONE, infer_reshape),
    OpSpec::args("transpose", &["perm", "x"], NONE, infer_transpose),
    OpSpec::args(
        "quantize",
        &["input", "output_dtype", "scale"],
        &["axis", "zero_point"],
        infer_quantize,
    ),
    OpSpec::args(
        "dequantize",
        &["input", "scale"],
        &["axis", "zero_point"],
        infer_dequantize,
    ),
    OpSpec::attrs(
        "constexpr_affine_dequantize",
        &["axis", "quantized_data", "scale", "zero_point"],
        infer_constexpr_affine_dequantize,
    ),
    OpSpec::args(
        "scaled_dot_product_attention",
        &["key", "query", "value"],
        &["attn_mask"],
        infer_sdpa,
    ),
    OpSpec::args(
        "layer_norm",
        X,
        &["axes", "beta", "epsilon", "gamma"],
        infer_layer_norm,
    ),
];

/// Validates the op's parameters, then infers its output type with the op's own rule.
fn infer(op: &Op, types: &HashMap<String, Type>, consts: &HashMap<String, Literal>) -> Res<Type> {
    let Some(spec) = OPS.iter().find(|s| s.kind == op.kind) else {
        let known: Vec<&str> = OPS.iter().map(|s| s.kind).collect();
        return Err(Fail::op(format!(
            "unknown op `{}` (the checker knows: {})",
            op.kind,
            known.join(", ")
        )));
    };
    check_param_names(op, spec)?;
    check_literals(op)?;
    check_references(op, types)?;
    (spec.infer)(&Ctx {
        op,
        spec,
        types,
        consts,
    })
}

/// No parameter twice, none unknown, none required missing; parameters in the place (arguments
/// or attributes) the op takes them.
fn check_param_names(op: &Op, spec: &OpSpec) -> Res<()> {
    let mut seen = HashSet::new();
    for key in op.args.iter().map(|(k, _)| k) {
        if !seen.insert(key.as_str()) {
            return fail(key, "argument given twice");
        }
        if spec.in_attrs {
            return fail(
                key,
                format!(
                    "{} takes its parameters as attributes in [...] and no arguments",
                    spec.kind
                ),
            );
        }
        if !spec.accepts(key) {
            return fail(
                key,
                format!(
                    "unknown argument `{key}` for {} (accepted: {})",
                    spec.kind,
                    spec.accepted_list()
                ),
            );
        }
    }
    let mut seen_attrs = HashSet::new();
    for key in op.attrs.iter().map(|(k, _)| k) {
        if !seen_attrs.insert(key.as_str()) {
            return fail(key, "attribute given twice");
        }
        if key == "name" {
            continue;
        }
        if !spec.in_attrs {
            return fail(
                key,
                format!(
                    "unknown attribute `{key}`: {} takes only `name` in [...]",
                    spec.kind
                ),
            );
        }
        if !spec.accepts(key) {
            return fail(
                key,
                format!(
                    "unknown attribute `{key}` for {} (accepted: name, {})",
                    spec.kind,
                    spec.accepted_list()
                ),
            );
        }
    }
    let given = if spec.in_attrs { &seen_attrs } else { &seen };
    match spec.required.iter().find(|r| !given.contains(*r)) {
        Some(missing) => fail(missing, "missing required argument"),
        None => Ok(()),
    }
}

/// Every literal written in the op, in its arguments or attributes, is well formed.
fn check_literals(op: &Op) -> Res<()> {
    let args = op.args.iter().filter_map(|(k, a)| match a {
        Arg::Literal(l) => Some((k, l)),
        _ => None,
    });
    let attrs = op.attrs.iter().map(|(k, l)| (k, l));
    for (key, lit) in args.chain(attrs) {
        if let Some(problem) = literal_problem(lit) {
            return fail(key, problem);
        }
    }
    Ok(())
}

/// Every named value the op uses is defined before it.
fn check_references(op: &Op, types: &HashMap<String, Type>) -> Res<()> {
    for (key, arg) in &op.args {
        let names: &[String] = match arg {
            Arg::Var(v) => std::slice::from_ref(v),
            Arg::Tuple(vs) => vs,
            Arg::Literal(_) => &[],
        };
        if let Some(missing) = names.iter().find(|n| !types.contains_key(*n)) {
            return fail(key, format!("`{missing}` is not defined before this op"));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Literals

/// Why a literal is malformed: wrong element count for its shape, elements of the wrong kind or
/// out of their dtype's range, or a blob whose size overflows.
fn literal_problem(lit: &Literal) -> Option<String> {
    match lit {
        Literal::Scalar { dtype, value } => scalar_problem(*dtype, value),
        Literal::Tensor {
            dtype,
            shape,
            values,
        } => {
            let ty = lit.ty();
            match element_count(shape) {
                Some(n) if n == values.len() => {}
                _ => {
                    return Some(format!(
                        "literal {ty} holds {} values, not one per element",
                        values.len()
                    ))
                }
            }
            values
                .iter()
                .find_map(|v| scalar_problem(*dtype, v))
                .map(|p| format!("in literal {ty}: {p}"))
        }
        Literal::Blob { dtype, shape, .. } => {
            let bytes = dtype
                .size_bytes()
                .and_then(|size| element_count(shape)?.checked_mul(size));
            match (dtype, bytes) {
                (DType::String, _) => Some("a weight blob cannot hold strings".to_string()),
                (_, None) => Some(format!("blob {} is too large", lit.ty())),
                _ => None,
            }
        }
    }
}

/// Why one literal element does not belong to `dtype`, if it does not.
fn scalar_problem(dtype: DType, value: &Scalar) -> Option<String> {
    let fits = match (dtype, value) {
        (DType::Fp16 | DType::Fp32, Scalar::Float(_) | Scalar::Int(_)) => true,
        (DType::Int32, Scalar::Int(i)) => i32::try_from(*i).is_ok(),
        (DType::Int16, Scalar::Int(i)) => i16::try_from(*i).is_ok(),
        (DType::Int8, Scalar::Int(i)) => i8::try_from(*i).is_ok(),
        (DType::UInt8, Scalar::Int(i)) => u8::try_from(*i).is_ok(),
        (DType::UInt16, Scalar::Int(i)) => u16::try_from(*i).is_ok(),
        (DType::UInt32, Scalar::Int(i)) => u32::try_from(*i).is_ok(),
        // uint64 values are stored as the i64 with the same bits.
        (DType::UInt64, Scalar::Int(_)) => true,
        (DType::Bool, Scalar::Bool(_)) => true,
        (DType::String, Scalar::Str(_)) => true,
        _ => false,
    };
    (!fits).then(|| format!("{value:?} is not a valid {dtype} value"))
}

/// The single element of a scalar literal (or of a rank-0 tensor literal).
fn scalar_of(lit: &Literal) -> Option<&Scalar> {
    match lit {
        Literal::Scalar { value, .. } => Some(value),
        Literal::Tensor { shape, values, .. } if shape.is_empty() && values.len() == 1 => {
            values.first()
        }
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// Shape arithmetic

/// The number of elements of a shape, or `None` on overflow.
fn element_count(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d))
}

/// Where two shapes fail to broadcast: the axis counted from the end (-1 is the last) and the
/// two sizes there.
#[derive(Debug, PartialEq)]
struct BroadcastMismatch {
    axis_from_end: usize,
    a: usize,
    b: usize,
}

/// Numpy broadcasting: shapes are aligned at the last axis; sizes must agree or one be 1, and a
/// missing leading axis counts as 1.
fn broadcast(a: &[usize], b: &[usize]) -> Result<Vec<usize>, BroadcastMismatch> {
    let rank = a.len().max(b.len());
    let mut out = Vec::with_capacity(rank);
    for i in 0..rank {
        let da = a.iter().rev().nth(i).copied().unwrap_or(1);
        let db = b.iter().rev().nth(i).copied().unwrap_or(1);
        let d = match (da, db) {
            (x, y) if x == y => x,
            (1, y) => y,
            (x, 1) => x,
            _ => {
                return Err(BroadcastMismatch {
                    axis_from_end: i + 1,
                    a: da,
                    b: db,
                })
            }
        };
        out.push(d);
    }
    out.reverse();
    Ok(out)
}

/// A possibly negative axis as an index into a shape of `rank` axes.
fn normalize_axis(axis: i64, rank: usize) -> Option<usize> {
    let rank = i64::try_from(rank).ok()?;
    let axis = if axis < 0 { axis + rank } else { axis };
    if (0..rank).contains(&axis) {
        usize::try_from(axis).ok()
    } else {
        None
    }
}

/// `axis` of argument `arg` normalised against `of`, the value it indexes.
fn axis_in(arg: &str, axis: i64, of_arg: &str, of: &Type) -> Res<usize> {
    normalize_axis(axis, of.rank()).ok_or_else(|| {
        Fail::at(
            arg,
            format!(
                "axis {axis} is out of range for rank {} ({})",
                of.rank(),
                shown(of_arg, of)
            ),
        )
    })
}

/// A list of axes, normalised, with duplicates rejected.
fn axes_in(arg: &str, axes: &[i64], of_arg: &str, of: &Type) -> Res<Vec<usize>> {
    let mut out = Vec::with_capacity(axes.len());
    for &axis in axes {
        let a = axis_in(arg, axis, of_arg, of)?;
        if out.contains(&a) {
            return fail(arg, format!("axis {axis} is listed twice (as axis {a})"));
        }
        out.push(a);
    }
    Ok(out)
}

fn to_usize(v: i64) -> Option<usize> {
    usize::try_from(v).ok()
}

// ---------------------------------------------------------------------------------------------
// Reading an op's parameters

/// A parameter as written: a named value, a tuple of them, or a literal.
enum ParamRef<'a> {
    Var(&'a str),
    Tuple(&'a [String]),
    Lit(&'a Literal),
}

/// One op under inference, with the types and constants of the values before it.
struct Ctx<'a> {
    op: &'a Op,
    spec: &'a OpSpec,
    types: &'a HashMap<String, Type>,
    consts: &'a HashMap<String, Literal>,
}

impl<'a> Ctx<'a> {
    fn param(&self, name: &str) -> Option<ParamRef<'a>> {
        if self.spec.in_attrs {
            return self.op.attr(name).map(ParamRef::Lit);
        }
        self.op.arg(name).map(|arg| match arg {
            Arg::Var(v) => ParamRef::Var(v),
            Arg::Tuple(vs) => ParamRef::Tuple(vs),
            Arg::Literal(l) => ParamRef::Lit(l),
        })
    }

    /// The type of an optional single-value parameter.
    fn opt_value(&self, name: &str) -> Res<Option<Type>> {
        match self.param(name) {
            None => Ok(None),
            Some(ParamRef::Var(v)) => match self.types.get(v) {
                Some(ty) => Ok(Some(ty.clone())),
                None => fail(name, format!("`{v}` is not defined before this op")),
            },
            Some(ParamRef::Lit(l)) => Ok(Some(l.ty())),
            Some(ParamRef::Tuple(_)) => fail(name, "expects a single value, not a tuple"),
        }
    }

    /// The type of a required single-value parameter.
    fn value(&self, name: &str) -> Res<Type> {
        need(name, self.opt_value(name)?)
    }

    /// The names and types of a tuple parameter such as concat's `values`.
    fn tuple(&self, name: &str) -> Res<Vec<(&'a str, Type)>> {
        let Some(ParamRef::Tuple(names)) = self.param(name) else {
            return fail(name, "expects a tuple of values, e.g. (a, b)");
        };
        names
            .iter()
            .map(|n| match self.types.get(n) {
                Some(ty) => Ok((n.as_str(), ty.clone())),
                None => fail(name, format!("`{n}` is not defined before this op")),
            })
            .collect()
    }

    /// The literal of a parameter that must be known at compile time.
    fn constant(&self, name: &str) -> Res<Option<&'a Literal>> {
        match self.param(name) {
            None => Ok(None),
            Some(ParamRef::Lit(l)) => Ok(Some(l)),
            Some(ParamRef::Var(v)) => match self.consts.get(v) {
                Some(l) => Ok(Some(l)),
                None => fail(
                    name,
                    format!(
                        "must be a compile-time constant (a const value or an inline literal), \
                         but `{v}` is not a const"
                    ),
                ),
            },
            Some(ParamRef::Tuple(_)) => fail(name, "expects a constant, not a tuple"),
        }
    }

    /// A constant scalar of the given dtype.
    fn const_scalar(&self, name: &str, dtype: DType) -> Res<Option<&'a Scalar>> {
        let Some(lit) = self.constant(name)? else {
            return Ok(None);
        };
        match (lit.ty(), scalar_of(lit)) {
            (Type::Scalar(d), Some(s)) if d == dtype => Ok(Some(s)),
            (ty, _) => fail(name, format!("must be a scalar of type {dtype}, got {ty}")),
        }
    }

    fn const_int(&self, name: &str) -> Res<Option<i64>> {
        match self.const_scalar(name, DType::Int32)? {
            None => Ok(None),
            Some(s) => need(name, s.as_i64()).map(Some),
        }
    }

    fn const_bool(&self, name: &str) -> Res<Option<bool>> {
        match self.const_scalar(name, DType::Bool)? {
            None => Ok(None),
            Some(Scalar::Bool(b)) => Ok(Some(*b)),
            Some(other) => fail(name, format!("{other:?} is not a bool")),
        }
    }

    fn const_str(&self, name: &str) -> Res<Option<&'a str>> {
        match self.const_scalar(name, DType::String)? {
            None => Ok(None),
            Some(Scalar::Str(s)) => Ok(Some(s)),
            Some(other) => fail(name, format!("{other:?} is not a string")),
        }
    }

    /// The elements of a constant rank-1 tensor of the given dtype; with `len`, it must have
    /// exactly that many elements (the string says why, e.g. "one per axis of x: ...").
    fn const_vector(
        &self,
        name: &str,
        dtype: DType,
        len: Option<(usize, &str)>,
    ) -> Res<Option<&'a [Scalar]>> {
        let Some(lit) = self.constant(name)? else {
            return Ok(None);
        };
        let values = match lit {
            Literal::Tensor {
                dtype: d,
                shape,
                values,
            } if *d == dtype && shape.len() == 1 => values,
            _ => {
                return fail(
                    name,
                    format!("must be a rank-1 {dtype} tensor, got {}", lit.ty()),
                )
            }
        };
        if let Some((n, why)) = len {
            if values.len() != n {
                return fail(
                    name,
                    format!(
                        "must have {n} elements ({why}), got {} ({})",
                        values.len(),
                        shown(name, &lit.ty())
                    ),
                );
            }
        }
        Ok(Some(values))
    }

    fn const_ints(&self, name: &str, len: Option<(usize, &str)>) -> Res<Option<Vec<i64>>> {
        match self.const_vector(name, DType::Int32, len)? {
            None => Ok(None),
            Some(values) => need(name, values.iter().map(Scalar::as_i64).collect()).map(Some),
        }
    }

    fn const_bools(&self, name: &str, len: Option<(usize, &str)>) -> Res<Option<Vec<bool>>> {
        let Some(values) = self.const_vector(name, DType::Bool, len)? else {
            return Ok(None);
        };
        let bools = values.iter().map(|v| match v {
            Scalar::Bool(b) => Some(*b),
            _ => None,
        });
        need(name, bools.collect()).map(Some)
    }
}

// ---------------------------------------------------------------------------------------------
// Dtype rules

const FLOATS: &[DType] = &[DType::Fp16, DType::Fp32];
const NUMERIC: &[DType] = &[
    DType::Fp16,
    DType::Fp32,
    DType::Int32,
    DType::Int16,
    DType::Int8,
    DType::UInt8,
    DType::UInt16,
    DType::UInt32,
    DType::UInt64,
];
const QUANTIZED: &[DType] = &[DType::Int8, DType::UInt8];

/// `ty`, the type of `arg`, has one of the `allowed` dtypes.
fn require_dtype(arg: &str, ty: &Type, allowed: &[DType]) -> Res<()> {
    if allowed.contains(&ty.dtype()) {
        return Ok(());
    }
    let names: Vec<&str> = allowed.iter().map(|d| d.mil_name()).collect();
    fail(
        arg,
        format!("must be {}, got {}", names.join(" or "), shown(arg, ty)),
    )
}

/// `ty` (of `arg`) has the same dtype as `other` (of `other_arg`).
fn require_same_dtype(arg: &str, ty: &Type, other_arg: &str, other: &Type) -> Res<()> {
    if ty.dtype() == other.dtype() {
        return Ok(());
    }
    fail(
        arg,
        format!(
            "dtype {} differs from {}'s {} ({}, {})",
            ty.dtype(),
            other_arg,
            other.dtype(),
            shown(arg, ty),
            shown(other_arg, other)
        ),
    )
}

/// `ty` (of `arg`) is a scalar of the given dtype.
fn require_scalar(arg: &str, ty: &Type, dtype: DType) -> Res<()> {
    if ty.rank() == 0 && ty.dtype() == dtype {
        return Ok(());
    }
    fail(arg, format!("must be a scalar of type {dtype}, got {ty}"))
}

// ---------------------------------------------------------------------------------------------
// Inference, one function per op family

fn infer_const(ctx: &Ctx) -> Res<Type> {
    Ok(need("val", ctx.constant("val")?)?.ty())
}

/// `cast(dtype, x)`: same shape, the named dtype.
fn infer_cast(ctx: &Ctx) -> Res<Type> {
    const TARGETS: &[DType] = &[
        DType::Fp16,
        DType::Fp32,
        DType::Int32,
        DType::Int16,
        DType::Int8,
        DType::UInt8,
        DType::UInt16,
        DType::Bool,
    ];
    let x = ctx.value("x")?;
    if x.dtype() == DType::String {
        return fail("x", format!("cannot cast strings ({})", shown("x", &x)));
    }
    let name = need("dtype", ctx.const_str("dtype")?)?;
    match DType::from_mil_name(name).filter(|d| TARGETS.contains(d)) {
        Some(dtype) => Ok(Type::tensor(dtype, x.shape())),
        None => {
            let names: Vec<&str> = TARGETS.iter().map(|d| d.mil_name()).collect();
            fail(
                "dtype",
                format!("cannot cast to \"{name}\" (accepted: {})", names.join(", ")),
            )
        }
    }
}

/// `conv(x [N, Cin, spatial...], weight [Cout, Cin/groups, kernel...])` →
/// `[N, Cout, out...]`, with each output size given by pad_type, strides, pad and dilations.
fn infer_conv(ctx: &Ctx) -> Res<Type> {
    let x = ctx.value("x")?;
    let w = ctx.value("weight")?;
    require_dtype("x", &x, FLOATS)?;
    require_same_dtype("weight", &w, "x", &x)?;
    let shapes = conv_shapes(&x, &w)?;
    check_conv_channels(ctx, &shapes, &x, &w)?;
    check_conv_bias(ctx, shapes.cout, &x, &w)?;
    let geometry = conv_geometry(ctx, &x)?;
    let mut shape = vec![shapes.n, shapes.cout];
    shape.extend(conv_spatial_out(&shapes, &geometry, &x, &w)?);
    Ok(Type::tensor(x.dtype(), shape))
}

/// conv's operand shapes taken apart: x `[n, cin, spatial...]`, weight
/// `[cout, cin_per_group, kernel...]`.
struct ConvShapes<'s> {
    n: usize,
    cin: usize,
    spatial: &'s [usize],
    cout: usize,
    cin_per_group: usize,
    kernel: &'s [usize],
}

/// x has 1 to 3 spatial axes, and the weight a kernel size for each.
fn conv_shapes<'s>(x: &'s Type, w: &'s Type) -> Res<ConvShapes<'s>> {
    let [n, cin, spatial @ ..] = x.shape() else {
        return fail(
            "x",
            format!("conv needs x of rank 3 to 5, got {}", shown("x", x)),
        );
    };
    if !(1..=3).contains(&spatial.len()) {
        return fail(
            "x",
            format!("conv needs x of rank 3 to 5, got {}", shown("x", x)),
        );
    }
    match w.shape() {
        [cout, cin_per_group, kernel @ ..] if kernel.len() == spatial.len() => Ok(ConvShapes {
            n: *n,
            cin: *cin,
            spatial,
            cout: *cout,
            cin_per_group: *cin_per_group,
            kernel,
        }),
        _ => fail("weight", rank_mismatch("weight", w, "x", x)),
    }
}

/// Input channels are `cin_per_group × groups`, and groups divide the output channels.
fn check_conv_channels(ctx: &Ctx, s: &ConvShapes, x: &Type, w: &Type) -> Res<()> {
    let groups = ctx.const_int("groups")?.unwrap_or(1);
    let Some(groups) = to_usize(groups).filter(|&g| g >= 1) else {
        return fail("groups", format!("groups must be at least 1, got {groups}"));
    };
    let (cin, cin_per_group, cout) = (s.cin, s.cin_per_group, s.cout);
    if cin_per_group.checked_mul(groups) != Some(cin) {
        return fail(
            "weight",
            format!(
                "input channels {cin} ({}) do not match weight's {cin_per_group} × groups {groups} ({})",
                shown("x", x),
                shown("weight", w)
            ),
        );
    }
    if cout % groups != 0 {
        return fail(
            "groups",
            format!(
                "output channels {cout} ({}) are not divisible by groups {groups}",
                shown("weight", w)
            ),
        );
    }
    Ok(())
}

/// The optional bias has one entry per output channel.
fn check_conv_bias(ctx: &Ctx, cout: usize, x: &Type, w: &Type) -> Res<()> {
    let Some(bias) = ctx.opt_value("bias")? else {
        return Ok(());
    };
    require_same_dtype("bias", &bias, "x", x)?;
    if bias.shape() != [cout] {
        return fail(
            "bias",
            format!(
                "bias must be [{cout}], one per output channel ({}, {})",
                shown("bias", &bias),
                shown("weight", w)
            ),
        );
    }
    Ok(())
}

/// Strides, dilations and padding of each spatial axis.
struct ConvGeometry {
    strides: Vec<usize>,
    dilations: Vec<usize>,
    /// (before, after) per spatial axis; zero unless pad_type is "custom".
    pads: Vec<(usize, usize)>,
    kind: PadKind,
}

fn conv_geometry(ctx: &Ctx, x: &Type) -> Res<ConvGeometry> {
    let spatial = x.rank().saturating_sub(2);
    let per_axis = format!("one per spatial axis of {}", shown("x", x));
    let kind = pad_kind(ctx)?;
    Ok(ConvGeometry {
        strides: conv_factors(ctx, "strides", spatial, &per_axis)?,
        dilations: conv_factors(ctx, "dilations", spatial, &per_axis)?,
        pads: conv_pads(ctx, spatial, x, &kind)?,
        kind,
    })
}

/// The output size of each spatial axis.
fn conv_spatial_out(s: &ConvShapes, g: &ConvGeometry, x: &Type, w: &Type) -> Res<Vec<usize>> {
    let axes = s
        .spatial
        .iter()
        .zip(s.kernel)
        .zip(g.strides.iter().zip(&g.dilations))
        .zip(&g.pads);
    let mut out = Vec::with_capacity(s.spatial.len());
    for (axis, (((&size, &k), (&stride, &dilation)), &(lo, hi))) in axes.enumerate() {
        let n = match g.kind {
            PadKind::Same => Some(size.div_ceil(stride)),
            PadKind::Valid | PadKind::Custom => conv_out_size(size, lo, hi, k, stride, dilation),
        };
        let Some(n) = n else {
            return fail(
                "weight",
                format!(
                    "along spatial axis {axis}, kernel {k} with dilation {dilation} is larger than \
                     the padded input {size} + {lo} + {hi} ({}, {})",
                    shown("x", x),
                    shown("weight", w)
                ),
            );
        };
        out.push(n);
    }
    Ok(out)
}

fn rank_mismatch(arg: &str, ty: &Type, other_arg: &str, other: &Type) -> String {
    format!(
        "rank {} does not match {other_arg}'s rank {} ({}, {})",
        ty.rank(),
        other.rank(),
        shown(arg, ty),
        shown(other_arg, other)
    )
}

/// conv's `strides` or `dilations`: one positive factor per spatial axis, default all 1.
fn conv_factors(ctx: &Ctx, name: &str, spatial: usize, why: &str) -> Res<Vec<usize>> {
    let Some(values) = ctx.const_ints(name, Some((spatial, why)))? else {
        return Ok(vec![1; spatial]);
    };
    values
        .iter()
        .map(|&v| {
            to_usize(v)
                .filter(|&v| v >= 1)
                .ok_or_else(|| Fail::at(name, format!("{name} must be at least 1, got {v}")))
        })
        .collect()
}

/// How conv pads: not at all ("valid", the default), enough to keep `ceil(size / stride)`
/// ("same", "same_lower"), or by the amounts in `pad` ("custom").
enum PadKind {
    Valid,
    Same,
    Custom,
}

fn pad_kind(ctx: &Ctx) -> Res<PadKind> {
    match ctx.const_str("pad_type")?.unwrap_or("valid") {
        "valid" => Ok(PadKind::Valid),
        "same" | "same_lower" => Ok(PadKind::Same),
        "custom" => Ok(PadKind::Custom),
        other => fail(
            "pad_type",
            format!("unknown pad_type \"{other}\" (accepted: valid, same, same_lower, custom)"),
        ),
    }
}

/// The (before, after) padding of each spatial axis. `pad` is validated whenever it is given,
/// but only "custom" uses it, as in MIL.
fn conv_pads(ctx: &Ctx, spatial: usize, x: &Type, kind: &PadKind) -> Res<Vec<(usize, usize)>> {
    let why = format!("before and after each spatial axis of {}", shown("x", x));
    let pad = ctx.const_ints("pad", Some((2 * spatial, why.as_str())))?;
    let pad = match pad {
        Some(values) => values
            .iter()
            .map(|&v| {
                to_usize(v).ok_or_else(|| Fail::at("pad", format!("padding {v} is negative")))
            })
            .collect::<Res<Vec<usize>>>()?,
        None => vec![0; 2 * spatial],
    };
    let custom = matches!(kind, PadKind::Custom);
    Ok(pad
        .chunks(2)
        .map(|c| match c {
            [lo, hi] if custom => (*lo, *hi),
            _ => (0, 0),
        })
        .collect())
}

/// `floor((size + lo + hi - dilation·(k-1) - 1) / stride) + 1`, or `None` if the dilated kernel
/// does not fit in the padded input (or the arithmetic overflows).
fn conv_out_size(
    size: usize,
    lo: usize,
    hi: usize,
    k: usize,
    stride: usize,
    dilation: usize,
) -> Option<usize> {
    let padded = size.checked_add(lo)?.checked_add(hi)?;
    let extent = dilation.checked_mul(k.checked_sub(1)?)?.checked_add(1)?;
    Some(padded.checked_sub(extent)? / stride + 1)
}

/// An operand of matmul as a stack of matrices: (batch dims, rows, columns) after the optional
/// transpose. As in numpy, a vector is one row on the left and one column on the right.
fn as_matrices(shape: &[usize], transpose: bool, left: bool) -> Option<(&[usize], usize, usize)> {
    match shape {
        [] => None,
        [k] if left => Some((&[], 1, *k)),
        [k] => Some((&[], *k, 1)),
        [batch @ .., r, c] if transpose => Some((batch, *c, *r)),
        [batch @ .., r, c] => Some((batch, *r, *c)),
    }
}

/// `matmul(x [..., M, K], y [..., K, N])` → `[broadcast(...), M, N]`, with the vector axes of
/// rank-1 operands dropped from the result (numpy semantics; transposes do not apply to them).
fn infer_matmul(ctx: &Ctx) -> Res<Type> {
    let x = ctx.value("x")?;
    let y = ctx.value("y")?;
    require_dtype("x", &x, &[DType::Fp16, DType::Fp32, DType::Int32])?;
    require_same_dtype("y", &y, "x", &x)?;
    let tx = ctx.const_bool("transpose_x")?.unwrap_or(false);
    let ty = ctx.const_bool("transpose_y")?.unwrap_or(false);
    let Some((xb, m, kx)) = as_matrices(x.shape(), tx, true) else {
        return fail(
            "x",
            format!("matmul needs rank ≥ 1, got {}", shown("x", &x)),
        );
    };
    let Some((yb, ky, n)) = as_matrices(y.shape(), ty, false) else {
        return fail(
            "y",
            format!("matmul needs rank ≥ 1, got {}", shown("y", &y)),
        );
    };
    if kx != ky {
        return fail(
            "y",
            format!(
                "inner dimensions differ: x has {kx} columns (transpose_x={tx}) but y has {ky} rows \
                 (transpose_y={ty}) ({}, {})",
                shown("x", &x),
                shown("y", &y)
            ),
        );
    }
    let mut shape = broadcast(xb, yb).map_err(|e| {
        Fail::at(
            "y",
            format!(
                "batch dimensions do not broadcast: {} against {} at axis -{} ({}, {})",
                e.a,
                e.b,
                e.axis_from_end,
                shown("x", &x),
                shown("y", &y)
            ),
        )
    })?;
    if x.rank() >= 2 {
        shape.push(m);
    }
    if y.rank() >= 2 {
        shape.push(n);
    }
    Ok(Type::tensor(x.dtype(), shape))
}

/// The two operands of an elementwise binary op, of one dtype, and their broadcast shape.
fn broadcast_operands(ctx: &Ctx) -> Res<(Type, Vec<usize>)> {
    let x = ctx.value("x")?;
    let y = ctx.value("y")?;
    require_same_dtype("y", &y, "x", &x)?;
    let shape = broadcast(x.shape(), y.shape()).map_err(|e| {
        Fail::at(
            "y",
            format!(
                "shapes do not broadcast: {} against {} at axis -{} ({}, {})",
                e.a,
                e.b,
                e.axis_from_end,
                shown("x", &x),
                shown("y", &y)
            ),
        )
    })?;
    Ok((x, shape))
}

/// `add`, `sub`, `mul`, `real_div`, `pow`, `maximum`, `minimum`: numbers of one dtype, broadcast.
fn infer_arithmetic(ctx: &Ctx) -> Res<Type> {
    let (x, shape) = broadcast_operands(ctx)?;
    require_dtype("x", &x, NUMERIC)?;
    Ok(Type::tensor(x.dtype(), shape))
}

/// `equal`, `less`, ...: operands of one dtype, broadcast; the result is bool.
fn infer_comparison(ctx: &Ctx) -> Res<Type> {
    let (x, shape) = broadcast_operands(ctx)?;
    if x.dtype() == DType::String {
        return fail("x", format!("cannot compare strings ({})", shown("x", &x)));
    }
    Ok(Type::tensor(DType::Bool, shape))
}

fn infer_identity(ctx: &Ctx) -> Res<Type> {
    ctx.value("x")
}

/// `sigmoid`, `exp`, `relu`, ...: fp16 or fp32 in, the same type out.
fn infer_float_unary(ctx: &Ctx) -> Res<Type> {
    let x = ctx.value("x")?;
    require_dtype("x", &x, FLOATS)?;
    Ok(x)
}

/// `rsqrt`, `inverse`, `log`: a float unary op whose optional `epsilon` is a scalar of x's dtype.
fn infer_unary_with_epsilon(ctx: &Ctx) -> Res<Type> {
    let x = infer_float_unary(ctx)?;
    if let Some(eps) = ctx.opt_value("epsilon")? {
        require_scalar("epsilon", &eps, x.dtype())?;
    }
    Ok(x)
}

/// `gelu`, whose optional `mode` picks the approximation.
fn infer_gelu(ctx: &Ctx) -> Res<Type> {
    const MODES: &[&str] = &["EXACT", "TANH_APPROXIMATION", "SIGMOID_APPROXIMATION"];
    let x = infer_float_unary(ctx)?;
    match ctx.const_str("mode")? {
        Some(mode) if !MODES.contains(&mode) => fail(
            "mode",
            format!("unknown mode \"{mode}\" (accepted: {})", MODES.join(", ")),
        ),
        _ => Ok(x),
    }
}

/// `softmax(x, axis = -1)`: the same type as x.
fn infer_softmax(ctx: &Ctx) -> Res<Type> {
    let x = infer_float_unary(ctx)?;
    axis_in("axis", ctx.const_int("axis")?.unwrap_or(-1), "x", &x)?;
    Ok(x)
}

/// `reduce_*(x, axes = all, keep_dims = false)`: reduced axes become 1 or disappear.
fn infer_reduce(ctx: &Ctx) -> Res<Type> {
    let x = ctx.value("x")?;
    require_dtype("x", &x, NUMERIC)?;
    let keep = ctx.const_bool("keep_dims")?.unwrap_or(false);
    let axes = match ctx.const_ints("axes", None)? {
        Some(axes) if axes.is_empty() => {
            return fail("axes", "axes is empty; omit it to reduce over all axes")
        }
        Some(axes) => axes_in("axes", &axes, "x", &x)?,
        None => (0..x.rank()).collect(),
    };
    let shape: Vec<usize> = x
        .shape()
        .iter()
        .enumerate()
        .filter_map(|(i, &d)| match axes.contains(&i) {
            true => keep.then_some(1),
            false => Some(d),
        })
        .collect();
    Ok(Type::tensor(x.dtype(), shape))
}

/// `slice_by_size(x, begin, size)`: per axis, `size` elements from `begin` (negative counts from
/// the end), `-1` meaning to the end; the slice must lie inside x and not be empty.
fn infer_slice_by_size(ctx: &Ctx) -> Res<Type> {
    let x = ctx.value("x")?;
    let why = format!("one per axis of {}", shown("x", &x));
    let begin = need("begin", ctx.const_ints("begin", Some((x.rank(), &why)))?)?;
    let size = need("size", ctx.const_ints("size", Some((x.rank(), &why)))?)?;
    let mut shape = Vec::with_capacity(x.rank());
    for (axis, ((&dim, &b), &s)) in x.shape().iter().zip(&begin).zip(&size).enumerate() {
        let Some(start) = index_in(b, dim) else {
            return fail(
                "begin",
                format!(
                    "begin {b} is outside axis {axis} of length {dim} ({})",
                    shown("x", &x)
                ),
            );
        };
        let len = match s {
            -1 => dim - start,
            s => match to_usize(s).filter(|&s| s >= 1) {
                Some(s) => s,
                None => {
                    return fail(
                        "size",
                        format!("size {s} along axis {axis} must be at least 1, or -1"),
                    )
                }
            },
        };
        if start.checked_add(len).is_none_or(|end| end > dim) {
            return fail(
                "size",
                format!(
                    "slice [{start}, {start} + {len}) runs past axis {axis} of length {dim} ({})",
                    shown("x", &x)
                ),
            );
        }
        shape.push(len);
    }
    Ok(Type::tensor(x.dtype(), shape))
}

/// An index into an axis of length `dim`, negative counting from the end.
fn index_in(index: i64, dim: usize) -> Option<usize> {
    normalize_axis(index, dim)
}

/// The parameters of `slice_by_index` along one axis.
struct AxisSlice {
    begin: i64,
    end: i64,
    stride: i64,
    begin_masked: bool,
    end_masked: bool,
}

/// The number of elements Python's `x[begin:end:stride]` selects from an axis of length `dim`:
/// negative indices count from the end, out-of-range ones are clamped, masked ones are open.
fn slice_len(dim: i64, s: &AxisSlice) -> u64 {
    let (lower, upper) = if s.stride > 0 {
        (0, dim)
    } else {
        (-1, dim - 1)
    };
    let clamp = |v: i64| if v < 0 { v + dim } else { v }.clamp(lower, upper);
    let start = match (s.begin_masked, s.stride > 0) {
        (true, true) => lower,
        (true, false) => upper,
        (false, _) => clamp(s.begin),
    };
    let stop = match (s.end_masked, s.stride > 0) {
        (true, true) => upper,
        (true, false) => lower,
        (false, _) => clamp(s.end),
    };
    // Both ends lie in [-1, dim], so the span cannot overflow; the step is taken unsigned so that
    // a stride of i64::MIN cannot overflow on negation.
    let span = if s.stride > 0 {
        stop - start
    } else {
        start - stop
    };
    match u64::try_from(span - 1) {
        Ok(rest) => rest / s.stride.unsigned_abs() + 1,
        Err(_) => 0,
    }
}

/// `slice_by_index(x, begin, end, stride, begin_mask, end_mask, squeeze_mask)`: numpy slicing per
/// axis; a squeezed axis takes the single element at `begin` and disappears.
fn infer_slice_by_index(ctx: &Ctx) -> Res<Type> {
    let x = ctx.value("x")?;
    let rank = x.rank();
    let why = format!("one per axis of {}", shown("x", &x));
    let len = Some((rank, why.as_str()));
    let begin = need("begin", ctx.const_ints("begin", len)?)?;
    let end = need("end", ctx.const_ints("end", len)?)?;
    let stride = ctx.const_ints("stride", len)?.unwrap_or(vec![1; rank]);
    let begin_mask = ctx
        .const_bools("begin_mask", len)?
        .unwrap_or(vec![false; rank]);
    let end_mask = ctx
        .const_bools("end_mask", len)?
        .unwrap_or(vec![false; rank]);
    let squeeze = ctx
        .const_bools("squeeze_mask", len)?
        .unwrap_or(vec![false; rank]);
    let mut shape = Vec::with_capacity(rank);
    for axis in 0..rank {
        let (Some(&dim), Some(&b), Some(&e), Some(&st), Some(&bm), Some(&em), Some(&sq)) = (
            x.shape().get(axis),
            begin.get(axis),
            end.get(axis),
            stride.get(axis),
            begin_mask.get(axis),
            end_mask.get(axis),
            squeeze.get(axis),
        ) else {
            return fail("x", "slice parameters do not match the rank of x");
        };
        if st == 0 {
            return fail("stride", format!("stride along axis {axis} is 0"));
        }
        if sq {
            let at = if bm { 0 } else { b };
            if index_in(at, dim).is_none() {
                return fail(
                    "begin",
                    format!(
                        "squeezed axis {axis} takes index {at}, outside length {dim} ({})",
                        shown("x", &x)
                    ),
                );
            }
            continue;
        }
        let Ok(dim_i) = i64::try_from(dim) else {
            return fail("x", format!("axis {axis} is too long ({})", shown("x", &x)));
        };
        let slice = AxisSlice {
            begin: b,
            end: e,
            stride: st,
            begin_masked: bm,
            end_masked: em,
        };
        match usize::try_from(slice_len(dim_i, &slice))
            .ok()
            .filter(|&n| n > 0)
        {
            Some(n) => shape.push(n),
            None => {
                return fail(
                    "end",
                    format!(
                    "the slice {b}:{e}:{st} selects nothing along axis {axis} of length {dim} ({})",
                    shown("x", &x)
                ),
                )
            }
        }
    }
    Ok(Type::tensor(x.dtype(), shape))
}

/// `concat(values, axis, interleave)`: one dtype and rank, sizes equal except along `axis`,
/// where they add up. Interleaving needs equal shapes.
fn infer_concat(ctx: &Ctx) -> Res<Type> {
    let values = ctx.tuple("values")?;
    let Some(((first_name, first), rest)) = values.split_first() else {
        return fail("values", "concat needs at least one value");
    };
    let axis = need("axis", ctx.const_int("axis")?)?;
    let axis = axis_in("axis", axis, first_name, first)?;
    let interleave = ctx.const_bool("interleave")?.unwrap_or(false);
    let mut shape = first.shape().to_vec();
    for (name, ty) in rest {
        require_same_dtype("values", ty, first_name, first).map_err(|f| Fail {
            message: format!("`{name}`: {}", f.message),
            ..f
        })?;
        let both = format!("{}, {}", shown(first_name, first), shown(name, ty));
        if ty.rank() != first.rank() {
            return fail("values", format!("ranks differ ({both})"));
        }
        if interleave && ty.shape() != first.shape() {
            return fail(
                "interleave",
                format!("interleaved concat needs equal shapes ({both})"),
            );
        }
        let other_axis = first
            .shape()
            .iter()
            .zip(ty.shape())
            .enumerate()
            .find(|&(i, (a, b))| i != axis && a != b);
        if let Some((i, _)) = other_axis {
            return fail(
                "values",
                format!(
                    "sizes differ along axis {i}, which is not the concat axis {axis} ({both})"
                ),
            );
        }
        let (Some(total), Some(&add)) = (shape.get_mut(axis), ty.shape().get(axis)) else {
            return fail("values", format!("ranks differ ({both})"));
        };
        *total = total
            .checked_add(add)
            .ok_or_else(|| Fail::at("values", "the concatenated size overflows"))?;
    }
    Ok(Type::tensor(first.dtype(), shape))
}

/// `reshape(x, shape)`: the same elements in a new shape; one `-1` takes the rest. `0` is
/// rejected rather than read as "copy x's size".
fn infer_reshape(ctx: &Ctx) -> Res<Type> {
    let x = ctx.value("x")?;
    let target = need("shape", ctx.const_ints("shape", None)?)?;
    let Some(count) = element_count(x.shape()) else {
        return fail("x", format!("element count overflows ({})", shown("x", &x)));
    };
    let mut inferred_at = None;
    let mut known = 1usize;
    let mut shape = Vec::with_capacity(target.len());
    for (i, &s) in target.iter().enumerate() {
        match s {
            -1 if inferred_at.is_some() => return fail("shape", "more than one -1"),
            -1 => inferred_at = Some(i),
            0 => {
                return fail(
                    "shape",
                    format!("0 at position {i}: copying a size from x is not supported"),
                )
            }
            s => match to_usize(s) {
                Some(s) => {
                    known = known
                        .checked_mul(s)
                        .ok_or_else(|| Fail::at("shape", "element count overflows"))?
                }
                None => return fail("shape", format!("negative size {s} at position {i}")),
            },
        }
        shape.push(to_usize(s).unwrap_or(0));
    }
    if let Some(i) = inferred_at {
        if count % known != 0 {
            return fail(
                "shape",
                format!(
                    "cannot infer -1: {count} elements ({}) are not a multiple of {known}, the \
                     product of shape {target:?}",
                    shown("x", &x)
                ),
            );
        }
        if let Some(slot) = shape.get_mut(i) {
            *slot = count / known;
        }
    } else if known != count {
        return fail(
            "shape",
            format!(
                "element counts differ: shape {target:?} holds {known} but {} holds {count}",
                shown("x", &x)
            ),
        );
    }
    Ok(Type::tensor(x.dtype(), shape))
}

/// `transpose(x, perm)`: output axis i is x's axis perm[i]; perm is a permutation.
fn infer_transpose(ctx: &Ctx) -> Res<Type> {
    let x = ctx.value("x")?;
    let why = format!("one per axis of {}", shown("x", &x));
    let perm = need("perm", ctx.const_ints("perm", Some((x.rank(), &why)))?)?;
    let axes = axes_in("perm", &perm, "x", &x)?;
    let shape: Option<Vec<usize>> = axes.iter().map(|&a| x.shape().get(a).copied()).collect();
    Ok(Type::tensor(x.dtype(), need("perm", shape)?))
}

/// `scale` and `zero_point` of a quantisation op: each a scalar (per tensor) or a vector with one
/// entry per slice of `data` along `axis` (per channel, which needs `axis`).
fn check_quant_params(ctx: &Ctx, data_arg: &str, data: &Type, axis: Option<usize>) -> Res<()> {
    for name in ["scale", "zero_point"] {
        let Some(ty) = ctx.opt_value(name)? else {
            continue;
        };
        match (ty.shape(), axis) {
            ([], _) => {}
            ([n], Some(a)) if data.shape().get(a) == Some(n) => {}
            ([_], Some(a)) => {
                return fail(
                    name,
                    format!(
                        "one {name} per slice along axis {a} is needed ({}, {})",
                        shown(name, &ty),
                        shown(data_arg, data)
                    ),
                )
            }
            ([_], None) => return fail(name, format!("a per-channel {name} needs `axis`")),
            _ => {
                return fail(
                    name,
                    format!("must be a scalar or a vector, got {}", shown(name, &ty)),
                )
            }
        }
    }
    Ok(())
}

/// The optional `axis` of a quantisation op, normalised against its data.
fn quant_axis(ctx: &Ctx, data_arg: &str, data: &Type) -> Res<Option<usize>> {
    ctx.const_int("axis")?
        .map(|a| axis_in("axis", a, data_arg, data))
        .transpose()
}

/// `quantize(input, scale, zero_point, axis, output_dtype)`: a float tensor to int8 or uint8 of
/// the same shape; scale has the input's dtype, zero_point the output's.
fn infer_quantize(ctx: &Ctx) -> Res<Type> {
    let input = ctx.value("input")?;
    require_dtype("input", &input, FLOATS)?;
    require_same_dtype("scale", &ctx.value("scale")?, "input", &input)?;
    let out = match need("output_dtype", ctx.const_str("output_dtype")?)? {
        "int8" => DType::Int8,
        "uint8" => DType::UInt8,
        other => {
            return fail(
                "output_dtype",
                format!("cannot quantize to \"{other}\" (accepted: int8, uint8)"),
            )
        }
    };
    if let Some(zp) = ctx.opt_value("zero_point")? {
        require_dtype("zero_point", &zp, &[out])?;
    }
    let axis = quant_axis(ctx, "input", &input)?;
    check_quant_params(ctx, "input", &input, axis)?;
    Ok(Type::tensor(out, input.shape()))
}

/// `dequantize(input, scale, zero_point, axis)`: int8/uint8 to the dtype of `scale`.
fn infer_dequantize(ctx: &Ctx) -> Res<Type> {
    let input = ctx.value("input")?;
    require_dtype("input", &input, QUANTIZED)?;
    let scale = ctx.value("scale")?;
    require_dtype("scale", &scale, FLOATS)?;
    if let Some(zp) = ctx.opt_value("zero_point")? {
        require_same_dtype("zero_point", &zp, "input", &input)?;
    }
    let axis = quant_axis(ctx, "input", &input)?;
    check_quant_params(ctx, "input", &input, axis)?;
    Ok(Type::tensor(scale.dtype(), input.shape()))
}

/// `constexpr_affine_dequantize()[quantized_data, scale, zero_point, axis]`: weights dequantized
/// at compile time; the shape of `quantized_data`, the dtype of `scale`.
fn infer_constexpr_affine_dequantize(ctx: &Ctx) -> Res<Type> {
    let data = ctx.value("quantized_data")?;
    require_dtype("quantized_data", &data, QUANTIZED)?;
    let scale = ctx.value("scale")?;
    require_dtype("scale", &scale, FLOATS)?;
    require_same_dtype(
        "zero_point",
        &ctx.value("zero_point")?,
        "quantized_data",
        &data,
    )?;
    let axis = need("axis", ctx.const_int("axis")?)?;
    let axis = axis_in("axis", axis, "quantized_data", &data)?;
    check_quant_params(ctx, "quantized_data", &data, Some(axis))?;
    Ok(Type::tensor(scale.dtype(), data.shape()))
}

/// `scaled_dot_product_attention(query [B..., L, E], key [B..., S, E], value [B..., S, Ev],
/// attn_mask)` → `[B..., L, Ev]`. As in coremltools, the three share rank (≥ 3) and batch dims.
fn infer_sdpa(ctx: &Ctx) -> Res<Type> {
    let q = ctx.value("query")?;
    let k = ctx.value("key")?;
    let v = ctx.value("value")?;
    require_dtype("query", &q, FLOATS)?;
    require_same_dtype("key", &k, "query", &q)?;
    require_same_dtype("value", &v, "query", &q)?;
    let with_query = |arg: &str, ty: &Type| format!("{}, {}", shown("query", &q), shown(arg, ty));
    if q.rank() < 3 {
        return fail(
            "query",
            format!("needs rank ≥ 3, got {}", shown("query", &q)),
        );
    }
    for (arg, ty) in [("key", &k), ("value", &v)] {
        if ty.rank() != q.rank() {
            return fail(arg, rank_mismatch(arg, ty, "query", &q));
        }
    }
    let ([qb @ .., l, e], [kb @ .., s, ek], [vb @ .., sv, ev]) = (q.shape(), k.shape(), v.shape())
    else {
        return fail("query", "needs rank ≥ 3");
    };
    if kb != qb {
        let both = with_query("key", &k);
        return fail(
            "key",
            format!("batch dimensions differ from query's ({both})"),
        );
    }
    if vb != qb {
        let both = with_query("value", &v);
        return fail(
            "value",
            format!("batch dimensions differ from query's ({both})"),
        );
    }
    if ek != e {
        let both = with_query("key", &k);
        return fail(
            "key",
            format!("embedding size {ek} differs from query's {e} ({both})"),
        );
    }
    if sv != s {
        return fail(
            "value",
            format!(
                "sequence length {sv} differs from key's {s} ({}, {})",
                shown("key", &k),
                shown("value", &v)
            ),
        );
    }
    let scores: Vec<usize> = qb.iter().chain([l, s]).copied().collect();
    check_sdpa_mask(ctx, &q, &scores)?;
    let shape: Vec<usize> = qb.iter().chain([l, ev]).copied().collect();
    Ok(Type::tensor(q.dtype(), shape))
}

/// The optional mask is bool or of the query's dtype, and broadcasts to the scores' shape
/// `[B..., L, S]` (it may not enlarge it).
fn check_sdpa_mask(ctx: &Ctx, q: &Type, scores: &[usize]) -> Res<()> {
    let Some(mask) = ctx.opt_value("attn_mask")? else {
        return Ok(());
    };
    require_dtype("attn_mask", &mask, &[DType::Bool, q.dtype()])?;
    if broadcast(mask.shape(), scores).as_deref() != Ok(scores) {
        return fail(
            "attn_mask",
            format!(
                "does not broadcast to the scores' shape {scores:?} ({}, {})",
                shown("attn_mask", &mask),
                shown("query", q)
            ),
        );
    }
    Ok(())
}

/// `layer_norm(x, axes = all, gamma, beta, epsilon)`: the type of x; gamma and beta have the
/// sizes of the normalised axes, epsilon is a scalar of x's dtype.
fn infer_layer_norm(ctx: &Ctx) -> Res<Type> {
    let x = infer_float_unary(ctx)?;
    let axes = match ctx.const_ints("axes", None)? {
        Some(axes) => axes_in("axes", &axes, "x", &x)?,
        None => (0..x.rank()).collect(),
    };
    let normalized: Option<Vec<usize>> = axes.iter().map(|&a| x.shape().get(a).copied()).collect();
    let normalized = need("axes", normalized)?;
    for name in ["gamma", "beta"] {
        let Some(ty) = ctx.opt_value(name)? else {
            continue;
        };
        require_same_dtype(name, &ty, "x", &x)?;
        if ty.shape() != normalized.as_slice() {
            return fail(
                name,
                format!(
                    "must have the shape {normalized:?} of the normalised axes {axes:?} ({}, {})",
                    shown(name, &ty),
                    shown("x", &x)
                ),
            );
        }
    }
    if let Some(eps) = ctx.opt_value("epsilon")? {
        require_scalar("epsilon", &eps, x.dtype())?;
    }
    Ok(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broadcast_follows_numpy() {
        assert_eq!(
            broadcast(&[1, 12, 256, 256], &[1, 1, 256, 256]),
            Ok(vec![1, 12, 256, 256])
        );
        assert_eq!(broadcast(&[1, 768, 1, 256], &[]), Ok(vec![1, 768, 1, 256]));
        assert_eq!(broadcast(&[3, 1], &[4]), Ok(vec![3, 4]));
        assert_eq!(broadcast(&[5], &[2, 1, 1]), Ok(vec![2, 1, 5]));
        assert_eq!(
            broadcast(&[1, 32, 4], &[16, 4]),
            Err(BroadcastMismatch {
                axis_from_end: 2,
                a: 32,
                b: 16
            })
        );
    }

    #[test]
    fn axes_normalise_by_rank() {
        assert_eq!(normalize_axis(-1, 4), Some(3));
        assert_eq!(normalize_axis(-4, 4), Some(0));
        assert_eq!(normalize_axis(3, 4), Some(3));
        assert_eq!(normalize_axis(4, 4), None);
        assert_eq!(normalize_axis(-5, 4), None);
        assert_eq!(normalize_axis(0, 0), None);
        assert_eq!(normalize_axis(i64::MIN, 4), None);
    }

    #[test]
    fn conv_output_size_matches_the_formula() {
        // floor((32 + 1 + 1 - 1·(3-1) - 1) / 2) + 1 = 16
        assert_eq!(conv_out_size(32, 1, 1, 3, 2, 1), Some(16));
        // dilation 2 makes a 3-tap kernel span 5: floor((10 - 5) / 1) + 1 = 6
        assert_eq!(conv_out_size(10, 0, 0, 3, 1, 2), Some(6));
        assert_eq!(conv_out_size(2, 0, 0, 3, 1, 1), None);
        assert_eq!(conv_out_size(2, 0, 0, 0, 1, 1), None);
        assert_eq!(conv_out_size(usize::MAX, 1, 0, 1, 1, 1), None);
    }

    fn slice(begin: i64, end: i64, stride: i64) -> AxisSlice {
        AxisSlice {
            begin,
            end,
            stride,
            begin_masked: false,
            end_masked: false,
        }
    }

    #[test]
    fn slice_len_follows_python() {
        // len(range(10)[b:e:s]) for each case
        assert_eq!(slice_len(10, &slice(2, 8, 1)), 6);
        assert_eq!(slice_len(10, &slice(2, 8, 3)), 2);
        assert_eq!(slice_len(10, &slice(-3, 100, 1)), 3);
        assert_eq!(slice_len(10, &slice(8, 2, -2)), 3);
        assert_eq!(slice_len(10, &slice(-1, -11, -1)), 10);
        assert_eq!(slice_len(10, &slice(5, 5, 1)), 0);
        let masked = AxisSlice {
            begin_masked: true,
            end_masked: true,
            ..slice(7, 7, -1)
        };
        assert_eq!(slice_len(10, &masked), 10);
        assert_eq!(slice_len(10, &slice(9, 0, i64::MIN)), 1);
        assert_eq!(slice_len(10, &slice(0, 10, i64::MAX)), 1);
    }

    #[test]
    fn literals_are_checked_against_their_type() {
        assert_eq!(literal_problem(&Literal::int32_tensor(&[1, 2])), None);
        let short = Literal::Tensor {
            dtype: DType::Int32,
            shape: vec![3],
            values: vec![Scalar::Int(1)],
        };
        assert!(literal_problem(&short).unwrap().contains("holds 1 values"));
        let big = Literal::Scalar {
            dtype: DType::Int8,
            value: Scalar::Int(300),
        };
        assert!(literal_problem(&big).unwrap().contains("int8"));
        let huge = Literal::Blob {
            dtype: DType::Fp16,
            shape: vec![usize::MAX, 2],
            path: "w.bin".into(),
            offset: 64,
        };
        assert!(literal_problem(&huge).unwrap().contains("too large"));
    }

    #[test]
    fn every_op_kind_is_listed_once() {
        let mut kinds = HashSet::new();
        for spec in OPS {
            assert!(kinds.insert(spec.kind), "{} listed twice", spec.kind);
            for r in spec.required {
                assert!(
                    !spec.optional.contains(r),
                    "{}: {r} both required and optional",
                    spec.kind
                );
            }
        }
    }
}
