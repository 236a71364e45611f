//! The MIL kernels of a training step, in two weight modes.
//!
//! - [`generate`]: one kernel per layer, weights baked as BLOBFILE constants (a new weight
//!   version means a recompile).
//! - [`generate_dynamic`]: one kernel for all layers and all weight versions (the dynamic
//!   pipeline): every trainable tensor arrives in extra spatial columns of the input, laid out
//!   by the kernel's [`InputWeights`], and the host stages them with [`stage_layer_weights`].
//!   Linear maps become `matmul`s of the weight as stored; the backward's `Wᵀ·x` transposes it
//!   in MIL (`transpose_x`), so the host copies weights without transposing them.
//!
//! Each kernel has one input and one output, channel-first `[1, C, 1, S]` fp16, holding several
//! logical tensors concatenated along channels; a [`ChannelParts`] names the channel ranges, and the
//! trainer reads and writes through the same layouts the generators use. A dynamic kernel's
//! input is `[1, C, 1, S + P]`: the same activations in columns `[0, S)`, weights after them.
//!
//! | kernel | input | output | weights (baked: as listed; dynamic: as stored) |
//! |---|---|---|---|
//! | `fwd_attn` | x | o, q_rope, k_rope, v, attn, xnorm | rms_att, Wq, Wk, Wv, Wo, RoPE, mask |
//! | `fwd_ffn` | x2 | ffn, h1, h3, gate, xnorm | rms_ffn, W1, W3, W2 |
//! | `bwd_ffn` | dffn, h1, h3 | dx, dh1, dh3 | W2ᵀ, W1ᵀ, W3ᵀ |
//! | `bwd_attn1` | q_rope, k_rope, v, dx2 | dv, probs, dprobs | Woᵀ, mask |
//! | `bwd_attn2` | probs, dprobs, q_rope, k_rope | dq_rope, dk_rope | none |
//! | `bwd_qkv` | dq_rope, dk_rope, dv | dx, dq, dk | Wqᵀ, Wkᵀ, Wvᵀ, RoPE |
//!
//! Unlike the original, the forward applies RoPE (llama2.c's interleaved pairs) and its
//! backward undoes it, and grouped-query heads map query head h to key/value head
//! h / (n_heads / n_kv_heads) in forward and backward alike.

pub mod graph;

use crate::config::ModelConfig;
use crate::params::{LayerTensor, Params};
use anetrain_mil::blob::{transposed, BlobFile, F32Source, MatrixFile, MatrixShare, WeightFiles};
use anetrain_mil::check::CheckError;
use anetrain_mil::{DType, Var};
use graph::{Graph, WeightMode};
use std::ops::Range;
use std::sync::{Arc, Mutex};
use thiserror::Error;

pub use graph::{BakedTensor, InputWeight, InputWeights, KernelProgram, WIDTH_MULTIPLE};

/// Named channel ranges of a `[1, C, 1, S]` tensor that concatenates several logical tensors.
#[derive(Clone, Debug, PartialEq)]
pub struct ChannelParts {
    parts: Vec<(&'static str, usize)>,
}

impl ChannelParts {
    pub fn new(parts: &[(&'static str, usize)]) -> ChannelParts {
        ChannelParts {
            parts: parts.to_vec(),
        }
    }

    pub fn channels(&self) -> usize {
        self.parts.iter().map(|(_, c)| c).sum()
    }

    /// The channel range of a part; panics on a name the tensor does not have (a bug).
    pub fn range(&self, name: &str) -> Range<usize> {
        let mut at = 0;
        for (n, c) in &self.parts {
            if *n == name {
                return at..at + c;
            }
            at += c;
        }
        panic!("no part `{name}` in channel parts {:?}", self.parts)
    }

    pub fn names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.parts.iter().map(|(n, _)| *n)
    }
}

/// The six kernels of a layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KernelKind {
    FwdAttn,
    FwdFfn,
    BwdFfn,
    BwdAttn1,
    BwdAttn2,
    BwdQkv,
}

impl KernelKind {
    pub const ALL: [KernelKind; 6] = [
        KernelKind::FwdAttn,
        KernelKind::FwdFfn,
        KernelKind::BwdFfn,
        KernelKind::BwdAttn1,
        KernelKind::BwdAttn2,
        KernelKind::BwdQkv,
    ];

    /// The kernels whose programs depend on the weights (recompiled after every update).
    pub const WEIGHTED: [KernelKind; 5] = [
        KernelKind::FwdAttn,
        KernelKind::FwdFfn,
        KernelKind::BwdFfn,
        KernelKind::BwdAttn1,
        KernelKind::BwdQkv,
    ];

    /// The position in [`KernelKind::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    pub fn name(self) -> &'static str {
        match self {
            KernelKind::FwdAttn => "fwd_attn",
            KernelKind::FwdFfn => "fwd_ffn",
            KernelKind::BwdFfn => "bwd_ffn",
            KernelKind::BwdAttn1 => "bwd_attn1",
            KernelKind::BwdAttn2 => "bwd_attn2",
            KernelKind::BwdQkv => "bwd_qkv",
        }
    }

