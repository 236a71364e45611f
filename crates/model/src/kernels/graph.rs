//! A thin layer over the MIL builder for kernel generators: every op's output type is inferred
//! by the checker, constants and weight files are created on demand, and one float dtype is used
//! for every tensor: fp16 for the ANE (and the CPU's fp16 mode), fp32 where exact gradients are
//! wanted (the CPU's fp32 mode).
//!
//! Trainable tensors go through [`Graph::weight`], which follows the graph's [`WeightMode`]: baked
//! as BLOBFILE constants whose files are written per layer and weight version (the program
//! itself is the same for all of them), or read from a block of extra spatial columns of the
//! kernel's single input (the dynamic pipeline: compiled once, weights staged by the host).
//! Constant tables (RoPE, the causal mask) go through [`Graph::baked`] and are baked in every
//! mode.

use anetrain_mil::blob::{BlobFile, WeightFiles};
use anetrain_mil::check::CheckError;
use anetrain_mil::{
    Arg, DType, Dialect, FloatLit, FunctionBuilder, Literal, Program, Style, Type, Var,
};
use std::collections::HashMap;

/// A generated kernel: the program and the weight files its BLOBFILE constants name.
#[derive(Clone, Debug)]
pub struct KernelProgram {
    pub name: String,
    pub program: Program,
    /// The files of the constant tables; a baked kernel's trainable tensors are added per
    /// layer and weight version (see `trainables`).
    pub weights: WeightFiles,
    /// Baked mode: the trainable tensors the program reads from weight files of their own.
    pub trainables: Vec<BakedTensor>,
}

/// A trainable tensor baked into a weight file `path` (one tensor per file, at offset 64), as
/// stored or transposed, in `shape` and `dtype`.
#[derive(Clone, Debug, PartialEq)]
pub struct BakedTensor {
    pub path: String,
    pub tensor: String,
    pub transposed: bool,
    pub shape: Vec<usize>,
    pub dtype: DType,
}

/// One trainable tensor in the weight block of a kernel's input.
#[derive(Clone, Debug, PartialEq)]
pub struct InputWeight {
    pub name: String,
    pub shape: Vec<usize>,
    /// Flat offset in the block (element `i` of the block is column `i % P` of channel `i / P`).
    pub offset: usize,
}

impl InputWeight {
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Where a dynamic kernel's trainable tensors live in its input `[1, C, 1, S + P]`.
///
/// Columns `[0, S)` of every channel hold the activations; the `[1, C, 1, P]` block after them
/// holds the tensors flattened one after another in the block's row-major order (flat index
/// `c·P + p`), each at a fixed offset, and `P = ceil(total / C)` (the tail is padding).
#[derive(Clone, Debug, PartialEq)]
pub struct InputWeights {
    channels: usize,
    columns: usize,
    tensors: Vec<InputWeight>,
}

impl InputWeights {
    /// Lays out `tensors` (name, shape) in order behind `channels` channels of activations.
    pub fn new(channels: usize, tensors: &[(String, Vec<usize>)]) -> InputWeights {
        let mut offset = 0;
        let tensors: Vec<InputWeight> = tensors
            .iter()
            .map(|(name, shape)| {
                let t = InputWeight {
                    name: name.clone(),
                    shape: shape.clone(),
                    offset,
                };
                offset += t.len();
                t
            })
            .collect();
        InputWeights {
            channels,
            columns: offset.div_ceil(channels.max(1)),
            tensors,
        }
    }

    /// Channels C of the input.
    pub fn channels(&self) -> usize {
        self.channels
    }

    /// Columns P of the block after the activations.
    pub fn columns(&self) -> usize {
        self.columns
    }

    pub fn tensors(&self) -> &[InputWeight] {
        &self.tensors
    }

    pub fn get(&self, name: &str) -> Option<&InputWeight> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// Elements of the kernel's input `[C][S + P]` for `s` activation columns.
    pub fn input_len(&self, s: usize) -> usize {
        self.channels * (s + self.columns)
    }

    /// Copies activations `[C][S]` into columns `[0, S)` of a dynamic input `[C][S + P]`.
    /// Panics when the lengths do not fit the input weights (a caller's bug).
    pub fn write_activations(&self, input: &mut [f32], s: usize, activations: &[f32]) {
        assert_eq!(activations.len(), self.channels * s, "activations [C][S]");
        assert_eq!(input.len(), self.input_len(s), "dynamic input [C][S + P]");
        if s == 0 {
            return;
        }
        let row = s + self.columns;
        for (dst, src) in input.chunks_exact_mut(row).zip(activations.chunks_exact(s)) {
            dst[..s].copy_from_slice(src);
        }
    }

