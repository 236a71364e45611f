//! What a Neural Engine refuses, or silently computes wrong, as data: every rule known from the
//! projects that run on the ANE (`shared/reference/ane-constraints.md`), each with its figure
//! and its source, and a checker that applies a chip's rules to a program.
//!
//! The ANE device checks every program against its chip's rules before the framework sees it,
//! and a simulated chip checks the same rules, so a test on Linux fails where a Mac would. Where
//! sources disagree, or no one reported a chip, the strictest figure known is the rule.

use anetrain_mil::check::{check_program, CheckError};
use anetrain_mil::{cost, Arg, DType, Dialect, Literal, Op, Program, Scalar, Type};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;

/// Source keys of `ane-constraints.md`, written out so that an error says where a limit comes
/// from without the reader opening that file.
pub mod source {
    pub const IRONMILL: &str = "jafreck/ironmill docs/design/ane-constraints.md";
    pub const MADERIX: &str = "maderix/ANE";
    pub const MADERIX_M5: &str = "maderix/ANE PR #35 (M5 notes)";
    pub const MADERIX_M1: &str = "maderix/ANE PR #6 and its benchmark report (M1 generation)";
    pub const MADERIX_M3: &str = "maderix/ANE benchmark report and issue #42 (M3 Pro, M3 Ultra)";
    pub const MADERIX_M4_KERNELS: &str = "maderix/ANE (72 kernels held on an M4)";
    pub const ORION: &str = "mechramc/Orion docs/ane_constraints.md";
    pub const ORION_CONCAT: &str = "mechramc/Orion docs/ane_constraints.md (M4 Max)";
    pub const RUSTANE: &str = "ncdrone/rustane README (M4 Max)";
    pub const FIELD_GUIDE: &str = "skyfallsin's ANE field guide";
    pub const MADERIX_SDPA: &str = "maderix/ANE (the SDPA op ignores its mask)";
    pub const UNKNOWN_LITERALS: &str =
        "maderix/ANE and the public benches (every reference writes %f, %g or hex)";
    pub const SURFACES: &str = "jafreck/ironmill, mechramc/Orion #4, maderix/ANE PR #16";
}

/// One thing a chip enforces. The figures are the rule's limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rule {
    /// No axis of any tensor may be longer than this.
    MaxAxisExtent(usize),
    /// The inner (reduced) dimension of a matmul, or a conv's input channels, at most this.
    MaxMatmulInner(usize),
    /// A conv kernel's height and width at most this.
    MaxConvKernel(usize),
    /// Every function input and output has a spatial (last) width that is a multiple of this;
    /// other widths corrupt data silently.
    SpatialMultipleOf(usize),
    /// An input or output `[1, C, 1, S]` with more than `channels` channels needs `S` of at
    /// least `min_width`.
    WideIoWidth { channels: usize, min_width: usize },
    /// An input that carries runtime weights (matmul operands sliced from its spatial axis
    /// past the activations) is at least this wide.
    RuntimeOperandWidth(usize),
    /// A runtime weight (see [`Rule::RuntimeOperandWidth`]) is at most this in either matrix
    /// axis.
    MaxRuntimeMatrix(usize),
    /// Only convs of these channel counts compile.
    OnlyConvChannels(&'static [usize]),
    /// An op the chip refuses, or runs wrong.
    RefusedOp { op: &'static str, why: &'static str },
    /// int8 only as storage: no int8 function output, no op computing on int8 but a cast.
    Int8StorageOnly,
    /// Float literals in a form a reference writes (`0.125000`, `0x1p-3`), never `8.8e-2`.
    PlainFloatLiterals,
    /// Programs must be written in this dialect.
    Dialect(Dialect),
    /// Each weight file holds one tensor.
    OneTensorPerWeightFile,
    /// Baked weights of one program above this many bytes are reported to fail, depending on
    /// the op and buffer count.
    ProgramWeightBytes(u64),
    /// Kernels loaded at once.
    MaxLoadedKernels(usize),
    /// Compiles per process, after which every compile fails.
    MaxCompilesPerProcess(u64),
    /// I/O surfaces are aligned to this many bytes.
    SurfaceAlignment(usize),
    /// I/O surfaces are at least this many bytes.
    MinSurfaceBytes(usize),
}

