//! The one MIL builder: it assembles functions statement by statement, keeps every value name
//! and every op name unique within the function (the ANE compiler's requirement, and section
//! 11.19 of the spec: two generators that both emit `bF` must not collide), and knows the type
//! of every value it defined, so that [`FunctionBuilder::typed_op`] can infer an op's type with
//! the checker's rules instead of the caller stating it.

use crate::check::{infer_op_type, CheckError};
use crate::ir::{Arg, Function, Literal, Op, Param, Type};
use std::collections::{HashMap, HashSet};

/// A value defined in the function being built.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Var(pub String);

impl Var {
    pub fn name(&self) -> &str {
        &self.0
    }
}

impl From<&Var> for Arg {
    fn from(v: &Var) -> Arg {
        Arg::Var(v.0.clone())
    }
}

impl From<Var> for Arg {
    fn from(v: Var) -> Arg {
        Arg::Var(v.0)
    }
}

impl From<Literal> for Arg {
    fn from(l: Literal) -> Arg {
        Arg::Literal(l)
    }
}

impl From<&[Var]> for Arg {
    fn from(vs: &[Var]) -> Arg {
        Arg::Tuple(vs.iter().map(|v| v.0.clone()).collect())
    }
}

pub struct FunctionBuilder {
    function: Function,
    vars: HashSet<String>,
    op_names: HashSet<String>,
    /// The type of every value defined so far, and the literal of every constant.
    types: HashMap<String, Type>,
    consts: HashMap<String, Literal>,
}

impl FunctionBuilder {
    /// Starts a function, e.g. `FunctionBuilder::new("main", "ios18")`.
    pub fn new(name: &str, opset: &str) -> FunctionBuilder {
        FunctionBuilder {
            function: Function {
                name: name.to_string(),
                opset: opset.to_string(),
                inputs: Vec::new(),
                ops: Vec::new(),
                outputs: Vec::new(),
            },
            vars: HashSet::new(),
            op_names: HashSet::new(),
            types: HashMap::new(),
            consts: HashMap::new(),
        }
    }

    /// The type of a value defined so far.
    pub fn type_of(&self, v: &Var) -> Option<&Type> {
        self.types.get(v.name())
    }

    /// The type `kind(args)` would have here, by the checker's rules.
    pub fn infer(
        &self,
        kind: &str,
        name: &str,
        args: &[(&str, Arg)],
    ) -> Result<Type, Box<CheckError>> {
        let probe = Op {
            kind: kind.to_string(),
            output: name.to_string(),
            ty: Type::Scalar(crate::DType::Fp16),
            args: args
                .iter()
                .map(|(k, a)| (k.to_string(), a.clone()))
                .collect(),
            attrs: vec![("name".into(), Literal::string(name))],
        };
        infer_op_type(&probe, &self.types, &self.consts).map_err(Box::new)
    }

    /// `name = kind(args)` with the type the checker infers; an op that does not type-check
    /// is refused and nothing is added.
    pub fn typed_op(
        &mut self,
        kind: &str,
        name: &str,
        args: Vec<(&str, Arg)>,
    ) -> Result<Var, Box<CheckError>> {
        let ty = self.infer(kind, name, &args)?;
        Ok(self.op(kind, name, ty, args))
    }

    /// `base` if it is still free, else `base_2`, `base_3`, ...
    fn fresh(taken: &HashSet<String>, base: &str) -> String {
        if !taken.contains(base) {
            return base.to_string();
        }
        (2..)
            .map(|i| format!("{base}_{i}"))
            .find(|n| !taken.contains(n))
            .expect("an unbounded range always yields a free name")
    }

    /// Declares a function input.
    pub fn input(&mut self, name: &str, ty: Type) -> Var {
        let name = Self::fresh(&self.vars, name);
        self.vars.insert(name.clone());
        self.types.insert(name.clone(), ty.clone());
        self.function.inputs.push(Param {
            name: name.clone(),
            ty,
        });
        Var(name)
    }

    /// `<type> <name> = const()[name=string("<name>"), val=<lit>];`
    pub fn constant(&mut self, name: &str, value: Literal) -> Var {
        let v = self.push(
            "const",
            name,
            name,
            value.ty(),
            Vec::new(),
            vec![("val".to_string(), value.clone())],
        );
        self.consts.insert(v.name().to_string(), value);
        v
    }

    /// An op whose op name equals its value name (the common case).
    pub fn op(&mut self, kind: &str, name: &str, ty: Type, args: Vec<(&str, Arg)>) -> Var {
        self.op_named(kind, name, name, ty, args)
    }

    /// An op whose value and op name differ, e.g. value `qf` from op `"cq"`.
    pub fn op_named(
        &mut self,
        kind: &str,
        var: &str,
        op_name: &str,
        ty: Type,
        args: Vec<(&str, Arg)>,
    ) -> Var {
        let args = args.into_iter().map(|(k, a)| (k.to_string(), a)).collect();
        self.push(kind, var, op_name, ty, args, Vec::new())
    }

    /// An op that takes its parameters as attributes with an empty argument list, such as
    /// `constexpr_affine_dequantize`. `attrs` must be given in the order they are to be
    /// written; the `name` attribute is inserted in alphabetical position.
    pub fn attr_op(
        &mut self,
        kind: &str,
        name: &str,
        ty: Type,
        attrs: Vec<(&str, Literal)>,
    ) -> Var {
        let attrs = attrs.into_iter().map(|(k, l)| (k.to_string(), l)).collect();
        self.push(kind, name, name, ty, Vec::new(), attrs)
    }

    fn push(
        &mut self,
        kind: &str,
        var: &str,
        op_name: &str,
        ty: Type,
        args: Vec<(String, Arg)>,
        extra_attrs: Vec<(String, Literal)>,
    ) -> Var {
        let var = Self::fresh(&self.vars, var);
        let op_name = Self::fresh(&self.op_names, op_name);
        self.vars.insert(var.clone());
        self.op_names.insert(op_name.clone());
        self.types.insert(var.clone(), ty.clone());
        let name_attr = ("name".to_string(), Literal::string(&op_name));
        let mut attrs = Vec::with_capacity(extra_attrs.len() + 1);
        let mut placed = kind == "const";
        if placed {
            attrs.push(name_attr.clone());
        }
        for (k, l) in extra_attrs {
            if !placed && k.as_str() > "name" {
                attrs.push(name_attr.clone());
                placed = true;
            }
            attrs.push((k, l));
        }
        if !placed {
            attrs.push(name_attr);
        }
        self.function.ops.push(Op {
            kind: kind.to_string(),
            output: var.clone(),
            ty,
            args,
            attrs,
        });
        Var(var)
    }

    /// Marks a value as a function output, in the order outputs are returned.
    pub fn output(&mut self, v: &Var) {
        self.function.outputs.push(v.0.clone());
    }

    pub fn finish(self) -> Function {
        self.function
    }
}
