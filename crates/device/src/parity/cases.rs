//! The cases of the parity suite, each with its naive f64 reference.

use super::{Case, Tolerance, Tolerances};
use anetrain_mil::blob::{BlobFile, WeightFiles};
use anetrain_mil::{
    examples, Arg, CheckError, DType, Dialect, FloatLit, FunctionBuilder, Literal, Program, Style,
    Type, Var,
};
use half::f16;

/// A case whose program is built op by op, or the checker's word on the op that is wrong.
type Built = Result<Case, Box<CheckError>>;

/// Every case of the suite, in a fixed order with fixed data.
///
/// # Errors
/// If a program of the suite does not type-check: a fault of the suite, not of a device.
pub fn cases() -> Result<Vec<Case>, Box<CheckError>> {
    let mut all = vec![
        spec_example_a_conv_with_fp32_io(),
        spec_example_b_dynamic_matmul(),
        spec_example_c_final_rmsnorm(),
    ];
    all.extend(rmsnorm_at_other_widths());
    all.extend(conv_at_channel_counts());
    for built in [
        attention_scores_matmul_transposed_and_scaled,
        causal_softmax_with_a_constant_mask,
        causal_attention_end_to_end,
        concat_and_slice_pack_along_channels,
        concat_and_slice_pack_along_the_spatial_axis,
        per_head_rmsnorm,
    ] {
        all.push(built()?);
    }
    Ok(all)
}

/// Kernels a few roundings deep whose outputs are of order one: fp16 mode measured at most
/// 9e-4 off the reference (fp16's step at 2 is 2e-3).
const SHALLOW: Tolerances = Tolerances {
    cpu_fp32: Tolerance::new(1e-5, 1e-5),
    cpu_fp16: Tolerance::new(1e-3, 2e-3),
    device: Tolerance::new(1e-2, 1e-2),
};

// ---------------------------------------------------------------------------------------------
// Building programs and data.

/// xorshift64*: deterministic test data.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in [-1, 1).
    fn uniform(&mut self) -> f32 {
        ((self.next_u64() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.uniform() * scale).collect()
    }
}

/// Builds a function op by op, each op's output type inferred by the checker, so that a
/// program states only what it computes. Arguments are written in alphabetical order, as the
/// original generators write them. The first op that does not type-check is kept and
/// returned by [`ProgramBuilder::finish`], so that building reads as a list of ops.
struct ProgramBuilder {
    builder: FunctionBuilder,
    first_error: Option<Box<CheckError>>,
}

impl ProgramBuilder {
    fn new() -> ProgramBuilder {
        ProgramBuilder {
            builder: FunctionBuilder::new("main", "ios18"),
            first_error: None,
        }
    }

    fn input(&mut self, name: &str, dtype: DType, shape: &[usize]) -> Var {
        self.builder
            .input(name, Type::tensor(dtype, shape.to_vec()))
    }

    fn constant(&mut self, name: &str, value: Literal) -> Var {
        self.builder.constant(name, value)
    }

    /// `name = kind(args)`, its type inferred.
    fn op(&mut self, kind: &str, name: &str, mut args: Vec<(&str, Arg)>) -> Var {
        args.sort_by(|a, b| a.0.cmp(b.0));
        match self.builder.typed_op(kind, name, args) {
            Ok(v) => v,
            Err(e) => {
                self.first_error.get_or_insert(e);
                Var(name.to_string())
            }
        }
    }

    fn finish(mut self, output: &Var) -> Result<Program, Box<CheckError>> {
        if let Some(e) = self.first_error {
            return Err(e);
        }
        self.builder.output(output);
        Ok(Program::single(
            Dialect::Ios18,
            Style::Compact,
            self.builder.finish(),
        ))
    }
}

// ---------------------------------------------------------------------------------------------
// Naive references and test data.

/// Values as an fp16 weight blob stores them.
fn fp16_values(values: &[f32]) -> Vec<f64> {
    values.iter().map(|&v| f16::from_f32(v).to_f64()).collect()
}

