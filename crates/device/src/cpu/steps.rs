//! The steps a compiled CPU kernel executes, and how each one runs.
//!
//! Steps name values by [`ValueId`]; the kernel's location table maps each value to a place in
//! the arena or in the constant pool. The planner guarantees that a step's output never
//! overlaps any of its inputs.

use super::fastmath::exp;
use super::matmul::{gemm, MatLayout};
use super::packed::{packed_gemm, PackedOperand};
use super::shape::{collapse, for_each_row, strided_copy_split, MAX_OPERANDS, MAX_RANK};
use super::simd::vectorised;
use crate::fp16;

pub type ValueId = usize;

/// A tensor read through a broadcast view of the output's index space.
#[derive(Clone, Debug)]
pub struct Operand {
    pub value: ValueId,
    pub offset: usize,
    pub strides: Vec<usize>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum GeluMode {
    Exact,
    Tanh,
    Sigmoid,
}

/// One elementwise operation in a fused chain.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum EwKind {
    Add,
    Sub,
    Mul,
    Div,
    Pow,
    Max,
    Min,
    Sigmoid,
    Exp,
    Log,
    Sqrt,
    Rsqrt(f32),
    Relu,
    Silu,
    Tanh,
    Gelu(GeluMode),
    Abs,
    Square,
    Identity,
    /// Round half to even, as quantisation does.
    RoundEven,
    /// Toward zero, as a float → int cast does.
    Trunc,
    Clamp(f32, f32),
}

impl EwKind {
    pub fn is_binary(self) -> bool {
        matches!(
            self,
            EwKind::Add
                | EwKind::Sub
                | EwKind::Mul
                | EwKind::Div
                | EwKind::Pow
                | EwKind::Max
                | EwKind::Min
        )
    }

    #[inline(always)]
    fn unary(self, x: f32) -> f32 {
        match self {
            EwKind::Sigmoid => 1.0 / (1.0 + exp(-x)),
            EwKind::Exp => exp(x),
            EwKind::Log => x.ln(),
            EwKind::Sqrt => x.sqrt(),
            EwKind::Rsqrt(eps) => 1.0 / (x + eps).sqrt(),
            EwKind::Relu => x.max(0.0),
            EwKind::Silu => x / (1.0 + exp(-x)),
            EwKind::Tanh => x.tanh(),
            EwKind::Gelu(mode) => gelu(x, mode),
            EwKind::Abs => x.abs(),
            EwKind::Square => x * x,
            EwKind::Identity => x,
            EwKind::RoundEven => x.round_ties_even(),
            EwKind::Trunc => x.trunc(),
            EwKind::Clamp(lo, hi) => x.clamp(lo, hi),
            _ => unreachable!("not a unary op"),
        }
    }
}

fn gelu(x: f32, mode: GeluMode) -> f32 {
    match mode {
        GeluMode::Exact => 0.5 * x * (1.0 + erf(x / std::f32::consts::SQRT_2)),
        GeluMode::Tanh => {
            let c = (2.0 / std::f32::consts::PI).sqrt();
            0.5 * x * (1.0 + (c * (x + 0.044715 * x * x * x)).tanh())
        }
        GeluMode::Sigmoid => x / (1.0 + exp(-1.702 * x)),
    }
}

/// erf by Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7), evaluated in f64.
fn erf(x: f32) -> f32 {
    let x = x as f64;
    let t = 1.0 / (1.0 + 0.3275911 * x.abs());
    let poly = t
        * (0.254829592
            + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))));
    let y = 1.0 - poly * (-x * x).exp();
    (if x < 0.0 { -y } else { y }) as f32
}

#[derive(Clone, Debug)]
pub struct EwOp {
    pub kind: EwKind,
    /// The other operand of a binary op.
    pub side: Option<Operand>,
    /// For a binary op: whether the chain's running value is the `x` (left) operand.
    pub chain_is_x: bool,
    /// Round the result to fp16 (fp16 mode, fp16-typed result).
    pub round: bool,
}