impl Rule {
    /// A short, stable name for messages and tables.
    pub fn name(&self) -> &'static str {
        match self {
            Rule::MaxAxisExtent(_) => "axis-extent",
            Rule::MaxMatmulInner(_) => "matmul-inner",
            Rule::MaxConvKernel(_) => "conv-kernel",
            Rule::SpatialMultipleOf(_) => "spatial-multiple",
            Rule::WideIoWidth { .. } => "wide-io-width",
            Rule::RuntimeOperandWidth(_) => "runtime-operand-width",
            Rule::MaxRuntimeMatrix(_) => "runtime-matrix",
            Rule::OnlyConvChannels(_) => "conv-channels",
            Rule::RefusedOp { .. } => "refused-op",
            Rule::Int8StorageOnly => "int8-storage",
            Rule::PlainFloatLiterals => "float-literal",
            Rule::Dialect(_) => "dialect",
            Rule::OneTensorPerWeightFile => "one-tensor-per-file",
            Rule::ProgramWeightBytes(_) => "program-weights",
            Rule::MaxLoadedKernels(_) => "loaded-kernels",
            Rule::MaxCompilesPerProcess(_) => "compiles-per-process",
            Rule::SurfaceAlignment(_) => "surface-alignment",
            Rule::MinSurfaceBytes(_) => "surface-size",
        }
    }

    /// Rules of the same kind replace each other: a chip's own figure replaces the common one.
    fn same_kind(&self, other: &Rule) -> bool {
        match (self, other) {
            (Rule::RefusedOp { op: a, .. }, Rule::RefusedOp { op: b, .. }) => a == b,
            _ => std::mem::discriminant(self) == std::mem::discriminant(other),
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rule::MaxAxisExtent(n) => write!(f, "no tensor axis longer than {n}"),
            Rule::MaxMatmulInner(n) => write!(f, "matmul inner dimension at most {n}"),
            Rule::MaxConvKernel(n) => write!(f, "conv kernels at most {n}×{n}"),
            Rule::SpatialMultipleOf(n) => {
                write!(f, "input and output widths a multiple of {n}")
            }
            Rule::WideIoWidth {
                channels,
                min_width,
            } => write!(
                f,
                "inputs and outputs of more than {channels} channels at least {min_width} wide"
            ),
            Rule::RuntimeOperandWidth(n) => {
                write!(f, "inputs carrying runtime weights at least {n} wide")
            }
            Rule::MaxRuntimeMatrix(n) => {
                write!(f, "runtime weights at most {n}×{n}")
            }
            Rule::OnlyConvChannels(counts) => {
                let list: Vec<String> = counts.iter().map(usize::to_string).collect();
                write!(f, "convs of only {} channels", list.join(" or "))
            }
            Rule::RefusedOp { op, why } => write!(f, "no `{op}` ({why})"),
            Rule::Int8StorageOnly => f.write_str("int8 only as storage, cast to fp16"),
            Rule::PlainFloatLiterals => {
                f.write_str("float literals in fixed or hex form, not exponent form")
            }
            Rule::Dialect(d) => write!(f, "programs in the {} dialect", dialect_name(*d)),
            Rule::OneTensorPerWeightFile => f.write_str("one tensor per weight file"),
            Rule::ProgramWeightBytes(n) => {
                write!(
                    f,
                    "baked weights of one program about {} MB at most",
                    n / 1_000_000
                )
            }
            Rule::MaxLoadedKernels(n) => write!(f, "at most {n} kernels loaded at once"),
            Rule::MaxCompilesPerProcess(n) => write!(f, "at most {n} compiles per process"),
            Rule::SurfaceAlignment(n) => write!(f, "I/O surfaces aligned to {n} bytes"),
            Rule::MinSurfaceBytes(n) => write!(f, "I/O surfaces of at least {n} bytes"),
        }
    }
}

fn dialect_name(d: Dialect) -> &'static str {
    match d {
        Dialect::Ios18 => "ios18 (program(1.3))",
        Dialect::Ios16 => "ios16 (program(1.0))",
    }
}

/// What breaking a rule means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Severity {
    /// The chip refuses it, or computes wrong: the program is not handed to the framework.
    Refused,
    /// Reported to fail in some cases, or sources disagree: said, and compiled anyway.
    Caution,
}

/// A rule, who reported it, and whether breaking it is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChipRule {
    pub rule: Rule,
    pub source: &'static str,
    pub severity: Severity,
}

impl ChipRule {
    pub fn refuses(&self) -> bool {
        self.severity == Severity::Refused
    }
}

const fn rule(rule: Rule, source: &'static str) -> ChipRule {
    ChipRule {
        rule,
        source,
        severity: Severity::Refused,
    }
}

const fn caution(rule: Rule, source: &'static str) -> ChipRule {
    ChipRule {
        rule,
        source,
        severity: Severity::Caution,
    }
}

/// The rules of every chip, at the strictest figure reported for any; a chip's own rules (its
/// row of the chip table) add to these or replace one of the same kind.
pub const COMMON: &[ChipRule] = &[
    rule(Rule::MaxAxisExtent(16_384), source::IRONMILL),
    rule(Rule::MaxMatmulInner(16_384), source::IRONMILL),
    rule(Rule::MaxConvKernel(16), source::IRONMILL),
    rule(Rule::SpatialMultipleOf(16), source::RUSTANE),
    rule(
        Rule::WideIoWidth {
            channels: 768,
            min_width: 32,
        },
        source::IRONMILL,
    ),
    rule(Rule::RuntimeOperandWidth(32), source::FIELD_GUIDE),
    rule(
        Rule::RefusedOp {
            op: "tile",
            why: "corrupts the engine's state until the process exits",
        },
        source::FIELD_GUIDE,
    ),
    rule(
        Rule::RefusedOp {
            op: "gather",
            why: "unsupported at run time",
        },
        source::IRONMILL,
    ),
    rule(
        Rule::RefusedOp {
            op: "scaled_dot_product_attention",
            why: "ignores its mask",
        },
        source::MADERIX_SDPA,
    ),
    rule(Rule::Int8StorageOnly, source::IRONMILL),
    rule(Rule::PlainFloatLiterals, source::UNKNOWN_LITERALS),
    // A caution: the original bakes 9.4 MB into its FFN kernels on the M4.
    caution(Rule::ProgramWeightBytes(8_000_000), source::IRONMILL),
    rule(Rule::MaxLoadedKernels(55), source::IRONMILL),
    rule(Rule::MaxCompilesPerProcess(119), source::MADERIX),
    rule(Rule::SurfaceAlignment(128), source::MADERIX_M5),
    rule(Rule::MinSurfaceBytes(49_152), source::SURFACES),
];

