//! The planner's choices (in-place inputs and outputs, views, fusion, arena reuse) never change
//! results: programs built to stress each choice, checked against plain computations.

mod common;

use anetrain_device::{CpuDevice, Device, NumericMode};
use anetrain_mil::blob::{fp32_file_bytes, WeightFiles};
use anetrain_mil::{DType, Dialect, FunctionBuilder, Literal, Program, Style, Type};
use common::Rng;

fn t(shape: &[usize]) -> Type {
    Type::tensor(DType::Fp32, shape.to_vec())
}

fn program(b: FunctionBuilder) -> Program {
    Program::single(Dialect::Ios18, Style::Compact, b.finish())
}

#[test]
fn outputs_of_every_kind_are_delivered() {
    // -> (x, c, y, r, y2): an input, a constant, a computed value, a view of it, and a value
    // that is also read by a later op.
    let mut b = FunctionBuilder::new("main", "ios18");
    let x = b.input("x", t(&[2, 3]));
    let c = b.constant(
        "c",
        Literal::Tensor {
            dtype: DType::Fp32,
            shape: vec![2, 3],
            values: (0..6)
                .map(|v| anetrain_mil::Scalar::Float(anetrain_mil::FloatLit::fixed6(v as f64)))
                .collect(),
        },
    );
    let y = b.op(
        "add",
        "y",
        t(&[2, 3]),
        vec![("x", (&x).into()), ("y", (&c).into())],
    );
    let shape = b.constant("shape", Literal::int32_tensor(&[3, 2]));
    let r = b.op(
        "reshape",
        "r",
        t(&[3, 2]),
        vec![("shape", (&shape).into()), ("x", (&y).into())],
    );
    let y2 = b.op(
        "mul",
        "y2",
        t(&[2, 3]),
        vec![("x", (&y).into()), ("y", (&y).into())],
    );
    let z = b.op("relu", "z", t(&[2, 3]), vec![("x", (&y2).into())]);
    for v in [&x, &c, &y, &r, &y2, &z] {
        b.output(v);
    }
    let device = CpuDevice::new(NumericMode::Fp32);
    let mut k = device.compile(&program(b), &Default::default()).unwrap();
    let xin = [1.0f32, -2.0, 3.0, -4.0, 5.0, -6.0];
    let mut outs = vec![vec![0.0f32; 6]; 6];
    let mut views: Vec<&mut [f32]> = outs.iter_mut().map(Vec::as_mut_slice).collect();
    device.eval(&mut k, &[&xin], &mut views).unwrap();
    let yv: Vec<f32> = xin.iter().enumerate().map(|(i, v)| v + i as f32).collect();
    let y2v: Vec<f32> = yv.iter().map(|v| v * v).collect();
    assert_eq!(outs[0], xin);
    assert_eq!(outs[1], vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
    assert_eq!(outs[2], yv);
    assert_eq!(outs[3], yv);
    assert_eq!(outs[4], y2v);
    assert_eq!(outs[5], y2v);
}

/// A long program of values of many sizes, most dead soon after they are made, so the arena
/// reuses slots heavily; one value is read at the very end. Checked step by step in plain Rust.
#[test]
fn arena_reuse_keeps_live_values_intact() {
    let n = 64;
    let mut b = FunctionBuilder::new("main", "ios18");
    let x = b.input("x", t(&[1, n]));
    let keep = b.op("sigmoid", "keep", t(&[1, n]), vec![("x", (&x).into())]);
    let mut cur = x.clone();
    let mut expect: Vec<f32> = Vec::new();
    let mut rng = Rng::new(3);
    let xin = rng.vec(n, 1.0);
    let sig: Vec<f32> = xin.iter().map(|v| 1.0 / (1.0 + (-v).exp())).collect();
    let mut cur_v = xin.clone();
    for i in 0..20 {
        // Widen to [k, n] by concat, reduce back to [1, n]: temporaries of varying sizes.
        let k = 1 + i % 5;
        let parts: Vec<anetrain_mil::Var> = (0..k).map(|_| cur.clone()).collect();
        let ax = b.constant(&format!("ax{i}"), Literal::int32(0));
        let wide = b.op(
            "concat",
            &format!("wide{i}"),
            t(&[k, n]),
            vec![("axis", (&ax).into()), ("values", parts.as_slice().into())],
        );
        let axes = b.constant(&format!("axes{i}"), Literal::int32_tensor(&[0]));
        let kd = b.constant(&format!("kd{i}"), Literal::bool(true));
        let sum = b.op(
            "reduce_mean",
            &format!("sum{i}"),
            t(&[1, n]),
            vec![
                ("axes", (&axes).into()),
                ("keep_dims", (&kd).into()),
                ("x", (&wide).into()),
            ],
        );
        cur = b.op(
            "tanh",
            &format!("th{i}"),
            t(&[1, n]),
            vec![("x", (&sum).into())],
        );
        cur_v = cur_v.iter().map(|v| v.tanh()).collect();
    }
    let out = b.op(
        "add",
        "out",
        t(&[1, n]),
        vec![("x", (&cur).into()), ("y", (&keep).into())],
    );
    b.output(&out);
    expect.extend(cur_v.iter().zip(&sig).map(|(a, s)| a + s));
    let device = CpuDevice::new(NumericMode::Fp32);
    let mut k = device.compile(&program(b), &Default::default()).unwrap();
    let mut got = vec![0.0; n];
    device.eval(&mut k, &[&xin], &mut [&mut got]).unwrap();
    for (g, e) in got.iter().zip(&expect) {
        assert!((g - e).abs() < 1e-5, "{g} vs {e}");
    }
}

/// A chain whose middle value is used twice cannot be fused through; the result must still be
/// exact. silu(h)·g computed as in the FFN kernel, with h also used afterwards.
#[test]
fn fused_chains_respect_values_used_elsewhere() {
    let n = 300; // more than one fused block
    let mut b = FunctionBuilder::new("main", "ios18");
    let h = b.input("h", t(&[3, n]));
    let g = b.input("g", t(&[3, n]));
    let sig = b.op("sigmoid", "sig", t(&[3, n]), vec![("x", (&h).into())]);
    let silu = b.op(
        "mul",
        "silu",
        t(&[3, n]),
        vec![("x", (&h).into()), ("y", (&sig).into())],
    );
    let gate = b.op(
        "mul",
        "gate",
        t(&[3, n]),
        vec![("x", (&silu).into()), ("y", (&g).into())],
    );
    let one = b.constant(
        "one",
        Literal::float(DType::Fp32, anetrain_mil::FloatLit::fixed6(1.0)),
    );
    let oms = b.op(
        "sub",
        "oms",
        t(&[3, n]),
        vec![("x", (&one).into()), ("y", (&sig).into())],
    );
    b.output(&gate);
    b.output(&oms);
    let mut rng = Rng::new(4);
    let (hv, gv) = (rng.vec(3 * n, 3.0), rng.vec(3 * n, 1.0));
    let device = CpuDevice::new(NumericMode::Fp32);
    let mut k = device.compile(&program(b), &Default::default()).unwrap();
    let (mut gate_out, mut oms_out) = (vec![0.0; 3 * n], vec![0.0; 3 * n]);
    device
        .eval(&mut k, &[&hv, &gv], &mut [&mut gate_out, &mut oms_out])
        .unwrap();
    for i in 0..3 * n {
        let s = 1.0 / (1.0 + (-hv[i]).exp());
        assert!((gate_out[i] - hv[i] * s * gv[i]).abs() < 1e-5);
        assert!((oms_out[i] - (1.0 - s)).abs() < 1e-6);
    }
}

#[test]
fn constant_weights_read_elsewhere_survive_packing() {
    // -> (conv(x, W), W + 1, W): the conv's weights are packed at compile time, and the raw
    // weights must stay for the add and for the output that is the constant itself.
    let (c, s) = (8, 16);
    let mut b = FunctionBuilder::new("main", "ios18");
    let x = b.input("x", t(&[1, c, 1, s]));
    let w_values: Vec<f32> = (0..c * c).map(|i| (i % 7) as f32 / 8.0 - 0.25).collect();
    let w = b.constant(
        "w",
        Literal::Tensor {
            dtype: DType::Fp32,
            shape: vec![c, c, 1, 1],
            values: w_values
                .iter()
                .map(|&v| anetrain_mil::Scalar::Float(anetrain_mil::FloatLit::fixed6(v as f64)))
                .collect(),
        },
    );
    let y = b.op(
        "conv",
        "y",
        t(&[1, c, 1, s]),
        vec![("weight", (&w).into()), ("x", (&x).into())],
    );
    let one = b.constant(
        "one",
        Literal::float(DType::Fp32, anetrain_mil::FloatLit::fixed6(1.0)),
    );
    let w1 = b.op(
        "add",
        "w1",
        t(&[c, c, 1, 1]),
        vec![("x", (&w).into()), ("y", (&one).into())],
    );
    for v in [&y, &w1, &w] {
        b.output(v);
    }
    let device = CpuDevice::new(NumericMode::Fp32);
    let mut k = device.compile(&program(b), &Default::default()).unwrap();
    let xin = Rng::new(5).vec(c * s, 1.0);
    let mut outs = [vec![0.0f32; c * s], vec![0.0; c * c], vec![0.0; c * c]];
    let mut views: Vec<&mut [f32]> = outs.iter_mut().map(Vec::as_mut_slice).collect();
    device.eval(&mut k, &[&xin], &mut views).unwrap();
    for o in 0..c {
        for j in 0..s {
            let want: f32 = (0..c).map(|i| w_values[o * c + i] * xin[i * s + j]).sum();
            assert!((outs[0][o * s + j] - want).abs() < 1e-5);
        }
    }
    let w1v: Vec<f32> = w_values.iter().map(|v| v + 1.0).collect();
    assert_eq!(outs[1], w1v);
    assert_eq!(outs[2], w_values);
}

#[test]
fn a_recompile_reads_changed_weight_files_and_reuses_unchanged_ones() {
    // -> (conv(x, W), x + B), W and B BLOBFILE constants: W is packed at compile, B is held
    // as read. A compile handed the very file of an earlier one may reuse what it read; any
    // other file at the same path must be read again, whatever the earlier compiles saw.
    let (c, s) = (8, 16);
    let blob = |name: &str, shape: Vec<usize>| Literal::Blob {
        dtype: DType::Fp32,
        shape,
        path: format!("@model_path/weights/{name}.bin"),
        offset: 64,
    };
    let mut b = FunctionBuilder::new("main", "ios18");
    let x = b.input("x", t(&[1, c, 1, s]));
    let w = b.constant("w", blob("w", vec![c, c, 1, 1]));
    let bias = b.constant("b", blob("b", vec![1, c, 1, s]));
    let y = b.op(
        "conv",
        "y",
        t(&[1, c, 1, s]),
        vec![("weight", (&w).into()), ("x", (&x).into())],
    );
    let z = b.op(
        "add",
        "z",
        t(&[1, c, 1, s]),
        vec![("x", (&x).into()), ("y", (&bias).into())],
    );
    b.output(&y);
    b.output(&z);
    let program = program(b);
    let files = |seed: u64| {
        let mut rng = Rng::new(seed);
        let (w, b) = (rng.vec(c * c, 1.0), rng.vec(c * s, 1.0));
        let mut files = WeightFiles::new();
        files.insert("@model_path/weights/w.bin", fp32_file_bytes(&w));
        files.insert("@model_path/weights/b.bin", fp32_file_bytes(&b));
        (files, w, b)
    };
    let device = CpuDevice::new(NumericMode::Fp32);
    let xin = Rng::new(9).vec(c * s, 1.0);
    let run = |weights: &WeightFiles, w: &[f32], b: &[f32], what: &str| {
        let mut k = device.compile(&program, weights).unwrap();
        let mut outs = [vec![0.0f32; c * s], vec![0.0; c * s]];
        let mut views: Vec<&mut [f32]> = outs.iter_mut().map(Vec::as_mut_slice).collect();
        device.eval(&mut k, &[&xin], &mut views).unwrap();
        for o in 0..c {
            for j in 0..s {
                let want: f32 = (0..c).map(|i| w[o * c + i] * xin[i * s + j]).sum();
                let got = outs[0][o * s + j];
                assert!(
                    (got - want).abs() < 1e-5,
                    "{what}: conv ({o},{j}) {got} vs {want}"
                );
            }
        }
        let want: Vec<f32> = xin.iter().zip(b).map(|(x, b)| x + b).collect();
        assert_eq!(outs[1], want, "{what}: x + B");
    };
    let (first, w1, b1) = files(1);
    let (second, w2, b2) = files(2);
    run(&first, &w1, &b1, "first files");
    run(&first.clone(), &w1, &b1, "the same files again");
    run(&second, &w2, &b2, "other files at the same paths");
    run(&first, &w1, &b1, "the first files once more");
    // New bytes equal to the old ones, in a new buffer: read again, and of course the same.
    let (copy, w1c, b1c) = files(1);
    run(&copy, &w1c, &b1c, "a copy of the first files");
}

/// Pieces of a channel concat are computed straight into their stretch of its output (no
/// copy). Every case around that: a piece read again after the concat, directly and through
/// a view made before it; a piece that is a view of a whole value; a piece that appears
/// twice; an input and a constant as pieces; a piece that is also a program output; a piece
/// that goes into a second concat; a concat along the last axis (pieces not contiguous:
/// copied). Checked in plain Rust.
#[test]
fn concat_pieces_computed_in_place_keep_every_value() {
    let (c, s) = (3, 5);
    let mut b = FunctionBuilder::new("main", "ios18");
    let x = b.input("x", t(&[1, c, 1, s]));
    let k = b.constant(
        "k",
        Literal::Tensor {
            dtype: DType::Fp32,
            shape: vec![1, c, 1, s],
            values: (0..c * s)
                .map(|v| anetrain_mil::Scalar::Float(anetrain_mil::FloatLit::fixed6(v as f64)))
                .collect(),
        },
    );
    let a = b.op("relu", "a", t(&[1, c, 1, s]), vec![("x", (&x).into())]);
    let shape = b.constant("shape", Literal::int32_tensor(&[c as i32, s as i32]));
    let r = b.op(
        "reshape",
        "r",
        t(&[c, s]),
        vec![("shape", (&shape).into()), ("x", (&a).into())],
    );
    let g = b.op("sigmoid", "g", t(&[1, c, 1, s]), vec![("x", (&x).into())]);
    let e = b.op("exp", "e", t(&[1, c, 1, s]), vec![("x", (&x).into())]);
    let axis1 = b.constant("axis1", Literal::int32(1));
    let axis3 = b.constant("axis3", Literal::int32(3));
    let no = b.constant("no", Literal::bool(false));
    let concat = |b: &mut FunctionBuilder,
                  name: &str,
                  axis: &anetrain_mil::Var,
                  ty,
                  vs: &[anetrain_mil::Var]| {
        b.op(
            "concat",
            name,
            ty,
            vec![
                ("axis", axis.into()),
                ("interleave", (&no).into()),
                ("values", vs.into()),
            ],
        )
    };
    // A piece that is a view of a whole computed value moves that value.
    let h = b.op("exp", "h", t(&[c, s]), vec![("x", (&r).into())]);
    let shape4 = b.constant("shape4", Literal::int32_tensor(&[1, c as i32, 1, s as i32]));
    let hv = b.op(
        "reshape",
        "hv",
        t(&[1, c, 1, s]),
        vec![("shape", (&shape4).into()), ("x", (&h).into())],
    );
    let pieces = [
        a.clone(),
        g.clone(),
        x.clone(),
        g.clone(),
        e.clone(),
        k.clone(),
        hv.clone(),
    ];
    let cat = concat(&mut b, "cat", &axis1, t(&[1, 7 * c, 1, s]), &pieces);
    let cat2 = concat(
        &mut b,
        "cat2",
        &axis1,
        t(&[1, 2 * c, 1, s]),
        &[e.clone(), a.clone()],
    );
    let cat3 = concat(
        &mut b,
        "cat3",
        &axis3,
        t(&[1, c, 1, 2 * s]),
        &[a.clone(), e.clone()],
    );
    let d = b.op(
        "mul",
        "d",
        t(&[1, c, 1, s]),
        vec![("x", (&a).into()), ("y", (&e).into())],
    );
    let rr = b.op(
        "add",
        "rr",
        t(&[c, s]),
        vec![("x", (&r).into()), ("y", (&r).into())],
    );
    let hh = b.op(
        "add",
        "hh",
        t(&[c, s]),
        vec![("x", (&h).into()), ("y", (&h).into())],
    );
    for v in [&cat, &cat2, &cat3, &d, &rr, &e, &hh] {
        b.output(v);
    }
    let device = CpuDevice::new(NumericMode::Fp32);
    let mut kernel = device.compile(&program(b), &Default::default()).unwrap();
    let xin: Vec<f32> = (0..c * s).map(|i| i as f32 * 0.37 - 2.0).collect();
    let lens = [7 * c * s, 2 * c * s, 2 * c * s, c * s, c * s, c * s, c * s];
    let mut outs: Vec<Vec<f32>> = lens.iter().map(|&n| vec![f32::NAN; n]).collect();
    let mut views: Vec<&mut [f32]> = outs.iter_mut().map(Vec::as_mut_slice).collect();
    device.eval(&mut kernel, &[&xin], &mut views).unwrap();

    let av: Vec<f32> = xin.iter().map(|v| v.max(0.0)).collect();
    let gv: Vec<f32> = xin.iter().map(|v| 1.0 / (1.0 + (-v).exp())).collect();
    let ev: Vec<f32> = xin.iter().map(|v| v.exp()).collect();
    let kv: Vec<f32> = (0..c * s).map(|v| v as f32).collect();
    let close = |got: &[f32], want: &[f32], what: &str| {
        assert_eq!(got.len(), want.len(), "{what}");
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!(
                (g - w).abs() <= 1e-5 * (1.0 + w.abs()),
                "{what}[{i}]: {g} vs {w}"
            );
        }
    };
    let joined = |parts: &[&Vec<f32>]| {
        parts
            .iter()
            .flat_map(|p| p.iter().copied())
            .collect::<Vec<_>>()
    };
    let hv: Vec<f32> = av.iter().map(|v| v.exp()).collect();
    close(
        &outs[0],
        &joined(&[&av, &gv, &xin, &gv, &ev, &kv, &hv]),
        "cat",
    );
    close(&outs[1], &joined(&[&ev, &av]), "cat2");
    let along_s: Vec<f32> = (0..c)
        .flat_map(|ch| {
            av[ch * s..(ch + 1) * s]
                .iter()
                .chain(&ev[ch * s..(ch + 1) * s])
                .copied()
                .collect::<Vec<_>>()
        })
        .collect();
    close(&outs[2], &along_s, "cat3");
    close(
        &outs[3],
        &av.iter().zip(&ev).map(|(a, e)| a * e).collect::<Vec<_>>(),
        "d",
    );
    close(
        &outs[4],
        &av.iter().map(|a| a + a).collect::<Vec<_>>(),
        "rr",
    );
    close(&outs[5], &ev, "e");
    let hh: Vec<f32> = hv.iter().map(|h| h + h).collect();
    close(&outs[6], &hh, "hh");
}