/// A chain of elementwise ops computed block by block, so intermediates never leave the cache.
#[derive(Clone, Debug)]
pub struct EwChain {
    pub out: ValueId,
    /// The output shape; collapsed by [`EwChain::finish`].
    pub shape: Vec<usize>,
    pub first: Operand,
    pub ops: Vec<EwOp>,
    /// Strides of the output, `first`, then each side operand, over the collapsed shape.
    pub strides: Vec<Vec<usize>>,
}

impl EwChain {
    /// Collapses the loop nest once, at compile time.
    pub fn finish(&mut self) {
        let mut strides = vec![super::shape::contiguous_strides(&self.shape)];
        strides.push(self.first.strides.clone());
        strides.extend(
            self.ops
                .iter()
                .filter_map(|o| o.side.as_ref().map(|s| s.strides.clone())),
        );
        let (shape, strides) = collapse(&self.shape, &strides);
        self.shape = shape;
        self.strides = strides;
    }
}

#[derive(Clone, Debug)]
pub struct GemmStep {
    pub a: ValueId,
    pub la: MatLayout,
    pub b: ValueId,
    pub lb: MatLayout,
    pub c: ValueId,
    pub lc: MatLayout,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    /// Element offsets added to (a, b, c, bias) for each product of the batch; the bias offset
    /// is the group's first output channel.
    pub batches: Vec<[usize; 4]>,
    /// Multiplies every product (the attention scale of SDPA).
    pub scale: f32,
    /// A per-row bias (conv's `bias`), written into c before accumulating.
    pub bias: Option<ValueId>,
}

/// A product's constant left operand laid out for the packed microkernel, when the planner
/// chose that path; the step's `a` is then not read at run time. Made at bind time, so it
/// lives in the bound [`Plan`](super::plan::Plan) beside the steps, not in them.
#[derive(Clone, Debug)]
pub struct PackedGemm {
    /// One packed matrix per distinct left-operand offset of the batch (one per group of a
    /// grouped conv; a batch over images shares one).
    pub packs: Vec<PackedOperand>,
    /// For each product of the batch, the index of its packed left operand.
    pub pack_of: Vec<usize>,
}

/// A general convolution (any kernel size, strides, padding, dilations, groups).
#[derive(Clone, Debug)]
pub struct ConvStep {
    pub x: ValueId,
    pub w: ValueId,
    pub bias: Option<ValueId>,
    pub y: ValueId,
    /// [N, Cin, H, W]
    pub in_shape: [usize; 4],
    /// [Cout, Cin/groups, kH, kW]
    pub w_shape: [usize; 4],
    /// [N, Cout, OH, OW]
    pub out_shape: [usize; 4],
    pub strides: [usize; 2],
    pub dilations: [usize; 2],
    /// Padding before each spatial axis: [top, left].
    pub pad_begin: [usize; 2],
    pub groups: usize,
}

#[derive(Clone, Debug)]
pub struct SoftmaxStep {
    pub x: ValueId,
    pub y: ValueId,
    pub outer: usize,
    pub len: usize,
    pub inner: usize,
}