    /// Input and output channel parts under a configuration.
    pub fn layout(self, c: &ModelConfig) -> (ChannelParts, ChannelParts) {
        let (d, h, q, kv) = (c.dim, c.hidden, c.q_dim(), c.kv_dim());
        let sc = c.n_heads * c.seq_len;
        match self {
            // With q/k norms the projections before the norm are kept too, for its backward.
            KernelKind::FwdAttn => {
                let mut out = vec![
                    ("o", d),
                    ("q_rope", q),
                    ("k_rope", kv),
                    ("v", kv),
                    ("attn", q),
                    ("xnorm", d),
                ];
                if c.qk_norm {
                    out.extend([("qf", q), ("kf", kv)]);
                }
                (ChannelParts::new(&[("x", d)]), ChannelParts::new(&out))
            }
            KernelKind::FwdFfn => (
                ChannelParts::new(&[("x2", d)]),
                ChannelParts::new(&[("ffn", d), ("h1", h), ("h3", h), ("gate", h), ("xnorm", d)]),
            ),
            KernelKind::BwdFfn => (
                ChannelParts::new(&[("dffn", d), ("h1", h), ("h3", h)]),
                ChannelParts::new(&[("dx", d), ("dh1", h), ("dh3", h)]),
            ),
            KernelKind::BwdAttn1 => (
                ChannelParts::new(&[("q_rope", q), ("k_rope", kv), ("v", kv), ("dx2", d)]),
                ChannelParts::new(&[("dv", kv), ("probs", sc), ("dprobs", sc)]),
            ),
            KernelKind::BwdAttn2 => (
                ChannelParts::new(&[("probs", sc), ("dprobs", sc), ("q_rope", q), ("k_rope", kv)]),
                ChannelParts::new(&[("dq_rope", q), ("dk_rope", kv)]),
            ),
            // `dqw`, `dkw`: the norm output's gradient times the normalised projection, which
            // the host sums over heads and positions into the norm weights' gradients.
            KernelKind::BwdQkv => {
                let mut input = vec![("dq_rope", q), ("dk_rope", kv), ("dv", kv)];
                let mut out = vec![("dx", d), ("dq", q), ("dk", kv)];
                if c.qk_norm {
                    input.extend([("qf", q), ("kf", kv)]);
                    out.extend([("dqw", q), ("dkw", kv)]);
                }
                (ChannelParts::new(&input), ChannelParts::new(&out))
            }
        }
    }
}

/// cos and sin tables `[channels][S]` for RoPE, cached: every recompile of a kernel set needs
/// the same ones, and computing them cost more than the rest of kernel generation.
type RopeTables = Arc<(Vec<f32>, Vec<f32>)>;
type RopeKey = (usize, usize, usize, u32, bool);

fn rope_tables(channels: usize, hd: usize, s: usize, theta: f32, sign: f64) -> RopeTables {
    static CACHE: Mutex<Vec<(RopeKey, RopeTables)>> = Mutex::new(Vec::new());
    let key = (channels, hd, s, theta.to_bits(), sign < 0.0);
    let mut cache = CACHE.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((_, t)) = cache.iter().find(|(k, _)| *k == key) {
        return t.clone();
    }
    let mut cos = vec![0.0f32; channels * s];
    let mut sin = vec![0.0f32; channels * s];
    for ch in 0..channels {
        let i = (ch % hd) / 2;
        let freq = (theta as f64).powf(-2.0 * i as f64 / hd as f64);
        for t in 0..s {
            let angle = t as f64 * freq;
            cos[ch * s + t] = angle.cos() as f32;
            sin[ch * s + t] = (sign * angle.sin()) as f32;
        }
    }
    let tables = Arc::new((cos, sin));
    // A handful of shapes per run; keep the newest few.
    if cache.len() >= 8 {
        cache.remove(0);
    }
    cache.push((key, tables.clone()));
    tables
}

/// Generates one kernel of one layer from the weights in `params`, with every tensor in
/// `dtype` (fp16 for the ANE; fp32 for exact gradients on the CPU).
pub fn generate(
    kind: KernelKind,
    c: &ModelConfig,
    params: &Arc<Params>,
    layer: usize,
    dtype: DType,
) -> Result<KernelProgram, GenerateError> {
    let mut program = generate_baked(kind, c, dtype)?;
    program.weights = program.layer_weights(params, layer)?;
    program.name = format!("{}.{layer}", kind.name());
    Ok(program)
}

/// Generates the program of a baked kernel, the same for every layer and weight version: its
/// weight files hold the constant tables only, and [`KernelProgram::layer_weights`] adds the
/// trainable tensors of a layer.
pub fn generate_baked(
    kind: KernelKind,
    c: &ModelConfig,
    dtype: DType,
) -> Result<KernelProgram, Box<CheckError>> {
    let mut g = Graph::new(kind.name(), dtype);
    KernelGenerator { c }.build(kind, &mut g);
    g.finish()
}

