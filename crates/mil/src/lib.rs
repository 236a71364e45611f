//! MIL programs as data: the IR, a builder, the printer and parser of the ANE's textual
//! dialect, a type and shape checker, Core ML blob storage v2 weight files (`blob`) and the set
//! of weight files handed to a device with a program (`weights`).
//!
//! This crate knows nothing of devices or threads. Everything a device needs to compile a
//! program (its text and its weight files) is built and validated here.

pub mod blob;
pub mod build;
pub mod check;
pub mod cost;
pub mod examples;
pub mod ir;
pub mod parse;
pub mod print;
pub mod weights;

pub use blob::{read_chunk, BlobChunk, BlobDType, BlobError, BlobFile};
pub use build::{FunctionBuilder, Var};
pub use check::{
    check_function, check_program, infer_op_type, CheckError, CheckedFunction, Signature,
};
pub use ir::{
    Arg, DType, Dialect, FloatLit, Function, Literal, Op, Param, Program, Scalar, Style, Type,
};
pub use parse::{parse_program, ParseError};
pub use print::print_program;
pub use weights::WeightFiles;