impl SoftmaxStep {
    /// The plan's scratch it needs: per-column running max and sum when the axis is not
    /// innermost.
    pub fn scratch_len(&self) -> usize {
        if self.inner > 1 {
            2 * self.inner
        } else {
            0
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ReduceKind {
    Sum,
    Mean,
    Max,
}

#[derive(Clone, Debug)]
pub struct ReduceStep {
    pub x: ValueId,
    pub y: ValueId,
    pub kind: ReduceKind,
    /// Collapsed input shape, and the input and output strides along it (0 on reduced axes).
    pub shape: Vec<usize>,
    pub strides: [Vec<usize>; 2],
    pub out_len: usize,
    /// Number of input elements folded into each output element (for the mean).
    pub count: usize,
}

#[derive(Clone, Debug)]
pub struct CopyPiece {
    pub src: ValueId,
    pub src_offset: usize,
    pub src_strides: Vec<usize>,
    pub dst_offset: usize,
    pub dst_strides: Vec<usize>,
    pub shape: Vec<usize>,
}

/// Strided copies into one output: transpose, non-contiguous slices, concat.
#[derive(Clone, Debug)]
pub struct CopyStep {
    pub dst: ValueId,
    pub pieces: Vec<CopyPiece>,
}

#[derive(Clone, Debug)]
pub enum Step {
    Gemm(GemmStep),
    Conv(ConvStep),
    Ew(EwChain),
    Softmax(SoftmaxStep),
    Reduce(ReduceStep),
    Copy(CopyStep),
}

impl Step {
    /// The values the step reads.
    pub fn reads(&self) -> Vec<ValueId> {
        match self {
            Step::Gemm(g) => [Some(g.a), Some(g.b), g.bias]
                .into_iter()
                .flatten()
                .collect(),
            Step::Conv(c) => [Some(c.x), Some(c.w), c.bias]
                .into_iter()
                .flatten()
                .collect(),
            Step::Ew(e) => std::iter::once(e.first.value)
                .chain(
                    e.ops
                        .iter()
                        .filter_map(|o| o.side.as_ref().map(|s| s.value)),
                )
                .collect(),
            Step::Softmax(s) => vec![s.x],
            Step::Reduce(r) => vec![r.x],
            Step::Copy(c) => c.pieces.iter().map(|p| p.src).collect(),
        }
    }

    /// The value the step writes.
    pub fn writes(&self) -> ValueId {
        match self {
            Step::Gemm(g) => g.c,
            Step::Conv(c) => c.y,
            Step::Ew(e) => e.out,
            Step::Softmax(s) => s.y,
            Step::Reduce(r) => r.y,
            Step::Copy(c) => c.dst,
        }
    }

    /// Whether the step rounds its own output (so the kernel need not round it afterwards).
    pub fn rounds_itself(&self) -> bool {
        matches!(self, Step::Ew(_) | Step::Copy(_))
    }
}

impl Step {
    /// Runs the step. `read` gives the storage of any value the step reads; `out` is the
    /// storage of the value it writes; `packed` is a product's packed left operand, if the
    /// plan packed it. `scratch` is the plan's shared scratch, as long as its steps need.
    pub fn run<'a>(
        &self,
        packed: Option<&PackedGemm>,
        read: &dyn Fn(ValueId) -> &'a [f32],
        out: &mut [f32],
        scratch: &mut [f32],
        threads: usize,
    ) {
        match self {
            Step::Gemm(g) => run_gemm(g, packed, read, out, scratch, threads),
            Step::Conv(c) => run_conv(c, read, out),
            Step::Ew(e) => run_ew(e, read, out, threads),
            Step::Softmax(s) => run_softmax(s, read(s.x), out, scratch, threads),
            Step::Reduce(r) => run_reduce(r, read(r.x), out),
            Step::Copy(c) => {
                for p in &c.pieces {
                    let len: usize = p.shape.iter().product();
                    let parts = if len >= SPLIT_MIN { threads } else { 1 };
                    strided_copy_split(
                        &read(p.src)[p.src_offset..],
                        &p.src_strides,
                        &mut out[p.dst_offset..],
                        &p.dst_strides,
                        &p.shape,
                        parts,
                    );
                }
            }
        }
    }
}

fn run_gemm<'a>(
    g: &GemmStep,
    packed: Option<&PackedGemm>,
    read: &dyn Fn(ValueId) -> &'a [f32],
    out: &mut [f32],
    scratch: &mut [f32],
    threads: usize,
) {
    let b = read(g.b);
    let accumulate = g.bias.is_some();
    if let Some(bias) = g.bias {
        let bias = read(bias);
        for &[_, _, oc, ob] in &g.batches {
            for r in 0..g.m {
                for col in 0..g.n {
                    out[oc + g.lc.offset + r * g.lc.rs + col * g.lc.cs] = bias[ob + r];
                }
            }
        }
    }
    let shift = |l: MatLayout, o: usize| MatLayout {
        offset: l.offset + o,
        ..l
    };
    if let Some(p) = packed {
        for (&[_, ob, oc, _], &pack) in g.batches.iter().zip(&p.pack_of) {
            packed_gemm(
                p.packs[pack].view(),
                g.n,
                b,
                shift(g.lb, ob),
                out,
                shift(g.lc, oc),
                accumulate,
                g.scale,
                threads,
                scratch,
            );
        }
        return;
    }
    let a = read(g.a);
    gemm_batches(g, a, b, out, 0, &g.batches, accumulate, threads);
}

/// The products of `batches`, writing `out` (which starts at element `base` of the step's
/// output). A batch of small products (attention heads) is split between the threads a
/// product at a time: splitting each small product instead costs more than it gains.
#[allow(clippy::too_many_arguments)]
fn gemm_batches(
    g: &GemmStep,
    a: &[f32],
    b: &[f32],
    out: &mut [f32],
    base: usize,
    batches: &[[usize; 4]],
    accumulate: bool,
    threads: usize,
) {
    let region = |&[_, _, oc, _]: &[usize; 4]| {
        let start = g.lc.offset + oc;
        start..MatLayout {
            offset: start,
            ..g.lc
        }
        .extent(g.m, g.n)
    };
    if threads > 1 && batches.len() >= 2 {
        let half = batches.len() / 2;
        let split = region(&batches[half]).start;
        // Only when the first half writes strictly before the second (as batches laid out
        // one after another do) can the output be handed out in two pieces.
        let apart = batches[..half].iter().all(|b| region(b).end <= split)
            && batches[half..].iter().all(|b| region(b).start >= split);
        if apart && split >= base {
            let (lo, hi) = out.split_at_mut(split - base);
            rayon::join(
                || gemm_batches(g, a, b, lo, base, &batches[..half], accumulate, threads / 2),
                || {
                    let rest = threads - threads / 2;
                    gemm_batches(g, a, b, hi, split, &batches[half..], accumulate, rest)
                },
            );
            return;
        }
    }
    let shift = |l: MatLayout, o: usize| MatLayout {
        offset: l.offset + o,
        ..l
    };
    for &[oa, ob, oc, _] in batches {
        gemm(
            g.m,
            g.n,
            g.k,
            a,
            shift(g.la, oa),
            b,
            shift(g.lb, ob),
            out,
            MatLayout {
                offset: g.lc.offset + oc - base,
                ..g.lc
            },
            accumulate,
            g.scale,
            threads,
        );
    }
}

fn run_conv<'a>(c: &ConvStep, read: &dyn Fn(ValueId) -> &'a [f32], y: &mut [f32]) {
    let (x, w) = (read(c.x), read(c.w));
    let bias = c.bias.map(read);
    let [n_batch, cin, h, wd] = c.in_shape;
    let [cout, cin_g, kh, kw] = c.w_shape;
    let [_, _, oh, ow] = c.out_shape;
    let cout_g = cout / c.groups;
    for n in 0..n_batch {
        for co in 0..cout {
            let g = co / cout_g;
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut acc = bias.map_or(0.0, |b| b[co]);
                    for ci in 0..cin_g {
                        let xc = g * cin_g + ci;
                        for ky in 0..kh {
                            let iy = (oy * c.strides[0] + ky * c.dilations[0]) as isize
                                - c.pad_begin[0] as isize;
                            if iy < 0 || iy >= h as isize {
                                continue;
                            }
                            for kx in 0..kw {
                                let ix = (ox * c.strides[1] + kx * c.dilations[1]) as isize
                                    - c.pad_begin[1] as isize;
                                if ix < 0 || ix >= wd as isize {
                                    continue;
                                }
                                let xv = x[((n * cin + xc) * h + iy as usize) * wd + ix as usize];
                                let wv = w[((co * cin_g + ci) * kh + ky) * kw + kx];
                                acc += xv * wv;
                            }
                        }
                    }
                    y[((n * cout + co) * oh + oy) * ow + ox] = acc;
                }
            }
        }
    }
}