/// Every kernel a run compiles, each with the weight files its compile reads: with weights
/// baked, each weight-bearing kernel of each layer (`fwd_attn.3`) with that layer's weights
/// from `params`; with weights as inputs, each weight-bearing kernel once
/// (`fwd_attn.dynamic`); and the kernel the layers share (`bwd_attn2`).
pub fn run_kernels(
    params: &Arc<Params>,
    weights_as_inputs: bool,
    dtype: DType,
) -> Result<Vec<KernelProgram>, GenerateError> {
    let c = &params.layout.config;
    let mut kernels = Vec::new();
    for kind in KernelKind::WEIGHTED {
        if weights_as_inputs {
            kernels.push(generate_dynamic(kind, c, dtype)?.0);
        } else {
            for layer in 0..c.n_layers {
                kernels.push(generate(kind, c, params, layer, dtype)?);
            }
        }
    }
    kernels.push(generate_baked(KernelKind::BwdAttn2, c, dtype)?);
    Ok(kernels)
}

#[derive(Debug, Error)]
pub enum GenerateError {
    #[error(transparent)]
    Program(#[from] Box<CheckError>),
    #[error(transparent)]
    Weights(#[from] StageError),
}

impl KernelProgram {
    /// The program's weight files for layer `layer` of `params`: the constant tables and each
    /// trainable tensor in the program's dtype, transposed where the program reads it so.
    pub fn layer_weights(
        &self,
        params: &Arc<Params>,
        layer: usize,
    ) -> Result<WeightFiles, StageError> {
        self.layer_weights_in(params, layer, None)
    }

    /// [`KernelProgram::layer_weights`] with its matrix files in `share`: the kernels of one
    /// set compiled with the same share let a device derive each weight matrix's form once
    /// for the kernels that read it and those that read its transpose (see [`MatrixShare`]).
    pub fn layer_weights_in(
        &self,
        params: &Arc<Params>,
        layer: usize,
        share: Option<&Arc<MatrixShare>>,
    ) -> Result<WeightFiles, StageError> {
        let c = &params.layout.config;
        if layer >= c.n_layers {
            return Err(StageError::Layer {
                layer,
                layers: c.n_layers,
            });
        }
        let mut files = self.weights.clone();
        for baked in &self.trainables {
            let t = layer_tensor(&baked.tensor)
                .ok_or_else(|| StageError::UnknownTensor(baked.tensor.clone()))?;
            let [rows, cols] = t.shape(c);
            let expected = if baked.transposed {
                [cols, rows]
            } else {
                [rows, cols]
            };
            let dims = |s: &[usize]| s.iter().copied().filter(|&d| d != 1).collect::<Vec<_>>();
            if dims(&baked.shape) != dims(&expected) {
                return Err(StageError::Shape {
                    name: baked.path.clone(),
                    given: baked.shape.clone(),
                    model: expected,
                });
            }
            let path = baked.path.clone();
            if baked.dtype == DType::Fp32 {
                // fp32 weights are the parameters themselves: the file views them instead of
                // copying them (see `MatrixFile`).
                let source: F32Source = params.clone();
                let range = params.layout.layer(layer, t);
                let file = MatrixFile::new(source, range, [rows, cols], baked.transposed)
                    .expect("a layer tensor is rows × cols values inside the parameters");
                let file = match share {
                    Some(share) => file.shared_in(share),
                    None => file,
                };
                files.insert_matrix(path, file);
                continue;
            }
            let stored = params.layer(layer, t);
            match baked.transposed {
                false => files.insert_blob(path, &BlobFile::fp16(stored)),
                true => files.insert_blob(path, &BlobFile::fp16(&transposed(stored, rows, cols))),
            }
        }
        Ok(files)
    }
}

/// Where a kernel's trainable tensors lie in its dynamic input, found by a first pass of the
/// kernel's own generator that notes every weight it asks for, so that the order and offsets
/// have one source of truth. Each tensor is named by its [`LayerTensor::short_name`].
pub fn input_weights(kind: KernelKind, c: &ModelConfig) -> Result<InputWeights, Box<CheckError>> {
    let mut g = Graph::with_weights(kind.name(), DType::Fp32, WeightMode::Recording);
    KernelGenerator { c }.build(kind, &mut g);
    g.finish_recording()
}

/// Generates a kernel that reads its trainable tensors from its input (see
/// [`input_weights`]): compiled once, it serves every layer and every weight version.
pub fn generate_dynamic(
    kind: KernelKind,
    c: &ModelConfig,
    dtype: DType,
) -> Result<(KernelProgram, InputWeights), Box<CheckError>> {
    let weights = input_weights(kind, c)?;
    let mode = WeightMode::Dynamic(weights.clone());
    let mut g = Graph::with_weights(&format!("{}.dynamic", kind.name()), dtype, mode);
    KernelGenerator { c }.build(kind, &mut g);
    Ok((g.finish()?, weights))
}

#[derive(Debug, Error, PartialEq)]
pub enum StageError {
    #[error("the input weight `{0}` is not a layer tensor")]
    UnknownTensor(String),
    #[error("the weight `{name}` has shape {given:?}, the model's {model:?}")]
    Shape {
        name: String,
        given: Vec<usize>,
        model: [usize; 2],
    },
    #[error("layer {layer} staged from a model of {layers} layers")]
    Layer { layer: usize, layers: usize },
    #[error("a dynamic input of {found} values, its weights need {expected}")]
    InputLength { expected: usize, found: usize },
}

/// The layer tensor of a short name (`wq`, `rms_att`, ...).
fn layer_tensor(name: &str) -> Option<LayerTensor> {
    [LayerTensor::QNorm, LayerTensor::KNorm]
        .into_iter()
        .chain(LayerTensor::ALL)
        .find(|t| t.short_name() == name)
}

/// Copies layer `layer`'s weights from `params` into the block of a dynamic kernel input
/// `[C][S + P]` (S = the model's sequence length), each tensor as stored.
pub fn stage_layer_weights(
    weights: &InputWeights,
    input: &mut [f32],
    params: &Params,
    layer: usize,
) -> Result<(), StageError> {
    let c = &params.layout.config;
    let s = c.seq_len;
    if layer >= c.n_layers {
        return Err(StageError::Layer {
            layer,
            layers: c.n_layers,
        });
    }
    if input.len() != weights.input_len(s) {
        return Err(StageError::InputLength {
            expected: weights.input_len(s),
            found: input.len(),
        });
    }
    for weight in weights.tensors() {
        let t = layer_tensor(&weight.name)
            .ok_or_else(|| StageError::UnknownTensor(weight.name.clone()))?;
        let [rows, cols] = t.shape(c);
        if weight.len() != rows * cols {
            return Err(StageError::Shape {
                name: weight.name.clone(),
                given: weight.shape.clone(),
                model: [rows, cols],
            });
        }
        weights.write_tensor(input, s, weight, params.layer(layer, t));
    }
    Ok(())
}

struct KernelGenerator<'a> {
    c: &'a ModelConfig,
}

impl KernelGenerator<'_> {
    /// Generates the kernel into `g`, whatever its weight mode.
    fn build(&self, kind: KernelKind, g: &mut Graph) {
        let (input, output) = kind.layout(self.c);
        let x = g.input("x", &[1, input.channels(), 1, self.s()]);
        let parts = match kind {
            KernelKind::FwdAttn => self.fwd_attn(g, &x),
            KernelKind::FwdFfn => self.fwd_ffn(g, &x),
            KernelKind::BwdFfn => self.bwd_ffn(g, &x, &input),
            KernelKind::BwdAttn1 => self.bwd_attn1(g, &x, &input),
            KernelKind::BwdAttn2 => self.bwd_attn2(g, &x, &input),
            KernelKind::BwdQkv => self.bwd_qkv(g, &x, &input),
        };
        debug_assert_eq!(parts.len(), output.names().count());
        let out = g.concat("out", 1, &parts);
        g.output(&out);
    }

