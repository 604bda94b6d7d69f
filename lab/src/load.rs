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

/// Complete SMTP sessions per second over `window`, one after another from
/// one thread in the client namespace: a thread that joins the namespace
/// per session (a thread and a `setns`) costs more than a whole session on
/// a bare veth pair (Python: 8,000 sessions/s on one thread, 1,900 with a
/// thread and a `setns` each).
pub fn sessions_per_s(lab: &Lab, server: SocketAddr, window: Duration) -> Result<f64> {
    lab.client.run(|| {
        let start = Instant::now();
        let mut done = 0u32;
        while start.elapsed() < window {
            session_from_here(server)?;
            done += 1;
        }
        Ok(f64::from(done) / start.elapsed().as_secs_f64())
    })?
}

/// Connect from the client, read the greeting, QUIT, read the goodbye.
pub fn smtp_session(lab: &Lab, server: SocketAddr) -> Result<()> {
    lab.client.run(|| session_from_here(server))?
}

/// [`smtp_session`] from the calling thread's namespace.
fn session_from_here(server: SocketAddr) -> Result<()> {
    use std::io::{BufRead, BufReader, Write};
    let stream = std::net::TcpStream::connect_timeout(&server, Duration::from_secs(3))
        .with_context(|| format!("connecting to {server}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(3)))?;
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

/// SMTP sessions per second over `window` while `flood` sends a steady
/// flood (begun 200 ms before, to fill the limits), and the SYNs it sent.
pub fn sessions_during_flood(
    lab: &Lab,
    flood: &mut crate::syn::SynFlood,
    server: SocketAddr,
    window: Duration,
) -> Result<(f64, usize)> {
    use std::sync::atomic::{AtomicBool, Ordering};
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let flooding = scope.spawn(|| -> Result<usize> {
            let mut sent = 0;
            while !stop.load(Ordering::Relaxed) {
                flood.send(FLOOD_BURST)?;
                sent += FLOOD_BURST;
                std::thread::sleep(FLOOD_PAUSE);
            }
            Ok(sent)
        });
        std::thread::sleep(Duration::from_millis(200));
        let rate = sessions_per_s(lab, server, window);
        stop.store(true, Ordering::Relaxed);
        let sent = flooding.join().expect("flood thread")?;
        Ok((rate?, sent))
    })
}