/// Elements processed per block of a fused chain: small enough to stay in L1.
const EW_BLOCK: usize = 256;

/// Elements below which a chain or softmax runs on one thread: splitting costs more.
const SPLIT_MIN: usize = 1 << 15;

fn run_ew<'a>(e: &EwChain, read: &dyn Fn(ValueId) -> &'a [f32], out: &mut [f32], threads: usize) {
    // Operand k of the loop nest: 0 is the output, 1 is `first`, 2.. are the side operands.
    let mut srcs: [&[f32]; MAX_OPERANDS] = [&[]; MAX_OPERANDS];
    srcs[1] = &read(e.first.value)[e.first.offset..];
    let mut k = 2;
    for op in &e.ops {
        if let Some(side) = &op.side {
            srcs[k] = &read(side.value)[side.offset..];
            k += 1;
        }
    }
    let parts = if e.shape.iter().product::<usize>() >= SPLIT_MIN {
        threads
    } else {
        1
    };
    ew_split(e, &srcs, out, e.shape[0], parts);
}

/// Runs the chain over the first `count` indices of its outermost dimension, halving them
/// across `parts` threads. `srcs` and `out` start at the first index.
fn ew_split(
    e: &EwChain,
    srcs: &[&[f32]; MAX_OPERANDS],
    out: &mut [f32],
    count: usize,
    parts: usize,
) {
    if parts <= 1 || count < 2 {
        return ew_nest(e, srcs, out, count);
    }
    let half = count / 2;
    let mut rest = *srcs;
    for (src, strides) in rest.iter_mut().zip(&e.strides).skip(1) {
        *src = &src[half * strides[0]..];
    }
    // The output is contiguous, so its first `half` indices come first.
    let (lo, hi) = out.split_at_mut(half * e.strides[0][0]);
    rayon::join(
        || ew_split(e, srcs, lo, half, parts / 2),
        || ew_split(e, &rest, hi, count - half, parts - parts / 2),
    );
}