    /// Copies a tensor's values (row-major in its shape) to its place in the weight block of a dynamic
    /// input `[C][S + P]`. Panics when the lengths do not fit the input weights (a caller's bug).
    pub fn write_tensor(&self, input: &mut [f32], s: usize, tensor: &InputWeight, values: &[f32]) {
        assert_eq!(values.len(), tensor.len(), "values of `{}`", tensor.name);
        assert_eq!(input.len(), self.input_len(s), "dynamic input [C][S + P]");
        assert!(
            tensor.offset + tensor.len() <= self.channels * self.columns,
            "`{}` lies outside the block",
            tensor.name
        );
        let (p, row) = (self.columns, s + self.columns);
        let (mut at, mut rest) = (tensor.offset, values);
        // The tensor runs along the block's rows, wrapping from one channel to the next.
        while !rest.is_empty() {
            let (c, col) = (at / p, at % p);
            let n = (p - col).min(rest.len());
            let start = c * row + s + col;
            input[start..start + n].copy_from_slice(&rest[..n]);
            rest = &rest[n..];
            at += n;
        }
    }
}

/// Where a kernel's trainable tensors come from.
#[derive(Clone, Debug, PartialEq)]
pub enum WeightMode {
    /// BLOBFILE constants: changing a weight means recompiling.
    Baked,
    /// The block of the input's spatial axis after the activations, laid out by the input weights.
    Dynamic(InputWeights),
    /// The first pass of a dynamic generation: notes every trainable tensor the generator asks
    /// for, in order, so that one [`InputWeights`] can be laid out from the generator itself.
    /// Its program carries no weight data and is not meant to be compiled.
    Recording,
}

pub struct Graph {
    name: String,
    dtype: DType,
    mode: WeightMode,
    /// The weight block flattened to `[1, 1, 1, C·P]` (dynamic mode, once the input exists).
    block: Option<Var>,
    /// Trainable tensors already read (dynamic and recording modes): each is read once.
    trainables: HashMap<String, Var>,
    /// Baked mode: the trainable tensors in order of first use.
    baked_trainables: Vec<BakedTensor>,
    /// Recording mode: the input's channels and the trainable tensors in order of first use.
    recorded_channels: Option<usize>,
    recorded: Vec<(String, Vec<usize>)>,
    b: FunctionBuilder,
    weights: WeightFiles,
    /// The first inference failure: a generator bug, reported by `finish`.
    error: Option<CheckError>,
    /// pad_type, strides, pad, dilations, groups: shared by every conv of the kernel.
    conv_consts: Option<[Var; 5]>,
}

impl Graph {
    /// A graph with its trainable tensors baked.
    pub fn new(name: &str, dtype: DType) -> Graph {
        Graph::with_weights(name, dtype, WeightMode::Baked)
    }

    pub fn with_weights(name: &str, dtype: DType, mode: WeightMode) -> Graph {
        Graph {
            name: name.to_string(),
            dtype,
            mode,
            block: None,
            trainables: HashMap::new(),
            baked_trainables: Vec::new(),
            recorded_channels: None,
            recorded: Vec::new(),
            b: FunctionBuilder::new("main", "ios18"),
            weights: WeightFiles::new(),
            error: None,
            conv_consts: None,
        }
    }

    pub fn weight_mode(&self) -> &WeightMode {
        &self.mode
    }

    /// The kernel's single input: returns its activations, `[1, C, 1, S]`. In dynamic mode the
    /// input itself is `[1, C, 1, S + P]` and the block after the activations is kept for
    /// [`Graph::weight`].
    pub fn input(&mut self, name: &str, shape: &[usize]) -> Var {
        let &[1, channels, 1, s] = shape else {
            self.fail(format!(
                "the input `{name}` must be [1, C, 1, S], not {shape:?}"
            ));
            return self.declare_input(name, shape);
        };
        match &self.mode {
            WeightMode::Baked => self.declare_input(name, shape),
            WeightMode::Recording => {
                self.recorded_channels = Some(channels);
                self.declare_input(name, shape)
            }
            WeightMode::Dynamic(weights) => {
                let (c, p) = (weights.channels(), weights.columns());
                if c != channels {
                    self.fail(format!(
                        "the input `{name}` has {channels} channels, its input weights {c}"
                    ));
                }
                self.dynamic_input(name, c, s, p)
            }
        }
    }

