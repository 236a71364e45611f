//! A thin layer over the MIL builder for kernel generators: every op's output type is inferred
//! by the checker, constants and weight files are created on demand, and one float dtype is used
//! for every tensor: fp16 for the ANE (and the CPU's fp16 mode), fp32 where exact gradients are
//! wanted (the CPU's fp32 mode).
//!
//! Trainable tensors go through [`Graph::weight`], which follows the graph's [`WeightMode`]: baked
//! as BLOBFILE constants whose files are written per layer and weight version (the program
//! itself is the same for all of them), or read from slices of extra spatial columns of the
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

/// Input and output widths are padded to a multiple of this: the ANE corrupts other widths
/// silently (the `spatial-multiple` rule of the chip table).
pub const WIDTH_MULTIPLE: usize = 16;

/// One trainable tensor in the weight block of a kernel's input: a matrix `[R, K]` (a vector is
/// `[n, 1]`) in a slice of columns of its own, one matrix row per channel, never wrapped
/// across channels.
#[derive(Clone, Debug, PartialEq)]
pub struct InputWeight {
    pub name: String,
    /// The shape the generator reads it in.
    pub shape: Vec<usize>,
    /// Rows R and columns K of the tensor as stored.
    pub matrix: [usize; 2],
    /// The slice's first column in the block (after the activations).
    pub column: usize,
    /// Placed transposed: channel k holds column k of the matrix (R values), because R is more
    /// than the input's channels. Otherwise channel r holds row r (K values).
    pub transposed: bool,
}

impl InputWeight {
    pub fn len(&self) -> usize {
        self.matrix[0] * self.matrix[1]
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Channels and columns of its slice: `[R, K]`, or `[K, R]` placed transposed.
    pub fn slice(&self) -> [usize; 2] {
        let [r, k] = self.matrix;
        if self.transposed {
            [k, r]
        } else {
            [r, k]
        }
    }
}

/// A shape's matrix: its axes longer than 1 as `[R, K]` (a vector as `[n, 1]`), or `None`
/// for more than two such axes.
fn matrix_of(shape: &[usize]) -> Option<[usize; 2]> {
    let dims: Vec<usize> = shape.iter().copied().filter(|&d| d != 1).collect();
    match dims[..] {
        [] => Some([1, 1]),
        [n] => Some([n, 1]),
        [r, k] => Some([r, k]),
        _ => None,
    }
}

/// Where a dynamic kernel's trainable tensors live in its input `[1, C, 1, S + P]`.
///
/// Columns `[0, S)` of every channel hold the activations; after them each tensor has a slice
/// of columns of its own, as the original's dynamic pipeline lays its weights out: a matrix
/// `[R, K]` with R ≤ C puts row r in channel r (K columns); one with more rows than channels
/// is placed transposed (R columns). Channels past a slice's rows are padding, and so are the
/// columns that round `S + P` up to a multiple of [`WIDTH_MULTIPLE`]. No axis of the program
/// is longer than the input's width.
#[derive(Clone, Debug, PartialEq)]
pub struct InputWeights {
    channels: usize,
    columns: usize,
    tensors: Vec<InputWeight>,
}

impl InputWeights {
    /// Lays out `tensors` (name, shape) in order behind `channels` channels of `s` activation
    /// columns. A tensor that is no matrix, or fits the channels neither way, is refused.
    pub fn new(
        channels: usize,
        s: usize,
        tensors: &[(String, Vec<usize>)],
    ) -> Result<InputWeights, String> {
        let mut column = 0;
        let mut placed = Vec::with_capacity(tensors.len());
        for (name, shape) in tensors {
            let matrix = matrix_of(shape)
                .ok_or_else(|| format!("the weight `{name}` {shape:?} is not a matrix"))?;
            let transposed = match matrix {
                [r, _] if r <= channels => false,
                [_, k] if k <= channels => true,
                [r, k] => {
                    return Err(format!(
                        "the weight `{name}` ({r}×{k}) fits {channels} channels neither way"
                    ))
                }
            };
            let t = InputWeight {
                name: name.clone(),
                shape: shape.clone(),
                matrix,
                column,
                transposed,
            };
            column += t.slice()[1];
            placed.push(t);
        }
        let columns = if column == 0 {
            0
        } else {
            (s + column).next_multiple_of(WIDTH_MULTIPLE) - s
        };
        Ok(InputWeights {
            channels,
            columns,
            tensors: placed,
        })
    }

    /// Channels C of the input.
    pub fn channels(&self) -> usize {
        self.channels
    }

    /// Columns P of the block after the activations, padding included.
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

