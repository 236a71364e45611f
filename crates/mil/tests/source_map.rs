//! Errors the checker finds after parsing point at their line and column through the parser's
//! source map, as syntax errors do.

use anetrain_mil::check::check_program;
use anetrain_mil::parse_program_mapped;

/// The line and column the checker's error on `text` is located at.
fn located(text: &str) -> (usize, usize, String) {
    let (program, map) = parse_program_mapped(text).expect("the text parses");
    let error = check_program(&program).expect_err("the program has an error");
    let (line, column) = map.locate(&error).expect("the error is located");
    (line, column, error.to_string())
}

/// The 1-based line and column of the first `needle` in `text`.
fn position_of(text: &str, needle: &str) -> (usize, usize) {
    position_at(text, text.find(needle).expect("the needle is in the text"))
}

/// The 1-based line and column of byte `at` of `text`.
fn position_at(text: &str, at: usize) -> (usize, usize) {
    let before = &text[..at];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().unwrap().chars().count() + 1;
    (line, column)
}

fn program(inputs: &str, body: &str) -> String {
    format!("program(1.3)\n{{\n    func main<ios18>({inputs}) {{\n{body}    }} -> (y);\n}}\n")
}

#[test]
fn an_error_in_an_argument_points_at_the_argument() {
    let text = program(
        "tensor<fp16, [1, 64, 1, 32]> x",
        "        tensor<fp16, [1, 64, 1, 32]> y = mul(x=x,yy=x)[name=string(\"y\")];\n",
    );
    let (line, column, message) = located(&text);
    assert_eq!((line, column), position_of(&text, "yy=x"), "{message}");
    assert!(message.contains("unknown argument `yy`"), "{message}");

    let text = program(
        "tensor<fp16, [1, 64, 1, 32]> x, tensor<fp16, [1, 32, 1, 32]> z",
        "        tensor<fp16, [1, 64, 1, 32]> y = add(x=x, y=z)[name=string(\"y\")];\n",
    );
    let (line, column, message) = located(&text);
    assert_eq!((line, column), position_of(&text, "y=z"), "{message}");
    assert!(message.contains("do not broadcast"), "{message}");
}

#[test]
fn an_error_in_an_attribute_or_the_whole_op_points_at_it_or_the_statement() {
    // The second op reuses the first one's name: the `name` attribute is at fault.
    let text = program(
        "tensor<fp16, [1, 64, 1, 32]> x",
        "        tensor<fp16, [1, 64, 1, 32]> a = mul(x=x,y=x)[name=string(\"same\")];\n        \
         tensor<fp16, [1, 64, 1, 32]> y = mul(x=a,y=a)[name=string(\"same\")];\n",
    );
    let (line, column, message) = located(&text);
    let second = text.rfind("name=string").unwrap();
    assert_eq!((line, column), position_at(&text, second), "{message}");
    assert_eq!(line, 5, "{message}");
    assert!(message.contains("already used"), "{message}");

    // A declared type that disagrees with the inferred one: the statement as a whole.
    let text = program(
        "tensor<fp16, [1, 64, 1, 32]> x",
        "        tensor<fp16, [1, 64, 1, 16]> y = mul(x=x,y=x)[name=string(\"y\")];\n",
    );
    let (line, column, message) = located(&text);
    assert_eq!(
        (line, column),
        position_of(&text, "tensor<fp16, [1, 64, 1, 16]>"),
        "{message}"
    );
}

#[test]
fn an_error_in_an_input_or_the_function_points_at_it() {
    let text = program(
        "tensor<fp16, [1, 64, 1, 32]> x, tensor<fp16, [1, 64, 1, 32]> x",
        "        tensor<fp16, [1, 64, 1, 32]> y = mul(x=x,y=x)[name=string(\"y\")];\n",
    );
    let (line, column, message) = located(&text);
    assert!(message.contains("declared twice"), "{message}");
    // At the second declaration, the one at fault.
    let second = text.rfind("tensor<fp16, [1, 64, 1, 32]> x)").unwrap();
    assert_eq!((line, column), position_at(&text, second));
    assert_eq!(line, 3);

    // No outputs at all: the function.
    let text = "program(1.3)\n{\n    func main<ios18>(tensor<fp16, [1, 64, 1, 32]> x) {\n    } -> ();\n}\n";
    let (line, column, message) = located(text);
    assert_eq!((line, column), position_of(text, "func main"), "{message}");
}