    /// Declares the input `[1, C, 1, S + P]`, keeps its weight block flattened to
    /// `[1, 1, 1, C·P]` for [`Graph::weight`], and returns its activations `[1, C, 1, S]`.
    fn dynamic_input(&mut self, name: &str, c: usize, s: usize, p: usize) -> Var {
        if p == 0 {
            return self.declare_input(name, &[1, c, 1, s]);
        }
        let full = self.declare_input(name, &[1, c, 1, s + p]);
        let block = self.slice(
            &format!("{name}_wblock"),
            &full,
            &[0, 0, 0, s],
            &[1, c, 1, p],
        );
        let flat = self.reshape(&format!("{name}_wflat"), &block, &[1, 1, 1, c * p]);
        self.block = Some(flat);
        self.slice(&format!("{name}_act"), &full, &[0, 0, 0, 0], &[1, c, 1, s])
    }

    fn declare_input(&mut self, name: &str, shape: &[usize]) -> Var {
        let ty = Type::tensor(self.dtype, shape.to_vec());
        self.b.input(name, ty)
    }

    /// Keeps the first generator error (a bug), for `finish` to report.
    fn fail(&mut self, message: String) {
        self.error.get_or_insert(CheckError {
            function: "main".into(),
            op_index: None,
            op_name: None,
            op_kind: None,
            output: None,
            arg: None,
            message: format!("kernel {}: {message}", self.name),
        });
    }

    pub fn constant(&mut self, name: &str, lit: Literal) -> Var {
        self.b.constant(name, lit)
    }

    pub fn ints(&mut self, name: &str, values: &[usize]) -> Var {
        let v: Vec<i32> = values.iter().map(|&x| x as i32).collect();
        self.constant(name, Literal::int32_tensor(&v))
    }

    pub fn axes(&mut self, name: &str, values: &[i32]) -> Var {
        self.constant(name, Literal::int32_tensor(values))
    }

    pub fn int(&mut self, name: &str, value: i32) -> Var {
        self.constant(name, Literal::int32(value))
    }

    pub fn flag(&mut self, name: &str, value: bool) -> Var {
        self.constant(name, Literal::bool(value))
    }

    /// A float scalar constant, written as C's `%f` would (the generators' convention) where
    /// that is exact enough, else in fixed form with all the digits the value needs: never in
    /// exponent form, which no program known to compile on the ANE uses.
    pub fn scalar(&mut self, name: &str, value: f64) -> Var {
        let six = FloatLit::fixed6(value);
        let lit = if (six.value - value).abs() <= 1e-7 * value.abs() {
            six
        } else {
            // `Display` of an f64 is the shortest text that reads back exactly, in fixed form.
            FloatLit::from_text(&format!("{value}")).unwrap_or(six)
        };
        self.constant(name, Literal::float(self.dtype, lit))
    }

    /// A trainable tensor `tensor` of `shape` (the tensor as stored, or its transpose when
    /// `transposed`), as value `name`. Baked mode reads it from the weight file
    /// `<tensor>.bin` (`<tensor>t.bin` transposed), whose data is written later for a layer and
    /// weight version (see [`KernelProgram::trainables`]); dynamic mode reads the tensor from
    /// the input's block at the input weights' offset, and recording mode notes it. Dynamic weights
    /// are read as stored. A tensor asked for twice is read once.
    pub fn weight(&mut self, name: &str, tensor: &str, shape: &[usize], transposed: bool) -> Var {
        if self.mode == WeightMode::Baked {
            let file = format!("{tensor}{}", if transposed { "t" } else { "" });
            let path = format!("@model_path/weights/{file}.bin");
            if !self.baked_trainables.iter().any(|b| b.path == path) {
                self.baked_trainables.push(BakedTensor {
                    path: path.clone(),
                    tensor: tensor.to_string(),
                    transposed,
                    shape: shape.to_vec(),
                    dtype: self.dtype,
                });
            }
            return self.blob_constant(name, shape, path);
        }
        if transposed {
            self.fail(format!(
                "the weight `{tensor}` is passed as stored; transpose it in the program"
            ));
        }
        if let Some(v) = self.trainables.get(tensor) {
            return v.clone();
        }
        let v = match self.dynamic_read(tensor, shape) {
            Some((block, offset, len)) => {
                let flat = self.slice(
                    &format!("{name}_flat"),
                    &block,
                    &[0, 0, 0, offset],
                    &[1, 1, 1, len],
                );
                self.reshape(name, &flat, shape)
            }
            None => {
                if self.mode == WeightMode::Recording {
                    self.recorded.push((tensor.to_string(), shape.to_vec()));
                }
                self.placeholder(name, tensor, shape)
            }
        };
        self.trainables.insert(tensor.to_string(), v.clone());
        v
    }

