//! Shape arithmetic: element counts, numpy broadcasting, and axes that may count from the end.

use super::error::{fail, shown, OpError, OpResult};
use crate::ir::Type;

/// The number of elements of a shape, or `None` on overflow.
pub(super) fn element_count(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d))
}

/// Why no buffer can hold a value of `ty`, if none can: its byte count passes `isize::MAX`,
/// the most any allocation may hold (the count itself may overflow).
pub(super) fn unbuffered(ty: &Type) -> Option<String> {
    let bytes = element_count(ty.shape())
        .and_then(|n| n.checked_mul(ty.dtype().size_bytes().unwrap_or(1)))
        .filter(|&b| isize::try_from(b).is_ok());
    match bytes {
        Some(_) => None,
        None => Some(format!(
            "{ty} holds more bytes than any buffer can ({} at most)",
            isize::MAX
        )),
    }
}

/// Where two shapes fail to broadcast: the axis counted from the end (-1 is the last) and the
/// two sizes there.
#[derive(Debug, PartialEq)]
pub(super) struct BroadcastMismatch {
    pub(super) axis_from_end: usize,
    pub(super) a: usize,
    pub(super) b: usize,
}

/// Numpy broadcasting: shapes are aligned at the last axis; sizes must agree or one be 1, and a
/// missing leading axis counts as 1.
pub(super) fn broadcast(a: &[usize], b: &[usize]) -> Result<Vec<usize>, BroadcastMismatch> {
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
pub(super) fn normalize_axis(axis: i64, rank: usize) -> Option<usize> {
    let rank = i64::try_from(rank).ok()?;
    let axis = if axis < 0 { axis + rank } else { axis };
    if (0..rank).contains(&axis) {
        usize::try_from(axis).ok()
    } else {
        None
    }
}

/// `axis` of argument `arg` normalised against `of`, the value it indexes.
pub(super) fn axis_in(arg: &str, axis: i64, of_arg: &str, of: &Type) -> OpResult<usize> {
    normalize_axis(axis, of.rank()).ok_or_else(|| {
        OpError::at(
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
pub(super) fn axes_in(arg: &str, axes: &[i64], of_arg: &str, of: &Type) -> OpResult<Vec<usize>> {
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

pub(super) fn to_usize(v: i64) -> Option<usize> {
    usize::try_from(v).ok()
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
}
