//! The printer: writes a [`Program`] in the ANE dialect, byte for byte as the original
//! generators do (see section 2 of the spec).

use crate::ir::{Arg, Dialect, Function, Literal, Op, Program, Scalar, Style, Type};
use std::fmt::Write;

/// Prints a program as MIL text. Every line ends with `\n`.
pub fn print_program(program: &Program) -> String {
    let mut out = String::new();
    let p = Printer {
        dialect: program.dialect,
        style: program.style,
    };
    p.header(&mut out, program);
    for f in &program.functions {
        p.function(&mut out, f);
    }
    out.push_str("}\n");
    out
}

struct Printer {
    dialect: Dialect,
    style: Style,
}

impl Printer {
    fn header(&self, out: &mut String, program: &Program) {
        let (version, dict_type) = match self.dialect {
            Dialect::Ios18 => ("1.3", "dict<string, string>"),
            Dialect::Ios16 => ("1.0", "dict<tensor<string, []>, tensor<string, []>>"),
        };
        let pairs: Vec<String> = program
            .build_info
            .iter()
            .map(|(k, v)| format!("{{{}, {}}}", quote(k), quote(v)))
            .collect();
        let _ = writeln!(out, "program({version})");
        let _ = writeln!(out, "[buildInfo = {dict_type}({{{}}})]", pairs.join(", "));
        out.push_str("{\n");
    }

    fn function(&self, out: &mut String, f: &Function) {
        let params: Vec<String> = f
            .inputs
            .iter()
            .map(|p| format!("{} {}", self.ty(&p.ty, true), p.name))
            .collect();
        let _ = writeln!(
            out,
            "    func {}<{}>({}) {{",
            f.name,
            f.opset,
            params.join(", ")
        );
        for op in &f.ops {
            self.statement(out, op);
        }
        let _ = writeln!(out, "    }} -> ({});", f.outputs.join(", "));
    }

    fn statement(&self, out: &mut String, op: &Op) {
        let args: Vec<String> = op
            .args
            .iter()
            .map(|(k, v)| self.keyword(k, &self.arg(v)))
            .collect();
        let attrs: Vec<String> = op
            .attrs
            .iter()
            .map(|(k, v)| self.keyword(k, &self.literal(v)))
            .collect();
        let _ = writeln!(
            out,
            "        {} {} = {}({})[{}];",
            self.ty(&op.ty, false),
            op.output,
            op.kind,
            args.join(self.arg_separator()),
            attrs.join(", ")
        );
    }

    fn keyword(&self, key: &str, value: &str) -> String {
        match self.style {
            Style::Compact => format!("{key}={value}"),
            Style::Spaced => format!("{key} = {value}"),
        }
    }

    fn arg_separator(&self) -> &'static str {
        match self.style {
            Style::Compact => ",",
            Style::Spaced => ", ",
        }
    }

    fn arg(&self, arg: &Arg) -> String {
        match arg {
            Arg::Var(v) => v.clone(),
            Arg::Tuple(vs) => format!("({})", vs.join(self.arg_separator())),
            Arg::Literal(l) => self.literal(l),
        }
    }

    /// A type. Signatures always space their shapes; statement bodies follow the style.
    fn ty(&self, ty: &Type, in_signature: bool) -> String {
        match ty {
            Type::Scalar(d) => match self.dialect {
                Dialect::Ios18 => d.mil_name().to_string(),
                Dialect::Ios16 => format!("tensor<{d}, []>"),
            },
            Type::Tensor(d, shape) => {
                let sep = if in_signature || self.style == Style::Spaced {
                    ", "
                } else {
                    ","
                };
                let dims: Vec<String> = shape.iter().map(usize::to_string).collect();
                format!("tensor<{d}, [{}]>", dims.join(sep))
            }
        }
    }

    fn literal(&self, lit: &Literal) -> String {
        match lit {
            Literal::Scalar { dtype, value } => {
                format!(
                    "{}({})",
                    self.ty(&Type::Scalar(*dtype), false),
                    scalar(value)
                )
            }
            Literal::Tensor {
                dtype,
                shape,
                values,
            } => {
                let elems: Vec<String> = values.iter().map(scalar).collect();
                format!(
                    "{}([{}])",
                    self.ty(&Type::tensor(*dtype, shape.clone()), false),
                    elems.join(self.arg_separator())
                )
            }
            Literal::Blob {
                dtype,
                shape,
                path,
                offset,
            } => {
                let path = self.keyword("path", &self.literal(&Literal::string(path)));
                let offset = self.keyword("offset", &self.literal(&Literal::uint64(*offset)));
                format!(
                    "{}(BLOBFILE({path}, {offset}))",
                    self.ty(&Type::tensor(*dtype, shape.clone()), false)
                )
            }
        }
    }
}

fn scalar(s: &Scalar) -> String {
    match s {
        Scalar::Bool(b) => b.to_string(),
        Scalar::Int(i) => i.to_string(),
        Scalar::Float(f) => f.text.clone(),
        Scalar::Str(s) => quote(s),
    }
}

/// A MIL string literal: double quotes, with `"` and `\` escaped by a backslash.
pub(crate) fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}
