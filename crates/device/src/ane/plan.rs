//! Everything a compile needs that is decided before the first Objective-C call: the checked
//! signature, the MIL text, the weights dictionary, the surface layouts and the hints for a
//! failure. Bad input is refused here, before it costs a compile out of the budget.

use super::chip::{self, Chip};
use super::failure::compile_hints;
use super::surface::{share_largest_allocation, BoundSurfaces, SurfaceLayout};
use super::weights::WeightsDictionary;
use crate::DeviceError;
use anetrain_mil::blob::WeightFiles;
use anetrain_mil::check::{check_program, Signature};
use anetrain_mil::{print_program, Arg, Literal, Param, Program};

#[derive(Debug)]
pub struct CompilePlan<'a> {
    pub signature: Signature,
    /// The program as the compiler gets it: the printer's text, UTF-8, no trailing NUL.
    pub mil_text: String,
    pub weights: WeightsDictionary<'a>,
    /// The surfaces in the order the ANE binds them, mapped to the signature's order, all of
    /// one allocation size.
    pub inputs: BoundSurfaces,
    pub outputs: BoundSurfaces,
    /// What to add to a compile failure's message.
    pub hints: Vec<String>,
}

impl<'a> CompilePlan<'a> {
    /// Plans the compile of `program` with `files` for `chip` (`None`: a chip not in the table).
    pub fn new(
        program: &'a Program,
        files: &'a WeightFiles,
        chip: Option<&Chip>,
    ) -> Result<CompilePlan<'a>, DeviceError> {
        let checked = check_program(program)?;
        let rules = chip::rules_of(chip);
        let (refusals, cautions) = rules
            .check_typed(program, &checked.types)
            .into_iter()
            .partition::<Vec<_>, _>(|v| v.rule.refuses());
        if !refusals.is_empty() {
            return Err(DeviceError::Refused(refusals));
        }
        let weights = WeightsDictionary::for_program(program, files)?;
        check_weight_files(program, files)?;
        let (min_bytes, alignment) = (rules.min_surface_bytes(), rules.surface_alignment());
        let layouts = |params: &[Param]| -> Result<Vec<SurfaceLayout>, DeviceError> {
            params
                .iter()
                .map(|p| SurfaceLayout::for_param(p, min_bytes, alignment))
                .collect()
        };
        let mut inputs = BoundSurfaces::in_binding_order(layouts(&checked.signature.inputs)?);
        let mut outputs = BoundSurfaces::in_binding_order(layouts(&checked.signature.outputs)?);
        share_largest_allocation(&mut [&mut inputs, &mut outputs]);
        let hints = compile_hints(&cautions);
        Ok(CompilePlan {
            signature: checked.signature,
            mil_text: print_program(program),
            weights,
            inputs,
            outputs,
            hints,
        })
    }
}

