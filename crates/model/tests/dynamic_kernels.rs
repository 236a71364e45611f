//! Kernels that take their weights as inputs (the dynamic pipeline) against the kernels with
//! weights baked in: each of the six kernels, and whole micro-steps, on a grouped-query config
//! with an untied classifier.

use anetrain_device::clock::RealClock;
use anetrain_device::host_math::HostMath;
use anetrain_device::{CpuDevice, Device, NumericMode};
use anetrain_mil::DType;
use anetrain_model::init::{init_params, SplitMix64};
use anetrain_model::kernels::{
    generate, generate_dynamic, input_weights, stage_layer_weights, InputWeights, KernelKind,
    StageError, WIDTH_MULTIPLE,
};
use anetrain_model::step::{
    compile_dynamic_kernel_set, compile_kernel_set, micro_step, KernelSet, SharedKernel,
    StepBuffers, StepError, WeightSnapshot,
};
use anetrain_model::{LayerTensor, ModelConfig, ParamLayout, Params};
use std::sync::Arc;

fn config() -> ModelConfig {
    ModelConfig {
        name: "gqa-untied".into(),
        dim: 24,
        hidden: 40,
        n_layers: 2,
        n_heads: 4,
        n_kv_heads: 2,
        head_dim: 6,
        vocab: 29,
        seq_len: 10,
        norm_eps: 1e-5,
        rope_theta: 10000.0,
        tied_embedding: false,
        qk_norm: false,
    }
}

/// Seeded parameters with more spread than the default init, and norm weights away from 1,
/// so that every weight matters.
fn params(c: &ModelConfig, seed: u64) -> Params {
    let mut p = init_params(Arc::new(ParamLayout::new(c)), seed);
    let mut rng = SplitMix64::new(seed ^ 0xA5A5);
    for spec in p.layout.tensors.clone() {
        for v in &mut p.data[spec.range.clone()] {
            if spec.decay {
                *v *= 10.0;
            } else {
                *v += (rng.next_open01() as f32 - 0.5) * 0.4;
            }
        }
    }
    p
}

fn uniform(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = SplitMix64::new(seed);
    (0..n)
        .map(|_| (rng.next_open01() as f32 - 0.5) * 2.0)
        .collect()
}

fn snapshot(p: &Params, version: u64) -> WeightSnapshot {
    WeightSnapshot {
        version,
        params: Arc::new(p.clone()),
    }
}

fn dtype(mode: NumericMode) -> DType {
    match mode {
        NumericMode::Fp32 => DType::Fp32,
        NumericMode::Fp16 => DType::Fp16,
    }
}

/// The largest difference between two outputs, relative to the largest entry of `want`.
fn relative_error(got: &[f32], want: &[f32]) -> f32 {
    let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-30);
    got.iter()
        .zip(want)
        .fold(0.0f32, |m, (g, w)| m.max((g - w).abs()))
        / scale
}

/// Evaluates kernel `kind` of `layer` baked and dynamic (weights staged by the host) on the
/// same activations; returns both outputs.
fn baked_and_dynamic(
    mode: NumericMode,
    kind: KernelKind,
    p: &Arc<Params>,
    layer: usize,
) -> (Vec<f32>, Vec<f32>) {
    let c = &p.layout.config;
    let device = CpuDevice::new(mode).with_threads(1);
    let baked = generate(kind, c, p, layer, dtype(mode)).unwrap();
    let (dynamic, weights) = generate_dynamic(kind, c, dtype(mode)).unwrap();
    let mut baked = device.compile(&baked.program, &baked.weights).unwrap();
    let mut dynamic = device.compile(&dynamic.program, &dynamic.weights).unwrap();

    let (input, output) = kind.layout(c);
    let activations = uniform(input.channels() * c.seq_len, 17 + layer as u64);
    let mut staged = vec![f32::NAN; weights.input_len(c.seq_len)];
    weights.write_activations(&mut staged, c.seq_len, &activations);
    stage_layer_weights(&weights, &mut staged, p, layer).unwrap();
    // The padding after the last tensor is never read; give it a value all the same.
    staged
        .iter_mut()
        .filter(|v| v.is_nan())
        .for_each(|v| *v = 0.0);

    let n = output.channels() * c.seq_len;
    let (mut want, mut got) = (vec![0.0; n], vec![0.0; n]);
    device
        .eval(&mut baked, &[&activations], &mut [&mut want])
        .unwrap();
    device
        .eval(&mut dynamic, &[&staged], &mut [&mut got])
        .unwrap();
    (got, want)
}

