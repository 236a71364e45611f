//! The op table: which ops the checker knows, the parameters each accepts, and the checks of
//! an op's parameter list that come before its own inference rule.

use super::attention::{infer_attention, infer_layer_norm};
use super::context::OpContext;
use super::conv::infer_conv;
use super::error::{fail, OpError, OpResult};
use super::layout::{
    infer_concat, infer_reshape, infer_slice_by_index, infer_slice_by_size, infer_transpose,
};
use super::literal::{infer_const, literal_problem};
use super::math::{
    infer_arithmetic, infer_cast, infer_comparison, infer_float_unary, infer_gelu, infer_identity,
    infer_matmul, infer_reduce, infer_softmax, infer_unary_with_epsilon,
};
use super::quantization::{infer_constexpr_affine_dequantize, infer_dequantize, infer_quantize};
use crate::ir::{Arg, Literal, Op, Type};
use std::collections::{HashMap, HashSet};

/// What an op accepts and how its output type follows from its arguments.
pub(super) struct OpSpec {
    kind: &'static str,
    required: &'static [&'static str],
    optional: &'static [&'static str],
    /// `const` and `constexpr_affine_dequantize` take their parameters as attributes.
    pub(super) in_attrs: bool,
    infer: fn(&OpContext) -> OpResult<Type>,
}

impl OpSpec {
    const fn args(
        kind: &'static str,
        required: &'static [&'static str],
        optional: &'static [&'static str],
        infer: fn(&OpContext) -> OpResult<Type>,
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
        infer: fn(&OpContext) -> OpResult<Type>,
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
        infer_attention,
    ),
    OpSpec::args(
        "layer_norm",
        X,
        &["axes", "beta", "epsilon", "gamma"],
        infer_layer_norm,
    ),
];

/// Validates the op's parameters, then infers its output type with the op's own rule.
pub(super) fn infer(
    op: &Op,
    types: &HashMap<String, Type>,
    consts: &HashMap<String, Literal>,
) -> OpResult<Type> {
    let Some(spec) = OPS.iter().find(|s| s.kind == op.kind) else {
        let known: Vec<&str> = OPS.iter().map(|s| s.kind).collect();
        return Err(OpError::whole_op(format!(
            "unknown op `{}` (the checker knows: {})",
            op.kind,
            known.join(", ")
        )));
    };
    check_param_names(op, spec)?;
    check_literals(op)?;
    check_references(op, types)?;
    (spec.infer)(&OpContext {
        op,
        spec,
        types,
        consts,
    })
}

/// No parameter twice, none unknown, none required missing; parameters in the place (arguments
/// or attributes) the op takes them.
fn check_param_names(op: &Op, spec: &OpSpec) -> OpResult<()> {
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
fn check_literals(op: &Op) -> OpResult<()> {
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
fn check_references(op: &Op, types: &HashMap<String, Type>) -> OpResult<()> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
