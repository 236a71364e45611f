//! Devices that compile MIL programs into kernels and evaluate them.
//!
//! The second layer (mil → device → model → train → cli). The [`Device`] trait is the one
//! seam between the MIL layer and everything that runs programs: the CPU device here (always
//! built, in fp32 or in the ANE's fp16 numerics), the ANE device (Apple targets only), and
//! decorators that wrap any device for tests and simulation (a chip's latencies on a virtual
//! clock, a compile budget, injected faults, a timeline). Probes, benchmarks and the trainer
//! are written against the trait alone, and open their device with a [`DeviceSpec`].
//!
//! A program is compiled with its weight files into a [`Kernel`], which holds the weights
//! baked in, and is then evaluated on host buffers (fp32, one per input and output).
//!
//! # Open a device, compile, evaluate
//!
//! ```
//! use anetrain_device::{DeviceSpec, NumericMode};
//! use anetrain_mil::{parse_program, BlobFile, WeightFiles};
//!
//! // The CPU device in fp32, on one thread (`DeviceSpec` also opens the ANE, or a simulated M4).
//! let spec = DeviceSpec { threads: Some(1), ..DeviceSpec::cpu(NumericMode::Fp32) };
//! let open = spec.open()?;
//! assert_eq!(open.device.info().kind, "cpu");
//!
//! // y[c][t] = x[c][t] · w[c]: 4 channels × 16 positions, w baked in from a weight file.
//! let program = parse_program(r#"program(1.3)
//! [buildInfo = dict<string, string>({{"coremlc-version", "3505.4.1"}})]
//! {
//!     func main<ios18>(tensor<fp32, [1, 4, 1, 16]> x) {
//!         tensor<fp32, [1,4,1,1]> w = const()[name=string("w"), val=tensor<fp32, [1,4,1,1]>(BLOBFILE(path=string("@model_path/weights/w.bin"), offset=uint64(64)))];
//!         tensor<fp32, [1,4,1,16]> y = mul(x=x,y=w)[name=string("y")];
//!     } -> (y);
//! }"#)?;
//! let mut weights = WeightFiles::new();
//! weights.insert_blob("@model_path/weights/w.bin", &BlobFile::fp32(&[1.0, 2.0, 3.0, 4.0]));
//! let mut kernel = open.device.compile(&program, &weights)?;
//! assert_eq!(kernel.input_lens(), vec![64]);
//!
//! let x: Vec<f32> = (0..64).map(|i| i as f32 / 8.0).collect();
//! let mut y = vec![0.0; 64];
//! open.device.eval(&mut kernel, &[&x], &mut [&mut y])?;
//! for (i, &v) in y.iter().enumerate() {
//!     let w = (i / 16 + 1) as f32; // channel c scales by c + 1
//!     assert_eq!(v, x[i] * w);
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod ane;
pub mod clock;
pub mod cpu;
pub mod decorate;
mod error;
pub mod fp16;
pub mod host_math;
pub mod memory;
pub mod open;
pub mod parity;
pub mod trace;

pub use ane::{AneConfig, AneDevice, AneInfo};
pub use cpu::CpuDevice;
pub use error::DeviceError;
pub use open::{DeviceKind, DeviceSpec, OpenDevice, OpenError};

use ane::rules::ChipRules;
use anetrain_mil::blob::WeightFiles;
use anetrain_mil::check::Signature;
use anetrain_mil::Program;
use std::any::Any;
use std::fmt;
use std::sync::Arc;

/// How a device computes with fp16-typed tensors.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum NumericMode {
    /// Every tensor is computed and stored in fp32, whatever its declared type: fast, and the
    /// reference for gradients.
    #[default]
    Fp32,
    /// Like the ANE: every fp16-typed tensor (inputs, constants, op outputs) is rounded to fp16
    /// at each op boundary; matmul, conv and reductions accumulate in fp32 inside the op.
    Fp16,
}

impl NumericMode {
    pub fn name(self) -> &'static str {
        match self {
            NumericMode::Fp32 => "fp32",
            NumericMode::Fp16 => "fp16",
        }
    }
}

