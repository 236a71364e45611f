//! Lowering each op of a function into steps: elementwise chains fused as they are built,
//! views turned into aliases, products read through transposes.

use super::consts::{literal_f32, ConstSource};
use super::{passes, root, PlanTemplate, Storage, Value};
use crate::cpu::matmul::MatLayout;
use crate::cpu::shape::{broadcast_strides, collapse, contiguous_strides, MAX_OPERANDS};
use crate::cpu::steps::{
    ConvStep, CopyPiece, CopyStep, EwChain, EwKind, EwOp, GeluMode, GemmStep, Operand, ReduceKind,
    ReduceStep, SoftmaxStep, Step, ValueId,
};
use crate::{fp16, DeviceError, NumericMode};
use anetrain_mil::blob::WeightFiles;
use anetrain_mil::check::CheckedFunction;
use anetrain_mil::{Arg, DType, Function, Literal, Op, Type};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

impl PlanTemplate {
    /// Lowers `f` in `mode`: its inputs, then each op in turn into steps, then the passes
    /// of [`passes::finish`] over those steps.
    pub fn lower(
        f: &Function,
        checked: &CheckedFunction,
        mode: NumericMode,
    ) -> Result<PlanTemplate, DeviceError> {
        let mut l = Lowering::new(f, checked, mode);
        let mut inputs = Vec::new();
        for (i, p) in f.inputs.iter().enumerate() {
            // fp16 inputs in fp16 mode must be rounded, so they are copied; others are read
            // in place.
            let round = l.rounds(&p.ty);
            let storage = if round {
                Storage::Arena
            } else {
                Storage::Input(i)
            };
            let id = l.new_value(p.ty.shape().to_vec(), storage, round);
            l.env.insert(p.name.clone(), id);
            if round {
                inputs.push((i, id));
            }
        }
        for op in &f.ops {
            l.lower_op(op)?;
        }
        let outputs = f
            .outputs
            .iter()
            .map(|name| l.data(&Arg::Var(name.clone()), "output"))
            .collect::<Result<Vec<_>, _>>()?;
        let Lowering {
            steps,
            values,
            sources,
            ..
        } = l;
        passes::finish(steps, values, sources, inputs, outputs)
    }
}

/// The state of lowering one function, op by op.
struct Lowering<'a> {
    checked: &'a CheckedFunction,
    mode: NumericMode,
    values: Vec<Value>,
    sources: Vec<ConstSource>,
    env: HashMap<String, ValueId>,
    steps: Vec<Step>,
    /// How often each MIL value is used (arguments and function outputs).
    uses: HashMap<String, usize>,
    outputs: HashSet<String>,
    /// The MIL value the last step computed, if that step is an elementwise chain.
    open_chain: Option<String>,
    /// Values that are the transpose of the last two dimensions of another value: a product
    /// reads the other value with its transpose flag flipped instead (and the transpose, if
    /// nothing else reads it, is dropped at the end).
    transposed: HashMap<ValueId, ValueId>,
    /// The op being lowered, for error messages.
    current: Option<(String, String)>,
}

fn unsupported(op: &Op, message: impl Into<String>) -> DeviceError {
    DeviceError::Unsupported {
        op: op.name().unwrap_or(&op.output).to_string(),
        kind: op.kind.clone(),
        message: message.into(),
    }
}

impl<'a> Lowering<'a> {
    fn new(f: &'a Function, checked: &'a CheckedFunction, mode: NumericMode) -> Self {
        let mut uses: HashMap<String, usize> = HashMap::new();
        for op in &f.ops {
            for (_, a) in &op.args {
                match a {
                    Arg::Var(v) => *uses.entry(v.clone()).or_default() += 1,
                    Arg::Tuple(vs) => vs
                        .iter()
                        .for_each(|v| *uses.entry(v.clone()).or_default() += 1),
                    Arg::Literal(_) => {}
                }
            }
        }
        for o in &f.outputs {
            *uses.entry(o.clone()).or_default() += 1;
        }
        Lowering {
            checked,
            mode,
            values: Vec::new(),
            sources: Vec::new(),
            env: HashMap::new(),
            steps: Vec::new(),
            uses,
            outputs: f.outputs.iter().cloned().collect(),
            open_chain: None,
            transposed: HashMap::new(),
            current: None,
        }
    }

    fn rounds(&self, ty: &Type) -> bool {
        self.mode == NumericMode::Fp16 && ty.dtype() == DType::Fp16
    }

    fn new_value(&mut self, shape: Vec<usize>, storage: Storage, round: bool) -> ValueId {
        self.values.push(Value {
            shape,
            storage,
            round,
        });
        self.values.len() - 1
    }

    fn ty(&self, name: &str) -> Type {
        self.checked
            .types
            .get(name)
            .cloned()
            .unwrap_or(Type::Scalar(DType::Fp32))
    }

    fn shape(&self, id: ValueId) -> &[usize] {
        &self.values[id].shape
    }