/// Transposes of the last two dimensions around products: a product reads transposed operands
/// through their sources (the flags flipped), a transpose of a product nothing else reads is
/// computed as the swapped product, and neither happens where it must not (a transposed value
/// read elsewhere too, a product that is also an output, another permutation). Checked in
/// plain Rust.
#[test]
fn transposes_around_products_are_folded_into_them() {
    let (bt, m, k, n) = (2, 3, 4, 5);
    let mut b = FunctionBuilder::new("main", "ios18");
    let x = b.input("x", t(&[bt, m, k]));
    let y = b.input("y", t(&[bt, n, k]));
    let yes = b.constant("yes", Literal::bool(true));
    let no = b.constant("no", Literal::bool(false));
    let swap = b.constant("swap", Literal::int32_tensor(&[0, 2, 1]));
    let outer = b.constant("outer", Literal::int32_tensor(&[1, 0, 2]));
    let transpose = |b: &mut FunctionBuilder, name: &str, v: &anetrain_mil::Var, perm, ty| {
        b.op("transpose", name, ty, vec![("perm", perm), ("x", v.into())])
    };
    let matmul = |b: &mut FunctionBuilder,
                  name: &str,
                  x: &anetrain_mil::Var,
                  tx: &anetrain_mil::Var,
                  y: &anetrain_mil::Var,
                  ty: &anetrain_mil::Var,
                  out: Type| {
        b.op(
            "matmul",
            name,
            out,
            vec![
                ("transpose_x", tx.into()),
                ("transpose_y", ty.into()),
                ("x", x.into()),
                ("y", y.into()),
            ],
        )
    };
    let xt = transpose(&mut b, "xt", &x, (&swap).into(), t(&[bt, k, m]));
    let yt = transpose(&mut b, "yt", &y, (&swap).into(), t(&[bt, k, n]));
    // p = xtᵀ·yt = x·yᵀ, [bt, m, n]; pt = pᵀ.
    let p = matmul(&mut b, "p", &xt, &yes, &yt, &no, t(&[bt, m, n]));
    let pt = transpose(&mut b, "pt", &p, (&swap).into(), t(&[bt, n, m]));
    // yt is read again: its copy stays.
    let yt2 = b.op(
        "add",
        "yt2",
        t(&[bt, k, n]),
        vec![("x", (&yt).into()), ("y", (&yt).into())],
    );
    // u = x·yᵀ is an output as well as transposed: no swap.
    let u = matmul(&mut b, "u", &x, &no, &y, &yes, t(&[bt, m, n]));
    let ut = transpose(&mut b, "ut", &u, (&swap).into(), t(&[bt, n, m]));
    let xo = transpose(&mut b, "xo", &x, (&outer).into(), t(&[m, bt, k]));
    for v in [&pt, &yt2, &u, &ut, &xo] {
        b.output(v);
    }
    let device = CpuDevice::new(NumericMode::Fp32);
    let mut kernel = device.compile(&program(b), &Default::default()).unwrap();
    let mut rng = Rng::new(7);
    let xin: Vec<f32> = (0..bt * m * k).map(|_| rng.uniform()).collect();
    let yin: Vec<f32> = (0..bt * n * k).map(|_| rng.uniform()).collect();
    let lens = [bt * n * m, bt * k * n, bt * m * n, bt * n * m, m * bt * k];
    let mut outs: Vec<Vec<f32>> = lens.iter().map(|&l| vec![f32::NAN; l]).collect();
    let mut views: Vec<&mut [f32]> = outs.iter_mut().map(Vec::as_mut_slice).collect();
    device.eval(&mut kernel, &[&xin, &yin], &mut views).unwrap();

    // x·yᵀ per batch, [bt][m][n], in f64.
    let xy = |bi: usize, i: usize, j: usize| -> f64 {
        (0..k)
            .map(|p| xin[(bi * m + i) * k + p] as f64 * yin[(bi * n + j) * k + p] as f64)
            .sum()
    };
    let close = |got: f32, want: f64, what: &str| {
        assert!(
            (got as f64 - want).abs() <= 1e-5 * (1.0 + want.abs()),
            "{what}: {got} vs {want}"
        );
    };
    for bi in 0..bt {
        for i in 0..m {
            for j in 0..n {
                close(outs[0][(bi * n + j) * m + i], xy(bi, i, j), "pt");
                close(outs[2][(bi * m + i) * n + j], xy(bi, i, j), "u");
                close(outs[3][(bi * n + j) * m + i], xy(bi, i, j), "ut");
            }
        }
        for p in 0..k {
            for j in 0..n {
                let want = 2.0 * yin[(bi * n + j) * k + p] as f64;
                close(outs[1][(bi * k + p) * n + j], want, "yt2");
            }
            for i in 0..m {
                close(
                    outs[4][(i * bt + bi) * k + p],
                    xin[(bi * m + i) * k + p] as f64,
                    "xo",
                );
            }
        }
    }
}
