//! The inspector as a service, on a lab with real sessions: systemd's
//! notification protocol on a real `NOTIFY_SOCKET`, `status`, reloads with
//! sessions open across them, the kernel's view of a stopped (SIGSTOP)
//! proxy, the daemon as a non-root user with exactly the unit's
//! capabilities, and the unit checked by `systemd-analyze verify`. Needs
//! root; fails, never skips, without it.

mod support;

use std::{
    os::unix::net::UnixDatagram,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use inspector_lab::{
    MAIL_GATEWAY_V4, OUTSIDE, SERVER_V4, ScopedChild,
    inspector::{PROXY_LISTENING, Scratch},
};
use support::{cli, cli_ok, inspector_bin, proxy::*};

/// The unit's capabilities, exactly (see deploy/systemd/inspector.service).
const CAPABILITIES: &str = "-all,+bpf,+perfmon,+net_admin,+net_bind_service,+net_raw";

fn unit_file() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/systemd/inspector.service")
}

/// `inspector run` on the fixture's gateway with `env`, optionally
/// through `wrapper` (e.g. setpriv), its log in daemon.log.
fn spawn_daemon(f: &Fixture, env: &[(&str, &str)], wrapper: &[&str]) -> ScopedChild {
    let log = std::fs::File::create(f.dir.join("daemon.log")).unwrap();
    let mut cmd = if wrapper.is_empty() {
        f.lab.gateway.command(inspector_bin())
    } else {
        let mut c = f.lab.gateway.command(wrapper[0]);
        c.args(&wrapper[1..]).arg("--").arg(inspector_bin());
        c
    };
    cmd.arg("--pin-dir")
        .arg(f.pins.path())
        .args([
            "--log-level",
            "debug",
            "run",
            "--iface",
            OUTSIDE,
            "--policy",
        ])
        .arg(f.dir.join("policy.toml"))
        .envs(env.iter().copied())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    f.lab.gateway.spawn(&mut cmd).unwrap()
}

/// Reads datagrams from `sock` until one contains `what` (returns it and
/// the ones before), or fails after `within`.
fn expect_datagram(sock: &UnixDatagram, what: &str, within: Duration) -> Vec<String> {
    let deadline = Instant::now() + within;
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        if let Ok(n) = sock.recv(&mut buf) {
            let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
            let found = msg.contains(what);
            seen.push(msg);
            if found {
                return seen;
            }
        }
    }
    panic!("no `{what}` within {within:?}; got {seen:?}");
}

fn smtp_banner(f: &Fixture, timeout: &str) -> (bool, String) {
    let out = f.swaks(
        &SERVER_V4.to_string(),
        &["--quit-after", "EHLO", "--timeout", timeout],
    );
    (out.status.success(), text(&out))
}

