//! The device under test and the clock that times it: compiles and evals, each timestamped
//! and each turned into a [`ProbeError`] that names the stage and the kernel when it fails.

use crate::error::ProbeError;
use crate::kernels::ConvChain;
use crate::stats::Interval;
use anetrain_device::clock::Clock;
use anetrain_device::{Device, Kernel};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// A device and a clock, shared with background threads by cloning.
#[derive(Clone)]
pub struct Testbed {
    pub device: Arc<dyn Device>,
    pub clock: Arc<dyn Clock>,
    /// Compiles attempted so far, failed ones included (the ANE's per-process budget counts
    /// every attempt).
    compiles: Arc<AtomicUsize>,
}

/// A compiled kernel with its own input and output buffers and the output it must produce.
pub struct LoadedKernel {
    pub chain: ConvChain,
    /// How errors name it, e.g. `kernel 3 (1x1 conv 128->128 sp64, scale 1.375, shift 4)`.
    pub label: String,
    kernel: Kernel,
    input: Vec<f32>,
    output: Vec<f32>,
    expected: Vec<f32>,
}

impl Testbed {
    pub fn new(device: Arc<dyn Device>, clock: Arc<dyn Clock>) -> Testbed {
        Testbed {
            device,
            clock,
            compiles: Arc::new(AtomicUsize::new(0)),
        }
    }

    pub fn compiles_attempted(&self) -> usize {
        self.compiles.load(Ordering::SeqCst)
    }

    /// True when the figures are modelled rather than measured: a virtual clock, or a device
    /// that adds modelled latencies.
    pub fn is_simulated(&self) -> bool {
        self.clock.is_simulated() || self.device.info().simulated
    }

    /// Compiles `chain`, timing the compile alone (building the program and its weight files
    /// happens before the clock starts).
    pub fn compile(
        &self,
        stage: &'static str,
        label: String,
        chain: ConvChain,
    ) -> Result<(LoadedKernel, Interval), ProbeError> {
        if let Some(message) = chain.invalid_reason() {
            return Err(ProbeError::Settings { stage, message });
        }
        let program = chain.program();
        let weights = chain.weights();
        let input = chain.input();
        let expected = chain.expected(&input);
        self.compiles.fetch_add(1, Ordering::SeqCst);
        let start = self.clock.now();
        let compiled = self.device.compile(&program, &weights);
        let end = self.clock.now();
        let kernel = compiled.map_err(|error| ProbeError::Compile {
            stage,
            kernel: label.clone(),
            error: Box::new(error),
        })?;
        let output = vec![0.0; expected.len()];
        let loaded = LoadedKernel {
            chain,
            label,
            kernel,
            input,
            output,
            expected,
        };
        Ok((loaded, Interval { start, end }))
    }

    /// One timed eval of `kernel` into its own output buffer.
    pub fn eval(
        &self,
        stage: &'static str,
        kernel: &mut LoadedKernel,
    ) -> Result<Interval, ProbeError> {
        let start = self.clock.now();
        let result = self.device.eval(
            &mut kernel.kernel,
            &[&kernel.input],
            &mut [&mut kernel.output],
        );
        let end = self.clock.now();
        result.map_err(|error| ProbeError::Eval {
            stage,
            kernel: kernel.label.clone(),
            error: Box::new(error),
        })?;
        Ok(Interval { start, end })
    }

    /// `n` timed evals in a row.
    pub fn eval_repeatedly(
        &self,
        stage: &'static str,
        kernel: &mut LoadedKernel,
        n: usize,
    ) -> Result<Vec<Interval>, ProbeError> {
        let mut intervals = Vec::with_capacity(n);
        for _ in 0..n {
            intervals.push(self.eval(stage, kernel)?);
        }
        Ok(intervals)
    }

    /// Evaluates once and checks the result.
    pub fn eval_and_verify(
        &self,
        stage: &'static str,
        kernel: &mut LoadedKernel,
    ) -> Result<(), ProbeError> {
        self.eval(stage, kernel)?;
        kernel.verify(stage)
    }
}

impl LoadedKernel {
    /// Checks the output of the latest eval against the expected one.
    pub fn verify(&self, stage: &'static str) -> Result<(), ProbeError> {
        self.chain
            .check(&self.output, &self.expected)
            .map_err(|mismatch| ProbeError::WrongResult {
                stage,
                kernel: self.label.clone(),
                mismatch: Box::new(mismatch),
            })
    }
}
