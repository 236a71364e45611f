//! The three example programs of the spec (section 2.8), built with the builder. They are the
//! printer's byte-exact fixtures and the first kernels every device is tested on.

use crate::build::FunctionBuilder;
use crate::ir::{DType, Dialect, FloatLit, Literal, Program, Style, Type};

fn t(dtype: DType, shape: &[usize]) -> Type {
    Type::tensor(dtype, shape.to_vec())
}

fn blob(dtype: DType, shape: &[usize], path: &str) -> Literal {
    Literal::Blob {
        dtype,
        shape: shape.to_vec(),
        path: path.to_string(),
        offset: 64,
    }
}

/// Example A: a 1×1 conv, 64→64 channels, S=32, fp32 I/O cast to fp16 inside; weights in
/// `@model_path/weights/weight.bin` as `[64, 64, 1, 1]`.
pub fn conv_fp32_io() -> Program {
    let mut b = FunctionBuilder::new("main", "ios18");
    let x = b.input("x", t(DType::Fp32, &[1, 64, 1, 32]));
    let pt = b.constant("pt", Literal::string("valid"));
    let st = b.constant("st", Literal::int32_tensor(&[1, 1]));
    let pd = b.constant("pd", Literal::int32_tensor(&[0, 0, 0, 0]));
    let dl = b.constant("dl", Literal::int32_tensor(&[1, 1]));
    let gr = b.constant("gr", Literal::int32(1));
    let to16 = b.constant("to16", Literal::string("fp16"));
    let x16 = b.op_named(
        "cast",
        "x16",
        "cin",
        t(DType::Fp16, &[1, 64, 1, 32]),
        vec![("dtype", (&to16).into()), ("x", (&x).into())],
    );
    let w = b.constant(
        "W",
        blob(
            DType::Fp16,
            &[64, 64, 1, 1],
            "@model_path/weights/weight.bin",
        ),
    );
    let y16 = b.op_named(
        "conv",
        "y16",
        "conv",
        t(DType::Fp16, &[1, 64, 1, 32]),
        vec![
            ("dilations", (&dl).into()),
            ("groups", (&gr).into()),
            ("pad", (&pd).into()),
            ("pad_type", (&pt).into()),
            ("strides", (&st).into()),
            ("weight", (&w).into()),
            ("x", (&x16).into()),
        ],
    );
    let to32 = b.constant("to32", Literal::string("fp32"));
    let y = b.op_named(
        "cast",
        "y",
        "cout",
        t(DType::Fp32, &[1, 64, 1, 32]),
        vec![("dtype", (&to32).into()), ("x", (&y16).into())],
    );
    b.output(&y);
    Program::single(Dialect::Ios18, Style::Compact, b.finish())
}

