//! Token files on disk: both formats round trip, and every kind of bad file is refused with a
//! message naming the file and the position.

use anetrain_train::data::token_file::{HEADER_BYTES, MAGIC};
use anetrain_train::data::{read_token_file, write_token_file, DataError, TokenFormat, TokenIds};
use std::path::{Path, PathBuf};

struct Dir(tempfile::TempDir);

impl Dir {
    fn new() -> Dir {
        Dir(tempfile::tempdir().expect("temp dir"))
    }
    fn path(&self, name: &str) -> PathBuf {
        self.0.path().join(name)
    }
    /// Names of the files in the directory, sorted (temporary files included).
    fn entries(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.0.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }
}

fn read_err(path: &Path, vocab: usize) -> String {
    match read_token_file(path, vocab) {
        Ok(t) => panic!("{} read as {} tokens", path.display(), t.len()),
        Err(e) => e.to_string(),
    }
}

/// A uint32 header with the given fields.
fn header(version: u32, dtype: u32, n_tokens: u64) -> Vec<u8> {
    let mut h = MAGIC.to_vec();
    h.extend_from_slice(&version.to_le_bytes());
    h.extend_from_slice(&dtype.to_le_bytes());
    h.extend_from_slice(&n_tokens.to_le_bytes());
    h
}

#[test]
fn uint16_files_round_trip_as_raw_little_endian() {
    let dir = Dir::new();
    let path = dir.path("tokens.bin");
    let ids: Vec<u32> = (0..5000).map(|i| (i * 7919) % 1024).collect();
    let format = write_token_file(&path, &ids, 1024).unwrap();
    assert_eq!(format, TokenFormat::U16);
    let bytes = std::fs::read(&path).unwrap();
    // llama2.c's format: no header, two little-endian bytes per token.
    assert_eq!(bytes.len(), 2 * ids.len());
    assert_eq!(&bytes[2..4], &((7919u32 % 1024) as u16).to_le_bytes());
    let back = read_token_file(&path, 1024).unwrap();
    assert_eq!(back.format(), TokenFormat::U16);
    assert_eq!(back.to_vec(), ids);
    assert_eq!(dir.entries(), ["tokens.bin"], "no temporary file is left");
}

#[test]
fn a_65536_token_vocabulary_still_fits_uint16() {
    let dir = Dir::new();
    let path = dir.path("tokens.bin");
    let ids = vec![0, 65535, 1, 40000];
    assert_eq!(
        write_token_file(&path, &ids, 65536).unwrap(),
        TokenFormat::U16
    );
    assert_eq!(std::fs::read(&path).unwrap().len(), 8);
    assert_eq!(read_token_file(&path, 65536).unwrap().to_vec(), ids);
}

#[test]
fn uint32_files_round_trip_with_their_header() {
    let dir = Dir::new();
    let path = dir.path("tokens.bin");
    let vocab = 151_936;
    let ids: Vec<u32> = (0..3000u32).map(|i| (i * 104_729) % vocab as u32).collect();
    assert_eq!(
        write_token_file(&path, &ids, vocab).unwrap(),
        TokenFormat::U32
    );
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(bytes.len(), HEADER_BYTES + 4 * ids.len());
    assert_eq!(&bytes[..HEADER_BYTES], header(1, 4, 3000).as_slice());
    assert_eq!(&bytes[28..32], &104_729u32.to_le_bytes());
    let back = read_token_file(&path, vocab).unwrap();
    assert_eq!(back.format(), TokenFormat::U32);
    assert_eq!(back.to_vec(), ids);
    // A smaller vocabulary still reads a uint32 file, recognised by its magic.
    let small = vec![5, 6, 7];
    write_token_file(&path, &small, vocab).unwrap();
    assert_eq!(read_token_file(&path, 8).unwrap().to_vec(), small);
}

#[test]
fn writing_an_id_outside_the_vocabulary_fails_and_writes_nothing() {
    let dir = Dir::new();
    let path = dir.path("tokens.bin");
    let err = write_token_file(&path, &[1, 2, 1023, 1024, 5000], 1024).unwrap_err();
    assert!(matches!(
        err,
        DataError::TokenOutOfRange {
            index: 3,
            value: 1024,
            ..
        }
    ));
    assert_eq!(
        err.to_string(),
        format!(
            "{}: token 3 is 1024, outside the vocabulary of 1024 tokens (ids 0..=1023)",
            path.display()
        )
    );
    assert!(dir.entries().is_empty(), "{:?}", dir.entries());
}

#[test]
fn reading_reports_the_first_id_outside_the_vocabulary() {
    let dir = Dir::new();
    let path = dir.path("tokens.bin");
    write_token_file(&path, &[3, 999, 1000, 1001, 7], 2048).unwrap();
    assert_eq!(
        read_err(&path, 1000),
        format!(
            "{}: token 2 is 1000, outside the vocabulary of 1000 tokens (ids 0..=999)",
            path.display()
        )
    );
    write_token_file(&path, &[70_000, 200_000], 300_000).unwrap();
    assert_eq!(
        read_err(&path, 100_000),
        format!(
            "{}: token 1 is 200000, outside the vocabulary of 100000 tokens (ids 0..=99999)",
            path.display()
        )
    );
}

