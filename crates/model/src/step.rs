//! One training micro-step: forward through every layer's kernels, loss on the host, backward
//! through the kernels, weight gradients on the host.
//!
//! A [`KernelSet`] runs on one immutable [`WeightSnapshot`]; the host-side math of a step
//! (embedding, norms, classifier) reads that same snapshot, so forward and backward of a
//! micro-step always see one version of the weights, however far the master weights have moved.
//! A set either has the snapshot's weights baked in ([`compile_kernel_set`]: new weights mean a
//! new set) or takes them as inputs ([`compile_dynamic_kernel_set`]: compiled once; new weights
//! are staged into every layer's persistent inputs by [`KernelSet::stage`]).

use crate::config::ModelConfig;
use crate::host;
use crate::kernels::{
    generate_baked, generate_dynamic, stage_layer_weights, ChannelParts, InputWeights, KernelKind,
    KernelProgram, StageError,
};
use crate::params::{LayerTensor, ParamLayout, Params};
use anetrain_device::clock::Clock;
use anetrain_device::memory::zeroed_f32;
use anetrain_device::{Device, DeviceError, Kernel, NumericMode, PreparedProgram};
use anetrain_mil::blob::MatrixShare;
use anetrain_mil::check::CheckError;
use anetrain_mil::DType;
use std::ops::Range;
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use thiserror::Error;
use WgradInput::Kept;

/// Immutable weights with the version of the optimizer update that produced them.
#[derive(Clone, Debug)]
pub struct WeightSnapshot {
    pub version: u64,
    pub params: Arc<Params>,
}

#[derive(Debug, Error)]
pub enum StepError {
    #[error("generating kernel {kernel}: {source}")]
    Generate {
        kernel: String,
        source: Box<CheckError>,
    },
    #[error("compiling kernel {kernel}: {source}")]
    Compile { kernel: String, source: DeviceError },
    #[error("evaluating kernel {kernel}: {source}")]
    Eval { kernel: String, source: DeviceError },
    #[error("token {token} at position {position} is outside the vocabulary of {vocab}")]
    Token {
        token: u32,
        position: usize,
        vocab: usize,
    },
    #[error("expected {expected} tokens and targets, got {tokens} and {targets}")]
    Length {
        expected: usize,
        tokens: usize,
        targets: usize,
    },
    #[error(
        "the kernel set of weights version {version} has its weights baked in: \
         new weights need a new set"
    )]
    BakedWeights { version: u64 },
    #[error(
        "weights of another model configuration (`{found}`) cannot be staged into the kernels \
         of `{expected}`"
    )]
    ModelMismatch { expected: String, found: String },
    #[error("staging weights into kernel {kernel}: {source}")]
    Stage { kernel: String, source: StageError },
    #[error("the kernel set of weights version {version} has released its weights")]
    Released { version: u64 },
}

/// The weight-bearing kernels of every layer and the snapshot whose weights they run on.
pub struct KernelSet {
    snapshot: WeightSnapshot,
    kernels: SetKernels,
}

enum SetKernels {
    /// `layers[l][i]` is kernel `KernelKind::WEIGHTED[i]` of layer l, its weights baked in,
    /// compiled from `programs` (which the set's successors reuse).
    Baked {
        programs: Arc<BakedPrograms>,
        layers: Vec<Vec<Kernel>>,
    },
    Dynamic(DynamicKernels),
}

/// Kernels that take their weights as inputs: compiled once and shared by every layer, with
/// each layer's persistent inputs holding that layer's staged weights (the activations are
/// written into them before each eval).
struct DynamicKernels {
    /// `kernels[i]` is kernel `KernelKind::WEIGHTED[i]`; `input_weights[i]` lays out its input.
    kernels: Vec<Kernel>,
    input_weights: Vec<InputWeights>,
    /// `inputs[l][i]`: the input `[C][S + P]` of kernel i for layer l.
    inputs: Vec<Vec<Vec<f32>>>,
}

impl KernelSet {
    /// Frees the compiled kernels of a baked set before its successor is compiled, so that a
    /// synchronous recompile never holds two sets' weights at once. The set cannot be
    /// evaluated afterwards; it must be replaced.
    pub fn release_baked(&mut self) {
        if let SetKernels::Baked { layers, .. } = &mut self.kernels {
            layers.clear();
        }
    }

    /// Lets go of the set's weights: its baked kernels, and its share of the snapshot, so
    /// that the master weights it shares can be updated in place rather than copied. A
    /// released set runs nothing until it is restaged (dynamic) or replaced; its version is
    /// kept for the record.
    pub fn release_weights(&mut self) {
        self.release_baked();
        let layout = self.snapshot.params.layout.clone();
        self.snapshot.params = Arc::new(Params {
            layout,
            data: Vec::new(),
        });
    }

    pub fn version(&self) -> u64 {
        self.snapshot.version
    }

    /// The weights the set runs on.
    pub fn snapshot(&self) -> &WeightSnapshot {
        &self.snapshot
    }

    /// The programs a baked set was compiled from, for compiling its successors.
    pub fn baked_programs(&self) -> Option<Arc<BakedPrograms>> {
        match &self.kernels {
            SetKernels::Baked { programs, .. } => Some(programs.clone()),
            SetKernels::Dynamic(_) => None,
        }
    }

    /// How many kernels a baked set of this config compiles.
    pub fn kernel_count(config: &ModelConfig) -> usize {
        config.n_layers * KernelKind::WEIGHTED.len()
    }

