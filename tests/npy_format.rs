//! `.npy` reading against files NumPy wrote (`tests/fixtures/npy/make_fixtures.py`), and writing
//! read back.

use anetrain::npy;
use anetrain_mil::DType;
use std::path::PathBuf;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/npy")
        .join(name)
}

/// The fixtures' values: v[i] = i * 0.5 - 1 in C order.
fn ramp(n: usize) -> Vec<f32> {
    (0..n).map(|i| i as f32 * 0.5 - 1.0).collect()
}

#[test]
fn arrays_numpy_wrote_are_read_with_their_shape_and_values() {
    for (name, shape, data) in [
        ("f4_2x3.npy", vec![2, 3], ramp(6)),
        ("f4_2x3_v2.npy", vec![2, 3], ramp(6)),
        ("f2_1x4x1x2.npy", vec![1, 4, 1, 2], ramp(8)),
        ("f4_vector.npy", vec![5], ramp(5)),
        ("f4_scalar.npy", vec![], vec![3.25]),
        ("f4_0x3.npy", vec![0, 3], vec![]),
    ] {
        let t = npy::read(&fixture(name)).unwrap_or_else(|e| panic!("{name}: {e:#}"));
        assert_eq!((t.shape, t.data), (shape, data), "{name}");
    }
}

#[test]
fn arrays_that_cannot_be_used_are_refused_naming_the_file_and_the_reason() {
    for (name, reason) in [
        ("f4_fortran.npy", "Fortran-ordered"),
        ("f8_2x3.npy", "dtype '<f8' is not supported"),
        ("f4_big_endian.npy", "big-endian"),
    ] {
        let error = format!("{:#}", npy::read(&fixture(name)).unwrap_err());
        assert!(error.contains(name) && error.contains(reason), "{error}");
    }
}

#[test]
fn a_cut_or_padded_file_is_refused_with_the_sizes() {
    let whole = std::fs::read(fixture("f4_2x3.npy")).unwrap();
    let header_end = whole.len() - 24;
    for (len, reason) in [
        (4, "not a .npy file"),
        (9, "ends in its preamble"),
        (40, "runs past the end of the file"),
        (
            whole.len() - 1,
            "truncated: holds 23 bytes of data, shape (2, 3) of <f4 needs 24",
        ),
        (header_end, "holds 0 bytes"),
    ] {
        let error = npy::decode(&whole[..len]).unwrap_err();
        assert!(error.contains(reason), "cut at {len}: {error}");
    }
    let mut longer = whole.clone();
    longer.push(0);
    assert!(npy::decode(&longer)
        .unwrap_err()
        .contains("corrupt: holds 25 bytes"));
}

#[test]
fn written_arrays_read_back_exactly_in_fp32_and_to_the_nearest_fp16() {
    let dir = tempfile::tempdir().unwrap();
    let data: Vec<f32> = (0..24).map(|i| (i as f32 - 11.3) / 7.0).collect();
    for (dtype, round) in [
        (DType::Fp32, (|v| v) as fn(f32) -> f32),
        (DType::Fp16, |v| half::f16::from_f32(v).to_f32()),
    ] {
        let path = dir.path().join(format!("{dtype:?}.npy"));
        npy::write_atomic(&path, dtype, &[2, 3, 1, 4], &data).unwrap();
        let t = npy::read(&path).unwrap();
        assert_eq!(t.shape, [2, 3, 1, 4]);
        let expected: Vec<f32> = data.iter().map(|&v| round(v)).collect();
        assert_eq!(t.data, expected, "{dtype:?}");
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig {
        cases: 300,
        failure_persistence: None,
        ..Default::default()
    })]

    /// A damaged `.npy` (bytes overwritten, half of them in the header; then maybe cut) is an
    /// error or an array whose data fills its shape: never a panic, never an allocation by
    /// what the header claims.
    #[test]
    fn a_damaged_array_is_an_error_or_an_array_that_fills_its_shape(
        edits in proptest::collection::vec((0u32.., proptest::prelude::any::<u8>(), proptest::prelude::any::<bool>()), 0..6),
        cut in proptest::option::of(0u32..),
        fp16 in proptest::prelude::any::<bool>(),
    ) {
        let dtype = if fp16 { DType::Fp16 } else { DType::Fp32 };
        let mut bytes = npy::encode(dtype, &[2, 3, 4], &ramp(24));
        for (at, value, in_header) in edits {
            let span = if in_header { 128.min(bytes.len()) } else { bytes.len() };
            bytes[at as usize % span] = value;
        }
        if let Some(cut) = cut {
            bytes.truncate(cut as usize % (bytes.len() + 1));
        }
        if let Ok(t) = npy::decode(&bytes) {
            proptest::prop_assert_eq!(t.data.len(), t.shape.iter().product::<usize>());
        }
    }
}
