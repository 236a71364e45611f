//! Matrix products through CBLAS: Apple's Accelerate on Apple targets (its `cblas_sgemm` runs
//! on the matrix coprocessor), OpenBLAS elsewhere, so that Linux runs the calls a Mac makes.

use crate::cpu::matmul::MatLayout;
use std::ffi::c_int;

const ROW_MAJOR: c_int = 101;
const NO_TRANS: c_int = 111;
const TRANS: c_int = 112;

#[cfg_attr(target_vendor = "apple", link(name = "Accelerate", kind = "framework"))]
#[cfg_attr(not(target_vendor = "apple"), link(name = "openblas"))]
extern "C" {
    #[allow(clippy::too_many_arguments)]
    fn cblas_sgemm(
        order: c_int,
        trans_a: c_int,
        trans_b: c_int,
        m: c_int,
        n: c_int,
        k: c_int,
        alpha: f32,
        a: *const f32,
        lda: c_int,
        b: *const f32,
        ldb: c_int,
        beta: f32,
        c: *mut f32,
        ldc: c_int,
    );
}

/// The library's name, for reports.
pub(super) const LIBRARY: &str = if cfg!(target_vendor = "apple") {
    "Accelerate"
} else {
    "OpenBLAS"
};

/// A `rows × cols` view as a row-major CBLAS operand: whether it is stored transposed, and its
/// leading dimension. None when neither dimension is contiguous (or a size exceeds `c_int`).
fn operand(l: MatLayout, rows: usize, cols: usize) -> Option<(c_int, c_int)> {
    let ld = |stride: usize, rows: usize, cols: usize| {
        // One row is read whatever the stride: any leading dimension ≥ cols describes it.
        let ld = if rows <= 1 { cols.max(1) } else { stride };
        (ld >= cols.max(1)).then_some(ld)
    };
    let (trans, ld) = if l.cs == 1 || cols == 1 {
        (NO_TRANS, ld(l.rs, rows, cols))
    } else if l.rs == 1 || rows == 1 {
        (TRANS, ld(l.cs, cols, rows))
    } else {
        return None;
    };
    Some((trans, c_int::try_from(ld?).ok()?))
}

/// `c[m×n]` (+)= `scale · a[m×k] · b[k×n]` with one `cblas_sgemm`, if the views allow it:
/// each operand contiguous along one dimension. Returns false, touching nothing, otherwise.
/// The views are bounds-checked by the caller; `m`, `n` and `k` are at least 1.
#[allow(clippy::too_many_arguments)]
pub(super) fn try_gemm(
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
) -> bool {
    // A transposed destination: compute cᵀ = bᵀ·aᵀ into it instead.
    if lc.cs != 1 && (lc.rs == 1 || m == 1) && n > 1 {
        return try_gemm(
            n,
            m,
            k,
            b,
            lb.transposed(),
            a,
            la.transposed(),
            c,
            lc.transposed(),
            accumulate,
            scale,
        );
    }
    let dims = (c_int::try_from(m), c_int::try_from(n), c_int::try_from(k));
    let (Ok(mi), Ok(ni), Ok(ki)) = dims else {
        return false;
    };
    let (Some((ta, lda)), Some((tb, ldb)), Some((NO_TRANS, ldc))) =
        (operand(la, m, k), operand(lb, k, n), operand(lc, m, n))
    else {
        return false;
    };
    let beta = if accumulate { 1.0 } else { 0.0 };
    // SAFETY: the caller checked that every index the three views address lies within its
    // slice; CBLAS reads exactly those (row-major, with the leading dimensions derived from
    // the views' strides) and writes only `c`'s, which cannot overlap `a` or `b` (`c` is
    // borrowed mutably). With beta = 0 CBLAS does not read `c`.
    unsafe {
        cblas_sgemm(
            ROW_MAJOR,
            ta,
            tb,
            mi,
            ni,
            ki,
            scale,
            a.as_ptr().add(la.offset),
            lda,
            b.as_ptr().add(lb.offset),
            ldb,
            beta,
            c.as_mut_ptr().add(lc.offset),
            ldc,
        );
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn views_map_to_row_major_operands_or_are_declined() {
        let rm = MatLayout::row_major(0, 8);
        assert_eq!(operand(rm, 4, 8), Some((NO_TRANS, 8)));
        assert_eq!(operand(rm.transposed(), 8, 4), Some((TRANS, 8)));
        // A sub-block of a wider matrix keeps the wider leading dimension.
        assert_eq!(operand(rm, 4, 3), Some((NO_TRANS, 8)));
        // Rows closer together than they are long overlap: not a CBLAS operand.
        assert_eq!(operand(MatLayout::row_major(0, 2), 4, 3), None);
        // Neither dimension contiguous.
        let strided = MatLayout {
            offset: 0,
            rs: 16,
            cs: 2,
        };
        assert_eq!(operand(strided, 4, 4), None);
        // A single row or column has whatever contiguous dimension it needs.
        assert_eq!(operand(strided, 1, 4), Some((TRANS, 2)));
        assert_eq!(operand(strided, 4, 1), Some((NO_TRANS, 16)));
    }

    #[test]
    fn contiguous_views_go_to_cblas_and_others_are_left_untouched() {
        // a = [[1, 2], [3, 4]], b = [[5, 6], [7, 8]]: a·b = [[19, 22], [43, 50]].
        let (a, b) = ([1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]);
        let rm = MatLayout::row_major(0, 2);
        let mut c = [1.0; 4];
        assert!(try_gemm(2, 2, 2, &a, rm, &b, rm, &mut c, rm, true, 2.0));
        assert_eq!(c, [39.0, 45.0, 87.0, 101.0]);
        // aᵀ·b into a transposed destination: cᵀ = [[26, 30], [38, 44]]ᵀ.
        let mut c = [0.0; 4];
        assert!(try_gemm(
            2,
            2,
            2,
            &a,
            rm.transposed(),
            &b,
            rm,
            &mut c,
            rm.transposed(),
            false,
            1.0
        ));
        assert_eq!(c, [26.0, 38.0, 30.0, 44.0]);
        let strided = MatLayout {
            offset: 0,
            rs: 4,
            cs: 2,
        };
        let mut c = [7.0; 8];
        assert!(!try_gemm(
            2, 2, 2, &a, rm, &b, rm, &mut c, strided, false, 1.0
        ));
        assert_eq!(c, [7.0; 8]);
    }
}