    /// The flattened block and a trainable tensor's offset and length in it, in dynamic mode.
    /// Failures (a tensor the input weights lack, a shape that disagrees with it, no input yet) are
    /// generator bugs, kept for `finish`.
    fn dynamic_read(&mut self, tensor: &str, shape: &[usize]) -> Option<(Var, usize, usize)> {
        let WeightMode::Dynamic(weights) = &self.mode else {
            return None;
        };
        let problem = match (weights.get(tensor), &self.block) {
            (Some(t), Some(block)) if t.shape == shape => {
                return Some((block.clone(), t.offset, t.len()));
            }
            (Some(t), _) if t.shape != shape => format!(
                "the weight `{tensor}` is {shape:?} here but {:?} in the input weights",
                t.shape
            ),
            (Some(_), _) => format!("the weight `{tensor}` is read before the input"),
            (None, _) => format!("the input weights has no tensor `{tensor}`"),
        };
        self.fail(problem);
        None
    }

    /// A value of the right type with no data behind it: what recording mode (and a failed
    /// packed read) hands back so that generation goes on and types stay right.
    fn placeholder(&mut self, name: &str, tensor: &str, shape: &[usize]) -> Var {
        self.blob_constant(name, shape, format!("@model_path/weights/{tensor}.bin"))
    }

    /// A BLOBFILE constant of the graph's dtype at offset 64 of `path` (one tensor per file:
    /// the layout every chip accepts).
    fn blob_constant(&mut self, name: &str, shape: &[usize], path: String) -> Var {
        self.constant(
            name,
            Literal::Blob {
                dtype: self.dtype,
                shape: shape.to_vec(),
                path,
                offset: 64,
            },
        )
    }

    /// A constant tensor baked from a weight file `@model_path/weights/<file>.bin` in every
    /// weight mode, stored in the graph's dtype. `values` are row-major in `shape`.
    pub fn baked(&mut self, name: &str, file: &str, shape: &[usize], values: &[f32]) -> Var {
        let path = format!("@model_path/weights/{file}.bin");
        if values.len() != shape.iter().product::<usize>() {
            self.fail(format!(
                "{} values for the constant `{file}` of shape {shape:?}",
                values.len()
            ));
        }
        let blob = match self.dtype {
            DType::Fp32 => BlobFile::fp32(values),
            _ => BlobFile::fp16(values),
        };
        self.weights.insert_blob(path.clone(), &blob);
        self.blob_constant(name, shape, path)
    }

    /// Adds `kind(args)`, inferring its type. A generator bug (an op that does not
    /// type-check) is kept for `finish`; the op goes in with a placeholder type so that
    /// generation goes on.
    pub fn op(&mut self, kind: &str, name: &str, args: Vec<(&str, Arg)>) -> Var {
        let ty = match self.b.infer(kind, name, &args) {
            Ok(ty) => ty,
            Err(e) => {
                self.error.get_or_insert(*e);
                Type::Scalar(self.dtype)
            }
        };
        self.b.op(kind, name, ty, args)
    }

    pub fn shape(&self, v: &Var) -> Vec<usize> {
        self.b
            .type_of(v)
            .map(|t| t.shape().to_vec())
            .unwrap_or_default()
    }

    pub fn binary(&mut self, kind: &str, name: &str, x: &Var, y: &Var) -> Var {
        self.op(kind, name, vec![("x", x.into()), ("y", y.into())])
    }

    pub fn unary(&mut self, kind: &str, name: &str, x: &Var) -> Var {
        self.op(kind, name, vec![("x", x.into())])
    }

