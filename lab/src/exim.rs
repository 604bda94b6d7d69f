//! Where the private Exim lives. Debian cannot install Exim beside Postfix
//! (both are a `mail-transport-agent`), so `cargo xtask setup` unpacks
//! Debian's `exim4-daemon-light` into [`DIR`] instead of installing it; the
//! tests run that binary with configurations of their own (`-C`).

use std::path::{Path, PathBuf};

/// The unpacked package (its `usr/sbin/exim4` and documentation).
pub const DIR: &str = "/opt/inspector-test/exim";

/// The user Debian's build of Exim drops to (compiled in; it must exist).
pub const USER: &str = "Debian-exim";

/// The Exim binary (setuid root, as in the package).
pub fn binary() -> PathBuf {
    Path::new(DIR).join("usr/sbin/exim4")
}