/// Example B: the "dynamic" matmul. Input `[1, IC, 1, S+OC]` holds activations in spatial
/// columns `0..S` and the weight matrix `W[IC, OC]` in columns `S..S+OC`; the output is
/// `Wᵀ·x` as `[1, OC, 1, S]`. With `ic=64, oc=128, s=32` it is the spec's example.
pub fn dynamic_matmul(ic: usize, oc: usize, s: usize) -> Program {
    let i = |v: usize| v as i32;
    let mut b = FunctionBuilder::new("main", "ios18");
    let x = b.input("x", t(DType::Fp16, &[1, ic, 1, s + oc]));
    let ba = b.constant("mm_ba", Literal::int32_tensor(&[0, 0, 0, 0]));
    let sa = b.constant("mm_sa", Literal::int32_tensor(&[1, i(ic), 1, i(s)]));
    let act = b.op(
        "slice_by_size",
        "mm_act",
        t(DType::Fp16, &[1, ic, 1, s]),
        vec![
            ("x", (&x).into()),
            ("begin", (&ba).into()),
            ("size", (&sa).into()),
        ],
    );
    let bw = b.constant("mm_bw", Literal::int32_tensor(&[0, 0, 0, i(s)]));
    let sw = b.constant("mm_sw", Literal::int32_tensor(&[1, i(ic), 1, i(oc)]));
    let wt = b.op(
        "slice_by_size",
        "mm_wt",
        t(DType::Fp16, &[1, ic, 1, oc]),
        vec![
            ("x", (&x).into()),
            ("begin", (&bw).into()),
            ("size", (&sw).into()),
        ],
    );
    let ra = b.constant("mm_ra", Literal::int32_tensor(&[1, 1, i(ic), i(s)]));
    let a2 = b.op(
        "reshape",
        "mm_a2",
        t(DType::Fp16, &[1, 1, ic, s]),
        vec![("shape", (&ra).into()), ("x", (&act).into())],
    );
    let pm = b.constant("mm_pm", Literal::int32_tensor(&[0, 1, 3, 2]));
    let a3 = b.op(
        "transpose",
        "mm_a3",
        t(DType::Fp16, &[1, 1, s, ic]),
        vec![("perm", (&pm).into()), ("x", (&a2).into())],
    );
    let rw = b.constant("mm_rw", Literal::int32_tensor(&[1, 1, i(ic), i(oc)]));
    let wm = b.op(
        "reshape",
        "mm_W",
        t(DType::Fp16, &[1, 1, ic, oc]),
        vec![("shape", (&rw).into()), ("x", (&wt).into())],
    );
    let bf = b.constant("bF", Literal::bool(false));
    let yh = b.op(
        "matmul",
        "mm_yh",
        t(DType::Fp16, &[1, 1, s, oc]),
        vec![
            ("transpose_x", (&bf).into()),
            ("transpose_y", (&bf).into()),
            ("x", (&a3).into()),
            ("y", (&wm).into()),
        ],
    );
    let yt = b.op(
        "transpose",
        "mm_yt",
        t(DType::Fp16, &[1, 1, oc, s]),
        vec![("perm", (&pm).into()), ("x", (&yh).into())],
    );
    let ro = b.constant("mm_ro", Literal::int32_tensor(&[1, i(oc), 1, i(s)]));
    let y = b.op(
        "reshape",
        "mm_y",
        t(DType::Fp16, &[1, oc, 1, s]),
        vec![("shape", (&ro).into()), ("x", (&yt).into())],
    );
    b.output(&y);
    Program::single(Dialect::Ios18, Style::Compact, b.finish())
}

/// Example C: the final RMSNorm over `d` channels at sequence length `s`, weight file
/// `@model_path/weights/rms_w.bin` holding `[1, d, 1, 1]`. With `d=768, s=256` it is the
/// spec's example (`1/768` written `0.001302`).
pub fn final_rmsnorm(d: usize, s: usize) -> Program {
    let mut b = FunctionBuilder::new("main", "ios18");
    let full = t(DType::Fp16, &[1, d, 1, s]);
    let row = t(DType::Fp16, &[1, 1, 1, s]);
    let x = b.input("x", full.clone());
    let sq = b.op(
        "mul",
        "sq",
        full.clone(),
        vec![("x", (&x).into()), ("y", (&x).into())],
    );
    let rax = b.constant("rax", Literal::int32_tensor(&[1]));
    let kd = b.constant("kd", Literal::bool(true));
    let ss = b.op(
        "reduce_sum",
        "ss",
        row.clone(),
        vec![
            ("x", (&sq).into()),
            ("axes", (&rax).into()),
            ("keep_dims", (&kd).into()),
        ],
    );
    let invd = b.constant(
        "invd",
        Literal::float(DType::Fp16, FloatLit::fixed6(1.0 / d as f64)),
    );
    let ss2 = b.op(
        "mul",
        "ss2",
        row.clone(),
        vec![("x", (&ss).into()), ("y", (&invd).into())],
    );
    let eps = b.constant(
        "eps",
        Literal::float(
            DType::Fp16,
            FloatLit::from_text("0.00001").expect("valid float"),
        ),
    );
    let ss3 = b.op(
        "add",
        "ss3",
        row.clone(),
        vec![("x", (&ss2).into()), ("y", (&eps).into())],
    );
    let nhalf = b.constant(
        "nhalf",
        Literal::float(
            DType::Fp16,
            FloatLit::from_text("-0.5").expect("valid float"),
        ),
    );
    let rrms = b.op(
        "pow",
        "rrms",
        row,
        vec![("x", (&ss3).into()), ("y", (&nhalf).into())],
    );
    let xr = b.op(
        "mul",
        "xr",
        full.clone(),
        vec![("x", (&x).into()), ("y", (&rrms).into())],
    );
    let rw = b.constant(
        "rw",
        blob(DType::Fp16, &[1, d, 1, 1], "@model_path/weights/rms_w.bin"),
    );
    let out = b.op(
        "mul",
        "out",
        full,
        vec![("x", (&xr).into()), ("y", (&rw).into())],
    );
    b.output(&out);
    Program::single(Dialect::Ios18, Style::Compact, b.finish())
}