fn ew_nest(e: &EwChain, srcs: &[&[f32]; MAX_OPERANDS], out: &mut [f32], count: usize) {
    vectorised(
        #[inline(always)]
        || ew_nest_rows(e, srcs, out, count),
    );
}

#[inline(always)]
fn ew_nest_rows(e: &EwChain, srcs: &[&[f32]; MAX_OPERANDS], out: &mut [f32], count: usize) {
    let rank = e.shape.len();
    let mut shape = [0usize; MAX_RANK + 1];
    shape[..rank].copy_from_slice(&e.shape);
    shape[0] = count;
    let shape = &shape[..rank];
    let last = rank - 1;
    let n = shape[last];
    let mut inner = [0usize; MAX_OPERANDS];
    for (i, s) in e.strides.iter().enumerate() {
        inner[i] = s[last];
    }
    for_each_row(shape, &e.strides, |offs| {
        let mut start = 0;
        while start < n {
            let len = (n - start).min(EW_BLOCK);
            // The chain runs in place in its stretch of the output (output rows are
            // contiguous), a block at a time so that the block stays in L1 across the ops.
            let o = offs[0] + start;
            let block = &mut out[o..o + len];
            load(block, srcs[1], offs[1] + start * inner[1], inner[1]);
            let mut k = 2;
            for op in &e.ops {
                if op.side.is_some() {
                    apply_binary(block, op, srcs[k], offs[k] + start * inner[k], inner[k]);
                    k += 1;
                } else {
                    apply_unary(block, op.kind);
                }
                if op.round {
                    fp16::round_slice(block);
                }
            }
            start += len;
        }
    });
}

#[inline(always)]
fn load(block: &mut [f32], src: &[f32], base: usize, stride: usize) {
    match stride {
        1 => block.copy_from_slice(&src[base..base + block.len()]),
        0 => block.fill(src[base]),
        s => {
            for (i, v) in block.iter_mut().enumerate() {
                *v = src[base + i * s];
            }
        }
    }
}

/// Applies a binary op between the block (the chain's running value) and a side operand.
/// The op is chosen once per block, so each loop below is a plain vectorisable loop.
#[inline(always)]
fn apply_binary(block: &mut [f32], op: &EwOp, src: &[f32], base: usize, stride: usize) {
    let x = op.chain_is_x;
    match op.kind {
        EwKind::Add => zip_side(block, src, base, stride, |c, s| c + s),
        EwKind::Mul => zip_side(block, src, base, stride, |c, s| c * s),
        EwKind::Max => zip_side(block, src, base, stride, f32::max),
        EwKind::Min => zip_side(block, src, base, stride, f32::min),
        EwKind::Sub if x => zip_side(block, src, base, stride, |c, s| c - s),
        EwKind::Sub => zip_side(block, src, base, stride, |c, s| s - c),
        EwKind::Div if x => zip_side(block, src, base, stride, |c, s| c / s),
        EwKind::Div => zip_side(block, src, base, stride, |c, s| s / c),
        EwKind::Pow if x => zip_side(block, src, base, stride, f32::powf),
        EwKind::Pow => zip_side(block, src, base, stride, |c, s| s.powf(c)),
        _ => unreachable!("not a binary op"),
    }
}

