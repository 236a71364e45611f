//! One op under inference: reading its parameters (values, tuples, compile-time constants) and
//! the dtype rules its inference function requires of them.

use super::error::{fail, need, shown, OpResult};
use super::literal::scalar_of;
use super::op_table::OpSpec;
use crate::ir::{Arg, DType, Literal, Op, Scalar, Type};
use std::collections::HashMap;

/// A parameter as written: a named value, a tuple of them, or a literal.
enum ParamRef<'a> {
    Var(&'a str),
    Tuple(&'a [String]),
    Literal(&'a Literal),
}

/// One op under inference, with the types and constants of the values before it.
pub(super) struct OpContext<'a> {
    pub(super) op: &'a Op,
    pub(super) spec: &'a OpSpec,
    pub(super) types: &'a HashMap<String, Type>,
    pub(super) consts: &'a HashMap<String, Literal>,
}

impl<'a> OpContext<'a> {
    fn param(&self, name: &str) -> Option<ParamRef<'a>> {
        if self.spec.in_attrs {
            return self.op.attr(name).map(ParamRef::Literal);
        }
        self.op.arg(name).map(|arg| match arg {
            Arg::Var(v) => ParamRef::Var(v),
            Arg::Tuple(vs) => ParamRef::Tuple(vs),
            Arg::Literal(l) => ParamRef::Literal(l),
        })
    }

    /// The type of an optional single-value parameter.
    pub(super) fn opt_value(&self, name: &str) -> OpResult<Option<Type>> {
        match self.param(name) {
            None => Ok(None),
            Some(ParamRef::Var(v)) => match self.types.get(v) {
                Some(ty) => Ok(Some(ty.clone())),
                None => fail(name, format!("`{v}` is not defined before this op")),
            },
            Some(ParamRef::Literal(l)) => Ok(Some(l.ty())),
            Some(ParamRef::Tuple(_)) => fail(name, "expects a single value, not a tuple"),
        }
    }

    /// The type of a required single-value parameter.
    pub(super) fn value(&self, name: &str) -> OpResult<Type> {
        need(name, self.opt_value(name)?)
    }

    /// The names and types of a tuple parameter such as concat's `values`.
    pub(super) fn tuple(&self, name: &str) -> OpResult<Vec<(&'a str, Type)>> {
        let Some(ParamRef::Tuple(names)) = self.param(name) else {
            return fail(name, "expects a tuple of values, e.g. (a, b)");
        };
        names
            .iter()
            .map(|n| match self.types.get(n) {
                Some(ty) => Ok((n.as_str(), ty.clone())),
                None => fail(name, format!("`{n}` is not defined before this op")),
            })
            .collect()
    }

    /// The literal of a parameter that must be known at compile time.
    pub(super) fn constant(&self, name: &str) -> OpResult<Option<&'a Literal>> {
        match self.param(name) {
            None => Ok(None),
            Some(ParamRef::Literal(l)) => Ok(Some(l)),
            Some(ParamRef::Var(v)) => match self.consts.get(v) {
                Some(l) => Ok(Some(l)),
                None => fail(
                    name,
                    format!(
                        "must be a compile-time constant (a const value or an inline literal), \
                         but `{v}` is not a const"
                    ),
                ),
            },
            Some(ParamRef::Tuple(_)) => fail(name, "expects a constant, not a tuple"),
        }
    }

    /// A constant scalar of the given dtype.
    fn const_scalar(&self, name: &str, dtype: DType) -> OpResult<Option<&'a Scalar>> {
        let Some(lit) = self.constant(name)? else {
            return Ok(None);
        };
        match (lit.ty(), scalar_of(lit)) {
            (Type::Scalar(d), Some(s)) if d == dtype => Ok(Some(s)),
            (ty, _) => fail(name, format!("must be a scalar of type {dtype}, got {ty}")),
        }
    }

    pub(super) fn const_int(&self, name: &str) -> OpResult<Option<i64>> {
        match self.const_scalar(name, DType::Int32)? {
            None => Ok(None),
            Some(s) => need(name, s.as_i64()).map(Some),
        }
    }

    pub(super) fn const_bool(&self, name: &str) -> OpResult<Option<bool>> {
        match self.const_scalar(name, DType::Bool)? {
            None => Ok(None),
            Some(Scalar::Bool(b)) => Ok(Some(*b)),
            Some(other) => fail(name, format!("{other:?} is not a bool")),
        }
    }

    pub(super) fn const_str(&self, name: &str) -> OpResult<Option<&'a str>> {
        match self.const_scalar(name, DType::String)? {
            None => Ok(None),
            Some(Scalar::Str(s)) => Ok(Some(s)),
            Some(other) => fail(name, format!("{other:?} is not a string")),
        }
    }

    /// The elements of a constant rank-1 tensor of the given dtype; with `len`, it must have
    /// exactly that many elements (the string says why, e.g. "one per axis of x: ...").
    fn const_vector(
        &self,
        name: &str,
        dtype: DType,
        len: Option<(usize, &str)>,
    ) -> OpResult<Option<&'a [Scalar]>> {
        let Some(lit) = self.constant(name)? else {
            return Ok(None);
        };
        let values = match lit {
            Literal::Tensor {
                dtype: d,
                shape,
                values,
            } if *d == dtype && shape.len() == 1 => values,
            _ => {
                return fail(
                    name,
                    format!("must be a rank-1 {dtype} tensor, got {}", lit.ty()),
                )
            }
        };
        if let Some((n, why)) = len {
            if values.len() != n {
                return fail(
                    name,
                    format!(
                        "must have {n} elements ({why}), got {} ({})",
                        values.len(),
                        shown(name, &lit.ty())
                    ),
                );
            }
        }
        Ok(Some(values))
    }

    pub(super) fn const_ints(
        &self,
        name: &str,
        len: Option<(usize, &str)>,
    ) -> OpResult<Option<Vec<i64>>> {
        match self.const_vector(name, DType::Int32, len)? {
            None => Ok(None),
            Some(values) => need(name, values.iter().map(Scalar::as_i64).collect()).map(Some),
        }
    }

    pub(super) fn const_bools(
        &self,
        name: &str,
        len: Option<(usize, &str)>,
    ) -> OpResult<Option<Vec<bool>>> {
        let Some(values) = self.const_vector(name, DType::Bool, len)? else {
            return Ok(None);
        };
        let bools = values.iter().map(|v| match v {
            Scalar::Bool(b) => Some(*b),
            _ => None,
        });
        need(name, bools.collect()).map(Some)
    }
}