/// `y[o][t] = Σ_i w[o][i]·x[i][t]` for `w` of `[out][in]` and `x` of `[in][s]`.
fn matrix_times(w: &[f64], x: &[f64], out: usize, inp: usize, s: usize) -> Vec<f64> {
    let mut y = vec![0.0; out * s];
    for o in 0..out {
        for i in 0..inp {
            let wv = w[o * inp + i];
            for t in 0..s {
                y[o * s + t] += wv * x[i * s + t];
            }
        }
    }
    y
}

fn softmax_in_place(row: &mut [f64]) {
    let max = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let mut sum = 0.0;
    for v in row.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    for v in row.iter_mut() {
        *v /= sum;
    }
}

fn ints(values: &[usize]) -> Literal {
    let values: Vec<i32> = values.iter().map(|&v| v as i32).collect();
    Literal::int32_tensor(&values)
}

fn fp16_literal(value: f64) -> Literal {
    Literal::float(DType::Fp16, FloatLit::fixed6(value))
}

/// The value an fp16 literal written with `%f` has.
fn fixed6(value: f64) -> f64 {
    FloatLit::fixed6(value).value
}

// ---------------------------------------------------------------------------------------------
// The spec's example programs.

fn spec_example_a_conv_with_fp32_io() -> Case {
    let mut rng = Rng::new(1);
    let w = rng.vec(64 * 64, 0.125);
    let mut weights = WeightFiles::new();
    weights.insert_blob("@model_path/weights/weight.bin", &BlobFile::fp16(&w));
    let w = fp16_values(&w);
    Case {
        name: "spec_example_a".into(),
        program: examples::conv_fp32_io(),
        weights,
        inputs: vec![rng.vec(64 * 32, 1.0)],
        reference: Box::new(move |x| matrix_times(&w, &x[0], 64, 64, 32)),
        tolerances: SHALLOW,
        conv_channels: Some(64),
    }
}

fn spec_example_b_dynamic_matmul() -> Case {
    let (ic, oc, s) = (64, 128, 32);
    let mut rng = Rng::new(2);
    Case {
        name: "spec_example_b".into(),
        program: examples::dynamic_matmul(ic, oc, s),
        weights: WeightFiles::new(),
        inputs: vec![rng.vec(ic * (s + oc), 0.5)],
        reference: Box::new(move |x| {
            let row = s + oc;
            let mut y = vec![0.0; oc * s];
            for o in 0..oc {
                for t in 0..s {
                    y[o * s + t] = (0..ic)
                        .map(|d| x[0][d * row + s + o] * x[0][d * row + t])
                        .sum();
                }
            }
            y
        }),
        tolerances: SHALLOW,
        conv_channels: None,
    }
}

/// RMSNorm as the spec writes it: `x · (Σ_c x²·invd + eps)^-0.5 · w`, with `invd` the
/// printed literal (`0.001302` for 768 channels).
/// RMSNorms with a weight: outputs reach about 4 (|x| ≤ 1 over an RMS near 0.58, times
/// w ≤ 1.5); fp16 rounds the sum of squares, its scaling, the power and two products.
const NORM: Tolerances = Tolerances {
    cpu_fp32: Tolerance::new(1e-5, 1e-5),
    cpu_fp16: Tolerance::new(2e-3, 3e-3),
    device: Tolerance::new(2e-2, 1e-2),
};

fn rmsnorm_case(name: &str, d: usize, s: usize, seed: u64) -> Case {
    let mut rng = Rng::new(seed);
    let w: Vec<f32> = (0..d).map(|_| 1.0 + 0.5 * rng.uniform()).collect();
    let mut weights = WeightFiles::new();
    weights.insert_blob("@model_path/weights/rms_w.bin", &BlobFile::fp16(&w));
    let w = fp16_values(&w);
    let invd = fixed6(1.0 / d as f64);
    Case {
        name: name.into(),
        program: examples::final_rmsnorm(d, s),
        weights,
        inputs: vec![rng.vec(d * s, 1.0)],
        reference: Box::new(move |x| {
            let x = &x[0];
            let mut out = vec![0.0; d * s];
            for t in 0..s {
                let ss: f64 = (0..d).map(|c| x[c * s + t] * x[c * s + t]).sum();
                let r = (ss * invd + 1e-5).powf(-0.5);
                for c in 0..d {
                    out[c * s + t] = x[c * s + t] * r * w[c];
                }
            }
            out
        }),
        tolerances: NORM,
        conv_channels: None,
    }
}

