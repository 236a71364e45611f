//! Kernel parity: each kernel test is written once and runs on every device present.
//!
//! * the CPU device in fp32 and in fp16 mode, always, each against a naive f64 reference;
//! * the ANE, when `AneDevice::open()` succeeds, against the CPU device's fp16 result (the
//!   mode that rounds like the ANE). Elsewhere the ANE half reports itself skipped, by name,
//!   on stderr (`parity[ane] <case>: skipped: <reason>`); set `ANETRAIN_REQUIRE_ANE=1` to make
//!   a missing ANE fail the suite instead, on a Mac where it should be there.
//!
//! The ANE tolerances are a first guess for fp16 hardware (fp16 storage between ops,
//! accumulation whose width is not documented): loose enough for that, tight enough to catch a
//! wrong layout, a wrong weight or a dropped mask, whose errors are of order one.

mod common;

use anetrain_device::{AneConfig, AneDevice, CpuDevice, Device, DeviceError, NumericMode};
use anetrain_mil::blob::{BlobFile, WeightFiles};
use anetrain_mil::{examples, Arg, DType, FloatLit, Literal, Program, Var};
use common::{assert_close, ProgramBuilder, Rng};
use half::f16;
use std::io::Write;
use std::sync::OnceLock;

// ---------------------------------------------------------------------------------------------
// The devices.

/// The ANE of this machine, opened once for the whole suite, or why there is none.
fn ane() -> Result<&'static AneDevice, &'static str> {
    static ANE: OnceLock<Result<AneDevice, String>> = OnceLock::new();
    let opened = ANE.get_or_init(|| AneDevice::open().map_err(|e| e.to_string()));
    match opened {
        Ok(device) => Ok(device),
        Err(reason) if std::env::var_os("ANETRAIN_REQUIRE_ANE").is_some() => {
            panic!("ANETRAIN_REQUIRE_ANE is set, but the ANE is unavailable: {reason}")
        }
        Err(reason) => Err(reason),
    }
}

/// Says that the ANE half of a case did not run, on stderr as the test runs: written to the
/// stream directly, since the harness captures only `eprintln!`.
fn skipped(case: &str, reason: &str) {
    let _ = writeln!(
        std::io::stderr().lock(),
        "parity[ane] {case}: skipped: {reason}"
    );
}