    /// A 1×1 convolution: `weight [OC, IC, 1, 1]` applied to `x [1, IC, 1, S]`.
    pub fn conv(&mut self, name: &str, weight: &Var, x: &Var) -> Var {
        let [pt, st, pd, dl, gr] = match &self.conv_consts {
            Some(c) => c.clone(),
            None => {
                let c = [
                    self.constant("pt", Literal::string("valid")),
                    self.ints("st", &[1, 1]),
                    self.ints("pd", &[0, 0, 0, 0]),
                    self.ints("dl", &[1, 1]),
                    self.int("gr", 1),
                ];
                self.conv_consts = Some(c.clone());
                c
            }
        };
        self.op(
            "conv",
            name,
            vec![
                ("dilations", (&dl).into()),
                ("groups", (&gr).into()),
                ("pad", (&pd).into()),
                ("pad_type", (&pt).into()),
                ("strides", (&st).into()),
                ("weight", weight.into()),
                ("x", x.into()),
            ],
        )
    }

    pub fn matmul(&mut self, name: &str, x: &Var, y: &Var, tx: bool, ty: bool) -> Var {
        let fx = self.flag(&format!("{name}_tx"), tx);
        let fy = self.flag(&format!("{name}_ty"), ty);
        self.op(
            "matmul",
            name,
            vec![
                ("transpose_x", (&fx).into()),
                ("transpose_y", (&fy).into()),
                ("x", x.into()),
                ("y", y.into()),
            ],
        )
    }

    pub fn reshape(&mut self, name: &str, x: &Var, shape: &[usize]) -> Var {
        let s = self.ints(&format!("{name}_shape"), shape);
        self.op(
            "reshape",
            name,
            vec![("shape", (&s).into()), ("x", x.into())],
        )
    }

    /// Swaps the last two axes of a rank-4 tensor.
    pub fn transpose_last(&mut self, name: &str, x: &Var) -> Var {
        let p = self.ints(&format!("{name}_perm"), &[0, 1, 3, 2]);
        self.op(
            "transpose",
            name,
            vec![("perm", (&p).into()), ("x", x.into())],
        )
    }

    pub fn slice(&mut self, name: &str, x: &Var, begin: &[usize], size: &[usize]) -> Var {
        let b = self.ints(&format!("{name}_begin"), begin);
        let s = self.ints(&format!("{name}_size"), size);
        self.op(
            "slice_by_size",
            name,
            vec![
                ("x", x.into()),
                ("begin", (&b).into()),
                ("size", (&s).into()),
            ],
        )
    }

    pub fn concat(&mut self, name: &str, axis: i32, values: &[Var]) -> Var {
        let ax = self.int(&format!("{name}_axis"), axis);
        let il = self.flag(&format!("{name}_interleave"), false);
        self.op(
            "concat",
            name,
            vec![
                ("axis", (&ax).into()),
                ("interleave", (&il).into()),
                ("values", values.into()),
            ],
        )
    }

    pub fn softmax(&mut self, name: &str, x: &Var, axis: i32) -> Var {
        let ax = self.int(&format!("{name}_axis"), axis);
        self.op(
            "softmax",
            name,
            vec![("axis", (&ax).into()), ("x", x.into())],
        )
    }

    pub fn reduce_sum(&mut self, name: &str, x: &Var, axes: &[i32]) -> Var {
        let ax = self.axes(&format!("{name}_axes"), axes);
        let kd = self.flag(&format!("{name}_keep"), true);
        self.op(
            "reduce_sum",
            name,
            vec![
                ("x", x.into()),
                ("axes", (&ax).into()),
                ("keep_dims", (&kd).into()),
            ],
        )
    }

    pub fn output(&mut self, v: &Var) {
        self.b.output(v);
    }

    /// Ends a recording pass with the input weights of the trainable tensors it noted.
    pub fn finish_recording(mut self) -> Result<InputWeights, Box<CheckError>> {
        if self.mode != WeightMode::Recording {
            self.fail("only a recording pass ends with input weights".into());
        }
        let Some(channels) = self.recorded_channels else {
            self.fail("the recorded kernel has no input".into());
            return Err(Box::new(self.error.take().expect("just failed")));
        };
        match self.error {
            Some(e) => Err(Box::new(e)),
            None => Ok(InputWeights::new(channels, &self.recorded)),
        }
    }

    pub fn finish(mut self) -> Result<KernelProgram, Box<CheckError>> {
        if self.mode == WeightMode::Recording {
            self.fail("a recording pass has no program to run (finish_recording ends it)".into());
        }
        if let Some(e) = self.error {
            return Err(Box::new(e));
        }
        Ok(KernelProgram {
            name: self.name,
            program: Program::single(Dialect::Ios18, Style::Compact, self.b.finish()),
            weights: self.weights,
            trainables: self.baked_trainables,
        })
    }
}
