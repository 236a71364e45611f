//! The parser: reads MIL text in either dialect (`program(1.3)`/`ios18` and `program(1.0)`/
//! `ios16`) and either spacing style back into a [`Program`] (section 2 of the spec).
//!
//! It is purely syntactic: whether names are defined, unique or well typed (or whether an op has
//! a `name`) is left to the checker. What it does keep is everything the printer needs to
//! reproduce the input: the exact text of float literals, the dialect and the spacing style.
//!
//! A small lexer turns the whole text into tokens first; a recursive-descent parser reads them.
//! The grammar has no recursive productions (literals hold scalars, never literals), so no
//! input can exhaust the stack.

use crate::check::CheckError;
use crate::ir::{
    Arg, DType, Dialect, FloatLit, Function, Literal, Op, Param, Program, Scalar, Style, Type,
};
use crate::print::quote;
use thiserror::Error;

/// Why a text is not a MIL program, and where.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[error("{line}:{column}: {message}")]
pub struct ParseError {
    /// 1-based line number.
    pub line: usize,
    /// 1-based column, counted in characters (not bytes).
    pub column: usize,
    /// What was expected and what was found instead.
    pub message: String,
}

impl ParseError {
    fn at(pos: Pos, message: String) -> ParseError {
        ParseError {
            line: pos.line,
            column: pos.column,
            message,
        }
    }
}

/// Parses MIL text as the printer writes it (and as the original generators wrote it).
///
/// The spacing style is taken from the first keyword `=` inside a statement: whitespace on both
/// sides means [`Style::Spaced`], anything else (or no statement with a keyword) [`Style::Compact`].
pub fn parse_program(text: &str) -> Result<Program, ParseError> {
    parse_program_mapped(text).map(|(program, _)| program)
}

/// [`parse_program`], with where each function, input, op and argument stands in the text,
/// so that an error the checker finds later can point at its line and column.
pub fn parse_program_mapped(text: &str) -> Result<(Program, SourceMap), ParseError> {
    let mut parser = Parser::new(lex(text));
    let program = parser.program()?;
    Ok((program, parser.map))
}

/// Where the parts of a parsed program stand in its text.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SourceMap {
    functions: Vec<FunctionSpans>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct FunctionSpans {
    name: String,
    start: Pos,
    inputs: Vec<(String, Pos)>,
    /// Per op, in order: where its statement starts, and where each argument and attribute
    /// key stands.
    ops: Vec<(Pos, Vec<(String, Pos)>)>,
}

impl SourceMap {
    /// The 1-based line and column of what `error` is about: the argument (or attribute) of
    /// its op, else the op, else the function input it names, else the function.
    pub fn locate(&self, error: &CheckError) -> Option<(usize, usize)> {
        // The last of a name: an error about a name given twice is about its second use.
        let f = self
            .functions
            .iter()
            .rev()
            .find(|f| f.name == error.function)?;
        let pos = match (error.op_index, &error.output) {
            (Some(i), _) => {
                let (start, keys) = f.ops.get(i)?;
                error
                    .arg
                    .as_ref()
                    .and_then(|arg| keys.iter().find(|(k, _)| k == arg))
                    .map_or(*start, |(_, pos)| *pos)
            }
            (None, Some(value)) => f
                .inputs
                .iter()
                .rev()
                .find(|(name, _)| name == value)
                .map_or(f.start, |(_, pos)| *pos),
            (None, None) => f.start,
        };
        Some((pos.line, pos.column))
    }
}

// ---------------------------------------------------------------------------------------------
// Lexer

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Pos {
    line: usize,
    column: usize,
}

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Ident(String),
    /// A number exactly as written. Whether it must be a dimension, an integer or a float
    /// depends on where it stands, so the parser decides.
    Number(String),
    /// A string literal's content, escapes resolved.
    Str(String),
    Punct(char),
    Arrow,
    End,
    /// A malformed token. The lexer stops here, and the parser reports this message when it
    /// reaches it, so that errors come out in the order they occur in the text.
    Bad(String),
}