/// The M1 generation's rules.
pub const M1: &[ChipRule] = &[
    rule(Rule::Dialect(Dialect::Ios16), source::MADERIX_M1),
    rule(Rule::OneTensorPerWeightFile, source::MADERIX_M1),
];

/// The M3 Pro and M3 Ultra's rules.
pub const M3_512: &[ChipRule] = &[rule(Rule::OnlyConvChannels(&[512]), source::MADERIX_M3)];

/// The M4's rules: the only chip whose loaded-kernel count was measured above the common figure.
pub const M4: &[ChipRule] = &[rule(Rule::MaxLoadedKernels(72), source::MADERIX_M4_KERNELS)];

/// The M4 Max's rules: `concat` reported refused there, yet it works on the M4 (maderix/ANE),
/// so a caution.
pub const M4_MAX: &[ChipRule] = &[caution(
    Rule::RefusedOp {
        op: "concat",
        why: "reported refused on the M4 Max",
    },
    source::ORION_CONCAT,
)];

/// The M5 generation's rules.
pub const M5: &[ChipRule] = &[rule(Rule::MaxRuntimeMatrix(4096), source::MADERIX_M5)];

/// The rules in force on one chip: the common ones, with the chip's own added or in place of
/// those of the same kind.
#[derive(Clone, Debug, PartialEq)]
pub struct ChipRules {
    /// The chip's name, or `an unknown chip`.
    pub chip: String,
    pub rules: Vec<ChipRule>,
}

impl ChipRules {
    pub fn new(chip: &str, own: &[ChipRule]) -> ChipRules {
        let mut rules: Vec<ChipRule> = COMMON
            .iter()
            .filter(|c| !own.iter().any(|o| o.rule.same_kind(&c.rule)))
            .copied()
            .collect();
        rules.extend_from_slice(own);
        ChipRules {
            chip: chip.to_string(),
            rules,
        }
    }

    /// The first rule of a kind, picked by `f`.
    fn find<T>(&self, f: impl Fn(&Rule) -> Option<T>) -> Option<(T, &'static str)> {
        self.rules
            .iter()
            .find_map(|r| f(&r.rule).map(|v| (v, r.source)))
    }

    /// Kernels the chip holds loaded at once.
    pub fn max_loaded_kernels(&self) -> Option<(usize, &'static str)> {
        self.find(|r| match r {
            Rule::MaxLoadedKernels(n) => Some(*n),
            _ => None,
        })
    }

    /// Compiles a process may make.
    pub fn max_compiles(&self) -> Option<(u64, &'static str)> {
        self.find(|r| match r {
            Rule::MaxCompilesPerProcess(n) => Some(*n),
            _ => None,
        })
    }

    /// The byte alignment of I/O surfaces.
    pub fn surface_alignment(&self) -> usize {
        self.find(|r| match r {
            Rule::SurfaceAlignment(n) => Some(*n),
            _ => None,
        })
        .map_or(1, |(n, _)| n)
    }

    /// The smallest I/O surface, in bytes.
    pub fn min_surface_bytes(&self) -> usize {
        self.find(|r| match r {
            Rule::MinSurfaceBytes(n) => Some(*n),
            _ => None,
        })
        .map_or(0, |(n, _)| n)
    }

    /// The dialect the chip needs, if it needs one.
    pub fn dialect(&self) -> Option<Dialect> {
        self.find(|r| match r {
            Rule::Dialect(d) => Some(*d),
            _ => None,
        })
        .map(|(d, _)| d)
    }

    /// Every break of a program rule: refusals and cautions, in program order. A program that
    /// does not type-check is the checker's error.
    pub fn check(&self, program: &Program) -> Result<Vec<Violation>, Box<CheckError>> {
        let checked = check_program(program).map_err(Box::new)?;
        Ok(self.check_typed(program, &checked.types))
    }

    /// [`ChipRules::check`] of a program already checked: `types` has the type of every value.
    pub fn check_typed(&self, program: &Program, types: &HashMap<String, Type>) -> Vec<Violation> {
        let mut found = Vec::new();
        for rule in &self.rules {
            let mut at = |place: String, value: String| {
                found.push(Violation {
                    chip: self.chip.clone(),
                    rule: *rule,
                    at: place,
                    value,
                });
            };
            check_rule(&rule.rule, program, types, &mut at);
        }
        found
    }

    /// A violation of the first rule `which` picks, at `at` with `value`: for the rules of a
    /// run, which the device and the trainer apply.
    pub fn violation(&self, which: impl Fn(&Rule) -> bool, at: String, value: String) -> Violation {
        let rule = self
            .rules
            .iter()
            .find(|r| which(&r.rule))
            .copied()
            .expect("the rule asked for is in the table");
        Violation {
            chip: self.chip.clone(),
            rule,
            at,
            value,
        }
    }