    /// A fresh arena value for `op`'s output, registered under its MIL name.
    fn output(&mut self, op: &Op) -> ValueId {
        let ty = self.ty(&op.output);
        let round = self.rounds(&ty);
        let id = self.new_value(ty.shape().to_vec(), Storage::Arena, round);
        self.env.insert(op.output.clone(), id);
        id
    }

    /// Registers `op`'s output as a view of `of` starting `offset` elements in.
    fn alias(&mut self, op: &Op, of: ValueId, offset: usize) {
        let (root, base) = root(&self.values, of);
        let ty = self.ty(&op.output);
        let round = self.rounds(&ty);
        let id = self.new_value(
            ty.shape().to_vec(),
            Storage::Alias {
                root,
                offset: base + offset,
            },
            round,
        );
        self.env.insert(op.output.clone(), id);
    }

    /// The value behind a data argument, materialising constants on first use.
    fn data(&mut self, arg: &Arg, what: &str) -> Result<ValueId, DeviceError> {
        match arg {
            Arg::Var(name) => {
                if let Some(&id) = self.env.get(name) {
                    return Ok(id);
                }
                let lit = self.checked.consts.get(name).cloned().ok_or_else(|| {
                    DeviceError::CompileFailed(format!("{what}: `{name}` is not defined"))
                })?;
                let id = self.constant(&lit)?;
                self.env.insert(name.clone(), id);
                Ok(id)
            }
            Arg::Literal(lit) => self.constant(lit),
            Arg::Tuple(_) => Err(DeviceError::CompileFailed(format!(
                "{what}: a tuple is not a tensor"
            ))),
        }
    }

    fn constant(&mut self, lit: &Literal) -> Result<ValueId, DeviceError> {
        let ty = lit.ty();
        let round = self.rounds(&ty);
        let source = match lit {
            Literal::Blob {
                dtype,
                shape,
                path,
                offset,
            } => ConstSource::Blob {
                path: path.clone(),
                offset: *offset,
                dtype: *dtype,
                shape: shape.clone(),
                round,
            },
            inline => {
                let mut data = literal_f32(&WeightFiles::new(), inline)?.into_owned();
                if round {
                    fp16::round_slice(&mut data);
                }
                ConstSource::Fixed(Arc::new(data))
            }
        };
        Ok(self.new_const(ty.shape().to_vec(), source, round))
    }

    fn new_const(&mut self, shape: Vec<usize>, source: ConstSource, round: bool) -> ValueId {
        self.sources.push(source);
        self.new_value(shape, Storage::Const(self.sources.len() - 1), round)
    }

    /// The literal behind a structural parameter (argument or attribute), if given.
    fn param(&self, op: &Op, key: &str) -> Option<Literal> {
        match op.arg(key) {
            Some(Arg::Var(name)) => self.checked.consts.get(name).cloned(),
            Some(Arg::Literal(l)) => Some(l.clone()),
            Some(Arg::Tuple(_)) => None,
            None => op.attr(key).cloned(),
        }
    }

    fn param_ints(&self, op: &Op, key: &str) -> Option<Vec<i64>> {
        self.param(op, key).and_then(|l| l.as_ints())
    }

    fn param_int(&self, op: &Op, key: &str, default: i64) -> i64 {
        self.param_ints(op, key)
            .and_then(|v| v.first().copied())
            .unwrap_or(default)
    }

    fn param_bool(&self, op: &Op, key: &str) -> bool {
        self.param_int(op, key, 0) != 0
    }

    fn param_str(&self, op: &Op, key: &str) -> Option<String> {
        self.param(op, key)
            .and_then(|l| l.as_str().map(str::to_string))
    }

    fn param_f32(&self, op: &Op, key: &str) -> Option<f32> {
        match self.param(op, key)? {
            Literal::Scalar { value, .. } => value.as_f64().map(|v| v as f32),
            _ => None,
        }
    }

    fn arg_data(&mut self, op: &Op, key: &str) -> Result<ValueId, DeviceError> {
        let arg = op
            .arg(key)
            .ok_or_else(|| unsupported(op, format!("missing argument `{key}`")))?
            .clone();
        self.data(&arg, key)
    }

    fn push(&mut self, step: Step) {
        self.steps.push(step);
    }

    fn lower_op(&mut self, op: &Op) -> Result<(), DeviceError> {
        self.current = Some((op.kind.clone(), op.output.clone()));
        if op.kind == "const" {
            return Ok(());
        }
        let chain_before = self.open_chain.take();
        if let Some(kind) = ew_kind(op, self) {
            return self.lower_elementwise(op, kind, chain_before);
        }
        match op.kind.as_str() {
            "identity" | "reshape" => {
                let x = self.arg_data(op, "x")?;
                self.alias(op, x, 0);
            }
            "cast" => self.lower_cast(op)?,
            "transpose" => self.lower_transpose(op)?,
            "slice_by_size" | "slice_by_index" => self.lower_slice(op)?,
            "concat" => self.lower_concat(op)?,
            "conv" => self.lower_conv(op)?,
            "matmul" => self.lower_matmul(op)?,
            "softmax" => self.lower_softmax(op)?,
            "reduce_sum" | "reduce_mean" | "reduce_max" => self.lower_reduce(op)?,
            "quantize" | "dequantize" => self.lower_quantization(op)?,
            "constexpr_affine_dequantize" => self.lower_constexpr_dequantize(op)?,
            "scaled_dot_product_attention" => self.lower_sdpa(op)?,
            other => return Err(unsupported(op, format!("the CPU device has no `{other}`"))),
        }
        Ok(())
    }

