//! The daemon's control socket: how `inspector stats`, `status` and
//! `reload` reach a running daemon (the kernel counters are read from the
//! pinned maps; the ESMTP counters and the daemon's state live in its
//! memory).
//!
//! Each daemon listens on a unix socket `/run/inspector/<pid>.stats`. A
//! client connects, writes one request line (`stats`, `status` or
//! `reload`; nothing at all means `stats`) and shuts down its writing side;
//! the daemon writes one JSON object and closes. The CLI finds the daemons
//! of a pin directory through their interface locks (see
//! [`crate::daemon::lock`]), so it works across network namespaces and
//! whether or not the metrics endpoint is on. The socket is served by a
//! thread of its own, so `status` answers even while the proxy's runtime
//! is busy or stuck (and then says how old its heartbeat is).

use std::{
    io::{Read, Write},
    os::unix::net::{UnixListener, UnixStream},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::{Context, Result};

use super::esmtp::EsmtpSnapshot;
use crate::RUN_DIR;

const TIMEOUT: Duration = Duration::from_secs(2);
/// A reload re-reads the policy and rewrites maps: give it longer.
const RELOAD_TIMEOUT: Duration = Duration::from_secs(60);
const MAX_REQUEST: usize = 256;

pub fn path_of(pid: u32) -> PathBuf {
    Path::new(RUN_DIR).join(format!("{pid}.stats"))
}

/// What answers the requests: the daemon.
pub trait Control: Send + Sync + 'static {
    /// The JSON answer to one request line (`stats`, `status`, `reload`).
    fn answer(&self, request: &str) -> serde_json::Value;
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

    /// Answers every connection, each on a thread of its own (a reload
    /// does not hold up `status`), for as long as the process lives.
    pub fn serve(&self, control: Arc<dyn Control>) -> Result<()> {
        let listener = self.listener.try_clone()?;
        std::thread::Builder::new()
            .name("control".into())
            .spawn(move || {
                for stream in listener.incoming() {
                    match stream {
                        Ok(stream) => {
                            let control = control.clone();
                            let _ = std::thread::Builder::new()
                                .name("control-request".into())
                                .spawn(move || answer(stream, &*control));
                        }
                        Err(e) => {
                            log::warn!("stats socket: {e}");
                            std::thread::sleep(Duration::from_millis(100));
                        }
                    }
                }
            })?;
        Ok(())
    }
}

fn answer(mut stream: UnixStream, control: &dyn Control) {
    let _ = stream.set_read_timeout(Some(TIMEOUT));
    let _ = stream.set_write_timeout(Some(TIMEOUT));
    let mut request = Vec::new();
    let mut buf = [0u8; 64];
    // Until a newline, EOF, or a client that sends nothing (an old reader).
    while request.len() < MAX_REQUEST && !request.contains(&b'\n') {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => request.extend_from_slice(&buf[..n]),
        }
    }
    let text = String::from_utf8_lossy(&request);
    let request = match text.trim() {
        "" => "stats",
        r => r,
    };
    let mut body = serde_json::to_vec(&control.answer(request)).unwrap_or_default();
    body.push(b'\n');
    let _ = stream.write_all(&body);
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

/// Sends `request` to daemon `pid`; returns its JSON answer.
pub fn request(pid: u32, request: &str) -> Result<serde_json::Value> {
    let path = path_of(pid);
    let mut stream =
        UnixStream::connect(&path).with_context(|| format!("connecting to {}", path.display()))?;
    let timeout = if request == "reload" {
        RELOAD_TIMEOUT
    } else {
        TIMEOUT
    };
    stream.set_read_timeout(Some(timeout))?;
    stream.write_all(format!("{request}\n").as_bytes())?;
    stream.shutdown(std::net::Shutdown::Write)?;
    let mut body = String::new();
    stream
        .read_to_string(&mut body)
        .with_context(|| format!("reading {} (is the daemon stuck?)", path.display()))?;
    serde_json::from_str(&body).with_context(|| format!("reading {}", path.display()))
}

/// The ESMTP counters of one daemon.
pub fn read(pid: u32) -> Result<EsmtpSnapshot> {
    let value = request(pid, "stats")?;
    serde_json::from_value(value).with_context(|| format!("reading {}", path_of(pid).display()))
}