    /// How many kernels this set compiled.
    pub fn compiled_kernels(&self) -> usize {
        match &self.kernels {
            SetKernels::Baked { layers, .. } => layers.iter().map(Vec::len).sum(),
            SetKernels::Dynamic(dynamic) => dynamic.kernels.len(),
        }
    }

    /// Makes the set run on `snapshot`'s weights: copies every layer's weights into the
    /// weight block of that layer's inputs. Only a set of dynamic kernels can take new weights.
    pub fn stage(&mut self, snapshot: WeightSnapshot) -> Result<(), StepError> {
        let SetKernels::Dynamic(dynamic) = &mut self.kernels else {
            return Err(StepError::BakedWeights {
                version: self.snapshot.version,
            });
        };
        let (expected, found) = (
            &self.snapshot.params.layout.config,
            &snapshot.params.layout.config,
        );
        if expected != found {
            return Err(StepError::ModelMismatch {
                expected: expected.name.clone(),
                found: found.name.clone(),
            });
        }
        // The input weights were staged from this configuration when the set was compiled, so no
        // layer can fail here and leave the set half old, half new.
        for (l, inputs) in dynamic.inputs.iter_mut().enumerate() {
            for ((input, weights), kind) in inputs
                .iter_mut()
                .zip(&dynamic.input_weights)
                .zip(KernelKind::WEIGHTED)
            {
                stage_layer_weights(weights, input, &snapshot.params, l).map_err(|source| {
                    StepError::Stage {
                        kernel: format!("{}.{l}", kind.name()),
                        source,
                    }
                })?;
            }
        }
        self.snapshot = snapshot;
        Ok(())
    }

    /// Evaluates weighted kernel `kind` of layer `layer` on activations `[C][S]`.
    fn eval(
        &mut self,
        device: &dyn Device,
        layer: usize,
        kind: KernelKind,
        activations: &[f32],
        output: &mut [f32],
        timing: &mut StepTiming,
    ) -> Result<(), StepError> {
        let i = KernelKind::WEIGHTED
            .iter()
            .position(|&k| k == kind)
            .expect("only weighted kernels live in a set");
        match &mut self.kernels {
            SetKernels::Baked { layers, .. } => {
                let kernel = layers
                    .get_mut(layer)
                    .and_then(|l| l.get_mut(i))
                    .ok_or_else(|| StepError::Eval {
                        kernel: format!("{}.{layer}", kind.name()),
                        source: DeviceError::EvalFailed(
                            "the kernel set was released before its successor compiled".into(),
                        ),
                    })?;
                eval(device, kernel, (kind, layer), activations, output, timing)
            }
            SetKernels::Dynamic(dynamic) => {
                let t = timing.host_start();
                let input = &mut dynamic.inputs[layer][i];
                let s = self.snapshot.params.layout.config.seq_len;
                dynamic.input_weights[i].write_activations(input, s, activations);
                timing.host_end(t, None);
                eval(
                    device,
                    &mut dynamic.kernels[i],
                    (kind, layer),
                    input,
                    output,
                    timing,
                )
            }
        }
    }
}

/// The float type a device's kernels compute in.
fn kernel_dtype(device: &dyn Device) -> DType {
    match device.info().numeric {
        NumericMode::Fp32 => DType::Fp32,
        NumericMode::Fp16 => DType::Fp16,
    }
}

/// Compiles `program` (as `prepared` by the device) with the weights of layer `layer` of
/// `params`, its matrices in `share`.
fn compile_layer(
    device: &dyn Device,
    program: &KernelProgram,
    prepared: &PreparedProgram,
    params: &Arc<Params>,
    layer: usize,
    share: &Arc<MatrixShare>,
) -> Result<Kernel, StepError> {
    let kernel = format!("{}.{layer}", program.name);
    let weights = program
        .layer_weights_in(params, layer, Some(share))
        .map_err(|source| StepError::Stage {
            kernel: kernel.clone(),
            source,
        })?;
    device
        .compile_prepared(prepared, &weights)
        .map_err(|source| StepError::Compile { kernel, source })
}

/// The programs of a model's weight-bearing kernels with baked weights, generated once: every
/// layer and every weight version compiles the same program text, and only the weight files
/// differ. (A device that caches compiled programs, like the CPU device, then only reads the
/// new weights.)
#[derive(Debug)]
pub struct BakedPrograms {
    config: ModelConfig,
    dtype: DType,
    /// `programs[i]` is kernel `KernelKind::WEIGHTED[i]`.
    programs: Vec<KernelProgram>,
    /// The programs as the device of the first set prepared them for repeated compiles.
    prepared: OnceLock<Vec<PreparedProgram>>,
}