#[test]
fn an_odd_length_uint16_file_is_truncated() {
    let dir = Dir::new();
    let path = dir.path("odd.bin");
    std::fs::write(&path, [1, 0, 2, 0, 3]).unwrap();
    assert_eq!(
        read_err(&path, 1024),
        format!(
            "{}: truncated: 5 bytes is not a whole number of 2-byte tokens (the token at byte 4 \
             is cut off)",
            path.display()
        )
    );
}

#[test]
fn a_uint32_body_cut_mid_token_is_truncated() {
    let dir = Dir::new();
    let path = dir.path("cut.bin");
    let mut bytes = header(1, 4, 3);
    bytes.extend_from_slice(&[1, 0, 0, 0, 2, 0, 0, 0, 3, 0]);
    std::fs::write(&path, &bytes).unwrap();
    assert_eq!(
        read_err(&path, 100_000),
        format!(
            "{}: truncated: 34 bytes is not a whole number of 4-byte tokens (the token at byte \
             32 is cut off)",
            path.display()
        )
    );
}

#[test]
fn a_uint32_file_shorter_than_its_header_says_is_truncated() {
    let dir = Dir::new();
    let path = dir.path("short.bin");
    let mut bytes = header(1, 4, 10);
    bytes.extend_from_slice(&[1, 0, 0, 0, 2, 0, 0, 0]);
    std::fs::write(&path, &bytes).unwrap();
    assert_eq!(
        read_err(&path, 100_000),
        format!(
            "{}: truncated: the header announces 10 tokens but the file holds 2 (32 bytes)",
            path.display()
        )
    );
}

#[test]
fn bytes_after_the_announced_tokens_are_corrupt() {
    let dir = Dir::new();
    let path = dir.path("long.bin");
    let mut bytes = header(1, 4, 1);
    bytes.extend_from_slice(&[1, 0, 0, 0, 2, 0, 0, 0]);
    std::fs::write(&path, &bytes).unwrap();
    assert_eq!(
        read_err(&path, 100_000),
        format!(
            "{}: corrupt: 4 bytes follow the 1 tokens the header announces",
            path.display()
        )
    );
}

#[test]
fn a_file_cut_inside_the_header_is_truncated() {
    let dir = Dir::new();
    let path = dir.path("hdr.bin");
    std::fs::write(&path, &header(1, 4, 0)[..12]).unwrap();
    assert_eq!(
        read_err(&path, 100_000),
        format!(
            "{}: truncated: 12 bytes, shorter than the 24-byte ANETOKEN header",
            path.display()
        )
    );
}

#[test]
fn a_large_vocabulary_refuses_a_file_without_the_header() {
    let dir = Dir::new();
    let path = dir.path("u16.bin");
    write_token_file(&path, &[1, 2, 3, 4], 1024).unwrap();
    assert_eq!(
        read_err(&path, 151_936),
        format!(
            "{}: missing header: a vocabulary of 151936 tokens needs the uint32 token file, \
             which starts with `ANETOKEN`; found first bytes 01 00 02 00 03 00 04 00",
            path.display()
        )
    );
    std::fs::write(&path, b"").unwrap();
    assert!(read_err(&path, 151_936).ends_with("found an empty file"));
}

#[test]
fn a_wrong_version_or_dtype_is_a_wrong_header() {
    let dir = Dir::new();
    let path = dir.path("v.bin");
    std::fs::write(&path, header(2, 4, 0)).unwrap();
    assert_eq!(
        read_err(&path, 100_000),
        format!("{}: wrong header: version is 2, expected 1", path.display())
    );
    std::fs::write(&path, header(1, 2, 0)).unwrap();
    assert_eq!(
        read_err(&path, 100_000),
        format!(
            "{}: wrong header: dtype is 2, expected 4 (uint32)",
            path.display()
        )
    );
}

#[test]
fn a_missing_file_is_named() {
    let dir = Dir::new();
    let path = dir.path("nothing.bin");
    let err = read_err(&path, 1024);
    assert!(
        err.starts_with(&format!("cannot read token file {}:", path.display())),
        "{err}"
    );
}

#[test]
fn token_data_keeps_the_width_the_vocabulary_needs() {
    let small = TokenIds::from_ids(&[1, 2, 3], 1024, "ids").unwrap();
    assert_eq!(small, TokenIds::U16(vec![1, 2, 3]));
    let large = TokenIds::from_ids(&[1, 70_000], 100_000, "ids").unwrap();
    assert_eq!(large, TokenIds::U32(vec![1, 70_000]));
    let err = TokenIds::from_ids(&[1, 70_000], 65_536, "ids").unwrap_err();
    assert!(
        err.to_string().starts_with("ids: token 1 is 70000"),
        "{err}"
    );
    let mut window = [0; 2];
    assert_eq!(large.copy_to(0, &mut window), Some(()));
    assert_eq!(window, [1, 70_000]);
    assert_eq!(large.copy_to(1, &mut window), None, "past the end");
}
