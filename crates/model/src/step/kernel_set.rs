//! Kernel sets: the weight-bearing kernels of every layer, compiled from one weight snapshot
//! (baked) or once for all snapshots (dynamic), and the weight-free kernel the layers share.

use super::timing::StepTiming;
use super::{StepError, WeightSnapshot};
use crate::config::ModelConfig;
use crate::kernels::{
    generate_baked, generate_dynamic, stage_layer_weights, InputWeights, KernelKind, KernelProgram,
};
use crate::params::Params;
use anetrain_device::{Device, DeviceError, Kernel, NumericMode, PreparedProgram};
use anetrain_mil::blob::MatrixShare;
use anetrain_mil::DType;
use std::ops::Range;
use std::sync::{Arc, OnceLock};

/// The weight-bearing kernels of every layer and the snapshot whose weights they run on.
///
/// A baked set whose layers were replaced group by group ([`KernelSet::swap_in`]) runs each
/// layer on the version its group was compiled from: its [`KernelSet::version`] is the oldest
/// of them, and its snapshot (what the host parts of a step read: the embedding, the final
/// norm, the classifier) the newest group's.
pub struct KernelSet {
    snapshot: WeightSnapshot,
    kernels: SetKernels,
}

enum SetKernels {
    /// `layers[l][i]` is kernel `KernelKind::WEIGHTED[i]` of layer l, its weights baked in,
    /// compiled from `programs` (which the set's successors reuse) at weights version
    /// `versions[l]`.
    Baked {
        programs: Arc<BakedPrograms>,
        layers: Vec<Vec<Kernel>>,
        versions: Vec<u64>,
    },
    Dynamic(DynamicKernels),
}

/// The baked kernels of some consecutive layers, compiled from one snapshot, to replace
/// those layers of a set ([`KernelSet::swap_in`]).
pub struct LayerGroup {
    snapshot: WeightSnapshot,
    first: usize,
    layers: Vec<Vec<Kernel>>,
}

impl LayerGroup {
    /// The layers it holds.
    pub fn layers(&self) -> Range<usize> {
        self.first..self.first + self.layers.len()
    }

    pub fn version(&self) -> u64 {
        self.snapshot.version
    }