fn eval_on(
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

// ---------------------------------------------------------------------------------------------
// A case and how it is checked.

/// `(atol, rtol)`: |got - want| <= atol + rtol·|want|.
type Tol = (f64, f64);

struct Tolerance {
    cpu_fp32: Tol,
    cpu_fp16: Tol,
    ane: Tol,
}

/// Kernels a few roundings deep whose outputs are of order one: fp16 mode measured at most
/// 9e-4 off the reference here (fp16's step at 2 is 2e-3).
const SHALLOW: Tolerance = Tolerance {
    cpu_fp32: (1e-5, 1e-5),
    cpu_fp16: (1e-3, 2e-3),
    ane: (1e-2, 1e-2),
};

/// The naive f64 result of a case's single output, from its inputs as the device sees them.
type Reference = Box<dyn Fn(&[Vec<f64>]) -> Vec<f64>>;

struct Case {
    name: String,
    program: Program,
    weights: WeightFiles,
    /// One buffer per program input.
    inputs: Vec<Vec<f32>>,
    reference: Reference,
    tolerance: Tolerance,
    /// Conv channel count, for chips that compile only some.
    conv_channels: Option<usize>,
}

/// The inputs as f64, rounded to fp16 first when the device computes in fp16 (every program
/// here declares fp16 inputs or casts to fp16 at once).
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

/// Runs a case on the CPU device in both modes and on the ANE where there is one.
fn check_everywhere(case: &Case) {
    let mut cpu_fp16 = Vec::new();
    for mode in [NumericMode::Fp32, NumericMode::Fp16] {
        let got = eval_on(
            &CpuDevice::new(mode),
            &case.program,
            &case.weights,
            &case.inputs,
        )
        .unwrap_or_else(|e| panic!("parity[cpu-{mode}] {}: {e}", case.name));
        let want = (case.reference)(&inputs_as_seen(&case.inputs, mode));
        let (atol, rtol) = match mode {
            NumericMode::Fp32 => case.tolerance.cpu_fp32,
            NumericMode::Fp16 => case.tolerance.cpu_fp16,
        };
        assert_close(
            &format!("parity[cpu-{mode}] {}", case.name),
            &got,
            &want,
            atol,
            rtol,
        );
        if mode == NumericMode::Fp16 {
            cpu_fp16 = got.iter().map(|&v| f64::from(v)).collect();
        }
    }
    let ane = match ane() {
        Ok(ane) => ane,
        Err(reason) => return skipped(&case.name, reason),
    };
    if let Some(channels) = case.conv_channels {
        let refusals = ane.ane_info().rules().refusals(&case.program);
        if let Some(refusal) = refusals.ok().and_then(|r| r.into_iter().next()) {
            let reason = format!("{channels}-channel convs: {refusal}");
            return skipped(&case.name, &reason);
        }
    }
    let got = eval_on(ane, &case.program, &case.weights, &case.inputs)
        .unwrap_or_else(|e| panic!("parity[ane] {}: {e}", case.name));
    let (atol, rtol) = case.tolerance.ane;
    assert_close(
        &format!("parity[ane] {} (against cpu-fp16)", case.name),
        &got,
        &cpu_fp16,
        atol,
        rtol,
    );
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

#[test]
fn spec_example_a_conv_with_fp32_io() {
    let mut rng = Rng::new(1);
    let w = rng.vec(64 * 64, 0.125);
    let mut weights = WeightFiles::new();
    weights.insert_blob("@model_path/weights/weight.bin", &BlobFile::fp16(&w));
    let w = fp16_values(&w);
    check_everywhere(&Case {
        name: "spec_example_a".into(),
        program: examples::conv_fp32_io(),
        weights,
        inputs: vec![rng.vec(64 * 32, 1.0)],
        reference: Box::new(move |x| matrix_times(&w, &x[0], 64, 64, 32)),
        tolerance: SHALLOW,
        conv_channels: Some(64),
    });
}

#[test]
fn spec_example_b_dynamic_matmul() {
    let (ic, oc, s) = (64, 128, 32);
    let mut rng = Rng::new(2);
    check_everywhere(&Case {
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
        tolerance: SHALLOW,
        conv_channels: None,
    });
}

/// RMSNorm as the spec writes it: `x · (Σ_c x²·invd + eps)^-0.5 · w`, with `invd` the
/// printed literal (`0.001302` for 768 channels).
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
        // Outputs reach about 4 (|x| ≤ 1 over an RMS near 0.58, times w ≤ 1.5); fp16 rounds
        // the sum of squares, its scaling, the power and two products.
        tolerance: Tolerance {
            cpu_fp32: (1e-5, 1e-5),
            cpu_fp16: (2e-3, 3e-3),
            ane: (2e-2, 1e-2),
        },
        conv_channels: None,
    }
}

#[test]
fn spec_example_c_final_rmsnorm() {
    check_everywhere(&rmsnorm_case("spec_example_c d=768 s=256", 768, 256, 3));
}

#[test]
fn rmsnorm_at_other_widths() {
    for (d, s) in [(64, 32), (512, 64)] {
        check_everywhere(&rmsnorm_case(
            &format!("rmsnorm d={d} s={s}"),
            d,
            s,
            d as u64,
        ));
    }
}

// ---------------------------------------------------------------------------------------------
// A single conv at the channel counts of the models and the benchmarks.

