//! Products whose left operand is a compile-time constant (the weights of a 1×1 conv or a
//! matmul against a constant), with the constant packed once at compile time.
//!
//! A general GEMM library repacks both operands on every call. For this project's shapes the
//! weights are the large operand (512×512 fp32 = 1 MB, twice the L2 of the target cores), so
//! repacking them on each eval costs a pass over memory that is as long as the product itself.
//! Here the weights are laid out at compile time into row micro-panels of [`MR`] rows, stored
//! k-major so that the microkernel reads them strictly sequentially. Only the activations (the
//! right operand, `k × n`, small at these shapes) are copied per call, into [`NR`]-column
//! slivers in a scratch buffer the planner allocated.
//!
//! The microkernel keeps an [`MR`]×[`NR`] tile of the product in 12 AVX registers: per step
//! along k it loads two vectors of a B row, broadcasts [`MR`] weights and issues 2·[`MR`] FMAs.
//! It exists only for x86_64 with AVX2 and FMA; [`PackedA::new`] returns `None` elsewhere, so
//! callers keep the general path.
//!
//! A packed matrix also serves the product with its transpose ([`PackedView::transposed`]),
//! so that a forward kernel's `W·x` and a backward kernel's `Wᵀ·dy` share one packed copy of
//! `W` instead of each packing its own: a compile then writes half as much, and a kernel set
//! holds half as many packed bytes. Reading `Wᵀ` from `W`'s panels, a tile of [`MR`] rows of
//! the product is [`MR`] columns of `W`: per step along k (a row of `W`) the microkernel
//! broadcasts [`MR`] values [`MR`] apart, where the plain product reads [`MR`] neighbours,
//! and it moves to the next panel every [`MR`] steps. The loads and FMAs per step are the same.

// Without a microkernel the packing code is still compiled (so that it is type-checked
// everywhere) but never reached: `PackedA::new` returns `None`.
#![cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]

use std::sync::Arc;

use super::matmul::{MatLayout, PARALLEL_MIN_MACS};

/// Rows of the product per micro-panel.
pub const MR: usize = 6;
/// Columns of the product per microkernel call (two AVX vectors).
pub const NR: usize = 16;
/// Steps along k per pass over a panel: keeps an [`MR`]×`KC` weight block (6 KB) and a
/// `KC`×[`NR`] activation sliver (16 KB) in L1 together.
const KC: usize = 256;
/// [`KC`] for a transposed read, a whole number of panels ([`MR`] steps each) so that every
/// block starts at the top of a panel.
const KC_T: usize = KC / MR * MR;

/// f32s per cache line.
const LINE: usize = 16;
/// Steps along k per prefetched line of the next weight block: a tile prefetches 4 weights
/// per step while the first tile of a block uses 6 and the others none, so with two or more
/// tiles per block the next block is in cache before its first tile starts.
const PF_STEPS: usize = 4;

/// A constant `m × k` left operand packed into micro-panels: panel `i` holds rows
/// `i*MR..i*MR+MR` as `k` groups of [`MR`] values (rows past `m` are zero), so element
/// (r, p) is at `(r / MR) * k * MR + p * MR + r % MR`.
#[derive(Clone)]
pub struct PackedA {
    m: usize,
    k: usize,
    data: Vec<f32>,
}

impl std::fmt::Debug for PackedA {
    // The packed data is as large as the weights: print the shape only.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PackedA({}×{})", self.m, self.k)
    }
}

/// Whether this CPU runs the packed microkernel (it needs AVX2 and FMA).
pub fn available() -> bool {
    super::simd::wide()
}

