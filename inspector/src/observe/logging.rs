//! The daemon's and the CLI's log: `--log-level` for the inspector's own
//! modules, and journald's priority prefixes when stderr is the journal.
//!
//! Under systemd, stderr is a stream to journald and the unit's
//! environment says so (`JOURNAL_STREAM=DEV:INODE`, the device and inode of
//! that stream). Then each line starts with `<N>`, the syslog priority
//! journald files it under (`<3>` error … `<7>` debug, as sd-daemon(3)
//! describes), and carries no timestamp: the journal keeps its own.
//! Anywhere else lines look as env_logger writes them.

use std::{
    io::Write,
    os::{fd::AsRawFd, unix::fs::MetadataExt},
};

use log::{Level, LevelFilter};

/// The levels `--log-level` takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    pub fn filter(self) -> LevelFilter {
        match self {
            LogLevel::Error => LevelFilter::Error,
            LogLevel::Warn => LevelFilter::Warn,
            LogLevel::Info => LevelFilter::Info,
            LogLevel::Debug => LevelFilter::Debug,
            LogLevel::Trace => LevelFilter::Trace,
        }
    }
}

/// Sets up the log. `level` (from `--log-level`) applies to the
/// inspector's own modules; the libraries it uses log at `info` at most, so
/// `debug` shows sessions, not every netlink message. Without `level`,
/// `RUST_LOG` decides as env_logger reads it, else `info`.
pub fn init(level: Option<LogLevel>) {
    let mut builder = match level {
        Some(level) => {
            let own = level.filter();
            let mut b = env_logger::Builder::new();
            b.filter_level(own.min(LevelFilter::Info))
                .filter_module("inspector", own)
                .filter_module("inspector_esmtp", own);
            b
        }
        None => env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")),
    };
    builder.format_target(false);
    if stderr_is_journal() {
        builder
            .format(|buf, record| writeln!(buf, "<{}>{}", priority(record.level()), record.args()));
    }
    builder.init();
}

/// Prints the error a command ends with on stderr, with the error
/// priority when stderr is the journal.
pub fn report_error(error: &anyhow::Error) {
    if stderr_is_journal() {
        eprintln!("<{}>inspector: {error:#}", priority(Level::Error));
    } else {
        eprintln!("inspector: {error:#}");
    }
}

/// The syslog priority of a level (sd-daemon(3): `SD_ERR` 3 … `SD_DEBUG` 7).
pub fn priority(level: Level) -> u8 {
    match level {
        Level::Error => 3,
        Level::Warn => 4,
        Level::Info => 6,
        Level::Debug | Level::Trace => 7,
    }
}

/// Whether stderr is the stream systemd connected to journald: the
/// `JOURNAL_STREAM` it set names stderr's device and inode (a child whose
/// stderr was redirected elsewhere inherits the variable, not the stream).
pub fn stderr_is_journal() -> bool {
    let Ok(stream) = std::env::var("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = stream.split_once(':') else {
        return false;
    };
    let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else {
        return false;
    };
    let fd = std::io::stderr().as_raw_fd();
    // /proc/self/fd/N is the stream itself (a socket has no path to stat).
    std::fs::metadata(format!("/proc/self/fd/{fd}")).is_ok_and(|m| m.dev() == dev && m.ino() == ino)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priorities_are_syslogs() {
        assert_eq!(priority(Level::Error), 3);
        assert_eq!(priority(Level::Warn), 4);
        assert_eq!(priority(Level::Info), 6);
        assert_eq!(priority(Level::Debug), 7);
    }
}