    fn s(&self) -> usize {
        self.c.seq_len
    }

    /// `W·x` for the layer matrix `t` (`[out, in]`) and `x` `[1, in, 1, S]`, or `Wᵀ·x` when
    /// `transposed`. Baked, it is a 1×1 conv with the weight baked as needed (transposed by
    /// the host for `Wᵀ`); dynamic, a matmul of the weight as stored `[1, 1, out, in]` with `x`
    /// as `[1, 1, in, S]`, the transpose done by the matmul (which also undoes a weight placed
    /// transposed in the input).
    fn linear(&self, g: &mut Graph, name: &str, t: LayerTensor, transposed: bool, x: &Var) -> Var {
        let short = t.short_name();
        let [rows, cols] = t.shape(self.c);
        if *g.weight_mode() == WeightMode::Baked {
            let (w, shape) = if transposed {
                (format!("{short}t"), [cols, rows, 1, 1])
            } else {
                (short.to_string(), [rows, cols, 1, 1])
            };
            let w = g.weight(&w, short, &shape, transposed);
            return g.conv(name, &w, x);
        }
        let (k, m) = if transposed {
            (rows, cols)
        } else {
            (cols, rows)
        };
        let (w, placed_transposed) = g.weight_matrix(short, short, rows, cols);
        let x4 = g.reshape(&format!("{name}_in"), x, &[1, 1, k, self.s()]);
        let y4 = g.matmul(
            &format!("{name}_mm"),
            &w,
            &x4,
            transposed != placed_transposed,
            false,
        );
        g.reshape(name, &y4, &[1, m, 1, self.s()])
    }

    /// Channel slice `[from, from + n)` of an input.
    fn part(&self, g: &mut Graph, x: &Var, p: &ChannelParts, name: &'static str) -> Var {
        let r = p.range(name);
        g.slice(name, x, &[0, r.start, 0, 0], &[1, r.len(), 1, self.s()])
    }