    /// The refusals of [`ChipRules::check`] only.
    pub fn refusals(&self, program: &Program) -> Result<Vec<Violation>, Box<CheckError>> {
        let mut found = self.check(program)?;
        found.retain(|v| v.rule.refuses());
        Ok(found)
    }
}

/// A program breaking a chip's rule: where, with what value, and the rule with its source.
#[derive(Clone, Debug, PartialEq)]
pub struct Violation {
    pub chip: String,
    pub rule: ChipRule,
    /// The op, tensor or function input concerned.
    pub at: String,
    /// What was found there.
    pub value: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verb = if self.rule.refuses() {
            "refuses"
        } else {
            "may refuse"
        };
        write!(
            f,
            "the {} {verb} {}: {}, against the rule `{}`: {} (from {})",
            self.chip,
            self.at,
            self.value,
            self.rule.rule.name(),
            self.rule.rule,
            self.rule.source
        )
    }
}

/// Ops that move data without computing: a matmul operand reached through these alone from a
/// slice of an input's spatial axis past its first column is a runtime weight, as the dynamic
/// pipeline lays them out (the activations fill the first columns).
const DATA_MOVES: &[&str] = &[
    "slice_by_size",
    "slice_by_index",
    "reshape",
    "transpose",
    "cast",
    "expand_dims",
    "squeeze",
];

fn op_place(op: &Op) -> String {
    format!("op `{}` ({})", op.name().unwrap_or(&op.output), op.kind)
}

fn var_args(op: &Op) -> impl Iterator<Item = &str> {
    op.args.iter().flat_map(|(_, a)| match a {
        Arg::Var(v) => vec![v.as_str()],
        Arg::Tuple(vs) => vs.iter().map(String::as_str).collect(),
        Arg::Literal(_) => Vec::new(),
    })
}

fn literals(op: &Op) -> impl Iterator<Item = &Literal> {
    op.attrs
        .iter()
        .map(|(_, l)| l)
        .chain(op.args.iter().filter_map(|(_, a)| match a {
            Arg::Literal(l) => Some(l),
            _ => None,
        }))
}

fn var_shape<'t>(types: &'t HashMap<String, Type>, op: &Op, key: &str) -> Option<&'t [usize]> {
    match op.arg(key) {
        Some(Arg::Var(v)) => types.get(v).map(Type::shape),
        _ => None,
    }
}

/// The literal an op's argument `key` holds: written in place, or the value of the `const`
/// op it names.
fn arg_literal<'p>(program: &'p Program, op: &'p Op, key: &str) -> Option<&'p Literal> {
    match op.arg(key)? {
        Arg::Literal(l) => Some(l),
        Arg::Var(v) => program
            .functions
            .iter()
            .flat_map(|f| &f.ops)
            .find(|o| o.kind == "const" && &o.output == v)
            .and_then(|o| o.attr("val")),
        Arg::Tuple(_) => None,
    }
}

fn const_bool(program: &Program, op: &Op, key: &str) -> bool {
    matches!(
        arg_literal(program, op, key),
        Some(Literal::Scalar {
            value: Scalar::Bool(true),
            ..
        })
    )
}

/// Whether `op` slices its input's last (spatial) axis from past its first column.
fn slices_past_the_first_column(program: &Program, op: &Op) -> bool {
    if op.kind != "slice_by_size" && op.kind != "slice_by_index" {
        return false;
    }
    let begin = arg_literal(program, op, "begin").and_then(Literal::as_ints);
    begin.and_then(|b| b.last().copied()).is_some_and(|c| c > 0)
}

/// For each matmul operand that is a runtime weight (see [`DATA_MOVES`]): the matmul, the
/// operand and the input it comes from.
fn runtime_operands(program: &Program) -> Vec<(&Op, &str, &str)> {
    let mut found = Vec::new();
    for function in &program.functions {
        let inputs: BTreeSet<&str> = function.inputs.iter().map(|p| p.name.as_str()).collect();
        // Values that are a runtime weight, with the input they come from.
        let mut weight_of: HashMap<&str, &str> = HashMap::new();
        for op in &function.ops {
            if DATA_MOVES.contains(&op.kind.as_str()) {
                if let Some(Arg::Var(x)) = op.arg("x") {
                    let from = match weight_of.get(x.as_str()) {
                        Some(&input) => Some(input),
                        None if inputs.contains(x.as_str())
                            && slices_past_the_first_column(program, op) =>
                        {
                            inputs.get(x.as_str()).copied()
                        }
                        None => None,
                    };
                    if let Some(input) = from {
                        weight_of.insert(&op.output, input);
                    }
                }
            }
            if op.kind == "matmul" {
                for key in ["x", "y"] {
                    if let Some(Arg::Var(v)) = op.arg(key) {
                        if let Some(&input) = weight_of.get(v.as_str()) {
                            found.push((op, v.as_str(), input));
                        }
                    }
                }
            }
        }
    }
    found
}