impl fmt::Display for NumericMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for NumericMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "fp32" => Ok(NumericMode::Fp32),
            "fp16" => Ok(NumericMode::Fp16),
            other => Err(format!(
                "unknown precision `{other}` (expected fp32 or fp16)"
            )),
        }
    }
}

/// Where a peak-throughput figure comes from; a figure that is not measured says so.
#[derive(Clone, Debug, PartialEq)]
pub enum PeakFlops {
    Unknown,
    /// Measured on this machine (e.g. an FMA loop), in FLOP/s.
    Measured(f64),
    /// The vendor's rating for the chip, in FLOP/s.
    Rated(f64),
}

impl PeakFlops {
    pub fn value(&self) -> Option<f64> {
        match self {
            PeakFlops::Unknown => None,
            PeakFlops::Measured(v) | PeakFlops::Rated(v) => Some(*v),
        }
    }
}

/// What a device is.
#[derive(Clone, Debug, PartialEq)]
pub struct DeviceInfo {
    /// Short name used on the command line: `cpu`, `ane`.
    pub kind: &'static str,
    /// Human description, e.g. `CPU (2 threads)` or `Apple Neural Engine h16`.
    pub name: String,
    pub numeric: NumericMode,
    pub peak: PeakFlops,
    /// True when a decorator adds modelled rather than measured latencies.
    pub simulated: bool,
}

/// A program compiled for one device, with its weights baked in.
///
/// A kernel is evaluated only through the [`Device`] that compiled it, so that decorators see
/// every eval. It owns its working memory: evaluating it allocates nothing.
pub struct Kernel {
    id: usize,
    signature: Signature,
    exec: Box<dyn KernelExec>,
    /// What decorators keep alive as long as the kernel (a slot of a loaded-kernel limit).
    held: Vec<Box<dyn Send>>,
}

/// A program prepared for repeated compiles ([`Device::prepare`]): the program, and what the
/// device that prepared it keeps of it (the CPU device: the program checked and lowered).
#[derive(Clone)]
pub struct PreparedProgram {
    program: Arc<Program>,
    lowered: Option<Arc<dyn Any + Send + Sync>>,
}

impl PreparedProgram {
    /// A program with nothing prepared: compiling it is compiling the program.
    pub fn new(program: Program) -> PreparedProgram {
        PreparedProgram {
            program: Arc::new(program),
            lowered: None,
        }
    }

    /// A program with what a device made of it.
    pub fn lowered(program: Program, lowered: Arc<dyn Any + Send + Sync>) -> PreparedProgram {
        PreparedProgram {
            program: Arc::new(program),
            lowered: Some(lowered),
        }
    }

    pub fn program(&self) -> &Program {
        &self.program
    }

    /// What a device made of the program, if it is a `T` (a device finds its own here, and
    /// nothing in one another device prepared).
    pub fn lowered_as<T: Any + Send + Sync>(&self) -> Option<Arc<T>> {
        self.lowered.clone()?.downcast().ok()
    }
}

impl fmt::Debug for PreparedProgram {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PreparedProgram")
            .field("lowered", &self.lowered.is_some())
            .finish_non_exhaustive()
    }
}

/// The device-specific part of a kernel.
pub trait KernelExec: Send {
    /// Evaluates with inputs and outputs already checked against the signature.
    fn eval(&mut self, inputs: &[&[f32]], outputs: &mut [&mut [f32]]) -> Result<(), DeviceError>;
}

impl Kernel {
    pub fn new(signature: Signature, exec: Box<dyn KernelExec>) -> Kernel {
        static NEXT_ID: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(1);
        let id = NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Kernel {
            id,
            signature,
            exec,
            held: Vec::new(),
        }
    }

    /// Keeps `guard` until the kernel is dropped: a decorator's way to know when a kernel
    /// it let through is gone.
    pub fn hold(&mut self, guard: impl Send + 'static) {
        self.held.push(Box::new(guard));
    }

    /// A number unique to this kernel within the process (decorators key their state by it).
    pub fn id(&self) -> usize {
        self.id
    }