/// Checks every BLOBFILE constant against its file (chunk, dtype, size), so that a corrupt or
/// mismatched file is named here rather than rejected opaquely, or silently misread, by the
/// compiler.
fn check_weight_files(program: &Program, files: &WeightFiles) -> Result<(), DeviceError> {
    for op in program.functions.iter().flat_map(|f| &f.ops) {
        let inline = op.args.iter().filter_map(|(_, a)| match a {
            Arg::Literal(l) => Some(l),
            _ => None,
        });
        for lit in op.attrs.iter().map(|(_, l)| l).chain(inline) {
            if let Literal::Blob {
                dtype,
                shape,
                path,
                offset,
            } = lit
            {
                files
                    .tensor_f32(path, *offset, *dtype, shape)
                    .map_err(|e| DeviceError::Weights {
                        path: path.clone(),
                        source: Box::new(e),
                    })?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ane::chip::identify;
    use crate::ane::surface::IoType;
    use anetrain_mil::blob::BlobFile;
    use anetrain_mil::examples;

    #[test]
    fn plans_example_a_with_fp32_surfaces_and_its_weights() {
        let program = examples::conv_fp32_io();
        let mut files = WeightFiles::new();
        files.insert_blob(
            "@model_path/weights/weight.bin",
            &BlobFile::fp16(&vec![0.5; 64 * 64]),
        );
        let plan = CompilePlan::new(&program, &files, identify("Apple M4")).unwrap();
        assert_eq!(plan.mil_text, print_program(&program));
        assert!(plan.mil_text.starts_with("program(1.3)\n"));
        assert_eq!(plan.weights.entries.len(), 1);
        assert_eq!(plan.inputs.len(), 1);
        assert_eq!(plan.inputs.declared(0).io_type, IoType::Fp32);
        assert_eq!(plan.inputs.declared(0).data_bytes, 64 * 32 * 4);
        assert_eq!(plan.outputs.declared(0).name, "y");
        assert!(plan.hints.is_empty());
    }

    #[test]
    fn a_corrupt_weight_file_is_named_before_compiling() {
        let program = examples::final_rmsnorm(64, 32);
        let mut files = WeightFiles::new();
        // 63 values where the program declares [1, 64, 1, 1].
        files.insert_blob("@model_path/weights/rms_w.bin", &BlobFile::fp16(&[1.0; 63]));
        let err = CompilePlan::new(&program, &files, None).unwrap_err();
        assert!(
            matches!(&err, DeviceError::Weights { path, .. } if path == "@model_path/weights/rms_w.bin"),
            "{err:?}"
        );
    }

    #[test]
    fn a_spatial_width_that_corrupts_data_is_refused() {
        let program = examples::dynamic_matmul(64, 64, 20); // input width 84, output width 20
        let err = CompilePlan::new(&program, &WeightFiles::new(), None).unwrap_err();
        assert!(matches!(err, DeviceError::Refused(_)), "{err:?}");
        let text = err.to_string();
        assert!(
            text.contains("a width of 84") && text.contains("a multiple of 16"),
            "{text}"
        );
        assert!(CompilePlan::new(
            &examples::dynamic_matmul(64, 64, 32),
            &WeightFiles::new(),
            None
        )
        .is_ok());
    }

    #[test]
    fn a_program_that_does_not_check_is_refused() {
        let mut program = examples::conv_chain(1, 64, 32);
        program.functions[0].outputs = vec!["nowhere".into()];
        let err = CompilePlan::new(&program, &examples::conv_chain_weights(1, 64, 1.0), None)
            .unwrap_err();
        assert!(matches!(err, DeviceError::Check(_)), "{err:?}");
    }

    #[test]
    fn the_chips_rules_refuse_before_anything_else_and_cautions_become_hints() {
        let program = examples::conv_chain(1, 768, 32);
        let files = examples::conv_chain_weights(1, 768, 1.0);
        let err = CompilePlan::new(&program, &files, identify("Apple M3 Pro")).unwrap_err();
        assert!(
            err.to_string().starts_with("the M3 Pro refuses op"),
            "{err}"
        );
        assert!(CompilePlan::new(&program, &files, identify("Apple M4")).is_ok());

        let heavy = examples::conv_chain(8, 768, 32);
        let files = examples::conv_chain_weights(8, 768, 1.0);
        let plan = CompilePlan::new(&heavy, &files, identify("Apple M4")).unwrap();
        assert_eq!(plan.hints.len(), 1, "{:?}", plan.hints);
        assert!(plan.hints[0].contains("program-weights"));
    }

    /// `y = x + bias`, declaring `x` before `bias`, `x` twice the size of `bias`.
    fn two_inputs() -> Program {
        use anetrain_mil::{DType, Dialect, FunctionBuilder, Style, Type};
        let mut b = FunctionBuilder::new("main", "ios18");
        let x = b.input("x", Type::tensor(DType::Fp16, vec![1, 768, 2, 32]));
        let bias = b.input("bias", Type::tensor(DType::Fp16, vec![1, 768, 1, 32]));
        let y = b
            .typed_op("add", "y", vec![("x", (&x).into()), ("y", (&bias).into())])
            .unwrap();
        b.output(&y);
        Program::single(Dialect::Ios18, Style::Compact, b.finish())
    }

    #[test]
    fn several_inputs_are_bound_in_name_order_with_one_allocation_size() {
        let program = two_inputs();
        let files = WeightFiles::new();
        let plan = CompilePlan::new(&program, &files, identify("Apple M4")).unwrap();
        let declared: Vec<&str> = plan
            .signature
            .inputs
            .iter()
            .map(|p| p.name.as_str())
            .collect();
        assert_eq!(declared, ["x", "bias"]);
        let bound: Vec<&str> = plan
            .inputs
            .layouts
            .iter()
            .map(|l| l.name.as_str())
            .collect();
        assert_eq!(bound, ["bias", "x"]);
        assert_eq!(plan.inputs.binding_of_declared, [1, 0]);
        assert_eq!(plan.inputs.declared(0).name, "x");
        assert_eq!(plan.inputs.declared(1).name, "bias");
        assert_eq!(plan.inputs.declared(0).data_bytes, 768 * 2 * 32 * 2);
        assert_eq!(plan.inputs.declared(1).data_bytes, 768 * 32 * 2);
        for l in plan.inputs.layouts.iter().chain(&plan.outputs.layouts) {
            assert_eq!(l.alloc_bytes, 768 * 2 * 32 * 2, "`{}`", l.name);
        }
    }
}
