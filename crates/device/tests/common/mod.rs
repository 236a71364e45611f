//! Shared pieces of the device tests: a deterministic random source, single-op programs, and
//! tolerance checks.
#![allow(dead_code)]

use anetrain_device::{CpuDevice, Device, NumericMode};
use anetrain_mil::blob::WeightFiles;
use anetrain_mil::{Arg, DType, Dialect, FunctionBuilder, Literal, Program, Style, Type};

/// xorshift64*: deterministic, good enough for test data.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in [-1, 1).
    pub fn uniform(&mut self) -> f32 {
        ((self.next_u64() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    pub fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.uniform() * scale).collect()
    }
}

/// A tensor for the naive references: shape and row-major f64 data.
#[derive(Clone, Debug)]
pub struct T {
    pub shape: Vec<usize>,
    pub data: Vec<f64>,
}

impl T {
    pub fn new(shape: &[usize], data: Vec<f64>) -> T {
        assert_eq!(shape.iter().product::<usize>(), data.len());
        T {
            shape: shape.to_vec(),
            data,
        }
    }

    pub fn from_f32(shape: &[usize], data: &[f32]) -> T {
        T::new(shape, data.iter().map(|&v| v as f64).collect())
    }

    pub fn strides(&self) -> Vec<usize> {
        let mut s = vec![1; self.shape.len()];
        for d in (0..self.shape.len().saturating_sub(1)).rev() {
            s[d] = s[d + 1] * self.shape[d + 1];
        }
        s
    }

    /// Element at a multi-index, broadcasting size-1 and missing leading dimensions.
    pub fn at_broadcast(&self, index: &[usize]) -> f64 {
        let lead = index.len() - self.shape.len();
        let strides = self.strides();
        let mut off = 0;
        for d in 0..self.shape.len() {
            let i = if self.shape[d] == 1 {
                0
            } else {
                index[lead + d]
            };
            off += i * strides[d];
        }
        self.data[off]
    }
}

/// Every multi-index of a shape, in row-major order.
pub fn indices(shape: &[usize]) -> Vec<Vec<usize>> {
    let n: usize = shape.iter().product();
    (0..n)
        .map(|mut flat| {
            let mut idx = vec![0; shape.len()];
            for d in (0..shape.len()).rev() {
                idx[d] = flat % shape[d];
                flat /= shape[d];
            }
            idx
        })
        .collect()
}

/// An input of a single-op test program.
pub struct In<'a> {
    pub key: &'a str,
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// Builds `out = kind(inputs..., params...)` with inputs as function parameters of `dtype` and
/// parameters as constants, infers the output type with the checker, and evaluates it on the
/// CPU device in `mode`. Returns the output shape and values.
pub fn run_op(
    kind: &str,
    dtype: DType,
    inputs: &[In<'_>],
    params: &[(&str, Literal)],
    mode: NumericMode,
) -> (Vec<usize>, Vec<f32>) {
    run_op_with(kind, dtype, inputs, params, &WeightFiles::new(), mode)
}

pub fn run_op_with(
    kind: &str,
    dtype: DType,
    inputs: &[In<'_>],
    params: &[(&str, Literal)],
    weights: &WeightFiles,
    mode: NumericMode,
) -> (Vec<usize>, Vec<f32>) {
    let mut b = FunctionBuilder::new("main", "ios18");
    let mut args: Vec<(&str, Arg)> = Vec::new();
    for i in inputs {
        let v = b.input(i.key, Type::tensor(dtype, i.shape.clone()));
        args.push((i.key, (&v).into()));
    }
    for (k, lit) in params {
        let v = b.constant(&format!("p_{k}"), lit.clone());
        args.push((k, (&v).into()));
    }
    args.sort_by(|a, b| a.0.cmp(b.0));
    let out = b
        .typed_op(kind, "out", args)
        .unwrap_or_else(|e| panic!("test op does not type-check: {e}"));
    let ty = b.type_of(&out).expect("just defined").clone();
    b.output(&out);
    let program = Program::single(Dialect::Ios18, Style::Compact, b.finish());
    let device = CpuDevice::new(mode);
    let mut kernel = device
        .compile(&program, weights)
        .unwrap_or_else(|e| panic!("compile failed: {e}"));
    let ins: Vec<&[f32]> = inputs.iter().map(|i| i.data.as_slice()).collect();
    let mut result = vec![f32::NAN; ty.num_elements()];
    device
        .eval(&mut kernel, &ins, &mut [&mut result])
        .unwrap_or_else(|e| panic!("eval failed: {e}"));
    (ty.shape().to_vec(), result)
}

/// Asserts |got - want| <= atol + rtol·|want| everywhere, naming the first offending index.
pub fn assert_close(what: &str, got: &[f32], want: &[f64], atol: f64, rtol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let tol = atol + rtol * w.abs();
        assert!(
            (g as f64 - w).abs() <= tol || (g.is_nan() && w.is_nan()),
            "{what}: element {i}: got {g}, want {w} (tolerance {tol})"
        );
    }
}

/// Tolerances per numeric mode: fp32 accumulates in f32; fp16 rounds every op boundary
/// (relative error about 2⁻¹¹ per rounding, a few roundings deep).
pub fn tolerance(mode: NumericMode) -> (f64, f64) {
    match mode {
        NumericMode::Fp32 => (1e-5, 1e-5),
        NumericMode::Fp16 => (2e-3, 4e-3),
    }
}

pub const MODES: [NumericMode; 2] = [NumericMode::Fp32, NumericMode::Fp16];

/// The dtype a test declares its tensors with in each mode (fp16 mode rounds fp16 tensors).
pub fn dtype_for(mode: NumericMode) -> DType {
    match mode {
        NumericMode::Fp32 => DType::Fp32,
        NumericMode::Fp16 => DType::Fp16,
    }
}

/// Inputs as the device will see them: rounded to fp16 where the test declares fp16.
pub fn as_seen(mode: NumericMode, data: &[f32]) -> Vec<f32> {
    match mode {
        NumericMode::Fp32 => data.to_vec(),
        NumericMode::Fp16 => data
            .iter()
            .map(|&v| half::f16::from_f32(v).to_f32())
            .collect(),
    }
}