#[test]
fn each_dynamic_kernel_matches_its_baked_kernel_in_fp32() {
    let p = Arc::new(params(&config(), 5));
    for kind in KernelKind::ALL {
        let (got, want) = baked_and_dynamic(NumericMode::Fp32, kind, &p, 1);
        let err = relative_error(&got, &want);
        let exact = got.iter().zip(&want).filter(|(g, w)| g == w).count();
        eprintln!(
            "{}: relative error {err:.2e}, {exact}/{} outputs bit-identical",
            kind.name(),
            want.len()
        );
        assert!(err <= 1e-5, "{}: relative error {err:.2e}", kind.name());
    }
}

/// Baked fp32 kernels view the parameters (matrix files, some read transposed) instead of
/// serialised copies: each runs bit for bit as it does from the same files written out.
#[test]
fn baked_kernels_viewing_the_parameters_run_as_from_their_bytes() {
    let p = Arc::new(params(&config(), 7));
    let c = &p.layout.config;
    let device = CpuDevice::new(NumericMode::Fp32).with_threads(1);
    for kind in KernelKind::WEIGHTED {
        let baked = generate(kind, c, &p, 1, DType::Fp32).unwrap();
        let mut bytes = anetrain_mil::WeightFiles::new();
        for (path, b) in baked.weights.iter() {
            bytes.insert(path, b.to_vec());
        }
        let (input, output) = kind.layout(c);
        let x = uniform(input.channels() * c.seq_len, 3);
        let run = |weights| {
            let mut k = device.compile(&baked.program, weights).unwrap();
            let mut out = vec![0.0; output.channels() * c.seq_len];
            device.eval(&mut k, &[&x], &mut [&mut out]).unwrap();
            out
        };
        let (viewed, written) = (run(&baked.weights), run(&bytes));
        assert_eq!(viewed, written, "{}", kind.name());
        assert!(viewed.iter().any(|v| v.abs() > 1e-3), "{}", kind.name());
    }
}

#[test]
fn each_dynamic_kernel_matches_its_baked_kernel_in_fp16() {
    // Both kernels round the weights to fp16 (the blob, or the fp16 input); what may differ is
    // only how the ops round along the way.
    let p = Arc::new(params(&config(), 6));
    for kind in KernelKind::ALL {
        let (got, want) = baked_and_dynamic(NumericMode::Fp16, kind, &p, 0);
        let err = relative_error(&got, &want);
        assert!(err <= 2e-3, "{}: relative error {err:.2e}", kind.name());
    }
}

#[test]
fn input_weights_list_each_kernels_trainable_tensors_in_order_of_use() {
    let c = config();
    let names = |kind| -> Vec<String> {
        input_weights(kind, &c)
            .unwrap()
            .tensors()
            .iter()
            .map(|t| t.name.clone())
            .collect()
    };
    assert_eq!(
        names(KernelKind::FwdAttn),
        ["rms_att", "wq", "wk", "wv", "wo"]
    );
    assert_eq!(names(KernelKind::FwdFfn), ["rms_ffn", "w1", "w3", "w2"]);
    assert_eq!(names(KernelKind::BwdFfn), ["w2", "w1", "w3"]);
    assert_eq!(names(KernelKind::BwdAttn1), ["wo"]);
    assert!(names(KernelKind::BwdAttn2).is_empty());
    assert_eq!(names(KernelKind::BwdQkv), ["wq", "wk", "wv"]);
    for kind in KernelKind::ALL {
        let weights = input_weights(kind, &c).unwrap();
        let (input, _) = kind.layout(&c);
        assert_eq!(weights.channels(), input.channels());
        // Each tensor has its own slice of columns, in order, one matrix row (or column, when
        // it has more rows than the input has channels) per channel.
        let mut at = 0;
        for t in weights.tensors() {
            assert_eq!(t.column, at, "{} {}", kind.name(), t.name);
            let [channels, width] = t.slice();
            assert!(channels <= weights.channels(), "{} {}", kind.name(), t.name);
            assert_eq!(t.transposed, t.matrix[0] > weights.channels());
            at += width;
        }
        let width = c.seq_len + weights.columns();
        assert!(weights.columns() >= at && weights.columns() < at + WIDTH_MULTIPLE);
        assert!(
            at == 0 || width % WIDTH_MULTIPLE == 0,
            "{}: {width}",
            kind.name()
        );
    }
    let attn = input_weights(KernelKind::FwdAttn, &c).unwrap();
    let wo = attn.get("wo").unwrap();
    assert_eq!(wo.shape, [1, 1, c.dim, c.q_dim()]);
    assert_eq!(attn.get("rms_att").unwrap().shape, [1, c.dim, 1, 1]);
}

