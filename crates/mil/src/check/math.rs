//! Maths ops: `cast`, `matmul`, elementwise arithmetic and comparison, unary functions,
//! `softmax` and the reductions.

use super::context::{
    require_dtype, require_same_dtype, require_scalar, OpContext, FLOATS, NUMERIC,
};
use super::error::{fail, need, shown, OpError, OpResult};
use super::shape::{axes_in, axis_in, broadcast};
use crate::ir::{DType, Type};

/// `cast(dtype, x)`: same shape, the named dtype.
pub(super) fn infer_cast(ctx: &OpContext) -> OpResult<Type> {
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
pub(super) fn infer_matmul(ctx: &OpContext) -> OpResult<Type> {
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
        OpError::at(
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
fn broadcast_operands(ctx: &OpContext) -> OpResult<(Type, Vec<usize>)> {
    let x = ctx.value("x")?;
    let y = ctx.value("y")?;
    require_same_dtype("y", &y, "x", &x)?;
    let shape = broadcast(x.shape(), y.shape()).map_err(|e| {
        OpError::at(
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
pub(super) fn infer_arithmetic(ctx: &OpContext) -> OpResult<Type> {
    let (x, shape) = broadcast_operands(ctx)?;
    require_dtype("x", &x, NUMERIC)?;
    Ok(Type::tensor(x.dtype(), shape))
}

/// `equal`, `less`, ...: operands of one dtype, broadcast; the result is bool.
pub(super) fn infer_comparison(ctx: &OpContext) -> OpResult<Type> {
    let (x, shape) = broadcast_operands(ctx)?;
    if x.dtype() == DType::String {
        return fail("x", format!("cannot compare strings ({})", shown("x", &x)));
    }
    Ok(Type::tensor(DType::Bool, shape))
}

pub(super) fn infer_identity(ctx: &OpContext) -> OpResult<Type> {
    ctx.value("x")
}

/// `sigmoid`, `exp`, `relu`, ...: fp16 or fp32 in, the same type out.
pub(super) fn infer_float_unary(ctx: &OpContext) -> OpResult<Type> {
    let x = ctx.value("x")?;
    require_dtype("x", &x, FLOATS)?;
    Ok(x)
}

/// `rsqrt`, `inverse`, `log`: a float unary op whose optional `epsilon` is a scalar of x's dtype.
pub(super) fn infer_unary_with_epsilon(ctx: &OpContext) -> OpResult<Type> {
    let x = infer_float_unary(ctx)?;
    if let Some(eps) = ctx.opt_value("epsilon")? {
        require_scalar("epsilon", &eps, x.dtype())?;
    }
    Ok(x)
}

/// `gelu`, whose optional `mode` picks the approximation.
pub(super) fn infer_gelu(ctx: &OpContext) -> OpResult<Type> {
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
pub(super) fn infer_softmax(ctx: &OpContext) -> OpResult<Type> {
    let x = infer_float_unary(ctx)?;
    axis_in("axis", ctx.const_int("axis")?.unwrap_or(-1), "x", &x)?;
    Ok(x)
}

/// `reduce_*(x, axes = all, keep_dims = false)`: reduced axes become 1 or disappear.
pub(super) fn infer_reduce(ctx: &OpContext) -> OpResult<Type> {
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
