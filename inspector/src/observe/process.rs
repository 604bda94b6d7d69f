//! What the daemon's process shows of itself: its build and its file
//! descriptors (`inspector_build_info`, `inspector_open_fds`,
//! `inspector_max_fds`).

/// The version the binary was built as.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Open file descriptors of this process (the entries of /proc/self/fd,
/// less the one reading it).
pub fn open_fds() -> Option<u64> {
    let n = std::fs::read_dir("/proc/self/fd").ok()?.count() as u64;
    Some(n.saturating_sub(1))
}

/// The soft limit of open file descriptors (RLIMIT_NOFILE).
pub fn max_fds() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit to a valid pointer.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    (rc == 0).then_some(limit.rlim_cur)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptors_are_counted() {
        let before = open_fds().unwrap();
        let f = std::fs::File::open("/proc/self/status").unwrap();
        assert!(open_fds().unwrap() > before);
        drop(f);
        assert!(max_fds().unwrap() >= before);
    }
}
