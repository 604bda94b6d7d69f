//! Load for the benchmarks: Postfix's smtp-source from the lab's client,
//! and the descriptor limit many sessions need.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::{Lab, Netns};

/// Runs smtp-source from the client namespace; returns its run time.
pub fn smtp_source(
    lab: &Lab,
    server: SocketAddr,
    sessions: usize,
    messages: usize,
    bytes: usize,
) -> Result<Duration> {
    smtp_source_from(&lab.client, server, sessions, messages, bytes)
}

/// [`smtp_source`] from `client` (the cluster lab's client, for one).
pub fn smtp_source_from(
    client: &Netns,
    server: SocketAddr,
    sessions: usize,
    messages: usize,
    bytes: usize,
) -> Result<Duration> {
    let mut cmd = client.command("smtp-source");
    cmd.args(["-s", &sessions.to_string()])
        .args(["-m", &messages.to_string()])
        .args(["-l", &bytes.to_string()])
        .args(["-f", "a@client.test", "-t", "b@server.test"])
        .arg(server.to_string());
    let start = Instant::now();
    let out = cmd.output().context("starting smtp-source")?;
    let elapsed = start.elapsed();
    if !out.status.success() || !out.stderr.is_empty() {
        bail!(
            "smtp-source to {server} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(elapsed)
}

/// Raises RLIMIT_NOFILE to `want`, or as far as the hard limit lets an
/// unprivileged raise go; returns the new soft limit.
pub fn raise_nofile(want: u64) -> Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit into a valid struct.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        bail!("getrlimit: {}", std::io::Error::last_os_error());
    }
    let mut raised = libc::rlimit {
        rlim_cur: want,
        rlim_max: want.max(limit.rlim_max),
    };
    // SAFETY: setrlimit with a valid struct; affects this process and the
    // children it starts afterwards.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
        return Ok(want);
    }
    raised = libc::rlimit {
        rlim_cur: want.min(limit.rlim_max),
        rlim_max: limit.rlim_max,
    };
    // SAFETY: setrlimit with a valid struct; affects this process and the
    // children it starts afterwards.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
        bail!(
            "raising RLIMIT_NOFILE to {}: {}",
            raised.rlim_cur,
            std::io::Error::last_os_error()
        );
    }
    Ok(raised.rlim_cur)
}
