//! Binding a template to its weights: every constant read, the products' constant left
//! operands packed, and what a weight file held kept for the next bind of the same file.

use super::consts::ConstSource;
use super::{root, Plan, PlanTemplate, Storage, Value};
use crate::cpu::matmul::MatLayout;
use crate::cpu::packed::{PackedA, PackedOperand};
use crate::cpu::steps::{GemmStep, PackedGemm, Step};
use crate::DeviceError;
use anetrain_mil::blob::{MatrixValues, WeightFiles};
use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

/// A constant read from a weight file by an earlier bind, kept together with that file. A
/// later bind handed the very same file (the same shared bytes, as a kernel's fixed tables
/// are at every compile of a training run: masks, rotary tables) takes the values as they
/// are instead of reading them again. Holding the file keeps its address from being reused by
/// other bytes, so the identity check cannot be fooled.
pub(super) struct ReadConst {
    file: Arc<Vec<u8>>,
    values: Arc<Vec<f32>>,
}

impl fmt::Debug for ReadConst {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ReadConst({} values)", self.values.len())
    }
}

impl PlanTemplate {
    /// Plans bound from this template still alive.
    #[cfg(test)]
    pub fn kernels_bound(&self) -> usize {
        Arc::strong_count(&self.plan) - 1
    }

