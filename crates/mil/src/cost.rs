//! What a program costs to run: FLOPs of its matrix ops, and the bytes of its weights.
//! Reports, latency models and the peak benchmark count FLOPs the same way: 2 per multiply-add.

use crate::check::CheckedFunction;
use crate::ir::{Arg, Function, Literal, Op};

/// FLOPs of one evaluation: conv, matmul and attention products (2 per multiply-add); the
/// elementwise ops are not counted, as in the original's accounting.
pub fn flops(f: &Function, checked: &CheckedFunction) -> u64 {
    f.ops.iter().map(|op| op_flops(op, checked)).sum()
}

fn shape_of<'a>(op: &Op, key: &str, checked: &'a CheckedFunction) -> Option<&'a [usize]> {
    match op.arg(key)? {
        Arg::Var(v) => checked.types.get(v).map(|t| t.shape()),
        _ => None,
    }
}

fn op_flops(op: &Op, checked: &CheckedFunction) -> u64 {
    let out: u64 = checked
        .types
        .get(&op.output)
        .map_or(0, |t| t.num_elements() as u64);
    match op.kind.as_str() {
        // Each output element is a dot product over Cin/groups × kH × kW weights.
        "conv" => {
            let w = shape_of(op, "weight", checked).unwrap_or(&[]);
            let per_output: u64 = w.iter().skip(1).map(|&d| d as u64).product();
            2 * out * per_output
        }
        "matmul" => {
            let x = shape_of(op, "x", checked).unwrap_or(&[]);
            let transpose_x = matches!(op.arg("transpose_x"), Some(Arg::Var(v)) if
                checked.consts.get(v).and_then(Literal::as_ints) == Some(vec![1]));
            let k = match (x.len(), transpose_x) {
                (0, _) => 0,
                (n, false) => x[n - 1],
                (n, true) => x[n.saturating_sub(2)],
            };
            2 * out * k as u64
        }
        "scaled_dot_product_attention" => {
            let q = shape_of(op, "query", checked).unwrap_or(&[]);
            let k = shape_of(op, "key", checked).unwrap_or(&[]);
            if q.len() < 2 || k.len() < 2 {
                return 0;
            }
            let (l, e, s) = (q[q.len() - 2], q[q.len() - 1], k[k.len() - 2]);
            let batch = q.iter().rev().skip(2).product::<usize>() as u64;
            // Q·Kᵀ then P·V.
            2 * batch * (l * s * e) as u64 + 2 * out * s as u64
        }
        _ => 0,
    }
}

/// Total bytes of the weight blobs a program bakes in (each BLOBFILE tensor counted once).
pub fn weight_bytes(f: &Function) -> u64 {
    blob_tensors(f)
        .map(|(dtype, n)| (n * dtype.size_bytes().unwrap_or(0)) as u64)
        .sum()
}

/// Total number of weight values a program bakes in (each BLOBFILE tensor counted once),
/// whatever their dtype.
pub fn weight_values(f: &Function) -> u64 {
    blob_tensors(f).map(|(_, n)| n as u64).sum()
}

/// The dtype and element count of every distinct BLOBFILE tensor of `f`.
fn blob_tensors(f: &Function) -> impl Iterator<Item = (crate::ir::DType, usize)> + '_ {
    let mut seen = std::collections::HashSet::new();
    f.ops
        .iter()
        .flat_map(|op| op.attrs.iter().map(|(_, l)| l))
        .filter_map(move |l| match l {
            Literal::Blob {
                dtype,
                shape,
                path,
                offset,
            } if seen.insert((path.clone(), *offset)) => Some((*dtype, shape.iter().product())),
            _ => None,
        })
}