    /// RMSNorm over channels with a learned weight. The mean of squares is taken of x/√D, so
    /// that the fp16 sum cannot overflow where Σx² would (768 channels overflow at RMS ≈ 9).
    fn rmsnorm(&self, g: &mut Graph, x: &Var, t: LayerTensor, prefix: &str) -> Var {
        let d = self.c.dim;
        let inv_sqrt_d = g.scalar(&format!("{prefix}_isd"), 1.0 / (d as f64).sqrt());
        let xs = g.binary("mul", &format!("{prefix}_xs"), x, &inv_sqrt_d);
        let sq = g.binary("mul", &format!("{prefix}_sq"), &xs, &xs);
        let ms = g.reduce_sum(&format!("{prefix}_ms"), &sq, &[1]);
        let eps = g.scalar(&format!("{prefix}_eps"), self.c.norm_eps as f64);
        let mse = g.binary("add", &format!("{prefix}_mse"), &ms, &eps);
        let nhalf = g.scalar(&format!("{prefix}_nhalf"), -0.5);
        let rrms = g.binary("pow", &format!("{prefix}_rrms"), &mse, &nhalf);
        let xr = g.binary("mul", &format!("{prefix}_xr"), x, &rrms);
        let w = g.weight(&format!("{prefix}_w"), t.short_name(), &[1, d, 1, 1], false);
        g.binary("mul", &format!("{prefix}_xn"), &xr, &w)
    }

    /// RoPE tables for `channels` = heads × head_dim: channel c of head-local index d uses pair
    /// i = d / 2 and angle θ = t · theta^(−2i/head_dim) at position t. `sign` −1 gives the
    /// inverse rotation (the backward).
    fn rope_tables(&self, g: &mut Graph, channels: usize, sign: f64, tag: &str) -> (Var, Var) {
        let (hd, s) = (self.c.head_dim, self.s());
        let tables = rope_tables(channels, hd, s, self.c.rope_theta, sign);
        let (cos, sin) = (&tables.0, &tables.1);
        let shape = [1, channels, 1, s];
        let c = g.baked(
            &format!("cos_{tag}"),
            &format!("rope_cos_{tag}"),
            &shape,
            cos,
        );
        let sn = g.baked(
            &format!("sin_{tag}"),
            &format!("rope_sin_{tag}"),
            &shape,
            sin,
        );
        (c, sn)
    }

    /// Rotates channel pairs (2i, 2i+1): x·cos + (−x_odd, x_even)·sin.
    fn rope(&self, g: &mut Graph, x: &Var, tables: &(Var, Var), name: &str) -> Var {
        let (c, s) = (g.shape(x)[1], self.s());
        let pairs = g.reshape(&format!("{name}_pairs"), x, &[1, c / 2, 2, s]);
        let even = g.slice(
            &format!("{name}_even"),
            &pairs,
            &[0, 0, 0, 0],
            &[1, c / 2, 1, s],
        );
        let odd = g.slice(
            &format!("{name}_odd"),
            &pairs,
            &[0, 0, 1, 0],
            &[1, c / 2, 1, s],
        );
        let neg1 = g.scalar(&format!("{name}_neg1"), -1.0);
        let nodd = g.binary("mul", &format!("{name}_nodd"), &odd, &neg1);
        let rot = g.concat(&format!("{name}_rot"), 2, &[nodd, even]);
        let rotf = g.reshape(&format!("{name}_rotf"), &rot, &[1, c, 1, s]);
        let xc = g.binary("mul", &format!("{name}_xc"), x, &tables.0);
        let rs = g.binary("mul", &format!("{name}_rs"), &rotf, &tables.1);
        g.binary("add", name, &xc, &rs)
    }

    /// `[1, heads·hd, 1, S]` → `[1, heads, S, hd]`.
    fn to_heads(&self, g: &mut Graph, x: &Var, heads: usize, name: &str) -> Var {
        let r = g.reshape(
            &format!("{name}_r"),
            x,
            &[1, heads, self.c.head_dim, self.s()],
        );
        g.transpose_last(name, &r)
    }

    /// `[1, heads, S, hd]` → `[1, heads·hd, 1, S]`.
    fn merge_heads(&self, g: &mut Graph, x: &Var, name: &str) -> Var {
        let heads = g.shape(x)[1];
        let t = g.transpose_last(&format!("{name}_t"), x);
        g.reshape(name, &t, &[1, heads * self.c.head_dim, 1, self.s()])
    }

    /// Key/value heads `[1, KV, 1, S]` repeated for the query heads they serve, as
    /// `[1, NH, S, hd]`: query head h reads kv head h / ratio (each kv head's copies adjacent).
    /// The heads are repeated whole, in their `[S, hd]` form: flattening a head to `hd·S`
    /// would pass the ANE's axis limit (the `axis-extent` rule) at hd = 128, S = 256.
    fn kv_heads(&self, g: &mut Graph, x: &Var, name: &str) -> Var {
        let (nkv, ratio) = (self.c.n_kv_heads, self.c.gqa_ratio());
        let heads = self.to_heads(g, x, nkv, &format!("{name}_kvh"));
        if ratio == 1 {
            return heads;
        }
        let (s, hd) = (self.s(), self.c.head_dim);
        let copies: Vec<Var> = (0..nkv)
            .flat_map(|kv| {
                let head = g.slice(
                    &format!("{name}_kv{kv}"),
                    &heads,
                    &[0, kv, 0, 0],
                    &[1, 1, s, hd],
                );
                std::iter::repeat_n(head, ratio)
            })
            .collect();
        g.concat(name, 1, &copies)
    }

