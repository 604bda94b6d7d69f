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

/// SMTP sessions over `window` from `clients` threads in the client
/// namespace, each one session after another: one thread measures a
/// session's latency, several the path's capacity. A thread joins the
/// namespace once; a thread and a `setns` per session would cost more than
/// a whole session on a bare veth pair (Python: 8,000 sessions/s on one
/// thread, 1,900 with a thread and a `setns` each). A session that fails
/// (or waits [`SLOW_SESSION`] for a step) counts as not completed.
pub fn sessions(
    lab: &Lab,
    server: SocketAddr,
    window: Duration,
    clients: usize,
) -> Result<Sessions> {
    lab.client.run(|| {
        let start = Instant::now();
        let threads = std::thread::scope(|scope| {
            let threads: Vec<_> = (0..clients.max(1))
                .map(|_| {
                    scope.spawn(|| {
                        let (mut done, mut failed, mut first) = (0u32, 0u32, None);
                        while start.elapsed() < window {
                            match session_from_here(server, SLOW_SESSION) {
                                Ok(()) => done += 1,
                                Err(e) => {
                                    failed += 1;
                                    first.get_or_insert(e);
                                }
                            }
                        }
                        (done, failed, first)
                    })
                })
                .collect();
            threads
                .into_iter()
                .map(|t| t.join().expect("session thread"))
                .collect::<Vec<_>>()
        });
        let elapsed = start.elapsed().as_secs_f64();
        let mut out = Sessions::default();
        for (done, failed, first) in threads {
            out.per_s += f64::from(done) / elapsed;
            out.completed += done;
            out.failed += failed;
            out.first_failure = out.first_failure.or(first);
        }
        out
    })
}

/// What [`sessions`] measured.
#[derive(Debug, Default)]
pub struct Sessions {
    /// Sessions completed per second.
    pub per_s: f64,
    pub completed: u32,
    pub failed: u32,
    pub first_failure: Option<anyhow::Error>,
}

impl Sessions {
    /// The rate, or the first failure if any session failed.
    pub fn all_completed(self) -> Result<f64> {
        match self.first_failure {
            Some(e) => Err(e.context(format!("{} sessions failed", self.failed))),
            None => Ok(self.per_s),
        }
    }
}

/// [`sessions`] that all completed, per second.
pub fn sessions_per_s(
    lab: &Lab,
    server: SocketAddr,
    window: Duration,
    clients: usize,
) -> Result<f64> {
    sessions(lab, server, window, clients)?.all_completed()
}

/// Connect from the client, read the greeting, QUIT, read the goodbye.
pub fn smtp_session(lab: &Lab, server: SocketAddr) -> Result<()> {
    lab.client
        .run(|| session_from_here(server, Duration::from_secs(3)))?
}

/// How long a measured session may wait for its connection and for each
/// reply: nftables `synproxy` on this lab completes a handshake only when
/// the server sends its SYN-ACK again, 1 s later and sometimes 3 s.
const SLOW_SESSION: Duration = Duration::from_secs(10);

/// [`smtp_session`] from the calling thread's namespace, each step within
/// `timeout`.
fn session_from_here(server: SocketAddr, timeout: Duration) -> Result<()> {
    use std::io::{BufRead, BufReader, Write};
    let stream = std::net::TcpStream::connect_timeout(&server, timeout)
        .with_context(|| format!("connecting to {server}"))?;
    stream.set_read_timeout(Some(timeout))?;
    let port = stream.local_addr()?.port();
    let mut reader = BufReader::new(&stream);
    let mut line = String::new();
    reader
        .read_line(&mut line)
        .with_context(|| format!("waiting for {server}'s greeting (from port {port})"))?;
    if !line.starts_with("220") {
        bail!("greeting {line:?}");
    }
    (&stream).write_all(b"QUIT\r\n")?;
    line.clear();
    reader
        .read_line(&mut line)
        .with_context(|| format!("waiting for {server}'s answer to QUIT (from port {port})"))?;
    if !line.starts_with("221") {
        bail!("QUIT answered {line:?}");
    }
    Ok(())
}

/// Waits up to 5 s until an SMTP session with `server` completes.
pub fn wait_smtp(lab: &Lab, server: SocketAddr) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(5);
    while smtp_session(lab, server).is_err() {
        if Instant::now() > deadline {
            bail!("no SMTP server answers on {server}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// SYNs per burst and the pause between bursts of [`sessions_during_flood`].
pub const FLOOD_BURST: usize = 100;
pub const FLOOD_PAUSE: Duration = Duration::from_millis(5);

/// [`sessions`] while `send_syns(n)`, which sends `n` spoofed SYNs, makes a
/// steady flood (begun 200 ms before, to fill the limits), and the SYNs it
/// sent.
pub fn sessions_during_flood(
    lab: &Lab,
    mut send_syns: impl FnMut(usize) -> Result<()> + Send,
    server: SocketAddr,
    window: Duration,
    clients: usize,
) -> Result<(Sessions, usize)> {
    use std::sync::atomic::{AtomicBool, Ordering};
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let flooding = scope.spawn(|| -> Result<usize> {
            let mut sent = 0;
            while !stop.load(Ordering::Relaxed) {
                send_syns(FLOOD_BURST)?;
                sent += FLOOD_BURST;
                std::thread::sleep(FLOOD_PAUSE);
            }
            Ok(sent)
        });
        std::thread::sleep(Duration::from_millis(200));
        let rate = sessions(lab, server, window, clients);
        stop.store(true, Ordering::Relaxed);
        let sent = flooding.join().expect("flood thread")?;
        Ok((rate?, sent))
    })
}
