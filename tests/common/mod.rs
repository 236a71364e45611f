//! What the command-line tests share: running the binary, reading what it printed, a
//! temporary folder, the MIL fixtures. (Each test binary uses part of it.)
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Runs the `anetrain` binary built for these tests.
pub fn anetrain(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_anetrain"))
        .args(args)
        .output()
        .expect("the binary runs")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts that the command succeeded, showing what it printed if not.
pub fn ok(o: &Output) {
    assert!(o.status.success(), "{}\n{}", stdout(o), stderr(o));
}

/// A MIL program of the MIL crate's test fixtures.
pub fn fixture(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("crates/mil/tests/fixtures")
        .join(name)
        .display()
        .to_string()
}

/// A temporary folder, removed when dropped.
pub struct Dir(tempfile::TempDir);

impl Dir {
    pub fn new() -> Dir {
        Dir(tempfile::tempdir().expect("temp dir"))
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.path().join(name)
    }

    /// The path of `name` in the folder, as an argument.
    pub fn s(&self, name: &str) -> String {
        self.path(name).display().to_string()
    }

    /// Writes `name` and returns its path as an argument.
    pub fn write(&self, name: &str, contents: impl AsRef<[u8]>) -> String {
        std::fs::write(self.path(name), contents).unwrap();
        self.s(name)
    }

    /// Every file in the folder, temporary ones included, sorted.
    pub fn entries(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.0.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    pub fn is_empty(&self) -> bool {
        self.entries().is_empty()
    }
}