#[inline(always)]
fn zip_side(
    block: &mut [f32],
    src: &[f32],
    base: usize,
    stride: usize,
    f: impl Fn(f32, f32) -> f32,
) {
    match stride {
        0 => {
            let s = src[base];
            for v in block.iter_mut() {
                *v = f(*v, s);
            }
        }
        1 => {
            let len = block.len();
            for (v, s) in block.iter_mut().zip(&src[base..base + len]) {
                *v = f(*v, *s);
            }
        }
        st => {
            for (i, v) in block.iter_mut().enumerate() {
                *v = f(*v, src[base + i * st]);
            }
        }
    }
}

/// Applies a unary op to the block, the op chosen once per block.
#[inline(always)]
fn apply_unary(block: &mut [f32], kind: EwKind) {
    #[inline(always)]
    fn each(block: &mut [f32], f: impl Fn(f32) -> f32) {
        for v in block.iter_mut() {
            *v = f(*v);
        }
    }
    match kind {
        EwKind::Relu => each(block, |x| x.max(0.0)),
        EwKind::Abs => each(block, f32::abs),
        EwKind::Square => each(block, |x| x * x),
        EwKind::Identity => {}
        EwKind::Sigmoid => each(block, |x| 1.0 / (1.0 + exp(-x))),
        EwKind::Silu => each(block, |x| x / (1.0 + exp(-x))),
        EwKind::Exp => each(block, f32::exp),
        EwKind::Sqrt => each(block, f32::sqrt),
        other => each(block, |x| other.unary(x)),
    }
}

/// Softmax of each contiguous row of `len` in `x`, the rows halved across `parts` threads.
fn softmax_rows(x: &[f32], y: &mut [f32], len: usize, parts: usize) {
    let rows = x.len() / len.max(1);
    if parts > 1 && rows >= 2 {
        let at = rows / 2 * len;
        let ((xl, xr), (yl, yr)) = (x.split_at(at), y.split_at_mut(at));
        rayon::join(
            || softmax_rows(xl, yl, len, parts / 2),
            || softmax_rows(xr, yr, len, parts - parts / 2),
        );
        return;
    }
    vectorised(
        #[inline(always)]
        || softmax_rows_here(x, y, len),
    );
}

/// [`softmax_rows`] on this thread. Inlined into [`vectorised`]'s closure, which only calls
/// it: a closure holding the loops itself is not inlined into the wide copy.
#[inline(always)]
fn softmax_rows_here(x: &[f32], y: &mut [f32], len: usize) {
    for (row, out) in x.chunks_exact(len).zip(y.chunks_exact_mut(len)) {
        let max = max_f32(row);
        // Exponentials first, then the sum: a running sum would keep the loop scalar.
        for (d, v) in out.iter_mut().zip(row) {
            *d = exp(v - max);
        }
        let inv = 1.0 / sum_f32(out);
        out.iter_mut().for_each(|d| *d *= inv);
    }
}

/// The largest of `values` (NaNs ignored; −∞ for none), in eight interleaved lanes so that
/// the comparisons vectorise (`f32::max` as a fold stays scalar).
#[inline(always)]
fn max_f32(values: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; 8];
    let mut chunks = values.chunks_exact(8);
    for c in &mut chunks {
        for (l, &v) in lanes.iter_mut().zip(c) {
            *l = if v > *l { v } else { *l };
        }
    }
    let tail = chunks.remainder().iter().copied();
    lanes
        .into_iter()
        .chain(tail)
        .fold(f32::NEG_INFINITY, f32::max)
}