    /// The adjoint of [`KernelGenerator::kv_heads`]: `[1, NH, S, hd]` gradients summed over the query heads
    /// that share a kv head, as `[1, KV, 1, S]`.
    fn reduce_kv_heads(&self, g: &mut Graph, x: &Var, name: &str) -> Var {
        let (nkv, ratio) = (self.c.n_kv_heads, self.c.gqa_ratio());
        if ratio == 1 {
            return self.merge_heads(g, x, name);
        }
        let (s, hd) = (self.s(), self.c.head_dim);
        let sums: Vec<Var> = (0..nkv)
            .map(|kv| {
                let group = g.slice(
                    &format!("{name}_grp{kv}"),
                    x,
                    &[0, kv * ratio, 0, 0],
                    &[1, ratio, s, hd],
                );
                g.reduce_sum(&format!("{name}_sum{kv}"), &group, &[1])
            })
            .collect();
        let summed = g.concat(&format!("{name}_kv"), 1, &sums);
        self.merge_heads(g, &summed, name)
    }

    fn mask(&self, g: &mut Graph) -> Var {
        let s = self.s();
        let m: Vec<f32> = (0..s * s)
            .map(|i| if i % s <= i / s { 0.0 } else { -65504.0 })
            .collect();
        g.baked("mask", "mask", &[1, 1, s, s], &m)
    }

    /// Causal attention probabilities softmax(q·kᵀ/√hd + mask) over heads.
    fn probs(&self, g: &mut Graph, q: &Var, k: &Var) -> Var {
        let scores = g.matmul("scores", q, k, false, true);
        let scale = g.scalar("scale", 1.0 / (self.c.head_dim as f64).sqrt());
        let scaled = g.binary("mul", "scaled", &scores, &scale);
        let mask = self.mask(g);
        let masked = g.binary("add", "masked", &scaled, &mask);
        g.softmax("probs", &masked, -1)
    }

    fn fwd_attn(&self, g: &mut Graph, x: &Var) -> Vec<Var> {
        let (q_dim, kv_dim) = (self.c.q_dim(), self.c.kv_dim());
        let xn = self.rmsnorm(g, x, LayerTensor::RmsAtt, "n1");
        let qf = self.linear(g, "qf", LayerTensor::Wq, false, &xn);
        let kf = self.linear(g, "kf", LayerTensor::Wk, false, &xn);
        let vf = self.linear(g, "vf", LayerTensor::Wv, false, &xn);
        let tq = self.rope_tables(g, q_dim, 1.0, "q");
        let tk = if kv_dim == q_dim {
            tq.clone()
        } else {
            self.rope_tables(g, kv_dim, 1.0, "k")
        };
        let (qn, kn) = match self.c.qk_norm {
            true => (
                self.head_norm(g, &qf, LayerTensor::QNorm, "qn").y,
                self.head_norm(g, &kf, LayerTensor::KNorm, "kn").y,
            ),
            false => (qf.clone(), kf.clone()),
        };
        let qr = self.rope(g, &qn, &tq, "q_rope");
        let kr = self.rope(g, &kn, &tk, "k_rope");
        let qh = self.to_heads(g, &qr, self.c.n_heads, "qh");
        let kh = self.kv_heads(g, &kr, "kh");
        let vh = self.kv_heads(g, &vf, "vh");
        let p = self.probs(g, &qh, &kh);
        let ah = g.matmul("ah", &p, &vh, false, false);
        let attn = self.merge_heads(g, &ah, "attn");
        let o = self.linear(g, "o", LayerTensor::Wo, false, &attn);
        let mut outputs = vec![o, qr, kr, vf, attn, xn];
        if self.c.qk_norm {
            outputs.extend([qf, kf]);
        }
        outputs
    }

    fn fwd_ffn(&self, g: &mut Graph, x: &Var) -> Vec<Var> {
        let xn = self.rmsnorm(g, x, LayerTensor::RmsFfn, "n2");
        let h1 = self.linear(g, "h1", LayerTensor::W1, false, &xn);
        let h3 = self.linear(g, "h3", LayerTensor::W3, false, &xn);
        let sig = g.unary("sigmoid", "sig", &h1);
        let silu = g.binary("mul", "silu", &h1, &sig);
        let gate = g.binary("mul", "gate", &silu, &h3);
        let ffn = self.linear(g, "ffn", LayerTensor::W2, false, &gate);
        vec![ffn, h1, h3, gate, xn]
    }

    fn bwd_ffn(&self, g: &mut Graph, x: &Var, p: &ChannelParts) -> Vec<Var> {
        let dffn = self.part(g, x, p, "dffn");
        let h1 = self.part(g, x, p, "h1");
        let h3 = self.part(g, x, p, "h3");
        // dgate = W2ᵀ·dffn; gate = silu(h1)·h3.
        let dgate = self.linear(g, "dgate", LayerTensor::W2, true, &dffn);
        let sig = g.unary("sigmoid", "sig", &h1);
        let silu = g.binary("mul", "silu", &h1, &sig);
        let dh3 = g.binary("mul", "dh3", &dgate, &silu);
        // silu'(h) = σ(h)·(1 + h·(1 − σ(h))).
        let one = g.scalar("one", 1.0);
        let oms = g.binary("sub", "oms", &one, &sig);
        let homs = g.binary("mul", "homs", &h1, &oms);
        let inner = g.binary("add", "inner", &one, &homs);
        let dsilu = g.binary("mul", "dsilu", &sig, &inner);
        let dgh3 = g.binary("mul", "dgh3", &dgate, &h3);
        let dh1 = g.binary("mul", "dh1", &dgh3, &dsilu);
        let dx1 = self.linear(g, "dx1", LayerTensor::W1, true, &dh1);
        let dx3 = self.linear(g, "dx3", LayerTensor::W3, true, &dh3);
        let dx = g.binary("add", "dx", &dx1, &dx3);
        vec![dx, dh1, dh3]
    }

