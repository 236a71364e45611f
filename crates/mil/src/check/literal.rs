//! Literals: whether one is well formed for its own type, and the `const` op that defines one.

use super::context::OpContext;
use super::error::{need, OpResult};
use super::shape::element_count;
use crate::ir::{DType, Literal, Scalar, Type};

/// Why a literal is malformed: wrong element count for its shape, elements of the wrong kind or
/// out of their dtype's range, or a blob whose size overflows.
pub(super) fn literal_problem(lit: &Literal) -> Option<String> {
    match lit {
        Literal::Scalar { dtype, value } => scalar_problem(*dtype, value),
        Literal::Tensor {
            dtype,
            shape,
            values,
        } => {
            let ty = lit.ty();
            match element_count(shape) {
                Some(n) if n == values.len() => {}
                _ => {
                    return Some(format!(
                        "literal {ty} holds {} values, not one per element",
                        values.len()
                    ))
                }
            }
            values
                .iter()
                .find_map(|v| scalar_problem(*dtype, v))
                .map(|p| format!("in literal {ty}: {p}"))
        }
        Literal::Blob { dtype, shape, .. } => {
            let bytes = dtype
                .size_bytes()
                .and_then(|size| element_count(shape)?.checked_mul(size));
            match (dtype, bytes) {
                (DType::String, _) => Some("a weight blob cannot hold strings".to_string()),
                (_, None) => Some(format!("blob {} is too large", lit.ty())),
                _ => None,
            }
        }
    }
}

/// Why one literal element does not belong to `dtype`, if it does not.
fn scalar_problem(dtype: DType, value: &Scalar) -> Option<String> {
    let fits = match (dtype, value) {
        (DType::Fp16 | DType::Fp32, Scalar::Float(_) | Scalar::Int(_)) => true,
        (DType::Int32, Scalar::Int(i)) => i32::try_from(*i).is_ok(),
        (DType::Int16, Scalar::Int(i)) => i16::try_from(*i).is_ok(),
        (DType::Int8, Scalar::Int(i)) => i8::try_from(*i).is_ok(),
        (DType::UInt8, Scalar::Int(i)) => u8::try_from(*i).is_ok(),
        (DType::UInt16, Scalar::Int(i)) => u16::try_from(*i).is_ok(),
        (DType::UInt32, Scalar::Int(i)) => u32::try_from(*i).is_ok(),
        // uint64 values are stored as the i64 with the same bits.
        (DType::UInt64, Scalar::Int(_)) => true,
        (DType::Bool, Scalar::Bool(_)) => true,
        (DType::String, Scalar::Str(_)) => true,
        _ => false,
    };
    (!fits).then(|| format!("{value:?} is not a valid {dtype} value"))
}

/// The single element of a scalar literal (or of a rank-0 tensor literal).
pub(super) fn scalar_of(lit: &Literal) -> Option<&Scalar> {
    match lit {
        Literal::Scalar { value, .. } => Some(value),
        Literal::Tensor { shape, values, .. } if shape.is_empty() && values.len() == 1 => {
            values.first()
        }
        _ => None,
    }
}

/// `const`: the type of its literal.
pub(super) fn infer_const(ctx: &OpContext) -> OpResult<Type> {
    Ok(need("val", ctx.constant("val")?)?.ty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_are_checked_against_their_type() {
        assert_eq!(literal_problem(&Literal::int32_tensor(&[1, 2])), None);
        let short = Literal::Tensor {
            dtype: DType::Int32,
            shape: vec![3],
            values: vec![Scalar::Int(1)],
        };
        assert!(literal_problem(&short).unwrap().contains("holds 1 values"));
        let big = Literal::Scalar {
            dtype: DType::Int8,
            value: Scalar::Int(300),
        };
        assert!(literal_problem(&big).unwrap().contains("int8"));
        let huge = Literal::Blob {
            dtype: DType::Fp16,
            shape: vec![usize::MAX, 2],
            path: "w.bin".into(),
            offset: 64,
        };
        assert!(literal_problem(&huge).unwrap().contains("too large"));
    }
}
