//! `conv`: operand shapes, channels and groups, bias, and the output size of each spatial axis.

use super::context::{require_dtype, require_same_dtype, OpContext, FLOATS};
use super::error::{fail, rank_mismatch, shown, OpError, OpResult};
use super::shape::to_usize;
use crate::ir::Type;

/// `conv(x [N, Cin, spatial...], weight [Cout, Cin/groups, kernel...])` →
/// `[N, Cout, out...]`, with each output size given by pad_type, strides, pad and dilations.
pub(super) fn infer_conv(ctx: &OpContext) -> OpResult<Type> {
    let x = ctx.value("x")?;
    let w = ctx.value("weight")?;
    require_dtype("x", &x, FLOATS)?;
    require_same_dtype("weight", &w, "x", &x)?;
    let shapes = conv_shapes(&x, &w)?;
    check_conv_channels(ctx, &shapes, &x, &w)?;
    check_conv_bias(ctx, shapes.cout, &x, &w)?;
    let geometry = conv_geometry(ctx, &x)?;
    let mut shape = vec![shapes.n, shapes.cout];
    shape.extend(conv_spatial_out(&shapes, &geometry, &x, &w)?);
    Ok(Type::tensor(x.dtype(), shape))
}

/// conv's operand shapes taken apart: x `[n, cin, spatial...]`, weight
/// `[cout, cin_per_group, kernel...]`.
struct ConvShapes<'s> {
    n: usize,
    cin: usize,
    spatial: &'s [usize],
    cout: usize,
    cin_per_group: usize,
    kernel: &'s [usize],
}

/// x has 1 to 3 spatial axes, and the weight a kernel size for each.
fn conv_shapes<'s>(x: &'s Type, w: &'s Type) -> OpResult<ConvShapes<'s>> {
    let [n, cin, spatial @ ..] = x.shape() else {
        return fail(
            "x",
            format!("conv needs x of rank 3 to 5, got {}", shown("x", x)),
        );
    };
    if !(1..=3).contains(&spatial.len()) {
        return fail(
            "x",
            format!("conv needs x of rank 3 to 5, got {}", shown("x", x)),
        );
    }
    match w.shape() {
        [cout, cin_per_group, kernel @ ..] if kernel.len() == spatial.len() => Ok(ConvShapes {
            n: *n,
            cin: *cin,
            spatial,
            cout: *cout,
            cin_per_group: *cin_per_group,
            kernel,
        }),
        _ => fail("weight", rank_mismatch("weight", w, "x", x)),
    }
}

/// Input channels are `cin_per_group × groups`, and groups divide the output channels.
fn check_conv_channels(ctx: &OpContext, s: &ConvShapes, x: &Type, w: &Type) -> OpResult<()> {
    let groups = ctx.const_int("groups")?.unwrap_or(1);
    let Some(groups) = to_usize(groups).filter(|&g| g >= 1) else {
        return fail("groups", format!("groups must be at least 1, got {groups}"));
    };
    let (cin, cin_per_group, cout) = (s.cin, s.cin_per_group, s.cout);
    if cin_per_group.checked_mul(groups) != Some(cin) {
        return fail(
            "weight",
            format!(
                "input channels {cin} ({}) do not match weight's {cin_per_group} × groups {groups} ({})",
                shown("x", x),
                shown("weight", w)
            ),
        );
    }
    if cout % groups != 0 {
        return fail(
            "groups",
            format!(
                "output channels {cout} ({}) are not divisible by groups {groups}",
                shown("weight", w)
            ),
        );
    }
    Ok(())
}

/// The optional bias has one entry per output channel.
fn check_conv_bias(ctx: &OpContext, cout: usize, x: &Type, w: &Type) -> OpResult<()> {
    let Some(bias) = ctx.opt_value("bias")? else {
        return Ok(());
    };
    require_same_dtype("bias", &bias, "x", x)?;
    if bias.shape() != [cout] {
        return fail(
            "bias",
            format!(
                "bias must be [{cout}], one per output channel ({}, {})",
                shown("bias", &bias),
                shown("weight", w)
            ),
        );
    }
    Ok(())
}

/// Strides, dilations and padding of each spatial axis.
struct ConvGeometry {
    strides: Vec<usize>,
    dilations: Vec<usize>,
    /// (before, after) per spatial axis; zero unless pad_type is "custom".
    pads: Vec<(usize, usize)>,
    kind: PadKind,
}

fn conv_geometry(ctx: &OpContext, x: &Type) -> OpResult<ConvGeometry> {
    let spatial = x.rank().saturating_sub(2);
    let per_axis = format!("one per spatial axis of {}", shown("x", x));
    let kind = pad_kind(ctx)?;
    Ok(ConvGeometry {
        strides: conv_factors(ctx, "strides", spatial, &per_axis)?,
        dilations: conv_factors(ctx, "dilations", spatial, &per_axis)?,
        pads: conv_pads(ctx, spatial, x, &kind)?,
        kind,
    })
}

