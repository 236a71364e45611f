//! The transformer ops: `scaled_dot_product_attention` and `layer_norm`.

use super::context::{require_dtype, require_same_dtype, require_scalar, OpContext, FLOATS};
use super::error::{fail, need, rank_mismatch, shown, OpResult};
use super::math::infer_float_unary;
use super::shape::{axes_in, broadcast};
use crate::ir::{DType, Type};

/// `scaled_dot_product_attention(query [B..., L, E], key [B..., S, E], value [B..., S, Ev],
/// attn_mask)` → `[B..., L, Ev]`. As in coremltools, the three share rank (≥ 3) and batch dims.
pub(super) fn infer_attention(ctx: &OpContext) -> OpResult<Type> {
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
    check_attention_mask(ctx, &q, &scores)?;
    let shape: Vec<usize> = qb.iter().chain([l, ev]).copied().collect();
    Ok(Type::tensor(q.dtype(), shape))
}

/// The optional mask is bool or of the query's dtype, and broadcasts to the scores' shape
/// `[B..., L, S]` (it may not enlarge it).
fn check_attention_mask(ctx: &OpContext, q: &Type, scores: &[usize]) -> OpResult<()> {
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
pub(super) fn infer_layer_norm(ctx: &OpContext) -> OpResult<Type> {
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
