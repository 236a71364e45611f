//! Type and shape checker.
//!
//! Infers the type of every value of a function from its inputs and each op's arguments, with
//! MIL (coremltools) semantics, and compares it with the type each op declares. The ANE compiler
//! answers a bad program with little more than "compile failed", so every error here names the
//! function, the op (its `name`, kind and the value it defines), the argument at fault and, when
//! shapes disagree, both shapes.
//!
//! Decisions beyond MIL's own rules:
//!
//! * Structural parameters (axes, perm, shape, begin, end, size, stride(s), masks, groups, pad,
//!   dilations, pad_type, axis, keep_dims, transpose_x/y, interleave, dtype, output_dtype, mode)
//!   must be compile-time constants: a `const` value or an inline literal. Data parameters
//!   (scale, zero_point, bias, gamma, beta, epsilon, attn_mask) may be any value of the right type.
//! * `reshape` rejects `0` in `shape` (no "copy this dimension" semantics) and accepts one `-1`.
//! * Slices that select nothing are rejected: the ANE has no empty tensors.
//! * Ops accept no attribute besides `name`, except `const` and `constexpr_affine_dequantize`, which
//!   take their parameters as attributes and no arguments.
//! * Inline literals are checked against their own type (element count, element kinds, integer
//!   ranges), so a malformed `const` is reported where it is written.
//! * A function must return at least one value and no value twice; function names in a program
//!   must be unique.
//! * Unary maths ops (all but `identity`) take fp16/fp32 only.

// `CheckError` is a plain struct of the fields callers match on (the agreed API); errors end a
// check, so returning it unboxed costs nothing that matters.
#![allow(clippy::result_large_err)]

mod attention;
mod context;
mod conv;
mod error;
mod layout;
mod literal;
mod math;
mod op_table;
mod quantization;
mod shape;

use crate::ir::{Function, Literal, Op, Param, Program, Type};
use error::{OpError, OpResult};
use op_table::infer;
use std::collections::{HashMap, HashSet};

/// What a function takes and returns, with types.
#[derive(Clone, Debug, PartialEq)]
pub struct Signature {
    pub inputs: Vec<Param>,
    pub outputs: Vec<Param>,
}

/// A function that passed the checker.
#[derive(Clone, Debug, PartialEq)]
pub struct CheckedFunction {
    pub signature: Signature,
    /// The type of every value: function inputs and op outputs.
    pub types: HashMap<String, Type>,
    /// The literal of every value defined by a `const` op.
    pub consts: HashMap<String, Literal>,
}

/// Why a function or program was rejected, and where.
///
/// `op_*` fields describe the op at fault (`op_index` is its position in `Function::ops`).
/// `output` is the value concerned: the value the op defines, or for errors about a function's
/// inputs and outputs, that input or output. `arg` is the argument (or attribute) at fault.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{}", self.render())]
pub struct CheckError {
    pub function: String,
    pub op_index: Option<usize>,
    pub op_name: Option<String>,
    pub op_kind: Option<String>,
    pub output: Option<String>,
    pub arg: Option<String>,
    pub message: String,
}

impl CheckError {
    /// An error about the function as a whole, or about one of its inputs or outputs.
    fn in_function(function: &str, value: Option<&str>, message: impl Into<String>) -> CheckError {
        CheckError {
            function: function.to_string(),
            op_index: None,
            op_name: None,
            op_kind: None,
            output: value.map(str::to_string),
            arg: None,
            message: message.into(),
        }
    }

    /// An error about one op.
    fn at_op(function: &str, op_index: Option<usize>, op: &Op, error: OpError) -> CheckError {
        CheckError {
            function: function.to_string(),
            op_index,
            op_name: op.name().map(str::to_string),
            op_kind: Some(op.kind.clone()),
            output: Some(op.output.clone()),
            arg: error.arg,
            message: error.message,
        }
    }

    /// `function main, op "conv" (conv → y16), argument weight: <message>`, leaving out what is
    /// unknown (an op without a name is shown by its index).
    fn render(&self) -> String {
        let mut parts = Vec::new();
        if !self.function.is_empty() {
            parts.push(format!("function {}", self.function));
        }
        if let Some(kind) = &self.op_kind {
            let who = match (&self.op_name, self.op_index) {
                (Some(name), _) => format!("op \"{name}\""),
                (None, Some(index)) => format!("op #{index}"),
                (None, None) => "op".to_string(),
            };
            let output = self.output.as_deref().unwrap_or("?");
            parts.push(format!("{who} ({kind} → {output})"));
        } else if let Some(value) = &self.output {
            parts.push(format!("value {value}"));
        }
        if let Some(arg) = &self.arg {
            parts.push(format!("argument {arg}"));
        }
        if parts.is_empty() {
            self.message.clone()
        } else {
            format!("{}: {}", parts.join(", "), self.message)
        }
    }
}

