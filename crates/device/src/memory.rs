//! Large host buffers.

/// A zero-filled buffer of `len` f32s for weights, moments, gradients and logits.
///
/// On Linux a large one asks for transparent huge pages (honoured where the system's policy is
/// `madvise` or `always`, the usual defaults): its first touch then faults 2 MB at a time
/// instead of 4 KB. A 110M-parameter model holds five or more such buffers of 440 MB; on this
/// project's VMs faulting them in page by page cost seconds of kernel time in the first steps.
pub fn zeroed_f32(len: usize) -> Vec<f32> {
    let v = vec![0.0f32; len];
    advise_huge_pages(&v);
    v
}

/// The size of a transparent huge page on x86_64 (and aarch64 with 4 KB pages).
pub const HUGE_PAGE: usize = 2 << 20;

/// Asks for transparent huge pages behind the whole huge pages inside `buf` (Linux; elsewhere,
/// and for buffers under two huge pages, nothing). Worth it only before the buffer is first
/// written.
#[cfg(target_os = "linux")]
pub fn advise_huge_pages<T>(v: &[T]) {
    let bytes = std::mem::size_of_val(v);
    if bytes < 2 * HUGE_PAGE {
        return;
    }
    // Only whole, aligned huge pages can be backed by one: advise those inside the buffer.
    let start = v.as_ptr() as usize;
    let (first, end) = (
        start.next_multiple_of(HUGE_PAGE),
        (start + bytes) / HUGE_PAGE * HUGE_PAGE,
    );
    if end > first {
        // SAFETY: the range lies inside `v`'s allocation, and MADV_HUGEPAGE changes only how
        // the kernel backs it, never its contents. A refusal (huge pages disabled) is harmless.
        unsafe {
            libc::madvise(first as *mut libc::c_void, end - first, libc::MADV_HUGEPAGE);
        }
    }
}

#[cfg(not(target_os = "linux"))]
pub fn advise_huge_pages<T>(_: &[T]) {}

/// The machine's physical memory in bytes, where the system says (Linux: `MemTotal` of
/// `/proc/meminfo`; Apple: `hw.memsize`).
pub fn physical_memory() -> Option<u64> {
    #[cfg(target_os = "linux")]
    {
        let text = std::fs::read_to_string("/proc/meminfo").ok()?;
        let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        kib.checked_mul(1024)
    }
    #[cfg(target_vendor = "apple")]
    {
        let mut bytes: u64 = 0;
        let mut len = std::mem::size_of::<u64>();
        // SAFETY: a valid NUL-terminated name and a buffer of the u64 the call writes.
        let rc = unsafe {
            libc::sysctlbyname(
                c"hw.memsize".as_ptr(),
                (&mut bytes as *mut u64).cast(),
                &mut len,
                std::ptr::null_mut(),
                0,
            )
        };
        (rc == 0 && len == std::mem::size_of::<u64>()).then_some(bytes)
    }
    #[cfg(not(any(target_os = "linux", target_vendor = "apple")))]
    None
}

/// The most memory this process has held resident so far, in bytes (`getrusage`'s
/// `ru_maxrss`, which Linux gives in KiB and Apple in bytes).
pub fn peak_resident() -> Option<u64> {
    #[cfg(any(target_os = "linux", target_vendor = "apple"))]
    {
        let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
        // SAFETY: getrusage writes one rusage into the buffer it is given.
        let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()) };
        if rc != 0 {
            return None;
        }
        // SAFETY: the call succeeded, so it filled the struct (zeroed before anyway).
        let max = u64::try_from(unsafe { usage.assume_init() }.ru_maxrss).ok()?;
        if cfg!(target_vendor = "apple") {
            Some(max)
        } else {
            max.checked_mul(1024)
        }
    }
    #[cfg(not(any(target_os = "linux", target_vendor = "apple")))]
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(any(target_os = "linux", target_vendor = "apple"))]
    fn the_peak_counts_a_buffer_once_written() {
        const BYTES: usize = 256 << 20;
        let mut v = vec![0u8; BYTES];
        // Written, so that every page is resident at once.
        for (i, b) in v.iter_mut().enumerate().step_by(4096) {
            *b = i as u8;
        }
        let peak = peak_resident().expect("the system reports it");
        assert!(
            peak as usize >= BYTES,
            "peak {peak} after writing {BYTES} bytes"
        );
        assert!(peak < physical_memory().unwrap(), "{peak}");
        assert_eq!(v[4096], 0);
    }

    /// `AnonHugePages` of the mapping holding `addr`, from `/proc/self/smaps`.
    #[cfg(target_os = "linux")]
    fn huge_kb_at(addr: usize) -> Option<u64> {
        let smaps = std::fs::read_to_string("/proc/self/smaps").ok()?;
        let mut inside = false;
        for line in smaps.lines() {
            let first = line.split_whitespace().next().unwrap_or("");
            if let Some((lo, hi)) = first.split_once('-') {
                if let (Ok(lo), Ok(hi)) =
                    (usize::from_str_radix(lo, 16), usize::from_str_radix(hi, 16))
                {
                    inside = (lo..hi).contains(&addr);
                    continue;
                }
            }
            if inside {
                if let Some(kb) = line.strip_prefix("AnonHugePages:") {
                    return kb.trim().trim_end_matches("kB").trim().parse().ok();
                }
            }
        }
        None
    }

    #[test]
    fn a_zeroed_buffer_is_zero_and_as_long_as_asked() {
        for len in [0, 1, 1000, 3 * HUGE_PAGE / 4 + 5] {
            let v = zeroed_f32(len);
            assert_eq!(v.len(), len);
            assert!(v.iter().all(|&x| x == 0.0));
        }
    }

    /// Where the system grants huge pages on request, a large buffer is backed by them once
    /// written (the system's policy is read, not assumed).
    #[cfg(target_os = "linux")]
    #[test]
    fn a_large_buffer_is_backed_by_huge_pages_where_the_system_allows_it() {
        let policy = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
            .unwrap_or_default();
        if !(policy.contains("[madvise]") || policy.contains("[always]")) {
            eprintln!("transparent huge pages are off here ({policy:?}): nothing to check");
            return;
        }
        let mut v = zeroed_f32(2 * HUGE_PAGE);
        v.iter_mut().enumerate().for_each(|(i, x)| *x = i as f32);
        let kb = huge_kb_at(v.as_ptr() as usize + HUGE_PAGE).expect("the buffer's mapping");
        assert!(kb >= 2048, "{kb} kB of huge pages behind a 16 MB buffer");
        assert_eq!(v[HUGE_PAGE], HUGE_PAGE as f32);
    }

    #[test]
    #[cfg(any(target_os = "linux", target_vendor = "apple"))]
    fn the_physical_memory_is_known_and_holds_what_this_process_uses() {
        let total = physical_memory().expect("the system reports its memory");
        // No machine this runs on has less than 256 MiB or more than a petabyte.
        assert!((256 << 20..1 << 50).contains(&total), "{total}");
    }
}
