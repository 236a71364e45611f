//! The CPU device: executes MIL programs exactly as written, in fp32 or in ANE-like fp16.

pub(crate) mod fastmath;
pub(crate) mod matmul;
mod packed;
mod peak;
mod plan;
mod shape;
pub(crate) mod simd;
mod steps;

use crate::{
    fp16, Device, DeviceError, DeviceInfo, Kernel, KernelExec, NumericMode, PeakFlops,
    PreparedProgram,
};
use anetrain_mil::blob::WeightFiles;
use anetrain_mil::check::{check_program, Signature};
use anetrain_mil::Program;
use plan::{Place, Plan, PlanTemplate};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

pub use peak::{best_fma_peak, measure_fma_peak};

/// Runs MIL on the host. Compile checks the program, resolves and lays out its constants,
/// fuses elementwise chains and plans one arena; eval runs the plan without allocating.
///
/// A program compiled again with other weights reuses its checked, lowered template (see
/// `TemplateCache`), the way a training run recompiles the same kernels after every update.
#[derive(Clone, Debug)]
pub struct CpuDevice {
    mode: NumericMode,
    threads: usize,
    peak: PeakFlops,
    arenas: Arc<ArenaPool>,
    templates: Option<Arc<TemplateCache>>,
}

/// The programs a device (and its clones) compiled most recently, each with its signature and
/// lowered template. A hit skips checking and lowering; the weights are still read, checked
/// against their declared dtype and shape, rounded and packed, so a kernel compiled from the
/// cache is the kernel a fresh compile would give.
#[derive(Debug, Default)]
struct TemplateCache {
    entries: Mutex<VecDeque<Arc<CachedProgram>>>,
}

#[derive(Debug)]
struct CachedProgram {
    program: Program,
    /// What the template was lowered for: a device computing otherwise lowers its own.
    mode: NumericMode,
    /// The weight files the program reads, in order of first use: looked up at every bind,
    /// collected once.
    blob_paths: Vec<String>,
    signature: Signature,
    template: PlanTemplate,
}

impl TemplateCache {
    /// Programs kept: a model's distinct kernels with room to spare (a training set has five
    /// per weight mode, every layer's program being the same text).
    const CAPACITY: usize = 32;

    fn find(&self, program: &Program) -> Option<Arc<CachedProgram>> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.iter().find(|e| e.program == *program).cloned()
    }

    fn insert(&self, entry: Arc<CachedProgram>) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() == Self::CAPACITY {
            entries.pop_front();
        }
        entries.push_back(entry);
    }
}

/// Arenas shared by all kernels of a device (and its clones). A kernel borrows one for the
/// length of an eval, so a model's 70-odd kernels need as many arenas as evals run at once
/// (usually one) instead of one each: for stories110m that is most of a gigabyte. An arena
/// grows only while the largest kernel has not run yet, so evals stop allocating after warm-up.
#[derive(Debug, Default)]
struct ArenaPool {
    free: Mutex<Vec<Vec<f32>>>,
}

impl ArenaPool {
    fn take(&self, len: usize) -> Vec<f32> {
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        let mut arena = free.pop().unwrap_or_default();
        drop(free);
        if arena.len() < len {
            arena.resize(len, 0.0);
        }
        arena
    }

    fn give(&self, arena: Vec<f32>) {
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        // Largest last, so that the next take finds the one least likely to need growing.
        let at = free.partition_point(|a| a.len() <= arena.len());
        free.insert(at, arena);
    }
}

impl CpuDevice {
    /// A CPU device using every available core.
    pub fn new(mode: NumericMode) -> CpuDevice {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        CpuDevice {
            mode,
            threads,
            peak: PeakFlops::Unknown,
            arenas: Arc::default(),
            templates: Some(Arc::default()),
        }
    }

    /// Checks and lowers every program from scratch, as if each compile were the first (for
    /// measuring what a cold compile costs).
    pub fn without_template_cache(mut self) -> CpuDevice {
        self.templates = None;
        self
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
        let entry = self.template(program)?;
        self.bind(&entry, weights)
    }

    /// Checks and lowers the program once: a compile of it then only binds the weights,
    /// without looking the program up among the cached ones (comparing a training kernel's
    /// program with its cached twin was a large share of a `tiny` set's compile; see
    /// docs/benchmarks.md).
    fn prepare(&self, program: &Program) -> PreparedProgram {
        match self.template(program) {
            Ok(entry) => PreparedProgram::lowered(program.clone(), entry),
            // Reported by the compile.
            Err(_) => PreparedProgram::new(program.clone()),
        }
    }

