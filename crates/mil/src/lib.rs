//! MIL programs as data: the IR, a builder, the printer and parser of the ANE's textual
//! dialect, a type and shape checker, Core ML blob storage v2 weight files (`blob`) and the set
//! of weight files handed to a device with a program (`weights`).
//!
//! This is the bottom layer (mil → device → model → train → cli). It knows nothing of devices
//! or threads: everything a device needs to compile a program (its text and its weight files)
//! is built and validated here. The kernel generators of `anetrain-model` build their programs
//! with [`FunctionBuilder`]; the ANE device hands the printed text to Apple's compiler, and
//! the CPU device evaluates the checked program itself. [`examples`] holds the spec's three
//! example programs.
//!
//! # Build, check, print, parse
//!
//! ```
//! use anetrain_mil::{check_program, parse_program, print_program};
//! use anetrain_mil::{DType, Dialect, FunctionBuilder, Program, Style, Type};
//!
//! // y = x·x + x on one fp16 tensor of 4 channels × 16 positions (ANE layout [1, C, 1, S]).
//! let ty = Type::tensor(DType::Fp16, vec![1, 4, 1, 16]);
//! let mut b = FunctionBuilder::new("main", "ios18");
//! let x = b.input("x", ty.clone());
//! let sq = b.op("mul", "sq", ty.clone(), vec![("x", (&x).into()), ("y", (&x).into())]);
//! let y = b.op("add", "y", ty.clone(), vec![("x", (&sq).into()), ("y", (&x).into())]);
//! b.output(&y);
//! let program = Program::single(Dialect::Ios18, Style::Compact, b.finish());
//!
//! // The checker infers every type and returns the signature.
//! let checked = check_program(&program)?;
//! assert_eq!(checked.signature.inputs[0].ty, ty);
//! assert_eq!(checked.signature.outputs[0].name, "y");
//! assert_eq!(checked.types["sq"], ty);
//!
//! // The printer writes the text the ANE compiler reads; the parser reads it back.
//! let text = print_program(&program);
//! assert!(text.starts_with("program(1.3)"));
//! assert!(text.contains(r#"tensor<fp16, [1,4,1,16]> sq = mul(x=x,y=x)[name=string("sq")];"#));
//! assert_eq!(parse_program(&text)?, program);
//!
//! // A declared type that disagrees with the inferred one is refused, naming the op.
//! let bad = text.replace("[1,4,1,16]> y =", "[1,4,1,8]> y =");
//! let err = check_program(&parse_program(&bad)?).unwrap_err();
//! assert_eq!(err.op_name.as_deref(), Some("y"));
//! assert_eq!(err.op_kind.as_deref(), Some("add"));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

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
pub use parse::{parse_program, parse_program_mapped, ParseError, SourceMap};
pub use print::print_program;
pub use weights::WeightFiles;
