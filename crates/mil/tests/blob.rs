//! Core ML blob storage v2 weight files (spec section 3): exact bytes, layout, round trips,
//! validation errors, weight resolution, and robustness against arbitrary input.
//!
//! Expected bytes and fp16 bit patterns below were worked out by hand from the spec:
//! fp16(1.0) = 0x3C00, fp16(-2.0) = 0xC000, fp16(0.5) = 0x3800, fp16(2) = 0x4000,
//! fp16(3) = 0x4200, fp16(4) = 0x4400, fp16(5) = 0x4500, fp16(6) = 0x4600.

use anetrain_mil::blob::{read_chunk, BlobChunk, BlobDType, BlobError, BlobFile, WeightFiles};
use anetrain_mil::{examples, DType, Literal};
use proptest::prelude::*;

fn set_u32(bytes: &mut [u8], at: usize, v: u32) {
    bytes[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn set_u64(bytes: &mut [u8], at: usize, v: u64) {
    bytes[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

/// Three fp16 values in one chunk: 6 data bytes, file length 134.
fn three_fp16() -> BlobFile {
    BlobFile::fp16(&[1.0, -2.0, 0.5])
}

/// Chunk sizes 6 and 64 bytes: metadata at 64 and 192, file length 320.
fn two_chunks() -> BlobFile {
    let mut f = BlobFile::new();
    f.push(BlobChunk::fp16(&[1.0, -2.0, 0.5]));
    f.push(BlobChunk::fp32(
        &(0..16).map(|i| i as f32).collect::<Vec<_>>(),
    ));
    f
}

fn inner(e: BlobError) -> BlobError {
    match e {
        BlobError::InChunk { error, .. } | BlobError::InFile { error, .. } => *error,
        other => panic!("expected a wrapped error, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Exact bytes and layout

#[test]
fn single_fp16_chunk_is_byte_exact() {
    let mut expected = vec![0u8; 134];
    // File header: count 1, version 2, 56 zero bytes.
    expected[0..8].copy_from_slice(&[0x01, 0, 0, 0, 0x02, 0, 0, 0]);
    // Metadata at 64: sentinel, dtype 1 (Float16), sizeInBytes 6, data offset 128 (0x80),
    // padding bits 0, reserved 0.
    expected[64..72].copy_from_slice(&[0xEF, 0xBE, 0xAD, 0xDE, 0x01, 0, 0, 0]);
    expected[72..80].copy_from_slice(&[0x06, 0, 0, 0, 0, 0, 0, 0]);
    expected[80..88].copy_from_slice(&[0x80, 0, 0, 0, 0, 0, 0, 0]);
    // Data at 128: 1.0, -2.0, 0.5 as little-endian fp16.
    expected[128..134].copy_from_slice(&[0x00, 0x3C, 0x00, 0xC0, 0x00, 0x38]);

    let f = three_fp16();
    assert_eq!(f.mil_offsets(), vec![64]);
    assert_eq!(f.to_bytes(), expected);
}

#[test]
fn spec_64x64_example_matches_build_blob() {
    let w: Vec<f32> = (0..64 * 64).map(|i| (i % 7) as f32 - 3.0).collect();
    let bytes = BlobFile::fp16(&w).to_bytes();
    assert_eq!(bytes.len(), 8320); // 128 + 64·64·2

    // The original `build_blob(w, 64, 64)` of spec 3.4, written out field by field.
    let mut reference = vec![0u8; 8320];
    reference[0] = 1;
    reference[4] = 2;
    reference[64..68].copy_from_slice(&[0xEF, 0xBE, 0xAD, 0xDE]);
    reference[68] = 1;
    set_u32(&mut reference, 72, 64 * 64 * 2);
    set_u32(&mut reference, 80, 128);
    for (i, &v) in w.iter().enumerate() {
        let bits = half::f16::from_f32(v).to_bits();
        reference[128 + 2 * i..130 + 2 * i].copy_from_slice(&bits.to_le_bytes());
    }
    assert_eq!(bytes, reference);
}

#[test]
fn two_chunks_are_64_byte_aligned_with_zero_padding_between() {
    let mut f = BlobFile::new();
    assert_eq!(f.push(BlobChunk::fp16(&[1.0, -2.0, 0.5])), 64);
    assert_eq!(f.push(BlobChunk::fp32(&[0.0; 16])), 192);
    assert_eq!(f.mil_offsets(), vec![64, 192]);

    let bytes = f.to_bytes();
    assert_eq!(bytes.len(), 320); // 192 + 64 metadata + 64 data, no trailing padding
    assert_eq!(
        &bytes[0..4],
        &[2, 0, 0, 0],
        "count is the real number of chunks"
    );
    assert!(bytes[134..192].iter().all(|&b| b == 0), "padding is zero");
    // Second metadata: sentinel, dtype 2 (Float32), sizeInBytes 64, data offset 256.
    assert_eq!(&bytes[192..200], &[0xEF, 0xBE, 0xAD, 0xDE, 0x02, 0, 0, 0]);
    assert_eq!(&bytes[200..208], &[64, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(&bytes[208..216], &[0x00, 0x01, 0, 0, 0, 0, 0, 0]);
}

#[test]
fn offsets_follow_the_alignment_rule_for_awkward_sizes() {
    let sizes = [0usize, 1, 63, 64, 65, 127, 128, 3];
    let mut f = BlobFile::new();
    for &n in &sizes {
        f.push(BlobChunk::new(BlobDType::UInt8, vec![0xAB; n]));
    }
    // Worked by hand: each next offset = roundup64(previous offset + 64 + size).
    // 64 -(0)-> 128 -(1)-> 256 -(63)-> 384 -(64)-> 512 -(65)-> 704 -(127)-> 896 -(128)-> 1088
    assert_eq!(
        f.mil_offsets(),
        vec![64, 128, 256, 384, 512, 704, 896, 1088]
    );
    let bytes = f.to_bytes();
    assert_eq!(bytes.len(), 1088 + 64 + 3);
    assert_eq!(BlobFile::parse(&bytes).unwrap(), f);
}

#[test]
fn empty_file_is_just_the_header() {
    let bytes = BlobFile::new().to_bytes();
    assert_eq!(bytes, {
        let mut h = vec![0u8; 64];
        h[4] = 2;
        h
    });
    assert_eq!(BlobFile::parse(&bytes).unwrap(), BlobFile::new());
}

#[test]
fn fp16_matrix_transposed_maps_elements_by_hand() {
    // W is 2×3, row-major: [[1, 2, 3], [4, 5, 6]]. Wᵀ is 3×2: [[1, 4], [2, 5], [3, 6]].
    let w = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
    let f = BlobFile::fp16_matrix_transposed(&w, 2, 3);
    assert_eq!(f.chunks.len(), 1);
    assert_eq!(
        f.chunks[0].data,
        vec![0x00, 0x3C, 0x00, 0x44, 0x00, 0x40, 0x00, 0x45, 0x00, 0x42, 0x00, 0x46]
    );
    assert_eq!(f, BlobFile::fp16(&[1.0, 4.0, 2.0, 5.0, 3.0, 6.0]));
}

#[test]
#[should_panic(expected = "matrix of 2×3 needs 6 values")]
fn fp16_matrix_transposed_rejects_wrong_length() {
    BlobFile::fp16_matrix_transposed(&[1.0; 5], 2, 3);
}

#[test]
fn fp16_rounds_to_nearest_even() {
    let halfway_down = 1.0 + 2f32.powi(-11); // between 0x3C00 (even) and 0x3C01
    let halfway_up = 1.0 + 3.0 * 2f32.powi(-11); // between 0x3C01 and 0x3C02 (even)
    let f = BlobFile::fp16(&[halfway_down, halfway_up, 65504.0, 65520.0]);
    assert_eq!(
        f.chunks[0].data,
        vec![0x00, 0x3C, 0x02, 0x3C, 0xFF, 0x7B, 0x00, 0x7C] // 65520 ties to +inf
    );
}

#[test]
#[should_panic(expected = "not a whole number of elements")]
fn push_rejects_a_ragged_chunk() {
    BlobFile::new().push(BlobChunk::new(BlobDType::Float16, vec![0; 3]));
}

// ---------------------------------------------------------------------------------------------
// DType table

#[test]
fn dtype_codes_bits_and_mil_mapping() {
    for code in 1..=17 {
        let d = BlobDType::from_code(code).unwrap();
        assert_eq!(d.code(), code);
    }
    assert_eq!(BlobDType::from_code(0), None);
    assert_eq!(BlobDType::from_code(18), None);

    let bits: Vec<u32> = BlobDType::ALL.iter().map(|d| d.bits()).collect();
    assert_eq!(
        bits,
        vec![16, 32, 8, 8, 16, 16, 16, 4, 1, 2, 4, 3, 6, 32, 32, 8, 8]
    );

    let pairs = [
        (DType::Fp16, Some(BlobDType::Float16)),
        (DType::Fp32, Some(BlobDType::Float32)),
        (DType::Int8, Some(BlobDType::Int8)),
        (DType::UInt8, Some(BlobDType::UInt8)),
        (DType::Int16, Some(BlobDType::Int16)),
        (DType::UInt16, Some(BlobDType::UInt16)),
        (DType::Int32, Some(BlobDType::Int32)),
        (DType::UInt32, Some(BlobDType::UInt32)),
        (DType::UInt64, None),
        (DType::Bool, None),
        (DType::String, None),
    ];
    for (mil, blob) in pairs {
        assert_eq!(BlobDType::for_mil(mil), blob, "{mil}");
        if let Some(b) = blob {
            assert_eq!(b.mil_dtype(), Some(mil));
        }
    }
    assert_eq!(BlobDType::BFloat16.mil_dtype(), None);
    assert_eq!(BlobDType::UInt4.mil_dtype(), None);
    assert_eq!(BlobDType::Float8E5M2.mil_dtype(), None);
}

// ---------------------------------------------------------------------------------------------
// Round trips

/// One chunk of every dtype. Sub-byte chunks carry the padding coremltools writes:
/// 8 - (elements·bits mod 8) when that is not 0.
fn one_chunk_per_dtype() -> Vec<(BlobChunk, u64)> {
    let bytes = |n: usize| (0..n).map(|i| (i * 37 + 11) as u8).collect::<Vec<_>>();
    let packed = |dtype, n_bytes, padding_bits| BlobChunk {
        dtype,
        data: bytes(n_bytes),
        padding_bits,
    };
    vec![
        (BlobChunk::new(BlobDType::Float16, bytes(6)), 3),
        (BlobChunk::new(BlobDType::Float32, bytes(12)), 3),
        (BlobChunk::new(BlobDType::UInt8, bytes(5)), 5),
        (BlobChunk::new(BlobDType::Int8, bytes(5)), 5),
        (BlobChunk::new(BlobDType::BFloat16, bytes(4)), 2),
        (BlobChunk::new(BlobDType::Int16, bytes(4)), 2),
        (BlobChunk::new(BlobDType::UInt16, bytes(8)), 4),
        (packed(BlobDType::Int4, 2, 4), 3),   // 12 bits in 2 bytes
        (packed(BlobDType::UInt1, 2, 5), 11), // 11 bits in 2 bytes
        (packed(BlobDType::UInt2, 1, 2), 3),  // 6 bits in 1 byte
        (packed(BlobDType::UInt4, 2, 0), 4),  // 16 bits exactly
        (packed(BlobDType::UInt3, 2, 1), 5),  // 15 bits in 2 bytes
        (packed(BlobDType::UInt6, 4, 2), 5),  // 30 bits in 4 bytes
        (BlobChunk::new(BlobDType::Int32, bytes(8)), 2),
        (BlobChunk::new(BlobDType::UInt32, bytes(4)), 1),
        (BlobChunk::new(BlobDType::Float8E4M3FN, bytes(3)), 3),
        (BlobChunk::new(BlobDType::Float8E5M2, bytes(7)), 7),
    ]
}

#[test]
fn every_dtype_round_trips_alone_and_together() {
    let chunks = one_chunk_per_dtype();
    assert_eq!(chunks.len(), BlobDType::ALL.len());
    let mut all = BlobFile::new();
    for (chunk, elements) in &chunks {
        assert!(chunk.is_consistent(), "{chunk:?}");
        assert_eq!(chunk.num_elements(), *elements, "{:?}", chunk.dtype);

        let mut alone = BlobFile::new();
        alone.push(chunk.clone());
        let bytes = alone.to_bytes();
        assert_eq!(bytes.len(), 128 + chunk.data.len());
        assert_eq!(
            u64::from_le_bytes(bytes[88..96].try_into().unwrap()),
            chunk.padding_bits
        );
        assert_eq!(BlobFile::parse(&bytes).unwrap(), alone);
        assert_eq!(read_chunk(&bytes, 64).unwrap(), *chunk);

        all.push(chunk.clone());
    }
    let bytes = all.to_bytes();
    assert_eq!(BlobFile::parse(&bytes).unwrap(), all);
    for (offset, (chunk, _)) in all.mil_offsets().into_iter().zip(&chunks) {
        assert_eq!(offset % 64, 0);
        assert_eq!(read_chunk(&bytes, offset).unwrap(), *chunk);
    }
}

#[test]
fn conversions_to_f32() {
    let chunk = |dtype, data: Vec<u8>| BlobChunk::new(dtype, data).to_f32().unwrap();
    assert_eq!(
        three_fp16().chunks[0].to_f32().unwrap(),
        vec![1.0, -2.0, 0.5]
    );
    assert_eq!(
        BlobChunk::fp32(&[0.1, -7.25]).to_f32().unwrap(),
        vec![0.1, -7.25]
    );
    // bf16 1.5 = 0x3FC0, -2 = 0xC000.
    assert_eq!(
        chunk(BlobDType::BFloat16, vec![0xC0, 0x3F, 0x00, 0xC0]),
        vec![1.5, -2.0]
    );
    assert_eq!(BlobChunk::bf16(&[1.5]).data, vec![0xC0, 0x3F]);
    assert_eq!(chunk(BlobDType::UInt8, vec![0, 255]), vec![0.0, 255.0]);
    assert_eq!(
        BlobChunk::int8(&[-128, 127, -1]).to_f32().unwrap(),
        vec![-128.0, 127.0, -1.0]
    );
    assert_eq!(
        chunk(BlobDType::Int16, (-300i16).to_le_bytes().to_vec()),
        vec![-300.0]
    );
    assert_eq!(chunk(BlobDType::UInt16, vec![0xFF, 0xFF]), vec![65535.0]);
    assert_eq!(
        chunk(BlobDType::Int32, (-7i32).to_le_bytes().to_vec()),
        vec![-7.0]
    );
    assert_eq!(
        chunk(BlobDType::UInt32, 4_000_000_000u32.to_le_bytes().to_vec()),
        vec![4.0e9]
    );
}

#[test]
fn sub_byte_and_fp8_conversion_is_a_clear_error() {
    for dtype in [BlobDType::UInt4, BlobDType::Float8E4M3FN] {
        let err = BlobChunk::new(dtype, vec![0; 2]).to_f32().unwrap_err();
        assert_eq!(err, BlobError::UnsupportedConversion { dtype });
    }
    let err = BlobChunk::new(BlobDType::Int32, vec![0; 5])
        .to_f32()
        .unwrap_err();
    assert!(matches!(err, BlobError::InconsistentChunk { size: 5, .. }));
}

// ---------------------------------------------------------------------------------------------
// Lenient parsing, documented in the module

#[test]
fn count_rule() {
    let mut bytes = two_chunks().to_bytes();
    // The original training code writes count = 1 in multi-chunk files: accepted.
    set_u32(&mut bytes, 0, 1);
    assert_eq!(BlobFile::parse(&bytes).unwrap(), two_chunks());
    // More chunks declared than present: the file was cut short.
    set_u32(&mut bytes, 0, 3);
    assert_eq!(
        BlobFile::parse(&bytes).unwrap_err(),
        BlobError::CountMismatch {
            declared: 3,
            found: 2
        }
    );
    set_u32(&mut bytes, 0, 0);
    assert!(matches!(
        BlobFile::parse(&bytes),
        Err(BlobError::CountMismatch { declared: 0, .. })
    ));
    // A chunk looked up by its offset is held to the same rule: count 0 or 2^31 in a file of
    // two chunks is a damaged file, not a chunk to read.
    for declared in [0, 1 << 31] {
        set_u32(&mut bytes, 0, declared);
        assert_eq!(
            read_chunk(&bytes, 64).unwrap_err(),
            BlobError::CountMismatch { declared, found: 2 }
        );
    }
    set_u32(&mut bytes, 0, 2);
    assert_eq!(read_chunk(&bytes, 64).unwrap(), two_chunks().chunks[0]);
    // A bare header that promises a chunk.
    let mut header = BlobFile::new().to_bytes();
    set_u32(&mut header, 0, 1);
    assert_eq!(
        BlobFile::parse(&header).unwrap_err(),
        BlobError::CountMismatch {
            declared: 1,
            found: 0
        }
    );
}

#[test]
fn reserved_fields_and_padding_bytes_are_not_inspected() {
    let mut bytes = two_chunks().to_bytes();
    bytes[8..64].fill(0x5A); // header reserved
    bytes[64 + 32..64 + 64].fill(0xA5); // metadata reserved_1..4
    bytes[134..192].fill(0x77); // inter-chunk padding
    assert_eq!(BlobFile::parse(&bytes).unwrap(), two_chunks());
}

#[test]
fn padding_field_of_byte_sized_dtypes_is_ignored_but_kept() {
    // It was `reserved_0` before ios18, possibly uninitialised.
    let mut bytes = three_fp16().to_bytes();
    set_u64(&mut bytes, 88, 0xDEAD);
    let parsed = BlobFile::parse(&bytes).unwrap();
    assert_eq!(parsed.chunks[0].padding_bits, 0xDEAD);
    assert_eq!(parsed.chunks[0].to_f32().unwrap(), vec![1.0, -2.0, 0.5]);
    assert_eq!(parsed.to_bytes(), bytes);
}

#[test]
fn trailing_padding_up_to_a_boundary_is_accepted_but_not_more() {
    let mut bytes = three_fp16().to_bytes();
    bytes.resize(192, 0);
    assert_eq!(BlobFile::parse(&bytes).unwrap(), three_fp16());
    bytes.push(0);
    assert_eq!(
        inner(BlobFile::parse(&bytes).unwrap_err()),
        BlobError::Truncated {
            field: "chunk metadata",
            offset: 192,
            needed: 64,
            len: 193
        }
    );
}

// ---------------------------------------------------------------------------------------------
// Rejected files

#[test]
fn header_errors() {
    assert_eq!(
        BlobFile::parse(&[0; 63]).unwrap_err(),
        BlobError::FileTooShort { len: 63 }
    );
    assert_eq!(
        read_chunk(&[], 64).unwrap_err(),
        BlobError::FileTooShort { len: 0 }
    );
    let mut bytes = three_fp16().to_bytes();
    set_u32(&mut bytes, 4, 1); // Espresso blob_v1
    assert_eq!(
        BlobFile::parse(&bytes).unwrap_err(),
        BlobError::BadVersion { found: 1 }
    );
    assert_eq!(
        read_chunk(&bytes, 64).unwrap_err(),
        BlobError::BadVersion { found: 1 }
    );
}

#[test]
fn bad_sentinel_names_chunk_and_byte() {
    let mut bytes = two_chunks().to_bytes();
    bytes[192] = 0xEE;
    let err = BlobFile::parse(&bytes).unwrap_err();
    assert_eq!(
        err.to_string(),
        "chunk 1: chunk metadata at byte 192: sentinel is 0xdeadbeee, expected 0xdeadbeef"
    );
    assert_eq!(
        inner(err),
        BlobError::BadSentinel {
            offset: 192,
            found: 0xDEAD_BEEE
        }
    );
}

#[test]
fn unknown_dtype() {
    let mut bytes = three_fp16().to_bytes();
    set_u32(&mut bytes, 68, 99);
    assert_eq!(
        inner(BlobFile::parse(&bytes).unwrap_err()),
        BlobError::UnknownDType {
            offset: 64,
            code: 99
        }
    );
}

#[test]
fn benchmark_style_metadata_is_rejected() {
    // Spec 3.4: the benchmarks write only byte 4 = 1 and byte 10 = 0x08 of the metadata, so
    // sizeInBytes reads 0x80000 and the data offset 0.
    let mut bytes = BlobFile::fp16(&[0.0; 64 * 64]).to_bytes();
    bytes[72..96].fill(0);
    bytes[64 + 10] = 0x08;
    assert_eq!(
        read_chunk(&bytes, 64).unwrap_err(),
        BlobError::BadDataOffset {
            offset: 64,
            expected: 128,
            found: 0
        }
    );
}

#[test]
fn data_past_the_end_and_overflowing_sizes() {
    let mut bytes = three_fp16().to_bytes();
    set_u64(&mut bytes, 72, 8); // 2 bytes more than the file holds
    assert_eq!(
        read_chunk(&bytes, 64).unwrap_err(),
        BlobError::DataOutOfBounds {
            offset: 64,
            data_offset: 128,
            size: 8,
            len: 134
        }
    );
    set_u64(&mut bytes, 72, u64::MAX); // offset + size overflows
    assert!(matches!(
        read_chunk(&bytes, 64),
        Err(BlobError::DataOutOfBounds { size: u64::MAX, .. })
    ));
}

#[test]
fn sizes_that_are_not_whole_elements() {
    // (dtype, sizeInBytes, padding bits): each is wrong.
    let cases = [
        (BlobDType::Float16, 3, 0), // half an fp16
        (BlobDType::Float32, 6, 0),
        (BlobDType::UInt3, 1, 0), // 8 bits is not a multiple of 3
        (BlobDType::UInt4, 1, 8), // padding is at most 7 bits
        (BlobDType::UInt1, 0, 1), // padding in an empty chunk
        (BlobDType::UInt6, 2, 1), // 15 bits
    ];
    for (dtype, size, padding_bits) in cases {
        let chunk = BlobChunk {
            dtype,
            data: vec![0; size],
            padding_bits,
        };
        assert!(!chunk.is_consistent(), "{chunk:?}");
        // Write the file by hand: `push` refuses such chunks.
        let mut bytes = BlobFile::new().to_bytes();
        set_u32(&mut bytes, 0, 1);
        bytes.resize(128 + size, 0);
        set_u32(&mut bytes, 64, 0xDEAD_BEEF);
        set_u32(&mut bytes, 68, dtype.code());
        set_u64(&mut bytes, 72, size as u64);
        set_u64(&mut bytes, 80, 128);
        set_u64(&mut bytes, 88, padding_bits);
        assert_eq!(
            read_chunk(&bytes, 64).unwrap_err(),
            BlobError::BadSize {
                offset: 64,
                dtype,
                size: size as u64,
                padding_bits
            },
            "{dtype:?}"
        );
    }
}

#[test]
fn mil_offsets_that_cannot_name_a_chunk() {
    let bytes = three_fp16().to_bytes();
    assert_eq!(
        read_chunk(&bytes, 0).unwrap_err(),
        BlobError::OffsetInHeader { offset: 0 }
    );
    assert_eq!(
        read_chunk(&bytes, 65).unwrap_err(),
        BlobError::MisalignedOffset { offset: 65 }
    );
    // 128 is the data, and only 6 bytes of file are left there.
    assert_eq!(
        read_chunk(&bytes, 128).unwrap_err(),
        BlobError::Truncated {
            field: "chunk metadata",
            offset: 128,
            needed: 64,
            len: 134
        }
    );
    // In the longer two-chunk file 128 still holds data: 00 3C 00 C0 read as a u32.
    assert_eq!(
        read_chunk(&two_chunks().to_bytes(), 128).unwrap_err(),
        BlobError::BadSentinel {
            offset: 128,
            found: 0xC000_3C00
        }
    );
    assert_eq!(
        read_chunk(&bytes, 192).unwrap_err(),
        BlobError::Truncated {
            field: "chunk metadata",
            offset: 192,
            needed: 64,
            len: 134
        }
    );
    assert!(read_chunk(&bytes, u64::MAX - 63).is_err());
}

#[test]
fn every_truncation_of_a_two_chunk_file_is_rejected() {
    let bytes = two_chunks().to_bytes();
    for len in 0..bytes.len() {
        let cut = &bytes[..len];
        assert!(BlobFile::parse(cut).is_err(), "length {len} parsed");
        if len < 320 {
            assert!(read_chunk(cut, 192).is_err(), "length {len}");
        }
        if len < 134 {
            assert!(read_chunk(cut, 64).is_err(), "length {len}");
        }
    }
    assert!(BlobFile::parse(&bytes).is_ok());
}

#[test]
fn every_single_byte_mutation_of_a_two_chunk_file_is_handled() {
    // Exhaustive: every position, every other value. Above all nothing may panic. Many
    // mutations give another valid file (a dtype of the same width, a smaller size, a count of
    // 1, reserved bytes); those that hit the version, a sentinel or a data offset never do.
    let bytes = two_chunks().to_bytes();
    let always_rejected = [4..8, 64..68, 80..88, 192..196, 208..216];
    for at in 0..bytes.len() {
        for value in (0..=255u8).filter(|&v| v != bytes[at]) {
            let mut m = bytes.clone();
            m[at] = value;
            let parsed = BlobFile::parse(&m);
            let _ = read_chunk(&m, 64);
            let _ = read_chunk(&m, 192);
            if always_rejected.iter().any(|r| r.contains(&at)) {
                assert!(parsed.is_err(), "mutation {value:#04x} at {at} parsed");
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// WeightFiles

fn weights() -> WeightFiles {
    let mut w = WeightFiles::new();
    w.insert_blob("@model_path/weights/a.bin", &three_fp16());
    w.insert_blob("@model_path/weights/two.bin", &two_chunks());
    w.insert_blob(
        "@model_path/weights/q.bin",
        &BlobFile::int8(&[-3, 0, 7, 127]),
    );
    w
}

#[test]
fn weight_files_map() {
    let w = weights();
    assert_eq!(w.len(), 3);
    assert!(!w.is_empty());
    assert!(WeightFiles::new().is_empty());
    assert_eq!(
        w.get("@model_path/weights/a.bin"),
        Some(three_fp16().to_bytes().as_slice())
    );
    assert_eq!(w.get("a.bin"), None);
    let paths: Vec<&str> = w.iter().map(|(p, _)| p).collect();
    assert_eq!(
        paths,
        vec![
            "@model_path/weights/a.bin",
            "@model_path/weights/q.bin",
            "@model_path/weights/two.bin"
        ]
    );
    // Debug shows sizes, not contents.
    let debug = format!("{w:?}");
    assert!(
        debug.contains("\"@model_path/weights/a.bin\": \"134 bytes\""),
        "{debug}"
    );
}

#[test]
fn tensor_f32_resolves_blob_literals() {
    let w = weights();
    assert_eq!(
        w.tensor_f32("@model_path/weights/a.bin", 64, DType::Fp16, &[1, 3, 1, 1])
            .unwrap(),
        vec![1.0, -2.0, 0.5]
    );
    let second = w
        .tensor_f32(
            "@model_path/weights/two.bin",
            192,
            DType::Fp32,
            &[4, 4, 1, 1],
        )
        .unwrap();
    assert_eq!(second, (0..16).map(|i| i as f32).collect::<Vec<_>>());
    assert_eq!(
        w.tensor_f32("@model_path/weights/q.bin", 64, DType::Int8, &[4])
            .unwrap(),
        vec![-3.0, 0.0, 7.0, 127.0]
    );
}

#[test]
fn tensor_f32_type_mismatch() {
    let err = weights()
        .tensor_f32("@model_path/weights/a.bin", 64, DType::Fp32, &[1, 3, 1, 1])
        .unwrap_err();
    assert_eq!(
        err,
        BlobError::DTypeMismatch {
            path: "@model_path/weights/a.bin".into(),
            offset: 64,
            declared: DType::Fp32,
            expected: BlobDType::Float32,
            found: BlobDType::Float16,
        }
    );
    assert_eq!(
        err.to_string(),
        "weight file \"@model_path/weights/a.bin\", chunk at byte 64: MIL declares fp32, \
         which is stored as Float32 (code 2), but the chunk holds Float16 (code 1)"
    );
    // int8 data declared as uint8 is a mismatch too, though both are one byte.
    assert!(matches!(
        weights().tensor_f32("@model_path/weights/q.bin", 64, DType::UInt8, &[4]),
        Err(BlobError::DTypeMismatch { .. })
    ));
}

#[test]
fn tensor_f32_size_mismatch() {
    assert_eq!(
        weights()
            .tensor_f32("@model_path/weights/a.bin", 64, DType::Fp16, &[1, 4, 1, 1])
            .unwrap_err(),
        BlobError::SizeMismatch {
            path: "@model_path/weights/a.bin".into(),
            offset: 64,
            dtype: DType::Fp16,
            shape: vec![1, 4, 1, 1],
            expected: 8,
            found: 6,
        }
    );
    assert!(matches!(
        weights().tensor_f32(
            "@model_path/weights/a.bin",
            64,
            DType::Fp16,
            &[usize::MAX, 2]
        ),
        Err(BlobError::ShapeTooLarge { .. })
    ));
}

#[test]
fn tensor_f32_missing_path_bad_offset_and_unstorable_dtype() {
    let w = weights();
    assert_eq!(
        w.tensor_f32("@model_path/weights/nope.bin", 64, DType::Fp16, &[3])
            .unwrap_err(),
        BlobError::MissingPath {
            path: "@model_path/weights/nope.bin".into()
        }
    );
    let err = w
        .tensor_f32("@model_path/weights/two.bin", 128, DType::Fp16, &[3])
        .unwrap_err();
    assert_eq!(
        err,
        BlobError::InFile {
            path: "@model_path/weights/two.bin".into(),
            error: Box::new(BlobError::BadSentinel {
                offset: 128,
                found: 0xC000_3C00
            })
        }
    );
    assert_eq!(
        err.to_string(),
        "weight file \"@model_path/weights/two.bin\": chunk metadata at byte 128: \
         sentinel is 0xc0003c00, expected 0xdeadbeef"
    );
    assert!(matches!(
        w.tensor_f32("@model_path/weights/a.bin", 100, DType::Fp16, &[3]),
        Err(BlobError::InFile { .. })
    ));
    assert_eq!(
        w.tensor_f32("@model_path/weights/a.bin", 64, DType::Bool, &[3])
            .unwrap_err(),
        BlobError::UnsupportedMilDType {
            path: "@model_path/weights/a.bin".into(),
            dtype: DType::Bool
        }
    );
}

#[test]
fn final_rmsnorm_weights_missing_then_resolved() {
    let program = examples::final_rmsnorm(8, 4);
    let mut w = WeightFiles::new();
    assert_eq!(
        w.missing_for(&program),
        vec!["@model_path/weights/rms_w.bin".to_string()]
    );

    let gamma: Vec<f32> = (0..8).map(|i| 0.5 + i as f32 * 0.25).collect();
    w.insert_blob("@model_path/weights/rms_w.bin", &BlobFile::fp16(&gamma));
    assert!(w.missing_for(&program).is_empty());

    // Resolve the program's own BLOBFILE literal: tensor<fp16, [1,8,1,1]> at offset 64.
    let blobs: Vec<&Literal> = program.functions[0]
        .ops
        .iter()
        .flat_map(|op| op.attrs.iter().map(|(_, l)| l))
        .filter(|l| matches!(l, Literal::Blob { .. }))
        .collect();
    assert_eq!(blobs.len(), 1);
    let Literal::Blob {
        dtype,
        shape,
        path,
        offset,
    } = blobs[0]
    else {
        unreachable!()
    };
    assert_eq!(shape, &vec![1, 8, 1, 1]);
    assert_eq!(w.tensor_f32(path, *offset, *dtype, shape).unwrap(), gamma);
}

// ---------------------------------------------------------------------------------------------
// Properties

fn arb_chunk() -> impl Strategy<Value = BlobChunk> {
    (0..BlobDType::ALL.len(), 0usize..80).prop_flat_map(|(d, elements)| {
        let dtype = BlobDType::ALL[d];
        let bits = elements * dtype.bits() as usize;
        let n_bytes = bits.div_ceil(8);
        let padding_bits = (n_bytes * 8 - bits) as u64;
        prop::collection::vec(any::<u8>(), n_bytes).prop_map(move |data| BlobChunk {
            dtype,
            data,
            padding_bits,
        })
    })
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..600),
                                   offset in any::<u64>()) {
        let _ = BlobFile::parse(&bytes);
        let _ = read_chunk(&bytes, offset);
        let _ = read_chunk(&bytes, offset % 1024);
    }

    #[test]
    fn arbitrary_bytes_behind_a_valid_header_never_panic(
        count in 0u32..4,
        body in prop::collection::vec(any::<u8>(), 0..400),
        sentinel in any::<bool>(),
    ) {
        let mut bytes = BlobFile::new().to_bytes();
        set_u32(&mut bytes, 0, count);
        bytes.extend_from_slice(&body);
        if sentinel && bytes.len() >= 68 {
            set_u32(&mut bytes, 64, 0xDEAD_BEEF);
        }
        let _ = BlobFile::parse(&bytes);
        let _ = read_chunk(&bytes, 64);
    }

    #[test]
    fn random_mutations_of_a_valid_file_never_panic(
        edits in prop::collection::vec((0usize..320, any::<u8>()), 1..8),
    ) {
        let mut bytes = two_chunks().to_bytes();
        for (at, value) in edits {
            bytes[at] = value;
        }
        let _ = BlobFile::parse(&bytes);
        let _ = read_chunk(&bytes, 64);
        let _ = read_chunk(&bytes, 192);
    }

    #[test]
    fn random_files_round_trip(chunks in prop::collection::vec(arb_chunk(), 0..6)) {
        let mut file = BlobFile::new();
        let mut pushed = Vec::new();
        for c in &chunks {
            pushed.push(file.push(c.clone()));
        }
        let offsets = file.mil_offsets();
        prop_assert_eq!(&offsets, &pushed);
        let bytes = file.to_bytes();
        let expected_len = match (offsets.last(), chunks.last()) {
            (Some(o), Some(c)) => o + 64 + c.data.len() as u64,
            _ => 64,
        };
        prop_assert_eq!(bytes.len() as u64, expected_len);
        prop_assert_eq!(&BlobFile::parse(&bytes).unwrap(), &file);
        for (o, c) in offsets.iter().zip(&chunks) {
            prop_assert_eq!(o % 64, 0);
            prop_assert_eq!(&read_chunk(&bytes, *o).unwrap(), c);
        }
    }
}

#[test]
fn fp32_file_bytes_match_a_one_chunk_file() {
    for n in [0usize, 1, 17, 1000] {
        let values: Vec<f32> = (0..n).map(|i| i as f32 * -0.37 + 1e-3).collect();
        let bytes = anetrain_mil::blob::fp32_file_bytes(&values);
        assert_eq!(bytes, BlobFile::fp32(&values).to_bytes(), "{n} values");
        let back = BlobFile::parse(&bytes).unwrap();
        assert_eq!(back.chunks[0].to_f32().unwrap(), values);
    }
}

#[test]
fn transposed_fp32_files_hold_the_transpose() {
    // Shapes around the 16-column band: narrower, exact, and with a ragged last band.
    for (rows, cols) in [(1, 1), (3, 5), (16, 16), (13, 33), (40, 17), (7, 64)] {
        let values: Vec<f32> = (0..rows * cols).map(|i| i as f32 * 0.25 - 9.0).collect();
        let mut transposed = vec![0.0f32; rows * cols];
        for r in 0..rows {
            for c in 0..cols {
                transposed[c * rows + r] = values[r * cols + c];
            }
        }
        let bytes = anetrain_mil::blob::fp32_file_bytes_transposed(&values, rows, cols);
        assert_eq!(
            bytes,
            BlobFile::fp32(&transposed).to_bytes(),
            "{rows}×{cols}"
        );
    }
}

#[test]
fn fp32_tensors_are_read_in_place_and_others_decoded() {
    let values: Vec<f32> = (0..12).map(|i| i as f32 - 5.5).collect();
    let mut w = WeightFiles::new();
    w.insert(
        "@model_path/weights/f.bin",
        anetrain_mil::blob::fp32_file_bytes(&values),
    );
    w.insert_blob("@model_path/weights/h.bin", &BlobFile::fp16(&values));
    let file = w.get("@model_path/weights/f.bin").unwrap();
    let read = w
        .tensor_f32("@model_path/weights/f.bin", 64, DType::Fp32, &[3, 4])
        .unwrap();
    assert_eq!(read, values);
    // In place exactly when the bytes can be seen as f32s (they always can here in practice:
    // the allocator aligns a Vec's buffer to at least 8 bytes).
    let aligned = file.as_ptr().align_offset(4) == 0 && cfg!(target_endian = "little");
    assert_eq!(
        matches!(read, std::borrow::Cow::Borrowed(_)),
        aligned,
        "fp32 read in place"
    );
    if let std::borrow::Cow::Borrowed(seen) = read {
        assert_eq!(seen.as_ptr() as usize, file.as_ptr() as usize + 128);
    }
    let half = w
        .tensor_f32("@model_path/weights/h.bin", 64, DType::Fp16, &[3, 4])
        .unwrap();
    assert!(matches!(half, std::borrow::Cow::Owned(_)), "fp16 decoded");
    assert_eq!(half, values);
}

// ---------------------------------------------------------------------------------------------
// Matrix files: fp32 weights viewed where they are held

/// A `[3][5]` matrix inside a longer buffer, with the buffer.
fn held_matrix() -> (anetrain_mil::blob::F32Source, Vec<f32>) {
    let buffer: Vec<f32> = (0..20).map(|i| i as f32 * 0.25 - 2.0).collect();
    (std::sync::Arc::new(buffer.clone()), buffer)
}

fn transpose(m: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    (0..rows * cols)
        .map(|i| m[(i % rows) * cols + i / rows])
        .collect()
}

#[test]
fn a_matrix_file_is_the_file_of_its_matrix_in_every_respect() {
    use anetrain_mil::blob::{MatrixFile, MatrixValues};
    let (source, buffer) = held_matrix();
    let stored = &buffer[2..17];
    let path = "@model_path/weights/m.bin";
    for transposed in [false, true] {
        let file = MatrixFile::new(source.clone(), 2..17, [3, 5], transposed).unwrap();
        let mut w = WeightFiles::new();
        w.insert_matrix(path, file);
        let values = if transposed {
            transpose(stored, 3, 5)
        } else {
            stored.to_vec()
        };
        let shape = if transposed { [5, 3] } else { [3, 5] };
        // Its bytes, when asked for, are those of the fp32 file of the matrix.
        assert!(w.contains(path));
        assert_eq!(
            w.get(path),
            Some(BlobFile::fp32(&values).to_bytes().as_slice())
        );
        assert_eq!(format!("{w:?}"), format!("{{\"{path}\": \"188 bytes\"}}"));
        assert!(w.shared(path).is_none(), "no shared buffer to cache by");
        // Read as numbers, it is the matrix (as stored, or transposed).
        assert_eq!(
            w.tensor_f32(path, 64, DType::Fp32, &[1, shape[0], shape[1], 1])
                .unwrap(),
            values
        );
        let read = w.matrix_f32(path, 64, DType::Fp32, &shape).unwrap();
        match (transposed, read) {
            (false, MatrixValues::Dense(v)) => {
                assert!(matches!(v, std::borrow::Cow::Borrowed(_)), "viewed");
                assert_eq!(v, values);
            }
            (
                true,
                MatrixValues::TransposeOf {
                    stored: s,
                    rows,
                    cols,
                },
            ) => {
                assert_eq!((s, rows, cols), (stored, 3, 5));
            }
            (t, other) => panic!("transposed {t}: read as {other:?}"),
        }
        // Read as anything else, it fails as its bytes would.
        let bytes = {
            let mut b = WeightFiles::new();
            b.insert(path, BlobFile::fp32(&values).to_bytes());
            b
        };
        for (offset, dtype, shape) in [
            (64, DType::Fp16, vec![15]),
            (64, DType::Fp32, vec![16]),
            (128, DType::Fp32, vec![15]),
        ] {
            let want = bytes.tensor_f32(path, offset, dtype, &shape).unwrap_err();
            let got = w.tensor_f32(path, offset, dtype, &shape).unwrap_err();
            assert_eq!(got.to_string(), want.to_string());
            let got = w.matrix_f32(path, offset, dtype, &shape).unwrap_err();
            assert_eq!(got.to_string(), want.to_string());
        }
    }
}

/// Files in one share that view the same matrix (as stored and transposed) get one derived
/// form of it, derived once from the matrix as stored; other matrices, other shares and files
/// in none get their own or nothing.
#[test]
fn a_matrix_share_derives_each_matrix_once_for_all_its_files() {
    use anetrain_mil::blob::{MatrixFile, MatrixShare};
    use std::sync::Arc;
    let (source, buffer) = held_matrix();
    let share = MatrixShare::new();
    let mut w = WeightFiles::new();
    let file = |range, shape, transposed| MatrixFile::new(source.clone(), range, shape, transposed);
    w.insert_matrix(
        "w.bin",
        file(2..17, [3, 5], false).unwrap().shared_in(&share),
    );
    w.insert_matrix(
        "wt.bin",
        file(2..17, [3, 5], true).unwrap().shared_in(&share),
    );
    w.insert_matrix(
        "other.bin",
        file(0..6, [2, 3], false).unwrap().shared_in(&share),
    );
    w.insert_matrix("alone.bin", file(2..17, [3, 5], false).unwrap());
    w.insert("bytes.bin", BlobFile::fp32(&buffer[2..17]).to_bytes());
    let calls = std::cell::Cell::new(0);
    // The derived form here: the stored matrix's values and shape, as the callback saw them.
    let derive = |stored: &[f32], rows: usize, cols: usize| {
        calls.set(calls.get() + 1);
        Some((stored.to_vec(), rows, cols))
    };
    let (plain, t0) = w
        .derived_matrix("w.bin", 64, DType::Fp32, &[3, 5], derive)
        .unwrap();
    let (transposed, t1) = w
        .derived_matrix("wt.bin", 64, DType::Fp32, &[5, 3], derive)
        .unwrap();
    assert_eq!((t0, t1), (false, true));
    assert!(Arc::ptr_eq(&plain, &transposed), "one form for both files");
    assert_eq!(
        *plain,
        (buffer[2..17].to_vec(), 3, 5),
        "derived from the stored matrix"
    );
    assert_eq!(calls.get(), 1);
    let (other, _) = w
        .derived_matrix("other.bin", 64, DType::Fp32, &[2, 3], derive)
        .unwrap();
    assert_eq!(*other, (buffer[0..6].to_vec(), 2, 3));
    assert_eq!((calls.get(), share.len()), (2, 2));
    // No share, no matrix, or a read other than the whole file as fp32: nothing to share.
    for (path, dtype, shape) in [
        ("alone.bin", DType::Fp32, vec![3, 5]),
        ("bytes.bin", DType::Fp32, vec![3, 5]),
        ("w.bin", DType::Fp16, vec![3, 5]),
        ("w.bin", DType::Fp32, vec![16]),
    ] {
        assert!(
            w.derived_matrix(path, 64, dtype, &shape, derive).is_none(),
            "{path}"
        );
    }
    assert!(w
        .derived_matrix("w.bin", 128, DType::Fp32, &[3, 5], derive)
        .is_none());
    // A form of another type is derived beside the first, not mistaken for it.
    let (count, _) = w
        .derived_matrix("w.bin", 64, DType::Fp32, &[3, 5], |s, _, _| Some(s.len()))
        .unwrap();
    assert_eq!((*count, share.len()), (15, 3));
    // A second share (the next set's) derives its own.
    let next = MatrixShare::new();
    let mut w2 = WeightFiles::new();
    w2.insert_matrix(
        "w.bin",
        file(2..17, [3, 5], false).unwrap().shared_in(&next),
    );
    let (again, _) = w2
        .derived_matrix("w.bin", 64, DType::Fp32, &[3, 5], derive)
        .unwrap();
    assert!(!Arc::ptr_eq(&plain, &again));
    // The share holds the source while it lives (so its address stays its own), and lets
    // go of it with the share.
    drop((w, w2, next));
    assert_eq!(
        Arc::strong_count(&source),
        1 + 3,
        "the test's and one per form"
    );
    drop(share);
    assert_eq!(Arc::strong_count(&source), 1);
}

#[test]
fn a_matrix_file_must_lie_inside_its_source() {
    use anetrain_mil::blob::MatrixFile;
    let (source, _) = held_matrix();
    assert!(MatrixFile::new(source.clone(), 10..25, [3, 5], false).is_none());
    assert!(MatrixFile::new(source.clone(), 0..15, [4, 5], true).is_none());
    assert!(MatrixFile::new(source.clone(), 5..20, [5, 3], true).is_some());
    assert!(MatrixFile::new(source, 0..0, [0, 7], false).is_some());
}

#[test]
fn transposed_matches_the_definition() {
    for (rows, cols) in [(1, 1), (3, 5), (8, 8), (13, 7), (17, 32), (64, 9)] {
        let w: Vec<f32> = (0..rows * cols).map(|i| i as f32 * 0.5 - 3.0).collect();
        let t = anetrain_mil::blob::transposed(&w, rows, cols);
        assert_eq!(t.len(), w.len());
        for r in 0..rows {
            for c in 0..cols {
                assert_eq!(
                    t[c * rows + r],
                    w[r * cols + c],
                    "{rows}×{cols} at ({r}, {c})"
                );
            }
        }
    }
}