    fn compile_prepared(
        &self,
        prepared: &PreparedProgram,
        weights: &WeightFiles,
    ) -> Result<Kernel, DeviceError> {
        match prepared.lowered_as::<CachedProgram>() {
            Some(entry) if entry.mode == self.mode => self.bind(&entry, weights),
            _ => self.compile(prepared.program(), weights),
        }
    }
}

impl CpuDevice {
    /// The program's template: from the cache, or checked and lowered now (and cached).
    fn template(&self, program: &Program) -> Result<Arc<CachedProgram>, DeviceError> {
        if let Some(entry) = self.templates.as_ref().and_then(|t| t.find(program)) {
            return Ok(entry);
        }
        let entry = Arc::new(self.lower(program)?);
        if let Some(templates) = &self.templates {
            templates.insert(entry.clone());
        }
        Ok(entry)
    }

    /// A kernel of the template with these weights.
    fn bind(&self, entry: &CachedProgram, weights: &WeightFiles) -> Result<Kernel, DeviceError> {
        if let Some(missing) = entry.blob_paths.iter().find(|p| !weights.contains(p)) {
            return Err(DeviceError::MissingWeights(missing.clone()));
        }
        let exec = CpuKernel {
            plan: entry.template.bind(weights)?,
            arenas: self.arenas.clone(),
            threads: self.threads,
        };
        Ok(Kernel::new(entry.signature.clone(), Box::new(exec)))
    }

    /// Checks a program and lowers it to a template waiting for weights.
    fn lower(&self, program: &Program) -> Result<CachedProgram, DeviceError> {
        let checked = check_program(program)?;
        let function = program
            .main()
            .ok_or_else(|| DeviceError::CompileFailed("the program has no function".into()))?;
        let template = PlanTemplate::lower(function, &checked, self.mode)?;
        Ok(CachedProgram {
            program: program.clone(),
            mode: self.mode,
            blob_paths: program
                .blob_paths()
                .into_iter()
                .map(str::to_string)
                .collect(),
            signature: checked.signature,
            template,
        })
    }
}

struct CpuKernel {
    plan: Plan,
    arenas: Arc<ArenaPool>,
    threads: usize,
}

impl KernelExec for CpuKernel {
    fn eval(&mut self, inputs: &[&[f32]], outputs: &mut [&mut [f32]]) -> Result<(), DeviceError> {
        let lowered = &self.plan.lowered;
        let (arena_len, scratch_len) = (lowered.arena_len, lowered.scratch_len);
        let mut buffer = self.arenas.take(arena_len + scratch_len);
        let (arena, scratch) = buffer.split_at_mut(arena_len);
        let scratch = &mut scratch[..scratch_len];
        let result = if self.threads > 1 && lowered.parallel {
            // The whole eval runs on one of the pool's threads, so that its steps fork and
            // join from inside the pool: called from outside, every step's `join` would
            // queue its work cold and sleep on a latch, and waking costs more than a small
            // step's work (2 threads ran the stories15m kernels slower than 1). A kernel
            // with nothing to split skips the hop.
            rayon::scope(|_| self.eval_in(arena, scratch, inputs, outputs))
        } else {
            self.eval_in(arena, scratch, inputs, outputs)
        };
        self.arenas.give(buffer);
        result
    }
}

