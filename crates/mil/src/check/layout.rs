//! Ops that move elements without changing them: slicing, `concat`, `reshape`, `transpose`.

use super::context::{require_same_dtype, OpContext};
use super::error::{fail, need, shown, OpError, OpResult};
use super::shape::{axes_in, axis_in, element_count, normalize_axis, to_usize};
use crate::ir::Type;

/// `slice_by_size(x, begin, size)`: per axis, `size` elements from `begin` (negative counts from
/// the end), `-1` meaning to the end; the slice must lie inside x and not be empty.
pub(super) fn infer_slice_by_size(ctx: &OpContext) -> OpResult<Type> {
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
pub(super) fn infer_slice_by_index(ctx: &OpContext) -> OpResult<Type> {
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
pub(super) fn infer_concat(ctx: &OpContext) -> OpResult<Type> {
    let values = ctx.tuple("values")?;
    let Some(((first_name, first), rest)) = values.split_first() else {
        return fail("values", "concat needs at least one value");
    };
    let axis = need("axis", ctx.const_int("axis")?)?;
    let axis = axis_in("axis", axis, first_name, first)?;
    let interleave = ctx.const_bool("interleave")?.unwrap_or(false);
    let mut shape = first.shape().to_vec();
    for (name, ty) in rest {
        require_same_dtype("values", ty, first_name, first).map_err(|error| OpError {
            message: format!("`{name}`: {}", error.message),
            ..error
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
            .ok_or_else(|| OpError::at("values", "the concatenated size overflows"))?;
    }
    Ok(Type::tensor(first.dtype(), shape))
}

/// `reshape(x, shape)`: the same elements in a new shape; one `-1` takes the rest. `0` is
/// rejected rather than read as "copy x's size".
pub(super) fn infer_reshape(ctx: &OpContext) -> OpResult<Type> {
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
                        .ok_or_else(|| OpError::at("shape", "element count overflows"))?
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
pub(super) fn infer_transpose(ctx: &OpContext) -> OpResult<Type> {
    let x = ctx.value("x")?;
    let why = format!("one per axis of {}", shown("x", &x));
    let perm = need("perm", ctx.const_ints("perm", Some((x.rank(), &why)))?)?;
    let axes = axes_in("perm", &perm, "x", &x)?;
    let shape: Option<Vec<usize>> = axes.iter().map(|&a| x.shape().get(a).copied()).collect();
    Ok(Type::tensor(x.dtype(), need("perm", shape)?))
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
