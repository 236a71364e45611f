//! Turns what the private framework reports (a NO and an NSError description, or a nil object)
//! into [`DeviceError`]s that say which step failed, and adds what is known about the chip that
//! may explain it. The compiler's own messages are terse, and the known chip quirks are the
//! first thing to rule out.

use super::chip::Quirk;
use crate::DeviceError;
use anetrain_mil::{Arg, Dialect, Program};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// The step of the private-API sequence (spec 1.3) that failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    Descriptor,
    Model,
    Compile,
    Load,
    Surface,
    Request,
    Eval,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Step::Descriptor => {
                "_ANEInMemoryModelDescriptor modelWithMILText:weights:optionsPlist: returned nil"
            }
            Step::Model => "_ANEInMemoryModel inMemoryModelWithDescriptor: returned nil",
            Step::Compile => "compileWithQoS:options:error: failed",
            Step::Load => "loadWithQoS:options:error: failed",
            Step::Surface => "IOSurface creation failed",
            Step::Request => "_ANERequest could not be built",
            Step::Eval => "evaluateWithQoS:options:request:error: failed",
        })
    }
}

/// The error for a failed step: `detail` is the NSError description where there is one; the
/// hints are appended one per line.
pub fn step_failed(step: Step, detail: Option<&str>, hints: &[String]) -> DeviceError {
    let mut message = step.to_string();
    if let Some(detail) = detail.map(str::trim).filter(|d| !d.is_empty()) {
        message.push_str(": ");
        message.push_str(detail);
    }
    for hint in hints {
        message.push_str("\n  hint: ");
        message.push_str(hint);
    }
    match step {
        Step::Eval => DeviceError::EvalFailed(message),
        _ => DeviceError::CompileFailed(message),
    }
}

/// Hints for an eval failure, from its description and the kernel's number of inputs.
pub fn eval_hints(detail: &str, inputs: usize) -> Vec<String> {
    let mut hints = Vec::new();
    if detail.contains("0x1d") && inputs > 1 {
        hints.push(format!(
            "requests with several inputs are reported to fail with 0x1d, and this kernel has \
             {inputs}: pack them into one input (concatenated along channels or the spatial axis)"
        ));
    }
    hints
}

/// What a program uses that some chips reject.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProgramFacts {
    pub dialect: Option<Dialect>,
    /// Input and output channel counts of every conv.
    pub conv_channels: BTreeSet<usize>,
    /// Weight files from which the program reads more than one tensor, with the count.
    pub multi_tensor_files: BTreeMap<String, usize>,
}

impl ProgramFacts {
    /// Gathers the facts; `types` gives the type of every value (from the checker).
    pub fn of(
        program: &Program,
        types: &std::collections::HashMap<String, anetrain_mil::Type>,
    ) -> ProgramFacts {
        let mut facts = ProgramFacts {
            dialect: Some(program.dialect),
            ..ProgramFacts::default()
        };
        let mut offsets: BTreeMap<&str, BTreeSet<u64>> = BTreeMap::new();
        for function in &program.functions {
            for op in &function.ops {
                if op.kind == "conv" {
                    let x = match op.arg("x") {
                        Some(Arg::Var(x)) => types.get(x),
                        _ => None,
                    };
                    for ty in [x, Some(&op.ty)].into_iter().flatten() {
                        if let Some(&c) = ty.shape().get(1) {
                            facts.conv_channels.insert(c);
                        }
                    }
                }
                for lit in op
                    .attrs
                    .iter()
                    .map(|(_, l)| l)
                    .chain(op.args.iter().filter_map(|(_, a)| match a {
                        Arg::Literal(l) => Some(l),
                        _ => None,
                    }))
                {
                    if let anetrain_mil::Literal::Blob { path, offset, .. } = lit {
                        offsets.entry(path).or_default().insert(*offset);
                    }
                }
            }
        }
        facts.multi_tensor_files = offsets
            .into_iter()
            .filter(|(_, o)| o.len() > 1)
            .map(|(path, o)| (path.to_string(), o.len()))
            .collect();
        facts
    }
}