pub(super) const FLOATS: &[DType] = &[DType::Fp16, DType::Fp32];
pub(super) const NUMERIC: &[DType] = &[
    DType::Fp16,
    DType::Fp32,
    DType::Int32,
    DType::Int16,
    DType::Int8,
    DType::UInt8,
    DType::UInt16,
    DType::UInt32,
    DType::UInt64,
];
pub(super) const QUANTIZED: &[DType] = &[DType::Int8, DType::UInt8];

/// `ty`, the type of `arg`, has one of the `allowed` dtypes.
pub(super) fn require_dtype(arg: &str, ty: &Type, allowed: &[DType]) -> OpResult<()> {
    if allowed.contains(&ty.dtype()) {
        return Ok(());
    }
    let names: Vec<&str> = allowed.iter().map(|d| d.mil_name()).collect();
    fail(
        arg,
        format!("must be {}, got {}", names.join(" or "), shown(arg, ty)),
    )
}

/// `ty` (of `arg`) has the same dtype as `other` (of `other_arg`).
pub(super) fn require_same_dtype(
    arg: &str,
    ty: &Type,
    other_arg: &str,
    other: &Type,
) -> OpResult<()> {
    if ty.dtype() == other.dtype() {
        return Ok(());
    }
    fail(
        arg,
        format!(
            "dtype {} differs from {}'s {} ({}, {})",
            ty.dtype(),
            other_arg,
            other.dtype(),
            shown(arg, ty),
            shown(other_arg, other)
        ),
    )
}

/// `ty` (of `arg`) is a scalar of the given dtype.
pub(super) fn require_scalar(arg: &str, ty: &Type, dtype: DType) -> OpResult<()> {
    if ty.rank() == 0 && ty.dtype() == dtype {
        return Ok(());
    }
    fail(arg, format!("must be a scalar of type {dtype}, got {ty}"))
}