fn check_rule(
    rule: &Rule,
    program: &Program,
    types: &HashMap<String, Type>,
    at: &mut impl FnMut(String, String),
) {
    let functions = &program.functions;
    let ops = || functions.iter().flat_map(|f| f.ops.iter());
    let io = || {
        functions.iter().flat_map(|f| {
            let inputs = f.inputs.iter().map(|p| ("input", p.name.as_str(), &p.ty));
            let outputs = f
                .outputs
                .iter()
                .filter_map(|o| types.get(o).map(|ty| ("output", o.as_str(), ty)));
            inputs.chain(outputs)
        })
    };
    match *rule {
        Rule::MaxAxisExtent(limit) => {
            for f in functions {
                for p in &f.inputs {
                    if let Some(&n) = p.ty.shape().iter().max().filter(|&&n| n > limit) {
                        at(format!("input `{}`", p.name), format!("an axis of {n}"));
                    }
                }
            }
            for op in ops() {
                let declared = std::iter::once(op.ty.clone()).chain(literals(op).map(Literal::ty));
                if let Some(n) = declared
                    .flat_map(|ty| ty.shape().to_vec())
                    .max()
                    .filter(|&n| n > limit)
                {
                    at(op_place(op), format!("a tensor with an axis of {n}"));
                }
            }
        }
        Rule::MaxMatmulInner(limit) => {
            for op in ops() {
                let inner = match op.kind.as_str() {
                    "matmul" => var_shape(types, op, "x").and_then(|x| {
                        let last = x.len().checked_sub(1)?;
                        let axis = if const_bool(program, op, "transpose_x") {
                            last.checked_sub(1)?
                        } else {
                            last
                        };
                        Some(x[axis])
                    }),
                    "conv" | "linear" => var_shape(types, op, "x").and_then(|x| {
                        x.get(if op.kind == "conv" { 1 } else { x.len() - 1 })
                            .copied()
                    }),
                    _ => None,
                };
                if let Some(n) = inner.filter(|&n| n > limit) {
                    at(op_place(op), format!("an inner dimension of {n}"));
                }
            }
        }
        Rule::MaxConvKernel(limit) => {
            for op in ops().filter(|o| o.kind == "conv") {
                if let Some(w) = var_shape(types, op, "weight") {
                    let (kh, kw) = (w.get(2).copied(), w.get(3).copied());
                    if kh.max(kw).unwrap_or(1) > limit {
                        at(
                            op_place(op),
                            format!("a {}×{} kernel", kh.unwrap_or(1), kw.unwrap_or(1)),
                        );
                    }
                }
            }
        }
        Rule::SpatialMultipleOf(n) => {
            for (what, name, ty) in io() {
                let width = ty.shape().last().copied().unwrap_or(1);
                if n > 0 && width % n != 0 {
                    at(
                        format!("{what} `{name}` ({ty})"),
                        format!("a width of {width}"),
                    );
                }
            }
        }
        Rule::WideIoWidth {
            channels,
            min_width,
        } => {
            for (what, name, ty) in io() {
                let shape = ty.shape();
                let (c, width) = (shape.get(1).copied(), shape.last().copied());
                if let (Some(c), Some(width)) = (c, width) {
                    if shape.len() == 4 && c > channels && width < min_width {
                        at(
                            format!("{what} `{name}` ({ty})"),
                            format!("{c} channels {width} wide"),
                        );
                    }
                }
            }
        }
        Rule::RuntimeOperandWidth(min) => {
            let inputs: BTreeSet<&str> = runtime_operands(program)
                .into_iter()
                .map(|(_, _, input)| input)
                .collect();
            for f in functions {
                for p in f.inputs.iter().filter(|p| inputs.contains(p.name.as_str())) {
                    let width = p.ty.shape().last().copied().unwrap_or(1);
                    if width < min {
                        at(
                            format!("input `{}` ({})", p.name, p.ty),
                            format!("runtime weights in a width of {width}"),
                        );
                    }
                }
            }
        }
        Rule::MaxRuntimeMatrix(limit) => {
            for (op, operand, input) in runtime_operands(program) {
                let shape = types.get(operand).map(Type::shape).unwrap_or(&[]);
                let matrix = &shape[shape.len().saturating_sub(2)..];
                if matrix.iter().any(|&n| n > limit) {
                    let dims: Vec<String> = matrix.iter().map(usize::to_string).collect();
                    at(
                        op_place(op),
                        format!(
                            "the operand `{operand}` from input `{input}` is {}",
                            dims.join("×")
                        ),
                    );
                }
            }
        }
        Rule::OnlyConvChannels(allowed) => {
            for op in ops().filter(|o| o.kind == "conv") {
                let channels = [var_shape(types, op, "x"), Some(op.ty.shape())]
                    .into_iter()
                    .flatten()
                    .filter_map(|s| s.get(1).copied());
                for c in channels.filter(|c| !allowed.contains(c)).take(1) {
                    at(op_place(op), format!("{c} channels"));
                }
            }
        }
        Rule::RefusedOp { op: kind, .. } => {
            for op in ops().filter(|o| o.kind == kind) {
                at(op_place(op), "this op".into());
            }
        }
        Rule::Int8StorageOnly => {
            let is_int8 = |ty: &Type| matches!(ty.dtype(), DType::Int8 | DType::UInt8);
            for (what, name, ty) in io().filter(|(what, ..)| *what == "output") {
                if is_int8(ty) {
                    at(format!("{what} `{name}` ({ty})"), "an int8 output".into());
                }
            }
            for op in ops().filter(|o| !matches!(o.kind.as_str(), "const" | "cast")) {
                let int8_arg = var_args(op).find(|v| types.get(*v).is_some_and(is_int8));
                if let Some(v) = int8_arg {
                    at(op_place(op), format!("computes on the int8 value `{v}`"));
                }
            }
        }
        Rule::PlainFloatLiterals => {
            for op in ops() {
                for lit in literals(op) {
                    let texts: Vec<&str> = match lit {
                        Literal::Scalar {
                            value: Scalar::Float(f),
                            ..
                        } => vec![f.text.as_str()],
                        Literal::Tensor { values, .. } => values
                            .iter()
                            .filter_map(|v| match v {
                                Scalar::Float(f) => Some(f.text.as_str()),
                                _ => None,
                            })
                            .collect(),
                        _ => Vec::new(),
                    };
                    if let Some(text) = texts.into_iter().find(|t| is_exponent_form(t)) {
                        at(op_place(op), format!("the literal `{text}`"));
                    }
                }
            }
        }
        Rule::Dialect(needed) => {
            if program.dialect != needed {
                at(
                    "the program".into(),
                    format!("the {} dialect", dialect_name(program.dialect)),
                );
            }
        }
        Rule::OneTensorPerWeightFile => {
            let mut offsets: BTreeMap<&str, BTreeSet<u64>> = BTreeMap::new();
            for lit in ops().flat_map(literals) {
                if let Literal::Blob { path, offset, .. } = lit {
                    offsets.entry(path).or_default().insert(*offset);
                }
            }
            for (path, o) in offsets.into_iter().filter(|(_, o)| o.len() > 1) {
                at(
                    format!("weight file `{path}`"),
                    format!("{} tensors", o.len()),
                );
            }
        }
        Rule::ProgramWeightBytes(limit) => {
            for f in functions {
                let bytes = cost::weight_values(f) * 2;
                if bytes > limit {
                    at(
                        format!("function `{}`", f.name),
                        format!("{bytes} bytes of fp16 weights"),
                    );
                }
            }
        }
        // Rules of a run, not of a program: the device and the trainer apply them.
        Rule::MaxLoadedKernels(_)
        | Rule::MaxCompilesPerProcess(_)
        | Rule::SurfaceAlignment(_)
        | Rule::MinSurfaceBytes(_) => {}
    }
}

