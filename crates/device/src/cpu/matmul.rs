//! Matrix products through `faer`, behind a safe, bounds-checked interface.
//!
//! `faer` replaced `gemm` 0.19 here: side by side on this project's shapes (512×64×512,
//! 768×256×768, 288×256×768) at 2 threads it ran faster (docs/benchmarks.md).

use faer::{Accum, MatMut, MatRef, Par};

/// A strided matrix view: element (r, c) is `data[offset + r*rs + c*cs]`.
#[derive(Clone, Copy, Debug)]
pub struct MatLayout {
    pub offset: usize,
    pub rs: usize,
    pub cs: usize,
}

impl MatLayout {
    pub fn row_major(offset: usize, cols: usize) -> MatLayout {
        MatLayout {
            offset,
            rs: cols,
            cs: 1,
        }
    }

    /// The same storage read as its transpose.
    pub fn transposed(self) -> MatLayout {
        MatLayout {
            offset: self.offset,
            rs: self.cs,
            cs: self.rs,
        }
    }

    /// One past the largest index a `rows × cols` view touches.
    pub(crate) fn extent(&self, rows: usize, cols: usize) -> usize {
        if rows == 0 || cols == 0 {
            return self.offset;
        }
        self.offset + (rows - 1) * self.rs + (cols - 1) * self.cs + 1
    }
}

/// Products below this many multiply-adds run on one thread: spawning costs more than it saves.
pub(super) const PARALLEL_MIN_MACS: usize = 1 << 18;

/// Panics unless every index the views of a `[m, n, k]` product address lies within its slice.
pub(crate) fn assert_views_in_bounds(
    [m, n, k]: [usize; 3],
    (a, la): (&[f32], MatLayout),
    (b, lb): (&[f32], MatLayout),
    (c, lc): (&[f32], MatLayout),
) {
    assert!(la.extent(m, k) <= a.len(), "gemm: lhs view out of bounds");
    assert!(lb.extent(k, n) <= b.len(), "gemm: rhs view out of bounds");
    assert!(lc.extent(m, n) <= c.len(), "gemm: dst view out of bounds");
}

/// c[m×n] (+)= scale · a[m×k] · b[k×n], accumulating in f32.
#[allow(clippy::too_many_arguments)]
pub fn gemm(
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    la: MatLayout,
    b: &[f32],
    lb: MatLayout,
    c: &mut [f32],
    lc: MatLayout,
    accumulate: bool,
    scale: f32,
    threads: usize,
) {
    assert_views_in_bounds([m, n, k], (a, la), (b, lb), (c, lc));
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for r in 0..m {
                for col in 0..n {
                    c[lc.offset + r * lc.rs + col * lc.cs] = 0.0;
                }
            }
        }
        return;
    }
    let par = if threads > 1 && m * n * k >= PARALLEL_MIN_MACS {
        Par::rayon(threads)
    } else {
        Par::Seq
    };
    let stride = |v: usize| v as isize;
    // SAFETY: the three asserts above bound every index the views address within their
    // slices; `c` is borrowed mutably, so it cannot overlap `a` or `b`.
    let (lhs, rhs, dst) = unsafe {
        (
            MatRef::from_raw_parts(
                a.as_ptr().add(la.offset),
                m,
                k,
                stride(la.rs),
                stride(la.cs),
            ),
            MatRef::from_raw_parts(
                b.as_ptr().add(lb.offset),
                k,
                n,
                stride(lb.rs),
                stride(lb.cs),
            ),
            MatMut::from_raw_parts_mut(
                c.as_mut_ptr().add(lc.offset),
                m,
                n,
                stride(lc.rs),
                stride(lc.cs),
            ),
        )
    };
    let accum = if accumulate {
        Accum::Add
    } else {
        Accum::Replace
    };
    faer::linalg::matmul::matmul(dst, accum, lhs, rhs, scale, par);
}

/// Test reference: row `i` of `a` times column `j` of `b`, through their views, in f64.
#[cfg(test)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn reference_dot(
    a: &[f32],
    la: MatLayout,
    b: &[f32],
    lb: MatLayout,
    i: usize,
    j: usize,
    k: usize,
) -> f64 {
    (0..k)
        .map(|p| {
            f64::from(a[la.offset + i * la.rs + p * la.cs])
                * f64::from(b[lb.offset + p * lb.rs + j * lb.cs])
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(m: usize, n: usize, k: usize, a: &[f32], b: &[f32]) -> Vec<f32> {
        let mut c = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                c[i * n + j] = (0..k).map(|p| a[i * k + p] * b[p * n + j]).sum();
            }
        }
        c
    }

    #[test]
    fn matches_naive_with_transposed_views() {
        let (m, n, k) = (5, 7, 3);
        let a: Vec<f32> = (0..m * k).map(|v| (v as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..k * n).map(|v| (v as f32 * 0.11).cos()).collect();
        let expect = naive(m, n, k, &a, &b);
        let mut c = vec![0.0; m * n];
        gemm(
            m,
            n,
            k,
            &a,
            MatLayout::row_major(0, k),
            &b,
            MatLayout::row_major(0, n),
            &mut c,
            MatLayout::row_major(0, n),
            false,
            1.0,
            1,
        );
        for (x, y) in c.iter().zip(&expect) {
            assert!((x - y).abs() < 1e-5);
        }
        // bᵀ stored as n×k, read back through a transposed view; accumulate doubles the result.
        let mut bt = vec![0.0; n * k];
        for p in 0..k {
            for j in 0..n {
                bt[j * k + p] = b[p * n + j];
            }
        }
        gemm(
            m,
            n,
            k,
            &a,
            MatLayout::row_major(0, k),
            &bt,
            MatLayout::row_major(0, k).transposed(),
            &mut c,
            MatLayout::row_major(0, n),
            true,
            1.0,
            2,
        );
        for (x, y) in c.iter().zip(&expect) {
            assert!((x - 2.0 * y).abs() < 1e-5);
        }
    }
}
