//! The whole path with real software: swaks and Python's smtplib in the
//! client namespace, Postfix's smtp-sink as the server, `inspector run` on
//! the gateway. Flagged sessions are steered by the kernel (TC mark, policy
//! route, transparent listener) into the engine and relayed to the server.
//! Needs root; fails, never skips, without it.

mod support;

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
    thread::sleep,
    time::{Duration, Instant},
};

use inspector_lab::{INSIDE, Lab, MAIL_GATEWAY_V4, OUTSIDE, SERVER_V4, ScopedChild};
use support::{PinDir, inspector_bin, postfix::Postfix};

/// Sends each file named on the command line as one message, all in one
/// SMTP session, and prints the server's reply to each end of data.
const SEND_PY: &str = r#"
import smtplib, sys
host = sys.argv[1]
s = smtplib.SMTP(timeout=60)
print("banner:", s.connect(host, 25))
print(s.ehlo()[0])
for path in sys.argv[2:]:
    data = open(path, "rb").read()
    s.sendmail("a@client.test", ["b@server.test"], data)
    print("sent", path)
s.quit()
"#;

struct Fixture {
    lab: Lab,
    pins: PinDir,
    dir: PathBuf,
    sink: Option<ScopedChild>,
    sink_v6: Option<ScopedChild>,
    daemon: Option<ScopedChild>,
}

impl Fixture {
    /// A lab with smtp-sink as the server and the inspector running.
    fn new(name: &str, policy: &str) -> Self {
        let mut f = Self::bare(name, policy);
        f.sink = Some(f.start_sink("0.0.0.0:25"));
        f.start_daemon();
        f
    }

    /// The lab and the directories, no server, no daemon.
    fn bare(name: &str, policy: &str) -> Self {
        let prefix = format!("px{}-{name}", std::process::id());
        let lab = Lab::create(&prefix).expect("creating the lab (needs root)");
        let pins = PinDir::new(&format!("px-{name}"));
        let dir = std::env::temp_dir().join(&prefix);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("mail")).unwrap();
        // smtp-sink drops privileges to `nobody` and writes its dumps here.
        Command::new("chmod")
            .arg("777")
            .arg(dir.join("mail"))
            .status()
            .unwrap();
        std::fs::write(dir.join("policy.toml"), policy).unwrap();
        std::fs::write(dir.join("send.py"), SEND_PY).unwrap();
        Self {
            lab,
            pins,
            dir,
            sink: None,
            sink_v6: None,
            daemon: None,
        }
    }

    /// smtp-sink on `addr` (it listens on one address family).
    fn start_sink(&self, addr: &str) -> ScopedChild {
        let template = self.dir.join("mail/m");
        let mut cmd = self.lab.server.command("smtp-sink");
        cmd.args(["-u", "nobody", "-d"])
            .arg(&template)
            .args([addr, "64"]);
        let sink = self.lab.server.spawn(&mut cmd).expect("starting smtp-sink");
        wait_for(
            || {
                let out = self
                    .lab
                    .server
                    .command("ss")
                    .args(["-ltnH", "sport = :25"])
                    .output()
                    .unwrap();
                String::from_utf8_lossy(&out.stdout).contains(addr)
            },
            "smtp-sink listening",
        );
        sink
    }

    fn start_daemon(&mut self) {
        self.start_daemon_on(&[OUTSIDE]);
    }

    fn start_daemon_on(&mut self, ifaces: &[&str]) {
        let log = std::fs::File::create(self.dir.join("daemon.log")).unwrap();
        let mut cmd = self.lab.gateway.command(inspector_bin());
        cmd.arg("--pin-dir").arg(self.pins.path()).arg("run");
        for iface in ifaces {
            cmd.args(["--iface", iface]);
        }
        cmd.arg("--policy")
            .arg(self.dir.join("policy.toml"))
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        self.daemon = Some(
            self.lab
                .gateway
                .spawn(&mut cmd)
                .expect("starting the daemon"),
        );
        wait_for(|| self.log().contains("engine listening"), "the engine");
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("daemon.log")).unwrap_or_default()
    }

    fn sessions(&self) -> usize {
        self.log().matches(": inspecting").count()
    }

    /// The messages smtp-sink stored: their content, as sent (smtp-sink
    /// stores LF line endings after its own trace headers).
    fn stored(&self) -> Vec<Vec<u8>> {
        self.stored_raw()
            .iter()
            .map(|raw| strip_sink_headers(raw))
            .collect()
    }

    /// smtp-sink's dumps whole, its `X-Client-Addr:` line included.
    fn stored_raw(&self) -> Vec<Vec<u8>> {
        std::fs::read_dir(self.dir.join("mail"))
            .unwrap()
            .map(|e| std::fs::read(e.unwrap().path()).unwrap())
            .collect()
    }

    fn write(&self, name: &str, content: &[u8]) -> PathBuf {
        let path = self.dir.join(name);
        std::fs::write(&path, content).unwrap();
        path
    }

    fn python(&self, args: &[&Path]) -> Output {
        self.python_to(&SERVER_V4.to_string(), args)
    }

    fn python_to(&self, server: &str, args: &[&Path]) -> Output {
        let mut cmd = self.lab.client.command("python3");
        cmd.arg(self.dir.join("send.py")).arg(server);
        cmd.args(args);
        cmd.output().unwrap()
    }

    fn swaks(&self, server: &str, extra: &[&str]) -> Output {
        self.lab
            .client
            .command("swaks")
            .args([
                "--server",
                server,
                "--from",
                "a@client.test",
                "--to",
                "b@server.test",
                "--timeout",
                "30",
            ])
            .args(extra)
            .output()
            .unwrap()
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        drop(self.daemon.take());
        drop(self.sink.take());
        drop(self.sink_v6.take());
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn wait_for(mut ok: impl FnMut() -> bool, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        sleep(Duration::from_millis(50));
    }
}