/// Hints for a compile failure on a chip called `chip` with `quirks`: each quirk the program
/// runs into, with where it was reported.
pub fn compile_hints(chip: &str, quirks: &[Quirk], facts: &ProgramFacts) -> Vec<String> {
    let mut hints = Vec::new();
    for quirk in quirks {
        let conflict = match quirk {
            Quirk::Ios16Dialect if facts.dialect == Some(Dialect::Ios18) => {
                Some("the program is written in the ios18 dialect".to_string())
            }
            Quirk::PerMatrixWeightBlobs if !facts.multi_tensor_files.is_empty() => {
                let files: Vec<String> = facts
                    .multi_tensor_files
                    .iter()
                    .map(|(path, n)| format!("{path} holds {n} tensors"))
                    .collect();
                Some(files.join(", "))
            }
            Quirk::OnlyChannels(allowed) => {
                let others: Vec<String> = facts
                    .conv_channels
                    .iter()
                    .filter(|c| !allowed.contains(c))
                    .map(usize::to_string)
                    .collect();
                (!others.is_empty())
                    .then(|| format!("the program has convs of {} channels", others.join(", ")))
            }
            _ => None,
        };
        if let Some(conflict) = conflict {
            hints.push(format!(
                "the {chip} {quirk}, and {conflict} (reported in {})",
                quirk.source()
            ));
        }
    }
    hints
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ane::chip::{identify, quirks_of};
    use anetrain_mil::check::check_program;
    use anetrain_mil::examples;

    fn facts(program: &Program) -> ProgramFacts {
        ProgramFacts::of(program, &check_program(program).unwrap().types)
    }

    #[test]
    fn errors_name_the_step_and_carry_the_description() {
        let err = step_failed(
            Step::Compile,
            Some("Error Domain=com.apple.appleneuralengine Code=2 \"InvalidMILProgram\""),
            &[],
        );
        match &err {
            DeviceError::CompileFailed(m) => {
                assert!(m.starts_with("compileWithQoS:options:error: failed: Error Domain="));
                assert!(m.contains("InvalidMILProgram"));
            }
            other => panic!("expected CompileFailed, got {other:?}"),
        }
        assert!(matches!(
            step_failed(Step::Eval, Some("x"), &[]),
            DeviceError::EvalFailed(_)
        ));
        let nil = step_failed(Step::Descriptor, None, &["look here".into()]);
        assert_eq!(
            nil.to_string(),
            "compile failed: _ANEInMemoryModelDescriptor modelWithMILText:weights:optionsPlist: \
             returned nil\n  hint: look here"
        );
        let blank = step_failed(Step::Load, Some("  "), &[]);
        assert!(blank
            .to_string()
            .ends_with("loadWithQoS:options:error: failed"));
    }

    #[test]
    fn facts_list_conv_channels_and_multi_tensor_files() {
        let f = facts(&examples::conv_chain(2, 768, 32));
        assert_eq!(f.conv_channels, BTreeSet::from([768]));
        assert!(f.multi_tensor_files.is_empty());
        assert_eq!(f.dialect, Some(Dialect::Ios18));

        let mut shared = examples::conv_chain(2, 64, 32);
        for op in &mut shared.functions[0].ops {
            for (_, lit) in &mut op.attrs {
                if let anetrain_mil::Literal::Blob { path, offset, .. } = lit {
                    *offset = if path.ends_with("w1.bin") { 8384 } else { 64 };
                    *path = "@model_path/weights/weight.bin".into();
                }
            }
        }
        let f = facts(&shared);
        assert_eq!(
            f.multi_tensor_files,
            BTreeMap::from([("@model_path/weights/weight.bin".to_string(), 2)])
        );
    }

    #[test]
    fn hints_name_the_quirks_a_program_runs_into() {
        let m3_pro = quirks_of(identify("Apple M3 Pro"));
        let hints = compile_hints("M3 Pro", m3_pro, &facts(&examples::conv_chain(1, 768, 32)));
        assert_eq!(hints.len(), 1, "{hints:?}");
        assert!(hints[0].contains("only 512 channels"));
        assert!(hints[0].contains("convs of 768 channels"));
        assert!(
            compile_hints("M3 Pro", m3_pro, &facts(&examples::conv_chain(1, 512, 32))).is_empty()
        );

        let m1 = quirks_of(identify("Apple M1"));
        let hints = compile_hints("M1", m1, &facts(&examples::conv_chain(1, 64, 32)));
        assert_eq!(hints.len(), 1, "{hints:?}");
        assert!(hints[0].contains("ios16") && hints[0].contains("PR #6"));

        let m4 = quirks_of(identify("Apple M4"));
        assert!(compile_hints("M4", m4, &facts(&examples::conv_chain(1, 768, 32))).is_empty());
    }

    #[test]
    fn multi_input_eval_failures_get_the_packing_hint() {
        assert_eq!(eval_hints("status 0x1d", 2).len(), 1);
        assert!(eval_hints("status 0x1d", 1).is_empty());
        assert!(eval_hints("other", 3).is_empty());
    }
}
