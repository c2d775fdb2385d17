//! Process resources the daemon manages for itself: the descriptor limit
//! (raised to the hard limit at start), a cheap count of open descriptors,
//! and the allocator settings that let memory freed after a burst go back
//! to the system. A leaf: uses nothing else in the crate.

use std::io;

/// The soft and hard `RLIMIT_NOFILE`.
pub fn nofile_limit() -> io::Result<(u64, u64)> {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((r.rlim_cur, r.rlim_max))
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit. Returns the soft
/// limit before and after.
pub fn raise_nofile_limit() -> io::Result<(u64, u64)> {
    let (soft, hard) = nofile_limit()?;
    if soft >= hard {
        return Ok((soft, soft));
    }
    let r = libc::rlimit {
        rlim_cur: hard,
        rlim_max: hard,
    };
    // SAFETY: setrlimit reads the struct we own.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &r) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((soft, hard))
}

/// Descriptors open in this process now (a scan of /proc/self/fd: call it
/// now and then, not per connection).
pub fn open_fds() -> io::Result<usize> {
    // The directory handle itself shows up once; do not count it.
    Ok(std::fs::read_dir("/proc/self/fd")?
        .count()
        .saturating_sub(1))
}

/// Allocator threshold above which a buffer gets its own mapping, which
/// `free` hands back to the system at once.
pub const MMAP_THRESHOLD: usize = 128 * 1024;

/// Tunes glibc's malloc so that large buffers are returned to the system
/// when freed: a fixed mmap threshold (glibc otherwise raises it up to
/// 32 MiB after the first big frees, and then keeps every freed request
/// buffer in its heaps). Call once at start, before threads. A no-op off
/// glibc.
pub fn tune_allocator() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only changes allocator parameters; called at
        // start-up with a valid parameter and value.
        unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD as libc::c_int) == 1 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

/// Returns free heap memory (of every arena) to the system. Costs a walk
/// of the heaps: call it after a burst, not per request.
pub fn trim_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: malloc_trim has no preconditions.
        unsafe {
            libc::malloc_trim(0);
        }
    }
}

/// Resident memory of this process in KiB (VmRSS), if readable.
pub fn rss_kib() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_and_fds_are_readable() {
        let (soft, hard) = nofile_limit().unwrap();
        assert!(soft <= hard);
        let n = open_fds().unwrap();
        assert!(n >= 3, "stdin/stdout/stderr at least: {n}");
        assert!(rss_kib().unwrap() > 0);
    }
}
