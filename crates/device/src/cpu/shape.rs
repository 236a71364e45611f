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
#[inline(always)]
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
    if ss == 1 && ds == 1 {
        let strides = [src_strides, dst_strides];
        return for_each_row(shape, &strides, |offs| {
            let (s0, d0) = (offs[0], offs[1]);
            dst[d0..d0 + n].copy_from_slice(&src[s0..s0 + n]);
        });
    }
    if last == 0 {
        for i in 0..n {
            dst[i * ds] = src[i * ss];
        }
        return;
    }
    // A transpose, or another copy strided along its last dimension: tiles of the last two
    // dimensions, so that each tile reads and writes a few cache lines many times over instead
    // of a new line for every element along the strided side.
    const TILE: usize = 8;
    let m = shape[last - 1];
    let (ssm, dsm) = (src_strides[last - 1], dst_strides[last - 1]);
    let strides = [&src_strides[..last], &dst_strides[..last]];
    for_each_row(&shape[..last], &strides, |offs| {
        let (s0, d0) = (offs[0], offs[1]);
        for i0 in (0..m).step_by(TILE) {
            for j0 in (0..n).step_by(TILE) {
                for i in i0..(i0 + TILE).min(m) {
                    for j in j0..(j0 + TILE).min(n) {
                        dst[d0 + i * dsm + j * ds] = src[s0 + i * ssm + j * ss];
                    }
                }
            }
        }
    });
}

/// [`strided_copy`] split across up to `parts` threads along the outermost dimension, when
/// the destination regions of its indices are disjoint and in order (as in a transpose or a
/// concat into a row-major value); otherwise on this thread.
pub fn strided_copy_split(
    src: &[f32],
    src_strides: &[usize],
    dst: &mut [f32],
    dst_strides: &[usize],
    shape: &[usize],
    parts: usize,
) {
    let count = shape[0];
    // One past the last destination element of one outermost index.
    let inner: usize = 1 + shape[1..]
        .iter()
        .zip(&dst_strides[1..])
        .map(|(&n, &s)| n.saturating_sub(1) * s)
        .sum::<usize>();
    if parts <= 1 || count < 2 || shape.len() > MAX_RANK || dst_strides[0] < inner {
        return strided_copy(src, src_strides, dst, dst_strides, shape);
    }
    let half = count / 2;
    let mut lo_shape = [0usize; MAX_RANK];
    let mut hi_shape = [0usize; MAX_RANK];
    let rank = shape.len();
    lo_shape[..rank].copy_from_slice(shape);
    hi_shape[..rank].copy_from_slice(shape);
    lo_shape[0] = half;
    hi_shape[0] = count - half;
    let (dst_lo, dst_hi) = dst.split_at_mut(half * dst_strides[0]);
    let src_hi = &src[half * src_strides[0]..];
    rayon::join(
        || {
            strided_copy_split(
                src,
                src_strides,
                dst_lo,
                dst_strides,
                &lo_shape[..rank],
                parts / 2,
            )
        },
        || {
            strided_copy_split(
                src_hi,
                src_strides,
                dst_hi,
                dst_strides,
                &hi_shape[..rank],
                parts - parts / 2,
            )
        },
    );
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

    /// Every element of `shape` copied one index at a time.
    fn naive_copy(src: &[f32], ss: &[usize], dst: &mut [f32], ds: &[usize], shape: &[usize]) {
        let total: usize = shape.iter().product();
        for flat in 0..total {
            let (mut rest, mut so, mut dof) = (flat, 0, 0);
            for d in (0..shape.len()).rev() {
                let i = rest % shape[d];
                rest /= shape[d];
                so += i * ss[d];
                dof += i * ds[d];
            }
            dst[dof] = src[so];
        }
    }

    #[test]
    fn tiled_and_split_copies_match_an_element_by_element_copy() {
        let src: Vec<f32> = (0..4096).map(|v| v as f32).collect();
        // (shape, src strides, dst strides, dst length): heads to rows and back as attention
        // does, ragged tiles, a slice of every other row, a concat piece into a wider value,
        // a rank-1 gather.
        type Case = (&'static [usize], &'static [usize], &'static [usize], usize);
        let cases: [Case; 6] = [
            (&[3, 13, 21], &[273, 1, 13], &[273, 21, 1], 819),
            (&[3, 21, 13], &[273, 13, 1], &[273, 1, 21], 819),
            (&[9, 17], &[1, 9], &[17, 1], 153),
            (&[5, 30], &[60, 1], &[30, 1], 150),
            (&[7, 11], &[11, 1], &[20, 1], 140),
            (&[40], &[3], &[1], 40),
        ];
        for (shape, ss, ds, len) in cases {
            let mut want = vec![f32::NAN; len];
            naive_copy(&src, ss, &mut want, ds, shape);
            for parts in [1, 2, 3] {
                let mut got = vec![f32::NAN; len];
                strided_copy_split(&src, ss, &mut got, ds, shape, parts);
                let same = got
                    .iter()
                    .zip(&want)
                    .all(|(g, w)| g == w || (g.is_nan() && w.is_nan()));
                assert!(same, "{shape:?} {ss:?} -> {ds:?}, {parts} part(s)");
            }
        }
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