impl CpuKernel {
    fn eval_in(
        &self,
        arena_buf: &mut [f32],
        scratch: &mut [f32],
        inputs: &[&[f32]],
        outputs: &mut [&mut [f32]],
    ) -> Result<(), DeviceError> {
        let (plan, consts) = (&*self.plan.lowered, &self.plan.consts);
        for &(i, id) in &plan.copied_inputs {
            if let Place::Arena(at) = plan.places[id] {
                let dst = &mut arena_buf[at..at + inputs[i].len()];
                dst.copy_from_slice(inputs[i]);
                fp16::round_slice(dst);
            }
        }
        // Raw views of the arena and the output buffers: steps read some values while writing
        // one other, which the borrow checker cannot see is disjoint (the planner guarantees it).
        let arena = RawBuffer::of(arena_buf);
        let mut out_buffers = [RawBuffer::EMPTY; MAX_OUTPUTS];
        if outputs.len() > MAX_OUTPUTS {
            return Err(DeviceError::EvalFailed(format!(
                "at most {MAX_OUTPUTS} outputs are supported"
            )));
        }
        for (slot, o) in out_buffers.iter_mut().zip(outputs.iter_mut()) {
            *slot = RawBuffer::of(o);
        }
        let (places, lens) = (&plan.places, &plan.lens);
        let view = |id: usize| -> Option<(RawBuffer, usize)> {
            match places[id] {
                Place::Arena(at) => Some((arena, at)),
                Place::Output(j, at) => Some((out_buffers[j], at)),
                _ => None,
            }
        };
        let steps = plan
            .steps
            .iter()
            .zip(&plan.round_after)
            .zip(&self.plan.packed);
        for ((step, &round), packed) in steps {
            let out_id = step.writes();
            let (buffer, at) = view(out_id).ok_or_else(|| {
                DeviceError::EvalFailed("a step writes a value that has no storage".into())
            })?;
            let read = |id: usize| -> &[f32] {
                match places[id] {
                    Place::Const(c, off) => &consts[c][off..off + lens[id]],
                    Place::Input(i, off) => &inputs[i][off..off + lens[id]],
                    Place::Unused => &[],
                    // SAFETY: the planner never gives a value read by a step storage that
                    // overlaps the value the step writes, so this shared view does not alias
                    // the mutable one below.
                    _ => view(id).map_or(&[], |(b, at)| unsafe { b.slice(at, lens[id]) }),
                }
            };
            // SAFETY: disjoint from every slice `read` returns (see above).
            let out = unsafe { buffer.slice_mut(at, lens[out_id]) };
            step.run(packed.as_ref(), &read, out, scratch, self.threads);
            if round {
                fp16::round_slice(out);
            }
        }
        for &(j, id) in &plan.copied_outputs {
            let n = outputs[j].len();
            let src: &[f32] = match plan.places[id] {
                Place::Arena(at) => &arena_buf[at..at + n],
                Place::Const(c, off) => &consts[c][off..off + n],
                Place::Input(i, off) => &inputs[i][off..off + n],
                Place::Output(k, off) if k != j => {
                    let (head, tail) = outputs.split_at_mut(j.max(k));
                    let (src, dst) = if k < j {
                        (&head[k][off..off + n], &mut tail[0][..])
                    } else {
                        (&tail[0][off..off + n], &mut head[j][..])
                    };
                    dst.copy_from_slice(src);
                    continue;
                }
                _ => {
                    return Err(DeviceError::EvalFailed(
                        "an output was never computed".into(),
                    ))
                }
            };
            outputs[j].copy_from_slice(src);
        }
        Ok(())
    }
}

/// Outputs a kernel may have (a fixed table keeps eval free of allocation).
const MAX_OUTPUTS: usize = 16;

/// A buffer seen through a raw pointer, with bounds-checked slicing.
#[derive(Clone, Copy)]
struct RawBuffer {
    ptr: *mut f32,
    len: usize,
}

impl RawBuffer {
    const EMPTY: RawBuffer = RawBuffer {
        ptr: std::ptr::null_mut(),
        len: 0,
    };

    fn of(buffer: &mut [f32]) -> RawBuffer {
        RawBuffer {
            ptr: buffer.as_mut_ptr(),
            len: buffer.len(),
        }
    }

    /// # Safety
    /// No mutable slice overlapping `at..at + n` may be alive while the result is.
    unsafe fn slice<'a>(self, at: usize, n: usize) -> &'a [f32] {
        assert!(at + n <= self.len, "value outside its buffer");
        std::slice::from_raw_parts(self.ptr.add(at), n)
    }