    /// Unary and binary elementwise ops: extend the open chain when this op consumes its
    /// result and nobody else does; otherwise start a new chain.
    fn lower_elementwise(
        &mut self,
        op: &Op,
        kind: EwKind,
        chain: Option<String>,
    ) -> Result<(), DeviceError> {
        let out_ty = self.ty(&op.output);
        let out_shape = out_ty.shape().to_vec();
        let round = self.rounds(&out_ty);
        let operand_keys: &[&str] = if kind.is_binary() {
            &["x", "y"]
        } else {
            &["x"]
        };
        let vars: Vec<Option<String>> = operand_keys
            .iter()
            .map(|k| match op.arg(k) {
                Some(Arg::Var(v)) => Some(v.clone()),
                _ => None,
            })
            .collect();
        let fusable = chain.as_ref().and_then(|c| {
            let position = vars.iter().position(|v| v.as_deref() == Some(c))?;
            let sole_use = self.uses.get(c) == Some(&1) && !self.outputs.contains(c);
            let Some(Step::Ew(e)) = self.steps.last() else {
                return None;
            };
            let sides = e.ops.iter().filter(|o| o.side.is_some()).count();
            (sole_use && self.shape(e.out) == out_shape.as_slice() && sides + 3 < MAX_OPERANDS)
                .then_some(position)
        });
        let new_op = |side: Option<Operand>, chain_is_x: bool| EwOp {
            kind,
            side,
            chain_is_x,
            round,
        };
        if let Some(position) = fusable {
            let side = if kind.is_binary() {
                let key = operand_keys[1 - position];
                let v = self.arg_data(op, key)?;
                Some(self.broadcast_operand(v, &out_shape))
            } else {
                None
            };
            let out = self.output(op);
            let Some(Step::Ew(e)) = self.steps.last_mut() else {
                unreachable!("fusable implies the last step is a chain");
            };
            e.out = out;
            e.ops.push(new_op(side, position == 0));
        } else {
            let x = self.arg_data(op, "x")?;
            let first = self.broadcast_operand(x, &out_shape);
            let side = if kind.is_binary() {
                let y = self.arg_data(op, "y")?;
                Some(self.broadcast_operand(y, &out_shape))
            } else {
                None
            };
            let out = self.output(op);
            self.push(Step::Ew(EwChain {
                out,
                shape: out_shape,
                first,
                ops: vec![new_op(side, true)],
                strides: Vec::new(),
            }));
        }
        self.open_chain = Some(op.output.clone());
        Ok(())
    }

    fn broadcast_operand(&self, v: ValueId, out_shape: &[usize]) -> Operand {
        Operand {
            value: v,
            offset: 0,
            strides: broadcast_strides(self.shape(v), out_shape),
        }
    }

    /// A single elementwise step outside any chain.
    fn ew_step(&mut self, out: ValueId, first: Operand, ops: Vec<EwOp>) {
        let shape = self.shape(out).to_vec();
        self.push(Step::Ew(EwChain {
            out,
            shape,
            first,
            ops,
            strides: Vec::new(),
        }));
    }

    fn lower_cast(&mut self, op: &Op) -> Result<(), DeviceError> {
        let x = self.arg_data(op, "x")?;
        let target = self.ty(&op.output).dtype();
        if target.is_float() && !(self.mode == NumericMode::Fp16 && target == DType::Fp16) {
            // Widening, or fp32 mode where fp16 is computed in fp32: a view.
            self.alias(op, x, 0);
            return Ok(());
        }
        let kind = if target.is_float() {
            EwKind::Identity
        } else if target == DType::Bool {
            return Err(unsupported(op, "cast to bool"));
        } else {
            EwKind::Trunc
        };
        let out = self.output(op);
        let first = self.broadcast_operand(x, self.shape(out));
        let round = self.values[out].round;
        self.ew_step(
            out,
            first,
            vec![EwOp {
                kind,
                side: None,
                chain_is_x: true,
                round,
            }],
        );
        Ok(())
    }

