//! The descriptor limit: raised to the hard limit at start (the soft limit
//! is often 1024, far below what the proxy holds), and `max-sessions`
//! refused when its sockets cannot fit under it.

use anyhow::{Result, bail};

/// Descriptors kept free besides the sessions' two sockets each: listeners,
/// maps, netlink, the audit sink, and connections refused (each holds one
/// socket while its `421` lingers).
pub const RESERVE: u64 = 1024;

/// Sets the soft RLIMIT_NOFILE to the hard one; returns the new soft limit.
pub fn raise_to_hard() -> Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit to a valid pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        bail!(
            "getrlimit(RLIMIT_NOFILE): {}",
            std::io::Error::last_os_error()
        );
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: setrlimit reads one valid rlimit; raising the soft limit
        // up to the hard one needs no privilege.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            bail!(
                "raising RLIMIT_NOFILE to its hard limit {}: {}",
                limit.rlim_max,
                std::io::Error::last_os_error()
            );
        }
    }
    Ok(limit.rlim_max)
}

/// Refuses a `max-sessions` whose sockets (two per session, client and
/// server) and [`RESERVE`] do not fit in `limit` descriptors.
pub fn check_fits(max_sessions: usize, limit: u64) -> Result<()> {
    let needed = 2 * max_sessions as u64 + RESERVE;
    if needed > limit {
        bail!(
            "proxy.max-sessions = {max_sessions} needs {needed} file descriptors (2 per session \
             and {RESERVE} for the rest), but RLIMIT_NOFILE allows {limit} (its hard limit): \
             lower max-sessions to at most {} or raise the hard limit (LimitNOFILE= in the \
             systemd unit, `ulimit -Hn`)",
            limit.saturating_sub(RESERVE) / 2
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_sessions_must_fit_in_the_descriptor_limit() {
        assert!(check_fits(1024, 20_000).is_ok());
        assert!(check_fits(9_488, 20_000).is_ok());
        let err = check_fits(9_489, 20_000).unwrap_err().to_string();
        assert!(err.contains("proxy.max-sessions = 9489"), "{err}");
        assert!(err.contains("at most 9488"), "{err}");
    }

    #[test]
    fn the_soft_limit_is_raised_to_the_hard_one() {
        let hard = raise_to_hard().unwrap();
        assert_eq!(crate::observe::process::max_fds(), Some(hard));
    }
}
