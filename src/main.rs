//! `anetrain`: train transformer language models on Apple's Neural Engine, or on any CPU with
//! the same MIL kernels.

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    keep_freed_memory();
    let args = anetrain::cli::Cli::parse();
    match anetrain::cli::run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", anetrain::cli::error_text(&e));
            ExitCode::FAILURE
        }
    }
}

/// Every optimizer update compiles a kernel set: tens of megabytes of weight files and packed
/// weights allocated, and as much freed with the set it replaces. glibc serves blocks that
/// large with fresh mappings and unmaps them on free (or trims its heap), so every compile
/// paid for faulting in and zeroing new pages. Served from the heap and kept there, freed
/// blocks are reused, and a set compiles faster (docs/benchmarks.md). Neither setting alone
/// did it.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn keep_freed_memory() {
    // 32 MiB is the largest mmap threshold every glibc accepts; the trim threshold has no cap.
    const LARGE: libc::c_int = 32 << 20;
    const NEVER: libc::c_int = 1 << 30;
    // SAFETY: `mallopt` only sets allocator parameters; no other thread runs yet.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, LARGE);
        libc::mallopt(libc::M_TRIM_THRESHOLD, NEVER);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn keep_freed_memory() {}