impl BakedPrograms {
    pub fn generate(config: &ModelConfig, dtype: DType) -> Result<BakedPrograms, StepError> {
        let programs = KernelKind::WEIGHTED
            .iter()
            .map(|&kind| {
                generate_baked(kind, config, dtype).map_err(|source| StepError::Generate {
                    kernel: kind.name().into(),
                    source,
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(BakedPrograms {
            config: config.clone(),
            dtype,
            programs,
            prepared: OnceLock::new(),
        })
    }

    /// The programs in the float type `device` computes in.
    pub fn for_device(
        device: &dyn Device,
        config: &ModelConfig,
    ) -> Result<BakedPrograms, StepError> {
        BakedPrograms::generate(config, kernel_dtype(device))
    }

    /// Compiles every weight-bearing kernel of every layer with the snapshot's weights.
    pub fn compile_set(
        self: &Arc<Self>,
        device: &dyn Device,
        snapshot: WeightSnapshot,
    ) -> Result<KernelSet, StepError> {
        let found = &snapshot.params.layout.config;
        if *found != self.config {
            return Err(StepError::ModelMismatch {
                expected: self.config.name.clone(),
                found: found.name.clone(),
            });
        }
        if kernel_dtype(device) != self.dtype {
            return Err(StepError::Compile {
                kernel: "kernel set".into(),
                source: DeviceError::CompileFailed(format!(
                    "the programs were generated in {:?}, the device computes in {:?}",
                    self.dtype,
                    kernel_dtype(device)
                )),
            });
        }
        // One share for the set: a layer's kernels that read a matrix and those that read its
        // transpose get one derived form of it (the CPU device packs it once). Dropped with
        // this call, so nothing of the set's weights outlives it there.
        let share = MatrixShare::new();
        let prepared = self.prepared.get_or_init(|| {
            let programs = self.programs.iter();
            programs.map(|p| device.prepare(&p.program)).collect()
        });
        let layers = (0..self.config.n_layers)
            .map(|l| {
                (self.programs.iter().zip(prepared))
                    .map(|(p, prepared)| {
                        compile_layer(device, p, prepared, &snapshot.params, l, &share)
                    })
                    .collect::<Result<Vec<_>, _>>()
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(KernelSet {
            snapshot,
            kernels: SetKernels::Baked {
                programs: self.clone(),
                layers,
            },
        })
    }
}

/// Compiles every weight-bearing kernel of every layer from a snapshot, its weights baked in.
pub fn compile_kernel_set(
    device: &dyn Device,
    snapshot: WeightSnapshot,
) -> Result<KernelSet, StepError> {
    let programs = BakedPrograms::for_device(device, &snapshot.params.layout.config)?;
    Arc::new(programs).compile_set(device, snapshot)
}

/// Compiles each weight-bearing kernel once in dynamic weight mode (shared by every layer),
/// and stages the snapshot's weights into every layer's inputs.
pub fn compile_dynamic_kernel_set(
    device: &dyn Device,
    snapshot: WeightSnapshot,
) -> Result<KernelSet, StepError> {
    let config = snapshot.params.layout.config.clone();
    let mut kernels = Vec::with_capacity(KernelKind::WEIGHTED.len());
    let mut input_weights = Vec::with_capacity(KernelKind::WEIGHTED.len());
    for kind in KernelKind::WEIGHTED {
        let kernel = format!("{}.dynamic", kind.name());
        let (program, weights) =
            generate_dynamic(kind, &config, kernel_dtype(device)).map_err(|source| {
                StepError::Generate {
                    kernel: kernel.clone(),
                    source,
                }
            })?;
        let compiled = device
            .compile(&program.program, &program.weights)
            .map_err(|source| StepError::Compile { kernel, source })?;
        kernels.push(compiled);
        input_weights.push(weights);
    }
    let inputs = (0..config.n_layers)
        .map(|_| {
            input_weights
                .iter()
                .map(|p| vec![0.0; p.input_len(config.seq_len)])
                .collect()
        })
        .collect();
    let mut set = KernelSet {
        snapshot: snapshot.clone(),
        kernels: SetKernels::Dynamic(DynamicKernels {
            kernels,
            input_weights,
            inputs,
        }),
    };
    set.stage(snapshot)?;
    Ok(set)
}

/// The weight-free kernel every layer shares; compiled once per process.
pub struct SharedKernel {
    bwd_attn2: Kernel,
}

impl SharedKernel {
    /// Compiles [`SharedKernel::compile`] makes.
    pub const COMPILES: usize = 1;

    pub fn compile(device: &dyn Device, params: &Params) -> Result<SharedKernel, StepError> {
        let kind = KernelKind::BwdAttn2;
        let program = generate_baked(kind, &params.layout.config, kernel_dtype(device)).map_err(
            |source| StepError::Generate {
                kernel: kind.name().into(),
                source,
            },
        )?;
        // It reads no trainable weights: the program's own tables are all its files.
        let bwd_attn2 = device
            .compile(&program.program, &program.weights)
            .map_err(|source| StepError::Compile {
                kernel: kind.name().into(),
                source,
            })?;
        Ok(SharedKernel { bwd_attn2 })
    }
}

/// Where a step's time went. Device evals are timed on the clock (virtual under a latency
/// model); host work is timed in real time, since it really runs.
#[derive(Clone)]
pub struct StepTiming<'c> {
    pub clock: &'c dyn Clock,
    pub device_eval: Duration,
    /// `device_eval` split by kernel, indexed like [`KernelKind::ALL`].
    pub eval_by_kernel: [Duration; KernelKind::ALL.len()],
    pub host_math: Duration,
    /// Weight-gradient products, on a helper thread alongside the step's evals.
    pub weight_grads: Duration,
    /// How long the step waited for them at its end.
    pub weight_grad_wait: Duration,
    /// The larger pieces of host work, on the clock, for the timeline (the residual adds
    /// between kernels are counted in `host_math` but not kept).
    pub host_spans: Vec<HostSpan>,
}

/// A piece of a step's host work on the run's clock. On a virtual clock it has no length:
/// host time is added there after the step's evals.
#[derive(Clone, Debug, PartialEq)]
pub struct HostSpan {
    pub name: &'static str,
    pub start: Duration,
    pub end: Duration,
}

/// Host work being timed (from [`StepTiming::host_start`]).
pub struct HostTimer {
    wall: Instant,
    on_clock: Duration,
}

impl<'c> StepTiming<'c> {
    pub fn new(clock: &'c dyn Clock) -> StepTiming<'c> {
        StepTiming {
            clock,
            device_eval: Duration::ZERO,
            eval_by_kernel: [Duration::ZERO; KernelKind::ALL.len()],
            host_math: Duration::ZERO,
            weight_grads: Duration::ZERO,
            weight_grad_wait: Duration::ZERO,
            host_spans: Vec::new(),
        }
    }

    pub fn add(&mut self, other: &StepTiming) {
        self.device_eval += other.device_eval;
        for (mine, theirs) in self.eval_by_kernel.iter_mut().zip(&other.eval_by_kernel) {
            *mine += *theirs;
        }
        self.host_math += other.host_math;
        self.weight_grads += other.weight_grads;
        self.weight_grad_wait += other.weight_grad_wait;
        self.host_spans.extend_from_slice(&other.host_spans);
    }

    pub fn host_start(&self) -> HostTimer {
        HostTimer {
            wall: Instant::now(),
            on_clock: self.clock.now(),
        }
    }

    /// Ends host math begun at `t`: counted in `host_math`, and kept as a span when named.
    pub fn host_end(&mut self, t: HostTimer, span: Option<&'static str>) {
        self.host_math += t.wall.elapsed();
        if let Some(name) = span {
            self.span(name, t.on_clock);
        }
    }

    fn span(&mut self, name: &'static str, start: Duration) {
        self.host_spans.push(HostSpan {
            name,
            start,
            end: self.clock.now(),
        });
    }
}

/// A kernel's input or output `[C][S]`: logical tensors concatenated along the channels.
struct ChannelTensor {
    parts: ChannelParts,
    data: Vec<f32>,
    s: usize,
}

impl ChannelTensor {
    fn new(parts: ChannelParts, s: usize) -> ChannelTensor {
        let data = vec![0.0; parts.channels() * s];
        ChannelTensor { parts, data, s }
    }

    fn part(&self, name: &str) -> &[f32] {
        let r = self.parts.range(name);
        &self.data[r.start * self.s..r.end * self.s]
    }

    fn part_mut(&mut self, name: &str) -> &mut [f32] {
        let r = self.parts.range(name);
        &mut self.data[r.start * self.s..r.end * self.s]
    }
}

/// Activations a layer's backward needs, kept from its forward.
struct LayerTape {
    x: Vec<f32>,
    x2: Vec<f32>,
    attn: ChannelTensor,
    ffn: ChannelTensor,
}

/// Preallocated buffers of a micro-step.
pub struct StepBuffers {
    config: ModelConfig,
    tapes: Vec<LayerTape>,
    x: Vec<f32>,
    x_final: Vec<f32>,
    logits: Vec<f32>,
    dlogits: Vec<f32>,
    dy: Vec<f32>,
    dx: Vec<f32>,
    bwd_ffn_in: ChannelTensor,
    bwd_ffn_out: ChannelTensor,
    bwd_attn1_in: ChannelTensor,
    bwd_attn1_out: ChannelTensor,
    bwd_attn2_in: ChannelTensor,
    bwd_attn2_out: ChannelTensor,
    bwd_qkv_in: ChannelTensor,
    bwd_qkv_out: ChannelTensor,
    /// Buffers for copies of weight-gradient inputs, reused from step to step.
    spare: Mutex<Vec<Vec<f32>>>,
    /// The weight-gradient helper's thread pool, built for a thread count on first use.
    wgrad_pool: Option<Arc<WgradPool>>,
}

/// During the backward the step runs two streams at once: kernels and host math on the
/// calling thread, weight gradients on a helper. The helper's products get a pool of their
/// own share of the threads rather than splitting every product across all of them with the
/// step's own work: on two cores the fine-grained fork-join of one shared pool cost more in
/// waking and waiting than it gained. (The step itself stays on the calling thread, whose
/// timeline a simulated clock keeps.)
struct WgradPool {
    threads: usize,
    pool: rayon::ThreadPool,
}

impl WgradPool {
    /// A pool of `threads / 2` threads (at least one): the helper's share of `threads`.
    fn new(threads: usize) -> Option<WgradPool> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads((threads / 2).max(1))
            .thread_name(|i| format!("weight-gradients-{i}"))
            .build()
            .ok()?;
        Some(WgradPool { threads, pool })
    }
}

impl StepBuffers {
    pub fn new(config: &ModelConfig) -> StepBuffers {
        let s = config.seq_len;
        let (d, v) = (config.dim, config.vocab);
        let tensor = |kind: KernelKind, input: bool| {
            let (i, o) = kind.layout(config);
            ChannelTensor::new(if input { i } else { o }, s)
        };
        StepBuffers {
            config: config.clone(),
            tapes: (0..config.n_layers)
                .map(|_| LayerTape {
                    x: vec![0.0; d * s],
                    x2: vec![0.0; d * s],
                    attn: tensor(KernelKind::FwdAttn, false),
                    ffn: tensor(KernelKind::FwdFfn, false),
                })
                .collect(),
            x: vec![0.0; d * s],
            x_final: vec![0.0; d * s],
            logits: zeroed_f32(v * s),
            dlogits: zeroed_f32(v * s),
            dy: vec![0.0; d * s],
            dx: vec![0.0; d * s],
            bwd_ffn_in: tensor(KernelKind::BwdFfn, true),
            bwd_ffn_out: tensor(KernelKind::BwdFfn, false),
            bwd_attn1_in: tensor(KernelKind::BwdAttn1, true),
            bwd_attn1_out: tensor(KernelKind::BwdAttn1, false),
            bwd_attn2_in: tensor(KernelKind::BwdAttn2, true),
            bwd_attn2_out: tensor(KernelKind::BwdAttn2, false),
            bwd_qkv_in: tensor(KernelKind::BwdQkv, true),
            bwd_qkv_out: tensor(KernelKind::BwdQkv, false),
            spare: Mutex::default(),
            wgrad_pool: None,
        }
    }

    /// The helper's pool for `threads` threads (none if it cannot be built: the helper then
    /// runs on the global pool).
    fn wgrad_pool(&mut self, threads: usize) -> Option<Arc<WgradPool>> {
        if self
            .wgrad_pool
            .as_ref()
            .is_none_or(|p| p.threads != threads)
        {
            self.wgrad_pool = WgradPool::new(threads).map(Arc::new);
        }
        self.wgrad_pool.clone()
    }
}

/// Each gradient tensor as a slice of its own, so that the weight-gradient thread can fill
/// some while the step fills others.
struct GradSlots<'a> {
    layout: Arc<ParamLayout>,
    slots: Vec<Option<&'a mut [f32]>>,
}

impl<'a> GradSlots<'a> {
    fn new(grads: &'a mut Params) -> GradSlots<'a> {
        let layout = grads.layout.clone();
        let mut rest: &'a mut [f32] = &mut grads.data;
        let mut slots = Vec::with_capacity(layout.tensors.len());
        // The layout lays tensors out back to back, in order.
        for t in &layout.tensors {
            let (slot, tail) = std::mem::take(&mut rest).split_at_mut(t.range.len());
            slots.push(Some(slot));
            rest = tail;
        }
        GradSlots { layout, slots }
    }

    /// The gradient of the tensor at `range`; each is handed out once per step.
    fn take(&mut self, range: Range<usize>) -> &'a mut [f32] {
        let i = self
            .layout
            .tensors
            .iter()
            .position(|t| t.range == range)
            .expect("a tensor of the layout");
        self.slots[i]
            .take()
            .expect("each gradient tensor is written by one product per step")
    }
}

/// An input of a weight-gradient product: read where it is kept for the whole step (the
/// tapes), or a copy of a buffer the step is about to overwrite.
enum WgradInput<'a> {
    Kept(&'a [f32]),
    Copied(Vec<f32>),
}

impl WgradInput<'_> {
    fn values(&self) -> &[f32] {
        match self {
            Kept(v) => v,
            WgradInput::Copied(v) => v,
        }
    }
}

/// `dw[out][in] += dy[out][S] · x[in][S]ᵀ`, waiting to run.
struct WgradJob<'a> {
    dw: &'a mut [f32],
    dy: WgradInput<'a>,
    x: WgradInput<'a>,
    dims: [usize; 3],
}

/// The weight-gradient products of a step run on a helper thread in the order the backward
/// pass produces them, while the step goes on evaluating kernels (the original overlaps them
/// and waits late: on the ANE the two run on different hardware; on the CPU they share the
/// cores and fill each other's idle gaps). At its end the step takes products off the queue
/// itself until none is left, rather than leave its core idle while the helper works through
/// the rest alone.
struct WeightGradWorker<'scope, 'env> {
    jobs: Option<mpsc::Sender<WgradJob<'env>>>,
    /// The queue, shared by the helper and (at the end) the step.
    queue: Arc<Mutex<mpsc::Receiver<WgradJob<'env>>>>,
    done: std::thread::ScopedJoinHandle<'scope, Duration>,
    spare: &'env Mutex<Vec<Vec<f32>>>,
}

impl<'scope, 'env> WeightGradWorker<'scope, 'env> {
    fn start(
        scope: &'scope std::thread::Scope<'scope, 'env>,
        spare: &'env Mutex<Vec<Vec<f32>>>,
        pool: Option<&'env rayon::ThreadPool>,
        threads: usize,
    ) -> Self {
        let (jobs, queue) = mpsc::channel::<WgradJob<'env>>();
        let queue = Arc::new(Mutex::new(queue));
        let helper_queue = queue.clone();
        let done = scope.spawn(move || {
            install(pool, || {
                let mut busy = Duration::ZERO;
                loop {
                    // The lock is held while waiting for a job (not while running one), which
                    // is fine: the step only takes jobs after closing the queue, when the wait
                    // ends at once.
                    let job = lock(&helper_queue).recv();
                    let Ok(job) = job else { break };
                    busy += run_wgrad_job(job, threads, spare);
                }
                busy
            })
        });
        WeightGradWorker {
            jobs: Some(jobs),
            queue,
            done,
            spare,
        }
    }

    /// A copy of `values` in a spare buffer.
    fn copy(&self, values: &[f32]) -> WgradInput<'env> {
        let mut spare = lock(self.spare);
        let mut v = spare.pop().unwrap_or_default();
        drop(spare);
        v.clear();
        v.extend_from_slice(values);
        WgradInput::Copied(v)
    }

    fn submit(
        &mut self,
        dw: &'env mut [f32],
        dy: WgradInput<'env>,
        x: WgradInput<'env>,
        dims: [usize; 3],
    ) {
        let job = WgradJob { dw, dy, x, dims };
        if let Some(jobs) = &self.jobs {
            // The worker only stops when the queue closes, so the send cannot fail.
            let _ = jobs.send(job);
        }
    }

    /// `dw += dy·xᵀ`, with `dy` copied now (the step is about to overwrite it) and `x` read
    /// where the step keeps it to the end.
    fn submit_copied(&mut self, dw: &'env mut [f32], dy: &[f32], x: &'env [f32], dims: [usize; 3]) {
        let dy = self.copy(dy);
        self.submit(dw, dy, Kept(x), dims);
    }

    /// Runs the products still queued alongside the helper (one thread each: the helper
    /// holds the other core) and waits for the helper; returns the time both spent on them.
    fn finish(mut self) -> Duration {
        self.jobs = None;
        let mut busy = Duration::ZERO;
        loop {
            let job = lock(&self.queue).try_recv();
            match job {
                Ok(job) => busy += run_wgrad_job(job, 1, self.spare),
                Err(_) => break,
            }
        }
        busy + self
            .done
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    }
}

/// One weight-gradient product; its copied inputs go back to the spare buffers. Returns the
/// time it took.
fn run_wgrad_job(job: WgradJob, threads: usize, spare: &Mutex<Vec<Vec<f32>>>) -> Duration {
    let t = Instant::now();
    let [out, inp, s] = job.dims;
    host::weight_grad(
        job.dw,
        job.dy.values(),
        job.x.values(),
        out,
        inp,
        s,
        threads,
    );
    let took = t.elapsed();
    let mut spare = lock(spare);
    for input in [job.dy, job.x] {
        if let WgradInput::Copied(v) = input {
            spare.push(v);
        }
    }
    took
}

/// A lock that a panic elsewhere does not poison for good: the data (a queue, spare buffers)
/// stays usable.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs `op` in `pool`, or where it is called when there is none.
fn install<R: Send>(pool: Option<&rayon::ThreadPool>, op: impl FnOnce() -> R + Send) -> R {
    match pool {
        Some(pool) => pool.install(op),
        None => op(),
    }
}

/// Evaluates one kernel, timing it on the clock (virtual time under a latency model).
fn eval(
    device: &dyn Device,
    kernel: &mut Kernel,
    (kind, layer): (KernelKind, usize),
    input: &[f32],
    output: &mut [f32],
    timing: &mut StepTiming,
) -> Result<(), StepError> {
    let t = timing.clock.now();
    device
        .eval(kernel, &[input], &mut [output])
        .map_err(|source| StepError::Eval {
            kernel: format!("{}.{layer}", kind.name()),
            source,
        })?;
    let took = timing.clock.now().saturating_sub(t);
    timing.device_eval += took;
    timing.eval_by_kernel[kind.index()] += took;
    Ok(())
}

fn check_tokens(config: &ModelConfig, tokens: &[u32], targets: &[u32]) -> Result<(), StepError> {
    if tokens.len() != config.seq_len || targets.len() != config.seq_len {
        return Err(StepError::Length {
            expected: config.seq_len,
            tokens: tokens.len(),
            targets: targets.len(),
        });
    }
    for (position, &token) in tokens.iter().chain(targets).enumerate() {
        if token as usize >= config.vocab {
            return Err(StepError::Token {
                token,
                position: position % config.seq_len,
                vocab: config.vocab,
            });
        }
    }
    Ok(())
}

/// Forward through all layers; leaves the final hidden state in `buf.x` and the tapes filled.
fn forward(
    device: &dyn Device,
    set: &mut KernelSet,
    buf: &mut StepBuffers,
    tokens: &[u32],
    timing: &mut StepTiming,
) -> Result<(), StepError> {
    let params = set.snapshot().params.clone();
    if params.data.len() != params.layout.len {
        return Err(StepError::Released {
            version: set.version(),
        });
    }
    let c = buf.config.clone();
    let t0 = timing.host_start();
    host::embed_forward(params.get(params.layout.embed()), c.dim, tokens, &mut buf.x);
    timing.host_end(t0, Some("embedding"));
    for l in 0..c.n_layers {
        let tape = &mut buf.tapes[l];
        tape.x.copy_from_slice(&buf.x);
        set.eval(
            device,
            l,
            KernelKind::FwdAttn,
            &tape.x,
            &mut tape.attn.data,
            timing,
        )?;
        let t = timing.host_start();
        for ((x2, x), o) in tape.x2.iter_mut().zip(&tape.x).zip(tape.attn.part("o")) {
            *x2 = x + o;
        }
        timing.host_end(t, None);
        set.eval(
            device,
            l,
            KernelKind::FwdFfn,
            &tape.x2,
            &mut tape.ffn.data,
            timing,
        )?;
        let t = timing.host_start();
        for ((x, x2), f) in buf.x.iter_mut().zip(&tape.x2).zip(tape.ffn.part("ffn")) {
            *x = x2 + f;
        }
        timing.host_end(t, None);
    }
    Ok(())
}

/// Final norm, classifier and cross-entropy of the hidden state in `buf.x`; returns the loss
/// and the reciprocal RMS of the final norm.
/// Final norm, classifier and cross-entropy; `dlogits` and the returned column scales hold
/// the gradient of `scale ·` loss (see [`host::CrossEntropy`]).
fn head_loss(
    params: &Params,
    buf: &mut StepBuffers,
    targets: &[u32],
    scale: f32,
    threads: usize,
) -> (host::CrossEntropy, Vec<f32>) {
    let c = &buf.config;
    let (d, v, s) = (c.dim, c.vocab, c.seq_len);
    let layout = &params.layout;
    let rrms = host::rmsnorm_forward(
        &buf.x,
        params.get(layout.rms_final()),
        c.norm_eps,
        s,
        &mut buf.x_final,
    );
    host::matmul(
        params.get(layout.classifier()),
        &buf.x_final,
        v,
        d,
        s,
        &mut buf.logits,
        threads,
    );
    let ce = host::cross_entropy(&buf.logits, targets, v, scale, &mut buf.dlogits);
    (ce, rrms)
}

/// The mean cross-entropy of one window, forward only.
pub fn forward_loss(
    device: &dyn Device,
    clock: &dyn Clock,
    set: &mut KernelSet,
    buf: &mut StepBuffers,
    tokens: &[u32],
    targets: &[u32],
    threads: usize,
) -> Result<f32, StepError> {
    check_tokens(&buf.config, tokens, targets)?;
    let mut timing = StepTiming::new(clock);
    forward(device, set, buf, tokens, &mut timing)?;
    let params = set.snapshot().params.clone();
    Ok(head_loss(&params, buf, targets, 1.0, threads).0.loss)
}

/// The logits `[V][S]` of one window, forward only.
pub fn forward_logits(
    device: &dyn Device,
    clock: &dyn Clock,
    set: &mut KernelSet,
    buf: &mut StepBuffers,
    tokens: &[u32],
    threads: usize,
) -> Result<Vec<f32>, StepError> {
    check_tokens(&buf.config, tokens, tokens)?;
    let mut timing = StepTiming::new(clock);
    forward(device, set, buf, tokens, &mut timing)?;
    let params = set.snapshot().params.clone();
    head_loss(&params, buf, tokens, 1.0, threads);
    Ok(buf.logits.clone())
}

/// One micro-step: returns the loss and adds `loss_scale ×` the gradient of the mean
/// cross-entropy to `grads` (laid out like the parameters).
#[allow(clippy::too_many_arguments)]
pub fn micro_step<'c>(
    device: &dyn Device,
    clock: &'c dyn Clock,
    set: &mut KernelSet,
    shared: &mut SharedKernel,
    buf: &mut StepBuffers,
    tokens: &[u32],
    targets: &[u32],
    loss_scale: f32,
    grads: &mut Params,
    threads: usize,
) -> Result<(f32, StepTiming<'c>), StepError> {
    check_tokens(&buf.config, tokens, targets)?;
    let mut timing = StepTiming::new(clock);
    forward(device, set, buf, tokens, &mut timing)?;
    let params = set.snapshot().params.clone();
    let layout = params.layout.clone();
    let c = buf.config.clone();
    let (d, h, v, s) = (c.dim, c.hidden, c.vocab, c.seq_len);
    let (q, kv) = (c.q_dim(), c.kv_dim());

    // Head: loss, classifier and final-norm backward.
    let t = timing.host_start();
    let (ce, rrms_final) = head_loss(&params, buf, targets, loss_scale, threads);
    let loss = ce.loss;
    host::matmul_t(
        params.get(layout.classifier()),
        &buf.dlogits,
        v,
        d,
        s,
        &mut buf.dx,
        threads,
    );
    host::scale_columns(&mut buf.dx, &ce.column);
    timing.host_end(t, Some("loss and classifier"));

    let pool = buf.wgrad_pool(threads);
    let wgrad_pool = pool.as_ref().map(|p| &p.pool);
    let StepBuffers {
        tapes,
        x,
        x_final,
        dlogits,
        dy,
        dx,
        bwd_ffn_in,
        bwd_ffn_out,
        bwd_attn1_in,
        bwd_attn1_out,
        bwd_attn2_in,
        bwd_attn2_out,
        bwd_qkv_in,
        bwd_qkv_out,
        spare,
        ..
    } = &mut *buf;
    let busy = std::thread::scope(|scope| {
        let mut grad = GradSlots::new(grads);
        let mut wgrad = WeightGradWorker::start(scope, spare, wgrad_pool, threads);
        // dW = dlogits·diag(column)·x_finalᵀ: the column scales go on the small side.
        let mut x_scaled = wgrad.copy(x_final);
        if let WgradInput::Copied(x) = &mut x_scaled {
            host::scale_columns(x, &ce.column);
        }
        wgrad.submit(
            grad.take(layout.classifier()),
            Kept(dlogits),
            x_scaled,
            [v, d, s],
        );
        let t = timing.host_start();
        host::rmsnorm_backward(
            dx,
            x,
            params.get(layout.rms_final()),
            &rrms_final,
            dy,
            grad.take(layout.rms_final()),
        );
        timing.host_end(t, Some("norm backward"));

        for l in (0..c.n_layers).rev() {
            let tape = &tapes[l];
            let layer = |t: LayerTensor| layout.layer(l, t);
            // FFN backward on the device; its weight gradients and RMSNorm backward on
            // the host.
            bwd_ffn_in.part_mut("dffn").copy_from_slice(dy);
            bwd_ffn_in
                .part_mut("h1")
                .copy_from_slice(tape.ffn.part("h1"));
            bwd_ffn_in
                .part_mut("h3")
                .copy_from_slice(tape.ffn.part("h3"));
            set.eval(
                device,
                l,
                KernelKind::BwdFfn,
                &bwd_ffn_in.data,
                &mut bwd_ffn_out.data,
                &mut timing,
            )?;
            let t = timing.host_start();
            let x2norm = tape.ffn.part("xnorm");
            let gate = tape.ffn.part("gate");
            wgrad.submit_copied(grad.take(layer(LayerTensor::W2)), dy, gate, [d, h, s]);
            let dh1 = bwd_ffn_out.part("dh1");
            wgrad.submit_copied(grad.take(layer(LayerTensor::W1)), dh1, x2norm, [h, d, s]);
            let dh3 = bwd_ffn_out.part("dh3");
            wgrad.submit_copied(grad.take(layer(LayerTensor::W3)), dh3, x2norm, [h, d, s]);
            // dx2 = the FFN branch's gradient plus the residual's.
            host::prenorm_backward(
                dx,
                bwd_ffn_out.part("dx"),
                &tape.x2,
                params.layer(l, LayerTensor::RmsFfn),
                c.norm_eps,
                dy,
                grad.take(layer(LayerTensor::RmsFfn)),
            );
            timing.host_end(t, Some("norm backward"));
            let dx2 = &*dx;

            // Attention backward on the device.
            let attn = tape.attn.part("attn");
            wgrad.submit_copied(grad.take(layer(LayerTensor::Wo)), dx2, attn, [d, q, s]);
            for part in ["q_rope", "k_rope", "v"] {
                bwd_attn1_in
                    .part_mut(part)
                    .copy_from_slice(tape.attn.part(part));
            }
            bwd_attn1_in.part_mut("dx2").copy_from_slice(dx2);
            set.eval(
                device,
                l,
                KernelKind::BwdAttn1,
                &bwd_attn1_in.data,
                &mut bwd_attn1_out.data,
                &mut timing,
            )?;
            for part in ["probs", "dprobs"] {
                bwd_attn2_in
                    .part_mut(part)
                    .copy_from_slice(bwd_attn1_out.part(part));
            }
            for part in ["q_rope", "k_rope"] {
                bwd_attn2_in
                    .part_mut(part)
                    .copy_from_slice(tape.attn.part(part));
            }
            eval(
                device,
                &mut shared.bwd_attn2,
                (KernelKind::BwdAttn2, l),
                &bwd_attn2_in.data,
                &mut bwd_attn2_out.data,
                &mut timing,
            )?;
            bwd_qkv_in
                .part_mut("dq_rope")
                .copy_from_slice(bwd_attn2_out.part("dq_rope"));
            bwd_qkv_in
                .part_mut("dk_rope")
                .copy_from_slice(bwd_attn2_out.part("dk_rope"));
            bwd_qkv_in
                .part_mut("dv")
                .copy_from_slice(bwd_attn1_out.part("dv"));
            set.eval(
                device,
                l,
                KernelKind::BwdQkv,
                &bwd_qkv_in.data,
                &mut bwd_qkv_out.data,
                &mut timing,
            )?;
            let t = timing.host_start();
            let xnorm = tape.attn.part("xnorm");
            let (dq, dk) = (bwd_qkv_out.part("dq"), bwd_qkv_out.part("dk"));
            wgrad.submit_copied(grad.take(layer(LayerTensor::Wq)), dq, xnorm, [q, d, s]);
            wgrad.submit_copied(grad.take(layer(LayerTensor::Wk)), dk, xnorm, [kv, d, s]);
            let dv = bwd_attn1_out.part("dv");
            wgrad.submit_copied(grad.take(layer(LayerTensor::Wv)), dv, xnorm, [kv, d, s]);
            host::prenorm_backward(
                dy,
                bwd_qkv_out.part("dx"),
                &tape.x,
                params.layer(l, LayerTensor::RmsAtt),
                c.norm_eps,
                dx,
                grad.take(layer(LayerTensor::RmsAtt)),
            );
            timing.host_end(t, Some("norm backward"));
        }
        // The step waits for its weight gradients only here, at its end. (On an error above,
        // dropping the worker closes its queue and the scope waits for it.)
        let (t, on_clock) = (Instant::now(), timing.clock.now());
        let busy = wgrad.finish();
        timing.weight_grad_wait += t.elapsed();
        timing.span("waiting for weight gradients", on_clock);
        Ok::<_, StepError>(busy)
    })?;
    timing.weight_grads += busy;
    // After the wait: a tied classifier's gradient is the embedding's.
    let t = timing.host_start();
    host::embed_backward(grads.get_mut(layout.embed()), d, tokens, &buf.dy);
    timing.host_end(t, Some("embedding backward"));
    Ok((loss, timing))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Small integers, so that every sum below is exact in f32.
    fn pattern(len: usize, seed: usize) -> Vec<f32> {
        (0..len)
            .map(|i| ((i * 7 + seed * 3) % 11) as f32 - 5.0)
            .collect()
    }

    #[test]
    fn every_queued_weight_gradient_is_added_once_whichever_thread_runs_it() {
        let (out, inp, s, jobs) = (24, 16, 40, 40);
        let dys: Vec<Vec<f32>> = (0..jobs).map(|j| pattern(out * s, j)).collect();
        let xs: Vec<Vec<f32>> = (0..jobs).map(|j| pattern(inp * s, j + 100)).collect();
        let mut dws = vec![vec![1.0f32; out * inp]; jobs];
        let spare = Mutex::default();
        std::thread::scope(|scope| {
            let mut worker = WeightGradWorker::start(scope, &spare, None, 1);
            for ((dw, dy), x) in dws.iter_mut().zip(&dys).zip(&xs) {
                worker.submit(dw, Kept(dy), WgradInput::Copied(x.clone()), [out, inp, s]);
            }
            // The step takes what the helper has not started yet.
            worker.finish();
        });
        for (j, dw) in dws.iter().enumerate() {
            for o in 0..out {
                for i in 0..inp {
                    let dot: f32 = (0..s).map(|t| dys[j][o * s + t] * xs[j][i * s + t]).sum();
                    assert_eq!(dw[o * inp + i], 1.0 + dot, "job {j}, dw[{o}][{i}]");
                }
            }
        }
        assert_eq!(
            lock(&spare).len(),
            jobs,
            "every copied input goes back to the spare buffers once"
        );
    }
}
