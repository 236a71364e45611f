//! The MIL program as data.
//!
//! The IR keeps everything the ANE dialect's text carries, including the exact text of float
//! literals and the spacing style, so that printing a parsed program gives back the same bytes.

use std::fmt;

/// Element types that appear in MIL programs and in weight blobs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    Fp16,
    Fp32,
    Int32,
    Int16,
    Int8,
    UInt8,
    UInt16,
    UInt32,
    UInt64,
    Bool,
    String,
}

impl DType {
    /// All dtypes, in the order the parser tries their names.
    pub const ALL: [DType; 11] = [
        DType::Fp16,
        DType::Fp32,
        DType::Int32,
        DType::Int16,
        DType::Int8,
        DType::UInt8,
        DType::UInt16,
        DType::UInt32,
        DType::UInt64,
        DType::Bool,
        DType::String,
    ];

    /// The name used in MIL text (`fp16`, `int32`, ...).
    pub fn mil_name(self) -> &'static str {
        match self {
            DType::Fp16 => "fp16",
            DType::Fp32 => "fp32",
            DType::Int32 => "int32",
            DType::Int16 => "int16",
            DType::Int8 => "int8",
            DType::UInt8 => "uint8",
            DType::UInt16 => "uint16",
            DType::UInt32 => "uint32",
            DType::UInt64 => "uint64",
            DType::Bool => "bool",
            DType::String => "string",
        }
    }

    pub fn from_mil_name(name: &str) -> Option<DType> {
        DType::ALL.into_iter().find(|d| d.mil_name() == name)
    }

    pub fn is_float(self) -> bool {
        matches!(self, DType::Fp16 | DType::Fp32)
    }

    pub fn is_int(self) -> bool {
        matches!(
            self,
            DType::Int32
                | DType::Int16
                | DType::Int8
                | DType::UInt8
                | DType::UInt16
                | DType::UInt32
                | DType::UInt64
        )
    }

    /// Bytes per element in a dense buffer (strings have none).
    pub fn size_bytes(self) -> Option<usize> {
        match self {
            DType::Fp16 | DType::Int16 | DType::UInt16 => Some(2),
            DType::Fp32 | DType::Int32 | DType::UInt32 => Some(4),
            DType::Int8 | DType::UInt8 | DType::Bool => Some(1),
            DType::UInt64 => Some(8),
            DType::String => None,
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.mil_name())
    }
}

/// The type of a value: a scalar or a tensor of static shape.
///
/// A rank-0 tensor is the same thing as a scalar; [`Type::tensor`] normalises it, so that the
/// `ios16` dialect (which writes scalars as `tensor<fp16, []>`) and the `ios18` dialect agree.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Type {
    Scalar(DType),
    Tensor(DType, Vec<usize>),
}

impl Type {
    pub fn tensor(dtype: DType, shape: impl Into<Vec<usize>>) -> Type {
        let shape = shape.into();
        if shape.is_empty() {
            Type::Scalar(dtype)
        } else {
            Type::Tensor(dtype, shape)
        }
    }

    pub fn dtype(&self) -> DType {
        match self {
            Type::Scalar(d) | Type::Tensor(d, _) => *d,
        }
    }

    /// The shape; empty for a scalar.
    pub fn shape(&self) -> &[usize] {
        match self {
            Type::Scalar(_) => &[],
            Type::Tensor(_, s) => s,
        }
    }

    pub fn rank(&self) -> usize {
        self.shape().len()
    }

    pub fn num_elements(&self) -> usize {
        self.shape().iter().product()
    }
}

impl fmt::Display for Type {
    /// A readable form for error messages: `tensor<fp16, [1, 64, 1, 32]>` or `fp16`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Type::Scalar(d) => write!(f, "{d}"),
            Type::Tensor(d, s) => {
                write!(f, "tensor<{d}, [")?;
                for (i, n) in s.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{n}")?;
                }
                f.write_str("]>")
            }
        }
    }
}

/// A float literal keeps the text it was written with (`0.125000`, `0.00001`, `-1`, `0x1p-3`),
/// because the generators' exact bytes matter and the text is the only faithful record.
#[derive(Clone, Debug, PartialEq)]
pub struct FloatLit {
    pub value: f64,
    pub text: String,
}

impl FloatLit {
    /// A literal written as C's `%f` would write it (six fractional digits), as the original
    /// generators do for computed constants such as `1/sqrt(64)` → `0.125000`.
    ///
    /// The value is the rounded one the text denotes (`1/768` → `0.001302`), not the argument:
    /// the compiler only ever sees the text, and a parsed literal must equal the built one.
    pub fn fixed6(value: f64) -> FloatLit {
        let text = format!("{value:.6}");
        let value = text.parse().unwrap_or(value);
        FloatLit { value, text }
    }

    /// A literal with explicit text; the value is parsed from it.
    ///
    /// Returns `None` if the text is not a float MIL accepts (decimal, exponent or C99 hex float).
    pub fn from_text(text: &str) -> Option<FloatLit> {
        parse_float_text(text).map(|value| FloatLit {
            value,
            text: text.to_string(),
        })
    }
}