    fn lower_transpose(&mut self, op: &Op) -> Result<(), DeviceError> {
        let x = self.arg_data(op, "x")?;
        let perm = self
            .param_ints(op, "perm")
            .ok_or_else(|| unsupported(op, "`perm` must be constant"))?;
        let in_strides = contiguous_strides(self.shape(x));
        let rank = in_strides.len() as i64;
        let src_strides: Vec<usize> = perm
            .iter()
            .map(|&p| in_strides[p.rem_euclid(rank.max(1)) as usize])
            .collect();
        let last_two_swapped = rank >= 2
            && perm.iter().enumerate().all(|(i, &p)| {
                let p = p.rem_euclid(rank) as usize;
                let r = rank as usize;
                match i {
                    i if i + 2 < r => p == i,
                    i if i + 2 == r => p == r - 1,
                    _ => p == r - 2,
                }
            });
        if last_two_swapped && self.transpose_product(op)? {
            return Ok(());
        }
        let out = self.output(op);
        let shape = self.shape(out).to_vec();
        self.copy_step(
            out,
            vec![(x, 0, src_strides, 0, contiguous_strides(&shape), shape)],
        );
        if last_two_swapped {
            self.transposed.insert(out, x);
        }
        Ok(())
    }

    /// Lowers a transpose of the last two dimensions of the product the previous step
    /// computes, when nothing else reads that product, by computing the transpose instead:
    /// (A·B)ᵀ = Bᵀ·Aᵀ, the same product with its operands swapped and read transposed, where a
    /// copy afterwards would be one more pass over the result (attention's heads back to
    /// channels). Not when A is a constant: the product would lose its packed weights.
    fn transpose_product(&mut self, op: &Op) -> Result<bool, DeviceError> {
        let Some(Arg::Var(name)) = op.arg("x") else {
            return Ok(false);
        };
        let sole_use = self.uses.get(name) == Some(&1) && !self.outputs.contains(name);
        let x = self.arg_data(op, "x")?;
        let Some(Step::Gemm(g)) = self.steps.last() else {
            return Ok(false);
        };
        let a_const = matches!(
            self.values[root(&self.values, g.a).0].storage,
            Storage::Const(_)
        );
        if !sole_use || g.c != x || g.bias.is_some() || a_const {
            return Ok(false);
        }
        let out = self.output(op);
        let Some(Step::Gemm(g)) = self.steps.last_mut() else {
            unreachable!("checked above");
        };
        *g = GemmStep {
            a: g.b,
            la: g.lb.transposed(),
            b: g.a,
            lb: g.la.transposed(),
            c: out,
            lc: MatLayout::row_major(0, g.m),
            m: g.n,
            n: g.m,
            k: g.k,
            batches: g.batches.iter().map(|&[a, b, c, _]| [b, a, c, 0]).collect(),
            scale: g.scale,
            bias: None,
        };
        Ok(true)
    }

    /// `v` as a product operand with transpose flag `t`: a transposed value is read from its
    /// source with the flag flipped.
    fn untransposed(&self, v: ValueId, t: bool) -> (ValueId, bool) {
        match self.transposed.get(&v) {
            Some(&source) => (source, !t),
            None => (v, t),
        }
    }

    /// A copy step with its loop nests collapsed.
    #[allow(clippy::type_complexity)]
    fn copy_step(
        &mut self,
        dst: ValueId,
        pieces: Vec<(ValueId, usize, Vec<usize>, usize, Vec<usize>, Vec<usize>)>,
    ) {
        let pieces = pieces
            .into_iter()
            .map(|(src, src_offset, ss, dst_offset, ds, shape)| {
                let (shape, strides) = collapse(&shape, &[ss, ds]);
                let [src_strides, dst_strides]: [Vec<usize>; 2] =
                    strides.try_into().expect("two operands in, two out");
                CopyPiece {
                    src,
                    src_offset,
                    src_strides,
                    dst_offset,
                    dst_strides,
                    shape,
                }
            })
            .collect();
        self.push(Step::Copy(CopyStep { dst, pieces }));
    }

    fn lower_slice(&mut self, op: &Op) -> Result<(), DeviceError> {
        let x = self.arg_data(op, "x")?;
        let in_shape = self.shape(x).to_vec();
        let rank = in_shape.len();
        let begin = self
            .param_ints(op, "begin")
            .ok_or_else(|| unsupported(op, "`begin` must be constant"))?;
        let (begin, size, step) = if op.kind == "slice_by_size" {
            let size = self
                .param_ints(op, "size")
                .ok_or_else(|| unsupported(op, "`size` must be constant"))?;
            let begin: Vec<usize> = (0..rank)
                .map(|d| norm_index(begin[d], in_shape[d]))
                .collect();
            let size: Vec<usize> = (0..rank)
                .map(|d| {
                    if size[d] < 0 {
                        in_shape[d] - begin[d]
                    } else {
                        size[d] as usize
                    }
                })
                .collect();
            (begin, size, vec![1usize; rank])
        } else {
            let end = self
                .param_ints(op, "end")
                .ok_or_else(|| unsupported(op, "`end` must be constant"))?;
            let stride = self
                .param_ints(op, "stride")
                .unwrap_or_else(|| vec![1; rank]);
            let bmask = self.param_ints(op, "begin_mask").unwrap_or(vec![0; rank]);
            let emask = self.param_ints(op, "end_mask").unwrap_or(vec![0; rank]);
            if stride.iter().any(|&s| s <= 0) {
                return Err(unsupported(op, "only positive strides are supported"));
            }
            let mut b = Vec::with_capacity(rank);
            let mut sz = Vec::with_capacity(rank);
            for d in 0..rank {
                let lo = if bmask[d] != 0 {
                    0
                } else {
                    norm_index(begin[d], in_shape[d])
                };
                let hi = if emask[d] != 0 {
                    in_shape[d]
                } else {
                    norm_index(end[d], in_shape[d])
                };
                let s = stride[d] as usize;
                b.push(lo);
                sz.push(hi.saturating_sub(lo).div_ceil(s));
            }
            (b, sz, stride.iter().map(|&s| s as usize).collect())
        };
        let strides = contiguous_strides(&in_shape);
        let offset: usize = begin.iter().zip(&strides).map(|(b, s)| b * s).sum();
        if step.iter().all(|&s| s == 1) && is_contiguous_region(&in_shape, &size) {
            self.alias(op, x, offset);
            return Ok(());
        }
        let src_strides: Vec<usize> = strides.iter().zip(&step).map(|(s, k)| s * k).collect();
        let out = self.output(op);
        self.copy_step(
            out,
            vec![(x, offset, src_strides, 0, contiguous_strides(&size), size)],
        );
        Ok(())
    }