#[test]
fn conv_at_channel_counts() {
    let s = 64;
    for c in [64, 128, 256, 512, 768] {
        let mut rng = Rng::new(c as u64);
        let w = rng.vec(c * c, 1.0 / (c as f32).sqrt());
        let mut weights = WeightFiles::new();
        weights.insert_blob("@model_path/weights/w0.bin", &BlobFile::fp16(&w));
        let w = fp16_values(&w);
        check_everywhere(&Case {
            name: format!("conv c={c} s={s}"),
            program: examples::conv_chain(1, c, s),
            weights,
            inputs: vec![rng.vec(c * s, 1.0)],
            reference: Box::new(move |x| matrix_times(&w, &x[0], c, c, s)),
            tolerance: SHALLOW,
            conv_channels: Some(c),
        });
    }
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

#[test]
fn attention_scores_matmul_transposed_and_scaled() {
    let mut b = ProgramBuilder::new();
    let x = b.input("x", DType::Fp16, &[1, 2 * DIM, 1, SEQ]);
    let qf = channel_slice(&mut b, &x, "qf", 0);
    let kf = channel_slice(&mut b, &x, "kf", DIM);
    let q = split_heads(&mut b, &qf, "q");
    let k = split_heads(&mut b, &kf, "k");
    let scores = scaled_scores(&mut b, &q, &k);
    let out = as_score_channels(&mut b, &scores);
    let mut rng = Rng::new(5);
    check_everywhere(&Case {
        name: "attention scores".into(),
        program: b.finish(&out),
        weights: WeightFiles::new(),
        inputs: vec![rng.vec(2 * DIM * SEQ, 1.0)],
        reference: Box::new(|x| reference_scores(&x[0], score_scale())),
        tolerance: SHALLOW,
        conv_channels: None,
    });
}

#[test]
fn causal_softmax_with_a_constant_mask() {
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
    check_everywhere(&Case {
        name: "causal softmax".into(),
        program: b.finish(&out),
        weights: mask_weights(),
        inputs: vec![rng.vec(HEADS * SEQ * SEQ, 4.0)],
        reference: Box::new(|x| reference_masked_softmax(&x[0])),
        tolerance: SHALLOW,
        conv_channels: None,
    });
}

#[test]
fn causal_attention_end_to_end() {
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
    check_everywhere(&Case {
        name: "causal attention".into(),
        program: b.finish(&out),
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
        tolerance: SHALLOW,
        conv_channels: None,
    });
}

// ---------------------------------------------------------------------------------------------
// Packing several logical tensors into the one input and the one output of a kernel.

#[test]
fn concat_and_slice_pack_along_channels() {
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
    check_everywhere(&Case {
        name: "concat/slice along channels".into(),
        program: b.finish(&out),
        weights: WeightFiles::new(),
        inputs: vec![rng.vec(2 * c * s, 1.0)],
        reference: Box::new(move |x| {
            let (lo, hi) = x[0].split_at(c * s);
            let sum = lo.iter().zip(hi).map(|(a, b)| a + b);
            let prod = lo.iter().zip(hi).map(|(a, b)| a * b);
            sum.chain(prod).chain(lo.iter().copied()).collect()
        }),
        tolerance: SHALLOW,
        conv_channels: None,
    });
}

#[test]
fn concat_and_slice_pack_along_the_spatial_axis() {
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
    check_everywhere(&Case {
        name: "concat/slice along the spatial axis".into(),
        program: b.finish(&out),
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
        tolerance: SHALLOW,
        conv_channels: None,
    });
}

// ---------------------------------------------------------------------------------------------
// What only the ANE device does: kernel lifetimes on shared temp directories, request reuse,
// the compile budget.

#[test]
fn ane_identical_kernels_outlive_each_other_and_reuse_their_request() {
    let case = "identical kernels";
    let ane = match ane() {
        Ok(ane) => ane,
        Err(reason) => return skipped(case, reason),
    };
    let (c, s) = (64, 64);
    let program = examples::conv_chain(1, c, s);
    let weights = examples::conv_chain_weights(1, c, 0.5);
    let first = ane.compile(&program, &weights).expect("first compile");
    let mut second = ane.compile(&program, &weights).expect("second compile");
    // Both kernels share one temp directory; freeing one must not break the other.
    drop(first);
    let cpu = CpuDevice::new(NumericMode::Fp16);
    let mut rng = Rng::new(10);
    for round in 0..3 {
        let x = rng.vec(c * s, 1.0);
        let mut got = vec![f32::NAN; c * s];
        ane.eval(&mut second, &[&x], &mut [&mut got])
            .unwrap_or_else(|e| panic!("parity[ane] {case}, eval {round}: {e}"));
        let want = eval_on(&cpu, &program, &weights, &[x]).unwrap();
        let want: Vec<f64> = want.iter().map(|&v| f64::from(v)).collect();
        assert_close(
            &format!("parity[ane] {case}, eval {round}"),
            &got,
            &want,
            1e-2,
            1e-2,
        );
    }
}

#[test]
fn ane_compile_budget_is_refused_before_the_compiler() {
    let case = "compile budget";
    if let Err(reason) = ane() {
        return skipped(case, reason);
    }
    // A budget of what the process has already used leaves no compile.
    let used = anetrain_device::ane::process_compiles();
    let device = AneDevice::open_with(AneConfig {
        compile_budget: used,
        ..AneConfig::default()
    })
    .expect("the ANE opened once already");
    let program = examples::dynamic_matmul(64, 64, 32);
    match device.compile(&program, &WeightFiles::new()) {
        Err(DeviceError::BudgetExhausted { budget, .. }) => assert_eq!(budget, used),
        Err(other) => panic!("expected BudgetExhausted, got {other}"),
        Ok(_) => panic!("a compile past the budget was allowed"),
    }
}