/// Parses decimal floats (`-0.5`, `1e-5`, `-1`) and C99 hex floats (`0x1p-3`, `-0x1.8p+1`).
pub fn parse_float_text(text: &str) -> Option<f64> {
    let (neg, body) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    let magnitude = if let Some(hex) = body.strip_prefix("0x").or_else(|| body.strip_prefix("0X")) {
        parse_hex_float(hex)?
    } else {
        let ok = !body.is_empty()
            && body
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_digit() || c == '.')
            && body
                .chars()
                .all(|c| c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '+' | '-'));
        if !ok {
            return None;
        }
        body.parse::<f64>().ok()?
    };
    Some(if neg { -magnitude } else { magnitude })
}

fn parse_hex_float(hex: &str) -> Option<f64> {
    let (mantissa, exponent) = match hex.find(['p', 'P']) {
        Some(i) => (&hex[..i], hex[i + 1..].parse::<i32>().ok()?),
        None => (hex, 0),
    };
    let (int_part, frac_part) = match mantissa.find('.') {
        Some(i) => (&mantissa[..i], &mantissa[i + 1..]),
        None => (mantissa, ""),
    };
    if int_part.is_empty() && frac_part.is_empty() {
        return None;
    }
    let mut value = 0f64;
    for c in int_part.chars() {
        value = value * 16.0 + c.to_digit(16)? as f64;
    }
    let mut scale = 1.0 / 16.0;
    for c in frac_part.chars() {
        value += c.to_digit(16)? as f64 * scale;
        scale /= 16.0;
    }
    Some(value * 2f64.powi(exponent))
}

/// One element of a literal.
#[derive(Clone, Debug, PartialEq)]
pub enum Scalar {
    Bool(bool),
    Int(i64),
    Float(FloatLit),
    Str(String),
}

impl Scalar {
    /// The numeric value, if the scalar is a number or a bool.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Scalar::Bool(b) => Some(if *b { 1.0 } else { 0.0 }),
            Scalar::Int(i) => Some(*i as f64),
            Scalar::Float(f) => Some(f.value),
            Scalar::Str(_) => None,
        }
    }

    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Scalar::Int(i) => Some(*i),
            Scalar::Bool(b) => Some(*b as i64),
            _ => None,
        }
    }
}

/// A literal value, as written after `val=` in a `const` or as an attribute.
#[derive(Clone, Debug, PartialEq)]
pub enum Literal {
    /// `fp16(0.125000)`, `int32(1)`, `bool(true)`, `string("valid")`, `uint64(64)`.
    Scalar { dtype: DType, value: Scalar },
    /// `tensor<int32, [4]>([0,0,0,0])`: elements in row-major order.
    Tensor {
        dtype: DType,
        shape: Vec<usize>,
        values: Vec<Scalar>,
    },
    /// `tensor<fp16, [64,64,1,1]>(BLOBFILE(path=string("@model_path/weights/w.bin"), offset=uint64(64)))`:
    /// `offset` is the file offset of the chunk's 64-byte metadata block.
    Blob {
        dtype: DType,
        shape: Vec<usize>,
        path: String,
        offset: u64,
    },
}

impl Literal {
    pub fn ty(&self) -> Type {
        match self {
            Literal::Scalar { dtype, .. } => Type::Scalar(*dtype),
            Literal::Tensor { dtype, shape, .. } | Literal::Blob { dtype, shape, .. } => {
                Type::tensor(*dtype, shape.clone())
            }
        }
    }

    pub fn string(s: &str) -> Literal {
        Literal::Scalar {
            dtype: DType::String,
            value: Scalar::Str(s.to_string()),
        }
    }

    pub fn bool(b: bool) -> Literal {
        Literal::Scalar {
            dtype: DType::Bool,
            value: Scalar::Bool(b),
        }
    }

    pub fn int32(i: i32) -> Literal {
        Literal::Scalar {
            dtype: DType::Int32,
            value: Scalar::Int(i as i64),
        }
    }

    pub fn uint64(u: u64) -> Literal {
        Literal::Scalar {
            dtype: DType::UInt64,
            value: Scalar::Int(u as i64),
        }
    }

    pub fn float(dtype: DType, f: FloatLit) -> Literal {
        Literal::Scalar {
            dtype,
            value: Scalar::Float(f),
        }
    }

    pub fn int32_tensor(values: &[i32]) -> Literal {
        Literal::Tensor {
            dtype: DType::Int32,
            shape: vec![values.len()],
            values: values.iter().map(|&v| Scalar::Int(v as i64)).collect(),
        }
    }

    /// The string content of a string scalar.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Literal::Scalar {
                value: Scalar::Str(s),
                ..
            } => Some(s),
            _ => None,
        }
    }

    /// The elements as integers (a scalar is one element); `None` for blobs, floats, strings.
    pub fn as_ints(&self) -> Option<Vec<i64>> {
        match self {
            Literal::Scalar { value, .. } => Some(vec![value.as_i64()?]),
            Literal::Tensor { values, .. } => values.iter().map(Scalar::as_i64).collect(),
            Literal::Blob { .. } => None,
        }
    }
}