    fn lower_concat(&mut self, op: &Op) -> Result<(), DeviceError> {
        let Some(Arg::Tuple(names)) = op.arg("values").cloned() else {
            return Err(unsupported(op, "`values` must be a tuple"));
        };
        let out_ty = self.ty(&op.output);
        let out_shape = out_ty.shape().to_vec();
        let rank = out_shape.len() as i64;
        let axis = self.param_int(op, "axis", 0).rem_euclid(rank.max(1)) as usize;
        let interleave = self.param_bool(op, "interleave");
        let out_strides = contiguous_strides(&out_shape);
        let count = names.len();
        let mut pieces = Vec::with_capacity(count);
        let mut along = 0;
        let inputs: Vec<ValueId> = names
            .iter()
            .map(|n| self.data(&Arg::Var(n.clone()), "values"))
            .collect::<Result<_, _>>()?;
        for (i, &v) in inputs.iter().enumerate() {
            let shape = self.shape(v).to_vec();
            let mut dst_strides = out_strides.clone();
            let dst_offset = if interleave {
                dst_strides[axis] *= count;
                i * out_strides[axis]
            } else {
                along * out_strides[axis]
            };
            along += shape[axis];
            pieces.push((
                v,
                0,
                contiguous_strides(&shape),
                dst_offset,
                dst_strides,
                shape,
            ));
        }
        let out = self.output(op);
        // A piece that fills a contiguous stretch of the output (a concat along the channels
        // of a `[1, C, 1, S]` tensor: how every kernel packs its outputs and taps into one) is
        // computed straight into that stretch instead of copied there afterwards: the kernels'
        // concats moved megabytes per eval. The piece's slot moves there, with every view of
        // it. Only a slot that a step computes and that the piece fills whole qualifies
        // (inputs and constants are copied, and so are slices), and only if no other piece of
        // this concat lives in that slot: the copy would then read what it writes.
        let contiguous = !interleave && out_shape[..axis].iter().all(|&d| d == 1);
        let mut copies = Vec::with_capacity(pieces.len());
        for piece in pieces {
            let (r, offset) = root(&self.values, piece.0);
            let len = |id: ValueId| self.values[id].shape.iter().product::<usize>();
            let movable = contiguous
                && offset == 0
                && len(piece.0) == len(r)
                && matches!(self.values[r].storage, Storage::Arena)
                && self.steps.iter().any(|s| s.writes() == r)
                && inputs
                    .iter()
                    .filter(|&&u| root(&self.values, u).0 == r)
                    .count()
                    == 1;
            if movable {
                self.rehome(r, out, piece.3);
            } else {
                copies.push(piece);
            }
        }
        if !copies.is_empty() {
            self.copy_step(out, copies);
        }
        Ok(())
    }

    /// Makes `v`, and every view of it, live at `offset` in `root`'s storage.
    fn rehome(&mut self, v: ValueId, root: ValueId, offset: usize) {
        for value in &mut self.values {
            if let Storage::Alias { root: r, offset: o } = &mut value.storage {
                if *r == v {
                    (*r, *o) = (root, *o + offset);
                }
            }
        }
        self.values[v].storage = Storage::Alias { root, offset };
    }

