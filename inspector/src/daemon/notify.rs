//! The systemd notification protocol (sd_notify(3)), without libsystemd:
//! one datagram per message to the unix socket named by `NOTIFY_SOCKET`
//! (a path, or `@name` for the abstract namespace). Outside systemd the
//! variable is unset and every call does nothing.
//!
//! The daemon sends `READY=1` once its programs are attached, the policy
//! routing is installed and the proxy's loop has beaten once (its listener
//! is bound and the kernel steers to it); `RELOADING=1` and `READY=1`
//! around a reload; `STOPPING=1` when it begins to stop; `WATCHDOG=1` from
//! the proxy's loop with each heartbeat; `STATUS=…` lines that
//! `systemctl status` shows.

use std::{
    os::{
        linux::net::SocketAddrExt,
        unix::net::{SocketAddr, UnixDatagram},
    },
    time::Duration,
};

pub struct Notifier {
    socket: Option<(UnixDatagram, SocketAddr)>,
    watchdog: Option<Duration>,
}

impl Notifier {
    /// From the environment systemd gives a `Type=notify` service.
    pub fn from_env() -> Self {
        let socket = std::env::var_os("NOTIFY_SOCKET").and_then(|path| {
            let path = path.to_string_lossy().into_owned();
            let addr = match path.strip_prefix('@') {
                Some(name) => SocketAddr::from_abstract_name(name.as_bytes()),
                None => SocketAddr::from_pathname(&path),
            };
            match (UnixDatagram::unbound(), addr) {
                (Ok(sock), Ok(addr)) => Some((sock, addr)),
                (Err(e), _) | (_, Err(e)) => {
                    log::warn!("NOTIFY_SOCKET={path}: {e}; systemd will not hear from us");
                    None
                }
            }
        });
        // WATCHDOG_PID, when set, names the process systemd watches.
        let ours = std::env::var("WATCHDOG_PID")
            .ok()
            .and_then(|p| p.parse::<u32>().ok())
            .is_none_or(|pid| pid == std::process::id());
        let watchdog = std::env::var("WATCHDOG_USEC")
            .ok()
            .and_then(|u| u.parse::<u64>().ok())
            .filter(|&usec| usec > 0 && ours)
            .map(Duration::from_micros);
        Self { socket, watchdog }
    }

    /// The watchdog interval systemd asked for (`WatchdogSec=`), if any.
    pub fn watchdog(&self) -> Option<Duration> {
        self.watchdog
    }

    /// Sends `state` (newline-separated `KEY=VALUE` assignments).
    pub fn notify(&self, state: &str) {
        if let Some((sock, addr)) = &self.socket
            && let Err(e) = sock.send_to_addr(state.as_bytes(), addr)
        {
            log::warn!("notifying systemd ({}): {e}", first_line(state));
        }
    }

    pub fn ready(&self, status: &str) {
        self.notify(&format!("READY=1\nSTATUS={status}"));
    }

    pub fn reloading(&self) {
        // MONOTONIC_USEC: what `Type=notify-reload` (systemd 253) requires;
        // harmless before.
        let usec = crate::kernel::sweeper::monotonic_ns() / 1000;
        self.notify(&format!("RELOADING=1\nMONOTONIC_USEC={usec}"));
    }

    pub fn stopping(&self) {
        self.notify("STOPPING=1\nSTATUS=stopping: draining sessions");
    }

    pub fn watchdog_ping(&self) {
        if self.watchdog.is_some() {
            self.notify("WATCHDOG=1");
        }
    }
}

fn first_line(state: &str) -> &str {
    state.lines().next().unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real datagram socket stands in for systemd's.
    #[test]
    fn messages_arrive_as_datagrams() {
        let dir = std::env::temp_dir().join(format!("inspector-notify-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify");
        let systemd = UnixDatagram::bind(&path).unwrap();
        let n = Notifier {
            socket: Some((
                UnixDatagram::unbound().unwrap(),
                SocketAddr::from_pathname(&path).unwrap(),
            )),
            watchdog: Some(Duration::from_secs(10)),
        };
        n.ready("inspecting");
        n.watchdog_ping();
        let mut buf = [0u8; 256];
        let len = systemd.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"READY=1\nSTATUS=inspecting");
        let len = systemd.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"WATCHDOG=1");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