#[derive(Clone, Debug)]
struct Token {
    tok: Tok,
    pos: Pos,
    /// Whitespace or a comment comes right before; the spacing style is read from this.
    space_before: bool,
}

struct LexError {
    pos: Pos,
    message: String,
}

/// Tokenises the whole text. The result always ends with exactly one `End` or `Bad` token.
fn lex(text: &str) -> Vec<Token> {
    let mut cur = Cursor::new(text);
    let mut tokens = Vec::new();
    loop {
        let space_before = cur.skip_trivia();
        let pos = cur.pos;
        let token = match next_token(&mut cur) {
            Ok(tok) => Token {
                tok,
                pos,
                space_before,
            },
            Err(e) => Token {
                tok: Tok::Bad(e.message),
                pos: e.pos,
                space_before,
            },
        };
        let last = matches!(token.tok, Tok::End | Tok::Bad(_));
        tokens.push(token);
        if last {
            return tokens;
        }
    }
}

/// Walks the text a character at a time, keeping the line and column.
struct Cursor<'a> {
    rest: &'a str,
    pos: Pos,
}

impl<'a> Cursor<'a> {
    fn new(text: &'a str) -> Cursor<'a> {
        Cursor {
            rest: text,
            pos: Pos { line: 1, column: 1 },
        }
    }

    fn peek(&self) -> Option<char> {
        self.rest.chars().next()
    }

    fn peek_second(&self) -> Option<char> {
        self.rest.chars().nth(1)
    }

    fn bump(&mut self) -> Option<char> {
        let mut chars = self.rest.chars();
        let c = chars.next()?;
        self.rest = chars.as_str();
        if c == '\n' {
            self.pos.line += 1;
            self.pos.column = 1;
        } else {
            self.pos.column += 1;
        }
        Some(c)
    }

    fn take_while(&mut self, keep: impl Fn(char) -> bool) -> String {
        let mut taken = String::new();
        while let Some(c) = self.peek().filter(|&c| keep(c)) {
            taken.push(c);
            self.bump();
        }
        taken
    }

    /// Skips whitespace and `//` comments; says whether there were any.
    fn skip_trivia(&mut self) -> bool {
        let mut skipped = false;
        loop {
            match (self.peek(), self.peek_second()) {
                (Some(c), _) if c.is_whitespace() => {
                    self.bump();
                }
                (Some('/'), Some('/')) => {
                    self.take_while(|c| c != '\n');
                }
                _ => return skipped,
            }
            skipped = true;
        }
    }
}

fn next_token(cur: &mut Cursor) -> Result<Tok, LexError> {
    let Some(c) = cur.peek() else {
        return Ok(Tok::End);
    };
    if c == '"' {
        return string(cur).map(Tok::Str);
    }
    if is_ident_start(c) {
        return Ok(Tok::Ident(cur.take_while(is_ident_char)));
    }
    if starts_number(c, cur.peek_second()) {
        return Ok(Tok::Number(number(cur)));
    }
    if c == '-' && cur.peek_second() == Some('>') {
        cur.bump();
        cur.bump();
        return Ok(Tok::Arrow);
    }
    if "()[]{}<>,=;".contains(c) {
        cur.bump();
        return Ok(Tok::Punct(c));
    }
    Err(LexError {
        pos: cur.pos,
        message: format!("unexpected character `{}`", c.escape_debug()),
    })
}

fn is_ident_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_'
}

fn is_ident_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

fn starts_number(c: char, next: Option<char>) -> bool {
    let digit_or_point = next.is_some_and(|n| n.is_ascii_digit() || n == '.');
    let digit = next.is_some_and(|n| n.is_ascii_digit());
    c.is_ascii_digit() || (matches!(c, '-' | '+') && digit_or_point) || (c == '.' && digit)
}