    /// The plan running on `weights`: every constant read (and checked against its declared
    /// dtype and shape), rounded in fp16 mode, and packed where the template says so.
    pub fn bind(&self, weights: &WeightFiles) -> Result<Plan, DeviceError> {
        let mut read_before = self.read_before.lock().unwrap_or_else(|e| e.into_inner());
        let known: Vec<Option<Arc<Vec<f32>>>> = self
            .sources
            .iter()
            .zip(read_before.iter())
            .map(|(source, before)| {
                let file = source.file(weights)?;
                before
                    .as_ref()
                    .filter(|b| Arc::ptr_eq(&b.file, file))
                    .map(|b| b.values.clone())
            })
            .collect();
        let values = self
            .sources
            .iter()
            .zip(&known)
            .enumerate()
            .map(|(c, (source, known))| match known {
                Some(values) => Ok(MatrixValues::Dense(Cow::Borrowed(values.as_slice()))),
                None if self.packed_only.binary_search(&c).is_ok() => source.matrix_values(weights),
                None => source.values(weights).map(MatrixValues::Dense),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut packed: Vec<Option<PackedGemm>> = vec![None; self.plan.steps.len()];
        for &i in &self.packed_steps {
            let Step::Gemm(g) = &self.plan.steps[i] else {
                unreachable!("only products are packed");
            };
            let pack = shared_pack(g, &self.values, &self.sources, weights)
                .or_else(|| pack_constant(g, &self.values, &values));
            packed[i] = Some(pack.ok_or_else(|| {
                DeviceError::CompileFailed(format!(
                    "packing the constant left operand of step {i} failed"
                ))
            })?);
        }
        let mut consts = Vec::with_capacity(values.len());
        for (c, (v, source)) in values.into_iter().zip(&self.sources).enumerate() {
            let held = match (self.packed_only.binary_search(&c), &known[c]) {
                // Only packed products read it: it was read in place or dropped here, and
                // its values live on in the packed layout alone (nothing to reuse either).
                (Ok(_), _) => Arc::default(),
                (Err(_), Some(known)) => known.clone(),
                (Err(_), None) => {
                    let MatrixValues::Dense(v) = v else {
                        unreachable!("constants read outside packed products are dense")
                    };
                    let held = source.hold(v);
                    if let Some(file) = source.file(weights) {
                        read_before[c] = Some(ReadConst {
                            file: file.clone(),
                            values: held.clone(),
                        });
                    }
                    held
                }
            };
            consts.push(held);
        }
        Ok(Plan {
            lowered: self.plan.clone(),
            consts,
            packed,
        })
    }
}

/// A product's packed left operand from the [`MatrixShare`] its weight file belongs to, when
/// the product reads that whole file as a row-major matrix: the matrix the file views is
/// packed once for the set's kernels, and those whose file holds its transpose read it
/// transposed. `None` when the file is in no share or the product reads it otherwise.
///
/// [`MatrixShare`]: anetrain_mil::blob::MatrixShare
fn shared_pack(
    g: &GemmStep,
    values: &[Value],
    sources: &[ConstSource],
    weights: &WeightFiles,
) -> Option<PackedGemm> {
    let (r, base) = root(values, g.a);
    let Storage::Const(c) = values[r].storage else {
        return None;
    };
    let ConstSource::Blob {
        path,
        offset,
        dtype,
        shape,
        round: false,
    } = &sources[c]
    else {
        return None;
    };
    let whole = g.la.cs == 1
        && g.la.rs == g.k
        && g.batches
            .iter()
            .all(|&[oa, ..]| g.la.offset + base + oa == 0);
    if !whole {
        return None;
    }
    let (pack, transposed) =
        weights.derived_matrix(path, *offset, *dtype, shape, |stored, rows, cols| {
            PackedA::new(rows, cols, stored, MatLayout::row_major(0, cols))
        })?;
    let operand = PackedOperand { pack, transposed };
    let view = operand.view();
    (view.rows() == g.m && view.depth() == g.k).then(|| PackedGemm {
        packs: vec![operand],
        pack_of: vec![0; g.batches.len()],
    })
}

/// Packs a product's constant left operand (see
/// [`packs_constant`](super::passes::packs_constant)): one packed matrix per
/// distinct left-operand offset of the batch.
fn pack_constant(
    g: &GemmStep,
    values: &[Value],
    consts: &[MatrixValues<'_>],
) -> Option<PackedGemm> {
    let (r, base) = root(values, g.a);
    let Storage::Const(c) = values[r].storage else {
        return None;
    };
    let mut offsets: Vec<usize> = Vec::new();
    let mut pack_of = Vec::with_capacity(g.batches.len());
    for &[oa, ..] in &g.batches {
        let i = offsets.iter().position(|&o| o == oa).unwrap_or_else(|| {
            offsets.push(oa);
            offsets.len() - 1
        });
        pack_of.push(i);
    }
    // A constant held as the transpose of a stored matrix is read through the stored one
    // where the product's views of it map onto it, else written out.
    let maps = |rows, cols| {
        offsets
            .iter()
            .all(|&oa| view_of_transpose(g, base + oa, rows, cols).is_some())
    };
    let (data, stored_as): (Cow<'_, [f32]>, _) = match &consts[c] {
        MatrixValues::Dense(values) => (Cow::Borrowed(&values[..]), None),
        &MatrixValues::TransposeOf { stored, rows, cols } if maps(rows, cols) => {
            (Cow::Borrowed(stored), Some([rows, cols]))
        }
        &MatrixValues::TransposeOf { stored, rows, cols } => (
            Cow::Owned(anetrain_mil::blob::transposed(stored, rows, cols)),
            None,
        ),
    };
    let packs = offsets
        .iter()
        .map(|&oa| {
            let la = match stored_as {
                Some([rows, cols]) => view_of_transpose(g, base + oa, rows, cols)?,
                None => MatLayout {
                    offset: g.la.offset + base + oa,
                    ..g.la
                },
            };
            (la.extent(g.m, g.k) <= data.len())
                .then(|| PackedA::new(g.m, g.k, &data, la))
                .flatten()
                .map(|pack| PackedOperand {
                    pack: Arc::new(pack),
                    transposed: false,
                })
        })
        .collect::<Option<Vec<_>>>()?;
    Some(PackedGemm { packs, pack_of })
}

/// The layout, over a stored `[rows][cols]` row-major matrix, of a product's row-major view
/// (at `offset` into the constant) of that matrix's transpose, a `[cols][rows]` matrix:
/// element `[i][j]` of the transpose is `stored[j * cols + i]`. Only views that start at a row
/// of the transpose and step along its rows map this way.
fn view_of_transpose(g: &GemmStep, offset: usize, rows: usize, cols: usize) -> Option<MatLayout> {
    let offset = g.la.offset + offset;
    let fits = g.la.cs == 1
        && g.la.rs == rows
        && offset % rows == 0
        && offset / rows + g.m <= cols
        && g.k <= rows;
    fits.then(|| MatLayout {
        offset: offset / rows,
        rs: 1,
        cs: cols,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::packed;
    use crate::cpu::plan::Place;
    use crate::NumericMode;

    /// The 1×1 convs of a chain have constant (BLOBFILE) weights: each is packed at compile
    /// time wherever the CPU has the packed kernel, and then no step reads the raw weights.
    #[test]
    fn constant_conv_weights_take_the_packed_path() {
        use anetrain_mil::examples::{conv_chain, conv_chain_weights};
        let program = conv_chain(3, 40, 20);
        let weights = conv_chain_weights(3, 40, 0.5);
        let checked = anetrain_mil::check::check_program(&program).expect("valid program");
        let main = program.main().expect("a main function");
        for mode in [NumericMode::Fp32, NumericMode::Fp16] {
            let template = PlanTemplate::lower(main, &checked, mode).expect("lowers");
            let plan = template.bind(&weights).expect("binds");
            let gemms: Vec<(&GemmStep, bool)> = (plan.lowered.steps.iter())
                .zip(&plan.packed)
                .filter_map(|(s, p)| match s {
                    Step::Gemm(g) => Some((g, p.is_some())),
                    _ => None,
                })
                .collect();
            assert_eq!(gemms.len(), 3);
            for (g, is_packed) in gemms {
                assert_eq!(is_packed, packed::available());
                if is_packed {
                    let Place::Const(c, _) = plan.lowered.places[g.a] else {
                        panic!("weights are constants");
                    };
                    assert!(
                        plan.consts[c].is_empty(),
                        "raw weights kept beside packed ones"
                    );
                }
            }
        }
    }

    /// Two convs whose weight files view one matrix, the first as stored and the second
    /// transposed: in one `MatrixShare` they bind to one packed copy, read as packed and
    /// transposed; a second share (the next set) packs its own; without a share each conv
    /// packs its own.
    #[test]
    fn a_matrix_and_its_transpose_in_one_share_are_packed_once() {
        use anetrain_mil::blob::{F32Source, MatrixFile, MatrixShare};
        if !packed::available() {
            return;
        }
        let program =
            anetrain_mil::examples::conv_stack(anetrain_mil::DType::Fp32, &[20, 13, 20], 24);
        let checked = anetrain_mil::check::check_program(&program).expect("valid program");
        let template = PlanTemplate::lower(program.main().unwrap(), &checked, NumericMode::Fp32)
            .expect("lowers");
        let source: F32Source = Arc::new((0..260).map(|i| i as f32 / 64.0).collect::<Vec<_>>());
        let files = |share: Option<&Arc<MatrixShare>>| {
            let mut w = WeightFiles::new();
            for (i, transposed) in [false, true].into_iter().enumerate() {
                let file = MatrixFile::new(source.clone(), 0..260, [13, 20], transposed).unwrap();
                let file = match share {
                    Some(share) => file.shared_in(share),
                    None => file,
                };
                w.insert_matrix(format!("@model_path/weights/w{i}.bin"), file);
            }
            w
        };
        let operands = |weights: &WeightFiles| -> Vec<PackedOperand> {
            let plan = template.bind(weights).expect("binds");
            let steps = plan.lowered.steps.iter().zip(&plan.packed);
            steps
                .filter_map(|(s, p)| match s {
                    Step::Gemm(_) => Some(p.as_ref().expect("packed").packs[0].clone()),
                    _ => None,
                })
                .collect()
        };
        let share = MatrixShare::new();
        let shared = operands(&files(Some(&share)));
        assert_eq!(shared.len(), 2);
        assert!(
            Arc::ptr_eq(&shared[0].pack, &shared[1].pack),
            "one packed copy"
        );
        assert_eq!((shared[0].transposed, shared[1].transposed), (false, true));
        assert_eq!(share.len(), 1);
        let next = operands(&files(Some(&MatrixShare::new())));
        assert!(!Arc::ptr_eq(&shared[0].pack, &next[0].pack));
        let alone = operands(&files(None));
        assert!(!Arc::ptr_eq(&alone[0].pack, &alone[1].pack));
        assert!(alone.iter().all(|o| !o.transposed));
    }
}