    fn lower_conv(&mut self, op: &Op) -> Result<(), DeviceError> {
        let x = self.arg_data(op, "x")?;
        let w = self.arg_data(op, "weight")?;
        let bias = match op.arg("bias") {
            Some(a) => Some(self.data(&a.clone(), "bias")?),
            None => None,
        };
        let xs = self.shape(x).to_vec();
        let ws = self.shape(w).to_vec();
        if xs.len() != 4 || ws.len() != 4 {
            return Err(unsupported(
                op,
                "only 2-D convolutions (rank-4 x and weight)",
            ));
        }
        let out = self.output(op);
        let ys = self.shape(out).to_vec();
        let groups = self.param_int(op, "groups", 1).max(1) as usize;
        let strides = self.param_ints(op, "strides").unwrap_or(vec![1, 1]);
        let dilations = self.param_ints(op, "dilations").unwrap_or(vec![1, 1]);
        let pad_type = self.param_str(op, "pad_type").unwrap_or("valid".into());
        let pad_begin = match pad_type.as_str() {
            "custom" => {
                let p = self.param_ints(op, "pad").unwrap_or(vec![0; 4]);
                [p[0] as usize, p[2] as usize]
            }
            "same" => {
                let total = |d: usize| {
                    let needed = (ys[2 + d] - 1) * strides[d] as usize
                        + (ws[2 + d] - 1) * dilations[d] as usize
                        + 1;
                    needed.saturating_sub(xs[2 + d])
                };
                [total(0) / 2, total(1) / 2]
            }
            _ => [0, 0],
        };
        let pointwise = ws[2] == 1
            && ws[3] == 1
            && strides.iter().all(|&s| s == 1)
            && pad_begin == [0, 0]
            && ys[2] == xs[2]
            && ys[3] == xs[3];
        if pointwise {
            // y[n, g] = W[g] · x[n, g]: one product per batch element and group, weights
            // row-major [Cout][Cin/g] exactly as the blob stores them.
            let (cin, cout, hw) = (xs[1], ws[0], xs[2] * xs[3]);
            let (cin_g, cout_g) = (cin / groups, cout / groups);
            let mut batches = Vec::with_capacity(xs[0] * groups);
            for n in 0..xs[0] {
                for g in 0..groups {
                    batches.push([
                        g * cout_g * cin_g,
                        (n * cin + g * cin_g) * hw,
                        (n * cout + g * cout_g) * hw,
                        g * cout_g,
                    ]);
                }
            }
            self.push(Step::Gemm(GemmStep {
                a: w,
                la: MatLayout::row_major(0, cin_g),
                b: x,
                lb: MatLayout::row_major(0, hw),
                c: out,
                lc: MatLayout::row_major(0, hw),
                m: cout_g,
                n: hw,
                k: cin_g,
                batches,
                scale: 1.0,
                bias,
            }));
        } else {
            let arr = |v: &[usize]| [v[0], v[1], v[2], v[3]];
            self.push(Step::Conv(ConvStep {
                x,
                w,
                bias,
                y: out,
                in_shape: arr(&xs),
                w_shape: arr(&ws),
                out_shape: arr(&ys),
                strides: [strides[0] as usize, strides[1] as usize],
                dilations: [dilations[0] as usize, dilations[1] as usize],
                pad_begin,
                groups,
            }));
        }
        Ok(())
    }

    /// A batched product `out[..., m, n] = scale · x[..., m, k] · y[..., k, n]`, with numpy
    /// broadcasting over the batch dimensions and transposes as strided views.
    #[allow(clippy::too_many_arguments)]
    fn batched_gemm(
        &mut self,
        op: &Op,
        x: ValueId,
        tx: bool,
        y: ValueId,
        ty: bool,
        out: ValueId,
        scale: f32,
    ) -> Result<(), DeviceError> {
        let xs = self.shape(x).to_vec();
        let ys = self.shape(y).to_vec();
        let os = self.shape(out).to_vec();
        if xs.len() < 2 || ys.len() < 2 || os.len() < 2 {
            return Err(unsupported(op, "matmul operands of rank below 2"));
        }
        let (xr, xc) = (xs[xs.len() - 2], xs[xs.len() - 1]);
        let (yr, yc) = (ys[ys.len() - 2], ys[ys.len() - 1]);
        let (m, k) = if tx { (xc, xr) } else { (xr, xc) };
        let n = if ty { yr } else { yc };
        let batch_shape = &os[..os.len() - 2];
        let xb = broadcast_strides(&xs[..xs.len() - 2], batch_shape);
        let yb = broadcast_strides(&ys[..ys.len() - 2], batch_shape);
        let ob = contiguous_strides(batch_shape);
        let count: usize = batch_shape.iter().product();
        let mut batches = Vec::with_capacity(count);
        for b in 0..count {
            let (mut ox, mut oy, mut rem) = (0, 0, b);
            for d in 0..batch_shape.len() {
                let i = rem / ob[d];
                rem %= ob[d];
                ox += i * xb[d];
                oy += i * yb[d];
            }
            batches.push([ox * xr * xc, oy * yr * yc, b * m * n, 0]);
        }
        let view = |t: bool, cols: usize| {
            let l = MatLayout::row_major(0, cols);
            if t {
                l.transposed()
            } else {
                l
            }
        };
        self.push(Step::Gemm(GemmStep {
            a: x,
            la: view(tx, xc),
            b: y,
            lb: view(ty, yc),
            c: out,
            lc: MatLayout::row_major(0, n),
            m,
            n,
            k,
            batches,
            scale,
            bias: None,
        }));
        Ok(())
    }

