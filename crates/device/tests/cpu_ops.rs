//! Every op of the CPU device against a naive f64 reference on random inputs, in both numeric
//! modes. The references share no code with the device: plain loops over multi-indices.

mod common;

use anetrain_device::NumericMode;
use anetrain_mil::{DType, FloatLit, Literal};
use common::*;

fn input<'a>(key: &'a str, shape: &[usize], rng: &mut Rng, scale: f32) -> In<'a> {
    In {
        key,
        shape: shape.to_vec(),
        data: rng.vec(shape.iter().product(), scale),
    }
}

fn seen(mode: NumericMode, i: &In<'_>) -> T {
    T::from_f32(&i.shape, &as_seen(mode, &i.data))
}

fn ints(v: &[i32]) -> Literal {
    Literal::int32_tensor(v)
}

// ---------------------------------------------------------------------------------------------
// Naive references.

fn ref_binary(x: &T, y: &T, out_shape: &[usize], f: impl Fn(f64, f64) -> f64) -> Vec<f64> {
    indices(out_shape)
        .iter()
        .map(|i| f(x.at_broadcast(i), y.at_broadcast(i)))
        .collect()
}

#[allow(clippy::too_many_arguments)]
fn ref_conv(
    x: &T,
    w: &T,
    bias: Option<&T>,
    strides: [usize; 2],
    pad: [usize; 4],
    dil: [usize; 2],
    groups: usize,
) -> T {
    let (n, cin, h, wd) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3]);
    let (cout, cin_g, kh, kw) = (w.shape[0], w.shape[1], w.shape[2], w.shape[3]);
    assert_eq!(cin_g * groups, cin);
    let oh = (h + pad[0] + pad[1] - dil[0] * (kh - 1) - 1) / strides[0] + 1;
    let ow = (wd + pad[2] + pad[3] - dil[1] * (kw - 1) - 1) / strides[1] + 1;
    let mut out = vec![0.0; n * cout * oh * ow];
    for b in 0..n {
        for co in 0..cout {
            let g = co / (cout / groups);
            for y in 0..oh {
                for xo in 0..ow {
                    let mut acc = bias.map_or(0.0, |bb| bb.data[co]);
                    for ci in 0..cin_g {
                        for ky in 0..kh {
                            for kx in 0..kw {
                                let iy = (y * strides[0] + ky * dil[0]) as i64 - pad[0] as i64;
                                let ix = (xo * strides[1] + kx * dil[1]) as i64 - pad[2] as i64;
                                if iy < 0 || ix < 0 || iy >= h as i64 || ix >= wd as i64 {
                                    continue;
                                }
                                let xv = x.data[((b * cin + g * cin_g + ci) * h + iy as usize)
                                    * wd
                                    + ix as usize];
                                let wv = w.data[((co * cin_g + ci) * kh + ky) * kw + kx];
                                acc += xv * wv;
                            }
                        }
                    }
                    out[((b * cout + co) * oh + y) * ow + xo] = acc;
                }
            }
        }
    }
    T::new(&[n, cout, oh, ow], out)
}

fn ref_matmul(x: &T, y: &T, tx: bool, ty: bool, out_shape: &[usize]) -> Vec<f64> {
    let r = out_shape.len();
    let k = if tx {
        x.shape[x.shape.len() - 2]
    } else {
        x.shape[x.shape.len() - 1]
    };
    indices(out_shape)
        .iter()
        .map(|idx| {
            let (i, j) = (idx[r - 2], idx[r - 1]);
            (0..k)
                .map(|p| {
                    let mut xi = idx.clone();
                    let mut yi = idx.clone();
                    (xi[r - 2], xi[r - 1]) = if tx { (p, i) } else { (i, p) };
                    (yi[r - 2], yi[r - 1]) = if ty { (j, p) } else { (p, j) };
                    x.at_broadcast(&xi) * y.at_broadcast(&yi)
                })
                .sum()
        })
        .collect()
}

