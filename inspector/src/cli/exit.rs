//! Exit codes a supervisor can act on. Anything not listed is 1.
//!
//! | code | meaning |
//! |---|---|
//! | 0 | done (`status`: running and ready) |
//! | 1 | any other failure |
//! | 3 | `status`, `reload`: no daemon runs with this pin directory (LSB's "program is not running") |
//! | 69 | `status`: a daemon runs but is not ready (starting, or stopping) (`EX_UNAVAILABLE`) |
//! | 78 | a bad policy file: `run` refuses to start, `reload` keeps the running policy, `policy check` fails (`EX_CONFIG`) |
//!
//! The unit file's `RestartPreventExitStatus=78` keeps systemd from
//! restarting a daemon in a loop on a policy it will never accept.

use std::fmt;

use crate::config::is_config_error;

pub const NOT_RUNNING: u8 = 3;
pub const NOT_READY: u8 = 69;
pub const CONFIG: u8 = 78;

/// An error that ends the command with a given exit code.
#[derive(Debug)]
pub struct Failure {
    pub code: u8,
    pub message: String,
}

impl Failure {
    pub fn error(code: u8, message: impl Into<String>) -> anyhow::Error {
        anyhow::Error::new(Self {
            code,
            message: message.into(),
        })
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Failure {}

/// The exit code of a command that failed with `error`.
pub fn exit_code(error: &anyhow::Error) -> u8 {
    if let Some(failure) = error.chain().find_map(|e| e.downcast_ref::<Failure>()) {
        return failure.code;
    }
    if is_config_error(error) { CONFIG } else { 1 }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::Policy;

    #[test]
    fn bad_policies_exit_78_and_others_1() {
        let bad = Policy::parse(Path::new("p.toml"), "[proxy]\nfail = 1\n").unwrap_err();
        let e = anyhow::Error::new(bad).context("reloading");
        assert_eq!(exit_code(&e), CONFIG);
        let missing = Policy::load(Path::new("/nonexistent/policy.toml")).unwrap_err();
        assert_eq!(exit_code(&missing), CONFIG);
        assert_eq!(exit_code(&anyhow::anyhow!("other")), 1);
        let e = Failure::error(NOT_RUNNING, "no daemon").context("status");
        assert_eq!(exit_code(&e), NOT_RUNNING);
    }
}
