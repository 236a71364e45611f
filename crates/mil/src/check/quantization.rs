//! Quantisation ops: `quantize`, `dequantize` and `constexpr_affine_dequantize`, with their
//! per-tensor or per-channel `scale` and `zero_point`.

use super::context::{require_dtype, require_same_dtype, OpContext, FLOATS, QUANTIZED};
use super::error::{fail, need, shown, OpResult};
use super::shape::axis_in;
use crate::ir::{DType, Type};

/// `scale` and `zero_point` of a quantisation op: each a scalar (per tensor) or a vector with one
/// entry per slice of `data` along `axis` (per channel, which needs `axis`).
fn check_quantization_params(
    ctx: &OpContext,
    data_arg: &str,
    data: &Type,
    axis: Option<usize>,
) -> OpResult<()> {
    for name in ["scale", "zero_point"] {
        let Some(ty) = ctx.opt_value(name)? else {
            continue;
        };
        match (ty.shape(), axis) {
            ([], _) => {}
            ([n], Some(a)) if data.shape().get(a) == Some(n) => {}
            ([_], Some(a)) => {
                return fail(
                    name,
                    format!(
                        "one {name} per slice along axis {a} is needed ({}, {})",
                        shown(name, &ty),
                        shown(data_arg, data)
                    ),
                )
            }
            ([_], None) => return fail(name, format!("a per-channel {name} needs `axis`")),
            _ => {
                return fail(
                    name,
                    format!("must be a scalar or a vector, got {}", shown(name, &ty)),
                )
            }
        }
    }
    Ok(())
}

/// The optional `axis` of a quantisation op, normalised against its data.
fn quantization_axis(ctx: &OpContext, data_arg: &str, data: &Type) -> OpResult<Option<usize>> {
    ctx.const_int("axis")?
        .map(|a| axis_in("axis", a, data_arg, data))
        .transpose()
}

/// `quantize(input, scale, zero_point, axis, output_dtype)`: a float tensor to int8 or uint8 of
/// the same shape; scale has the input's dtype, zero_point the output's.
pub(super) fn infer_quantize(ctx: &OpContext) -> OpResult<Type> {
    let input = ctx.value("input")?;
    require_dtype("input", &input, FLOATS)?;
    require_same_dtype("scale", &ctx.value("scale")?, "input", &input)?;
    let out = match need("output_dtype", ctx.const_str("output_dtype")?)? {
        "int8" => DType::Int8,
        "uint8" => DType::UInt8,
        other => {
            return fail(
                "output_dtype",
                format!("cannot quantize to \"{other}\" (accepted: int8, uint8)"),
            )
        }
    };
    if let Some(zp) = ctx.opt_value("zero_point")? {
        require_dtype("zero_point", &zp, &[out])?;
    }
    let axis = quantization_axis(ctx, "input", &input)?;
    check_quantization_params(ctx, "input", &input, axis)?;
    Ok(Type::tensor(out, input.shape()))
}

/// `dequantize(input, scale, zero_point, axis)`: int8/uint8 to the dtype of `scale`.
pub(super) fn infer_dequantize(ctx: &OpContext) -> OpResult<Type> {
    let input = ctx.value("input")?;
    require_dtype("input", &input, QUANTIZED)?;
    let scale = ctx.value("scale")?;
    require_dtype("scale", &scale, FLOATS)?;
    if let Some(zp) = ctx.opt_value("zero_point")? {
        require_same_dtype("zero_point", &zp, "input", &input)?;
    }
    let axis = quantization_axis(ctx, "input", &input)?;
    check_quantization_params(ctx, "input", &input, axis)?;
    Ok(Type::tensor(scale.dtype(), input.shape()))
}

/// `constexpr_affine_dequantize()[quantized_data, scale, zero_point, axis]`: weights dequantized
/// at compile time; the shape of `quantized_data`, the dtype of `scale`.
pub(super) fn infer_constexpr_affine_dequantize(ctx: &OpContext) -> OpResult<Type> {
    let data = ctx.value("quantized_data")?;
    require_dtype("quantized_data", &data, QUANTIZED)?;
    let scale = ctx.value("scale")?;
    require_dtype("scale", &scale, FLOATS)?;
    require_same_dtype(
        "zero_point",
        &ctx.value("zero_point")?,
        "quantized_data",
        &data,
    )?;
    let axis = need("axis", ctx.const_int("axis")?)?;
    let axis = axis_in("axis", axis, "quantized_data", &data)?;
    check_quantization_params(ctx, "quantized_data", &data, Some(axis))?;
    Ok(Type::tensor(scale.dtype(), data.shape()))
}
