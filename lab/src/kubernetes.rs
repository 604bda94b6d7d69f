//! The Kubernetes manifest validator the tests use: PyPI's
//! kubernetes-validate, which carries the API's JSON schemas (so it needs
//! no network), installed by `cargo xtask setup` into a virtual
//! environment of its own.

use std::path::{Path, PathBuf};

/// Its virtual environment.
pub const DIR: &str = "/opt/inspector-test/kubernetes-validate";
/// The release installed (pinned: its schemas decide what passes).
pub const VERSION: &str = "1.37.0";
/// The Kubernetes API version the manifests are checked against.
pub const API_VERSION: &str = "1.37.0";

pub fn binary() -> PathBuf {
    Path::new(DIR).join("bin/kubernetes-validate")
}
