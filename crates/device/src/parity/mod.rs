//! The kernel parity suite: each case is written once and runs on every device.
//!
//! A [`Case`] is a MIL program with its weights, its inputs and a naive f64 reference of its
//! one output. [`run_case`] runs it on the CPU device in fp32 and in fp16 mode, each against
//! the reference, and on another device (the ANE) against the CPU device's fp16 result, the
//! mode that rounds like the ANE. The device test `parity` runs every case of [`cases`] this
//! way; `anetrain report` runs them on the ANE of a user's Mac and writes down each result.
//!
//! The tolerances for the other device are a first guess for fp16 hardware (fp16 storage
//! between ops, accumulation whose width is not documented): loose enough for that, tight
//! enough to catch a wrong layout, a wrong weight or a dropped mask, whose errors are of order
//! one.
//!
//! ```
//! use anetrain_device::parity::{cases, run_case};
//!
//! let case = cases()?.into_iter().find(|c| c.name == "causal attention").unwrap();
//! let results = run_case(&case, None);
//! assert_eq!(results.len(), 2); // cpu-fp32 and cpu-fp16, each against the f64 reference
//! assert!(results.iter().all(|r| r.outcome.passed()), "{results:?}");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod cases;

pub use cases::cases;

use crate::ane::ChipRules;
use crate::{CpuDevice, Device, DeviceError, NumericMode};
use anetrain_mil::blob::WeightFiles;
use anetrain_mil::Program;
use half::f16;
use std::fmt;

/// `|got − want| ≤ atol + rtol·|want|`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Tolerance {
    pub atol: f64,
    pub rtol: f64,
}

impl Tolerance {
    pub const fn new(atol: f64, rtol: f64) -> Tolerance {
        Tolerance { atol, rtol }
    }

    /// What this tolerance allows around `want`.
    pub fn allowed(&self, want: f64) -> f64 {
        self.atol + self.rtol * want.abs()
    }
}

/// A case's tolerance on each target.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Tolerances {
    /// The CPU device in fp32 mode, against the reference.
    pub cpu_fp32: Tolerance,
    /// The CPU device in fp16 mode, against the reference rounded at the inputs.
    pub cpu_fp16: Tolerance,
    /// Another device (the ANE), against the CPU device's fp16 result.
    pub device: Tolerance,
}

/// The naive f64 result of a case's single output, from its inputs as the device sees them.
pub type Reference = Box<dyn Fn(&[Vec<f64>]) -> Vec<f64> + Send + Sync>;

/// One program, its data, and what it must compute.
pub struct Case {
    pub name: String,
    pub program: Program,
    pub weights: WeightFiles,
    /// One buffer per program input.
    pub inputs: Vec<Vec<f32>>,
    pub reference: Reference,
    pub tolerances: Tolerances,
    /// The conv channel count, for chips that compile convs of only some counts: a case the
    /// chip's rules refuse for it is skipped on that chip rather than failed.
    pub conv_channels: Option<usize>,
}

impl fmt::Debug for Case {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Case").field("name", &self.name).finish()
    }
}

/// The device a case runs on besides the CPU device's two modes.
pub struct Target<'a> {
    /// As results name it, e.g. `ane`.
    pub name: String,
    pub device: &'a dyn Device,
    /// The chip's rules, when the device has them: a conv case they refuse is skipped.
    pub rules: Option<ChipRules>,
}

/// Where the worst element of an output stands.
#[derive(Clone, Debug, PartialEq)]
pub struct Deviation {
    /// The element whose error is the largest share of what the tolerance allows there.
    pub index: usize,
    pub got: f64,
    pub want: f64,
    /// `|got − want|` over what the tolerance allows at `index` (NaN or ∞ counts as ∞):
    /// at most 1 everywhere means the case passed.
    pub share_of_tolerance: f64,
    /// The largest `|got − want|` over the output.
    pub max_abs_error: f64,
    /// Elements beyond the tolerance, of `len`.
    pub beyond: usize,
    pub len: usize,
    pub tolerance: Tolerance,
}

