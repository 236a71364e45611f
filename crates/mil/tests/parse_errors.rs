//! Malformed inputs are rejected with the line and column (1-based, in characters) of the
//! offending token, and a message saying what was expected and what was found.

use anetrain_mil::{parse_program, ParseError};

const EXAMPLE_A: &str = include_str!("fixtures/example_a.mil");

/// Example A with `from` (which must occur exactly once) replaced by `to`.
fn example_a_with(from: &str, to: &str) -> String {
    assert_eq!(EXAMPLE_A.matches(from).count(), 1, "`{from}` is not unique");
    EXAMPLE_A.replacen(from, to, 1)
}

fn error(text: &str) -> String {
    match parse_program(text) {
        Ok(_) => panic!("parsed although malformed:\n{text}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn display_is_line_colon_column_colon_message() {
    let e: ParseError = parse_program("program(2.0)").expect_err("bad version");
    assert_eq!((e.line, e.column), (1, 9));
    assert_eq!(
        e.message,
        "unsupported program version `2.0`, expected `1.3` or `1.0`"
    );
    assert_eq!(e.to_string(), format!("1:9: {}", e.message));
}

#[test]
fn missing_semicolon() {
    let text = example_a_with("val=int32(1)];", "val=int32(1)]");
    assert_eq!(
        error(&text),
        "10:9: expected `;` after the statement defining `gr`, found `string`"
    );
}

#[test]
fn missing_equals_after_output_name() {
    let text = example_a_with("y16 = conv(", "y16(");
    assert_eq!(
        error(&text),
        "13:38: expected `=` after the output name `y16`, found `(`"
    );
    let text = example_a_with("y16 = conv(", "y16 conv(");
    assert_eq!(
        error(&text),
        "13:39: expected `=` after the output name `y16`, found `conv`"
    );
}

#[test]
fn unknown_dtype_as_statement_type() {
    let text = example_a_with("int32 gr", "fp17 gr");
    assert_eq!(
        error(&text),
        "9:9: unknown dtype `fp17`, expected a statement's output type or the `}` closing \
         function `main`"
    );
}

#[test]
fn unknown_dtype_in_tensor_type() {
    let text = example_a_with(
        "tensor<fp16, [1,64,1,32]> x16",
        "tensor<fp17, [1,64,1,32]> x16",
    );
    assert_eq!(
        error(&text),
        "11:16: unknown dtype `fp17`, expected one of fp16, fp32, int32, int16, int8, uint8, \
         uint16, uint32, uint64, bool, string"
    );
}

#[test]
fn unknown_dtype_in_literal() {
    let text = example_a_with("val=int32(1)", "val=fp17(1)");
    assert_eq!(
        error(&text),
        "9:51: unknown dtype `fp17`, expected a typed literal as the value of `val`"
    );
}

#[test]
fn unterminated_string_points_at_its_opening_quote() {
    let text = example_a_with("\"cout\"", "\"cout");
    assert_eq!(
        error(&text),
        "15:74: unterminated string, expected a closing `\"`"
    );
}

#[test]
fn unknown_string_escape() {
    let text = example_a_with("\"valid\"", "\"va\\lid\"");
    assert_eq!(
        error(&text),
        "5:62: unknown escape `\\l` in string, expected `\\\"` or `\\\\`"
    );
}

#[test]
fn bad_shape() {
    let text = example_a_with("[1,64,1,32]> x16", "[1,x,1,32]> x16");
    assert_eq!(
        error(&text),
        "11:25: expected a dimension (a non-negative integer), found `x`"
    );
    let text = example_a_with("[1,64,1,32]> x16", "[1,-64,1,32]> x16");
    assert_eq!(
        error(&text),
        "11:25: expected a dimension (a non-negative integer), found `-64`"
    );
    let text = example_a_with("[1,64,1,32]> x16", "[1,99999999999999999999999,1,32]> x16");
    assert_eq!(
        error(&text),
        "11:25: dimension `99999999999999999999999` is too large"
    );
}

#[test]
fn truncated_file() {
    let cut = EXAMPLE_A.strip_suffix("}\n").expect("final line");
    assert_eq!(
        error(cut),
        "17:1: unexpected end of input, expected `func` or the `}` closing the program"
    );
    let cut = &EXAMPLE_A[..EXAMPLE_A.find("int32(1)").expect("gr") + "int32(".len()];
    assert_eq!(
        error(cut),
        "9:57: unexpected end of input, expected a value (a number, `true`, `false` or a string)"
    );
    let cut = &EXAMPLE_A[..EXAMPLE_A.find("(y);").expect("outputs") + "(y)".len()];
    assert_eq!(
        error(cut),
        "16:13: unexpected end of input, expected `;` after the outputs of `main`"
    );
    assert_eq!(
        error(""),
        "1:1: unexpected end of input, expected `program` at the start of the input"
    );
}

#[test]
fn unsupported_version_is_named() {
    let text = example_a_with("program(1.3)", "program(1.4)");
    assert_eq!(
        error(&text),
        "1:9: unsupported program version `1.4`, expected `1.3` or `1.0`"
    );
}

#[test]
fn unexpected_character() {
    let text = example_a_with("x=x)", "x=@x)");
    assert_eq!(error(&text), "11:59: unexpected character `@`");
}

#[test]
fn text_after_the_program() {
    let text = format!("{EXAMPLE_A}junk");
    assert_eq!(
        error(&text),
        "18:1: expected end of input after the `}` closing the program, found `junk`"
    );
}

#[test]
fn columns_count_characters_not_bytes() {
    let text = example_a_with("val=string(\"valid\")]", "val=string(\"välid☃\")) ]");
    assert_eq!(
        error(&text),
        "5:68: expected `,` or `]` in the attributes of `const`, found `)`"
    );
}

#[test]
fn tensor_literal_needs_elements_or_blob() {
    let text = example_a_with(
        "tensor<int32, [2]>([1,1])];\n        tensor<int32, [4]> pd",
        "tensor<int32, [2]>(1)];\n        tensor<int32, [4]> pd",
    );
    assert_eq!(
        error(&text),
        "6:83: expected `[` (the elements) or `BLOBFILE` in the literal of type \
         `tensor<int32, [2]>`, found `1`"
    );
}

#[test]
fn blob_offset_must_be_a_non_negative_uint64() {
    let text = example_a_with("offset=uint64(64)", "offset=uint64(-64)");
    assert_eq!(
        error(&text),
        "12:158: expected the offset as a non-negative `uint64(...)` literal, found `uint64(-64)`"
    );
    let text = example_a_with("offset=uint64(64)", "offset=tensor<uint64, [1]>([64])");
    assert_eq!(
        error(&text),
        "12:158: expected the offset as a non-negative `uint64(...)` literal, found a literal \
         of type `tensor<uint64, [1]>`"
    );
}

#[test]
fn blob_path_must_be_a_string() {
    let text = example_a_with("string(\"@model_path/weights/weight.bin\")", "int32(1)");
    assert_eq!(
        error(&text),
        "12:109: expected the path as a `string(\"...\")` literal, found `int32(1)`"
    );
}

#[test]
fn missing_attribute_block() {
    let text = example_a_with("[name=string(\"cin\")]", "");
    assert_eq!(
        error(&text),
        "11:61: expected `[` and the attributes after the arguments of `cast`, found `;`"
    );
}

#[test]
fn trailing_comma_in_arguments() {
    let text = example_a_with("x=x)", "x=x,)");
    assert_eq!(error(&text), "11:61: expected an argument name, found `)`");
}

#[test]
fn numbers_are_validated_where_they_stand() {
    let text = example_a_with("val=int32(1)", "val=fp16(1.2.3)");
    assert_eq!(error(&text), "9:56: invalid number `1.2.3`");
    let text = example_a_with("val=int32(1)", "val=int32(99999999999999999999)");
    assert_eq!(
        error(&text),
        "9:57: integer `99999999999999999999` is out of range (at most 64 signed bits)"
    );
}

#[test]
fn build_info_must_map_strings_to_strings() {
    let text = example_a_with("dict<string, string>", "dict<string, int32>");
    assert_eq!(
        error(&text),
        "2:27: expected the buildInfo value type `string`, found `int32`"
    );
}

#[test]
fn wrong_start() {
    assert_eq!(
        error("programme(1.3)"),
        "1:1: expected `program` at the start of the input, found `programme`"
    );
}

#[test]
fn missing_function_close() {
    let text = example_a_with("    } -> (y);\n", "");
    assert_eq!(
        error(&text),
        "17:1: unexpected end of input, expected `->` and the outputs of `main`"
    );
}

#[test]
fn long_tokens_are_shortened_in_messages() {
    let long = "a".repeat(1000);
    let message = error(&format!("program{long}"));
    assert!(message.len() < 150, "{message}");
    assert!(message.ends_with("aaa…`"), "{message}");
}

#[test]
fn missing_program_body() {
    let header: String = EXAMPLE_A
        .lines()
        .take(2)
        .map(|l| format!("{l}\n"))
        .collect();
    assert_eq!(
        error(&header),
        "3:1: unexpected end of input, expected `{` to open the program body"
    );
    assert_eq!(
        error("program(1.0)\nfunc"),
        "2:1: expected `[buildInfo = ...]` or `{` after the program version, found `func`"
    );
}