    fn bwd_attn1(&self, g: &mut Graph, x: &Var, p: &ChannelParts) -> Vec<Var> {
        let (nh, s) = (self.c.n_heads, self.s());
        let qr = self.part(g, x, p, "q_rope");
        let kr = self.part(g, x, p, "k_rope");
        let v = self.part(g, x, p, "v");
        let dx2 = self.part(g, x, p, "dx2");
        let da = self.linear(g, "da", LayerTensor::Wo, true, &dx2);
        let qh = self.to_heads(g, &qr, nh, "qh");
        let kh = self.kv_heads(g, &kr, "kh");
        let vh = self.kv_heads(g, &v, "vh");
        let dah = self.to_heads(g, &da, nh, "dah");
        let probs = self.probs(g, &qh, &kh);
        let dvh = g.matmul("dvh", &probs, &dah, true, false);
        let dv = self.reduce_kv_heads(g, &dvh, "dv");
        let dprobs = g.matmul("dprobs", &dah, &vh, false, true);
        let pf = g.reshape("probs_flat", &probs, &[1, nh * s, 1, s]);
        let dpf = g.reshape("dprobs_flat", &dprobs, &[1, nh * s, 1, s]);
        vec![dv, pf, dpf]
    }

    fn bwd_attn2(&self, g: &mut Graph, x: &Var, p: &ChannelParts) -> Vec<Var> {
        let (nh, s) = (self.c.n_heads, self.s());
        let pf = self.part(g, x, p, "probs");
        let dpf = self.part(g, x, p, "dprobs");
        let qr = self.part(g, x, p, "q_rope");
        let kr = self.part(g, x, p, "k_rope");
        let probs = g.reshape("probs", &pf, &[1, nh, s, s]);
        let dprobs = g.reshape("dprobs", &dpf, &[1, nh, s, s]);
        // Softmax backward: dS = P·(dP − Σ_j P·dP), then the 1/√hd scale of the scores.
        let pdp = g.binary("mul", "pdp", &probs, &dprobs);
        let rows = g.reduce_sum("rows", &pdp, &[-1]);
        let centred = g.binary("sub", "centred", &dprobs, &rows);
        let ds0 = g.binary("mul", "ds0", &probs, &centred);
        let scale = g.scalar("scale", 1.0 / (self.c.head_dim as f64).sqrt());
        let ds = g.binary("mul", "ds", &ds0, &scale);
        let qh = self.to_heads(g, &qr, nh, "qh");
        let kh = self.kv_heads(g, &kr, "kh");
        let dqh = g.matmul("dqh", &ds, &kh, false, false);
        let dkh = g.matmul("dkh", &ds, &qh, true, false);
        let dq = self.merge_heads(g, &dqh, "dq_rope");
        let dk = self.reduce_kv_heads(g, &dkh, "dk_rope");
        vec![dq, dk]
    }

    fn bwd_qkv(&self, g: &mut Graph, x: &Var, p: &ChannelParts) -> Vec<Var> {
        let (q_dim, kv_dim) = (self.c.q_dim(), self.c.kv_dim());
        let dqr = self.part(g, x, p, "dq_rope");
        let dkr = self.part(g, x, p, "dk_rope");
        let dv = self.part(g, x, p, "dv");
        // The transpose of a rotation is the rotation by −θ.
        let tq = self.rope_tables(g, q_dim, -1.0, "q");
        let tk = if kv_dim == q_dim {
            tq.clone()
        } else {
            self.rope_tables(g, kv_dim, -1.0, "k")
        };
        if !self.c.qk_norm {
            let dq = self.rope(g, &dqr, &tq, "dq");
            let dk = self.rope(g, &dkr, &tk, "dk");
            let dx = self.qkv_input_grad(g, &dq, &dk, &dv);
            return vec![dx, dq, dk];
        }
        let dqn = self.rope(g, &dqr, &tq, "dqn");
        let dkn = self.rope(g, &dkr, &tk, "dkn");
        let qf = self.part(g, x, p, "qf");
        let kf = self.part(g, x, p, "kf");
        let (dq, dqw) = self.head_norm_backward(g, &qf, &dqn, LayerTensor::QNorm, "dq");
        let (dk, dkw) = self.head_norm_backward(g, &kf, &dkn, LayerTensor::KNorm, "dk");
        let dx = self.qkv_input_grad(g, &dq, &dk, &dv);
        vec![dx, dq, dk, dqw, dkw]
    }