    /// Kernels it compiled.
    pub fn compiled_kernels(&self) -> usize {
        self.layers.iter().map(Vec::len).sum()
    }
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
        if let SetKernels::Baked {
            layers, versions, ..
        } = &mut self.kernels
        {
            layers.clear();
            versions.clear();
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

    /// The weights version the set runs on: of its oldest layer, when its layers differ.
    pub fn version(&self) -> u64 {
        match &self.kernels {
            SetKernels::Baked { versions, .. } => versions.iter().copied().min(),
            SetKernels::Dynamic(_) => None,
        }
        .unwrap_or(self.snapshot.version)
    }

    /// The weights version of each layer's kernels.
    pub fn layer_versions(&self) -> Vec<u64> {
        match &self.kernels {
            SetKernels::Baked { versions, .. } if !versions.is_empty() => versions.clone(),
            _ => vec![self.snapshot.version; self.snapshot.params.layout.config.n_layers],
        }
    }

    /// Replaces the layers of `group` with its kernels, dropping theirs (which frees them on
    /// the device). The set's snapshot becomes the group's when the group is newer.
    pub fn swap_in(&mut self, group: LayerGroup) -> Result<(), StepError> {
        let SetKernels::Baked {
            layers, versions, ..
        } = &mut self.kernels
        else {
            return Err(StepError::BakedWeights {
                version: self.snapshot.version,
            });
        };
        let range = group.layers();
        if range.end > layers.len() {
            return Err(StepError::Layers {
                range,
                layers: layers.len(),
            });
        }
        for (l, kernels) in range.clone().zip(group.layers) {
            layers[l] = kernels;
            versions[l] = group.snapshot.version;
        }
        if group.snapshot.version > self.snapshot.version {
            self.snapshot = group.snapshot;
        }
        Ok(())
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
    pub(super) fn eval(
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

/// Every distinct program a run on `device` compiles, each once: the shared kernel's and the
/// weight-bearing kernels', baked or (`dynamic`) taking their weights as inputs. What a
/// chip's rules are checked against before a run starts.
pub fn run_programs(
    device: &dyn Device,
    c: &ModelConfig,
    dynamic: bool,
) -> Result<Vec<KernelProgram>, StepError> {
    let dtype = kernel_dtype(device);
    let generate_error = |kind: KernelKind| {
        move |source| StepError::Generate {
            kernel: kind.name().into(),
            source,
        }
    };
    KernelKind::ALL
        .into_iter()
        .map(|kind| {
            if dynamic && kind != KernelKind::BwdAttn2 {
                generate_dynamic(kind, c, dtype)
                    .map(|(program, _)| in_device_dialect(device, program))
                    .map_err(generate_error(kind))
            } else {
                generate_baked(kind, c, dtype)
                    .map(|program| in_device_dialect(device, program))
                    .map_err(generate_error(kind))
            }
        })
        .collect()
}

/// A kernel in the MIL dialect the device's chip needs (the M1 generation's `ios16`), or as
/// generated (`ios18`).
fn in_device_dialect(device: &dyn Device, mut kernel: KernelProgram) -> KernelProgram {
    if let Some(dialect) = device.chip_rules().and_then(|r| r.dialect()) {
        kernel.program = kernel.program.into_dialect(dialect);
    }
    kernel
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

    /// The programs in the float type `device` computes in, in the dialect its chip needs.
    pub fn for_device(
        device: &dyn Device,
        config: &ModelConfig,
    ) -> Result<BakedPrograms, StepError> {
        let mut programs = BakedPrograms::generate(config, kernel_dtype(device))?;
        programs.programs = std::mem::take(&mut programs.programs)
            .into_iter()
            .map(|p| in_device_dialect(device, p))
            .collect();
        Ok(programs)
    }

    /// Compiles every weight-bearing kernel of every layer with the snapshot's weights.
    pub fn compile_set(
        self: &Arc<Self>,
        device: &dyn Device,
        snapshot: WeightSnapshot,
    ) -> Result<KernelSet, StepError> {
        let group = self.compile_layers(device, snapshot, 0..self.config.n_layers)?;
        Ok(KernelSet {
            kernels: SetKernels::Baked {
                programs: self.clone(),
                versions: vec![group.snapshot.version; group.layers.len()],
                layers: group.layers,
            },
            snapshot: group.snapshot,
        })
    }

    /// Compiles the weight-bearing kernels of `layers` with the snapshot's weights, to swap
    /// into a set of these programs.
    pub fn compile_layers(
        &self,
        device: &dyn Device,
        snapshot: WeightSnapshot,
        layers: Range<usize>,
    ) -> Result<LayerGroup, StepError> {
        let found = &snapshot.params.layout.config;
        if *found != self.config {
            return Err(StepError::ModelMismatch {
                expected: self.config.name.clone(),
                found: found.name.clone(),
            });
        }
        if layers.end > self.config.n_layers || layers.is_empty() {
            return Err(StepError::Layers {
                range: layers,
                layers: self.config.n_layers,
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
        // One share for the group: a layer's kernels that read a matrix and those that read
        // its transpose get one derived form of it (the CPU device packs it once). Dropped with
        // this call, so nothing of the group's weights outlives it there.
        let share = MatrixShare::new();
        let prepared = self.prepared.get_or_init(|| {
            let programs = self.programs.iter();
            programs.map(|p| device.prepare(&p.program)).collect()
        });
        let first = layers.start;
        let kernels = layers
            .map(|l| {
                (self.programs.iter().zip(prepared))
                    .map(|(p, prepared)| {
                        compile_layer(device, p, prepared, &snapshot.params, l, &share)
                    })
                    .collect::<Result<Vec<_>, _>>()
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(LayerGroup {
            snapshot,
            first,
            layers: kernels,
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
        let program = in_device_dialect(device, program);
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
    pub(super) bwd_attn2: Kernel,
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
        let program = in_device_dialect(device, program);
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

/// Evaluates one kernel, timing it on the clock (virtual time under a latency model).
pub(super) fn eval(
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