    /// Copies a tensor's values (row-major as stored) to its slice of a dynamic input
    /// `[C][S + P]`. Panics when the lengths do not fit the input weights (a caller's bug).
    pub fn write_tensor(&self, input: &mut [f32], s: usize, tensor: &InputWeight, values: &[f32]) {
        assert_eq!(values.len(), tensor.len(), "values of `{}`", tensor.name);
        assert_eq!(input.len(), self.input_len(s), "dynamic input [C][S + P]");
        let [channels, width] = tensor.slice();
        assert!(
            channels <= self.channels && tensor.column + width <= self.columns,
            "`{}` lies outside the block",
            tensor.name
        );
        let row = s + self.columns;
        let [_, k] = tensor.matrix;
        for c in 0..channels {
            let start = c * row + s + tensor.column;
            let dst = &mut input[start..start + width];
            if tensor.transposed {
                // Channel c holds column c of the matrix.
                for (r, d) in dst.iter_mut().enumerate() {
                    *d = values[r * k + c];
                }
            } else {
                dst.copy_from_slice(&values[c * k..(c + 1) * k]);
            }
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
    /// The whole input and its activation columns S (dynamic mode, once the input exists).
    input: Option<(Var, usize)>,
    /// Trainable tensors already read (dynamic and recording modes): each is read once.
    trainables: HashMap<String, Var>,
    /// Trainable tensors as placed in the input, and whether placed transposed.
    placed: HashMap<String, (Var, bool)>,
    /// Baked mode: the trainable tensors in order of first use.
    baked_trainables: Vec<BakedTensor>,
    /// Recording mode: the input's channels and activation columns, and the trainable tensors
    /// in order of first use.
    recorded_input: Option<(usize, usize)>,
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
            input: None,
            trainables: HashMap::new(),
            placed: HashMap::new(),
            baked_trainables: Vec::new(),
            recorded_input: None,
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
                self.recorded_input = Some((channels, s));
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

    /// Declares the input `[1, C, 1, S + P]`, keeps it for [`Graph::weight`], and returns its
    /// activations `[1, C, 1, S]`.
    fn dynamic_input(&mut self, name: &str, c: usize, s: usize, p: usize) -> Var {
        if p == 0 {
            return self.declare_input(name, &[1, c, 1, s]);
        }
        let full = self.declare_input(name, &[1, c, 1, s + p]);
        self.input = Some((full.clone(), s));
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
    /// its slice of the input (see [`InputWeights`]), and recording mode notes it. Dynamic
    /// weights are read as stored. A tensor asked for twice is read once.
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
        let v = match self.placed_weight(name, tensor, shape) {
            (m, false) => m,
            (m, true) => {
                let t = self.transpose_last(&format!("{name}_t"), &m);
                if self.shape(&t) == shape {
                    t
                } else {
                    self.reshape(name, &t, shape)
                }
            }
        };
        self.trainables.insert(tensor.to_string(), v.clone());
        v
    }

    /// A dynamic or recorded matrix `[1, 1, R, K]` as placed in the input: the matrix itself
    /// (`false`), or its transpose `[1, 1, K, R]` (`true`), for a matmul to flip its transpose
    /// flag rather than the kernel transposing the matrix. Baked mode has no placement: it
    /// reads the matrix as stored.
    pub fn weight_matrix(
        &mut self,
        name: &str,
        tensor: &str,
        rows: usize,
        cols: usize,
    ) -> (Var, bool) {
        let shape = [1, 1, rows, cols];
        if self.mode == WeightMode::Baked {
            return (self.weight(name, tensor, &shape, false), false);
        }
        self.placed_weight(name, tensor, &shape)
    }

    /// The tensor as placed (see [`Graph::weight_matrix`]), read once: in `shape` when not
    /// transposed, as `[1, 1, K, R]` when transposed.
    fn placed_weight(&mut self, name: &str, tensor: &str, shape: &[usize]) -> (Var, bool) {
        if let Some(v) = self.placed.get(tensor) {
            return v.clone();
        }
        let v = match self.dynamic_read(tensor, shape) {
            Some((input, s, t)) => {
                let [channels, width] = t.slice();
                let sliced = [1, channels, 1, width];
                let slice_name = if !t.transposed && sliced[..] == *shape {
                    name.to_string()
                } else {
                    format!("{name}_slice")
                };
                let m = self.slice(&slice_name, &input, &[0, 0, 0, s + t.column], &sliced);
                if t.transposed {
                    let m = self.reshape(&format!("{name}_m"), &m, &[1, 1, channels, width]);
                    (m, true)
                } else if sliced[..] == *shape {
                    (m, false)
                } else {
                    (self.reshape(name, &m, shape), false)
                }
            }
            None => {
                if self.mode == WeightMode::Recording {
                    self.recorded.push((tensor.to_string(), shape.to_vec()));
                }
                (self.placeholder(name, tensor, shape), false)
            }
        };
        self.placed.insert(tensor.to_string(), v.clone());
        v
    }

    /// The input, its activation columns and a trainable tensor's placement, in dynamic mode.
    /// Failures (a tensor the input weights lack, a shape that disagrees with it, no input yet)
    /// are generator bugs, kept for `finish`.
    fn dynamic_read(&mut self, tensor: &str, shape: &[usize]) -> Option<(Var, usize, InputWeight)> {
        let WeightMode::Dynamic(weights) = &self.mode else {
            return None;
        };
        let problem = match (weights.get(tensor), &self.input) {
            (Some(t), Some((input, s))) if t.shape == shape => {
                return Some((input.clone(), *s, t.clone()));
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
        let Some((channels, s)) = self.recorded_input else {
            self.fail("the recorded kernel has no input".into());
            return Err(Box::new(self.error.take().expect("just failed")));
        };
        match InputWeights::new(channels, s, &self.recorded) {
            Err(problem) => self.fail(problem),
            Ok(weights) if self.error.is_none() => return Ok(weights),
            Ok(_) => {}
        }
        Err(Box::new(self.error.take().expect("failed")))
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