/// Takes a number's text: a sign, then letters, digits and points, with a sign allowed right
/// after an exponent marker (`1e-5`, `0x1p-3`). Validation is left to the parser, which knows
/// what kind of number it needs.
fn number(cur: &mut Cursor) -> String {
    let mut text = String::new();
    if let Some(sign) = cur.peek().filter(|c| matches!(c, '-' | '+')) {
        text.push(sign);
        cur.bump();
    }
    while let Some(c) = cur.peek() {
        let exponent_sign = matches!(c, '-' | '+') && text.ends_with(['e', 'E', 'p', 'P']);
        if !(is_ident_char(c) || c == '.' || exponent_sign) {
            break;
        }
        text.push(c);
        cur.bump();
    }
    text
}

/// A double-quoted string; `\"` and `\\` are the only escapes, as the printer writes them.
fn string(cur: &mut Cursor) -> Result<String, LexError> {
    let start = cur.pos;
    cur.bump();
    let unterminated = || LexError {
        pos: start,
        message: "unterminated string, expected a closing `\"`".to_string(),
    };
    let mut content = String::new();
    loop {
        let escape_pos = cur.pos;
        match cur.bump().ok_or_else(unterminated)? {
            '"' => return Ok(content),
            '\\' => match cur.bump().ok_or_else(unterminated)? {
                c @ ('"' | '\\') => content.push(c),
                other => {
                    return Err(LexError {
                        pos: escape_pos,
                        message: format!(
                            "unknown escape `\\{}` in string, expected `\\\"` or `\\\\`",
                            other.escape_debug()
                        ),
                    })
                }
            },
            c => content.push(c),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Parser

struct Parser {
    /// Never empty: the last token is `End` or `Bad`, and `next` never moves past it.
    tokens: Vec<Token>,
    next: usize,
    /// Decided by the first keyword `=` seen in a statement.
    style: Option<Style>,
    map: SourceMap,
}

impl Parser {
    fn new(tokens: Vec<Token>) -> Parser {
        Parser {
            tokens,
            next: 0,
            style: None,
            map: SourceMap::default(),
        }
    }

    // --- program structure

    fn program(&mut self) -> Result<Program, ParseError> {
        self.expect_word("program", "`program` at the start of the input")?;
        let dialect = self.version()?;
        // The printer always writes buildInfo, but a program without it is still a program.
        let (build_info, opening) = if self.at_punct('[') {
            (self.build_info()?, "`{` to open the program body")
        } else {
            (
                Vec::new(),
                "`[buildInfo = ...]` or `{` after the program version",
            )
        };
        self.expect_punct('{', opening)?;
        let mut functions = Vec::new();
        while !self.eat_punct('}') {
            functions.push(self.function()?);
        }
        if self.peek().tok != Tok::End {
            return Err(self.unexpected("end of input after the `}` closing the program"));
        }
        Ok(Program {
            dialect,
            style: self.style.unwrap_or(Style::Compact),
            build_info,
            functions,
        })
    }

    /// `(1.3)` or `(1.0)`, which fixes the dialect.
    fn version(&mut self) -> Result<Dialect, ParseError> {
        self.expect_punct('(', "`(` after `program`")?;
        let dialect = match &self.peek().tok {
            Tok::Number(v) if v == "1.3" => Dialect::Ios18,
            Tok::Number(v) if v == "1.0" => Dialect::Ios16,
            Tok::Number(v) => {
                let message = format!(
                    "unsupported program version `{}`, expected `1.3` or `1.0`",
                    excerpt(v)
                );
                return Err(self.error_here(message));
            }
            _ => return Err(self.unexpected("the program version `1.3` or `1.0`")),
        };
        self.bump();
        self.expect_punct(')', "`)` after the program version")?;
        Ok(dialect)
    }

    /// `[buildInfo = dict<string, string>({{"k", "v"}, ...})]`; the key and value types may
    /// also be the ios16 spelling `tensor<string, []>`.
    fn build_info(&mut self) -> Result<Vec<(String, String)>, ParseError> {
        self.expect_punct('[', "`[` to open the program attributes")?;
        self.expect_word("buildInfo", "`buildInfo` in the program attributes")?;
        self.expect_punct('=', "`=` after `buildInfo`")?;
        self.expect_word("dict", "`dict<string, string>` after `buildInfo =`")?;
        self.expect_punct('<', "`<` after `dict`")?;
        self.string_type("the buildInfo key type `string`")?;
        self.expect_punct(',', "`,` after the buildInfo key type")?;
        self.string_type("the buildInfo value type `string`")?;
        self.expect_punct('>', "`>` after the buildInfo value type")?;
        self.expect_punct('(', "`(` after the buildInfo type")?;
        self.expect_punct('{', "`{` to open the buildInfo entries")?;
        let pairs = self.list('}', "the buildInfo entries", Self::build_info_pair)?;
        self.expect_punct(')', "`)` after the buildInfo entries")?;
        self.expect_punct(']', "`]` to close the program attributes")?;
        Ok(pairs)
    }

    fn string_type(&mut self, expected: &str) -> Result<(), ParseError> {
        let pos = self.peek().pos;
        let ty = self.ty(expected)?;
        if ty != Type::Scalar(DType::String) {
            return Err(ParseError::at(
                pos,
                format!("expected {expected}, found `{ty}`"),
            ));
        }
        Ok(())
    }

    /// `{"key", "value"}`
    fn build_info_pair(&mut self) -> Result<(String, String), ParseError> {
        self.expect_punct('{', "`{` to open a buildInfo entry `{\"key\", \"value\"}`")?;
        let key = self.expect_string("the buildInfo key, a string")?;
        self.expect_punct(',', "`,` after the buildInfo key")?;
        let value = self.expect_string("the buildInfo value, a string")?;
        self.expect_punct('}', "`}` to close the buildInfo entry")?;
        Ok((key, value))
    }

    /// `func main<ios18>(<params>) { <statements> } -> (<outputs>);`
    fn function(&mut self) -> Result<Function, ParseError> {
        let start = self.peek().pos;
        self.expect_word("func", "`func` or the `}` closing the program")?;
        let name = self.expect_ident("the function name after `func`")?;
        self.map.functions.push(FunctionSpans {
            name: name.clone(),
            start,
            ..FunctionSpans::default()
        });
        self.expect_punct(
            '<',
            &format!("`<` and the opset after the function name `{name}`"),
        )?;
        let opset = self.expect_ident("the opset name, such as `ios18`")?;
        self.expect_punct('>', &format!("`>` after the opset `{opset}`"))?;
        self.expect_punct('(', &format!("`(` to open the parameters of `{name}`"))?;
        let inputs = self.list(')', &format!("the parameters of `{name}`"), Self::param)?;
        self.expect_punct('{', &format!("`{{` to open the body of `{name}`"))?;
        let mut ops = Vec::new();
        while !self.eat_punct('}') {
            ops.push(self.statement(&name)?);
        }
        self.expect_arrow(&format!("`->` and the outputs of `{name}`"))?;
        self.expect_punct('(', &format!("`(` to open the outputs of `{name}`"))?;
        let outputs = self.list(')', &format!("the outputs of `{name}`"), |p| {
            p.expect_ident("an output variable name")
        })?;
        self.expect_punct(';', &format!("`;` after the outputs of `{name}`"))?;
        Ok(Function {
            name,
            opset,
            inputs,
            ops,
            outputs,
        })
    }

    /// `tensor<fp16, [1, 64, 1, 32]> x`
    fn param(&mut self) -> Result<Param, ParseError> {
        let start = self.peek().pos;
        let ty = self.ty("a parameter type")?;
        let name = self.expect_ident(&format!("the parameter name after its type `{ty}`"))?;
        self.spans().inputs.push((name.clone(), start));
        Ok(Param { name, ty })
    }

    /// Where an argument or attribute key of the op being parsed stands.
    fn note_key(&mut self, key: &str, at: Pos) {
        if let Some((_, keys)) = self.spans().ops.last_mut() {
            keys.push((key.to_string(), at));
        }
    }

    /// The spans of the function being parsed.
    fn spans(&mut self) -> &mut FunctionSpans {
        if self.map.functions.is_empty() {
            self.map.functions.push(FunctionSpans::default());
        }
        let last = self.map.functions.len() - 1;
        &mut self.map.functions[last]
    }

    /// `<type> <output> = <op>(<args>)[<attrs>];`
    fn statement(&mut self, function: &str) -> Result<Op, ParseError> {
        let start = self.peek().pos;
        self.spans().ops.push((start, Vec::new()));
        let ty = self.ty(&format!(
            "a statement's output type or the `}}` closing function `{function}`"
        ))?;
        let output = self.expect_ident(&format!("the output name after the type `{ty}`"))?;
        self.expect_punct('=', &format!("`=` after the output name `{output}`"))?;
        let kind = self.expect_ident(&format!("the op after `{output} =`"))?;
        self.expect_punct('(', &format!("`(` after the op `{kind}`"))?;
        let args = self.list(')', &format!("the arguments of `{kind}`"), Self::argument)?;
        self.expect_punct(
            '[',
            &format!("`[` and the attributes after the arguments of `{kind}`"),
        )?;
        let attrs = self.list(']', &format!("the attributes of `{kind}`"), Self::attribute)?;
        self.expect_punct(';', &format!("`;` after the statement defining `{output}`"))?;
        Ok(Op {
            kind,
            output,
            ty,
            args,
            attrs,
        })
    }

    /// `key=value`, where the value is a variable, a tuple `(a,b)` or a literal.
    fn argument(&mut self) -> Result<(String, Arg), ParseError> {
        let at = self.peek().pos;
        let key = self.expect_ident("an argument name")?;
        self.note_key(&key, at);
        self.keyword_eq(&key)?;
        let expected = format!("a variable, a tuple or a typed literal as the value of `{key}`");
        let value = match &self.peek().tok {
            Tok::Punct('(') => {
                self.bump();
                let names = self.list(')', "the tuple", |p| {
                    p.expect_ident("a variable name in the tuple")
                })?;
                Arg::Tuple(names)
            }
            Tok::Ident(_) if self.literal_follows() => Arg::Literal(self.literal(&expected)?),
            Tok::Ident(name) => {
                let name = name.clone();
                self.bump();
                Arg::Var(name)
            }
            _ => return Err(self.unexpected(&expected)),
        };
        Ok((key, value))
    }

    /// A literal starts with a type: an identifier followed by `(` (`fp16(`) or `<`
    /// (`tensor<`). Anything else in that position is a variable name, which may itself be
    /// spelled like a dtype.
    fn literal_follows(&self) -> bool {
        matches!(
            self.tokens.get(self.next + 1).map(|t| &t.tok),
            Some(Tok::Punct('(' | '<'))
        )
    }

    /// `key=<typed literal>`
    fn attribute(&mut self) -> Result<(String, Literal), ParseError> {
        let at = self.peek().pos;
        let key = self.expect_ident("an attribute name")?;
        self.note_key(&key, at);
        self.keyword_eq(&key)?;
        let value = self.literal(&format!("a typed literal as the value of `{key}`"))?;
        Ok((key, value))
    }

    /// The `=` of a keyword argument or attribute. The first one in the program sets the style.
    fn keyword_eq(&mut self, key: &str) -> Result<(), ParseError> {
        let after_is_spaced = self
            .tokens
            .get(self.next + 1)
            .is_some_and(|t| t.space_before);
        let spaced = self.peek().space_before && after_is_spaced;
        self.expect_punct('=', &format!("`=` after `{key}`"))?;
        self.style.get_or_insert(if spaced {
            Style::Spaced
        } else {
            Style::Compact
        });
        Ok(())
    }

    // --- types

    /// `fp16` or `tensor<fp16, [1, 64]>`; a rank-0 tensor is a scalar (ios16 spelling).
    fn ty(&mut self, expected: &str) -> Result<Type, ParseError> {
        let Tok::Ident(word) = &self.peek().tok else {
            return Err(self.unexpected(expected));
        };
        if word == "tensor" {
            self.bump();
            return self.tensor_type();
        }
        match DType::from_mil_name(word) {
            Some(dtype) => {
                self.bump();
                Ok(Type::Scalar(dtype))
            }
            None => {
                let message = format!("unknown dtype `{}`, expected {expected}", excerpt(word));
                Err(self.error_here(message))
            }
        }
    }

    /// The part of `tensor<fp16, [1, 64]>` after `tensor`.
    fn tensor_type(&mut self) -> Result<Type, ParseError> {
        self.expect_punct('<', "`<` after `tensor`")?;
        let dtype = self.dtype()?;
        self.expect_punct(',', &format!("`,` after the dtype `{dtype}`"))?;
        self.expect_punct('[', "`[` to open the shape")?;
        let shape = self.list(']', "the shape", Self::dimension)?;
        self.expect_punct('>', "`>` after the shape")?;
        Ok(Type::tensor(dtype, shape))
    }

    fn dtype(&mut self) -> Result<DType, ParseError> {
        let Tok::Ident(word) = &self.peek().tok else {
            return Err(self.unexpected("a dtype such as `fp16`"));
        };
        match DType::from_mil_name(word) {
            Some(dtype) => {
                self.bump();
                Ok(dtype)
            }
            None => {
                let names: Vec<&str> = DType::ALL.iter().map(|d| d.mil_name()).collect();
                let message = format!(
                    "unknown dtype `{}`, expected one of {}",
                    excerpt(word),
                    names.join(", ")
                );
                Err(self.error_here(message))
            }
        }
    }

    fn dimension(&mut self) -> Result<usize, ParseError> {
        let expected = "a dimension (a non-negative integer)";
        let Tok::Number(text) = &self.peek().tok else {
            return Err(self.unexpected(expected));
        };
        if !text.bytes().all(|b| b.is_ascii_digit()) {
            return Err(self.unexpected(expected));
        }
        let Ok(dim) = text.parse::<usize>() else {
            let message = format!("dimension `{}` is too large", excerpt(text));
            return Err(self.error_here(message));
        };
        self.bump();
        Ok(dim)
    }

    // --- literals

    /// `<type>(<value>)`: a scalar, a tensor `tensor<int32, [4]>([0,0,0,0])` or a blob reference
    /// `tensor<fp16, [64,64,1,1]>(BLOBFILE(path=string("..."), offset=uint64(64)))`.
    fn literal(&mut self, expected: &str) -> Result<Literal, ParseError> {
        let ty = self.ty(expected)?;
        self.expect_punct('(', &format!("`(` after the literal type `{ty}`"))?;
        let dtype = ty.dtype();
        let shape = ty.shape().to_vec();
        let literal = if self.eat_punct('[') {
            let values = self.list(']', "the tensor elements", |p| p.scalar(dtype))?;
            Literal::Tensor {
                dtype,
                shape,
                values,
            }
        } else if self.at_word("BLOBFILE") {
            let (path, offset) = self.blob_file()?;
            Literal::Blob {
                dtype,
                shape,
                path,
                offset,
            }
        } else if let Type::Tensor(..) = ty {
            return Err(self.unexpected(&format!(
                "`[` (the elements) or `BLOBFILE` in the literal of type `{ty}`"
            )));
        } else {
            Literal::Scalar {
                dtype,
                value: self.scalar(dtype)?,
            }
        };
        self.expect_punct(')', &format!("`)` to close the literal of type `{ty}`"))?;
        Ok(literal)
    }

    /// `BLOBFILE(path=string("..."), offset=uint64(64))`
    fn blob_file(&mut self) -> Result<(String, u64), ParseError> {
        self.expect_word("BLOBFILE", "`BLOBFILE`")?;
        self.expect_punct('(', "`(` after `BLOBFILE`")?;
        self.expect_word("path", "`path` in `BLOBFILE(...)`")?;
        self.keyword_eq("path")?;
        let expected = "the path as a `string(\"...\")` literal";
        let pos = self.peek().pos;
        let path = match self.scalar_literal(expected)? {
            (DType::String, Scalar::Str(s)) => s,
            (dtype, value) => return Err(wrong_literal(pos, expected, dtype, &value)),
        };
        self.expect_punct(',', "`,` after the BLOBFILE path")?;
        self.expect_word("offset", "`offset` after the BLOBFILE path")?;
        self.keyword_eq("offset")?;
        let expected = "the offset as a non-negative `uint64(...)` literal";
        let pos = self.peek().pos;
        let offset = match self.scalar_literal(expected)? {
            (DType::UInt64, Scalar::Int(n)) if n >= 0 => n.unsigned_abs(),
            (dtype, value) => return Err(wrong_literal(pos, expected, dtype, &value)),
        };
        self.expect_punct(')', "`)` to close `BLOBFILE(...)`")?;
        Ok((path, offset))
    }

    /// A rank-0 literal such as `string("x")` or `tensor<uint64, []>(64)`. Kept apart from
    /// [`Parser::literal`] so that a BLOBFILE cannot nest another literal inside itself.
    fn scalar_literal(&mut self, expected: &str) -> Result<(DType, Scalar), ParseError> {
        let pos = self.peek().pos;
        let ty = self.ty(expected)?;
        let Type::Scalar(dtype) = ty else {
            return Err(ParseError::at(
                pos,
                format!("expected {expected}, found a literal of type `{ty}`"),
            ));
        };
        self.expect_punct('(', &format!("`(` after the literal type `{ty}`"))?;
        let value = self.scalar(dtype)?;
        self.expect_punct(')', &format!("`)` to close the literal of type `{ty}`"))?;
        Ok((dtype, value))
    }

    /// One value: a number, `true`, `false` or a string.
    fn scalar(&mut self, dtype: DType) -> Result<Scalar, ParseError> {
        let value = match &self.peek().tok {
            Tok::Number(text) => number_value(text, dtype).map_err(|m| self.error_here(m))?,
            Tok::Str(s) => Scalar::Str(s.clone()),
            Tok::Ident(w) if w == "true" => Scalar::Bool(true),
            Tok::Ident(w) if w == "false" => Scalar::Bool(false),
            _ => return Err(self.unexpected("a value (a number, `true`, `false` or a string)")),
        };
        self.bump();
        Ok(value)
    }

    // --- token helpers

    fn peek(&self) -> &Token {
        // `next` stays on the final token once reached, and the token list is never empty.
        &self.tokens[self.next]
    }

    fn bump(&mut self) {
        if self.next + 1 < self.tokens.len() {
            self.next += 1;
        }
    }

    fn at_punct(&self, c: char) -> bool {
        self.peek().tok == Tok::Punct(c)
    }

    fn at_word(&self, word: &str) -> bool {
        matches!(&self.peek().tok, Tok::Ident(w) if w == word)
    }

    fn eat_punct(&mut self, c: char) -> bool {
        let found = self.at_punct(c);
        if found {
            self.bump();
        }
        found
    }

    fn expect_punct(&mut self, c: char, expected: &str) -> Result<(), ParseError> {
        if self.eat_punct(c) {
            Ok(())
        } else {
            Err(self.unexpected(expected))
        }
    }

    fn expect_arrow(&mut self, expected: &str) -> Result<(), ParseError> {
        if self.peek().tok != Tok::Arrow {
            return Err(self.unexpected(expected));
        }
        self.bump();
        Ok(())
    }

    fn expect_word(&mut self, word: &str, expected: &str) -> Result<(), ParseError> {
        if !self.at_word(word) {
            return Err(self.unexpected(expected));
        }
        self.bump();
        Ok(())
    }

    fn expect_ident(&mut self, expected: &str) -> Result<String, ParseError> {
        let Tok::Ident(name) = &self.peek().tok else {
            return Err(self.unexpected(expected));
        };
        let name = name.clone();
        self.bump();
        Ok(name)
    }

    fn expect_string(&mut self, expected: &str) -> Result<String, ParseError> {
        let Tok::Str(s) = &self.peek().tok else {
            return Err(self.unexpected(expected));
        };
        let s = s.clone();
        self.bump();
        Ok(s)
    }

    /// Items separated by `,` up to `close`, which is consumed. The opening bracket has already
    /// been read. Empty lists are allowed; a trailing comma is not.
    fn list<T>(
        &mut self,
        close: char,
        what: &str,
        mut item: impl FnMut(&mut Self) -> Result<T, ParseError>,
    ) -> Result<Vec<T>, ParseError> {
        let mut items = Vec::new();
        if self.eat_punct(close) {
            return Ok(items);
        }
        loop {
            items.push(item(self)?);
            if self.eat_punct(close) {
                return Ok(items);
            }
            self.expect_punct(',', &format!("`,` or `{close}` in {what}"))?;
        }
    }

    /// The error for the current token when `expected` was wanted there.
    fn unexpected(&self, expected: &str) -> ParseError {
        let token = self.peek();
        let message = match &token.tok {
            Tok::End => format!("unexpected end of input, expected {expected}"),
            Tok::Bad(message) => message.clone(),
            found => format!("expected {expected}, found {}", describe(found)),
        };
        ParseError::at(token.pos, message)
    }

    fn error_here(&self, message: String) -> ParseError {
        ParseError::at(self.peek().pos, message)
    }
}

fn wrong_literal(pos: Pos, expected: &str, dtype: DType, value: &Scalar) -> ParseError {
    let value = match value {
        Scalar::Bool(b) => b.to_string(),
        Scalar::Int(i) => i.to_string(),
        Scalar::Float(f) => f.text.clone(),
        Scalar::Str(s) => quote(s),
    };
    ParseError::at(
        pos,
        format!("expected {expected}, found `{dtype}({})`", excerpt(&value)),
    )
}

/// Reads a number token as the value of a `dtype` literal.
///
/// Integers stay integers unless the dtype is a float: `int32(-1)` is `Int(-1)` but `fp16(-1)`
/// is a float whose text is `-1`, so that it prints back as written.
fn number_value(text: &str, dtype: DType) -> Result<Scalar, String> {
    let digits = text.strip_prefix(['-', '+']).unwrap_or(text);
    let is_integer = !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit());
    if is_integer && !dtype.is_float() {
        return text.parse::<i64>().map(Scalar::Int).map_err(|_| {
            format!(
                "integer `{}` is out of range (at most 64 signed bits)",
                excerpt(text)
            )
        });
    }
    FloatLit::from_text(text)
        .map(Scalar::Float)
        .ok_or_else(|| format!("invalid number `{}`", excerpt(text)))
}

/// How a token is named in an error message.
fn describe(tok: &Tok) -> String {
    match tok {
        Tok::Ident(s) | Tok::Number(s) => format!("`{}`", excerpt(s)),
        Tok::Str(s) => format!("the string {}", excerpt(&quote(s))),
        Tok::Punct(c) => format!("`{c}`"),
        Tok::Arrow => "`->`".to_string(),
        Tok::End => "end of input".to_string(),
        Tok::Bad(message) => message.clone(),
    }
}

/// Input-derived text shortened so that one huge token cannot swamp an error message.
fn excerpt(s: &str) -> String {
    const MAX_CHARS: usize = 40;
    let mut chars = s.chars();
    let head: String = chars
        .by_ref()
        .take(MAX_CHARS)
        .map(|c| {
            if c.is_control() {
                c.escape_debug().to_string()
            } else {
                c.to_string()
            }
        })
        .collect();
    if chars.next().is_some() {
        format!("{head}…")
    } else {
        head
    }
}