/// `8.8e-2` or `1E5`, but not a hex float (`0x1p-3`, whose `e` would be a hex digit).
fn is_exponent_form(text: &str) -> bool {
    let body = text.trim_start_matches(['-', '+']);
    !body.starts_with("0x") && !body.starts_with("0X") && body.contains(['e', 'E'])
}

/// The kinds of rule in the tables.
#[cfg(test)]
fn every_rule_kind() -> std::collections::HashSet<&'static str> {
    [COMMON, M1, M3_512, M4, M4_MAX, M5]
        .iter()
        .flat_map(|rules| rules.iter().map(|r| r.rule.name()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use anetrain_mil::{examples, parse_program};

    fn common() -> ChipRules {
        ChipRules::new("test chip", &[])
    }

    fn names(found: &[Violation]) -> Vec<&'static str> {
        found.iter().map(|v| v.rule.rule.name()).collect()
    }

    #[test]
    fn the_examples_pass_the_common_rules() {
        for program in [
            examples::conv_fp32_io(),
            examples::conv_chain(2, 64, 32),
            examples::final_rmsnorm(64, 32),
            examples::dynamic_matmul(64, 64, 32),
        ] {
            assert_eq!(common().refusals(&program).unwrap(), vec![]);
        }
    }

    #[test]
    fn a_chip_rule_replaces_the_common_rule_of_its_kind() {
        let m4 = ChipRules::new("M4", M4);
        assert_eq!(m4.max_loaded_kernels().map(|(n, _)| n), Some(72));
        assert_eq!(common().max_loaded_kernels().map(|(n, _)| n), Some(55));
        let kinds = |r: &ChipRules| {
            r.rules
                .iter()
                .filter(|c| c.rule.name() == "loaded-kernels")
                .count()
        };
        assert_eq!(kinds(&m4), 1);
        // Two refused ops are two rules, not one replacing the other.
        let m4_max = ChipRules::new("M4 Max", M4_MAX);
        let refused = m4_max
            .rules
            .iter()
            .filter(|c| c.rule.name() == "refused-op")
            .count();
        assert_eq!(refused, 4);
        assert!(every_rule_kind().len() >= 18);
    }

    #[test]
    fn a_flattened_weight_block_breaks_the_axis_limit_and_names_it() {
        let text = "program(1.3)\n\
            [buildInfo = dict<string, string>({{\"coremlc-component-MIL\", \"3510.2.1\"}})]\n\
            {\n    func main<ios18>(tensor<fp16, [1, 64, 1, 512]> x) {\n\
            tensor<int32, [4]> sh = const()[name = string(\"sh\"), val = tensor<int32, [4]>([1, 1, 1, 32768])];\n\
            tensor<fp16, [1, 1, 1, 32768]> flat = reshape(shape = sh, x = x)[name = string(\"flat\")];\n\
            tensor<int32, [4]> sh2 = const()[name = string(\"sh2\"), val = tensor<int32, [4]>([1, 64, 1, 512])];\n\
            tensor<fp16, [1, 64, 1, 512]> y = reshape(shape = sh2, x = flat)[name = string(\"y\")];\n\
            } -> (y);\n}\n";
        let program = parse_program(text).unwrap();
        let found = common().refusals(&program).unwrap();
        assert_eq!(names(&found), vec!["axis-extent"]);
        let message = found[0].to_string();
        for part in ["op `flat` (reshape)", "32768", "16384", "ironmill"] {
            assert!(message.contains(part), "{message}");
        }
    }

    #[test]
    fn io_widths_follow_the_chip() {
        // Input width 84, output width 20.
        let program = examples::dynamic_matmul(64, 64, 20);
        let found = common().refusals(&program).unwrap();
        assert_eq!(names(&found), vec!["spatial-multiple", "spatial-multiple"]);
        assert!(found[0].to_string().contains("input `x`"), "{}", found[0]);
        assert!(
            found[0].to_string().contains("a width of 84"),
            "{}",
            found[0]
        );
        assert!(
            found[1].to_string().contains("a width of 20"),
            "{}",
            found[1]
        );
        // An input 16 wide (8 activation and 8 weight columns) carries its matmul operands in
        // less than 32.
        let narrow = examples::dynamic_matmul(16, 8, 8);
        let found = common().refusals(&narrow).unwrap();
        assert_eq!(
            names(&found),
            vec!["spatial-multiple", "runtime-operand-width"]
        );
        assert!(found[1].to_string().contains("input `x`"), "{}", found[1]);
    }

    #[test]
    fn an_m5_refuses_runtime_matrices_past_4096() {
        let m5 = ChipRules::new("M5", M5);
        assert_eq!(
            m5.refusals(&examples::dynamic_matmul(64, 4096, 32))
                .unwrap(),
            vec![]
        );
        let found = m5
            .refusals(&examples::dynamic_matmul(64, 4112, 32))
            .unwrap();
        assert_eq!(names(&found), vec!["runtime-matrix"]);
        assert!(found[0].to_string().contains("4112"), "{}", found[0]);
        assert!(common()
            .refusals(&examples::dynamic_matmul(64, 4112, 32))
            .unwrap()
            .is_empty());
    }

    #[test]
    fn the_m3_pro_refuses_convs_of_other_channel_counts() {
        let m3 = ChipRules::new("M3 Pro", M3_512);
        assert!(m3
            .refusals(&examples::conv_chain(1, 512, 32))
            .unwrap()
            .is_empty());
        let found = m3.refusals(&examples::conv_chain(1, 768, 32)).unwrap();
        assert_eq!(names(&found), vec!["conv-channels"]);
        assert!(found[0].to_string().contains("768 channels"));
    }

    #[test]
    fn the_m1_needs_ios16_and_one_tensor_per_file() {
        let m1 = ChipRules::new("M1", M1);
        let mut shared = examples::conv_chain(2, 64, 32);
        for op in &mut shared.functions[0].ops {
            for (_, lit) in &mut op.attrs {
                if let Literal::Blob { path, offset, .. } = lit {
                    *offset = if path.ends_with("w1.bin") { 8384 } else { 64 };
                    *path = "@model_path/weights/weight.bin".into();
                }
            }
        }
        let found = m1.refusals(&shared).unwrap();
        assert_eq!(names(&found), vec!["dialect", "one-tensor-per-file"]);
        assert!(found[1].to_string().contains("2 tensors"));
        assert!(common().refusals(&shared).unwrap().is_empty());
    }

    #[test]
    fn exponent_literals_and_refused_ops_are_named() {
        assert!(is_exponent_form("8.8e-2") && is_exponent_form("-1E5"));
        assert!(!is_exponent_form("0x1p-3") && !is_exponent_form("0.088000"));
        let mut program = examples::final_rmsnorm(64, 32);
        let mut replaced = false;
        for op in &mut program.functions[0].ops {
            for (_, lit) in &mut op.attrs {
                if let Literal::Scalar {
                    value: Scalar::Float(f),
                    ..
                } = lit
                {
                    if !replaced {
                        f.text = format!("{:e}", f.value);
                        replaced = true;
                    }
                }
            }
        }
        assert!(replaced, "the example has a float constant");
        assert_eq!(
            names(&common().refusals(&program).unwrap()),
            vec!["float-literal"]
        );
    }

    #[test]
    fn concat_on_the_m4_max_is_a_caution() {
        let text = "program(1.3)\n\
            [buildInfo = dict<string, string>({{\"coremlc-component-MIL\", \"3510.2.1\"}})]\n\
            {\n    func main<ios18>(tensor<fp16, [1, 64, 1, 32]> x) {\n\
            int32 ax = const()[name = string(\"ax\"), val = int32(1)];\n\
            bool il = const()[name = string(\"il\"), val = bool(false)];\n\
            tensor<fp16, [1, 128, 1, 32]> y = concat(axis = ax, interleave = il, values = (x, x))[name = string(\"cat\")];\n\
            } -> (y);\n}\n";
        let program = parse_program(text).unwrap();
        let m4_max = ChipRules::new("M4 Max", M4_MAX);
        assert!(m4_max.refusals(&program).unwrap().is_empty());
        let found = m4_max.check(&program).unwrap();
        assert_eq!(names(&found), vec!["refused-op"]);
        assert!(
            found[0]
                .to_string()
                .contains("may refuse op `cat` (concat)"),
            "{}",
            found[0]
        );
        assert!(ChipRules::new("M4", M4).check(&program).unwrap().is_empty());
    }

    #[test]
    fn heavy_programs_get_a_caution_not_a_refusal() {
        let program = examples::conv_chain(8, 768, 32); // 8 × 768² fp16 = 9.4 MB
        let found = common().check(&program).unwrap();
        assert_eq!(names(&found), vec!["program-weights"]);
        assert!(found[0].to_string().contains("may refuse"));
        assert!(common().refusals(&program).unwrap().is_empty());
    }

    /// `main(x) -> (y)` with `body` (statements, one a line), for the rules' tests.
    fn program(input: &str, body: &[&str]) -> Program {
        let mut text = String::from(
            "program(1.3)\n[buildInfo = dict<string, string>({{\"coremlc-version\", \"3505.4.1\"}})]\n{\n",
        );
        text.push_str(&format!("    func main<ios18>({input} x) {{\n"));
        for line in body {
            text.push_str(&format!("        {line}\n"));
        }
        text.push_str("    } -> (y);\n}\n");
        parse_program(&text).unwrap_or_else(|e| panic!("{e}\n{text}"))
    }

    #[test]
    fn a_matmul_past_the_inner_limit_is_named() {
        // x·xᵀ: the inner dimension is x's last axis, 16,400 long (so the axis rule breaks too).
        let p = program(
            "tensor<fp16, [1, 1, 16, 16400]>",
            &[
                "bool f = const()[name=string(\"f\"), val=bool(false)];",
                "bool t = const()[name=string(\"t\"), val=bool(true)];",
                "tensor<fp16, [1,1,16,16]> y = matmul(transpose_x=f,transpose_y=t,x=x,y=x)[name=string(\"mm\")];",
            ],
        );
        let found = common().refusals(&p).unwrap();
        let inner = found.iter().find(|v| v.rule.rule.name() == "matmul-inner");
        let inner = inner.unwrap_or_else(|| panic!("{found:?}"));
        assert!(inner
            .to_string()
            .contains("op `mm` (matmul): an inner dimension of 16400"));
        assert!(names(&found).contains(&"axis-extent"));
    }

    #[test]
    fn a_conv_kernel_past_16_by_16_is_named() {
        let p = program(
            "tensor<fp16, [1, 16, 32, 32]>",
            &[
                "string pt = const()[name=string(\"pt\"), val=string(\"valid\")];",
                "tensor<int32, [2]> st = const()[name=string(\"st\"), val=tensor<int32, [2]>([1,1])];",
                "tensor<int32, [4]> pd = const()[name=string(\"pd\"), val=tensor<int32, [4]>([0,0,0,0])];",
                "tensor<int32, [2]> dl = const()[name=string(\"dl\"), val=tensor<int32, [2]>([1,1])];",
                "int32 gr = const()[name=string(\"gr\"), val=int32(1)];",
                "tensor<fp16, [16,16,17,17]> W = const()[name=string(\"W\"), val=tensor<fp16, [16,16,17,17]>(BLOBFILE(path=string(\"@model_path/weights/w.bin\"), offset=uint64(64)))];",
                "tensor<fp16, [1,16,16,16]> y = conv(dilations=dl,groups=gr,pad=pd,pad_type=pt,strides=st,weight=W,x=x)[name=string(\"conv\")];",
            ],
        );
        let found = common().refusals(&p).unwrap();
        assert_eq!(names(&found), vec!["conv-kernel"]);
        assert!(
            found[0].to_string().contains("a 17×17 kernel"),
            "{}",
            found[0]
        );
    }

    #[test]
    fn sdpa_is_refused_and_int8_is_for_storage_only() {
        let sdpa = program(
            "tensor<fp16, [1, 2, 32, 16]>",
            &["tensor<fp16, [1,2,32,16]> y = scaled_dot_product_attention(key=x,query=x,value=x)[name=string(\"sdpa\")];"],
        );
        let found = common().refusals(&sdpa).unwrap();
        assert_eq!(names(&found), vec!["refused-op"]);
        assert!(
            found[0].to_string().contains("ignores its mask"),
            "{}",
            found[0]
        );

        let int8 = program(
            "tensor<fp16, [1, 16, 1, 32]>",
            &[
                "string to8 = const()[name=string(\"to8\"), val=string(\"int8\")];",
                "tensor<int8, [1,16,1,32]> q = cast(dtype=to8,x=x)[name=string(\"q\")];",
                "tensor<int8, [1,16,1,32]> y = add(x=q,y=q)[name=string(\"sum\")];",
            ],
        );
        let found = common().refusals(&int8).unwrap();
        assert_eq!(names(&found), vec!["int8-storage", "int8-storage"]);
        let text: Vec<String> = found.iter().map(Violation::to_string).collect();
        assert!(text[0].contains("an int8 output"), "{text:?}");
        assert!(
            text[1].contains("op `sum` (add): computes on the int8 value `q`"),
            "{text:?}"
        );
    }
}
