//! The daemon's signals: SIGTERM and SIGINT stop it, SIGHUP reloads the
//! policy (what `systemctl reload` and logrotate send).

use anyhow::Result;
use tokio::signal::unix::{Signal, SignalKind, signal};

pub struct Signals {
    term: Signal,
    int: Signal,
    hup: Signal,
}

impl Signals {
    /// Needs a runtime context; from then on the signals are caught (a
    /// SIGHUP during the start no longer kills the daemon).
    pub fn new() -> Result<Self> {
        Ok(Self {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
        })
    }

    /// The next signal that asks for something.
    pub async fn next(&mut self) -> Event {
        tokio::select! {
            _ = self.term.recv() => log::info!("SIGTERM received"),
            _ = self.int.recv() => log::info!("SIGINT received"),
            _ = self.hup.recv() => {
                log::info!("SIGHUP received: reloading the policy");
                return Event::Reload;
            }
        }
        Event::Stop
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    Stop,
    Reload,
}