/// smtp-sink's dump: `X-…` lines, a 3-line `Received:` header, the
/// message, and an empty line.
fn strip_sink_headers(raw: &[u8]) -> Vec<u8> {
    let text = raw;
    let at = find(text, b"\nReceived: from ").expect("a smtp-sink dump");
    let mut pos = at + 1;
    for _ in 0..3 {
        pos += find(&text[pos..], b"\n").unwrap() + 1;
    }
    let mut body = text[pos..].to_vec();
    while body.ends_with(b"\n\n") {
        body.pop();
    }
    body
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// What a message looks like once stored: LF line endings.
fn as_stored(msg: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(msg.len());
    let mut i = 0;
    while i < msg.len() {
        if msg[i] == b'\r' && msg.get(i + 1) == Some(&b'\n') {
            i += 1;
            continue;
        }
        out.push(msg[i]);
        i += 1;
    }
    while out.ends_with(b"\n\n") {
        out.pop();
    }
    out
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Messages of varied content, each with a unique marker.
fn messages() -> Vec<Vec<u8>> {
    varied(0, true)
}

/// Five kinds of content (the last one 5 MB, if `big`), markers from `base`.
fn varied(base: usize, big: bool) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let header = |n: usize, extra: &str| {
        let n = base + n;
        format!(
            "From: a@client.test\r\nTo: b@server.test\r\nSubject: message {n}\r\nX-Marker: m{n}\r\n{extra}\r\n"
        )
        .into_bytes()
    };
    // 8-bit text.
    let mut m = header(
        0,
        "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n",
    );
    m.extend_from_slice("Grüße, ça va? Привет — 8-bit body\r\n".as_bytes());
    m.extend_from_slice(b"raw bytes \xe9\xff\x80 end\r\n");
    out.push(m);
    // A 998-octet line, the longest RFC 5322 allows.
    let mut m = header(1, "");
    m.extend_from_slice(&[b'x'; 998]);
    m.extend_from_slice(b"\r\nafter the long line\r\n");
    out.push(m);
    // Dot-stuffing cases.
    let mut m = header(2, "");
    m.extend_from_slice(b".\r\n..\r\n.leading dot\r\n...three\r\n. \r\nend\r\n");
    out.push(m);
    // A MIME attachment.
    let mut m = header(
        3,
        "MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b1\"\r\n",
    );
    m.extend_from_slice(b"--b1\r\nContent-Type: text/plain\r\n\r\nhello\r\n--b1\r\nContent-Type: application/octet-stream\r\nContent-Disposition: attachment; filename=\"data.bin\"\r\nContent-Transfer-Encoding: base64\r\n\r\n");
    for i in 0..200u32 {
        m.extend_from_slice(
            format!("QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo{i:08}AAAAAAAAAAAAAAAAAAAAAAAAAAAAA\r\n")
                .as_bytes(),
        );
    }
    m.extend_from_slice(b"--b1--\r\n");
    out.push(m);
    if !big {
        return out;
    }
    // A 5 MB body.
    let mut m = header(4, "");
    let mut line = 0u64;
    while m.len() < 5 * 1024 * 1024 {
        m.extend_from_slice(
            format!("{line:010} the quick brown fox jumps over the lazy dog 0123456789\r\n")
                .as_bytes(),
        );
        line += 1;
    }
    out.push(m);
    out
}

#[test]
fn messages_are_inspected_and_delivered_once_and_intact() {
    let f = Fixture::new("deliver", "");
    let msgs = messages();
    let paths: Vec<PathBuf> = msgs
        .iter()
        .enumerate()
        .map(|(i, m)| f.write(&format!("msg{i}.eml"), m))
        .collect();
    let refs: Vec<&Path> = paths.iter().map(PathBuf::as_path).collect();
    let started = Instant::now();
    let out = f.python(&refs);
    let took = started.elapsed();
    assert!(out.status.success(), "smtplib failed: {}", text(&out));
    // A second session with swaks, using its own default message.
    let out = f.swaks(&SERVER_V4.to_string(), &["--header", "X-Marker: swaks"]);
    assert!(out.status.success(), "swaks failed: {}", text(&out));
    // The engine masked the banner: the session went through it.
    assert!(
        text(&out).contains("<-  220 mail ESMTP"),
        "banner not masked: {}",
        text(&out)
    );
    assert_eq!(f.sessions(), 2, "log: {}", f.log());

    let stored = f.stored();
    assert_eq!(stored.len(), msgs.len() + 1, "each message stored once");
    for (i, m) in msgs.iter().enumerate() {
        let marker = format!("X-Marker: m{i}\n");
        let found: Vec<&Vec<u8>> = stored
            .iter()
            .filter(|s| find(s, marker.as_bytes()).is_some())
            .collect();
        assert_eq!(found.len(), 1, "message {i} stored {} times", found.len());
        assert!(
            *found[0] == as_stored(m),
            "message {i} differs ({} stored bytes, {} sent)",
            found[0].len(),
            m.len()
        );
    }
    // The server saw the gateway's address (the default upstream source).
    for raw in f.stored_raw() {
        assert!(
            find(&raw, b"X-Client-Addr: 198.18.1.1\n").is_some(),
            "{}",
            String::from_utf8_lossy(&raw[..200.min(raw.len())])
        );
    }
    eprintln!("5 messages (5.3 MB) through the inspector in {took:?}");
}

/// Runs a Python script in the client namespace; returns its stdout.
fn client_py(f: &Fixture, script: &str) -> String {
    let out = f
        .lab
        .client
        .command("python3")
        .args(["-c", script, &SERVER_V4.to_string()])
        .output()
        .unwrap();
    assert!(out.status.success(), "client script failed: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_policy_criterion_fires_through_the_real_path() {
    let f = Fixture::new("criterion", "");
    let mut m = b"Subject: long header\r\nX-Long: ".to_vec();
    m.extend_from_slice(&[b'h'; 1200]);
    m.extend_from_slice(b"\r\n\r\nbody\r\n");
    let path = f.write("long.eml", &m);
    let out = f.swaks(&SERVER_V4.to_string(), &["--data", path.to_str().unwrap()]);
    let t = text(&out);
    assert!(
        t.contains("421 4.7.0 Connection closed by security policy"),
        "{t}"
    );
    // smtp-sink may leave a dump of the aborted transaction; the message
    // itself (its body) never gets there.
    assert!(
        f.stored_raw()
            .iter()
            .all(|dump| find(dump, b"\nbody\n").is_none()),
        "the message reached the server"
    );
    let log = f.log();
    assert!(log.contains("108004"), "no audit record: {log}");
    assert!(log.contains("header line length gt 998"), "{log}");
}

#[test]
fn exempt_traffic_never_reaches_the_engine() {
    let f = Fixture::new("exempt", "[[exempt]]\nnetwork = \"198.18.1.26\"\n");
    let out = f.swaks(&MAIL_GATEWAY_V4.to_string(), &[]);
    assert!(out.status.success(), "{}", text(&out));
    // smtp-sink's own banner: not the engine's.
    assert!(!text(&out).contains("<-  220 mail ESMTP"), "{}", text(&out));
    assert_eq!(f.sessions(), 0, "{}", f.log());

    // Inspected, then exempted live: the next session bypasses the engine.
    let server = SERVER_V4.to_string();
    assert!(f.swaks(&server, &[]).status.success());
    assert_eq!(f.sessions(), 1);
    support::cli_ok(f.pins.path(), &["exempt", "add", &server]);
    let out = f.swaks(&server, &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(!text(&out).contains("<-  220 mail ESMTP"), "{}", text(&out));
    assert_eq!(f.sessions(), 1, "{}", f.log());
    assert_eq!(f.stored().len(), 3);
}

/// The client's half-close after its final `.` still gets the reply.
#[test]
fn client_half_close_after_the_final_dot_gets_the_reply() {
    let f = Fixture::new("halfclose", "");
    let script = format!(
        r#"{TO_DATA}
s.sendall(b"Subject: hc\r\n\r\nhalf close\r\n.\r\n")
s.shutdown(socket.SHUT_WR)
rest = b""
while True:
    d = s.recv(65536)
    if not d: break
    rest += d
print(rest.decode())
"#
    );
    let out = client_py(&f, &script);
    assert!(out.starts_with("250"), "no reply to the message: {out:?}");
    assert_eq!(f.stored().len(), 1);
}

#[test]
fn server_killed_mid_data_never_gives_the_client_a_250() {
    let mut f = Fixture::new("killserver", "");
    let (client, go) = client_in_data(&f);
    // The server goes away in the middle of the message.
    f.sink.take().unwrap().terminate().unwrap();
    std::fs::write(&go, b"").unwrap();
    let out = client.wait_with_output().unwrap();
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(
        !t.contains("250"),
        "the client was told the message was accepted: {t}"
    );
}

fn kill_daemon(f: &mut Fixture) {
    let mut daemon = f.daemon.take().unwrap();
    let pid = daemon.child().id();
    daemon.child().kill().unwrap();
    daemon.child().wait().unwrap();
    // What only a clean exit removes: its lock files and stats socket.
    inspector::daemon::lock::remove_leftovers_of(pid);
}

#[test]
fn fail_open_forwards_smtp_when_the_engine_is_gone() {
    let mut f = Fixture::new("failopen", "[engine]\nfail = \"open\"\n");
    let server = SERVER_V4.to_string();
    assert!(f.swaks(&server, &[]).status.success());
    kill_daemon(&mut f);
    let out = f.swaks(&server, &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(!text(&out).contains("<-  220 mail ESMTP"), "{}", text(&out));
    assert_eq!(f.stored().len(), 2);
}

#[test]
fn fail_closed_refuses_smtp_when_the_engine_is_gone() {
    let mut f = Fixture::new("failclosed", "[engine]\nfail = \"closed\"\n");
    let server = SERVER_V4.to_string();
    assert!(f.swaks(&server, &[]).status.success());
    kill_daemon(&mut f);
    let out = f.swaks(&server, &["--timeout", "3"]);
    assert!(!out.status.success(), "{}", text(&out));
    // The SYN is dropped: the client's MTA keeps the message and retries.
    assert!(text(&out).contains("connect: timeout"), "{}", text(&out));
    assert_eq!(f.stored().len(), 1);
    // A restart replaces what the killed daemon left (pinned link, rules)
    // and inspects again.
    f.start_daemon();
    let out = f.swaks(&server, &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("<-  220 mail ESMTP"), "{}", text(&out));
    assert_eq!(f.stored().len(), 2);
    let rules = f
        .lab
        .gateway
        .command("ip")
        .args(["rule", "show"])
        .output()
        .unwrap();
    let rules = String::from_utf8_lossy(&rules.stdout).into_owned();
    assert_eq!(rules.matches("lookup 2525").count(), 1, "{rules}");
    // Other traffic to the server is not affected.
    let r = f
        .lab
        .client
        .tcp_connect(
            inspector_lab::CLIENT_V4.into(),
            std::net::SocketAddr::new(SERVER_V4.into(), 26),
            Duration::from_secs(3),
        )
        .unwrap();
    assert_eq!(
        r.expect_err("nothing listens on 26").kind(),
        std::io::ErrorKind::ConnectionRefused
    );
}

#[test]
fn a_clean_stop_removes_the_steering() {
    let mut f = Fixture::new("stop", "[engine]\nfail = \"closed\"\n");
    let rules = |f: &Fixture| {
        let out = f
            .lab
            .gateway
            .command("ip")
            .args(["rule", "show"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(rules(&f).contains("lookup 2525"), "{}", rules(&f));
    let status = f.daemon.take().unwrap().terminate().unwrap();
    assert!(status.success(), "{status}: {}", f.log());
    assert!(!rules(&f).contains("lookup 2525"), "{}", rules(&f));
    assert!(!f.pins.path().join(format!("steer-{OUTSIDE}")).exists());
    // SMTP flows straight to the server now.
    let out = f.swaks(&SERVER_V4.to_string(), &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(!text(&out).contains("<-  220 mail ESMTP"));
}

/// Python: a connection to the server given as the first argument, a
/// `wait(code)` for a reply, and EHLO, MAIL, RCPT and DATA up to the 354.
const TO_DATA: &str = r#"
import socket, sys
s = socket.create_connection((sys.argv[1], 25), timeout=30)
buf = b""
def wait(code):
    global buf
    while not any(l.startswith(code + b" ") for l in buf.split(b"\r\n")):
        d = s.recv(65536)
        if not d: raise SystemExit("closed early: %r" % buf)
        buf += d
    buf = b""
wait(b"220")
s.sendall(b"EHLO c\r\n"); wait(b"250")
s.sendall(b"MAIL FROM:<a@c.test>\r\n"); wait(b"250")
s.sendall(b"RCPT TO:<b@s.test>\r\n"); wait(b"250")
s.sendall(b"DATA\r\n"); wait(b"354")
"#;

/// A client in the middle of a message's DATA: it has sent the first half;
/// once the returned `go` file exists it sends the rest and prints what it
/// then reads (or the error it gets).
fn client_in_data(f: &Fixture) -> (std::process::Child, PathBuf) {
    let (ready, go) = (f.dir.join("ready"), f.dir.join("go"));
    let script = format!(
        r#"{TO_DATA}
import os, time
s.sendall(b"Subject: halves\r\n\r\nfirst half\r\n")
open("{ready}", "w").close()
while not os.path.exists("{go}"): time.sleep(0.05)
rest = b""
try:
    s.sendall(b"second half\r\n.\r\n")
    while True:
        d = s.recv(65536)
        if not d: break
        rest += d
except OSError as e:
    rest += b"<error %s>" % str(e).encode()
print(repr(rest))
"#,
        ready = ready.display(),
        go = go.display(),
    );
    let client = f
        .lab
        .client
        .command("python3")
        .args(["-c", &script, &SERVER_V4.to_string()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(|| ready.exists(), "the client in DATA");
    (client, go)
}

#[test]
fn a_stop_lets_a_message_in_data_finish() {
    let mut f = Fixture::new("drain", "");
    let (client, go) = client_in_data(&f);
    let mut daemon = f.daemon.take().unwrap();
    // SAFETY: kill on the pid of our own child, not yet reaped.
    unsafe { libc::kill(daemon.child().id() as i32, libc::SIGTERM) };
    wait_for(|| f.log().contains("SIGTERM received"), "the stop");
    // While the engine drains, new SMTP goes straight to the server
    // (fail open: its listener is closed).
    wait_for(|| f.log().contains("session(s) open"), "the drain");
    let out = f.swaks(&SERVER_V4.to_string(), &["--timeout", "5"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(!text(&out).contains("<-  220 mail ESMTP"));
    std::fs::write(&go, b"").unwrap();
    let out = client.wait_with_output().unwrap();
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(
        t.contains("250 "),
        "the message in DATA did not finish: {t}"
    );
    assert!(t.contains("421 4.3.2"), "no shutdown notice after it: {t}");
    let status = daemon.child().wait().unwrap();
    assert!(status.success(), "{status}: {}", f.log());
    assert_eq!(f.stored().len(), 2);
}

#[test]
fn timeouts_and_max_sessions_apply() {
    let f = Fixture::new(
        "limits",
        "[engine]\nmax-sessions = 1\ncommand-timeout = 2\n",
    );
    let out = client_py(
        &f,
        r#"
import socket, sys, time
a = socket.create_connection((sys.argv[1], 25), timeout=30)
print("first:", a.recv(1000))
b = socket.create_connection((sys.argv[1], 25), timeout=30)
got = b""
while True:
    d = b.recv(1000)
    if not d: break
    got += d
print("second:", got)
start = time.time()
got = b""
while True:
    d = a.recv(1000)
    if not d: break
    got += d
print("idle: %r after %.1f s" % (got, time.time() - start))
"#,
    );
    assert!(out.contains("first: b'220 mail ESMTP"), "{out}");
    assert!(
        out.contains("second: b'421 4.3.2 Too many sessions"),
        "{out}"
    );
    assert!(out.contains("idle: b'421 4.4.2 Timeout"), "{out}");
    let secs: f64 = out
        .rsplit("after ")
        .next()
        .and_then(|s| s.split(' ').next())
        .and_then(|s| s.parse().ok())
        .unwrap();
    assert!((1.5..10.0).contains(&secs), "timed out after {secs} s");
}

#[test]
fn ipv6_sessions_are_inspected_too() {
    let mut f = Fixture::new("ipv6", "");
    f.sink_v6 = Some(f.start_sink("[::]:25"));
    let msg = f.write("v6.eml", b"Subject: over IPv6\r\n\r\nhello\r\n");
    let out = f.python_to(&inspector_lab::SERVER_V6.to_string(), &[&msg]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("b'mail ESMTP'"), "{}", text(&out));
    assert_eq!(f.sessions(), 1);
    assert!(
        f.log().contains("[2001:2:0:1::25]:25: inspecting"),
        "{}",
        f.log()
    );
    assert_eq!(f.stored().len(), 1);
}

/// Postfix's maildir copy: its own trace headers (`Return-Path`,
/// `X-Original-To`, `Delivered-To`, a 3-line `Received`), then the message
/// with LF line endings.
fn strip_postfix_headers(raw: &[u8]) -> Vec<u8> {
    strip_sink_headers(raw)
}

#[test]
fn two_hundred_messages_reach_postfix_once_and_intact() {
    let mut f = Fixture::bare("postfix", "");
    let postfix = Postfix::start(&f.lab.server, &f.dir.join("postfix"));
    f.start_daemon();
    // 200 messages: 40 of each kind, two of the 5 MB ones; in 4 sessions.
    let mut msgs = Vec::new();
    for round in 0..40 {
        let big = round % 20 == 0;
        let mut batch = varied(msgs.len(), big);
        if !big {
            // Keep five per round: a second 8-bit one instead of the big one.
            let extra = varied(msgs.len() + 4, false).remove(0);
            batch.push(extra);
        }
        msgs.extend(batch);
    }
    assert_eq!(msgs.len(), 200);
    let paths: Vec<PathBuf> = msgs
        .iter()
        .enumerate()
        .map(|(i, m)| f.write(&format!("pf{i}.eml"), m))
        .collect();
    let started = Instant::now();
    for chunk in paths.chunks(50) {
        let refs: Vec<&Path> = chunk.iter().map(PathBuf::as_path).collect();
        let out = f.python(&refs);
        assert!(out.status.success(), "smtplib failed: {}", text(&out));
        assert!(text(&out).contains("b'mail ESMTP'"), "{}", text(&out));
    }
    let took = started.elapsed();
    assert_eq!(f.sessions(), 4, "{}", f.log());
    wait_for(
        || postfix.delivered().len() >= 200,
        "Postfix delivering 200 messages",
    );
    sleep(Duration::from_millis(500));
    let delivered: Vec<Vec<u8>> = postfix
        .delivered()
        .iter()
        .map(|raw| strip_postfix_headers(raw))
        .collect();
    assert_eq!(delivered.len(), 200, "{}", postfix.log());
    for (i, m) in msgs.iter().enumerate() {
        let marker = format!("X-Marker: m{i}\n");
        let found: Vec<&Vec<u8>> = delivered
            .iter()
            .filter(|d| find(d, marker.as_bytes()).is_some())
            .collect();
        assert_eq!(
            found.len(),
            1,
            "message {i} delivered {} times",
            found.len()
        );
        assert!(
            *found[0] == as_stored(m),
            "message {i} differs ({} delivered bytes, {} sent)",
            found[0].len(),
            m.len()
        );
    }
    eprintln!("200 messages through the inspector to Postfix in {took:?}");
}

/// Not a check: figures for the README. Run with
/// `cargo test -p inspector --test engine_e2e -- --ignored --nocapture measure`.
#[test]
#[ignore = "a measurement, not a check"]
fn measure_throughput_and_memory() {
    let f = Fixture::new("measure", "[[exempt]]\nnetwork = \"198.18.1.26\"\n");
    let big = varied(0, true).pop().unwrap();
    let path = f.write("big.eml", &big);
    let script = r#"
import smtplib, sys, time
host, path, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
data = open(path, "rb").read()
for _ in range(n):
    t = time.perf_counter()
    s = smtplib.SMTP(host, 25, timeout=60)
    s.sendmail("a@client.test", ["b@server.test"], data)
    s.quit()
    print(time.perf_counter() - t)
"#;
    let run = |host: &str| -> Vec<f64> {
        let out = f
            .lab
            .client
            .command("python3")
            .args(["-c", script, host, path.to_str().unwrap(), "1"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| l.parse().unwrap())
            .collect()
    };
    let (mut inspected, mut direct) = (Vec::new(), Vec::new());
    for _ in 0..7 {
        inspected.extend(run(&SERVER_V4.to_string()));
        direct.extend(run(&MAIL_GATEWAY_V4.to_string()));
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        v[v.len() / 2]
    };
    let (mi, md) = (median(&mut inspected), median(&mut direct));
    let mb = big.len() as f64 / 1e6;
    eprintln!(
        "5 MB message, median of 7: inspected {:.3} s ({:.0} MB/s), direct {:.3} s ({:.0} MB/s), ratio {:.2}",
        mi,
        mb / mi,
        md,
        mb / md,
        mi / md
    );

    // Memory: RSS of the daemon with 200 sessions open, each past EHLO.
    // The daemon itself (nsenter, its parent, execs it: the same pid).
    let out = Command::new("pgrep")
        .args(["-f", &format!("{} run", f.pins.path().display())])
        .output()
        .unwrap();
    let pid = String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .expect("the daemon's pid")
        .trim()
        .to_string();
    let rss = |pid: &str| -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    };
    let before = rss(&pid);
    let hold = r#"
import socket, sys, time
conns = []
for i in range(200):
    s = socket.create_connection((sys.argv[1], 25), timeout=30)
    s.recv(1000)
    s.sendall(b"EHLO c\r\n")
    got = b""
    while b"250 " not in got:
        got += s.recv(1000)
    conns.append(s)
print("ready", flush=True)
time.sleep(5)
"#;
    let mut holder = f
        .lab
        .client
        .command("python3")
        .args(["-c", hold, &SERVER_V4.to_string()])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(holder.stdout.as_mut().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line.trim(), "ready");
    let during = rss(&pid);
    holder.wait().unwrap();
    eprintln!(
        "daemon RSS: {before} KiB idle, {during} KiB with 200 sessions past EHLO: {:.1} KiB per session",
        (during.saturating_sub(before)) as f64 / 200.0
    );
}

/// Plays a conversation: each step's bytes are sent, then one complete
/// reply (or the close) is read. Prints one line per step: the reply, or
/// `CLOSED`.
const DIALOG_PY: &str = r#"
import json, socket, sys
steps = json.loads(open(sys.argv[2]).read())
s = socket.create_connection((sys.argv[1], 25), timeout=30)
buf = b""
def reply():
    global buf
    while True:
        lines = buf.split(b"\r\n")
        for i, l in enumerate(lines[:-1]):
            # The last line of a reply: no `-` after the code (a compat
            # masked banner has `*` there).
            if len(l) >= 3 and l[3:4] != b"-":
                out = b"\r\n".join(lines[:i + 1])
                buf = b"\r\n".join(lines[i + 1:])
                return out.decode("latin-1")
        try:
            d = s.recv(65536)
        except ConnectionResetError:
            d = b""
        if not d:
            return "CLOSED"
        buf += d
print(json.dumps(reply()))
for step in steps:
    try:
        s.sendall(step.encode("latin-1"))
    except OSError:
        print(json.dumps("CLOSED"))
        break
    r = reply()
    print(json.dumps(r))
    if r == "CLOSED":
        break
"#;

impl Fixture {
    /// Runs a dialog (see `DIALOG_PY`) to `server`; returns the greeting
    /// and the reply to each step.
    fn dialog(&self, server: &str, steps: &[String]) -> Vec<String> {
        let script = self.write("dialog.py", DIALOG_PY.as_bytes());
        let steps_file = self.dir.join(format!("steps-{}.json", steps.len()));
        let json: Vec<String> = steps.iter().map(|s| json_str(s)).collect();
        std::fs::write(&steps_file, format!("[{}]", json.join(","))).unwrap();
        let out = self
            .lab
            .client
            .command("python3")
            .arg(&script)
            .arg(server)
            .arg(&steps_file)
            .output()
            .unwrap();
        assert!(out.status.success(), "dialog failed: {}", text(&out));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str::<String>(l).unwrap())
            .collect()
    }
}

fn json_str(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

fn hello() -> Vec<String> {
    vec!["EHLO client.test\r\n".into()]
}

fn transaction(from: &str, content: &str) -> Vec<String> {
    vec![
        format!("MAIL FROM:<{from}>\r\n"),
        "RCPT TO:<b@server.test>\r\n".into(),
        "DATA\r\n".into(),
        format!("{content}\r\n.\r\n"),
    ]
}

#[test]
fn each_default_criterion_fires_through_the_real_path() {
    let mut f = Fixture::new("criteria", "");
    let server = SERVER_V4.to_string();
    let closed_by_policy = |replies: &[String], what: &str| {
        let last = replies.last().unwrap();
        assert!(
            last.starts_with("421 4.7.0") || last == "CLOSED",
            "{what}: {replies:?}"
        );
        assert!(
            replies
                .iter()
                .any(|r| r.starts_with("421 4.7.0 Connection closed by security policy")),
            "{what}: {replies:?}"
        );
    };

    // ehlo-reply-parameter others (mask): smtp-sink offers XCLIENT and
    // XFORWARD; the client never sees them.
    let r = f.dialog(&server, &hello());
    assert!(r[0].starts_with("220 mail ESMTP"), "{r:?}");
    assert!(
        r[1].contains("PIPELINING") && !r[1].contains("XCLIENT"),
        "{r:?}"
    );

    // cmd line length gt 512.
    let mut steps = hello();
    steps.push(format!("NOOP {}\r\n", "n".repeat(600)));
    closed_by_policy(&f.dialog(&server, &steps), "cmd line length");

    // cmd RCPT count gt 100.
    let mut steps = hello();
    steps.push("MAIL FROM:<a@client.test>\r\n".into());
    for i in 0..101 {
        steps.push(format!("RCPT TO:<r{i}@server.test>\r\n"));
    }
    closed_by_policy(&f.dialog(&server, &steps), "RCPT count");

    // sender-address length gt 320.
    let mut steps = hello();
    steps.push(format!("MAIL FROM:<{}@client.test>\r\n", "s".repeat(330)));
    closed_by_policy(&f.dialog(&server, &steps), "sender-address length");

    // header line length gt 998.
    let mut steps = hello();
    steps.extend(transaction(
        "a@client.test",
        &format!("Subject: x\r\nX-Long: {}\r\n\r\nbody", "h".repeat(1200)),
    ));
    closed_by_policy(&f.dialog(&server, &steps), "header line length");

    // MIME filename length gt 255.
    let mut steps = hello();
    steps.extend(transaction(
        "a@client.test",
        &format!(
            "Subject: x\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b\"\r\n\r\n--b\r\nContent-Type: application/octet-stream\r\nContent-Disposition: attachment; filename=\"{}.bin\"\r\n\r\ndata\r\n--b--",
            "f".repeat(300)
        ),
    ));
    closed_by_policy(&f.dialog(&server, &steps), "MIME filename length");

    // body line length gt 998: log only, the message is delivered.
    let mut steps = hello();
    steps.extend(transaction(
        "a@client.test",
        &format!("Subject: long body line\r\n\r\n{}", "b".repeat(1500)),
    ));
    steps.push("QUIT\r\n".into());
    let r = f.dialog(&server, &steps);
    assert!(r[5].starts_with("250"), "{r:?}");
    assert_eq!(f.stored().len(), 1, "only the log-only message is stored");

    // Audit records (JSON lines on stdout), and the counters the daemon
    // prints when it stops.
    let log = f.log();
    for needle in [
        "\"id\":108004",
        "matched Class 1: cmd line length gt 512",
        "cmd RCPT count gt 100",
        "sender-address length gt 320",
        "header line length gt 998",
        "MIME filename length gt 255",
        "\"id\":108005",
        "body line length gt 998",
    ] {
        assert!(log.contains(needle), "no `{needle}` in the log: {log}");
    }
    let status = f.daemon.take().unwrap().terminate().unwrap();
    assert!(status.success());
    let log = f.log();
    for rule in [
        "cmd line length gt 512",
        "cmd RCPT count gt 100",
        "body line length gt 998",
        "header line length gt 998",
        "sender-address length gt 320",
        "MIME filename length gt 255",
        "ehlo-reply-parameter others",
    ] {
        let line = log
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("match {rule}")))
            .unwrap_or_else(|| panic!("no counter for {rule}: {log}"));
        assert!(!line.ends_with("packet 0"), "{line}");
    }
    assert!(log.contains("drop 5,"), "{log}");
}

/// A lab with a private Postfix (with `extra` main.cf lines) as the server.
fn with_postfix(name: &str, policy: &str, extra: &str) -> (Fixture, Postfix) {
    let mut f = Fixture::bare(name, policy);
    let pf = Postfix::start_with(&f.lab.server, &f.dir.join("postfix"), extra);
    f.start_daemon();
    (f, pf)
}

#[test]
fn starttls_with_allow_tls_is_relayed_opaquely_to_postfix() {
    let dir = std::env::temp_dir().join(format!("px{}-tlscert", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let status = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args(["-subj", "/CN=server.test", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .unwrap();
    assert!(status.status.success(), "{}", text(&status));
    let extra = format!(
        "smtpd_tls_cert_file = {}\nsmtpd_tls_key_file = {}\nsmtpd_tls_security_level = may\n",
        cert.display(),
        key.display()
    );
    let (f, pf) = with_postfix("tls", "[esmtp]\nallow-tls = true\n", &extra);
    let script = r#"
import smtplib, ssl, sys
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
s = smtplib.SMTP(sys.argv[1], 25, timeout=30)
print("ehlo:", s.ehlo()[1])
s.starttls(context=ctx)
print("tls:", s.sock.version(), s.sock.getpeercert(binary_form=True) is not None)
print("ehlo in tls:", s.ehlo()[1])
s.sendmail("a@client.test", ["b@server.test"], b"Subject: over TLS\r\nX-Marker: tls\r\n\r\nsecret\r\n")
s.quit()
"#;
    let out = client_py(&f, script);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(out.contains("STARTTLS"), "STARTTLS not offered: {out}");
    assert!(out.contains("tls: TLSv1."), "{out}");
    assert!(
        f.log().contains("108007"),
        "no TLS audit record: {}",
        f.log()
    );
    wait_for(|| pf.delivered().len() == 1, "the message over TLS");
    let d = strip_postfix_headers(&pf.delivered()[0]);
    assert!(
        d.ends_with(b"X-Marker: tls\n\nsecret\n"),
        "{}",
        String::from_utf8_lossy(&d)
    );
}

#[test]
fn pipelining_and_bdat_clients_work_against_postfix() {
    let (f, pf) = with_postfix("chunking", "", "");
    // swaks with PIPELINING.
    let out = f.swaks(
        &SERVER_V4.to_string(),
        &["--pipeline", "--header", "X-Marker: pipelined"],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("<-  220 mail ESMTP"), "{}", text(&out));
    // BDAT (CHUNKING, shown in modern mode): two chunks, the last one LAST.
    let (c1, c2) = (
        "Subject: chunks\r\nX-Marker: bdat\r\n\r\nfirst chunk\r\n",
        "second chunk, no dot stuffing\r\n.\r\n",
    );
    let steps = vec![
        "EHLO client.test\r\n".to_string(),
        "MAIL FROM:<a@client.test>\r\n".into(),
        "RCPT TO:<b@server.test>\r\n".into(),
        format!("BDAT {}\r\n{c1}", c1.len()),
        format!("BDAT {} LAST\r\n{c2}", c2.len()),
        "QUIT\r\n".into(),
    ];
    let r = f.dialog(&SERVER_V4.to_string(), &steps);
    assert!(r[1].contains("CHUNKING"), "{r:?}");
    assert!(r[4].starts_with("250") && r[5].starts_with("250"), "{r:?}");
    wait_for(|| pf.delivered().len() == 2, "both messages");
    let all: Vec<Vec<u8>> = pf
        .delivered()
        .iter()
        .map(|d| strip_postfix_headers(d))
        .collect();
    let bdat = all
        .iter()
        .find(|d| find(d, b"X-Marker: bdat").is_some())
        .expect("the BDAT message");
    assert!(
        bdat.ends_with(b"first chunk\nsecond chunk, no dot stuffing\n.\n"),
        "{}",
        String::from_utf8_lossy(bdat)
    );
    assert!(
        all.iter()
            .any(|d| find(d, b"X-Marker: pipelined").is_some())
    );
}

#[test]
fn compat_and_modern_as_a_real_client_sees_them() {
    let steps = vec!["EHLO client.test\r\n".to_string(), "FOOBAR x\r\n".into()];
    let server = SERVER_V4.to_string();

    let modern = Fixture::new("modern", "");
    let r = modern.dialog(&server, &steps);
    assert_eq!(r[0], "220 mail ESMTP", "{r:?}");
    assert!(
        r[1].contains("PIPELINING") && !r[1].contains("XCLIENT"),
        "{r:?}"
    );
    assert_eq!(r[2], "500 5.5.1 Command unrecognized", "{r:?}");
    drop(modern);

    let policy = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies/compat.toml"),
    )
    .unwrap();
    let compat = Fixture::new("compat", &policy);
    let r = compat.dialog(&server, &steps);
    // Every character but 2, 0, CR, LF masked.
    assert!(r[0].starts_with("220*"), "{r:?}");
    assert!(r[0].chars().all(|c| matches!(c, '2' | '0' | '*')), "{r:?}");
    // Unknown keywords become Xs, ending in the Nth letter.
    assert!(!r[1].contains("XCLIENT"), "{r:?}");
    assert!(r[1].contains("XXXXXXXA\r\n250-"), "{r:?}");
    // The command reaches the server as Xs; the server answers it.
    assert!(r[2].starts_with("5"), "{r:?}");
    assert!(!r[2].contains("5.5.1 Command unrecognized"), "{r:?}");
}

#[test]
fn a_reset_action_resets_the_client() {
    let f = Fixture::new(
        "reset",
        "[esmtp]\n[[esmtp.match]]\nmatch = \"cmd verb VRFY\"\naction = \"reset log\"\n",
    );
    let out = client_py(
        &f,
        r#"
import socket, sys, time
s = socket.create_connection((sys.argv[1], 25), timeout=30)
print(s.recv(1000))
s.sendall(b"EHLO c\r\n")
time.sleep(0.5)
print(s.recv(1000)[:3])
s.sendall(b"VRFY root\r\n")
try:
    while True:
        d = s.recv(1000)
        if not d:
            print("FIN")
            break
        print("data", d)
except ConnectionResetError:
    print("RST")
"#,
    );
    assert!(out.trim_end().ends_with("RST"), "{out}");
    assert!(f.log().contains("Reset connection for"), "{}", f.log());
}

#[test]
fn upstream_source_client_keeps_the_clients_address() {
    let mut f = Fixture::bare("tsource", "[engine]\nupstream-source = \"client\"\n");
    f.sink = Some(f.start_sink("0.0.0.0:25"));
    // The server's answers to the client's address come back through the
    // steering program on the inside interface.
    f.start_daemon_on(&[OUTSIDE, INSIDE]);
    let out = f.swaks(&SERVER_V4.to_string(), &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("<-  220 mail ESMTP"), "{}", text(&out));
    assert_eq!(f.sessions(), 1, "{}", f.log());
    let raw = f.stored_raw();
    assert_eq!(raw.len(), 1);
    assert!(
        find(&raw[0], b"X-Client-Addr: 198.18.0.2\n").is_some(),
        "{}",
        String::from_utf8_lossy(&raw[0])
    );
}

#[test]
fn without_ipv6_on_the_gateway_ipv4_is_still_inspected() {
    let mut f = Fixture::bare("noipv6", "");
    for key in [
        "net.ipv6.conf.all.disable_ipv6",
        "net.ipv6.conf.default.disable_ipv6",
        "net.ipv6.conf.lo.disable_ipv6",
    ] {
        f.lab.gateway.sysctl(key, "1").unwrap();
    }
    f.sink = Some(f.start_sink("0.0.0.0:25"));
    f.start_daemon();
    let out = f.swaks(&SERVER_V4.to_string(), &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("<-  220 mail ESMTP"), "{}", text(&out));
    let status = f.daemon.take().unwrap().terminate().unwrap();
    assert!(status.success(), "{status}: {}", f.log());
}