fn spec_example_c_final_rmsnorm() -> Case {
    rmsnorm_case("spec_example_c d=768 s=256", 768, 256, 3)
}

fn rmsnorm_at_other_widths() -> Vec<Case> {
    [(64, 32), (512, 64)]
        .into_iter()
        .map(|(d, s)| rmsnorm_case(&format!("rmsnorm d={d} s={s}"), d, s, d as u64))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// A single conv at the channel counts of the models and the benchmarks.

fn conv_at_channel_counts() -> Vec<Case> {
    let s = 64;
    let case = |c: usize| {
        let mut rng = Rng::new(c as u64);
        let w = rng.vec(c * c, 1.0 / (c as f32).sqrt());
        let mut weights = WeightFiles::new();
        weights.insert_blob("@model_path/weights/w0.bin", &BlobFile::fp16(&w));
        let w = fp16_values(&w);
        Case {
            name: format!("conv c={c} s={s}"),
            program: examples::conv_chain(1, c, s),
            weights,
            inputs: vec![rng.vec(c * s, 1.0)],
            reference: Box::new(move |x| matrix_times(&w, &x[0], c, c, s)),
            tolerances: SHALLOW,
            conv_channels: Some(c),
        }
    };
    [64, 128, 256, 512, 768].into_iter().map(case).collect()
}

// ---------------------------------------------------------------------------------------------
// Attention, written out as the training kernels write it (the SDPA op ignores its mask on the
// ANE): matmul with a transpose, scale, constant causal mask, softmax, matmul.

const HEADS: usize = 2;
const HEAD_DIM: usize = 32;
const SEQ: usize = 32;
const DIM: usize = HEADS * HEAD_DIM;
const MASK_PATH: &str = "@model_path/weights/mask.bin";

/// The causal mask of spec 3.5: 0 where the key is at or before the query, −65504 after.
fn causal_mask() -> Vec<f32> {
    (0..SEQ * SEQ)
        .map(|i| if i % SEQ <= i / SEQ { 0.0 } else { -65504.0 })
        .collect()
}

fn mask_weights() -> WeightFiles {
    let mut weights = WeightFiles::new();
    weights.insert_blob(MASK_PATH, &BlobFile::fp16(&causal_mask()));
    weights
}

/// `1/sqrt(HD)` as the generators print it.
fn score_scale() -> f64 {
    fixed6(1.0 / (HEAD_DIM as f64).sqrt())
}

/// Channels `[from, from + DIM)` of a `[1, C, 1, SEQ]` value.
fn channel_slice(b: &mut ProgramBuilder, x: &Var, name: &str, from: usize) -> Var {
    let begin = b.constant(&format!("{name}_b"), ints(&[0, from, 0, 0]));
    let size = b.constant(&format!("{name}_s"), ints(&[1, DIM, 1, SEQ]));
    b.op(
        "slice_by_size",
        name,
        vec![
            ("x", x.into()),
            ("begin", (&begin).into()),
            ("size", (&size).into()),
        ],
    )
}

/// `[1, DIM, 1, SEQ]` → `[1, HEADS, SEQ, HEAD_DIM]`.
fn split_heads(b: &mut ProgramBuilder, x: &Var, name: &str) -> Var {
    let shape = b.constant(&format!("{name}_sh"), ints(&[1, HEADS, HEAD_DIM, SEQ]));
    let r = b.op(
        "reshape",
        &format!("{name}_r"),
        vec![("shape", (&shape).into()), ("x", x.into())],
    );
    let perm = b.constant(&format!("{name}_pm"), ints(&[0, 1, 3, 2]));
    b.op(
        "transpose",
        name,
        vec![("perm", (&perm).into()), ("x", (&r).into())],
    )
}

/// `matmul(q, k, transpose_y=true) · 1/sqrt(HD)`: `[1, HEADS, SEQ, SEQ]`.
fn scaled_scores(b: &mut ProgramBuilder, q: &Var, k: &Var) -> Var {
    let tx = b.constant("tx", Literal::bool(false));
    let ty = b.constant("ty", Literal::bool(true));
    let raw = b.op(
        "matmul",
        "sc1",
        vec![
            ("transpose_x", (&tx).into()),
            ("transpose_y", (&ty).into()),
            ("x", q.into()),
            ("y", k.into()),
        ],
    );
    let scale = b.constant("scv", fp16_literal(1.0 / (HEAD_DIM as f64).sqrt()));
    b.op(
        "mul",
        "sc2",
        vec![("x", (&raw).into()), ("y", (&scale).into())],
    )
}

/// `softmax(scores + mask, axis=-1)`, the mask a BLOBFILE constant.
fn masked_softmax(b: &mut ProgramBuilder, scores: &Var) -> Var {
    let mask = b.constant(
        "cm",
        Literal::Blob {
            dtype: DType::Fp16,
            shape: vec![1, 1, SEQ, SEQ],
            path: MASK_PATH.into(),
            offset: 64,
        },
    );
    let masked = b.op(
        "add",
        "ms",
        vec![("x", scores.into()), ("y", (&mask).into())],
    );
    let axis = b.constant("sax", Literal::int32(-1));
    b.op(
        "softmax",
        "aw",
        vec![("axis", (&axis).into()), ("x", (&masked).into())],
    )
}

/// `[1, HEADS, SEQ, SEQ]` → `[1, HEADS·SEQ, 1, SEQ]` (the spec's "score channels").
fn as_score_channels(b: &mut ProgramBuilder, x: &Var) -> Var {
    let shape = b.constant("osh", ints(&[1, HEADS * SEQ, 1, SEQ]));
    b.op(
        "reshape",
        "out",
        vec![("shape", (&shape).into()), ("x", x.into())],
    )
}

/// Query `(h, t, d)` of a `[1, C, 1, SEQ]` buffer whose channels from `from` hold the heads.
fn head_value(x: &[f64], from: usize, h: usize, t: usize, d: usize) -> f64 {
    x[(from + h * HEAD_DIM + d) * SEQ + t]
}

/// Reference scores `[h][t][t2]`, scaled, from q at channel 0 and k at channel `DIM`.
fn reference_scores(x: &[f64], scale: f64) -> Vec<f64> {
    let mut scores = vec![0.0; HEADS * SEQ * SEQ];
    for h in 0..HEADS {
        for t in 0..SEQ {
            for t2 in 0..SEQ {
                let dot: f64 = (0..HEAD_DIM)
                    .map(|d| head_value(x, 0, h, t, d) * head_value(x, DIM, h, t2, d))
                    .sum();
                scores[(h * SEQ + t) * SEQ + t2] = dot * scale;
            }
        }
    }
    scores
}

/// Reference `softmax(scores + mask)` over each row.
fn reference_masked_softmax(scores: &[f64]) -> Vec<f64> {
    let mask = causal_mask();
    let mut probs = scores.to_vec();
    for (r, row) in probs.chunks_mut(SEQ).enumerate() {
        let t = r % SEQ;
        for (t2, v) in row.iter_mut().enumerate() {
            *v += f64::from(mask[t * SEQ + t2]);
        }
        softmax_in_place(row);
    }
    probs
}

fn attention_scores_matmul_transposed_and_scaled() -> Built {
    let mut b = ProgramBuilder::new();
    let x = b.input("x", DType::Fp16, &[1, 2 * DIM, 1, SEQ]);
    let qf = channel_slice(&mut b, &x, "qf", 0);
    let kf = channel_slice(&mut b, &x, "kf", DIM);
    let q = split_heads(&mut b, &qf, "q");
    let k = split_heads(&mut b, &kf, "k");
    let scores = scaled_scores(&mut b, &q, &k);
    let out = as_score_channels(&mut b, &scores);
    let mut rng = Rng::new(5);
    Ok(Case {
        name: "attention scores".into(),
        program: b.finish(&out)?,
        weights: WeightFiles::new(),
        inputs: vec![rng.vec(2 * DIM * SEQ, 1.0)],
        reference: Box::new(|x| reference_scores(&x[0], score_scale())),
        tolerances: SHALLOW,
        conv_channels: None,
    })
}

fn causal_softmax_with_a_constant_mask() -> Built {
    let mut b = ProgramBuilder::new();
    let x = b.input("x", DType::Fp16, &[1, HEADS * SEQ, 1, SEQ]);
    let shape = b.constant("ish", ints(&[1, HEADS, SEQ, SEQ]));
    let scores = b.op(
        "reshape",
        "scores",
        vec![("shape", (&shape).into()), ("x", (&x).into())],
    );
    let probs = masked_softmax(&mut b, &scores);
    let out = as_score_channels(&mut b, &probs);
    let mut rng = Rng::new(6);
    Ok(Case {
        name: "causal softmax".into(),
        program: b.finish(&out)?,
        weights: mask_weights(),
        inputs: vec![rng.vec(HEADS * SEQ * SEQ, 4.0)],
        reference: Box::new(|x| reference_masked_softmax(&x[0])),
        tolerances: SHALLOW,
        conv_channels: None,
    })
}

fn causal_attention_end_to_end() -> Built {
    let mut b = ProgramBuilder::new();
    let x = b.input("x", DType::Fp16, &[1, 3 * DIM, 1, SEQ]);
    let qf = channel_slice(&mut b, &x, "qf", 0);
    let kf = channel_slice(&mut b, &x, "kf", DIM);
    let vf = channel_slice(&mut b, &x, "vf", 2 * DIM);
    let q = split_heads(&mut b, &qf, "q");
    let k = split_heads(&mut b, &kf, "k");
    let v = split_heads(&mut b, &vf, "v");
    let scores = scaled_scores(&mut b, &q, &k);
    let probs = masked_softmax(&mut b, &scores);
    let f = b.constant("bF", Literal::bool(false));
    let a4 = b.op(
        "matmul",
        "a4",
        vec![
            ("transpose_x", (&f).into()),
            ("transpose_y", (&f).into()),
            ("x", (&probs).into()),
            ("y", (&v).into()),
        ],
    );
    let perm = b.constant("pm", ints(&[0, 1, 3, 2]));
    let at = b.op(
        "transpose",
        "at",
        vec![("perm", (&perm).into()), ("x", (&a4).into())],
    );
    let shape = b.constant("osh", ints(&[1, DIM, 1, SEQ]));
    let out = b.op(
        "reshape",
        "af",
        vec![("shape", (&shape).into()), ("x", (&at).into())],
    );
    let mut rng = Rng::new(7);
    Ok(Case {
        name: "causal attention".into(),
        program: b.finish(&out)?,
        weights: mask_weights(),
        inputs: vec![rng.vec(3 * DIM * SEQ, 1.0)],
        reference: Box::new(|x| {
            let x = &x[0];
            let probs = reference_masked_softmax(&reference_scores(x, score_scale()));
            let mut out = vec![0.0; DIM * SEQ];
            for h in 0..HEADS {
                for t in 0..SEQ {
                    for d in 0..HEAD_DIM {
                        out[(h * HEAD_DIM + d) * SEQ + t] = (0..SEQ)
                            .map(|t2| {
                                probs[(h * SEQ + t) * SEQ + t2] * head_value(x, 2 * DIM, h, t2, d)
                            })
                            .sum();
                    }
                }
            }
            out
        }),
        tolerances: SHALLOW,
        conv_channels: None,
    })
}

// ---------------------------------------------------------------------------------------------
// Packing several logical tensors into the one input and the one output of a kernel.

/// Qwen3's q/k norm as the kernels compute it: heads `[1, HEADS, HEAD_DIM, SEQ]` RMS-normalised
/// over axis 2 (the mean of squares taken of x/√hd), times one weight `[1, 1, HEAD_DIM, 1]`
/// broadcast over heads and positions. A reduction over the third axis of a rank-4 tensor and
/// that broadcast occur in no other case.
fn per_head_rmsnorm() -> Built {
    const W_PATH: &str = "@model_path/weights/head_norm_w.bin";
    let mut b = ProgramBuilder::new();
    let x = b.input("x", DType::Fp16, &[1, DIM, 1, SEQ]);
    let shape = b.constant("hsh", ints(&[1, HEADS, HEAD_DIM, SEQ]));
    let x4 = b.op(
        "reshape",
        "x4",
        vec![("shape", (&shape).into()), ("x", (&x).into())],
    );
    let isd = b.constant("isd", fp16_literal(1.0 / (HEAD_DIM as f64).sqrt()));
    let xs = b.op("mul", "xs", vec![("x", (&x4).into()), ("y", (&isd).into())]);
    let sq = b.op("mul", "sq", vec![("x", (&xs).into()), ("y", (&xs).into())]);
    let axes = b.constant("rax", Literal::int32_tensor(&[2]));
    let keep = b.constant("rkd", Literal::bool(true));
    let ms = b.op(
        "reduce_sum",
        "ms",
        vec![
            ("axes", (&axes).into()),
            ("keep_dims", (&keep).into()),
            ("x", (&sq).into()),
        ],
    );
    let eps = b.constant("eps", fp16_literal(1e-5));
    let mse = b.op(
        "add",
        "mse",
        vec![("x", (&ms).into()), ("y", (&eps).into())],
    );
    let nhalf = b.constant("nh", fp16_literal(-0.5));
    let rrms = b.op(
        "pow",
        "rr",
        vec![("x", (&mse).into()), ("y", (&nhalf).into())],
    );
    let xhat = b.op(
        "mul",
        "xh",
        vec![("x", (&x4).into()), ("y", (&rrms).into())],
    );
    let w = b.constant(
        "hw",
        Literal::Blob {
            dtype: DType::Fp16,
            shape: vec![1, 1, HEAD_DIM, 1],
            path: W_PATH.into(),
            offset: 64,
        },
    );
    let y4 = b.op("mul", "y4", vec![("x", (&xhat).into()), ("y", (&w).into())]);
    let flat = b.constant("fsh", ints(&[1, DIM, 1, SEQ]));
    let out = b.op(
        "reshape",
        "out",
        vec![("shape", (&flat).into()), ("x", (&y4).into())],
    );
    let mut rng = Rng::new(8);
    let w: Vec<f32> = (0..HEAD_DIM).map(|_| 1.0 + 0.5 * rng.uniform()).collect();
    let mut weights = WeightFiles::new();
    weights.insert_blob(W_PATH, &BlobFile::fp16(&w));
    let w = fp16_values(&w);
    Ok(Case {
        name: "per-head rmsnorm".into(),
        program: b.finish(&out)?,
        weights,
        inputs: vec![rng.vec(DIM * SEQ, 2.0)],
        reference: Box::new(move |x| {
            let x = &x[0];
            let mut out = vec![0.0; DIM * SEQ];
            for h in 0..HEADS {
                for t in 0..SEQ {
                    let at = |d: usize| (h * HEAD_DIM + d) * SEQ + t;
                    let ss: f64 = (0..HEAD_DIM).map(|d| x[at(d)] * x[at(d)]).sum();
                    let r = (ss / HEAD_DIM as f64 + 1e-5).powf(-0.5);
                    for d in 0..HEAD_DIM {
                        out[at(d)] = x[at(d)] * r * w[d];
                    }
                }
            }
            out
        }),
        tolerances: NORM,
        conv_channels: None,
    })
}

fn concat_and_slice_pack_along_channels() -> Built {
    let (c, s) = (64, 32);
    let mut b = ProgramBuilder::new();
    let x = b.input("x", DType::Fp16, &[1, 2 * c, 1, s]);
    let size = b.constant("sz", ints(&[1, c, 1, s]));
    let b0 = b.constant("b0", ints(&[0, 0, 0, 0]));
    let b1 = b.constant("b1", ints(&[0, c, 0, 0]));
    let slice = |b: &mut ProgramBuilder, name: &str, begin: &Var| {
        b.op(
            "slice_by_size",
            name,
            vec![
                ("x", (&x).into()),
                ("begin", begin.into()),
                ("size", (&size).into()),
            ],
        )
    };
    let lo = slice(&mut b, "lo", &b0);
    let hi = slice(&mut b, "hi", &b1);
    let sum = b.op("add", "sum", vec![("x", (&lo).into()), ("y", (&hi).into())]);
    let prod = b.op(
        "mul",
        "prod",
        vec![("x", (&lo).into()), ("y", (&hi).into())],
    );
    let axis = b.constant("cax", Literal::int32(1));
    let interleave = b.constant("cid", Literal::bool(false));
    let values: &[Var] = &[sum, prod, lo];
    let out = b.op(
        "concat",
        "out",
        vec![
            ("axis", (&axis).into()),
            ("interleave", (&interleave).into()),
            ("values", Arg::from(values)),
        ],
    );
    let mut rng = Rng::new(8);
    Ok(Case {
        name: "concat/slice along channels".into(),
        program: b.finish(&out)?,
        weights: WeightFiles::new(),
        inputs: vec![rng.vec(2 * c * s, 1.0)],
        reference: Box::new(move |x| {
            let (lo, hi) = x[0].split_at(c * s);
            let sum = lo.iter().zip(hi).map(|(a, b)| a + b);
            let prod = lo.iter().zip(hi).map(|(a, b)| a * b);
            sum.chain(prod).chain(lo.iter().copied()).collect()
        }),
        tolerances: SHALLOW,
        conv_channels: None,
    })
}

fn concat_and_slice_pack_along_the_spatial_axis() -> Built {
    let (c, s) = (64, 32);
    let mut b = ProgramBuilder::new();
    let x = b.input("x", DType::Fp16, &[1, c, 1, 2 * s]);
    let size = b.constant("sz", ints(&[1, c, 1, s]));
    let b0 = b.constant("b0", ints(&[0, 0, 0, 0]));
    let b1 = b.constant("b1", ints(&[0, 0, 0, s]));
    let slice = |b: &mut ProgramBuilder, name: &str, begin: &Var| {
        b.op(
            "slice_by_size",
            name,
            vec![
                ("x", (&x).into()),
                ("begin", begin.into()),
                ("size", (&size).into()),
            ],
        )
    };
    let left = slice(&mut b, "left", &b0);
    let right = slice(&mut b, "right", &b1);
    let diff = b.op(
        "sub",
        "diff",
        vec![("x", (&left).into()), ("y", (&right).into())],
    );
    let axis = b.constant("cax", Literal::int32(3));
    let interleave = b.constant("cid", Literal::bool(false));
    let values: &[Var] = &[right, diff];
    let out = b.op(
        "concat",
        "out",
        vec![
            ("axis", (&axis).into()),
            ("interleave", (&interleave).into()),
            ("values", Arg::from(values)),
        ],
    );
    let mut rng = Rng::new(9);
    Ok(Case {
        name: "concat/slice along the spatial axis".into(),
        program: b.finish(&out)?,
        weights: WeightFiles::new(),
        inputs: vec![rng.vec(c * 2 * s, 1.0)],
        reference: Box::new(move |x| {
            let x = &x[0];
            let mut out = vec![0.0; c * 2 * s];
            for ch in 0..c {
                for t in 0..s {
                    let (l, r) = (x[ch * 2 * s + t], x[ch * 2 * s + s + t]);
                    out[ch * 2 * s + t] = r;
                    out[ch * 2 * s + s + t] = l - r;
                }
            }
            out
        }),
        tolerances: SHALLOW,
        conv_channels: None,
    })
}
