//! The figures the end-to-end tests' `measure` printed (needs root): on a
//! lab of its own, `inspector run` on the gateway and Postfix's
//! `smtp-sink` on the server, Python's smtplib sends a 5 MB message, one
//! session each, to the server's inspected address (`SERVER_V4`) and to
//! its address exempt in the policy (`MAIL_GATEWAY_V4`, the direct path),
//! alternating, `--repeats` times each: the median time of each and their
//! ratio. Then the daemon's RSS before and while `--sessions` sessions are
//! open past EHLO. Prints one JSON object, and the figures as sentences on
//! stderr.
//!
//! `cargo bench -p inspector --bench e2e -- --repeats 7 --sessions 200`

use std::{
    io::BufRead,
    path::{Path, PathBuf},
    process::Stdio,
};

use anyhow::{Context, Result, bail};
use inspector::kernel::bpffs;
use inspector_lab::{
    Lab, MAIL_GATEWAY_V4, OUTSIDE, SERVER_V4,
    figures::{median, rss_kib},
    inspector::{Scratch, start_proxy},
    messages::varied,
};

fn main() -> Result<()> {
    let (mut repeats, mut sessions) = (7usize, 200usize);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || -> Result<usize> { Ok(args.next().context("a number")?.parse()?) };
        match arg.as_str() {
            "--repeats" => repeats = value()?,
            "--sessions" => sessions = value()?,
            // What `cargo bench` passes to every bench.
            "--bench" => {}
            _ => bail!("unknown argument {arg}"),
        }
    }
    let pid = std::process::id();
    let lab = Lab::create(&format!("be{pid}"))?;
    let pins = bpffs::OwnedPinDir::new(PathBuf::from(format!(
        "/sys/fs/bpf/inspector-bench-e2e-{pid}"
    )))?;
    let scratch = Scratch::new(std::env::temp_dir().join(format!("inspector-bench-e2e-{pid}")))?;
    let policy = scratch.path().join("policy.toml");
    std::fs::write(
        &policy,
        format!("[[exempt]]\nnetwork = \"{MAIL_GATEWAY_V4}\"\n"),
    )?;
    let _sink = lab.server.spawn(lab.server.command("smtp-sink").args([
        "-u",
        "nobody",
        "0.0.0.0:25",
        "64",
    ]))?;
    lab.server.wait_listening("0.0.0.0:25")?;
    let args = [
        "--iface".as_ref(),
        OUTSIDE.as_ref(),
        "--policy".as_ref(),
        policy.as_os_str(),
    ];
    let log = scratch.path().join("daemon.log");
    let mut daemon = start_proxy(
        &lab.gateway,
        Path::new(env!("CARGO_BIN_EXE_inspector")),
        pins.path(),
        &args,
        &log,
    )?;

    let big = varied(0, true).pop().context("the 5 MB message")?;
    let message = scratch.path().join("big.eml");
    std::fs::write(&message, &big)?;
    let send = |host: String| -> Result<Vec<f64>> {
        let out = python(&lab, "send_timed.py")
            .arg(host)
            .arg(&message)
            .arg("1")
            .output()?;
        if !out.status.success() {
            bail!("send_timed.py: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::parse)
            .collect::<Result<_, _>>()?)
    };
    let (mut inspected, mut direct) = (Vec::new(), Vec::new());
    for _ in 0..repeats {
        inspected.extend(send(SERVER_V4.to_string())?);
        direct.extend(send(MAIL_GATEWAY_V4.to_string())?);
    }
    let (mi, md) = (median(inspected), median(direct));
    let mb = big.len() as f64 / 1e6;
    eprintln!(
        "5 MB message, median of {repeats}: inspected {mi:.3} s ({:.0} MB/s), direct {md:.3} s ({:.0} MB/s), ratio {:.2}",
        mb / mi,
        mb / md,
        mi / md
    );

    // Memory: the daemon's RSS with the sessions open, each past EHLO.
    // (nsenter, the daemon's parent, execs it: the same pid.)
    let pid = daemon.child().id();
    let before = rss_kib(pid)?;
    let mut holder = python(&lab, "hold_sessions.py")
        .arg(SERVER_V4.to_string())
        .arg(sessions.to_string())
        .stdout(Stdio::piped())
        .spawn()?;
    let mut line = String::new();
    std::io::BufReader::new(holder.stdout.as_mut().context("piped")?).read_line(&mut line)?;
    if line.trim() != "ready" {
        bail!("hold_sessions.py: {line:?}");
    }
    let during = rss_kib(pid)?;
    holder.wait()?;
    let per_session = during.saturating_sub(before) as f64 / sessions as f64;
    eprintln!(
        "daemon RSS: {before} KiB idle, {during} KiB with {sessions} sessions past EHLO: {per_session:.1} KiB per session"
    );
    let out = serde_json::json!({
        "repeats": repeats,
        "message_bytes": big.len(),
        "inspected_s": mi,
        "direct_s": md,
        "inspected_mb_per_s": mb / mi,
        "direct_mb_per_s": mb / md,
        "sessions": sessions,
        "rss_idle_kib": before,
        "rss_sessions_kib": during,
        "kib_per_session": per_session,
    });
    println!("{out}");
    Ok(())
}

/// `python3 py/NAME` in the client namespace.
fn python(lab: &Lab, name: &str) -> std::process::Command {
    let mut cmd = lab.client.command("python3");
    cmd.arg("-B").arg(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("benches/py")
            .join(name),
    );
    cmd
}
