//! Turns what the private framework reports (a NO and an NSError description, or a nil object)
//! into [`DeviceError`]s that say which step failed, and adds what is known about the chip that
//! may explain it. The compiler's own messages are terse, and the chip's rules are the first
//! thing to rule out.

use super::rules::Violation;
use crate::DeviceError;
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

/// Hints for a compile failure: the cautions of the chip's rules that the program runs into
/// (what is reported to fail in some cases, and was compiled anyway).
pub fn compile_hints(cautions: &[Violation]) -> Vec<String> {
    cautions.iter().map(Violation::to_string).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ane::chip::{identify, rules_of};
    use anetrain_mil::examples;

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
    fn hints_are_the_cautions_a_program_runs_into() {
        let m4_max = rules_of(identify("Apple M4 Max"));
        let heavy = examples::conv_chain(8, 768, 32);
        let cautions = m4_max.check(&heavy).unwrap();
        let hints = compile_hints(&cautions);
        assert_eq!(hints.len(), 1, "{hints:?}");
        assert!(hints[0].contains("may refuse") && hints[0].contains("program-weights"));
        assert!(compile_hints(&m4_max.check(&examples::conv_chain(1, 64, 32)).unwrap()).is_empty());
    }

    #[test]
    fn multi_input_eval_failures_get_the_packing_hint() {
        assert_eq!(eval_hints("status 0x1d", 2).len(), 1);
        assert!(eval_hints("status 0x1d", 1).is_empty());
        assert!(eval_hints("other", 3).is_empty());
    }
}
