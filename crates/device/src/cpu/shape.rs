//! Shape arithmetic shared by the planner and the kernels: strides, broadcasting, dimension
//! collapsing, and strided copies.

/// Row-major strides of a dense tensor.
pub fn contiguous_strides(shape: &[usize]) -> Vec<usize> {
    let mut strides = vec![1; shape.len()];
    for d in (0..shape.len().saturating_sub(1)).rev() {
        strides[d] = strides[d + 1] * shape[d + 1];
    }
    strides
}

/// Strides with which a dense tensor of `shape` is read when broadcast to `out_shape`
/// (numpy rules, right-aligned): 0 along every broadcast dimension.
pub fn broadcast_strides(shape: &[usize], out_shape: &[usize]) -> Vec<usize> {
    let own = contiguous_strides(shape);
    let lead = out_shape.len() - shape.len();
    (0..out_shape.len())
        .map(|d| {
            if d < lead || shape[d - lead] == 1 {
                0
            } else {
                own[d - lead]
            }
        })
        .collect()
}

/// Merges adjacent dimensions wherever every operand walks them as one, so that loops run
/// over as few and as long dimensions as possible. Returns the new shape and, for each operand,
/// its new strides. Size-1 dimensions are dropped; the result has at least one dimension.
pub fn collapse(shape: &[usize], strides: &[Vec<usize>]) -> (Vec<usize>, Vec<Vec<usize>>) {
    let mut out_shape: Vec<usize> = Vec::new();
    let mut out_strides: Vec<Vec<usize>> = vec![Vec::new(); strides.len()];
    for d in 0..shape.len() {
        if shape[d] == 1 {
            continue;
        }
        let mergeable = !out_shape.is_empty()
            && strides.iter().zip(&out_strides).all(|(s, o)| {
                let last = *o.last().expect("non-empty alongside out_shape");
                last == s[d] * shape[d]
            });
        if mergeable {
            let n = out_shape.len() - 1;
            out_shape[n] *= shape[d];
            for (s, o) in strides.iter().zip(out_strides.iter_mut()) {
                o[n] = s[d];
            }
        } else {
            out_shape.push(shape[d]);
            for (s, o) in strides.iter().zip(out_strides.iter_mut()) {
                o.push(s[d]);
            }
        }
    }
    if out_shape.is_empty() {
        out_shape.push(1);
        for o in out_strides.iter_mut() {
            o.push(0);
        }
    }
    (out_shape, out_strides)
}

/// The most dimensions a collapsed loop nest may have, and the most operands it may walk.
/// Fixed so that walking allocates nothing; the planner refuses anything larger.
pub const MAX_RANK: usize = 8;
pub const MAX_OPERANDS: usize = 16;

/// Calls `f(offsets)` for every index of `shape` except the last dimension, with the element
/// offset of that row's start for each operand. The caller runs the innermost loop.
pub fn for_each_row<S: AsRef<[usize]>>(
    shape: &[usize],
    strides: &[S],
    mut f: impl FnMut(&[usize]),
) {
    let outer = &shape[..shape.len() - 1];
    let n_ops = strides.len();
    assert!(
        outer.len() <= MAX_RANK && n_ops <= MAX_OPERANDS,
        "loop nest too large"
    );
    let mut index = [0usize; MAX_RANK];
    let mut offsets = [0usize; MAX_OPERANDS];
    let rows: usize = outer.iter().product();
    for _ in 0..rows {
        f(&offsets[..n_ops]);
        // Advance the odometer, updating offsets incrementally.
        for d in (0..outer.len()).rev() {
            index[d] += 1;
            for (o, s) in offsets.iter_mut().zip(strides) {
                *o += s.as_ref()[d];
            }
            if index[d] < outer[d] {
                break;
            }
            for (o, s) in offsets.iter_mut().zip(strides) {
                *o -= s.as_ref()[d] * outer[d];
            }
            index[d] = 0;
        }
    }
}

/// Copies a strided region of `src` into a strided region of `dst`. The shape and strides
/// should already be collapsed (see [`collapse`]) for speed; any shape works.
pub fn strided_copy(
    src: &[f32],
    src_strides: &[usize],
    dst: &mut [f32],
    dst_strides: &[usize],
    shape: &[usize],
) {
    let last = shape.len() - 1;
    let n = shape[last];
    let (ss, ds) = (src_strides[last], dst_strides[last]);
    let strides = [src_strides, dst_strides];
    for_each_row(shape, &strides, |offs| {
        let (s0, d0) = (offs[0], offs[1]);
        if ss == 1 && ds == 1 {
            dst[d0..d0 + n].copy_from_slice(&src[s0..s0 + n]);
        } else {
            for i in 0..n {
                dst[d0 + i * ds] = src[s0 + i * ss];
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strides_and_broadcast() {
        assert_eq!(contiguous_strides(&[2, 3, 4]), vec![12, 4, 1]);
        assert_eq!(broadcast_strides(&[3, 1], &[2, 3, 4]), vec![0, 1, 0]);
        assert_eq!(broadcast_strides(&[], &[2, 3]), vec![0, 0]);
    }

    #[test]
    fn collapse_merges_only_what_all_operands_walk_contiguously() {
        // [1, C=4, 1, S=8] times [1, 1, 1, S]: C cannot merge with S for the second operand.
        let shape = [1, 4, 1, 8];
        let a = contiguous_strides(&shape);
        let b = broadcast_strides(&[1, 1, 1, 8], &shape);
        let (s, st) = collapse(&shape, &[a, b]);
        assert_eq!(s, vec![4, 8]);
        assert_eq!(st, vec![vec![8, 1], vec![0, 1]]);
        // Two dense operands collapse to one dimension.
        let dense = contiguous_strides(&[2, 3, 4]);
        let (s, _) = collapse(&[2, 3, 4], &[dense.clone(), dense]);
        assert_eq!(s, vec![24]);
    }

    #[test]
    fn strided_copy_transposes() {
        // src is 2x3 row-major; write its transpose into a 3x2 dst.
        let src: Vec<f32> = (0..6).map(|v| v as f32).collect();
        let mut dst = vec![0.0; 6];
        strided_copy(&src, &[3, 1], &mut dst, &[1, 2], &[2, 3]);
        assert_eq!(dst, vec![0.0, 3.0, 1.0, 4.0, 2.0, 5.0]);
    }
}