impl PackedA {
    /// Packs `a` (an `m × k` view), or `None` when this CPU has no microkernel for it. Holding
    /// a `PackedA` is what proves the CPU features the kernel needs were detected.
    pub fn new(m: usize, k: usize, a: &[f32], la: MatLayout) -> Option<PackedA> {
        if !available() || m == 0 || k == 0 {
            return None;
        }
        assert!(la.extent(m, k) <= a.len(), "packed: lhs view out of bounds");
        let panels = m.div_ceil(MR);
        let len = panels * k * MR;
        // Every slot is written once, never zero-filled first: every compile packs every
        // weight, and a fill would be one more pass over it.
        let mut data: Vec<f32> = Vec::with_capacity(len);
        crate::memory::advise_huge_pages(&data.spare_capacity_mut()[..len]);
        for (i, panel) in data.spare_capacity_mut()[..len]
            .chunks_exact_mut(k * MR)
            .enumerate()
        {
            if la.cs == 1 && (i + 1) * MR <= m {
                // A whole panel of row-major weights (every compile packs these): each group
                // takes one value from each of the MR row streams and is written in one go,
                // which is faster than MR strided passes over the panel (docs/benchmarks.md).
                let rows: [&[f32]; MR] =
                    std::array::from_fn(|r| &a[la.offset + (i * MR + r) * la.rs..][..k]);
                for (p, group) in panel.chunks_exact_mut(MR).enumerate() {
                    for (slot, row) in group.iter_mut().zip(&rows) {
                        slot.write(row[p]);
                    }
                }
                continue;
            }
            if la.rs == 1 && (i + 1) * MR <= m {
                // A whole panel of a matrix stored transposed (a backward kernel's weights
                // read from the forward's): each group is MR neighbours of one stored row.
                for (p, group) in panel.chunks_exact_mut(MR).enumerate() {
                    let src = &a[la.offset + i * MR + p * la.cs..][..MR];
                    for (slot, &v) in group.iter_mut().zip(src) {
                        slot.write(v);
                    }
                }
                continue;
            }
            for r in 0..MR {
                let slots = panel.chunks_exact_mut(MR).map(|group| &mut group[r]);
                if i * MR + r >= m {
                    // The last panel's missing rows.
                    slots.for_each(|slot| _ = slot.write(0.0));
                    continue;
                }
                let start = la.offset + (i * MR + r) * la.rs;
                if la.cs == 1 {
                    // The last, partial panel of row-major weights: one sequential read.
                    for (slot, &v) in slots.zip(&a[start..start + k]) {
                        slot.write(v);
                    }
                } else {
                    for (p, slot) in slots.enumerate() {
                        slot.write(a[start + p * la.cs]);
                    }
                }
            }
        }
        // SAFETY: the loop above wrote all `len` slots: `panels` panels of `k` groups, each
        // group's `MR` slots written either at once from the `MR` rows or by the `MR` passes
        // over its panel (`a[start..start + k]` is in bounds by the assert above, so the zip
        // runs all `k` groups).
        unsafe { data.set_len(len) };
        Some(PackedA { m, k, data })
    }
}

/// A product's packed left operand as a plan holds it: a packed matrix (which the set's other
/// kernels reading the same weights may share) and whether the product reads its transpose.
#[derive(Clone, Debug)]
pub struct PackedOperand {
    pub pack: Arc<PackedA>,
    pub transposed: bool,
}

impl PackedOperand {
    pub fn view(&self) -> PackedView<'_> {
        PackedView {
            pack: &self.pack,
            transposed: self.transposed,
        }
    }
}

/// How a product reads a packed matrix: as it was packed (`A`, `m × k`) or as its transpose
/// (`Aᵀ`, `k × m`, from the same panels).
#[derive(Clone, Copy, Debug)]
pub struct PackedView<'a> {
    pack: &'a PackedA,
    transposed: bool,
}

impl PackedView<'_> {
    /// The matrix as packed.
    #[cfg(test)]
    pub fn plain(pack: &PackedA) -> PackedView<'_> {
        PackedView {
            pack,
            transposed: false,
        }
    }

    /// The transpose of the packed matrix.
    #[cfg(test)]
    pub fn transposed(pack: &PackedA) -> PackedView<'_> {
        PackedView {
            pack,
            transposed: true,
        }
    }

    /// Rows of the product's left operand (its output rows).
    pub fn rows(&self) -> usize {
        if self.transposed {
            self.pack.k
        } else {
            self.pack.m
        }
    }

    /// Columns of the left operand (the depth of the product).
    pub fn depth(&self) -> usize {
        if self.transposed {
            self.pack.m
        } else {
            self.pack.k
        }
    }
}

/// Scratch (in f32s) that [`packed_gemm`] needs for a right operand of `k × n`: room for it
/// packed into zero-padded [`NR`]-column slivers, plus slack to start them on a cache line.
pub fn scratch_len(k: usize, n: usize) -> usize {
    k * n.div_ceil(NR) * NR + NR
}

