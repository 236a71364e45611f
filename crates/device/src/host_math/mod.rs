//! The kernels the host half of a training step shares with the CPU device: matrix products,
//! the vectorisable `exp`, and the dispatch to the widest SIMD this processor has. This is
//! their one public face; the CPU device's modules behind it are its own.
//!
//! The host's matrix products go through [`HostMath`], which runs them with faer (the CPU
//! device's library) or through CBLAS: Accelerate on Apple targets, always built in, and
//! OpenBLAS elsewhere with the `cblas` feature.

#[cfg(any(target_vendor = "apple", feature = "cblas"))]
mod cblas;

pub use crate::cpu::fastmath::exp;
pub use crate::cpu::matmul::{gemm, MatLayout};
pub use crate::cpu::simd::vectorised;
use std::fmt;

/// The library that computes the host's matrix products.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GemmLibrary {
    /// faer, pure Rust, as the CPU device's own products.
    Faer,
    /// `cblas_sgemm`: Accelerate on Apple targets, OpenBLAS elsewhere.
    Cblas,
}

impl GemmLibrary {
    /// Whether this build has CBLAS (Apple targets always; elsewhere the `cblas` feature).
    pub const CBLAS_BUILT: bool = cfg!(any(target_vendor = "apple", feature = "cblas"));

    /// CBLAS where this build has it, faer otherwise.
    pub fn best_built() -> GemmLibrary {
        if Self::CBLAS_BUILT {
            GemmLibrary::Cblas
        } else {
            GemmLibrary::Faer
        }
    }

    /// This library, or why this build cannot use it.
    pub fn available(self) -> Result<GemmLibrary, String> {
        match self {
            GemmLibrary::Cblas if !Self::CBLAS_BUILT => Err(
                "this build has no CBLAS: on Linux build with `--features cblas` (it links \
                 OpenBLAS: Debian's libopenblas-dev)"
                    .into(),
            ),
            library => Ok(library),
        }
    }

    /// The name a user writes (`faer`, `cblas`).
    pub fn name(self) -> &'static str {
        match self {
            GemmLibrary::Faer => "faer",
            GemmLibrary::Cblas => "cblas",
        }
    }
}

impl fmt::Display for GemmLibrary {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            GemmLibrary::Faer => f.write_str("faer"),
            #[cfg(any(target_vendor = "apple", feature = "cblas"))]
            GemmLibrary::Cblas => write!(f, "cblas ({})", cblas::LIBRARY),
            #[cfg(not(any(target_vendor = "apple", feature = "cblas")))]
            GemmLibrary::Cblas => f.write_str("cblas (not built)"),
        }
    }
}

impl std::str::FromStr for GemmLibrary {
    type Err = String;

    fn from_str(s: &str) -> Result<GemmLibrary, String> {
        match s {
            "faer" => Ok(GemmLibrary::Faer),
            "cblas" => Ok(GemmLibrary::Cblas),
            other => Err(format!(
                "unknown matrix library {other:?} (expected faer or cblas)"
            )),
        }
    }
}

/// How the host runs its matrix products: the library, and the threads a faer product may
/// use. CBLAS libraries run their own threads (OpenBLAS: `OPENBLAS_NUM_THREADS`, all cores by
/// default; Accelerate decides for itself), as on a Mac.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostMath {
    pub threads: usize,
    pub library: GemmLibrary,
}

impl HostMath {
    /// faer products on `threads` threads.
    pub fn faer(threads: usize) -> HostMath {
        HostMath {
            threads,
            library: GemmLibrary::Faer,
        }
    }

    /// The best library this build has ([`GemmLibrary::best_built`]).
    pub fn best_built(threads: usize) -> HostMath {
        HostMath {
            threads,
            library: GemmLibrary::best_built(),
        }
    }

    /// The same library on `threads` threads.
    pub fn with_threads(self, threads: usize) -> HostMath {
        HostMath { threads, ..self }
    }