    /// dx = Wqᵀ·dq + Wkᵀ·dk + Wvᵀ·dv.
    fn qkv_input_grad(&self, g: &mut Graph, dq: &Var, dk: &Var, dv: &Var) -> Var {
        let dxq = self.linear(g, "dxq", LayerTensor::Wq, true, dq);
        let dxk = self.linear(g, "dxk", LayerTensor::Wk, true, dk);
        let dxv = self.linear(g, "dxv", LayerTensor::Wv, true, dv);
        let dxqk = g.binary("add", "dxqk", &dxq, &dxk);
        g.binary("add", "dx", &dxqk, &dxv)
    }

    /// Qwen3's RMSNorm of each head of `x` `[1, heads·hd, 1, S]` over its `hd` channels, with
    /// the weight `t` `[hd]` shared by the heads. As in [`KernelGenerator::rmsnorm`], the
    /// mean of squares is taken of x/√hd.
    fn head_norm(&self, g: &mut Graph, x: &Var, t: LayerTensor, prefix: &str) -> HeadNorm {
        let (hd, s) = (self.c.head_dim, self.s());
        let heads = g.shape(x)[1] / hd;
        let x4 = g.reshape(&format!("{prefix}_x4"), x, &[1, heads, hd, s]);
        let inv_sqrt = g.scalar(&format!("{prefix}_isd"), 1.0 / (hd as f64).sqrt());
        let xs = g.binary("mul", &format!("{prefix}_xs"), &x4, &inv_sqrt);
        let sq = g.binary("mul", &format!("{prefix}_sq"), &xs, &xs);
        let ms = g.reduce_sum(&format!("{prefix}_ms"), &sq, &[2]);
        let eps = g.scalar(&format!("{prefix}_eps"), self.c.norm_eps as f64);
        let mse = g.binary("add", &format!("{prefix}_mse"), &ms, &eps);
        let nhalf = g.scalar(&format!("{prefix}_nhalf"), -0.5);
        let rrms = g.binary("pow", &format!("{prefix}_rrms"), &mse, &nhalf);
        let xhat = g.binary("mul", &format!("{prefix}_xhat"), &x4, &rrms);
        let w = g.weight(
            &format!("{prefix}_w"),
            t.short_name(),
            &[1, 1, hd, 1],
            false,
        );
        let y4 = g.binary("mul", &format!("{prefix}_y4"), &xhat, &w);
        let y = g.reshape(prefix, &y4, &[1, heads * hd, 1, s]);
        HeadNorm { y, xhat, rrms, w }
    }

    /// The backward of [`KernelGenerator::head_norm`] of `x` given the gradient `dy` at its
    /// output: the gradient at `x`, r·(g − x̂·mean(g·x̂)) with g = dy·w, named `name`, and
    /// dy·x̂, whose sum over heads and positions is the weight's gradient (`{name}w`).
    fn head_norm_backward(
        &self,
        g: &mut Graph,
        x: &Var,
        dy: &Var,
        t: LayerTensor,
        name: &str,
    ) -> (Var, Var) {
        let (hd, s) = (self.c.head_dim, self.s());
        let heads = g.shape(x)[1] / hd;
        let n = self.head_norm(g, x, t, &format!("{name}_fwd"));
        let dy4 = g.reshape(&format!("{name}_dy4"), dy, &[1, heads, hd, s]);
        let gw = g.binary("mul", &format!("{name}_g"), &dy4, &n.w);
        let gx = g.binary("mul", &format!("{name}_gx"), &gw, &n.xhat);
        let sum = g.reduce_sum(&format!("{name}_sum"), &gx, &[2]);
        let inv_hd = g.scalar(&format!("{name}_ihd"), 1.0 / hd as f64);
        let mean = g.binary("mul", &format!("{name}_mean"), &sum, &inv_hd);
        let along = g.binary("mul", &format!("{name}_along"), &n.xhat, &mean);
        let centred = g.binary("sub", &format!("{name}_centred"), &gw, &along);
        let dx4 = g.binary("mul", &format!("{name}_dx4"), &centred, &n.rrms);
        let dx = g.reshape(name, &dx4, &[1, heads * hd, 1, s]);
        let dyx = g.binary("mul", &format!("{name}_dyx"), &dy4, &n.xhat);
        let dw = g.reshape(&format!("{name}w"), &dyx, &[1, heads * hd, 1, s]);
        (dx, dw)
    }
}

/// What [`KernelGenerator::head_norm`] computes: the output `[1, heads·hd, 1, S]`, and in
/// `[1, heads, hd, S]` form the normalised input, the reciprocal RMS per head and position
/// `[1, heads, 1, S]`, and the weight `[1, 1, hd, 1]`.
struct HeadNorm {
    y: Var,
    xhat: Var,
    rrms: Var,
    w: Var,
}

#[cfg(test)]
mod tests {
    use super::KernelKind;

    #[test]
    fn a_kernel_kind_indexes_its_place_in_all() {
        for (i, kind) in KernelKind::ALL.iter().enumerate() {
            assert_eq!(kind.index(), i, "{}", kind.name());
        }
    }
}
