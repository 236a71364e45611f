use crate::ane::rules::Violation;
use anetrain_mil::blob::BlobError;
use anetrain_mil::check::CheckError;
use thiserror::Error;

fn describe_refusals(violations: &[Violation]) -> String {
    let lines: Vec<String> = violations.iter().map(Violation::to_string).collect();
    lines.join("\n")
}

/// Everything a device can report. Each variant says what is wrong and where.
#[derive(Debug, Error)]
pub enum DeviceError {
    #[error("the program does not type-check: {0}")]
    Check(Box<CheckError>),
    #[error("{}", weights_message(path, source))]
    Weights {
        path: String,
        source: Box<BlobError>,
    },
    #[error("the program refers to weight file `{0}`, which was not supplied")]
    MissingWeights(String),
    #[error("op {op} ({kind}): {message}")]
    Unsupported {
        op: String,
        kind: String,
        message: String,
    },
    #[error("expected {expected} {what} buffer(s), got {found}")]
    BufferCount {
        what: &'static str,
        expected: usize,
        found: usize,
    },
    #[error("{what} `{name}` ({ty}) needs {expected} elements, the buffer has {found}")]
    BufferSize {
        what: &'static str,
        name: String,
        ty: String,
        expected: usize,
        found: usize,
    },
    #[error("device unavailable: {0}")]
    Unavailable(String),
    #[error("compile budget exhausted: {used} of {budget} compiles used in this process")]
    BudgetExhausted { used: u64, budget: u64 },
    /// A chip's rules refuse the program (checked before it costs a compile), or the compile
    /// would pass a limit of the chip's.
    #[error("{}", describe_refusals(.0))]
    Refused(Vec<Violation>),
    #[error("compile failed: {0}")]
    CompileFailed(String),
    /// The loaded model lays out a surface other than densely; exchanging dense data with it
    /// would misplace every value.
    #[error(
        "{what} `{tensor}`: the loaded model reports a {stride} stride of {reported} bytes, but \
         the dense layout has {expected}; refused rather than exchange misplaced data"
    )]
    StrideMismatch {
        what: &'static str,
        tensor: String,
        stride: &'static str,
        reported: u64,
        expected: u64,
    },
    #[error("eval failed: {0}")]
    EvalFailed(String),
}

impl From<CheckError> for DeviceError {
    fn from(e: CheckError) -> Self {
        DeviceError::Check(Box::new(e))
    }
}

impl From<Box<CheckError>> for DeviceError {
    fn from(e: Box<CheckError>) -> Self {
        DeviceError::Check(e)
    }
}

/// A weight file's error, naming the file once (the blob error may name it already).
fn weights_message(path: &str, source: &BlobError) -> String {
    match source {
        BlobError::InFile { .. } => source.to_string(),
        _ => format!("weight file `{path}`: {source}"),
    }
}