    /// # Safety
    /// No other slice overlapping `at..at + n` may be alive while the result is.
    #[allow(clippy::mut_from_ref)]
    unsafe fn slice_mut<'a>(self, at: usize, n: usize) -> &'a mut [f32] {
        assert!(at + n <= self.len, "value outside its buffer");
        std::slice::from_raw_parts_mut(self.ptr.add(at), n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use anetrain_mil::blob::BlobFile;
    use anetrain_mil::examples;

    /// The fp32 weight file of the `[rows][cols]` matrix `m`, or of its transpose: the bytes
    /// a `MatrixFile` viewing `m` stands for.
    fn matrix_file_bytes(m: &[f32], [rows, cols]: [usize; 2], transposed: bool) -> Vec<u8> {
        use anetrain_mil::blob::{fp32_file_bytes, fp32_file_bytes_transposed};
        if transposed {
            fp32_file_bytes_transposed(m, rows, cols)
        } else {
            fp32_file_bytes(m)
        }
    }

    fn run(device: &CpuDevice, kernel: &mut Kernel, input: &[f32]) -> Vec<f32> {
        let mut out = vec![0.0; kernel.output_lens()[0]];
        device.eval(kernel, &[input], &mut [&mut out]).unwrap();
        out
    }

    #[test]
    fn kernels_of_one_device_share_one_arena_without_seeing_each_others_values() {
        let (d, s) = (32, 16);
        let chain = (
            examples::conv_chain(3, d, s),
            examples::conv_chain_weights(3, d, 0.7),
        );
        let mut norm_weights = WeightFiles::new();
        let w: Vec<f32> = (0..d).map(|i| 0.5 + i as f32 / d as f32).collect();
        norm_weights.insert_blob("@model_path/weights/rms_w.bin", &BlobFile::fp16(&w));
        let norm = (examples::final_rmsnorm(d, s), norm_weights);
        let x: Vec<f32> = (0..d * s)
            .map(|i| ((i * 7 % 23) as f32 - 11.0) / 8.0)
            .collect();

        // Each kernel alone on a device of its own: the reference.
        let want = [&chain, &norm].map(|(p, w)| {
            let device = CpuDevice::new(NumericMode::Fp32).with_threads(1);
            let mut k = device.compile(p, w).unwrap();
            run(&device, &mut k, &x)
        });
        let device = CpuDevice::new(NumericMode::Fp32).with_threads(1);
        let mut kernels = [&chain, &norm].map(|(p, w)| device.compile(p, w).unwrap());
        for round in 0..3 {
            for (i, k) in kernels.iter_mut().enumerate() {
                assert_eq!(run(&device, k, &x), want[i], "kernel {i}, round {round}");
            }
        }
        // One eval at a time needs one arena, however many kernels there are.
        let free = device.arenas.free.lock().unwrap();
        assert_eq!(free.len(), 1);
    }

    /// A prepared program compiles to the kernel a cold compile of the program gives, with
    /// each set of weights; prepared by a device computing otherwise, it is lowered anew;
    /// a program that does not check still fails at its compile, as it would unprepared.
    #[test]
    fn a_prepared_program_compiles_as_the_program_does() {
        let (n, d, s) = (3, 24, 16);
        let program = examples::conv_chain(n, d, s);
        let x: Vec<f32> = (0..d * s)
            .map(|i| ((i * 3 % 19) as f32 - 9.0) / 7.0)
            .collect();
        for mode in [NumericMode::Fp32, NumericMode::Fp16] {
            let cold = CpuDevice::new(mode)
                .with_threads(1)
                .without_template_cache();
            // Without a template cache, a compile that did not bind the prepared template
            // would lower one of its own.
            let device = CpuDevice::new(mode)
                .with_threads(1)
                .without_template_cache();
            let prepared = device.prepare(&program);
            let entry = prepared.lowered_as::<CachedProgram>().expect("lowered");
            let other = match mode {
                NumericMode::Fp32 => NumericMode::Fp16,
                NumericMode::Fp16 => NumericMode::Fp32,
            };
            let prepared_elsewhere = CpuDevice::new(other).prepare(&program);
            let mut kernels = Vec::new();
            for scale in [0.7, -0.4] {
                let weights = examples::conv_chain_weights(n, d, scale);
                let want = run(&cold, &mut cold.compile(&program, &weights).unwrap(), &x);
                let mut k = device.compile_prepared(&prepared, &weights).unwrap();
                assert_eq!(run(&device, &mut k, &x), want, "{mode:?}, scale {scale}");
                kernels.push(k);
                let mut k = device
                    .compile_prepared(&prepared_elsewhere, &weights)
                    .unwrap();
                assert_eq!(run(&device, &mut k, &x), want, "{mode:?} from {other:?}");
            }
            assert_eq!(entry.template.kernels_bound(), kernels.len());
        }
        let mut broken = program.clone();
        broken.functions.clear();
        let device = CpuDevice::new(NumericMode::Fp32);
        let weights = examples::conv_chain_weights(n, d, 0.5);
        let prepared = device.prepare(&broken);
        assert!(prepared.lowered_as::<CachedProgram>().is_none());
        let want = device
            .compile(&broken, &weights)
            .err()
            .map(|e| e.to_string());
        let got = device.compile_prepared(&prepared, &weights).err();
        assert_eq!(got.map(|e| e.to_string()), want);
        assert!(want.is_some());
    }

    /// Every decorator passes a prepared compile through to the prepared template, whatever it
    /// adds around it: under a latency model or fault injection a prepared program once fell
    /// back to a cold compile (the same kernel, lowered anew every time).
    #[test]
    fn decorators_compile_prepared_programs_from_the_template() {
        use crate::clock::{Clock, SimClock};
        use crate::decorate::{ChipProfile, CompileBudget, FaultInjection, LatencyModel};
        use crate::trace::{Traced, Tracer};
        use std::sync::Arc;
        let (n, d, s) = (2, 16, 16);
        let program = examples::conv_chain(n, d, s);
        let weights = examples::conv_chain_weights(n, d, 0.5);
        let x: Vec<f32> = (0..d * s).map(|i| (i % 7) as f32 / 7.0).collect();
        let cpu = || {
            CpuDevice::new(NumericMode::Fp32)
                .with_threads(1)
                .without_template_cache()
        };
        let clock: Arc<dyn Clock> = Arc::new(SimClock::new());
        let tracer = Tracer::new();
        let stack = FaultInjection::new(LatencyModel::new(
            CompileBudget::new(Traced::new(cpu(), tracer.clone(), clock.clone()), 10),
            ChipProfile::m4(),
            clock.clone(),
        ));
        let prepared = stack.prepare(&program);
        let entry = prepared.lowered_as::<CachedProgram>().expect("lowered");
        let mut kernel = stack.compile_prepared(&prepared, &weights).unwrap();
        assert_eq!(entry.template.kernels_bound(), 1, "bound from the template");
        let mut out = vec![0.0; kernel.output_lens()[0]];
        stack.eval(&mut kernel, &[&x], &mut [&mut out]).unwrap();
        let reference = cpu();
        let mut cold = reference.compile(&program, &weights).unwrap();
        assert_eq!(out, run(&reference, &mut cold, &x));
        // Each decorator still saw the compile and the eval.
        assert_eq!(stack.compiles(), 1);
        assert_eq!(stack.evals(), 1);
        assert_eq!(stack.compile_budget().map(|b| b.used), Some(1));
        assert_eq!(tracer.spans().len(), 2, "a compile span and an eval span");
        assert!(stack.info().simulated);
    }

    /// A compile without one of the program's weight files names the first one missing, in
    /// the order the program uses them, prepared or not.
    #[test]
    fn a_missing_weight_file_is_named() {
        let program = examples::conv_chain(3, 8, 4);
        let all = examples::conv_chain_weights(3, 8, 0.5);
        let mut some = WeightFiles::new();
        let last = "@model_path/weights/w2.bin";
        some.insert_blob(last, &BlobFile::fp16(&vec![0.0; 64]));
        assert!(all.contains(last));
        let device = CpuDevice::new(NumericMode::Fp32);
        let prepared = device.prepare(&program);
        for result in [
            device.compile(&program, &some),
            device.compile_prepared(&prepared, &some),
        ] {
            match result {
                Err(DeviceError::MissingWeights(path)) => {
                    assert_eq!(path, "@model_path/weights/w0.bin")
                }
                other => panic!("expected MissingWeights, got {:?}", other.err()),
            }
        }
        assert!(device.compile_prepared(&prepared, &all).is_ok());
    }

    /// The same program compiled with other weights (a training run's recompiles) comes from
    /// the template cache and must run exactly as a cold compile of those weights does.
    #[test]
    fn a_program_compiled_again_runs_on_its_new_weights() {
        let (n, d, s) = (3, 24, 16);
        let program = examples::conv_chain(n, d, s);
        let x: Vec<f32> = (0..d * s)
            .map(|i| ((i * 5 % 17) as f32 - 8.0) / 9.0)
            .collect();
        for mode in [NumericMode::Fp32, NumericMode::Fp16] {
            let cold = CpuDevice::new(mode)
                .with_threads(1)
                .without_template_cache();
            let warm = CpuDevice::new(mode).with_threads(1);
            let mut kernels = Vec::new();
            for scale in [0.7, -0.4, 1.3] {
                let weights = examples::conv_chain_weights(n, d, scale);
                let want = run(&cold, &mut cold.compile(&program, &weights).unwrap(), &x);
                let mut k = warm.compile(&program, &weights).unwrap();
                assert_eq!(run(&warm, &mut k, &x), want, "{mode:?}, scale {scale}");
                kernels.push((k, want));
            }
            assert_eq!(
                warm.templates
                    .as_ref()
                    .unwrap()
                    .entries
                    .lock()
                    .unwrap()
                    .len(),
                1
            );
            // Kernels from one template keep their own weights.
            for (k, want) in &mut kernels {
                assert_eq!(run(&warm, k, &x), *want, "{mode:?}");
            }
        }
    }

    #[test]
    fn a_cached_program_still_checks_its_weights() {
        let (n, d, s) = (2, 8, 8);
        let program = examples::conv_chain(n, d, s);
        let device = CpuDevice::new(NumericMode::Fp32).with_threads(1);
        let good = examples::conv_chain_weights(n, d, 0.5);
        device.compile(&program, &good).unwrap();
        let (path, bytes) = good
            .iter()
            .next()
            .map(|(p, b)| (p.to_string(), b.to_vec()))
            .unwrap();

        let mut missing = WeightFiles::new();
        for (p, b) in good.iter().filter(|(p, _)| *p != path) {
            missing.insert(p, b.to_vec());
        }
        match device.compile(&program, &missing) {
            Err(DeviceError::MissingWeights(p)) => assert_eq!(p, path),
            other => panic!("expected missing weights, got {:?}", other.err()),
        }
        let mut truncated = good.clone();
        truncated.insert(path.clone(), bytes[..bytes.len() - 4].to_vec());
        match device.compile(&program, &truncated) {
            Err(e @ DeviceError::Weights { .. }) => {
                let DeviceError::Weights { path: p, .. } = &e else {
                    unreachable!()
                };
                assert_eq!(*p, path);
                // The message names the weight file once.
                let text = e.to_string();
                assert_eq!(text.matches(path.as_str()).count(), 1, "{text}");
            }
            other => panic!("expected a weights error, got {:?}", other.err()),
        }
        let mut wrong_dtype = good.clone();
        let values = vec![0.5f32; d * d];
        wrong_dtype.insert_blob(path.clone(), &BlobFile::fp32(&values));
        assert!(matches!(
            device.compile(&program, &wrong_dtype),
            Err(DeviceError::Weights { .. })
        ));
    }

    /// Weight files that view matrices held elsewhere (as training hands over its parameters)
    /// compile to the kernel that the same matrices written out as bytes give, whether a file
    /// reads its matrix as stored or transposed; and they are checked like bytes.
    #[test]
    fn matrix_files_compile_like_the_bytes_they_stand_for() {
        use anetrain_mil::blob::MatrixFile;
        // Channel counts that leave partial micro-panels; spatial wide enough to pack.
        let (channels, s) = ([20, 13, 20, 20, 13], 24);
        let program = examples::conv_stack(anetrain_mil::DType::Fp32, &channels, s);
        // Stored like parameters: conv 0's weight as it is, `[13][20]`; conv 1's as the
        // `[13][20]` matrix whose transpose it is; conv 2's as a square transposed one; conv
        // 3's `[13][20]` as the transpose of a `[10][26]` matrix, the same values in file order
        // but no view of the stored matrix (so it is written out).
        let shapes = [[13, 20], [13, 20], [20, 20], [10, 26]];
        let transposed = [false, true, true, true];
        let total: usize = shapes.iter().map(|[r, c]| r * c).sum();
        let stored: Vec<f32> = (0..total)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 200.0)
            .collect();
        let source: anetrain_mil::blob::F32Source = Arc::new(stored.clone());
        let path = |i: usize| format!("@model_path/weights/w{i}.bin");
        let mut views = WeightFiles::new();
        let mut bytes = WeightFiles::new();
        let mut at = 0;
        for (i, (shape, transposed)) in shapes.into_iter().zip(transposed).enumerate() {
            let range = at..at + shape[0] * shape[1];
            at = range.end;
            let m = &stored[range.clone()];
            bytes.insert(path(i), matrix_file_bytes(m, shape, transposed));
            let file = MatrixFile::new(source.clone(), range, shape, transposed).unwrap();
            views.insert_matrix(path(i), file);
        }
        let x: Vec<f32> = (0..20 * s)
            .map(|i| ((i * 11 % 29) as f32 - 14.0) / 16.0)
            .collect();
        for threads in [1, 2] {
            let device = CpuDevice::new(NumericMode::Fp32).with_threads(threads);
            let want = run(&device, &mut device.compile(&program, &bytes).unwrap(), &x);
            let got = run(&device, &mut device.compile(&program, &views).unwrap(), &x);
            assert_eq!(got, want, "{threads} thread(s)");
            // Not a product of zeros: the weights really were read.
            assert!(want.iter().any(|&v| v.abs() > 1e-3));
        }
        // A view whose matrix does not have the program's shape is refused like such bytes.
        let device = CpuDevice::new(NumericMode::Fp32).with_threads(1);
        let mut wrong = views.clone();
        let small = MatrixFile::new(source, 0..12 * 20, [12, 20], true).unwrap();
        wrong.insert_matrix(path(1), small);
        match device.compile(&program, &wrong) {
            Err(DeviceError::Weights { path: p, .. }) => assert_eq!(p, path(1)),
            other => panic!("expected a weights error, got {:?}", other.err()),
        }
    }

    /// Weight files in one `MatrixShare`, one viewing a matrix as stored and the next its
    /// transpose (a forward and a backward product, which then share one packed copy), compile
    /// to the kernel that the matrices written out as bytes give.
    #[test]
    fn a_shared_matrix_read_both_ways_computes_like_its_bytes() {
        use anetrain_mil::blob::{MatrixFile, MatrixShare};
        // Partial micro-panels both ways (13 and 20 are not multiples of 6), and a depth past
        // one block of the transposed read (300 > 252).
        for (outer, inner) in [(20, 13), (300, 7)] {
            let program =
                examples::conv_stack(anetrain_mil::DType::Fp32, &[outer, inner, outer], 24);
            let stored: Vec<f32> = (0..inner * outer)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 200.0)
                .collect();
            let source: anetrain_mil::blob::F32Source = Arc::new(stored.clone());
            let share = MatrixShare::new();
            let mut views = WeightFiles::new();
            let mut bytes = WeightFiles::new();
            for (i, transposed) in [false, true].into_iter().enumerate() {
                let path = format!("@model_path/weights/w{i}.bin");
                let file =
                    MatrixFile::new(source.clone(), 0..stored.len(), [inner, outer], transposed);
                views.insert_matrix(&path, file.unwrap().shared_in(&share));
                bytes.insert(path, matrix_file_bytes(&stored, [inner, outer], transposed));
            }
            let x: Vec<f32> = (0..outer * 24)
                .map(|i| ((i * 11 % 29) as f32 - 14.0) / 16.0)
                .collect();
            for threads in [1, 2] {
                let device = CpuDevice::new(NumericMode::Fp32).with_threads(threads);
                let want = run(&device, &mut device.compile(&program, &bytes).unwrap(), &x);
                let got = run(&device, &mut device.compile(&program, &views).unwrap(), &x);
                assert!(
                    want.iter().any(|&v| v.abs() > 1e-3),
                    "the weights were read"
                );
                for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                    assert!(
                        (g - w).abs() <= 1e-5 * (1.0 + w.abs()),
                        "{outer}/{inner}, {threads} thread(s), output {i}: {g} against {w}"
                    );
                }
            }
            assert_eq!(share.len(), usize::from(packed::available()), "packed once");
        }
    }

    #[test]
    fn the_pool_hands_out_its_largest_arena_and_grows_it_only_when_short() {
        let pool = ArenaPool::default();
        let (a, b) = (pool.take(10), pool.take(100));
        assert_eq!((a.len(), b.len()), (10, 100));
        pool.give(b);
        pool.give(a);
        let big = pool.take(50);
        assert_eq!(big.len(), 100, "the largest arena serves without growing");
        let small = pool.take(40);
        assert_eq!(small.len(), 40, "the 10-long one grew to 40");
    }
}
