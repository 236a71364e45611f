//! Errors inside one op, before [`CheckError`](super::CheckError) adds the function and op,
//! and the helpers that phrase them.

use crate::ir::Type;

/// A problem found in one op, before the function and op context is attached.
#[derive(Debug)]
pub(super) struct OpError {
    pub(super) arg: Option<String>,
    pub(super) message: String,
}

impl OpError {
    /// A problem with one argument.
    pub(super) fn at(arg: &str, message: impl Into<String>) -> OpError {
        OpError {
            arg: Some(arg.to_string()),
            message: message.into(),
        }
    }

    /// A problem with the op as a whole.
    pub(super) fn whole_op(message: impl Into<String>) -> OpError {
        OpError {
            arg: None,
            message: message.into(),
        }
    }
}

/// The outcome of checking (or inferring) something inside one op.
pub(super) type OpResult<T> = Result<T, OpError>;

/// The error [`OpError::at`] `arg`, as a result.
pub(super) fn fail<T>(arg: &str, message: impl Into<String>) -> OpResult<T> {
    Err(OpError::at(arg, message))
}

/// A required parameter. The argument-list check has already insisted on it; this only keeps the
/// inference functions free of `unwrap`.
pub(super) fn need<T>(arg: &str, found: Option<T>) -> OpResult<T> {
    found.ok_or_else(|| OpError::at(arg, "missing required argument"))
}

/// `x: tensor<fp16, [1, 64, 1, 32]>`, the way a value is shown in shape messages.
pub(super) fn shown(arg: &str, ty: &Type) -> String {
    format!("{arg}: {ty}")
}

pub(super) fn rank_mismatch(arg: &str, ty: &Type, other_arg: &str, other: &Type) -> String {
    format!(
        "rank {} does not match {other_arg}'s rank {} ({}, {})",
        ty.rank(),
        other.rank(),
        shown(arg, ty),
        shown(other_arg, other)
    )
}
