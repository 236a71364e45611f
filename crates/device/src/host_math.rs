//! The kernels the host half of a training step shares with the CPU device: matrix products,
//! the vectorisable `exp`, and the dispatch to the widest SIMD this processor has. This is
//! their one public face; the CPU device's modules behind it are its own.

pub use crate::cpu::fastmath::exp;
pub use crate::cpu::matmul::{gemm, MatLayout};
pub use crate::cpu::simd::vectorised;