/// Σ values, in eight interleaved partial sums so that the adds vectorise.
#[inline(always)]
fn sum_f32(values: &[f32]) -> f32 {
    let mut lanes = [0.0f32; 8];
    let mut chunks = values.chunks_exact(8);
    for c in &mut chunks {
        for (l, v) in lanes.iter_mut().zip(c) {
            *l += v;
        }
    }
    lanes.iter().sum::<f32>() + chunks.remainder().iter().sum::<f32>()
}

fn run_softmax(s: &SoftmaxStep, x: &[f32], y: &mut [f32], scratch: &mut [f32], threads: usize) {
    let (len, inner) = (s.len, s.inner);
    if inner == 1 {
        let total = s.outer * len;
        let parts = if total >= SPLIT_MIN { threads } else { 1 };
        return softmax_rows(&x[..total], &mut y[..total], len, parts);
    }
    for o in 0..s.outer {
        let base = o * len * inner;
        {
            // The axis is not innermost: running max and sum per column.
            let (max, sum) = scratch[..2 * inner].split_at_mut(inner);
            max.fill(f32::NEG_INFINITY);
            sum.fill(0.0);
            for l in 0..len {
                let row = &x[base + l * inner..base + (l + 1) * inner];
                for (m, v) in max.iter_mut().zip(row) {
                    *m = m.max(*v);
                }
            }
            for l in 0..len {
                let r = base + l * inner..base + (l + 1) * inner;
                for ((d, v), (m, s)) in y[r.clone()]
                    .iter_mut()
                    .zip(&x[r])
                    .zip(max.iter().zip(sum.iter_mut()))
                {
                    *d = exp(v - m);
                    *s += *d;
                }
            }
            for l in 0..len {
                let out = &mut y[base + l * inner..base + (l + 1) * inner];
                for (d, s) in out.iter_mut().zip(sum.iter()) {
                    *d /= s;
                }
            }
        }
    }
}

fn run_reduce(r: &ReduceStep, x: &[f32], y: &mut [f32]) {
    vectorised(
        #[inline(always)]
        || reduce_here(r, x, y),
    );
}

#[inline(always)]
fn reduce_here(r: &ReduceStep, x: &[f32], y: &mut [f32]) {
    let init = match r.kind {
        ReduceKind::Sum | ReduceKind::Mean => 0.0,
        ReduceKind::Max => f32::NEG_INFINITY,
    };
    y[..r.out_len].fill(init);
    let (shape, strides) = (&r.shape, &r.strides);
    let last = shape.len() - 1;
    let n = shape[last];
    let (xs, ys) = (strides[0][last], strides[1][last]);
    let max = r.kind == ReduceKind::Max;
    for_each_row(shape, strides, |offs| {
        let (xo, yo) = (offs[0], offs[1]);
        match (ys, max) {
            // Along a contiguous row: eight running sums, where one is a chain of dependent
            // adds (attention's row sums were a visible share of a backward kernel:
            // docs/benchmarks.md).
            (0, false) if xs == 1 => y[yo] += sum_f32(&x[xo..xo + n]),
            (0, true) if xs == 1 => y[yo] = y[yo].max(max_f32(&x[xo..xo + n])),
            (0, false) => y[yo] += (0..n).map(|i| x[xo + i * xs]).sum::<f32>(),
            (0, true) => y[yo] = (0..n).map(|i| x[xo + i * xs]).fold(y[yo], f32::max),
            (_, false) => (0..n).for_each(|i| y[yo + i * ys] += x[xo + i * xs]),
            (_, true) => (0..n).for_each(|i| y[yo + i * ys] = y[yo + i * ys].max(x[xo + i * xs])),
        }
    });
    if r.kind == ReduceKind::Mean {
        let inv = 1.0 / r.count as f32;
        y[..r.out_len].iter_mut().for_each(|v| *v *= inv);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn erf_matches_known_values() {
        // erf(0.5) = 0.5204998778, erf(1) = 0.8427007929, erf(-2) = -0.9953222650
        assert!((erf(0.5) - 0.520_499_9).abs() < 1e-6);
        assert!((erf(1.0) - 0.842_700_8).abs() < 1e-6);
        assert!((erf(-2.0) + 0.995_322_3).abs() < 1e-6);
    }
}
