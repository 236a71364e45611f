//! A thin layer over the MIL builder for kernel generators: every op's output type is inferred
//! by the checker, constants and weight files are created on demand, and one float dtype is used
//! for every tensor: fp16 for the ANE (and the CPU's fp16 mode), fp32 where exact gradients are
//! wanted (the CPU's fp32 mode).

use anetrain_mil::blob::{BlobFile, WeightFiles};
use anetrain_mil::check::{infer_op_type, CheckError};
use anetrain_mil::{
    Arg, DType, Dialect, FloatLit, FunctionBuilder, Literal, Op, Program, Style, Type, Var,
};
use std::collections::HashMap;

/// A generated kernel: the program and the weight files its BLOBFILE constants name.
#[derive(Clone, Debug)]
pub struct KernelProgram {
    pub name: String,
    pub program: Program,
    pub weights: WeightFiles,
}

pub struct Graph {
    name: String,
    dtype: DType,
    b: FunctionBuilder,
    types: HashMap<String, Type>,
    consts: HashMap<String, Literal>,
    weights: WeightFiles,
    /// The first inference failure: a generator bug, reported by `finish`.
    error: Option<CheckError>,
    /// pad_type, strides, pad, dilations, groups: shared by every conv of the kernel.
    conv_consts: Option<[Var; 5]>,
}

impl Graph {
    pub fn new(name: &str, dtype: DType) -> Graph {
        Graph {
            name: name.to_string(),
            dtype,
            b: FunctionBuilder::new("main", "ios18"),
            types: HashMap::new(),
            consts: HashMap::new(),
            weights: WeightFiles::new(),
            error: None,
            conv_consts: None,
        }
    }

    /// The kernel's single input, `[1, C, 1, S]`.
    pub fn input(&mut self, name: &str, shape: &[usize]) -> Var {
        let ty = Type::tensor(self.dtype, shape.to_vec());
        let v = self.b.input(name, ty.clone());
        self.types.insert(v.name().to_string(), ty);
        v
    }

    pub fn constant(&mut self, name: &str, lit: Literal) -> Var {
        let v = self.b.constant(name, lit.clone());
        self.types.insert(v.name().to_string(), lit.ty());
        self.consts.insert(v.name().to_string(), lit);
        v
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
    /// that is exact enough, else with all the digits the value needs.
    pub fn scalar(&mut self, name: &str, value: f64) -> Var {
        let six = FloatLit::fixed6(value);
        let lit = if (six.value - value).abs() <= 1e-7 * value.abs() {
            six
        } else {
            FloatLit::from_text(&format!("{value:e}")).unwrap_or(six)
        };
        self.constant(name, Literal::float(self.dtype, lit))
    }

    /// A tensor baked from a weight file `@model_path/weights/<file>.bin` (one file per
    /// tensor, offset 64: the layout every chip accepts), stored in the graph's dtype. `values`
    /// are row-major in `shape`.
    pub fn weight(&mut self, name: &str, file: &str, shape: &[usize], values: &[f32]) -> Var {
        let path = format!("@model_path/weights/{file}.bin");
        let blob = match self.dtype {
            DType::Fp32 => BlobFile::fp32(values),
            _ => BlobFile::fp16(values),
        };
        self.weights.insert_blob(path.clone(), &blob);
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

    /// Adds `kind(args)`, inferring its type.
    pub fn op(&mut self, kind: &str, name: &str, args: Vec<(&str, Arg)>) -> Var {
        let probe = Op {
            kind: kind.to_string(),
            output: name.to_string(),
            ty: Type::Scalar(DType::Fp16),
            args: args
                .iter()
                .map(|(k, a)| (k.to_string(), a.clone()))
                .collect(),
            attrs: vec![("name".into(), Literal::string(name))],
        };
        let ty = match infer_op_type(&probe, &self.types, &self.consts) {
            Ok(ty) => ty,
            Err(e) => {
                self.error.get_or_insert(e);
                Type::Scalar(self.dtype)
            }
        };
        let v = self.b.op(kind, name, ty.clone(), args);
        self.types.insert(v.name().to_string(), ty);
        v
    }

    pub fn shape(&self, v: &Var) -> Vec<usize> {
        self.types
            .get(v.name())
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

    pub fn finish(self) -> Result<KernelProgram, Box<CheckError>> {
        if let Some(e) = self.error {
            return Err(Box::new(e));
        }
        Ok(KernelProgram {
            name: self.name,
            program: Program::single(Dialect::Ios18, Style::Compact, self.b.finish()),
            weights: self.weights,
        })
    }
}