#[test]
fn ready_comes_after_the_steering_and_the_watchdog_is_fed() {
    let mut f = Fixture::bare("notify", "");
    f.sink = Some(f.start_sink("0.0.0.0:25"));
    let socket_path = f.dir.join("notify.sock");
    let systemd = UnixDatagram::bind(&socket_path).unwrap();
    let path = socket_path.to_str().unwrap();
    let daemon = spawn_daemon(
        &f,
        &[("NOTIFY_SOCKET", path), ("WATCHDOG_USEC", "4000000")],
        &[],
    );
    f.daemon = Some(daemon);
    let seen = expect_datagram(&systemd, "READY=1", Duration::from_secs(30));
    // When READY=1 arrives, everything is up: the steering is pinned, the
    // rule installed, the listener listening; the next session is inspected.
    assert!(f.log().contains(PROXY_LISTENING), "{}", f.log());
    assert!(f.pins.path().join(format!("steer-{OUTSIDE}")).exists());
    assert!(f.ip_rules().contains("lookup 2525"), "{}", f.ip_rules());
    assert_eq!(seen.len(), 1, "nothing before READY=1: {seen:?}");
    assert!(seen[0].contains("STATUS=inspecting on outside"), "{seen:?}");
    let (ok, t) = smtp_banner(&f, "10");
    assert!(
        ok && t.contains("<-  220 mail ESMTP"),
        "inspected at once: {t}"
    );
    // The watchdog is fed from the proxy's loop (every second).
    let start = Instant::now();
    expect_datagram(&systemd, "WATCHDOG=1", Duration::from_secs(3));
    expect_datagram(&systemd, "WATCHDOG=1", Duration::from_secs(3));
    assert!(start.elapsed() < Duration::from_secs(4));

    // status: ready, with what it runs.
    let status: serde_json::Value =
        serde_json::from_str(&cli_ok(f.pins.path(), &["status", "--json"])).unwrap();
    let d = &status["daemons"][0];
    assert_eq!(d["state"], "ready", "{status}");
    assert_eq!(d["interfaces"][0]["name"], OUTSIDE);
    assert_eq!(d["interfaces"][0]["steering"], "attached");
    assert!(d["interfaces"][0]["xdp"].is_string());
    assert_eq!(d["watchdog"], true);
    let expected = support_sha256(&f.dir.join("policy.toml"));
    assert_eq!(d["policy"]["sha256"], expected);
    assert!(d["heartbeat-age-ms"].as_u64().unwrap() < 3000, "{status}");
    assert!(cli_ok(f.pins.path(), &["status"]).contains("state: ready"));

    // SIGHUP: RELOADING=1, then READY=1 again.
    let pid = f.daemon.as_mut().unwrap().child().id() as i32;
    // SAFETY: kill on our own child's pid.
    unsafe { libc::kill(pid, libc::SIGHUP) };
    let seen = expect_datagram(&systemd, "READY=1", Duration::from_secs(10));
    assert!(
        seen.iter()
            .any(|m| m.starts_with("RELOADING=1\nMONOTONIC_USEC=")),
        "{seen:?}"
    );
    // SIGTERM: STOPPING=1, a clean exit; then status says nothing runs (3).
    let daemon = f.daemon.take().unwrap();
    unsafe { libc::kill(pid, libc::SIGTERM) };
    expect_datagram(&systemd, "STOPPING=1", Duration::from_secs(10));
    assert!(daemon.terminate().unwrap().success(), "{}", f.log());
    let out = cli(f.pins.path(), &["status"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
}

fn support_sha256(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

const NOOP_DROPS: &str = "[[exempt]]\nnetwork = \"198.18.1.26\"\n\n[esmtp]\n[[esmtp.match]]\nmatch = \"cmd verb NOOP\"\naction = \"drop-connection log\"\n";

/// A client in `held.py` that has said EHLO; once `go` exists it sends
/// `commands` and prints each reply.
fn held_session(
    f: &Fixture,
    name: &str,
    commands: &[&str],
) -> (std::process::Child, std::path::PathBuf) {
    let (ready, go) = (
        f.dir.join(format!("{name}.ready")),
        f.dir.join(format!("{name}.go")),
    );
    let child = f
        .client("held.py")
        .arg(SERVER_V4.to_string())
        .arg(&ready)
        .arg(&go)
        .args(commands)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(|| ready.exists(), "the held session");
    (child, go)
}

fn replies(child: std::process::Child, go: &Path) -> Vec<String> {
    std::fs::write(go, b"").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str::<String>(l).unwrap())
        .collect()
}

#[test]
fn a_reload_keeps_open_sessions_on_their_policy_and_refuses_a_bad_one() {
    let f = Fixture::new("reload", "");
    cli_ok(f.pins.path(), &["exempt", "add", "198.18.0.3"]);
    // A session opened under the first policy (NOOP is fine there).
    let (old, old_go) = held_session(&f, "old", &["NOOP", "QUIT"]);
    std::fs::write(f.dir.join("policy.toml"), NOOP_DROPS).unwrap();
    let out = cli_ok(f.pins.path(), &["reload"]);
    assert!(out.contains("reloaded"), "{out}");
    // A session opened after it gets the new policy: NOOP drops it.
    let (new, new_go) = held_session(&f, "new", &["NOOP"]);
    let old = replies(old, &old_go);
    assert!(
        old[2].starts_with("250"),
        "the open session kept its policy: {old:?}"
    );
    assert!(old[3].starts_with("221"), "{old:?}");
    let new = replies(new, &new_go);
    assert!(
        new[2].starts_with("421 4.7.0"),
        "the new session has the new policy: {new:?}"
    );
    // Exemptions are the new policy's, and the live rule stays.
    let listed = cli_ok(f.pins.path(), &["exempt", "list"]);
    assert!(
        listed.contains(&format!("{MAIL_GATEWAY_V4}/32")) && listed.contains("policy"),
        "{listed}"
    );
    assert!(
        listed.contains("198.18.0.3/32") && listed.contains("live"),
        "{listed}"
    );

    // A bad policy is refused with where it is wrong; the running one stays.
    std::fs::write(
        f.dir.join("policy.toml"),
        format!("{NOOP_DROPS}\n[proxy]\nfail = \"ajar\"\n"),
    )
    .unwrap();
    let out = cli(f.pins.path(), &["reload"]);
    assert_eq!(out.status.code(), Some(78), "{}", text(&out));
    let where_ = format!("{}:10:8: proxy.fail:", f.dir.join("policy.toml").display());
    assert!(text(&out).contains(&where_), "{}", text(&out));
    assert!(
        f.log().contains("reload refused, the running policy stays"),
        "{}",
        f.log()
    );
    let status = cli_ok(f.pins.path(), &["status"]);
    assert!(
        status.contains("refused") && status.contains("state: ready"),
        "{status}"
    );
    let (again, again_go) = held_session(&f, "again", &["NOOP"]);
    let again = replies(again, &again_go);
    assert!(
        again[2].starts_with("421 4.7.0"),
        "still the accepted policy: {again:?}"
    );
}

/// SIGSTOP stops the proxy's loop: within about 3 s its heartbeat is stale
/// and new sessions follow `fail`; SIGCONT brings inspection back.
fn stop_and_try(fail: &str) -> (Fixture, bool, String, Duration) {
    let mut f = Fixture::new(
        &format!("stall-{fail}"),
        &format!("[proxy]\nfail = \"{fail}\"\n"),
    );
    let (ok, t) = smtp_banner(&f, "10");
    assert!(ok && t.contains("<-  220 mail ESMTP"), "{t}");
    let pid = f.daemon.as_mut().unwrap().child().id() as i32;
    // SAFETY: kill on our own child's pid.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    std::thread::sleep(Duration::from_millis(3500));
    let start = Instant::now();
    let (ok, t) = smtp_banner(&f, "5");
    let took = start.elapsed();
    unsafe { libc::kill(pid, libc::SIGCONT) };
    (f, ok, t, took)
}

#[test]
fn a_stopped_proxy_fails_open_within_seconds() {
    let (f, ok, t, _) = stop_and_try("open");
    assert!(ok, "the session went to the server: {t}");
    assert!(
        !t.contains("<-  220 mail ESMTP"),
        "uninspected (the server's banner): {t}"
    );
    // Back: the loop beats again and new sessions are inspected.
    wait_for(
        || smtp_banner(&f, "10").1.contains("<-  220 mail ESMTP"),
        "inspection after SIGCONT",
    );
}

#[test]
fn a_stopped_proxy_fails_closed_with_a_reset() {
    let (f, ok, t, took) = stop_and_try("closed");
    assert!(!ok, "{t}");
    assert!(
        t.contains("Connection refused"),
        "refused (a RST), not a timeout: {t}"
    );
    assert!(took < Duration::from_secs(2), "at once: {took:?}");
    wait_for(
        || smtp_banner(&f, "10").1.contains("<-  220 mail ESMTP"),
        "inspection after SIGCONT",
    );
}

#[test]
fn runs_as_a_user_with_only_the_units_capabilities() {
    let _ = Command::new("useradd")
        .args([
            "--system",
            "--no-create-home",
            "--shell",
            "/usr/sbin/nologin",
            "inspector",
        ])
        .status();
    let mut f = Fixture::bare("setpriv", "");
    f.sink = Some(f.start_sink("0.0.0.0:25"));
    // What the unit's prepare-bpffs and RuntimeDirectory= do as root.
    for dir in [f.pins.path(), Path::new(inspector::RUN_DIR)] {
        std::fs::create_dir_all(dir).unwrap();
        let ok = Command::new("chown")
            .arg("inspector:inspector")
            .arg(dir)
            .status()
            .unwrap();
        assert!(ok.success());
    }
    std::fs::write(f.dir.join("policy.toml"), "").unwrap();
    Command::new("chmod")
        .arg("755")
        .arg(&f.dir)
        .status()
        .unwrap();
    let wrapper = [
        "setpriv",
        "--reuid=inspector",
        "--regid=inspector",
        "--clear-groups",
        &format!("--inh-caps={CAPABILITIES}"),
        &format!("--ambient-caps={CAPABILITIES}"),
        &format!("--bounding-set={CAPABILITIES}"),
    ];
    f.daemon = Some(spawn_daemon(&f, &[], &wrapper));
    assert!(
        support::wait_until(Duration::from_secs(30), || f
            .log()
            .contains("ready: the kernel steers")),
        "the non-root daemon did not get ready: {}",
        f.log()
    );
    let pid = f.daemon.as_mut().unwrap().child().id();
    let proc_status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uid_line = proc_status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert!(
        !uid_line.split_whitespace().nth(1).unwrap().eq("0"),
        "{uid_line}"
    );
    // CapEff: exactly CAP_NET_BIND_SERVICE (10), CAP_NET_ADMIN (12),
    // CAP_PERFMON (38), CAP_BPF (39): CAP_NET_RAW (13) was dropped once the
    // RST sockets were open.
    let eff = proc_status
        .lines()
        .find(|l| l.starts_with("CapEff:"))
        .unwrap();
    let mask = u64::from_str_radix(eff.split_whitespace().nth(1).unwrap(), 16).unwrap();
    assert_eq!(mask, (1 << 10) | (1 << 12) | (1 << 38) | (1 << 39), "{eff}");
    assert!(
        !f.log().contains("needs CAP_NET_RAW"),
        "the RST sockets opened before the drop: {}",
        f.log()
    );
    let (ok, t) = smtp_banner(&f, "10");
    assert!(
        ok && t.contains("<-  220 mail ESMTP"),
        "a real session through it: {t}"
    );
    let out = f.swaks(&SERVER_V4.to_string(), &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(f.stored().len(), 1);
    let status = f.daemon.take().unwrap().terminate().unwrap();
    assert!(
        status.success(),
        "a clean stop as the user: {status}: {}",
        f.log()
    );
    assert!(!f.ip_rules().contains("lookup 2525"), "{}", f.ip_rules());
    Command::new("chown")
        .arg("root:root")
        .arg(inspector::RUN_DIR)
        .status()
        .unwrap();
}

#[test]
fn the_unit_passes_systemd_analyze_verify() {
    let dir = std::env::temp_dir().join(format!("inspector-unit-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    // The unit as installed, with the paths of this build.
    let prepare = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/systemd/prepare-bpffs");
    let unit = std::fs::read_to_string(unit_file())
        .unwrap()
        .replace("/usr/sbin/inspector", inspector_bin())
        .replace(
            "/usr/lib/inspector/prepare-bpffs",
            prepare.to_str().unwrap(),
        )
        // The man pages exist once the package is installed (see xtask deb).
        .replace(
            "Documentation=man:inspector(8) man:inspector-policy(5)\n",
            "",
        );
    let path = dir.join("inspector.service");
    std::fs::write(&path, unit).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    let t = text(&out);
    assert!(
        out.status.success() && !t.contains("inspector.service:"),
        "{t}"
    );
}

#[test]
fn live_exemptions_survive_an_unload_with_comments_expiry_and_hits() {
    let lab = support::lab("persist");
    let pins = support::PinDir::new("persist");
    let state =
        Scratch::new(std::env::temp_dir().join(format!("inspector-state-{}", std::process::id())))
            .unwrap();
    let dir = state.path().to_str().unwrap().to_string();
    let cli_s = |args: &[&str]| {
        let mut all = vec!["--state-dir", dir.as_str()];
        all.extend_from_slice(args);
        cli_ok(pins.path(), &all)
    };
    let daemon = support::start_daemon_with(
        &lab,
        &pins,
        &[OUTSIDE],
        None,
        &["--no-proxy", "--state-dir", &dir],
    );
    cli_s(&["exempt", "add", "198.18.1.25", "--comment", "the ESA"]);
    let out = cli_s(&["exempt", "add", "198.18.1.26", "--for", "2s"]);
    assert!(out.contains("until "), "{out}");
    // A packet exempted by the first rule counts as its hit.
    let _ = lab.client.tcp_connect(
        inspector_lab::CLIENT_V4.into(),
        std::net::SocketAddr::new(SERVER_V4.into(), 25),
        Duration::from_secs(3),
    );
    let listed: serde_json::Value =
        serde_json::from_str(&cli_s(&["exempt", "list", "--json"])).unwrap();
    let esa = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["network"] == "198.18.1.25/32")
        .unwrap();
    assert_eq!(esa["comment"], "the ESA", "{listed}");
    assert!(esa["hits"].as_u64().unwrap() >= 1, "{listed}");
    let text = cli_s(&["exempt", "list"]);
    assert!(text.contains("the ESA") && text.contains("hits"), "{text}");
    // The daemon removes the one whose time is up.
    assert!(
        support::wait_until(Duration::from_secs(6), || !cli_s(&["exempt", "list"])
            .contains("198.18.1.26")),
        "the 2 s exemption did not expire"
    );
    // As after a reboot: the maps are gone; the next start restores the rule.
    assert!(daemon.terminate().unwrap().success());
    cli_ok(pins.path(), &["unload"]);
    inspector::kernel::bpffs::prepare(pins.path()).unwrap();
    let _daemon = support::start_daemon_with(
        &lab,
        &pins,
        &[OUTSIDE],
        None,
        &["--no-proxy", "--state-dir", &dir],
    );
    let listed: serde_json::Value =
        serde_json::from_str(&cli_s(&["exempt", "list", "--json"])).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(listed[0]["network"], "198.18.1.25/32");
    assert_eq!(listed[0]["origin"], "live");
    assert_eq!(listed[0]["comment"], "the ESA");
    cli_s(&["exempt", "del", "198.18.1.25"]);
    let saved = std::fs::read_to_string(state.path().join(format!(
        "exemptions-{}.json",
        pins.path().file_name().unwrap().to_string_lossy()
    )))
    .unwrap();
    assert!(!saved.contains("198.18.1.25"), "{saved}");
}