/// The output size of each spatial axis.
fn conv_spatial_out(s: &ConvShapes, g: &ConvGeometry, x: &Type, w: &Type) -> OpResult<Vec<usize>> {
    let axes = s
        .spatial
        .iter()
        .zip(s.kernel)
        .zip(g.strides.iter().zip(&g.dilations))
        .zip(&g.pads);
    let mut out = Vec::with_capacity(s.spatial.len());
    for (axis, (((&size, &k), (&stride, &dilation)), &(lo, hi))) in axes.enumerate() {
        let n = match g.kind {
            PadKind::Same => Some(size.div_ceil(stride)),
            PadKind::Valid | PadKind::Custom => conv_out_size(size, lo, hi, k, stride, dilation),
        };
        let Some(n) = n else {
            return fail(
                "weight",
                format!(
                    "along spatial axis {axis}, kernel {k} with dilation {dilation} is larger than \
                     the padded input {size} + {lo} + {hi} ({}, {})",
                    shown("x", x),
                    shown("weight", w)
                ),
            );
        };
        out.push(n);
    }
    Ok(out)
}

/// conv's `strides` or `dilations`: one positive factor per spatial axis, default all 1.
fn conv_factors(ctx: &OpContext, name: &str, spatial: usize, why: &str) -> OpResult<Vec<usize>> {
    let Some(values) = ctx.const_ints(name, Some((spatial, why)))? else {
        return Ok(vec![1; spatial]);
    };
    values
        .iter()
        .map(|&v| {
            to_usize(v)
                .filter(|&v| v >= 1)
                .ok_or_else(|| OpError::at(name, format!("{name} must be at least 1, got {v}")))
        })
        .collect()
}

/// How conv pads: not at all ("valid", the default), enough to keep `ceil(size / stride)`
/// ("same", "same_lower"), or by the amounts in `pad` ("custom").
enum PadKind {
    Valid,
    Same,
    Custom,
}

fn pad_kind(ctx: &OpContext) -> OpResult<PadKind> {
    match ctx.const_str("pad_type")?.unwrap_or("valid") {
        "valid" => Ok(PadKind::Valid),
        "same" | "same_lower" => Ok(PadKind::Same),
        "custom" => Ok(PadKind::Custom),
        other => fail(
            "pad_type",
            format!("unknown pad_type \"{other}\" (accepted: valid, same, same_lower, custom)"),
        ),
    }
}

/// The (before, after) padding of each spatial axis. `pad` is validated whenever it is given,
/// but only "custom" uses it, as in MIL.
fn conv_pads(
    ctx: &OpContext,
    spatial: usize,
    x: &Type,
    kind: &PadKind,
) -> OpResult<Vec<(usize, usize)>> {
    let why = format!("before and after each spatial axis of {}", shown("x", x));
    let pad = ctx.const_ints("pad", Some((2 * spatial, why.as_str())))?;
    let pad = match pad {
        Some(values) => values
            .iter()
            .map(|&v| {
                to_usize(v).ok_or_else(|| OpError::at("pad", format!("padding {v} is negative")))
            })
            .collect::<OpResult<Vec<usize>>>()?,
        None => vec![0; 2 * spatial],
    };
    let custom = matches!(kind, PadKind::Custom);
    Ok(pad
        .chunks(2)
        .map(|c| match c {
            [lo, hi] if custom => (*lo, *hi),
            _ => (0, 0),
        })
        .collect())
}

/// `floor((size + lo + hi - dilation·(k-1) - 1) / stride) + 1`, or `None` if the dilated kernel
/// does not fit in the padded input (or the arithmetic overflows).
fn conv_out_size(
    size: usize,
    lo: usize,
    hi: usize,
    k: usize,
    stride: usize,
    dilation: usize,
) -> Option<usize> {
    let padded = size.checked_add(lo)?.checked_add(hi)?;
    let extent = dilation.checked_mul(k.checked_sub(1)?)?.checked_add(1)?;
    Some(padded.checked_sub(extent)? / stride + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conv_output_size_matches_the_formula() {
        // floor((32 + 1 + 1 - 1·(3-1) - 1) / 2) + 1 = 16
        assert_eq!(conv_out_size(32, 1, 1, 3, 2, 1), Some(16));
        // dilation 2 makes a 3-tap kernel span 5: floor((10 - 5) / 1) + 1 = 6
        assert_eq!(conv_out_size(10, 0, 0, 3, 1, 2), Some(6));
        assert_eq!(conv_out_size(2, 0, 0, 3, 1, 1), None);
        assert_eq!(conv_out_size(2, 0, 0, 0, 1, 1), None);
        assert_eq!(conv_out_size(usize::MAX, 1, 0, 1, 1, 1), None);
    }
}
