//! The spec's three example programs (section 2.8), built with the builder, print to exactly
//! the bytes the original generators emit. The fixtures were transcribed from the spec by hand.

use anetrain_mil::{examples, print_program};

#[test]
fn example_a_conv_fp32_io_prints_byte_exact() {
    let expected = include_str!("fixtures/example_a.mil");
    assert_eq!(print_program(&examples::conv_fp32_io()), expected);
}

#[test]
fn example_b_dynamic_matmul_prints_byte_exact() {
    let expected = include_str!("fixtures/example_b.mil");
    assert_eq!(
        print_program(&examples::dynamic_matmul(64, 128, 32)),
        expected
    );
}

#[test]
fn example_c_final_rmsnorm_prints_byte_exact() {
    let expected = include_str!("fixtures/example_c.mil");
    assert_eq!(print_program(&examples::final_rmsnorm(768, 256)), expected);
}
