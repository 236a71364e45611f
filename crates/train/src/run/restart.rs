//! A run restarts its process when the compile budget is spent: a fresh process has a fresh
//! budget. The new process gets the same arguments, continuing from the checkpoint.

use std::ffi::OsString;
use std::path::Path;

/// The arguments of the process that continues a run from `checkpoint`: the same ones (less
/// any `--resume` with its value; `--init` with its value, since the checkpoint holds the
/// weights; and `--overwrite`, since the run has already started over) and
/// `--resume CHECKPOINT`.
pub fn restart_args(args: impl IntoIterator<Item = OsString>, checkpoint: &Path) -> Vec<OsString> {
    let mut kept = Vec::new();
    let mut skip_value = false;
    // `--init` always has a value; `--resume` may not.
    let mut skip_init = false;
    for a in args {
        if skip_value {
            skip_value = false;
            if !a.to_string_lossy().starts_with("--") {
                continue;
            }
        }
        if a == "--resume" {
            skip_value = true;
            continue;
        }
        if a == "--init" {
            skip_init = true;
            continue;
        }
        if skip_init {
            skip_init = false;
            continue;
        }
        let text = a.to_string_lossy();
        if text.starts_with("--resume=") || text.starts_with("--init=") {
            continue;
        }
        // The new process continues this run, which an --overwrite has already started over.
        if a == "--overwrite" {
            continue;
        }
        kept.push(a);
    }
    kept.push("--resume".into());
    kept.push(checkpoint.as_os_str().to_owned());
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<OsString> {
        list.iter().map(OsString::from).collect()
    }

    #[test]
    fn the_new_process_resumes_from_the_checkpoint_and_does_not_overwrite() {
        let ckpt = Path::new("runs/a/ckpt-00000040.bin");
        let want = args(&[
            "train",
            "--steps",
            "9",
            "--resume",
            "runs/a/ckpt-00000040.bin",
        ]);
        for given in [
            args(&["train", "--steps", "9"]),
            args(&["train", "--overwrite", "--steps", "9"]),
            args(&["train", "--resume", "--steps", "9"]),
            args(&["train", "--resume", "old.bin", "--steps", "9"]),
            args(&["train", "--resume=old.bin", "--steps", "9"]),
            args(&["train", "--init", "m.bin", "--steps", "9"]),
            args(&["train", "--init=m.bin", "--steps", "9"]),
        ] {
            assert_eq!(restart_args(given.clone(), ckpt), want, "{given:?}");
        }
    }
}
