//! How `inspector stats` reads the ESMTP counters, which live in the
//! daemon's memory (the kernel counters are read from the pinned maps).
//!
//! Each daemon listens on a unix socket `/run/inspector/<pid>.stats`; a
//! client connects, the daemon writes one JSON [`DaemonSnapshot`] (the
//! [`EsmtpSnapshot`] and the upstream mode in force) and closes.
//! The CLI finds the daemons of a pin directory through their interface
//! locks (see [`crate::daemon::lock`]), so it works across network
//! namespaces and whether or not the metrics endpoint is on.

use std::{
    io::Read,
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::{Context, Result};
use tokio::{io::AsyncWriteExt, net::UnixListener};

use serde::{Deserialize, Serialize};

use super::esmtp::{EsmtpSnapshot, EsmtpState};
use crate::{
    RUN_DIR,
    proxy::upstream::{Upstream, UpstreamStatus},
};

/// What a daemon tells about itself: its ESMTP counters (`inspector stats`)
/// and, with the proxy, the upstream mode in force (`inspector status`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DaemonSnapshot {
    #[serde(flatten)]
    pub esmtp: EsmtpSnapshot,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<UpstreamStatus>,
}

const TIMEOUT: Duration = Duration::from_secs(2);

pub fn path_of(pid: u32) -> PathBuf {
    Path::new(RUN_DIR).join(format!("{pid}.stats"))
}

/// The daemon's side; the socket file is removed on drop.
pub struct StatsSocket {
    listener: UnixListener,
    path: PathBuf,
}

impl StatsSocket {
    pub fn bind() -> Result<Self> {
        std::fs::create_dir_all(RUN_DIR).with_context(|| format!("creating {RUN_DIR}"))?;
        remove_leftovers();
        let path = path_of(std::process::id());
        let _ = std::fs::remove_file(&path); // a leftover of a killed daemon with our pid
        let listener =
            UnixListener::bind(&path).with_context(|| format!("binding {}", path.display()))?;
        Ok(Self { listener, path })
    }

    /// Answers every connection with a snapshot of `state` and `upstream`.
    pub async fn serve(&self, state: Arc<EsmtpState>, upstream: Option<Arc<Upstream>>) {
        loop {
            match self.listener.accept().await {
                Ok((mut stream, _)) => {
                    let snapshot = DaemonSnapshot {
                        esmtp: state.snapshot(),
                        upstream: upstream.as_ref().map(|u| u.status()),
                    };
                    let mut body = serde_json::to_vec(&snapshot).unwrap_or_default();
                    body.push(b'\n');
                    tokio::spawn(async move {
                        let _ = tokio::time::timeout(TIMEOUT, stream.write_all(&body)).await;
                    });
                }
                Err(e) => {
                    log::warn!("stats socket: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}

impl Drop for StatsSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Removes the sockets of daemons that died without removing theirs
/// (killed): a process that is gone cannot come back to use it.
fn remove_leftovers() {
    let Ok(entries) = std::fs::read_dir(RUN_DIR) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_suffix(".stats"))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// The ESMTP counters of one daemon.
pub fn read(pid: u32) -> Result<EsmtpSnapshot> {
    read_daemon(pid).map(|d| d.esmtp)
}

/// All one daemon tells.
pub fn read_daemon(pid: u32) -> Result<DaemonSnapshot> {
    let path = path_of(pid);
    let mut stream =
        UnixStream::connect(&path).with_context(|| format!("connecting to {}", path.display()))?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    let mut body = String::new();
    stream.read_to_string(&mut body)?;
    serde_json::from_str(&body).with_context(|| format!("reading {}", path.display()))
}