/// A chain of `n` 1×1 convs of `c` channels at spatial size `s`, fp16 I/O, weights baked as one
/// file per conv (`@model_path/weights/w{i}.bin`, the layout every chip accepts): the shape of
/// the peak-throughput benchmark. Returns the program; [`conv_chain_weights`] makes its files.
pub fn conv_chain(n: usize, c: usize, s: usize) -> Program {
    conv_stack(DType::Fp16, &vec![c; n + 1], s)
}

/// 1×1 convs through `channels[0] → channels[1] → …` at spatial size `s`, every tensor in
/// `dtype`; conv `i` reads its `[channels[i + 1], channels[i], 1, 1]` weight from
/// `@model_path/weights/w{i}.bin`.
pub fn conv_stack(dtype: DType, channels: &[usize], s: usize) -> Program {
    let mut b = FunctionBuilder::new("main", "ios18");
    let act = |c: usize| t(dtype, &[1, c, 1, s]);
    let mut x = b.input("x", act(channels.first().copied().unwrap_or(0)));
    let pt = b.constant("pt", Literal::string("valid"));
    let st = b.constant("st", Literal::int32_tensor(&[1, 1]));
    let pd = b.constant("pd", Literal::int32_tensor(&[0, 0, 0, 0]));
    let dl = b.constant("dl", Literal::int32_tensor(&[1, 1]));
    let gr = b.constant("gr", Literal::int32(1));
    for (i, pair) in channels.windows(2).enumerate() {
        let w = b.constant(
            &format!("W{i}"),
            blob(
                dtype,
                &[pair[1], pair[0], 1, 1],
                &format!("@model_path/weights/w{i}.bin"),
            ),
        );
        x = b.op(
            "conv",
            &format!("c{i}"),
            act(pair[1]),
            vec![
                ("dilations", (&dl).into()),
                ("groups", (&gr).into()),
                ("pad", (&pd).into()),
                ("pad_type", (&pt).into()),
                ("strides", (&st).into()),
                ("weight", (&w).into()),
                ("x", (&x).into()),
            ],
        );
    }
    b.output(&x);
    Program::single(Dialect::Ios18, Style::Compact, b.finish())
}

/// Weight files for [`conv_chain`]: conv `i` is `scale · I` plus a small off-diagonal ripple,
/// so that a chain neither explodes nor vanishes and its result can be checked.
pub fn conv_chain_weights(n: usize, c: usize, scale: f32) -> crate::weights::WeightFiles {
    let mut files = crate::weights::WeightFiles::new();
    for i in 0..n {
        let mut w = vec![0.0f32; c * c];
        for r in 0..c {
            w[r * c + r] = scale;
            w[r * c + (r + 1 + i) % c] += 1.0 / 64.0;
        }
        files.insert_blob(
            format!("@model_path/weights/w{i}.bin"),
            &crate::blob::BlobFile::fp16(&w),
        );
    }
    files
}