    fn lower_matmul(&mut self, op: &Op) -> Result<(), DeviceError> {
        let x = self.arg_data(op, "x")?;
        let y = self.arg_data(op, "y")?;
        let (x, tx) = self.untransposed(x, self.param_bool(op, "transpose_x"));
        let (y, ty) = self.untransposed(y, self.param_bool(op, "transpose_y"));
        let out = self.output(op);
        self.batched_gemm(op, x, tx, y, ty, out, 1.0)
    }

    fn softmax_step(&mut self, x: ValueId, y: ValueId, axis: usize) {
        let shape = self.shape(x).to_vec();
        let outer = shape[..axis].iter().product();
        let inner: usize = shape[axis + 1..].iter().product();
        self.push(Step::Softmax(SoftmaxStep {
            x,
            y,
            outer,
            len: shape[axis],
            inner,
        }));
    }

    fn lower_softmax(&mut self, op: &Op) -> Result<(), DeviceError> {
        let x = self.arg_data(op, "x")?;
        let rank = self.shape(x).len().max(1) as i64;
        let axis = self.param_int(op, "axis", -1).rem_euclid(rank) as usize;
        let out = self.output(op);
        self.softmax_step(x, out, axis);
        Ok(())
    }

    fn lower_reduce(&mut self, op: &Op) -> Result<(), DeviceError> {
        let x = self.arg_data(op, "x")?;
        let shape = self.shape(x).to_vec();
        let rank = shape.len().max(1) as i64;
        let axes: Vec<usize> = match self.param_ints(op, "axes") {
            Some(a) => a.iter().map(|&v| v.rem_euclid(rank) as usize).collect(),
            None => (0..shape.len()).collect(),
        };
        let kept: Vec<usize> = (0..shape.len())
            .map(|d| if axes.contains(&d) { 1 } else { shape[d] })
            .collect();
        let mut out_strides = contiguous_strides(&kept);
        for &a in &axes {
            out_strides[a] = 0;
        }
        let kind = match op.kind.as_str() {
            "reduce_sum" => ReduceKind::Sum,
            "reduce_mean" => ReduceKind::Mean,
            _ => ReduceKind::Max,
        };
        let out = self.output(op);
        let (cshape, strides) = collapse(&shape, &[contiguous_strides(&shape), out_strides]);
        let [xs, ys]: [Vec<usize>; 2] = strides.try_into().expect("two operands");
        self.push(Step::Reduce(ReduceStep {
            x,
            y: out,
            kind,
            shape: cshape,
            strides: [xs, ys],
            out_len: kept.iter().product(),
            count: axes.iter().map(|&a| shape[a]).product(),
        }));
        Ok(())
    }

    /// A per-axis parameter (scale, zero point) as an operand over `out_shape`: a scalar
    /// broadcasts everywhere, a vector runs along `axis`.
    fn axis_operand(&self, v: ValueId, axis: Option<i64>, out_shape: &[usize]) -> Operand {
        let shape = self.shape(v);
        if shape.len() == 1 && shape[0] > 1 && out_shape.len() > 1 {
            let rank = out_shape.len() as i64;
            let a = axis.unwrap_or(0).rem_euclid(rank) as usize;
            let mut strides = vec![0; out_shape.len()];
            strides[a] = 1;
            return Operand {
                value: v,
                offset: 0,
                strides,
            };
        }
        self.broadcast_operand(v, out_shape)
    }

    fn lower_quantization(&mut self, op: &Op) -> Result<(), DeviceError> {
        let x = self.arg_data(op, "input")?;
        let scale = self.arg_data(op, "scale")?;
        let zero = match op.arg("zero_point") {
            Some(a) => Some(self.data(&a.clone(), "zero_point")?),
            None => None,
        };
        let axis = self.param_ints(op, "axis").and_then(|v| v.first().copied());
        let out = self.output(op);
        let shape = self.shape(out).to_vec();
        let first = self.broadcast_operand(x, &shape);
        let scale = self.axis_operand(scale, axis, &shape);
        let zero = zero.map(|z| self.axis_operand(z, axis, &shape));
        let step = |kind, side| EwOp {
            kind,
            side,
            chain_is_x: true,
            round: false,
        };
        let mut ops = Vec::new();
        if op.kind == "quantize" {
            let (lo, hi) = match self.param_str(op, "output_dtype").as_deref() {
                Some("uint8") => (0.0, 255.0),
                _ => (-128.0, 127.0),
            };
            ops.push(step(EwKind::Div, Some(scale)));
            ops.push(step(EwKind::RoundEven, None));
            if let Some(z) = zero {
                ops.push(step(EwKind::Add, Some(z)));
            }
            ops.push(step(EwKind::Clamp(lo, hi), None));
        } else {
            if let Some(z) = zero {
                ops.push(step(EwKind::Sub, Some(z)));
            }
            ops.push(step(EwKind::Mul, Some(scale)));
            let round = self.values[out].round;
            if let Some(last) = ops.last_mut() {
                last.round = round;
            }
        }
        self.ew_step(out, first, ops);
        Ok(())
    }