/// Checks every function of a program and returns the checked `main` (see [`Program::main`]).
pub fn check_program(p: &Program) -> Result<CheckedFunction, CheckError> {
    let mut names = HashSet::new();
    for f in &p.functions {
        if !names.insert(f.name.as_str()) {
            return Err(CheckError::in_function(
                &f.name,
                None,
                "a function of this name is already defined",
            ));
        }
    }
    let mut checked = Vec::with_capacity(p.functions.len());
    for f in &p.functions {
        checked.push((f.name.as_str(), check_function(f)?));
    }
    let main = p
        .main()
        .ok_or_else(|| CheckError::in_function("", None, "the program has no functions"))?;
    checked
        .into_iter()
        .find(|(name, _)| *name == main.name)
        .map(|(_, c)| c)
        .ok_or_else(|| CheckError::in_function(&main.name, None, "main function not checked"))
}

/// Checks names, references, argument lists, types and shapes of one function.
pub fn check_function(f: &Function) -> Result<CheckedFunction, CheckError> {
    let mut types = check_inputs(f)?;
    let mut consts = HashMap::new();
    let mut op_names = HashSet::new();
    for (index, op) in f.ops.iter().enumerate() {
        let ty = check_op(op, &mut op_names, &types, &consts)
            .map_err(|error| CheckError::at_op(&f.name, Some(index), op, error))?;
        if op.kind == "const" {
            if let Some(val) = op.attr("val") {
                consts.insert(op.output.clone(), val.clone());
            }
        }
        types.insert(op.output.clone(), ty);
    }
    let outputs = check_outputs(f, &types)?;
    Ok(CheckedFunction {
        signature: Signature {
            inputs: f.inputs.clone(),
            outputs,
        },
        types,
        consts,
    })
}

/// The inferred type of one op's output, from the types (and const literals) of earlier values.
/// It checks the op's arguments but does not compare the result with `op.ty`. The error has an
/// empty `function` and no `op_index`, since the op is seen on its own.
pub fn infer_op_type(
    op: &Op,
    types: &HashMap<String, Type>,
    consts: &HashMap<String, Literal>,
) -> Result<Type, CheckError> {
    infer(op, types, consts).map_err(|error| CheckError::at_op("", None, op, error))
}

/// Function inputs: unique names; returns their types.
fn check_inputs(f: &Function) -> Result<HashMap<String, Type>, CheckError> {
    let mut types = HashMap::new();
    for input in &f.inputs {
        if let Some(why) = shape::unbuffered(&input.ty) {
            return Err(CheckError::in_function(
                &f.name,
                Some(&input.name),
                format!("input `{}`: {why}", input.name),
            ));
        }
        if types.insert(input.name.clone(), input.ty.clone()).is_some() {
            return Err(CheckError::in_function(
                &f.name,
                Some(&input.name),
                format!("input `{}` is declared twice", input.name),
            ));
        }
    }
    Ok(types)
}

/// One op in its function: a unique `name` attribute, a fresh output name, a valid argument
/// list, and a declared type equal to the inferred one.
fn check_op(
    op: &Op,
    op_names: &mut HashSet<String>,
    types: &HashMap<String, Type>,
    consts: &HashMap<String, Literal>,
) -> OpResult<Type> {
    let name = match op.attr("name") {
        None => return Err(OpError::whole_op("the op has no `name` attribute")),
        Some(lit) => lit
            .as_str()
            .ok_or_else(|| OpError::at("name", format!("must be a string, got {}", lit.ty())))?,
    };
    if !op_names.insert(name.to_string()) {
        return Err(OpError::at(
            "name",
            format!("op name \"{name}\" is already used by an earlier op"),
        ));
    }
    if types.contains_key(&op.output) {
        return Err(OpError::whole_op(format!(
            "value `{}` is already defined earlier in the function",
            op.output
        )));
    }
    if let Some(why) = shape::unbuffered(&op.ty) {
        return Err(OpError::whole_op(why));
    }
    let inferred = infer(op, types, consts)?;
    if inferred.dtype() != op.ty.dtype() || inferred.shape() != op.ty.shape() {
        return Err(OpError::whole_op(format!(
            "declared type {} does not match the inferred type {}",
            op.ty, inferred
        )));
    }
    Ok(inferred)
}

/// Function outputs: at least one, each defined, none twice.
fn check_outputs(f: &Function, types: &HashMap<String, Type>) -> Result<Vec<Param>, CheckError> {
    if f.outputs.is_empty() {
        return Err(CheckError::in_function(
            &f.name,
            None,
            "the function returns no values",
        ));
    }
    let mut seen = HashSet::new();
    let mut outputs = Vec::with_capacity(f.outputs.len());
    for name in &f.outputs {
        let Some(ty) = types.get(name) else {
            return Err(CheckError::in_function(
                &f.name,
                Some(name),
                format!("function output `{name}` is not defined by any input or op"),
            ));
        };
        if !seen.insert(name.as_str()) {
            return Err(CheckError::in_function(
                &f.name,
                Some(name),
                format!("`{name}` is returned twice"),
            ));
        }
        outputs.push(Param {
            name: name.clone(),
            ty: ty.clone(),
        });
    }
    Ok(outputs)
}