impl Deviation {
    /// Compares an output with what it should be.
    ///
    /// # Panics
    /// If the two lengths differ ([`run_case`] checks them first).
    pub fn measure(got: &[f32], want: &[f64], tolerance: Tolerance) -> Deviation {
        assert_eq!(got.len(), want.len(), "outputs of different lengths");
        let mut worst = Deviation {
            index: 0,
            got: f64::NAN,
            want: f64::NAN,
            share_of_tolerance: 0.0,
            max_abs_error: 0.0,
            beyond: 0,
            len: got.len(),
            tolerance,
        };
        for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
            let error = (f64::from(g) - w).abs();
            let share = if error.is_finite() {
                error / tolerance.allowed(w)
            } else {
                f64::INFINITY
            };
            if share > 1.0 {
                worst.beyond += 1;
            }
            if i == 0 || share > worst.share_of_tolerance {
                (worst.index, worst.got, worst.want) = (i, f64::from(g), w);
                worst.share_of_tolerance = share;
            }
            worst.max_abs_error =
                worst
                    .max_abs_error
                    .max(if error.is_nan() { f64::INFINITY } else { error });
        }
        worst
    }

    pub fn within_tolerance(&self) -> bool {
        self.beyond == 0
    }
}

/// What became of a case on one target.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// Every element within the tolerance; the worst one.
    Passed(Deviation),
    /// Some element beyond it; the worst one.
    Failed(Deviation),
    /// Not run, and why (no such device, or the chip's rules refuse the case's convs).
    Skipped(String),
    /// The device refused to compile or evaluate it, or gave an output of the wrong length.
    Error(String),
}

impl Outcome {
    pub fn passed(&self) -> bool {
        matches!(self, Outcome::Passed(_))
    }

    /// Neither passed nor skipped.
    pub fn is_failure(&self) -> bool {
        matches!(self, Outcome::Failed(_) | Outcome::Error(_))
    }

    /// `pass`, `fail`, `skipped` or `error`.
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Passed(_) => "pass",
            Outcome::Failed(_) => "fail",
            Outcome::Skipped(_) => "skipped",
            Outcome::Error(_) => "error",
        }
    }
}

/// A case on one target.
#[derive(Clone, Debug, PartialEq)]
pub struct CaseResult {
    pub case: String,
    /// `cpu-fp32`, `cpu-fp16`, or the other target's name.
    pub target: String,
    /// What it was compared with: `f64 reference` or `cpu-fp16`.
    pub against: &'static str,
    pub outcome: Outcome,
}

impl fmt::Display for CaseResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "parity[{}] {}: {}",
            self.target,
            self.case,
            self.outcome.label()
        )?;
        match &self.outcome {
            Outcome::Passed(d) | Outcome::Failed(d) => write!(
                f,
                " against the {}: {} of {} elements beyond atol {:e} rtol {:e}; worst at {}: \
                 got {}, want {} ({:.2} of the tolerance)",
                self.against,
                d.beyond,
                d.len,
                d.tolerance.atol,
                d.tolerance.rtol,
                d.index,
                d.got,
                d.want,
                d.share_of_tolerance
            ),
            Outcome::Skipped(why) | Outcome::Error(why) => write!(f, ": {why}"),
        }
    }
}

/// Compiles a program on a device and evaluates it once; its first output.
pub fn eval_once(
    device: &dyn Device,
    program: &Program,
    weights: &WeightFiles,
    inputs: &[Vec<f32>],
) -> Result<Vec<f32>, DeviceError> {
    let mut kernel = device.compile(program, weights)?;
    let mut output = vec![f32::NAN; kernel.output_lens()[0]];
    let ins: Vec<&[f32]> = inputs.iter().map(Vec::as_slice).collect();
    device.eval(&mut kernel, &ins, &mut [&mut output])?;
    Ok(output)
}