/// c[m×n] (+)= scale · A · b[k×n], A the packed constant read through `a` (as packed or
/// transposed: `m × k` is the view's shape).
///
/// `c` must have contiguous rows (`lc.cs == 1`). `b` is copied into `scratch` (at least
/// [`scratch_len`] long; the planner allocates it once, so evals never allocate) as
/// [`NR`]-column slivers, each `k` rows of [`NR`] contiguous values: the microkernel then reads
/// one aligned cache line per step along k instead of a line-straddling strided row, and edge
/// columns are zeros rather than masked loads. The copy is `k·n` values against `m·k·n`
/// multiply-adds.
#[allow(clippy::too_many_arguments)]
pub fn packed_gemm(
    a: PackedView<'_>,
    n: usize,
    b: &[f32],
    lb: MatLayout,
    c: &mut [f32],
    lc: MatLayout,
    accumulate: bool,
    scale: f32,
    threads: usize,
    scratch: &mut [f32],
) {
    let (m, k) = (a.rows(), a.depth());
    assert_eq!(lc.cs, 1, "packed: dst rows must be contiguous");
    assert!(lc.rs >= n, "packed: dst rows overlap");
    if n == 0 {
        return;
    }
    assert!(lb.extent(k, n) <= b.len(), "packed: rhs view out of bounds");
    assert!(lc.extent(m, n) <= c.len(), "packed: dst view out of bounds");
    let slivers = n.div_ceil(NR);
    let align = scratch.as_ptr().align_offset(64).min(NR);
    let packed_b = &mut scratch[align..align + slivers * k * NR];
    let threads = if m * n * k >= PARALLEL_MIN_MACS {
        threads.max(1)
    } else {
        1
    };
    pack_b(b, lb, k, n, 0, packed_b, threads.min(slivers));
    let c = &mut c[lc.offset..lc.extent(m, n)];
    let panels = m.div_ceil(MR);
    let job = Job {
        a,
        n,
        b: packed_b,
        ldc: lc.rs,
        accumulate,
        scale,
    };
    split(&job, 0, panels, threads.min(panels), c);
}

/// Copies columns `first * NR..` of b into `out`, one zero-padded sliver of `k × NR` after
/// another, on `threads` threads.
fn pack_b(
    b: &[f32],
    lb: MatLayout,
    k: usize,
    n: usize,
    first: usize,
    out: &mut [f32],
    threads: usize,
) {
    let count = out.len() / (k * NR);
    if threads > 1 && count > 1 {
        let left = count / 2;
        let (l, r) = out.split_at_mut(left * k * NR);
        rayon::join(
            || pack_b(b, lb, k, n, first, l, threads / 2),
            || pack_b(b, lb, k, n, first + left, r, threads - threads / 2),
        );
        return;
    }
    for (s, sliver) in out.chunks_exact_mut(k * NR).enumerate() {
        let j0 = (first + s) * NR;
        let cols = (n - j0).min(NR);
        for (p, row) in sliver.chunks_exact_mut(NR).enumerate() {
            let at = lb.offset + p * lb.rs + j0 * lb.cs;
            if lb.cs == 1 && cols == NR {
                // A whole sliver row: a fixed-size copy the compiler keeps inline (a
                // `memcpy` call per 16 values).
                let src: &[f32; NR] = b[at..at + NR].try_into().expect("NR values");
                *<&mut [f32; NR]>::try_from(row).expect("NR values") = *src;
                continue;
            }
            if lb.cs == 1 {
                row[..cols].copy_from_slice(&b[at..at + cols]);
            } else {
                for (j, v) in row[..cols].iter_mut().enumerate() {
                    *v = b[at + j * lb.cs];
                }
            }
            row[cols..].fill(0.0);
        }
    }
}

/// What every thread's share of one product needs.
struct Job<'a> {
    a: PackedView<'a>,
    n: usize,
    /// The right operand packed into slivers.
    b: &'a [f32],
    ldc: usize,
    accumulate: bool,
    scale: f32,
}

/// Runs panels `first..first + count` on `threads` threads, halving the range with
/// `rayon::join` (which, unlike spawning, allocates nothing). `c` starts at row `first * MR`.
fn split(job: &Job<'_>, first: usize, count: usize, threads: usize, c: &mut [f32]) {
    if threads <= 1 || count <= 1 {
        run_panels(job, first, count, c);
        return;
    }
    let left_threads = threads / 2;
    let left = count * left_threads / threads;
    // The right half's rows start at panel `first + left`, i.e. `left * MR` rows into `c`.
    let (c_left, c_right) = c.split_at_mut((left * MR * job.ldc).min(c.len()));
    rayon::join(
        || split(job, first, left, left_threads, c_left),
        || {
            split(
                job,
                first + left,
                count - left,
                threads - left_threads,
                c_right,
            )
        },
    );
}

