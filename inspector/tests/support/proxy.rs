//! The end-to-end tests' fixture: a lab with Postfix's smtp-sink (or a
//! private Postfix) as the server and `inspector run` with its proxy on
//! the gateway, clients (swaks, and the Python scripts in `py/`) in the
//! client namespace, and the messages they send and check.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
    time::Duration,
};

use inspector_lab::{Lab, OUTSIDE, SERVER_V4, ScopedChild, inspector::start_proxy};

use super::{PinDir, inspector_bin, postfix::Postfix, wait_until};

/// A Python client in `tests/support/py/`.
pub fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/support/py")
        .join(name)
}

pub struct Fixture {
    pub lab: Lab,
    pub pins: PinDir,
    pub dir: PathBuf,
    pub sink: Option<ScopedChild>,
    pub sink_v6: Option<ScopedChild>,
    pub daemon: Option<ScopedChild>,
}

impl Fixture {
    /// A lab with smtp-sink as the server and the inspector running.
    pub fn new(name: &str, policy: &str) -> Self {
        let mut f = Self::bare(name, policy);
        f.sink = Some(f.start_sink("0.0.0.0:25"));
        f.start_daemon();
        f
    }

    /// The lab and the directories, no server, no daemon.
    pub fn bare(name: &str, policy: &str) -> Self {
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
    pub fn start_sink(&self, addr: &str) -> ScopedChild {
        let template = self.dir.join("mail/m");
        let mut cmd = self.lab.server.command("smtp-sink");
        cmd.args(["-u", "nobody", "-d"])
            .arg(&template)
            .args([addr, "64"]);
        let sink = self.lab.server.spawn(&mut cmd).expect("starting smtp-sink");
        self.lab
            .server
            .wait_listening(addr)
            .expect("smtp-sink listening");
        sink
    }

    pub fn start_daemon(&mut self) {
        self.start_daemon_on(&[OUTSIDE]);
    }

    pub fn start_daemon_on(&mut self, ifaces: &[&str]) {
        if let Err(e) = self.try_start_daemon_on(ifaces) {
            panic!("{e:#}");
        }
    }

    /// [`Self::start_daemon_on`], returning why the daemon did not start
    /// (its log).
    pub fn try_start_daemon_on(&mut self, ifaces: &[&str]) -> anyhow::Result<()> {
        let mut args = Vec::new();
        for iface in ifaces {
            args.extend(["--iface".into(), iface.to_string()]);
        }
        args.push("--policy".into());
        args.push(self.dir.join("policy.toml").display().to_string());
        let daemon = start_proxy(
            &self.lab.gateway,
            Path::new(inspector_bin()),
            self.pins.path(),
            &args,
            &self.dir.join("daemon.log"),
        )?;
        self.daemon = Some(daemon);
        Ok(())
    }

    /// `inspector status --json`: the running daemon's upstream mode.
    pub fn upstream_status(&self) -> serde_json::Value {
        let out = super::cli_ok(self.pins.path(), &["status", "--json"]);
        let json: serde_json::Value = serde_json::from_str(&out).expect("status --json is JSON");
        json["daemons"][0]["upstream"].clone()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("daemon.log")).unwrap_or_default()
    }

    pub fn sessions(&self) -> usize {
        self.log().matches(": inspecting").count()
    }

    /// The messages smtp-sink stored: their content, as sent (smtp-sink
    /// stores LF line endings after its own trace headers).
    pub fn stored(&self) -> Vec<Vec<u8>> {
        // The client may have its 250 before smtp-sink has written the
        // dump's headers (e2e_ports read one without them, once).
        wait_for(
            || {
                self.stored_raw()
                    .iter()
                    .all(|raw| find(raw, b"\nReceived: from ").is_some())
            },
            "smtp-sink's dumps",
        );
        self.stored_raw()
            .iter()
            .map(|raw| strip_sink_headers(raw))
            .collect()
    }

    /// smtp-sink's dumps whole, its `X-Client-Addr:` line included.
    pub fn stored_raw(&self) -> Vec<Vec<u8>> {
        std::fs::read_dir(self.dir.join("mail"))
            .unwrap()
            .map(|e| std::fs::read(e.unwrap().path()).unwrap())
            .collect()
    }

    pub fn write(&self, name: &str, content: &[u8]) -> PathBuf {
        let path = self.dir.join(name);
        std::fs::write(&path, content).unwrap();
        path
    }

    /// `send.py` to the server: one session, each file one message.
    pub fn python(&self, args: &[&Path]) -> Output {
        self.python_to(&SERVER_V4.to_string(), args)
    }

    pub fn python_to(&self, server: &str, args: &[&Path]) -> Output {
        self.client("send.py")
            .arg(server)
            .args(args)
            .output()
            .unwrap()
    }