/// The inputs as f64, rounded to fp16 first when the device computes in fp16 (every program
/// of the suite declares fp16 inputs or casts to fp16 at once).
fn inputs_as_seen(inputs: &[Vec<f32>], mode: NumericMode) -> Vec<Vec<f64>> {
    inputs
        .iter()
        .map(|values| {
            values
                .iter()
                .map(|&v| match mode {
                    NumericMode::Fp32 => f64::from(v),
                    NumericMode::Fp16 => f16::from_f32(v).to_f64(),
                })
                .collect()
        })
        .collect()
}

/// A device's output compared with what it should be.
fn judge(got: Result<Vec<f32>, DeviceError>, want: &[f64], tolerance: Tolerance) -> Outcome {
    match got {
        Err(e) => Outcome::Error(e.to_string()),
        Ok(got) if got.len() != want.len() => Outcome::Error(format!(
            "{} output elements where {} were expected",
            got.len(),
            want.len()
        )),
        Ok(got) => {
            let deviation = Deviation::measure(&got, want, tolerance);
            if deviation.within_tolerance() {
                Outcome::Passed(deviation)
            } else {
                Outcome::Failed(deviation)
            }
        }
    }
}

/// Runs a case on the CPU device in both modes, each against the reference, and on `other`
/// against the fp16 result. Without a usable fp16 result the other device's run is skipped.
pub fn run_case(case: &Case, other: Option<&Target>) -> Vec<CaseResult> {
    let mut results = Vec::new();
    let mut cpu_fp16 = None;
    for mode in [NumericMode::Fp32, NumericMode::Fp16] {
        let got = eval_once(
            &CpuDevice::new(mode),
            &case.program,
            &case.weights,
            &case.inputs,
        );
        if mode == NumericMode::Fp16 {
            cpu_fp16 = got.as_ref().ok().cloned();
        }
        let want = (case.reference)(&inputs_as_seen(&case.inputs, mode));
        let tolerance = match mode {
            NumericMode::Fp32 => case.tolerances.cpu_fp32,
            NumericMode::Fp16 => case.tolerances.cpu_fp16,
        };
        results.push(CaseResult {
            case: case.name.clone(),
            target: format!("cpu-{mode}"),
            against: "f64 reference",
            outcome: judge(got, &want, tolerance),
        });
    }
    if let Some(target) = other {
        let outcome = match (&cpu_fp16, refused_convs(case, target)) {
            (None, _) => Outcome::Skipped("the CPU device's fp16 run gave no result".into()),
            (_, Some(why)) => Outcome::Skipped(why),
            (Some(fp16), None) => {
                let want: Vec<f64> = fp16.iter().map(|&v| f64::from(v)).collect();
                let got = eval_once(target.device, &case.program, &case.weights, &case.inputs);
                judge(got, &want, case.tolerances.device)
            }
        };
        results.push(CaseResult {
            case: case.name.clone(),
            target: target.name.clone(),
            against: "cpu-fp16",
            outcome,
        });
    }
    results
}

/// Why the target's chip does not take a conv case, if it does not.
fn refused_convs(case: &Case, target: &Target) -> Option<String> {
    let channels = case.conv_channels?;
    let refusals = target.rules.as_ref()?.refusals(&case.program).ok()?;
    let refusal = refusals.into_iter().next()?;
    Some(format!("{channels}-channel convs: {refusal}"))
}

/// Every case of the suite on the CPU device and on `other`, each result passed to
/// `on_result` as it comes.
pub fn run_suite(
    other: Option<&Target>,
    on_result: &mut dyn FnMut(&CaseResult),
) -> Result<Vec<CaseResult>, Box<anetrain_mil::CheckError>> {
    let mut all = Vec::new();
    for case in cases()? {
        for result in run_case(&case, other) {
            on_result(&result);
            all.push(result);
        }
    }
    Ok(all)
}