fn ref_softmax(x: &T, axis: usize) -> Vec<f64> {
    let strides = x.strides();
    indices(&x.shape)
        .iter()
        .map(|idx| {
            let base: usize = idx.iter().zip(&strides).map(|(i, s)| i * s).sum::<usize>()
                - idx[axis] * strides[axis];
            let vals: Vec<f64> = (0..x.shape[axis])
                .map(|a| x.data[base + a * strides[axis]])
                .collect();
            let max = vals.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let sum: f64 = vals.iter().map(|v| (v - max).exp()).sum();
            (x.data[base + idx[axis] * strides[axis]] - max).exp() / sum
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------

#[test]
fn conv_pointwise_and_grouped_match_reference() {
    for mode in MODES {
        let (atol, rtol) = tolerance(mode);
        for (cin, cout, groups, s) in [(16, 24, 1, 8), (12, 8, 4, 5), (64, 64, 1, 32)] {
            let mut rng = Rng::new(cin as u64 * 31 + groups as u64);
            let x = input("x", &[2, cin, 1, s], &mut rng, 1.0);
            let w = input("weight", &[cout, cin / groups, 1, 1], &mut rng, 0.5);
            let want = ref_conv(
                &seen(mode, &x),
                &seen(mode, &w),
                None,
                [1, 1],
                [0; 4],
                [1, 1],
                groups,
            );
            let (shape, got) = run_op(
                "conv",
                dtype_for(mode),
                &[x, w],
                &[("groups", Literal::int32(groups as i32))],
                mode,
            );
            assert_eq!(shape, want.shape);
            assert_close(
                &format!("conv {cin}->{cout} g{groups} {mode}"),
                &got,
                &want.data,
                atol,
                rtol,
            );
        }
    }
}

/// A float tensor constant; values are multiples of 1/64, exact in fp16 and in six decimals.
fn float_const(dtype: DType, shape: &[usize], values: &[f32]) -> Literal {
    Literal::Tensor {
        dtype,
        shape: shape.to_vec(),
        values: values
            .iter()
            .map(|&v| anetrain_mil::Scalar::Float(FloatLit::fixed6(v as f64)))
            .collect(),
    }
}

#[test]
fn pointwise_conv_with_constant_weights_and_bias_matches_reference() {
    // Constant weights are packed at compile time where the CPU has the packed kernel. The
    // shapes leave partial tiles in both directions (rows not a multiple of 6, columns not of
    // 16), cross the kernel's k blocks (cin 300), and batch over images and groups.
    for mode in MODES {
        let (atol, rtol) = tolerance(mode);
        for (n, cin, cout, groups, s) in [
            (1, 40, 70, 1, 20),
            (2, 24, 18, 2, 33),
            (1, 300, 13, 1, 64),
            (3, 8, 8, 1, 9),
        ] {
            let mut rng = Rng::new(cin as u64 * 7 + s as u64);
            let x = input("x", &[n, cin, 1, s], &mut rng, 1.0);
            let grid = |v: f32| (v * 32.0).round() / 64.0;
            let w: Vec<f32> = rng
                .vec(cout * cin / groups, 1.0)
                .into_iter()
                .map(grid)
                .collect();
            let bias: Vec<f32> = rng.vec(cout, 1.0).into_iter().map(grid).collect();
            let w_shape = [cout, cin / groups, 1, 1];
            let want = ref_conv(
                &seen(mode, &x),
                &T::from_f32(&w_shape, &w),
                Some(&T::from_f32(&[cout], &bias)),
                [1, 1],
                [0; 4],
                [1, 1],
                groups,
            );
            let dtype = dtype_for(mode);
            let (shape, got) = run_op(
                "conv",
                dtype,
                &[x],
                &[
                    ("weight", float_const(dtype, &w_shape, &w)),
                    ("bias", float_const(dtype, &[cout], &bias)),
                    ("groups", Literal::int32(groups as i32)),
                ],
                mode,
            );
            assert_eq!(shape, want.shape);
            assert_close(
                &format!("const conv n{n} {cin}->{cout} g{groups} s{s} {mode}"),
                &got,
                &want.data,
                atol,
                rtol,
            );
        }
    }
}

#[test]
fn conv_with_kernel_strides_padding_dilation_and_bias_matches_reference() {
    for mode in MODES {
        let (atol, rtol) = tolerance(mode);
        let mut rng = Rng::new(7);
        let x = input("x", &[1, 4, 7, 9], &mut rng, 1.0);
        let w = input("weight", &[6, 2, 3, 2], &mut rng, 0.5);
        let bias = input("bias", &[6], &mut rng, 0.5);
        let want = ref_conv(
            &seen(mode, &x),
            &seen(mode, &w),
            Some(&seen(mode, &bias)),
            [2, 1],
            [1, 2, 0, 1],
            [1, 2],
            2,
        );
        let (shape, got) = run_op(
            "conv",
            dtype_for(mode),
            &[x, w, bias],
            &[
                ("groups", Literal::int32(2)),
                ("strides", ints(&[2, 1])),
                ("pad_type", Literal::string("custom")),
                ("pad", ints(&[1, 2, 0, 1])),
                ("dilations", ints(&[1, 2])),
            ],
            mode,
        );
        assert_eq!(shape, want.shape);
        assert_close(&format!("conv 3x2 {mode}"), &got, &want.data, atol, rtol);
    }
}

#[test]
fn matmul_with_transposes_and_broadcast_batches_matches_reference() {
    let cases: [(&[usize], &[usize], bool, bool); 4] = [
        (&[3, 5], &[5, 4], false, false),
        (&[2, 1, 5, 3], &[3, 5, 4], true, false),
        (&[1, 3, 6, 5], &[2, 1, 4, 5], false, true),
        (&[4, 2, 6], &[4, 7, 2], true, true),
    ];
    for mode in MODES {
        let (atol, rtol) = tolerance(mode);
        for (n, (xs, ys, tx, ty)) in cases.iter().enumerate() {
            let mut rng = Rng::new(100 + n as u64);
            let x = input("x", xs, &mut rng, 1.0);
            let y = input("y", ys, &mut rng, 1.0);
            let (xt, yt) = (seen(mode, &x), seen(mode, &y));
            let (shape, got) = run_op(
                "matmul",
                dtype_for(mode),
                &[x, y],
                &[
                    ("transpose_x", Literal::bool(*tx)),
                    ("transpose_y", Literal::bool(*ty)),
                ],
                mode,
            );
            let want = ref_matmul(&xt, &yt, *tx, *ty, &shape);
            assert_close(
                &format!("matmul case {n} {mode}"),
                &got,
                &want,
                atol,
                rtol * 2.0,
            );
        }
    }
}

#[test]
fn binary_ops_broadcast_like_numpy() {
    type F = fn(f64, f64) -> f64;
    let ops: [(&str, F); 7] = [
        ("add", |a, b| a + b),
        ("sub", |a, b| a - b),
        ("mul", |a, b| a * b),
        ("real_div", |a, b| a / b),
        ("pow", |a, b| a.powf(b)),
        ("maximum", f64::max),
        ("minimum", f64::min),
    ];
    // The last two are large enough for the device to split them across threads: by the
    // outer dimension (odd, with a broadcast operand), and a flat run.
    let shapes: [(&[usize], &[usize]); 6] = [
        (&[2, 3, 4], &[2, 3, 4]),
        (&[1, 6, 1, 5], &[1, 1, 1, 5]),
        (&[3, 1], &[1, 4]),
        (&[2, 3, 4], &[4]),
        (&[5, 67, 101], &[1, 67, 1]),
        (&[40_001], &[40_001]),
    ];
    for mode in MODES {
        let (atol, rtol) = tolerance(mode);
        for (name, f) in ops {
            for (xs, ys) in shapes {
                let mut rng = Rng::new(name.len() as u64 * 13 + xs.len() as u64);
                let mut x = input("x", xs, &mut rng, 2.0);
                let mut y = input("y", ys, &mut rng, 2.0);
                if name == "pow" {
                    // A positive base keeps pow real.
                    x.data.iter_mut().for_each(|v| *v = v.abs() + 0.5);
                    y.data.iter_mut().for_each(|v| *v *= 0.75);
                }
                if name == "real_div" {
                    y.data
                        .iter_mut()
                        .for_each(|v| *v = v.signum() * (v.abs() + 0.5));
                }
                let (xt, yt) = (seen(mode, &x), seen(mode, &y));
                let (shape, got) = run_op(name, dtype_for(mode), &[x, y], &[], mode);
                let want = ref_binary(&xt, &yt, &shape, f);
                assert_close(
                    &format!("{name} {xs:?} {ys:?} {mode}"),
                    &got,
                    &want,
                    atol,
                    rtol,
                );
            }
        }
    }
}

#[test]
fn unary_ops_match_reference() {
    type F = fn(f64) -> f64;
    let ops: Vec<(&str, F, bool)> = vec![
        ("sigmoid", |v| 1.0 / (1.0 + (-v).exp()), false),
        ("exp", f64::exp, false),
        ("log", f64::ln, true),
        ("sqrt", f64::sqrt, true),
        ("relu", |v| v.max(0.0), false),
        ("silu", |v| v / (1.0 + (-v).exp()), false),
        ("tanh", f64::tanh, false),
        ("abs", f64::abs, false),
    ];
    for mode in MODES {
        let (atol, rtol) = tolerance(mode);
        for (name, f, positive) in &ops {
            let mut rng = Rng::new(name.len() as u64);
            let mut x = input("x", &[3, 17], &mut rng, 3.0);
            if *positive {
                x.data.iter_mut().for_each(|v| *v = v.abs() + 0.1);
            }
            let xt = seen(mode, &x);
            let (_, got) = run_op(name, dtype_for(mode), &[x], &[], mode);
            let want: Vec<f64> = xt.data.iter().map(|&v| f(v)).collect();
            assert_close(&format!("{name} {mode}"), &got, &want, atol, rtol);
        }
    }
}

#[test]
fn gelu_modes_and_rsqrt_epsilon() {
    let mut rng = Rng::new(5);
    let x = input("x", &[40], &mut rng, 3.0);
    let xt = seen(NumericMode::Fp32, &x);
    let exact = |v: f64| 0.5 * v * (1.0 + libm_erf(v / 2f64.sqrt()));
    let (_, got) = run_op(
        "gelu",
        DType::Fp32,
        &[x],
        &[("mode", Literal::string("EXACT"))],
        NumericMode::Fp32,
    );
    let want: Vec<f64> = xt.data.iter().map(|&v| exact(v)).collect();
    assert_close("gelu exact", &got, &want, 2e-6, 1e-5);

    let mut rng = Rng::new(6);
    let mut x = input("x", &[40], &mut rng, 3.0);
    x.data.iter_mut().for_each(|v| *v = v.abs());
    let xt = seen(NumericMode::Fp32, &x);
    let eps = Literal::float(DType::Fp32, FloatLit::fixed6(0.25));
    let (_, got) = run_op(
        "rsqrt",
        DType::Fp32,
        &[x],
        &[("epsilon", eps)],
        NumericMode::Fp32,
    );
    let want: Vec<f64> = xt.data.iter().map(|&v| 1.0 / (v + 0.25).sqrt()).collect();
    assert_close("rsqrt eps", &got, &want, 1e-6, 1e-5);
}

/// erf by its Maclaurin series, summed until terms vanish (independent of the device's).
fn libm_erf(x: f64) -> f64 {
    let mut sum = 0.0;
    let mut term = x;
    let mut n = 0;
    while term.abs() > 1e-17 || n < 5 {
        sum += term / (2 * n + 1) as f64;
        n += 1;
        term *= -x * x / n as f64;
        if n > 200 {
            break;
        }
    }
    sum * 2.0 / std::f64::consts::PI.sqrt()
}

#[test]
fn softmax_over_last_and_inner_axes() {
    for mode in MODES {
        let (atol, rtol) = tolerance(mode);
        for (shape, axis) in [
            (vec![2, 3, 5, 7], -1i32),
            (vec![1, 9, 1, 6], 1),
            (vec![4, 5], 0),
            // Rows enough to be split across threads.
            (vec![3, 129, 97], -1),
        ] {
            let mut rng = Rng::new(shape.len() as u64 + axis as u64 * 3);
            let x = input("x", &shape, &mut rng, 4.0);
            let xt = seen(mode, &x);
            let (_, got) = run_op(
                "softmax",
                dtype_for(mode),
                &[x],
                &[("axis", Literal::int32(axis))],
                mode,
            );
            let a = axis.rem_euclid(shape.len() as i32) as usize;
            assert_close(
                &format!("softmax {shape:?} axis {axis} {mode}"),
                &got,
                &ref_softmax(&xt, a),
                atol,
                rtol,
            );
        }
    }
}

#[test]
fn reductions_over_any_axes() {
    for mode in MODES {
        let (atol, rtol) = tolerance(mode);
        for kind in ["reduce_sum", "reduce_mean", "reduce_max"] {
            // The last case reduces rows long enough for the eight-lane sums and maxima.
            for (shape, axes, keep) in [
                ([2, 5, 3, 4], vec![1], true),
                ([2, 5, 3, 4], vec![-1], false),
                ([2, 5, 3, 4], vec![0, 2], true),
                ([2, 5, 3, 4], vec![1, 3], false),
                ([2, 3, 2, 37], vec![-1], true),
            ] {
                let mut rng = Rng::new(axes.len() as u64 * 7 + keep as u64);
                let x = input("x", &shape, &mut rng, 1.0);
                let xt = seen(mode, &x);
                let (out_shape, got) = run_op(
                    kind,
                    dtype_for(mode),
                    &[x],
                    &[("axes", ints(&axes)), ("keep_dims", Literal::bool(keep))],
                    mode,
                );
                let norm: Vec<usize> = axes.iter().map(|&a| a.rem_euclid(4) as usize).collect();
                let kept: Vec<usize> = (0..4)
                    .map(|d| if norm.contains(&d) { 1 } else { shape[d] })
                    .collect();
                let mut want = Vec::new();
                for idx in indices(&kept) {
                    let mut vals = Vec::new();
                    for full in indices(&shape) {
                        if (0..4).all(|d| norm.contains(&d) || full[d] == idx[d]) {
                            vals.push(xt.at_broadcast(&full));
                        }
                    }
                    want.push(match kind {
                        "reduce_sum" => vals.iter().sum(),
                        "reduce_mean" => vals.iter().sum::<f64>() / vals.len() as f64,
                        _ => vals.iter().cloned().fold(f64::NEG_INFINITY, f64::max),
                    });
                }
                let expect_shape: Vec<usize> = if keep {
                    kept.clone()
                } else {
                    (0..4)
                        .filter(|d| !norm.contains(d))
                        .map(|d| shape[d])
                        .collect()
                };
                assert_eq!(out_shape, expect_shape, "{kind} {axes:?}");
                assert_close(&format!("{kind} {axes:?} {mode}"), &got, &want, atol, rtol);
            }
        }
    }
}

#[test]
fn slices_transpose_reshape_and_concat_move_data_exactly() {
    let mode = NumericMode::Fp32;
    let mut rng = Rng::new(9);
    let shape = [1, 6, 2, 5];
    let x = input("x", &shape, &mut rng, 1.0);
    let xt = seen(mode, &x);
    // Contiguous channel slice (a view) and a spatial slice (a copy).
    for (begin, size) in [([0, 2, 0, 0], [1, 3, 2, 5]), ([0, 1, 1, 2], [1, 4, 1, -1])] {
        let (out_shape, got) = run_op(
            "slice_by_size",
            DType::Fp32,
            &[In {
                key: "x",
                shape: shape.to_vec(),
                data: x.data.clone(),
            }],
            &[("begin", ints(&begin)), ("size", ints(&size))],
            mode,
        );
        let want: Vec<f64> = indices(&out_shape)
            .iter()
            .map(|i| {
                let src: Vec<usize> = i.iter().zip(&begin).map(|(a, b)| a + *b as usize).collect();
                xt.at_broadcast(&src)
            })
            .collect();
        assert_close(&format!("slice_by_size {begin:?}"), &got, &want, 0.0, 0.0);
    }
    // slice_by_index with a stride and an end mask.
    let (out_shape, got) = run_op(
        "slice_by_index",
        DType::Fp32,
        &[In {
            key: "x",
            shape: shape.to_vec(),
            data: x.data.clone(),
        }],
        &[
            ("begin", ints(&[0, 1, 0, 0])),
            ("end", ints(&[1, 6, 2, 0])),
            ("stride", ints(&[1, 2, 1, 2])),
            (
                "end_mask",
                Literal::Tensor {
                    dtype: DType::Bool,
                    shape: vec![4],
                    values: [false, false, false, true]
                        .iter()
                        .map(|&b| anetrain_mil::Scalar::Bool(b))
                        .collect(),
                },
            ),
        ],
        mode,
    );
    assert_eq!(out_shape, vec![1, 3, 2, 3]);
    let want: Vec<f64> = indices(&out_shape)
        .iter()
        .map(|i| xt.at_broadcast(&[0, 1 + 2 * i[1], i[2], 2 * i[3]]))
        .collect();
    assert_close("slice_by_index", &got, &want, 0.0, 0.0);
    // Transpose with the attention permutation.
    let (out_shape, got) = run_op(
        "transpose",
        DType::Fp32,
        &[In {
            key: "x",
            shape: shape.to_vec(),
            data: x.data.clone(),
        }],
        &[("perm", ints(&[0, 3, 1, 2]))],
        mode,
    );
    assert_eq!(out_shape, vec![1, 5, 6, 2]);
    let want: Vec<f64> = indices(&out_shape)
        .iter()
        .map(|i| xt.at_broadcast(&[i[0], i[2], i[3], i[1]]))
        .collect();
    assert_close("transpose", &got, &want, 0.0, 0.0);
    // Reshape keeps row-major order.
    let (out_shape, got) = run_op(
        "reshape",
        DType::Fp32,
        &[In {
            key: "x",
            shape: shape.to_vec(),
            data: x.data.clone(),
        }],
        &[("shape", ints(&[1, 3, 4, 5]))],
        mode,
    );
    assert_eq!(out_shape, vec![1, 3, 4, 5]);
    assert_close("reshape", &got, &xt.data, 0.0, 0.0);
}

#[test]
fn concat_along_channels_spatial_and_interleaved() {
    let mode = NumericMode::Fp32;
    let mut rng = Rng::new(10);
    let a = input("a", &[1, 2, 1, 3], &mut rng, 1.0);
    let b = input("b", &[1, 2, 1, 3], &mut rng, 1.0);
    let (at, bt) = (seen(mode, &a), seen(mode, &b));
    for (axis, interleave) in [(1, false), (3, false), (1, true)] {
        let mut bld = anetrain_mil::FunctionBuilder::new("main", "ios18");
        let ty = anetrain_mil::Type::tensor(DType::Fp32, vec![1, 2, 1, 3]);
        let va = bld.input("a", ty.clone());
        let vb = bld.input("b", ty);
        let ax = bld.constant("ax", Literal::int32(axis));
        let il = bld.constant("il", Literal::bool(interleave));
        let mut out_shape = vec![1, 2, 1, 3];
        out_shape[axis as usize] *= 2;
        let vals: &[anetrain_mil::Var] = &[va, vb];
        let out = bld.op(
            "concat",
            "out",
            anetrain_mil::Type::tensor(DType::Fp32, out_shape.clone()),
            vec![
                ("axis", (&ax).into()),
                ("interleave", (&il).into()),
                ("values", vals.into()),
            ],
        );
        bld.output(&out);
        let program = anetrain_mil::Program::single(
            anetrain_mil::Dialect::Ios18,
            anetrain_mil::Style::Compact,
            bld.finish(),
        );
        use anetrain_device::Device;
        let dev = anetrain_device::CpuDevice::new(mode);
        let mut k = dev.compile(&program, &Default::default()).unwrap();
        let mut got = vec![0.0; 12];
        dev.eval(&mut k, &[&a.data, &b.data], &mut [&mut got])
            .unwrap();
        let want: Vec<f64> = indices(&out_shape)
            .iter()
            .map(|i| {
                let ax = axis as usize;
                let half = out_shape[ax] / 2;
                let (src, j) = if interleave {
                    (i[ax] % 2, i[ax] / 2)
                } else {
                    (i[ax] / half, i[ax] % half)
                };
                let mut idx = i.clone();
                idx[ax] = j;
                if src == 0 {
                    at.at_broadcast(&idx)
                } else {
                    bt.at_broadcast(&idx)
                }
            })
            .collect();
        assert_close(
            &format!("concat axis {axis} interleave {interleave}"),
            &got,
            &want,
            0.0,
            0.0,
        );
    }
}

#[test]
fn fp16_mode_rounds_every_fp16_tensor_and_fp32_mode_does_not() {
    // 1 + 2^-12 is not an fp16 value: it rounds to 1 in fp16 mode.
    let v = 1.0 + 2f32.powi(-12);
    let x = || In {
        key: "x",
        shape: vec![4],
        data: vec![v; 4],
    };
    let y = || In {
        key: "y",
        shape: vec![4],
        data: vec![v; 4],
    };
    let (_, got16) = run_op("add", DType::Fp16, &[x(), y()], &[], NumericMode::Fp16);
    assert_eq!(got16, vec![2.0; 4]);
    let (_, got32) = run_op("add", DType::Fp16, &[x(), y()], &[], NumericMode::Fp32);
    assert_eq!(got32, vec![2.0 * v; 4]);
    // Overflow beyond fp16's range becomes infinity, as on the ANE.
    let big = || In {
        key: "x",
        shape: vec![1],
        data: vec![60000.0],
    };
    let big2 = || In {
        key: "y",
        shape: vec![1],
        data: vec![60000.0],
    };
    let (_, got) = run_op("add", DType::Fp16, &[big(), big2()], &[], NumericMode::Fp16);
    assert!(got[0].is_infinite());
}

#[test]
fn cast_rounds_to_fp16_and_truncates_to_int() {
    let x = In {
        key: "x",
        shape: vec![3],
        data: vec![1.0 + 2f32.powi(-12), -2.7, 3.9],
    };
    let (_, got) = run_op(
        "cast",
        DType::Fp32,
        &[x],
        &[("dtype", Literal::string("fp16"))],
        NumericMode::Fp16,
    );
    assert_eq!(
        got,
        vec![
            1.0,
            half::f16::from_f32(-2.7).to_f32(),
            half::f16::from_f32(3.9).to_f32()
        ]
    );
    let x = In {
        key: "x",
        shape: vec![3],
        data: vec![1.5, -2.7, 3.9],
    };
    let (_, got) = run_op(
        "cast",
        DType::Fp32,
        &[x],
        &[("dtype", Literal::string("int32"))],
        NumericMode::Fp32,
    );
    assert_eq!(got, vec![1.0, -2.0, 3.0]);
}

#[test]
fn quantize_and_dequantize_per_tensor_and_per_axis() {
    let x = In {
        key: "input",
        shape: vec![1, 2, 1, 3],
        data: vec![0.1, -0.26, 40.0, 0.5, -0.124, -99.0],
    };
    let (_, q) = run_op(
        "quantize",
        DType::Fp32,
        &[x],
        &[
            ("scale", Literal::float(DType::Fp32, FloatLit::fixed6(0.25))),
            ("output_dtype", Literal::string("int8")),
        ],
        NumericMode::Fp32,
    );
    // round-half-even(x / 0.25), saturated: 0.4→0, -1.04→-1, 160→127, 2, -0.496→0, -396→-128
    assert_eq!(q, vec![0.0, -1.0, 127.0, 2.0, -0.0, -128.0]);
    let xq = Literal::Tensor {
        dtype: DType::Int8,
        shape: vec![1, 2, 1, 3],
        values: [1, -2, 3, 4, 5, -6]
            .iter()
            .map(|&v| anetrain_mil::Scalar::Int(v))
            .collect(),
    };
    let scale = Literal::Tensor {
        dtype: DType::Fp32,
        shape: vec![2],
        values: vec![
            anetrain_mil::Scalar::Float(FloatLit::fixed6(0.5)),
            anetrain_mil::Scalar::Float(FloatLit::fixed6(2.0)),
        ],
    };
    let (_, dq) = run_op(
        "dequantize",
        DType::Fp32,
        &[],
        &[("input", xq), ("scale", scale), ("axis", Literal::int32(1))],
        NumericMode::Fp32,
    );
    assert_eq!(dq, vec![0.5, -1.0, 1.5, 8.0, 10.0, -12.0]);
}

#[test]
fn scaled_dot_product_attention_with_causal_mask() {
    for mode in MODES {
        let (atol, rtol) = tolerance(mode);
        let (h, l, e) = (2, 5, 4);
        let mut rng = Rng::new(77);
        let q = input("query", &[1, h, l, e], &mut rng, 1.0);
        let k = input("key", &[1, h, l, e], &mut rng, 1.0);
        let v = input("value", &[1, h, l, e], &mut rng, 1.0);
        let mask: Vec<f32> = (0..l * l)
            .map(|i| if i % l <= i / l { 0.0 } else { -65504.0 })
            .collect();
        let m = In {
            key: "attn_mask",
            shape: vec![1, 1, l, l],
            data: mask,
        };
        let (qt, kt, vt, mt) = (
            seen(mode, &q),
            seen(mode, &k),
            seen(mode, &v),
            seen(mode, &m),
        );
        let (_, got) = run_op(
            "scaled_dot_product_attention",
            dtype_for(mode),
            &[q, k, v, m],
            &[],
            mode,
        );
        let mut want = Vec::new();
        for hh in 0..h {
            for i in 0..l {
                let scores: Vec<f64> = (0..l)
                    .map(|j| {
                        (0..e)
                            .map(|p| {
                                qt.at_broadcast(&[0, hh, i, p]) * kt.at_broadcast(&[0, hh, j, p])
                            })
                            .sum::<f64>()
                            / (e as f64).sqrt()
                            + mt.at_broadcast(&[0, 0, i, j])
                    })
                    .collect();
                let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = scores.iter().map(|s| (s - max).exp()).sum();
                for p in 0..e {
                    want.push(
                        (0..l)
                            .map(|j| (scores[j] - max).exp() / z * vt.at_broadcast(&[0, hh, j, p]))
                            .sum(),
                    );
                }
            }
        }
        assert_close(&format!("sdpa {mode}"), &got, &want, atol * 2.0, rtol * 2.0);
    }
}