    /// `c[m×n]` (+)= `scale · a[m×k] · b[k×n]`, accumulating in f32. Views CBLAS cannot take
    /// (neither dimension contiguous) and empty products run with faer; a CBLAS library asked
    /// for by a build without one runs faer too ([`GemmLibrary::available`] is where a user's
    /// choice is refused).
    #[allow(clippy::too_many_arguments)]
    pub fn gemm(
        &self,
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
    ) {
        #[cfg(any(target_vendor = "apple", feature = "cblas"))]
        if self.library == GemmLibrary::Cblas && m > 0 && n > 0 && k > 0 {
            crate::cpu::matmul::assert_views_in_bounds([m, n, k], (a, la), (b, lb), (c, lc));
            if cblas::try_gemm(m, n, k, a, la, b, lb, c, lc, accumulate, scale) {
                return;
            }
        }
        gemm(
            m,
            n,
            k,
            a,
            la,
            b,
            lb,
            c,
            lc,
            accumulate,
            scale,
            self.threads,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The product by its definition, in f64.
    #[allow(clippy::too_many_arguments)]
    fn naive(
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
    ) {
        for i in 0..m {
            for j in 0..n {
                let dot = crate::cpu::matmul::reference_dot(a, la, b, lb, i, j, k);
                let at = lc.offset + i * lc.rs + j * lc.cs;
                let old = if accumulate { c[at] as f64 } else { 0.0 };
                c[at] = (old + scale as f64 * dot) as f32;
            }
        }
    }

    fn values(len: usize, seed: u32) -> Vec<f32> {
        (0..len as u32)
            .map(|i| {
                ((i.wrapping_mul(2654435761).wrapping_add(seed * 97)) % 1000) as f32 / 500.0 - 1.0
            })
            .collect()
    }

    /// A view of `rows × cols` in one of four layouts: row-major with room (`ld` > cols),
    /// transposed, strided along both dimensions (which CBLAS cannot take), and offset.
    fn layout(kind: usize, rows: usize, cols: usize) -> (MatLayout, usize) {
        let l = match kind {
            0 => MatLayout::row_major(3, cols + 2),
            1 => MatLayout::row_major(1, rows).transposed(),
            2 => MatLayout {
                offset: 0,
                rs: 2 * cols + 1,
                cs: 2,
            },
            _ => MatLayout::row_major(0, cols),
        };
        (l, l.extent(rows, cols) + 2)
    }

    #[test]
    fn every_library_matches_the_definition_in_every_layout() {
        let mut libraries = vec![GemmLibrary::Faer];
        if GemmLibrary::CBLAS_BUILT {
            libraries.push(GemmLibrary::Cblas);
        }
        for library in libraries {
            let host = HostMath {
                threads: 2,
                library,
            };
            for (m, n, k) in [(1, 1, 1), (1, 7, 5), (6, 1, 9), (13, 17, 11), (64, 40, 300)] {
                for (ka, kb, kc) in (0..64).map(|i| (i % 4, (i / 4) % 4, i / 16)) {
                    let (la, a_len) = layout(ka, m, k);
                    let (lb, b_len) = layout(kb, k, n);
                    let (lc, c_len) = layout(kc, m, n);
                    let (a, b) = (values(a_len, 1), values(b_len, 2));
                    for (accumulate, scale) in [(false, 1.0), (true, -0.75)] {
                        let mut got = values(c_len, 3);
                        let mut want = got.clone();
                        host.gemm(m, n, k, &a, la, &b, lb, &mut got, lc, accumulate, scale);
                        naive(m, n, k, &a, la, &b, lb, &mut want, lc, accumulate, scale);
                        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                            let tol = 1e-5 * (k as f32).sqrt() * (1.0 + w.abs());
                            assert!(
                                (g - w).abs() <= tol,
                                "{library} {m}x{n}x{k} layouts {ka}/{kb}/{kc} \
                                 accumulate {accumulate}: c[{i}] = {g}, want {w}"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn a_library_this_build_lacks_is_refused_by_name() {
        assert_eq!(GemmLibrary::Faer.available(), Ok(GemmLibrary::Faer));
        assert_eq!(
            GemmLibrary::Cblas.available().is_ok(),
            GemmLibrary::CBLAS_BUILT
        );
        assert_eq!("cblas".parse(), Ok(GemmLibrary::Cblas));
        assert!("mkl"
            .parse::<GemmLibrary>()
            .unwrap_err()
            .contains("\"mkl\""));
    }
}