    /// `python3 py/NAME` in the client namespace.
    pub fn client(&self, name: &str) -> Command {
        let mut cmd = self.lab.client.command("python3");
        cmd.arg("-B").arg(script(name));
        cmd
    }

    /// `ip rule show` in the gateway.
    pub fn ip_rules(&self) -> String {
        let out = self
            .lab
            .gateway
            .command("ip")
            .args(["rule", "show"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn swaks(&self, server: &str, extra: &[&str]) -> Output {
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

    /// Runs a dialog (see `py/dialog.py`) to `server`; returns the greeting
    /// and the reply to each step.
    pub fn dialog(&self, server: &str, steps: &[String]) -> Vec<String> {
        let steps_file = self.dir.join(format!("steps-{}.json", steps.len()));
        std::fs::write(&steps_file, serde_json::to_string(steps).unwrap()).unwrap();
        let out = self
            .client("dialog.py")
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

impl Drop for Fixture {
    fn drop(&mut self) {
        drop(self.daemon.take());
        drop(self.sink.take());
        drop(self.sink_v6.take());
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The JSON audit records in the daemon's log (its stdout is the sink).
pub fn audit_records(f: &Fixture) -> Vec<serde_json::Value> {
    let log = f.log();
    // A batch being written may be read half-way: its cut line is not yet
    // a record.
    let whole = log.rfind('\n').map_or("", |end| &log[..end]);
    whole
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// The session records among them.
pub fn session_records(f: &Fixture) -> Vec<serde_json::Value> {
    audit_records(f)
        .into_iter()
        .filter(|v| v["event_type"] == "session")
        .collect()
}

/// Waits up to 30 s for `ok`; fails the test naming `what` if it never
/// holds.
pub fn wait_for(ok: impl FnMut() -> bool, what: &str) {
    assert!(
        wait_until(Duration::from_secs(30), ok),
        "timed out waiting for {what}"
    );
}

/// Runs a Python client from `py/` in the client namespace against the
/// server; returns its stdout.
pub fn client_py(f: &Fixture, name: &str) -> String {
    let out = f.client(name).arg(SERVER_V4.to_string()).output().unwrap();
    assert!(out.status.success(), "{name} failed: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A client in the middle of a message's DATA (`py/in_data.py`): it has
/// sent the first half; once the returned `go` file exists it sends the
/// rest and prints what it then reads (or the error it gets).
pub fn client_in_data(f: &Fixture) -> (std::process::Child, PathBuf) {
    let (ready, go) = (f.dir.join("ready"), f.dir.join("go"));
    let client = f
        .client("in_data.py")
        .arg(SERVER_V4.to_string())
        .arg(&ready)
        .arg(&go)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(|| ready.exists(), "the client in DATA");
    (client, go)
}

/// Kills the daemon (SIGKILL: nothing of a clean stop happens).
pub fn kill_daemon(f: &mut Fixture) {
    let mut daemon = f.daemon.take().unwrap();
    let pid = daemon.child().id();
    daemon.child().kill().unwrap();
    daemon.child().wait().unwrap();
    // What only a clean exit removes: its lock files and stats socket.
    inspector::daemon::lock::remove_leftovers_of(pid);
}

/// A lab with a private Postfix (with `extra` main.cf lines) as the server.
pub fn with_postfix(name: &str, policy: &str, extra: &str) -> (Fixture, Postfix) {
    let mut f = Fixture::bare(name, policy);
    let pf = Postfix::start_with(&f.lab.server, &f.dir.join("postfix"), extra);
    f.start_daemon();
    (f, pf)
}

/// smtp-sink's dump: `X-…` lines, a 3-line `Received:` header, the
/// message, and an empty line.
pub fn strip_sink_headers(raw: &[u8]) -> Vec<u8> {
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

/// Postfix's maildir copy: its own trace headers (`Return-Path`,
/// `X-Original-To`, `Delivered-To`, a 3-line `Received`), then the message
/// with LF line endings.
pub fn strip_postfix_headers(raw: &[u8]) -> Vec<u8> {
    strip_sink_headers(raw)
}

pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// What a message looks like once stored: LF line endings.
pub fn as_stored(msg: &[u8]) -> Vec<u8> {
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

pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

pub fn hello() -> Vec<String> {
    vec!["EHLO client.test\r\n".into()]
}

pub fn transaction(from: &str, content: &str) -> Vec<String> {
    vec![
        format!("MAIL FROM:<{from}>\r\n"),
        "RCPT TO:<b@server.test>\r\n".into(),
        "DATA\r\n".into(),
        format!("{content}\r\n.\r\n"),
    ]
}
