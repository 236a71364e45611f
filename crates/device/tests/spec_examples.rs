//! The spec's three example programs evaluated on the CPU device and checked against values
//! computed by hand from their definitions.

mod common;

use anetrain_device::{CpuDevice, Device, NumericMode};
use anetrain_mil::blob::{BlobFile, WeightFiles};
use anetrain_mil::examples;
use common::MODES;

/// Example A: y = W·x with W = 2·I + (row 0 reads channel 1 too). For x[c, t] = c + t/32:
/// y[c, t] = 2·x[c, t], except y[0, t] = 2·x[0, t] + x[1, t].
#[test]
fn example_a_conv_computes_w_times_x() {
    let mut w = vec![0.0f32; 64 * 64];
    for c in 0..64 {
        w[c * 64 + c] = 2.0;
    }
    w[1] = 1.0; // W[0][1]
    let mut weights = WeightFiles::new();
    weights.insert_blob("@model_path/weights/weight.bin", &BlobFile::fp16(&w));
    let x: Vec<f32> = (0..64 * 32)
        .map(|i| (i / 32) as f32 + (i % 32) as f32 / 32.0)
        .collect();
    for mode in MODES {
        let device = CpuDevice::new(mode);
        let mut kernel = device.compile(&examples::conv_fp32_io(), &weights).unwrap();
        let mut y = vec![0.0; 64 * 32];
        device.eval(&mut kernel, &[&x], &mut [&mut y]).unwrap();
        for c in 0..64 {
            for t in 0..32 {
                let xv = |c: usize| c as f32 + t as f32 / 32.0;
                let want = if c == 0 {
                    2.0 * xv(0) + xv(1)
                } else {
                    2.0 * xv(c)
                };
                // Every value here is exact in fp16 (multiples of 1/32 below 2048... up to 126).
                let tol = if mode == NumericMode::Fp16 {
                    want.abs() * 1e-3
                } else {
                    1e-5
                };
                assert!(
                    (y[c * 32 + t] - want).abs() <= tol,
                    "{mode} y[{c},{t}] = {}, want {want}",
                    y[c * 32 + t]
                );
            }
        }
    }
}

/// Example B: input columns 0..32 hold x[64, 32], columns 32..160 hold W[64, 128]; the output
/// is Wᵀ·x. With x[d, t] = 1 if d == t % 64 else 0 and W[d, o] = (d + o) / 64, the output is
/// y[o, t] = W[t % 64, o] = (t % 64 + o) / 64.
#[test]
fn example_b_dynamic_matmul_computes_w_transposed_times_x() {
    let (ic, oc, s) = (64, 128, 32);
    let mut input = vec![0.0f32; ic * (s + oc)];
    for d in 0..ic {
        for t in 0..s {
            input[d * (s + oc) + t] = if d == t % 64 { 1.0 } else { 0.0 };
        }
        for o in 0..oc {
            input[d * (s + oc) + s + o] = (d + o) as f32 / 64.0;
        }
    }
    for mode in MODES {
        let device = CpuDevice::new(mode);
        let mut kernel = device
            .compile(&examples::dynamic_matmul(ic, oc, s), &WeightFiles::new())
            .unwrap();
        let mut y = vec![0.0; oc * s];
        device.eval(&mut kernel, &[&input], &mut [&mut y]).unwrap();
        for o in 0..oc {
            for t in 0..s {
                let want = ((t % 64) + o) as f32 / 64.0;
                assert_eq!(y[o * s + t], want, "{mode} y[{o},{t}]");
            }
        }
    }
}

/// Example C (D=768, S=256): with x[c, t] = (t + 64)/256 in every channel, mean(x²) = x²,
/// so out[c, t] = w[c] · x / sqrt(x² + 1e-5). With w[c] = 1 + c/768 this is computed here in
/// f64; fp16 mode rounds 1/768 to fp16 and the squares' sum to fp16, hence its tolerance.
#[test]
fn example_c_rmsnorm_normalises_each_column() {
    let (d, s) = (768, 256);
    let w: Vec<f32> = (0..d).map(|c| 1.0 + c as f32 / d as f32).collect();
    let mut weights = WeightFiles::new();
    weights.insert_blob("@model_path/weights/rms_w.bin", &BlobFile::fp16(&w));
    let x: Vec<f32> = (0..d * s).map(|i| ((i % s) + 64) as f32 / 256.0).collect();
    for mode in MODES {
        let device = CpuDevice::new(mode);
        let mut kernel = device
            .compile(&examples::final_rmsnorm(d, s), &weights)
            .unwrap();
        let mut out = vec![0.0; d * s];
        device.eval(&mut kernel, &[&x], &mut [&mut out]).unwrap();
        for c in (0..d).step_by(97) {
            for t in 0..s {
                let xv = (t + 64) as f64 / 256.0;
                let wv = half::f16::from_f32(w[c]).to_f64();
                let want = wv * xv / (xv * xv + 1e-5).sqrt();
                let got = out[c * s + t] as f64;
                // fp32 mode: invd is the literal 0.001302 (not exactly 1/768): 3e-4 relative.
                // fp16 mode: further fp16 roundings of ss, ss2, rrms, xr and out.
                let tol = match mode {
                    NumericMode::Fp32 => 3e-4 * want.abs(),
                    NumericMode::Fp16 => 4e-3 * want.abs(),
                };
                assert!(
                    (got - want).abs() <= tol,
                    "{mode} out[{c},{t}] = {got}, want {want}"
                );
            }
        }
    }
}

/// The spec's warning, reproduced: in fp16 the channel sum of squares over 768 channels
/// overflows once the RMS passes about 9, and the normalised output collapses to zero. fp32
/// mode is unaffected.
#[test]
fn example_c_sum_of_squares_overflows_in_fp16_as_on_the_ane() {
    let (d, s) = (768, 32);
    let mut weights = WeightFiles::new();
    weights.insert_blob(
        "@model_path/weights/rms_w.bin",
        &BlobFile::fp16(&vec![1.0; d]),
    );
    let x = vec![10.0f32; d * s]; // sum of squares 76800 > 65504
    let run = |mode| {
        let device = CpuDevice::new(mode);
        let mut kernel = device
            .compile(&examples::final_rmsnorm(d, s), &weights)
            .unwrap();
        let mut out = vec![0.0; d * s];
        device.eval(&mut kernel, &[&x], &mut [&mut out]).unwrap();
        out
    };
    assert!(run(NumericMode::Fp16).iter().all(|&v| v == 0.0));
    assert!(run(NumericMode::Fp32)
        .iter()
        .all(|&v| (v - 1.0).abs() < 1e-3));
}