/// The value given for an op argument.
#[derive(Clone, Debug, PartialEq)]
pub enum Arg {
    /// A named value: a function input or an earlier op's output.
    Var(String),
    /// `values=(a,b,c)`, as `concat` takes.
    Tuple(Vec<String>),
    /// A literal written in place.
    Literal(Literal),
}

/// One statement: `<type> <output> = <op>(<args>)[<attributes>];`
#[derive(Clone, Debug, PartialEq)]
pub struct Op {
    /// The operation, e.g. `conv`, `const`.
    pub kind: String,
    /// The variable it defines.
    pub output: String,
    /// The declared type of the output.
    pub ty: Type,
    /// Keyword arguments, in the order written.
    pub args: Vec<(String, Arg)>,
    /// Attributes in the brackets, in the order written; `name` is one of them.
    pub attrs: Vec<(String, Literal)>,
}

impl Op {
    pub fn arg(&self, key: &str) -> Option<&Arg> {
        self.args.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    pub fn attr(&self, key: &str) -> Option<&Literal> {
        self.attrs.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// The op's unique name, from its `name` attribute.
    pub fn name(&self) -> Option<&str> {
        self.attr("name").and_then(Literal::as_str)
    }
}

/// A function input: `tensor<fp16, [1, 64, 1, 32]> x`.
#[derive(Clone, Debug, PartialEq)]
pub struct Param {
    pub name: String,
    pub ty: Type,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Function {
    pub name: String,
    /// The opset in angle brackets, e.g. `ios18`.
    pub opset: String,
    pub inputs: Vec<Param>,
    pub ops: Vec<Op>,
    pub outputs: Vec<String>,
}

/// Which textual dialect a program is written in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    /// `program(1.3)`, `ios18`, scalars written as `fp16(…)`: what M2 and later accept.
    Ios18,
    /// `program(1.0)`, `ios16`, every scalar written as a rank-0 tensor `tensor<fp16, []>(…)`: M1.
    Ios16,
}

/// How statements are spaced. Both occur in the original generators; whitespace has no meaning
/// to the compiler, but the printer reproduces either byte for byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Style {
    /// The training generators: `x=x,y=x`, `name=string("sq")`, body shapes `[1,768,1,256]`.
    Compact,
    /// The benchmarks: `x = x, y = x`, `name = string("conv")`, body shapes `[1, 768, 1, 256]`.
    Spaced,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Program {
    pub dialect: Dialect,
    pub style: Style,
    /// The `buildInfo` dictionary, key/value pairs in order.
    pub build_info: Vec<(String, String)>,
    pub functions: Vec<Function>,
}

impl Program {
    /// The buildInfo the original generators write for `program(1.3)`.
    pub fn default_build_info(dialect: Dialect) -> Vec<(String, String)> {
        let pairs: &[(&str, &str)] = match dialect {
            Dialect::Ios18 => &[
                ("coremlc-component-MIL", "3510.2.1"),
                ("coremlc-version", "3505.4.1"),
                ("coremltools-component-milinternal", ""),
                ("coremltools-version", "9.0"),
            ],
            Dialect::Ios16 => &[("coremlc-version", "3505.4.1")],
        };
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// A program holding one function.
    pub fn single(dialect: Dialect, style: Style, function: Function) -> Program {
        Program {
            dialect,
            style,
            build_info: Program::default_build_info(dialect),
            functions: vec![function],
        }
    }

    /// The same program written in `dialect`: its header, buildInfo and every function's
    /// opset follow the dialect; the ops are the same (every op the kernels use is in both).
    pub fn into_dialect(mut self, dialect: Dialect) -> Program {
        if self.dialect == dialect {
            return self;
        }
        self.dialect = dialect;
        self.build_info = Program::default_build_info(dialect);
        let opset = match dialect {
            Dialect::Ios18 => "ios18",
            Dialect::Ios16 => "ios16",
        };
        for f in &mut self.functions {
            f.opset = opset.to_string();
        }
        self
    }

    /// The function named `main`, or the first one.
    pub fn main(&self) -> Option<&Function> {
        self.functions
            .iter()
            .find(|f| f.name == "main")
            .or(self.functions.first())
    }

    /// Every BLOBFILE path the program refers to, in order of first use.
    pub fn blob_paths(&self) -> Vec<&str> {
        let mut paths: Vec<&str> = Vec::new();
        for f in &self.functions {
            for op in &f.ops {
                let args = op.args.iter().filter_map(|(_, a)| match a {
                    Arg::Literal(l) => Some(l),
                    _ => None,
                });
                for lit in op.attrs.iter().map(|(_, l)| l).chain(args) {
                    if let Literal::Blob { path, .. } = lit {
                        if !paths.contains(&path.as_str()) {
                            paths.push(path);
                        }
                    }
                }
            }
        }
        paths
    }
}