    /// The program's inputs and outputs, with their types.
    pub fn signature(&self) -> &Signature {
        &self.signature
    }

    /// Element counts of the inputs, in order.
    pub fn input_lens(&self) -> Vec<usize> {
        self.signature
            .inputs
            .iter()
            .map(|p| p.ty.num_elements())
            .collect()
    }

    /// Element counts of the outputs, in order.
    pub fn output_lens(&self) -> Vec<usize> {
        self.signature
            .outputs
            .iter()
            .map(|p| p.ty.num_elements())
            .collect()
    }

    /// Checks buffer counts and sizes, then runs the device's evaluation.
    fn run(&mut self, inputs: &[&[f32]], outputs: &mut [&mut [f32]]) -> Result<(), DeviceError> {
        check_buffers(
            "input",
            &self.signature.inputs,
            inputs.iter().map(|b| b.len()),
        )?;
        check_buffers(
            "output",
            &self.signature.outputs,
            outputs.iter().map(|b| b.len()),
        )?;
        self.exec.eval(inputs, outputs)
    }
}

fn check_buffers(
    what: &'static str,
    params: &[anetrain_mil::Param],
    lens: impl ExactSizeIterator<Item = usize>,
) -> Result<(), DeviceError> {
    if lens.len() != params.len() {
        return Err(DeviceError::BufferCount {
            what,
            expected: params.len(),
            found: lens.len(),
        });
    }
    for (p, len) in params.iter().zip(lens) {
        if p.ty.num_elements() != len {
            return Err(DeviceError::BufferSize {
                what,
                name: p.name.clone(),
                ty: p.ty.to_string(),
                expected: p.ty.num_elements(),
                found: len,
            });
        }
    }
    Ok(())
}

/// How much of a per-process compile budget is used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BudgetStatus {
    pub used: u64,
    pub budget: u64,
}

impl BudgetStatus {
    pub fn remaining(&self) -> u64 {
        self.budget.saturating_sub(self.used)
    }
}

/// Something that compiles MIL programs into kernels and evaluates them.
///
/// `compile` and `eval` may be called concurrently from different threads (the double-buffered
/// trainer compiles the next kernel set while the current one evaluates).
pub trait Device: Send + Sync {
    fn info(&self) -> DeviceInfo;

    /// Compiles a program with its weight files (BLOBFILE path → file bytes).
    fn compile(&self, program: &Program, weights: &WeightFiles) -> Result<Kernel, DeviceError>;

    /// Prepares a program that will be compiled again and again with new weights (a training
    /// run compiles each of its kernels' programs at every update). Whatever the device can
    /// do once per program, it does here. Errors in the program surface at its compile.
    fn prepare(&self, program: &Program) -> PreparedProgram {
        PreparedProgram::new(program.clone())
    }

    /// [`Device::compile`] of a prepared program: the same kernel, without the work done
    /// once in [`Device::prepare`]. A decorator that only wraps `compile` still sees every
    /// compile: by default this is `compile` of the prepared program.
    fn compile_prepared(
        &self,
        prepared: &PreparedProgram,
        weights: &WeightFiles,
    ) -> Result<Kernel, DeviceError> {
        self.compile(prepared.program(), weights)
    }

    /// Compiles used and allowed in this process, where the device limits them (the ANE
    /// fails compiles after about 119 per process).
    fn compile_budget(&self) -> Option<BudgetStatus> {
        None
    }

    /// The rules of the chip the device is, or stands for (the ANE, a simulated chip): what
    /// its compiles refuse, and the limits of a run on it (kernels loaded at once).
    fn chip_rules(&self) -> Option<ChipRules> {
        None
    }

    /// Evaluates a kernel: host buffers in fp32, one per function input and output, in
    /// signature order. fp16 I/O is converted at the boundary.
    fn eval(
        &self,
        kernel: &mut Kernel,
        inputs: &[&[f32]],
        outputs: &mut [&mut [f32]],
    ) -> Result<(), DeviceError> {
        kernel.run(inputs, outputs)
    }
}