/// Panels `first..first + count` on this thread; `c` starts at row `first * MR`.
fn run_panels(job: &Job<'_>, first: usize, count: usize, c: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: a `PackedA` only exists when `available()` detected AVX2 and FMA.
        unsafe { x86::run_panels(job, first, count, c) }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (job, first, count, c);
        unreachable!("PackedA is never built without a microkernel");
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{Job, KC, KC_T, LINE, MR, NR, PF_STEPS};
    use std::arch::x86_64::*;

    /// # Safety
    /// The CPU must support AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn run_panels(job: &Job<'_>, first: usize, count: usize, c: &mut [f32]) {
        let transposed = job.a.transposed;
        let (depth, block) = if transposed {
            (job.a.pack.m, KC_T)
        } else {
            (job.a.pack.k, KC)
        };
        for i in first..first + count {
            let mut p0 = 0;
            while p0 < depth {
                let kc = (depth - p0).min(block);
                let mut j = 0;
                while j < job.n {
                    if transposed {
                        tile_transposed(job, first, i, p0, kc, j, c);
                    } else {
                        tile(job, first, i, p0, kc, j, c);
                    }
                    j += NR;
                }
                p0 += kc;
            }
        }
    }

    /// One microkernel call: rows of panel `i`, steps `p0..p0 + kc` along k, columns from `j`
    /// (a multiple of NR). `c` starts at row `first * MR`.
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn tile(
        job: &Job<'_>,
        first: usize,
        i: usize,
        p0: usize,
        kc: usize,
        j: usize,
        c: &mut [f32],
    ) {
        let out = tile_out(job, first, i, p0, kc, j, c);
        let k = job.a.pack.k;
        let block = (i * k + p0) * MR..(i * k + p0 + kc) * MR;
        // The weights are packed in the order the tiles use them, so the next block starts
        // where this one ends. A block's first tile streams it from memory at 24 bytes per 12
        // FMAs, about a core's whole DRAM bandwidth here, and the block's other tiles then
        // read it from L1, so the demand comes in bursts that the hardware prefetcher does not
        // smooth. So each tile prefetches a stretch of the next block, the tiles one after
        // another, wrapping round when there are more than it takes (measured on chained
        // 512-channel convs: docs/benchmarks.md).
        let stretch = kc / PF_STEPS * LINE;
        let ahead = block.end + (j / NR * stretch) % (kc * MR);
        let prefetch = job
            .a
            .pack
            .data
            .as_ptr()
            .wrapping_add(ahead.min(job.a.pack.data.len()));
        let a = &job.a.pack.data[block];
        let kernel = if out.rows == MR && out.cols == NR {
            kernel::<true>
        } else {
            kernel::<false>
        };
        // SAFETY: the kc·MR weights sliced above, and `out`'s bounds.
        kernel(
            kc,
            a.as_ptr(),
            out.b.as_ptr(),
            prefetch,
            out.c,
            job.ldc,
            out.rows,
            out.cols,
            job.scale,
            out.add,
        );
    }

    /// What one microkernel call writes and multiplies its weights with, whichever way it
    /// reads them: `rows` × `cols` of the product from `c` on, the activations of its steps,
    /// and whether it adds to what `c` holds (a later block, or an accumulating product).
    struct TileOut<'a> {
        rows: usize,
        cols: usize,
        b: &'a [f32],
        c: *mut f32,
        add: bool,
    }

    /// The [`TileOut`] of output panel `i`, steps `p0..p0 + kc`, columns from `j` (a
    /// multiple of NR). `c` starts at row `first * MR`; its `rows` rows from column `j` to
    /// `j + cols`, every value of c the kernel touches, are checked to lie inside it.
    #[inline]
    fn tile_out<'a>(
        job: &Job<'a>,
        first: usize,
        i: usize,
        p0: usize,
        kc: usize,
        j: usize,
        c: &mut [f32],
    ) -> TileOut<'a> {
        let (m, depth, ldc) = (job.a.rows(), job.a.depth(), job.ldc);
        let rows = (m - i * MR).min(MR);
        let cols = (job.n - j).min(NR);
        let c_at = (i - first) * MR * ldc + j;
        assert!(c_at + (rows - 1) * ldc + cols <= c.len());
        TileOut {
            rows,
            cols,
            b: &job.b[(j / NR * depth + p0) * NR..(j / NR * depth + p0 + kc) * NR],
            c: c[c_at..].as_mut_ptr(),
            add: job.accumulate || p0 > 0,
        }
    }

    /// c[rows × cols] (+)= scale · a[rows × kc] · b[kc × cols] for one MR×NR tile, touching
    /// one cache line from `prefetch` on (a hint only: never read, may point anywhere) every
    /// [`PF_STEPS`] steps.
    ///
    /// # Safety
    /// AVX2 and FMA; `a` holds `kc * MR` values and `b` holds `kc * NR`; `c` has `rows` rows of
    /// `cols` writable values `ldc` apart. With `FULL`, `rows == MR` and `cols == NR`.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn kernel<const FULL: bool>(
        kc: usize,
        a: *const f32,
        b: *const f32,
        prefetch: *const f32,
        c: *mut f32,
        ldc: usize,
        rows: usize,
        cols: usize,
        scale: f32,
        add: bool,
    ) {
        let mut acc = [[_mm256_setzero_ps(); 2]; MR];
        let (mut a, mut b, mut prefetch) = (a, b, prefetch);
        let mut step = |a: &mut *const f32, b: &mut *const f32| {
            let (b0, b1) = (_mm256_loadu_ps(*b), _mm256_loadu_ps(b.add(8)));
            for (r, row) in acc.iter_mut().enumerate() {
                let w = _mm256_broadcast_ss(&*a.add(r));
                row[0] = _mm256_fmadd_ps(w, b0, row[0]);
                row[1] = _mm256_fmadd_ps(w, b1, row[1]);
            }
            *a = a.add(MR);
            *b = b.add(NR);
        };
        // Groups of PF_STEPS steps with one prefetch each: a test per step made the loop
        // two branches long and cost more than the prefetch gained.
        for _ in 0..kc / PF_STEPS {
            _mm_prefetch::<_MM_HINT_T0>(prefetch.cast());
            prefetch = prefetch.wrapping_add(LINE);
            for _ in 0..PF_STEPS {
                step(&mut a, &mut b);
            }
        }
        for _ in 0..kc % PF_STEPS {
            step(&mut a, &mut b);
        }
        store::<FULL>(&acc, c, ldc, rows, cols, scale, add);
    }

    /// [`tile`] for a transposed view: rows `i * MR..` of the product (columns of the packed
    /// matrix), steps `p0..p0 + kc` along its depth, down the rows of the packed matrix (`p0`
    /// is a multiple of MR, as the blocks are [`KC_T`] long), columns from `j`.
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn tile_transposed(
        job: &Job<'_>,
        first: usize,
        i: usize,
        p0: usize,
        kc: usize,
        j: usize,
        c: &mut [f32],
    ) {
        let out = tile_out(job, first, i, p0, kc, j, c);
        let pack = job.a.pack;
        // Packed element (p, col) is at `(p / MR) * panel + col * MR + p % MR`: the block
        // starts at the top of panel `p0 / MR`, at the tile's first column.
        let panel = pack.k * MR;
        let start = p0 / MR * panel + i * MR * MR;
        // The last value the block reads: its last panel, the tile's last column, the
        // panel's last row (the kernel never reads a missing column past `rows`).
        let last_panel = (p0 + kc - 1) / MR;
        let end = last_panel * panel + (i * MR + out.rows) * MR;
        assert!(
            end <= pack.data.len(),
            "packed: transposed block out of bounds"
        );
        let kernel = if out.rows == MR && out.cols == NR {
            kernel_transposed::<true>
        } else {
            kernel_transposed::<false>
        };
        // SAFETY: the weights as asserted above, and `out`'s bounds.
        kernel(
            kc,
            pack.data.as_ptr().add(start),
            panel,
            out.b.as_ptr(),
            out.c,
            job.ldc,
            out.rows,
            out.cols,
            job.scale,
            out.add,
        );
    }

    /// [`kernel`] reading its MR×kc block of weights transposed out of the packed panels:
    /// step `p` broadcasts column `t` of the tile from `a + (p / MR) * panel + t * MR + p % MR`.
    ///
    /// # Safety
    /// AVX2 and FMA; every such address for `p < kc` and `t < rows` is readable; `b` holds
    /// `kc * NR` values; `c` has `rows` rows of `cols` writable values `ldc` apart. With
    /// `FULL`, `rows == MR` and `cols == NR`.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn kernel_transposed<const FULL: bool>(
        kc: usize,
        a: *const f32,
        panel: usize,
        b: *const f32,
        c: *mut f32,
        ldc: usize,
        rows: usize,
        cols: usize,
        scale: f32,
        add: bool,
    ) {
        // A partial tile's missing columns read its last one instead: in bounds, and their
        // sums are never stored.
        let column: [usize; MR] =
            std::array::from_fn(|t| if FULL { t } else { t.min(rows - 1) } * MR);
        let mut acc = [[_mm256_setzero_ps(); 2]; MR];
        let mut b = b;
        let mut step = |a: *const f32, b: &mut *const f32| {
            let (b0, b1) = (_mm256_loadu_ps(*b), _mm256_loadu_ps(b.add(8)));
            for (row, &at) in acc.iter_mut().zip(&column) {
                let w = _mm256_broadcast_ss(&*a.add(at));
                row[0] = _mm256_fmadd_ps(w, b0, row[0]);
                row[1] = _mm256_fmadd_ps(w, b1, row[1]);
            }
            *b = b.add(NR);
        };
        let mut top = a;
        for _ in 0..kc / MR {
            for p in 0..MR {
                step(top.add(p), &mut b);
            }
            top = top.wrapping_add(panel);
        }
        for p in 0..kc % MR {
            step(top.add(p), &mut b);
        }
        store::<FULL>(&acc, c, ldc, rows, cols, scale, add);
    }

    /// Writes a tile's sums: c (+)= scale · acc over `rows` × `cols`.
    ///
    /// # Safety
    /// AVX2; `c` has `rows` rows of `cols` writable values `ldc` apart. With `FULL`,
    /// `rows == MR` and `cols == NR`.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn store<const FULL: bool>(
        acc: &[[__m256; 2]; MR],
        c: *mut f32,
        ldc: usize,
        rows: usize,
        cols: usize,
        scale: f32,
        add: bool,
    ) {
        let s = _mm256_set1_ps(scale);
        if FULL {
            for (r, row) in acc.iter().enumerate() {
                let cr = c.add(r * ldc);
                for (h, v) in row.iter().enumerate() {
                    let out = if add {
                        _mm256_fmadd_ps(*v, s, _mm256_loadu_ps(cr.add(8 * h)))
                    } else {
                        _mm256_mul_ps(*v, s)
                    };
                    _mm256_storeu_ps(cr.add(8 * h), out);
                }
            }
        } else {
            // A partial tile goes through memory so that nothing past its rows and columns is
            // touched.
            let mut tile = [[0f32; NR]; MR];
            for (t, row) in tile.iter_mut().zip(acc) {
                _mm256_storeu_ps(t.as_mut_ptr(), row[0]);
                _mm256_storeu_ps(t.as_mut_ptr().add(8), row[1]);
            }
            for (r, t) in tile.iter().enumerate().take(rows) {
                let cr = c.add(r * ldc);
                for (col, &v) in t.iter().enumerate().take(cols) {
                    let dst = cr.add(col);
                    *dst = if add {
                        v.mul_add(scale, *dst)
                    } else {
                        v * scale
                    };
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(len: usize, seed: f32) -> Vec<f32> {
        (0..len)
            .map(|i| ((i as f32 * 0.731 + seed).sin() * 2.0).round() / 4.0 + 0.01 * seed)
            .collect()
    }

    /// Reference in f64 through arbitrary views.
    #[allow(clippy::too_many_arguments)]
    fn naive(
        m: usize,
        n: usize,
        k: usize,
        a: &[f32],
        la: MatLayout,
        b: &[f32],
        lb: MatLayout,
        c0: &[f64],
        scale: f64,
    ) -> Vec<f64> {
        let mut c = c0.to_vec();
        for i in 0..m {
            for j in 0..n {
                let dot = crate::cpu::matmul::reference_dot(a, la, b, lb, i, j, k);
                c[i * n + j] += scale * dot;
            }
        }
        c
    }

    #[test]
    fn matches_naive_across_shapes_and_edges() {
        if !available() {
            return;
        }
        let dims = [1, 5, 6, 7, 16, 17, 64, 130];
        let mut checked = 0;
        for &m in &dims {
            for &n in &dims {
                for &k in &dims {
                    for (threads, accumulate, scale, strided_b, a_rows) in [
                        (1, false, 1.0, false, true),
                        (2, true, 0.5, false, false),
                        (2, false, -1.25, true, true),
                        (1, true, 1.0, true, false),
                    ] {
                        check(m, n, k, threads, accumulate, scale, strided_b, a_rows);
                        checked += 1;
                    }
                }
            }
        }
        assert_eq!(checked, 8 * 8 * 8 * 4);
    }

    /// One product: A row-major (as weights are) or a transposed view (packing must honour
    /// both strides), b either row-major inside a wider buffer or transposed, c rows padded
    /// past n.
    #[allow(clippy::too_many_arguments)]
    fn check(
        m: usize,
        n: usize,
        k: usize,
        threads: usize,
        accumulate: bool,
        scale: f32,
        strided_b: bool,
        a_rows: bool,
    ) {
        let at = values(k * m + 3, 1.0);
        let la = if a_rows {
            MatLayout::row_major(3, k)
        } else {
            MatLayout {
                offset: 3,
                rs: 1,
                cs: m,
            }
        };
        let (b, lb) = if strided_b {
            (values(n * k, 2.0), MatLayout::row_major(0, k).transposed())
        } else {
            (values(2 + k * (n + 5), 2.0), MatLayout::row_major(2, n + 5))
        };
        let ldc = n + 3;
        let c = values(1 + m * ldc, 3.0);
        let c0: Vec<f64> = (0..m * n)
            .map(|i| {
                if accumulate {
                    c[1 + (i / n) * ldc + i % n] as f64
                } else {
                    0.0
                }
            })
            .collect();
        let want = naive(m, n, k, &at, la, &b, lb, &c0, scale as f64);
        // The same product twice: from A packed, and from Aᵀ packed read transposed.
        let pa = PackedA::new(m, k, &at, la).expect("avx2 detected");
        let pat = PackedA::new(k, m, &at, la.transposed()).expect("avx2 detected");
        for view in [PackedView::plain(&pa), PackedView::transposed(&pat)] {
            check_view(view, n, &b, lb, &c, ldc, &want, accumulate, scale, threads);
        }
    }

    /// One product through `view` against `want`, c as [`check`] lays it out.
    #[allow(clippy::too_many_arguments)]
    fn check_view(
        view: PackedView<'_>,
        n: usize,
        b: &[f32],
        lb: MatLayout,
        c: &[f32],
        ldc: usize,
        want: &[f64],
        accumulate: bool,
        scale: f32,
        threads: usize,
    ) {
        let (m, k) = (view.rows(), view.depth());
        let lc = MatLayout::row_major(1, ldc);
        let before = c.to_vec();
        let mut c = c.to_vec();
        let mut scratch = vec![0.0; scratch_len(k, n)];
        packed_gemm(
            view,
            n,
            b,
            lb,
            &mut c,
            lc,
            accumulate,
            scale,
            threads,
            &mut scratch,
        );
        let transposed = view.transposed;
        assert_eq!(c[0], before[0], "wrote before the view");
        for i in 0..m {
            for j in 0..ldc {
                let got = c[1 + i * ldc + j];
                if j >= n {
                    assert_eq!(
                        got,
                        before[1 + i * ldc + j],
                        "wrote padding ({m},{n},{k}) at ({i},{j})"
                    );
                    continue;
                }
                let w = want[i * n + j];
                assert!(
                    (got as f64 - w).abs() <= 1e-4 * (1.0 + w.abs()),
                    "({m},{n},{k}) transposed {transposed} threads {threads} acc {accumulate} \
                     scale {scale}: c[{i},{j}] = {got}, want {w}"
                );
            }
        }
    }

    #[test]
    fn long_k_crosses_blocks() {
        if !available() {
            return;
        }
        check(13, 40, 3 * KC + 5, 2, true, 0.75, false, true);
        check(64, 64, 2 * KC, 2, false, 1.0, false, false);
        // A transposed read's blocks are KC_T long: one ends mid-panel, one on a boundary.
        check(17, 33, 2 * KC_T + 4, 2, true, 1.5, false, true);
        check(6, 16, KC_T * 3, 1, false, 1.0, true, false);
    }
}
