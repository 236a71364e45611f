//! The CPU device: executes MIL programs exactly as written, in fp32 or in ANE-like fp16.

mod matmul;
mod peak;
mod plan;
pub mod shape;
mod steps;

use crate::{fp16, Device, DeviceError, DeviceInfo, Kernel, KernelExec, NumericMode, PeakFlops};
use anetrain_mil::blob::WeightFiles;
use anetrain_mil::check::check_program;
use anetrain_mil::Program;
use plan::{Place, Plan};

pub use matmul::{gemm, MatLayout};
pub use peak::measure_fma_peak;

/// Runs MIL on the host. Compile checks the program, resolves and lays out its constants,
/// fuses elementwise chains and plans one arena; eval runs the plan without allocating.
#[derive(Clone, Debug)]
pub struct CpuDevice {
    mode: NumericMode,
    threads: usize,
    peak: PeakFlops,
}

impl CpuDevice {
    /// A CPU device using every available core.
    pub fn new(mode: NumericMode) -> CpuDevice {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        CpuDevice {
            mode,
            threads,
            peak: PeakFlops::Unknown,
        }
    }

    pub fn with_threads(mut self, threads: usize) -> CpuDevice {
        self.threads = threads.max(1);
        self
    }

    /// Records a peak figure (e.g. from an FMA loop) for reports to compare against.
    pub fn with_peak(mut self, peak: PeakFlops) -> CpuDevice {
        self.peak = peak;
        self
    }

    pub fn threads(&self) -> usize {
        self.threads
    }
}

impl Device for CpuDevice {
    fn info(&self) -> DeviceInfo {
        DeviceInfo {
            kind: "cpu",
            name: format!("CPU ({} threads)", self.threads),
            numeric: self.mode,
            peak: self.peak.clone(),
            simulated: false,
        }
    }

    fn compile(&self, program: &Program, weights: &WeightFiles) -> Result<Kernel, DeviceError> {
        let checked = check_program(program)?;
        if let Some(missing) = weights.missing_for(program).into_iter().next() {
            return Err(DeviceError::MissingWeights(missing));
        }
        let function = program
            .main()
            .ok_or_else(|| DeviceError::CompileFailed("the program has no function".into()))?;
        let plan = plan::lower(function, &checked, weights, self.mode)?;
        let arena = vec![0.0; plan.arena_len];
        let exec = CpuKernel {
            plan,
            arena,
            threads: self.threads,
        };
        Ok(Kernel::new(checked.signature, Box::new(exec)))
    }
}

struct CpuKernel {
    plan: Plan,
    arena: Vec<f32>,
    threads: usize,
}

impl KernelExec for CpuKernel {
    fn eval(&mut self, inputs: &[&[f32]], outputs: &mut [&mut [f32]]) -> Result<(), DeviceError> {
        let plan = &mut self.plan;
        for (&(id, round), src) in plan.inputs.iter().zip(inputs) {
            if let Place::Arena(at) = plan.places[id] {
                let dst = &mut self.arena[at..at + src.len()];
                dst.copy_from_slice(src);
                if round {
                    fp16::round_slice(dst);
                }
            }
        }
        let arena = self.arena.as_mut_ptr();
        let arena_len = self.arena.len();
        let (places, lens, consts) = (&plan.places, &plan.lens, &plan.consts);
        for (step, &round) in plan.steps.iter_mut().zip(&plan.round_after) {
            let out_id = step.writes();
            let Place::Arena(out_at) = places[out_id] else {
                return Err(DeviceError::EvalFailed(
                    "a step writes a value that has no arena slot".into(),
                ));
            };
            let out_len = lens[out_id];
            assert!(out_at + out_len <= arena_len);
            let read = |id: usize| -> &[f32] {
                match places[id] {
                    Place::Arena(at) => {
                        assert!(at + lens[id] <= arena_len);
                        // SAFETY: in bounds (asserted); the planner gives a step's output a
                        // slot that overlaps none of the values live while it runs, so this
                        // shared view never aliases the mutable output view below.
                        unsafe { std::slice::from_raw_parts(arena.add(at), lens[id]) }
                    }
                    Place::Const(c, off) => &consts[c][off..off + lens[id]],
                    Place::Unused => &[],
                }
            };
            // SAFETY: in bounds (asserted above); disjoint from every slice `read` returns.
            let out = unsafe { std::slice::from_raw_parts_mut(arena.add(out_at), out_len) };
            step.run(&read, out, self.threads);
            if round {
                fp16::round_slice(out);
            }
        }
        for (&id, dst) in plan.outputs.iter().zip(outputs.iter_mut()) {
            let src: &[f32] = match plan.places[id] {
                Place::Arena(at) => &self.arena[at..at + dst.len()],
                Place::Const(c, off) => &plan.consts[c][off..off + dst.len()],
                Place::Unused => {
                    return Err(DeviceError::EvalFailed(
                        "an output was never computed".into(),
                    ))
                }
            };
            dst.copy_from_slice(src);
        }
        Ok(())
    }
}