    fn lower_constexpr_dequantize(&mut self, op: &Op) -> Result<(), DeviceError> {
        let lit = |key: &str| {
            self.param(op, key)
                .ok_or_else(|| unsupported(op, format!("missing attribute `{key}`")))
        };
        let (data, scale) = (lit("quantized_data")?, lit("scale")?);
        let shape = data.ty().shape().to_vec();
        let axis = self
            .param_int(op, "axis", 0)
            .rem_euclid(shape.len().max(1) as i64) as usize;
        let round = self.rounds(&self.ty(&op.output));
        let source = ConstSource::Dequantize {
            data,
            scale,
            zero: self.param(op, "zero_point"),
            axis,
            round,
        };
        let id = self.new_const(shape, source, round);
        self.env.insert(op.output.clone(), id);
        Ok(())
    }

    /// SDPA as the ANE kernels write attention out by hand: Q·Kᵀ·scale (+ mask), softmax over
    /// keys, times V.
    fn lower_sdpa(&mut self, op: &Op) -> Result<(), DeviceError> {
        let q = self.arg_data(op, "query")?;
        let k = self.arg_data(op, "key")?;
        let v = self.arg_data(op, "value")?;
        let mask = match op.arg("attn_mask") {
            Some(a) => Some(self.data(&a.clone(), "attn_mask")?),
            None => None,
        };
        let out_ty = self.ty(&op.output);
        let round = self.rounds(&out_ty);
        let qs = self.shape(q).to_vec();
        let ks = self.shape(k).to_vec();
        let (l, e) = (qs[qs.len() - 2], qs[qs.len() - 1]);
        let s = ks[ks.len() - 2];
        let out = self.output(op);
        let os = self.shape(out).to_vec();
        let mut score_shape = os[..os.len() - 2].to_vec();
        score_shape.extend([l, s]);
        let scores = self.new_value(score_shape.clone(), Storage::Arena, round);
        self.batched_gemm(op, q, false, k, true, scores, 1.0 / (e as f32).sqrt())?;
        let probs_in = if let Some(m) = mask {
            let masked = self.new_value(score_shape.clone(), Storage::Arena, round);
            let first = self.broadcast_operand(scores, &score_shape);
            let side = self.broadcast_operand(m, &score_shape);
            self.ew_step(
                masked,
                first,
                vec![EwOp {
                    kind: EwKind::Add,
                    side: Some(side),
                    chain_is_x: true,
                    round,
                }],
            );
            masked
        } else {
            scores
        };
        let probs = self.new_value(score_shape.clone(), Storage::Arena, round);
        self.softmax_step(probs_in, probs, score_shape.len() - 1);
        self.batched_gemm(op, probs, false, v, false, out, 1.0)
    }
}

fn norm_index(i: i64, dim: usize) -> usize {
    if i < 0 {
        (i + dim as i64).max(0) as usize
    } else {
        (i as usize).min(dim)
    }
}

/// Whether a slice of `size` out of a dense `shape` is one contiguous run of memory: every
/// dimension after the innermost partial one is taken whole, and every one before it has size 1.
fn is_contiguous_region(shape: &[usize], size: &[usize]) -> bool {
    match (0..shape.len()).rev().find(|&d| size[d] != shape[d]) {
        None => true,
        Some(inner) => (0..inner).all(|d| size[d] == 1),
    }
}

/// The elementwise kind of an op, if it is one.
fn ew_kind(op: &Op, l: &Lowering<'_>) -> Option<EwKind> {
    Some(match op.kind.as_str() {
        "add" => EwKind::Add,
        "sub" => EwKind::Sub,
        "mul" => EwKind::Mul,
        "real_div" => EwKind::Div,
        "pow" => EwKind::Pow,
        "maximum" => EwKind::Max,
        "minimum" => EwKind::Min,
        "sigmoid" => EwKind::Sigmoid,
        "exp" => EwKind::Exp,
        "log" => EwKind::Log,
        "sqrt" => EwKind::Sqrt,
        "rsqrt" => EwKind::Rsqrt(l.param_f32(op, "epsilon").unwrap_or(1e-12)),
        "relu" => EwKind::Relu,
        "silu" => EwKind::Silu,
        "tanh" => EwKind::Tanh,
        "abs" => EwKind::Abs,
        "square" => EwKind::Square,
        "gelu" => EwKind::Gelu(match l.param_str(op, "mode").as_deref() {
            Some("TANH_APPROXIMATION") => GeluMode::Tanh,
            Some("SIGMOID_APPROXIMATION") => GeluMode::Sigmoid,
            _ => GeluMode::Exact,
        }),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contiguous_regions() {
        // Channel slices of [1, C, 1, S] are contiguous; spatial slices are not.
        assert!(is_contiguous_region(&[1, 8, 1, 4], &[1, 3, 1, 4]));
        assert!(!is_contiguous_region(&[1, 8, 1, 4], &[1, 8, 1, 2]));
        assert!(is_contiguous_region(&[1, 8, 1, 4], &[1, 1, 1, 2]));
        assert!(!is_contiguous_region(&[2, 8, 1, 4], &[2, 3, 1, 4]));
    }
}