#[test]
fn each_matrix_has_a_slice_of_its_own_one_row_per_channel() {
    // Two channels, S = 3: `a` [2, 3] puts a row in each channel; `b` [3, 2] has more rows
    // than channels and is placed transposed (a column per channel); `v` is a vector [2]. The
    // width 3 + 3 + 3 + 1 = 10 is padded to 16.
    let tensors = [
        ("a".to_string(), vec![1, 1, 2, 3]),
        ("b".to_string(), vec![1, 1, 3, 2]),
        ("v".to_string(), vec![1, 2, 1, 1]),
    ];
    let weights = InputWeights::new(2, 3, &tensors).unwrap();
    assert_eq!(weights.columns(), 13);
    let b = weights.get("b").unwrap().clone();
    assert!(b.transposed && b.column == 3 && b.slice() == [2, 3]);
    let mut input = vec![0.0; weights.input_len(3)];
    weights.write_activations(&mut input, 3, &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    let (a, v) = (
        weights.get("a").unwrap().clone(),
        weights.get("v").unwrap().clone(),
    );
    weights.write_tensor(&mut input, 3, &a, &[10.0, 11.0, 12.0, 13.0, 14.0, 15.0]);
    weights.write_tensor(&mut input, 3, &b, &[20.0, 21.0, 22.0, 23.0, 24.0, 25.0]);
    weights.write_tensor(&mut input, 3, &v, &[30.0, 31.0]);
    #[rustfmt::skip]
    let expect = [
        1.0, 2.0, 3.0, 10.0, 11.0, 12.0, 20.0, 22.0, 24.0, 30.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0,
        4.0, 5.0, 6.0, 13.0, 14.0, 15.0, 21.0, 23.0, 25.0, 31.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0,
    ];
    assert_eq!(input, expect);
    // A matrix larger than the channels both ways has no place.
    let err = InputWeights::new(2, 3, &[("m".into(), vec![1, 1, 3, 3])]).unwrap_err();
    assert!(
        err.contains("`m` (3×3) fits 2 channels neither way"),
        "{err}"
    );
}

#[test]
fn staging_refuses_what_does_not_fit() {
    let c = config();
    let p = params(&c, 1);
    let weights = input_weights(KernelKind::FwdFfn, &c).unwrap();
    let mut short = vec![0.0; weights.input_len(c.seq_len) - 1];
    assert_eq!(
        stage_layer_weights(&weights, &mut short, &p, 0),
        Err(StageError::InputLength {
            expected: weights.input_len(c.seq_len),
            found: weights.input_len(c.seq_len) - 1,
        })
    );
    let mut input = vec![0.0; weights.input_len(c.seq_len)];
    assert_eq!(
        stage_layer_weights(&weights, &mut input, &p, 2),
        Err(StageError::Layer {
            layer: 2,
            layers: 2
        })
    );
    let foreign =
        InputWeights::new(weights.channels(), c.seq_len, &[("embed".into(), vec![4])]).unwrap();
    assert_eq!(
        stage_layer_weights(
            &foreign,
            &mut vec![0.0; foreign.input_len(c.seq_len)],
            &p,
            0
        ),
        Err(StageError::UnknownTensor("embed".into()))
    );

    let device = CpuDevice::new(NumericMode::Fp32).with_threads(1);
    let mut baked = compile_kernel_set(&device, snapshot(&p, 0)).unwrap();
    assert!(matches!(
        baked.stage(snapshot(&p, 1)),
        Err(StepError::BakedWeights { version: 0 })
    ));
    let mut dynamic = compile_dynamic_kernel_set(&device, snapshot(&p, 0)).unwrap();
    let mut other = config();
    other.name = "other".into();
    other.hidden = 48;
    let q = init_params(Arc::new(ParamLayout::new(&other)), 1);
    assert!(matches!(
        dynamic.stage(snapshot(&q, 1)),
        Err(StepError::ModelMismatch { .. })
    ));
    // A refused snapshot leaves the set as it was.
    assert_eq!(dynamic.version(), 0);
}

fn loss_and_grads(
    device: &dyn Device,
    set: &mut KernelSet,
    shared: &mut SharedKernel,
    window: u32,
) -> (f32, Params) {
    let params = set.snapshot().params.clone();
    let c = &params.layout.config;
    let v = c.vocab as u32;
    let tokens: Vec<u32> = (0..c.seq_len as u32)
        .map(|i| (i * 7 + window * 3 + 1) % v)
        .collect();
    let targets: Vec<u32> = (0..c.seq_len as u32)
        .map(|i| (i * 11 + window + 5) % v)
        .collect();
    let mut buf = StepBuffers::new(c);
    let mut grads = Params::zeros(params.layout.clone());
    let clock = RealClock::new();
    let (loss, _) = micro_step(
        device,
        &clock,
        set,
        shared,
        &mut buf,
        &tokens,
        &targets,
        1.0,
        &mut grads,
        HostMath::best_built(1),
    )
    .unwrap();
    (loss, grads)
}

#[test]
fn a_micro_step_on_dynamic_kernels_equals_one_on_baked_kernels() {
    let c = config();
    let device = CpuDevice::new(NumericMode::Fp32).with_threads(1);
    let first = params(&c, 21);
    let mut second = params(&c, 22);
    // Layers must not be mixed up: make layer 1 of the second weights differ from layer 0.
    for v in second.layer_mut(1, LayerTensor::Wo) {
        *v *= 1.5;
    }
    let mut shared = SharedKernel::compile(&device, &first).unwrap();
    let mut dynamic = compile_dynamic_kernel_set(&device, snapshot(&first, 0)).unwrap();
    assert_eq!(dynamic.compiled_kernels(), KernelKind::WEIGHTED.len());

    for (version, p) in [(0, &first), (1, &second)] {
        if version > 0 {
            // New weights reach the same compiled kernels by staging alone.
            dynamic.stage(snapshot(p, version)).unwrap();
        }
        assert_eq!(dynamic.version(), version);
        let mut baked = compile_kernel_set(&device, snapshot(p, version)).unwrap();
        let (want_loss, want) = loss_and_grads(&device, &mut baked, &mut shared, 2);
        let (loss, got) = loss_and_grads(&device, &mut dynamic, &mut shared, 2);
        assert_eq!(
            loss.to_bits(),
            want_loss.to_bits(),
            "version {version} loss"
        );
        for spec in &p.layout.tensors {
            let r = spec.range.clone();
            let err = relative_error(&got.data[r.clone()], &want.data[r]);
            assert!(
                err <= 1e-5,
                "version {version}: gradient of {}: relative error {err:.2e}",
                spec.name
            );
        }
        assert!(
            got.data
                .iter()
                .zip(&want.data)
                .all(|(g, w)| g.to_bits() == w.to_bits()),
            "version {version}: the gradients are not bit-identical"
        );
    }
}

#[test]
fn a_set_that_released_its_weights_refuses_to_run_until_restaged() {
    let c = config();
    let device = CpuDevice::new(NumericMode::Fp32).with_threads(1);
    let p = params(&c, 23);
    let mut shared = SharedKernel::compile(&device, &p).unwrap();
    let shared_weights = Arc::new(p.clone());
    let mut dynamic = compile_dynamic_kernel_set(
        &device,
        WeightSnapshot {
            version: 4,
            params: shared_weights.clone(),
        },
    )
    .unwrap();
    assert_eq!(Arc::strong_count(&shared_weights), 2);
    dynamic.release_weights();
    // The set's hold is gone, so the master weights can be updated in place.
    assert_eq!(Arc::strong_count(&shared_weights), 1);
    assert_eq!(dynamic.version(), 4);
    let v = c.vocab as u32;
    let tokens: Vec<u32> = (0..c.seq_len as u32).map(|i| i % v).collect();
    let mut buf = StepBuffers::new(&c);
    let mut grads = Params::zeros(p.layout.clone());
    let clock = RealClock::new();
    let result = micro_step(
        &device,
        &clock,
        &mut dynamic,
        &mut shared,
        &mut buf,
        &tokens,
        &tokens,
        1.0,
        &mut grads,
        HostMath::best_built(1),
    );
    assert!(
        matches!(result, Err(StepError::Released { version: 4 })),
        "{:?}",
        result.map(|r| r.0)
    );
    dynamic.stage(snapshot(&p, 5)).unwrap();
    let (loss, _) = loss_and_grads(&device, &mut dynamic, &mut shared, 1);
    assert!(loss.is_finite());
}
