//! Differential tests: bytes that mainstream servers read differently, sent
//! by a raw client through the inspector to real servers (a private Postfix
//! and a private Exim; an Exchange stand-in for XEXCH50), and then the
//! transactions each server EXECUTED (its queue, its log) compared with
//! those the engine allowed. A case fails when a server executed a
//! transaction, a sender or a recipient that the engine should have
//! refused (or did not execute what the engine let through and the client
//! was told was accepted), and when the client was not refused, not closed
//! in time or not told a message's fate.
//!
//! Every case of a test runs at once, each in its own session, with its
//! own tag in every address (`good.k07k@client.test`), so the servers'
//! records can be split by case. Each test prints a table of its cases and
//! fails with the list of those that failed.
//!
//! Needs root and the private Exim (`cargo xtask setup`); fails, never
//! skips, without them.

mod support;

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr},
    path::Path,
    time::{Duration, Instant},
};

use inspector_lab::{MAIL_GATEWAY_V4, SERVER_V4, ScopedChild};
use serde_json::{Value, json};
use support::{
    Envelope,
    exim::Exim,
    postfix::Postfix,
    proxy::{Fixture, script},
    wait_until,
};

/// The Exchange stand-in's address (added to the server namespace).
const EXCHANGE_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 27);

/// `command-timeout` of the tests' daemon: short, for the trickling client.
const COMMAND_TIMEOUT: f64 = 4.0;

/// A policy that makes every bypass visible on the servers: a sender
/// matching `^evil`, a recipient outside `server.test`, a `|`, `` ` `` or
/// NUL in an address each close the session; so do overlong lines and
/// MIME file names; VRFY resets it.
const POLICY: &str = r#"
[proxy]
command-timeout = 4

[esmtp]
name = "differential"
mode = "modern"
mask-banner = true
allow-tls = false
special-character = "drop-connection log"
mail-relay = { domain = "server.test", action = "drop-connection log" }
allow-verbs = ["XEXCH50"]

[[esmtp.match]]
match = "sender-address regex ^evil"
action = "drop-connection log"

[[esmtp.match]]
match = "cmd line length gt 512"
action = "drop-connection log"

[[esmtp.match]]
match = "header line length gt 998"
action = "drop-connection log"

[[esmtp.match]]
match = "MIME filename length gt 255"
action = "drop-connection log"

[[esmtp.match]]
match = "cmd verb VRFY"
action = "reset log"
"#;

// ---- The lab ----

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Server {
    Postfix,
    Exim,
    Exchange,
}

impl Server {
    fn address(self) -> IpAddr {
        match self {
            Server::Postfix => SERVER_V4.into(),
            Server::Exim => MAIL_GATEWAY_V4.into(),
            Server::Exchange => EXCHANGE_V4.into(),
        }
    }

    /// How the server tells the client it took a message.
    fn accepted_marker(self) -> &'static str {
        match self {
            // `Ok: queued as` (DATA), `Ok: 21 bytes queued as` (BDAT).
            Server::Postfix => " queued as ",
            Server::Exim => "250 OK id=",
            Server::Exchange => "250 2.6.0 Queued mail for delivery",
        }
    }
}

/// The lab with the servers a test needs and the daemon in front of them.
struct DiffLab {
    f: Fixture,
    postfix: Option<Postfix>,
    exim: Option<Exim>,
    exchange: Option<ScopedChild>,
}

impl DiffLab {
    fn new(name: &str, policy: &str, servers: &[Server]) -> Self {
        let f = Fixture::bare(&format!("df-{name}"), policy);
        let mut l = Self {
            postfix: None,
            exim: None,
            exchange: None,
            f,
        };
        if servers.contains(&Server::Postfix) {
            l.postfix = Some(Postfix::start_listening(
                &l.f.lab.server,
                &l.f.dir.join("postfix"),
                &format!("{SERVER_V4}:25"),
                &postfix_settings(),
            ));
        }
        if servers.contains(&Server::Exim) {
            l.exim = Some(Exim::server(
                &l.f.lab.server,
                &l.f.dir.join("exim"),
                Server::Exim.address(),
            ));
        }
        if servers.contains(&Server::Exchange) {
            l.exchange = Some(l.start_exchange());
        }
        l.f.start_daemon();
        l
    }

    fn start_exchange(&self) -> ScopedChild {
        let ns = &self.f.lab.server;
        ns.ip(&["addr", "add", &format!("{EXCHANGE_V4}/24"), "dev", "eth0"])
            .unwrap();
        let mut cmd = ns.command("python3");
        cmd.arg("-B")
            .arg(script("exchange.py"))
            .arg(EXCHANGE_V4.to_string())
            .arg(self.f.dir.join("exchange.log"));
        let child = ns.spawn(&mut cmd).expect("the Exchange stand-in");
        ns.wait_listening(&format!("{EXCHANGE_V4}:25"))
            .expect("the Exchange stand-in listening");
        child
    }

    /// Every transaction `server` executed so far.
    fn executed(&self, server: Server) -> Vec<Envelope> {
        match server {
            Server::Postfix => self.postfix.as_ref().unwrap().queued(),
            Server::Exim => self.exim.as_ref().unwrap().received(),
            Server::Exchange => std::fs::read_to_string(self.f.dir.join("exchange.log"))
                .unwrap_or_default()
                .lines()
                .map(|l| {
                    let v: Value = serde_json::from_str(l).unwrap();
                    Envelope {
                        sender: v["sender"].as_str().unwrap().to_string(),
                        rcpts: v["rcpts"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .map(|r| r.as_str().unwrap().to_string())
                            .collect(),
                    }
                })
                .collect(),
        }
    }

    /// Waits until no SMTP session is open on the servers: whatever a
    /// session made them execute is on record then.
    fn quiesce(&self) {
        let idle = wait_until(Duration::from_secs(30), || {
            let out = self
                .f
                .lab
                .server
                .command("ss")
                .args(["-tnH", "state", "established", "( sport = :25 )"])
                .output()
                .unwrap();
            out.stdout.is_empty()
        });
        assert!(idle, "SMTP sessions still open on the servers");
        std::thread::sleep(Duration::from_millis(300));
    }
}

impl Drop for DiffLab {
    fn drop(&mut self) {
        // The servers before the lab (the fixture) goes.
        drop(self.exchange.take());
        drop(self.postfix.take());
        drop(self.exim.take());
    }
}

/// Postfix as Debian 12 ships it (bare-LF handling included), on the
/// server address only, taking mail for two domains and keeping every
/// message it accepts on hold: `postqueue -j` lists the transactions it
/// executed, at once and exactly.
fn postfix_settings() -> String {
    format!(
        "inet_interfaces = {SERVER_V4}
inet_protocols = ipv4
smtpd_peername_lookup = no
virtual_mailbox_domains = server.test relay.test
smtpd_end_of_data_restrictions = check_client_access static:HOLD
"
    )
}

// ---- Cases ----

/// One client step (see `support/py/raw_client.py`).
fn send(text: impl Into<String>) -> Value {
    json!({ "send": text.into() })
}

fn reply() -> Value {
    json!({ "reply": true })
}

/// Sends `line` and waits for its reply.
fn cmd(line: impl Into<String>) -> Vec<Value> {
    vec![send(line), reply()]
}

fn ehlo() -> Vec<Value> {
    cmd("EHLO client.test\r\n")
}

/// What a check looks at, beyond the transactions.
#[derive(Debug, Clone)]
enum Check {
    /// The client got a 4xx/5xx reply, or the session was closed on it.
    Refused,
    /// The session ended (closed or reset by the inspector) within this
    /// many seconds of its start.
    EndedWithin(f64),
    /// The client received this text.
    Got(&'static str),
    /// No sender or recipient the server executed contains this text.
    NoAddress(&'static str),
    /// The daemon logged this session's end as `ended (…)` with this.
    Outcome(&'static str),
    /// An audit record of this session contains this text.
    Audit(&'static str),
}

struct Case {
    name: &'static str,
    /// Which hole of the issue (or `interop` for a control case).
    hole: &'static str,
    servers: &'static [Server],
    /// Steps with `TAG` standing for the case's tag.
    steps: Vec<Value>,
    /// Socket options and the final read's length for the client.
    client: Value,
    /// The transactions a correct engine lets through, `TAG` as above:
    /// (sender, recipients).
    allowed: Vec<(&'static str, Vec<&'static str>)>,
    /// Whether the server must have executed exactly `allowed` (otherwise
    /// the checks say what matters).
    exact: bool,
    checks: Vec<Check>,
}

impl Case {
    fn new(name: &'static str, hole: &'static str, servers: &'static [Server]) -> Self {
        Self {
            name,
            hole,
            servers,
            steps: Vec::new(),
            // Shorter than the command timeout: the engine's timeout is
            // never taken for a refusal.
            client: json!({ "linger": 3 }),
            allowed: Vec::new(),
            exact: true,
            checks: Vec::new(),
        }
    }

    /// Where the servers legitimately differ on the outcome.
    fn loose(mut self) -> Self {
        self.exact = false;
        self
    }

    fn steps(mut self, steps: impl IntoIterator<Item = Value>) -> Self {
        self.steps.extend(steps);
        self
    }

    fn allow(mut self, sender: &'static str, rcpts: &[&'static str]) -> Self {
        self.allowed.push((sender, rcpts.to_vec()));
        self
    }

    fn check(mut self, c: Check) -> Self {
        self.checks.push(c);
        self
    }

    fn client(mut self, key: &str, v: Value) -> Self {
        self.client[key] = v;
        self
    }
}

/// What one run of a case against one server saw.
#[derive(Debug)]
struct Observed {
    port: u16,
    received: String,
    end: String,
    /// Seconds from the connection to its end (infinite while open).
    end_at: f64,
    /// Seconds from the client's last byte sent to the end.
    end_after: f64,
    executed: Vec<Envelope>,
}

/// [`TAG`] in `s` replaced by the case's tag.
fn tagged(s: &str, tag: &str) -> String {
    s.replace(TAG, tag)
}

fn tag_steps(steps: &[Value], tag: &str) -> Vec<Value> {
    steps
        .iter()
        .map(|s| {
            let mut s = s.clone();
            for key in ["send", "trickle", "stream"] {
                if let Some(t) = s.get(key).and_then(Value::as_str) {
                    s[key] = Value::String(tagged(t, tag));
                }
            }
            s
        })
        .collect()
}

/// Runs every case against each of its servers at once; returns the table
/// of results and the failures.
fn run_cases(l: &DiffLab, cases: &[Case]) -> (String, Vec<String>) {
    let mut runs = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        for (j, &server) in case.servers.iter().enumerate() {
            let tag = format!("k{i:02}x{j}k");
            let mut spec = case.client.clone();
            spec["steps"] = Value::Array(tag_steps(&case.steps, &tag));
            let file = l.f.dir.join(format!("case-{tag}.json"));
            std::fs::write(&file, spec.to_string()).unwrap();
            let child =
                l.f.lab
                    .client
                    .command("python3")
                    .arg("-B")
                    .arg(script("raw_client.py"))
                    .arg(server.address().to_string())
                    .arg(&file)
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .unwrap();
            runs.push((i, server, tag, child));
        }
    }
    let mut outputs = Vec::new();
    for (i, server, tag, child) in runs {
        let out = child.wait_with_output().unwrap();
        outputs.push((i, server, tag, out));
    }
    l.quiesce();
    let executed: BTreeMap<Server, Vec<Envelope>> =
        [Server::Postfix, Server::Exim, Server::Exchange]
            .into_iter()
            .filter(|s| match s {
                Server::Postfix => l.postfix.is_some(),
                Server::Exim => l.exim.is_some(),
                Server::Exchange => l.exchange.is_some(),
            })
            .map(|s| (s, l.executed(s)))
            .collect();
    let log = l.f.log();
    let mut table = String::new();
    let mut failures = Vec::new();
    for (i, server, tag, out) in outputs {
        let case = &cases[i];
        let label = format!("{} [{}] vs {server:?}", case.name, case.hole);
        if !out.status.success() {
            failures.push(format!(
                "{label}: the client failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
            continue;
        }
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        let mine =
            |r: &Envelope| r.sender.contains(&tag) || r.rcpts.iter().any(|a| a.contains(&tag));
        let obs = Observed {
            port: v["port"].as_u64().unwrap() as u16,
            received: v["received"].as_str().unwrap().to_string(),
            end: v["end"].as_str().unwrap().to_string(),
            end_at: v["end_at"].as_f64().unwrap_or(f64::INFINITY),
            end_after: v["end_after"].as_f64().unwrap_or(f64::INFINITY),
            executed: executed[&server]
                .iter()
                .filter(|r| mine(r))
                .cloned()
                .collect(),
        };
        let problems = judge(case, server, &tag, &obs, &log);
        let shown: Vec<String> = obs
            .executed
            .iter()
            .map(|r| format!("{} -> {}", r.sender, r.rcpts.join(",")))
            .collect();
        table.push_str(&format!(
            "{:<4} {:<44} {:<9} executed [{}], client: {} {}{}{}\n",
            if problems.is_empty() { "ok" } else { "FAIL" },
            format!("{} [{}]", case.name, case.hole),
            format!("{server:?}"),
            shown.join("; "),
            first_refusal(&obs.received).unwrap_or_else(|| "no refusal,".into()),
            obs.end,
            if obs.end_at.is_finite() {
                format!(" after {:.1} s", obs.end_at)
            } else {
                String::new()
            },
            if problems.is_empty() {
                String::new()
            } else {
                format!("\n       {}", problems.join("\n       "))
            }
        ));
        if !problems.is_empty() {
            failures.push(format!("{label}: {}", problems.join("; ")));
        }
    }
    (table, failures)
}

/// The first 4xx/5xx reply line the client got (the engine's timeout
/// notice aside: a session that times out was not refused).
fn first_refusal(received: &str) -> Option<String> {
    received
        .split("\r\n")
        .filter(|l| !l.starts_with("421 4.4.2"))
        .find(|l| l.starts_with('4') || l.starts_with('5'))
        .map(|l| format!("`{}`", l.chars().take(60).collect::<String>()))
}

fn judge(case: &Case, server: Server, tag: &str, obs: &Observed, log: &str) -> Vec<String> {
    let mut problems = Vec::new();
    let mut want: Vec<Envelope> = case
        .allowed
        .iter()
        .map(|(s, r)| Envelope {
            sender: tagged(s, tag),
            rcpts: r.iter().map(|a| tagged(a, tag)).collect(),
        })
        .collect();
    let mut got = obs.executed.clone();
    for r in want.iter_mut().chain(got.iter_mut()) {
        r.rcpts.sort();
    }
    want.sort();
    got.sort();
    if case.exact && got != want {
        problems.push(format!(
            "the server executed {got:?}, the engine should have allowed exactly {want:?}"
        ));
    }
    let told = obs.received.matches(server.accepted_marker()).count();
    if told != got.len() {
        problems.push(format!(
            "the client was told {told} message(s) were accepted, the server executed {}",
            got.len()
        ));
    }
    let client = format!("\"client\":\"198.18.0.2:{}\"", obs.port);
    let session = format!(
        "198.18.0.2:{} -> {}:25: ended (",
        obs.port,
        server.address()
    );
    for check in &case.checks {
        match check {
            Check::Refused => {
                // Closed on it: not by the engine's timeout, which comes
                // later than the client's final read ends.
                let closed = (obs.end == "EOF" || obs.end == "RST") && obs.end_after < 3.5;
                if first_refusal(&obs.received).is_none() && !closed {
                    problems.push("neither refused nor closed".into());
                }
            }
            Check::EndedWithin(s) => {
                if obs.end == "OPEN" || obs.end_at > *s {
                    problems.push(format!(
                        "the session did not end within {s} s ({} after {:.1} s)",
                        obs.end, obs.end_at
                    ));
                }
            }
            Check::Got(text) => {
                if !obs.received.contains(text) {
                    problems.push(format!("the client never got `{text}`"));
                }
            }
            Check::NoAddress(text) => {
                let bad: Vec<&Envelope> = got
                    .iter()
                    .filter(|r| r.sender.contains(text) || r.rcpts.iter().any(|a| a.contains(text)))
                    .collect();
                if !bad.is_empty() {
                    problems.push(format!("the server executed {bad:?}, with `{text}`"));
                }
            }
            Check::Outcome(outcome) => {
                let line = log.lines().find(|l| l.contains(&session));
                if !line.is_some_and(|l| l.contains(&format!("ended ({outcome}"))) {
                    problems.push(format!(
                        "session end logged as {:?}, not {outcome}",
                        line.map(|l| l.rsplit_once("ended").map_or(l, |x| x.1))
                    ));
                }
            }
            Check::Audit(text) => {
                let found = log.lines().any(|l| l.contains(&client) && l.contains(text));
                if !found {
                    problems.push(format!("no audit record of this session with `{text}`"));
                }
            }
        }
    }
    problems
}

fn report(name: &str, table: &str, failures: &[String]) {
    eprintln!("differential cases ({name}):\n{table}");
    assert!(
        failures.is_empty(),
        "{} case(s) failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

// ---- The cases ----

use Server::{Exchange as X, Exim as E, Postfix as P};

/// Stands for the case's tag in addresses; as long as a tag, so that
/// lengths (BDAT sizes) computed on the template hold once tagged.
const TAG: &str = "TAGxxx";

const GOOD: &str = "good.TAGxxx@client.test";
const EVIL: &str = "evil.TAGxxx@client.test";
const RCPT: &str = "rcpt.TAGxxx@server.test";

/// EHLO, then MAIL FROM the good sender and RCPT TO the good recipient.
fn open_tx() -> Vec<Value> {
    let mut s = ehlo();
    s.extend(cmd(format!("MAIL FROM:<{GOOD}>\r\n")));
    s.extend(cmd(format!("RCPT TO:<{RCPT}>\r\n")));
    s
}

/// DATA with `content`, its final dot and the reply.
fn data(content: &str) -> Vec<Value> {
    let mut s = cmd("DATA\r\n");
    s.extend(cmd(format!("{content}\r\n.\r\n")));
    s
}

fn quit() -> Vec<Value> {
    cmd("QUIT\r\n")
}

/// A smuggled transaction, as a server reads commands: the evil sender,
/// the good recipient, and a one-chunk message.
fn smuggled_bdat() -> String {
    format!("MAIL FROM:<{EVIL}>\r\nRCPT TO:<{RCPT}>\r\nBDAT 6 LAST\r\nevil\r\n")
}

/// `BDAT <size as written>` whose chunk, to a server that takes the size
/// (as a non-LAST chunk), is exactly a `BDAT n LAST` line to the engine.
/// The n bytes after it are then message content to the engine, and to the
/// server a last chunk (the good message) followed by a smuggled
/// transaction.
fn bdat_desync(first: impl Fn(usize) -> String) -> Vec<Value> {
    let last = "end\r\n";
    let payload = format!("BDAT {} LAST\r\n{last}{}", last.len(), smuggled_bdat());
    let inner = format!("BDAT {} LAST\r\n", payload.len());
    let mut s = open_tx();
    s.push(send(format!("{}\r\n{inner}{payload}", first(inner.len()))));
    s.push(reply());
    s
}

fn modern_cases() -> Vec<Case> {
    let mut cases = Vec::new();
    let mut add = |c: Case| cases.push(c);

    // Controls: a plain transaction and a BDAT one are executed once.
    add(Case::new("plain DATA", "control", &[P, E, X])
        .steps(open_tx())
        .steps(data("Subject: plain\r\n\r\nhello"))
        .steps(quit())
        .allow(GOOD, &[RCPT]));
    let body = "Subject: bdat\r\n\r\nhello\r\n";
    add(Case::new("plain BDAT", "control", &[P, E, X])
        .steps(open_tx())
        .steps(cmd(format!("BDAT {} LAST\r\n{body}", body.len())))
        .steps(quit())
        .allow(GOOD, &[RCPT]));

    // 1. BDAT framing.
    let first = "Subject: wrap\r\n\r\nhello\r\n";
    let mut s = open_tx();
    s.push(send(format!(
        "BDAT {} LAST\r\n{first}{}",
        (1u64 << 32) + first.len() as u64,
        smuggled_bdat()
    )));
    s.push(reply());
    add(
        Case::new("BDAT size 2^32+n (Exim: mod 2^32)", "1 bdat", &[P, E])
            .steps(s)
            .check(Check::Refused),
    );
    add(Case::new("BDAT +n", "1 bdat", &[P, E])
        .steps(bdat_desync(|n| format!("BDAT +{n}")))
        .check(Check::Refused));
    add(Case::new("BDAT nabc", "1 bdat", &[P, E])
        .steps(bdat_desync(|n| format!("BDAT {n}abc")))
        .check(Check::Refused));
    add(Case::new("BDAT n LASTX", "1 bdat", &[P, E])
        .steps(bdat_desync(|n| format!("BDAT {n} LASTX")))
        .check(Check::Refused));
    add(Case::new("BDAT n LAST foo", "1 bdat", &[P, E])
        .steps(bdat_desync(|n| format!("BDAT {n} LAST foo")))
        .check(Check::Refused));
    // 27 digits (leading zeros): both servers take the value; the chunk
    // is a BDAT line to the engine, whose payload is a smuggled
    // transaction to the servers.
    let smuggle = smuggled_bdat();
    let inner = format!("BDAT {}\r\n", smuggle.len());
    let mut s = open_tx();
    s.push(send(format!(
        "BDAT {:027} LAST\r\n{inner}{smuggle}",
        inner.len()
    )));
    s.push(reply());
    add(Case::new("BDAT with 27 digits", "1 bdat", &[P, E])
        .steps(s)
        .check(Check::Refused));

    // 2. Address forms.
    let sender_forms: [(&'static str, &'static str, &'static [Server]); 8] = [
        ("MAIL  FROM: (two spaces)", "MAIL  FROM:<{EVIL}>", &[P, E]),
        ("MAIL FROM:<TAB><addr>", "MAIL FROM:\t<{EVIL}>", &[P, E]),
        ("MAIL FROM :<addr>", "MAIL FROM :<{EVIL}>", &[P, E]),
        (
            "MAIL FROM:Bob <addr> (phrase)",
            "MAIL FROM:Bob <{EVIL}>",
            &[P, E],
        ),
        ("MAIL FROM:Bob<addr>", "MAIL FROM:Bob<{EVIL}>", &[P, E]),
        (
            "MAIL FROM:(comment)<addr>",
            "MAIL FROM:(x)<{EVIL}>",
            &[P, E],
        ),
        ("MAIL FROM:<<addr>>", "MAIL FROM:<<{EVIL}>>", &[P, E]),
        (
            "MAIL FROM:<\"quoted\"@domain>",
            "MAIL FROM:<\"evil.TAGxxx\"@client.test>",
            &[P, E],
        ),
    ];
    for (name, line, servers) in sender_forms {
        let mut s = ehlo();
        s.extend(cmd(format!("{}\r\n", line.replace("{EVIL}", EVIL))));
        s.extend(cmd(format!("RCPT TO:<{RCPT}>\r\n")));
        s.extend(data("Subject: sender form\r\n\r\nevil"));
        add(Case::new(name, "2 sender-address", servers)
            .steps(s)
            .check(Check::Refused));
    }
    let relay = "relay.TAGxxx@relay.test";
    for (name, line) in [
        ("RCPT  TO: (two spaces)", format!("RCPT  TO:<{relay}>")),
        ("RCPT TO:<TAB><addr>", format!("RCPT TO:\t<{relay}>")),
    ] {
        let mut s = ehlo();
        s.extend(cmd(format!("MAIL FROM:<{GOOD}>\r\n")));
        s.extend(cmd(format!("{line}\r\n")));
        s.extend(data("Subject: relay\r\n\r\nrelayed"));
        add(Case::new(name, "2 mail-relay", &[P, E])
            .steps(s)
            .check(Check::Refused));
    }
    for (name, line) in [
        (
            "MAIL  FROM:<a`b> (two spaces)",
            "MAIL  FROM:<a`b.TAGxxx@client.test>",
        ),
        (
            "RCPT  TO:<|pipe> (two spaces)",
            "RCPT  TO:<|pipe.TAGxxx@server.test>",
        ),
    ] {
        let mut s = ehlo();
        if line.starts_with("RCPT") {
            s.extend(cmd(format!("MAIL FROM:<{GOOD}>\r\n")));
            s.extend(cmd(format!("{line}\r\n")));
        } else {
            s.extend(cmd(format!("{line}\r\n")));
            s.extend(cmd(format!("RCPT TO:<{RCPT}>\r\n")));
        }
        s.extend(data("Subject: special\r\n\r\nspecial"));
        add(Case::new(name, "2 special-character", &[P, E])
            .steps(s)
            .check(Check::Refused));
    }
    let mut s = ehlo();
    s.extend(cmd(format!("MAIL FROM:<{GOOD}>\tSIZE=10\r\n")));
    s.extend(cmd(format!("RCPT TO:<{RCPT}>\r\n")));
    s.extend(data(&format!("Subject: size\r\n\r\n{}", "x".repeat(200))));
    add(
        Case::new("MAIL FROM:<addr><TAB>SIZE=10", "2 SIZE=", &[P, E])
            .steps(s)
            .check(Check::Refused),
    );

    // 3. Bare CR.
    for (name, content) in [
        ("DATA: \\r.\\r", "Subject: cr\r\n\r\nbody\r.\rmore"),
        ("DATA: \\n.\\r", "Subject: cr\r\n\r\nbody\n.\rmore"),
        ("DATA: \\r.\\r\\n", "Subject: cr\r\n\r\nbody\r.\r\nmore"),
    ] {
        let mut s = open_tx();
        s.extend(data(content));
        add(Case::new(name, "3 bare CR", &[P, E])
            .steps(s)
            .check(Check::Refused));
    }
    // `.\r\r\n`: Postfix (bare newlines allowed, Debian's default) strips
    // every CR before the LF and ends the message there.
    let mut s = open_tx();
    s.extend(cmd("DATA\r\n"));
    s.push(send(format!(
        "Subject: s\r\n\r\nbody\r\n.\r\r\nMAIL FROM:<{EVIL}>\r\nRCPT TO:<{RCPT}>\r\nDATA\r\n"
    )));
    s.push(send("Subject: evil\r\n\r\nevil\r\n.\r\n"));
    s.push(reply());
    add(
        Case::new("DATA: \\r\\n.\\r\\r\\n then commands", "3 bare CR", &[P, E])
            .steps(s)
            .check(Check::Refused),
    );
    let mut s = ehlo();
    s.extend(cmd("MAIL FROM:<\revil.TAGxxx@client.test>\r\n"));
    s.extend(cmd(format!("RCPT TO:<{RCPT}>\r\n")));
    s.extend(data("Subject: cr in command\r\n\r\nevil"));
    add(Case::new("MAIL FROM:<\\raddr>", "3 bare CR", &[P, E])
        .steps(s)
        .check(Check::Refused));

    // 4. A line that never ends.
    let mut s = ehlo();
    s.push(json!({ "send": "a", "times": 4 << 20 }));
    add(Case::new("4 MiB without a line end", "4 line", &[P])
        .steps(s)
        .client("linger", json!(6))
        .check(Check::Refused)
        .check(Check::Audit("cmd line length"))
        .check(Check::EndedWithin(3.0)));
    let mut s = ehlo();
    s.push(json!({ "trickle": format!("MAIL FROM:<{GOOD}>"), "every": 0.5, "for": 12 }));
    add(Case::new("a command trickled byte by byte", "4 line", &[P])
        .steps(s)
        .check(Check::EndedWithin(COMMAND_TIMEOUT + 3.0)));

    // 5. XEXCH50: the blob's reply must not be taken for DATA's.
    let y = format!(".\r\nMAIL FROM:<{EVIL}>\r\nRCPT TO:<{RCPT}>\r\nDATA\r\n");
    let z = "Subject: evil\r\n\r\nevil\r\n.\r\n";
    let mut s = open_tx();
    s.extend(cmd("XEXCH50 10 2\r\n"));
    s.push(send("0123456789DATA\r\n"));
    s.push(reply());
    s.push(reply());
    s.push(send(format!(
        "BDAT {}\r\n{y}BDAT {} LAST\r\n{z}",
        y.len(),
        z.len()
    )));
    s.push(reply());
    add(
        Case::new("XEXCH50 blob, DATA pipelined after it", "5 xexch50", &[X])
            .steps(s)
            .allow(GOOD, &[RCPT])
            .check(Check::Refused),
    );
    let mut s = open_tx();
    s.extend(cmd("XEXCH50 10 2\r\n"));
    s.extend(data("Subject: after xexch50\r\n\r\nhello"));
    s.extend(quit());
    add(
        Case::new("XEXCH50 refused by the server", "5 xexch50", &[P])
            .steps(s)
            .allow(GOOD, &[RCPT]),
    );

    // 6. MIME the scanner gives up on.
    let filename = format!("{}.bin", "f".repeat(300));
    let mut m = String::from("Subject: deep\r\nMIME-Version: 1.0\r\n");
    for d in 0..20 {
        m.push_str(&format!(
            "Content-Type: multipart/mixed; boundary=\"b{d}\"\r\n\r\n--b{d}\r\n"
        ));
    }
    m.push_str(&format!(
        "Content-Type: application/octet-stream\r\nContent-Disposition: attachment; filename=\"{filename}\"\r\n\r\ndata\r\n"
    ));
    for d in (0..20).rev() {
        m.push_str(&format!("--b{d}--\r\n"));
    }
    let mut s = open_tx();
    s.extend(data(&m));
    add(Case::new("MIME nested 20 deep", "6 mime", &[P])
        .steps(s)
        .check(Check::Refused)
        .check(Check::Audit("108004")));

    // 7. Closing must not destroy the reply it waited for. The client's
    // receive window is kept full (replies to 300 pipelined RCPTs it does
    // not read yet; Postfix counts RSET and NOOP as junk), so the reply to
    // its message waits in the gateway's send queue while the client keeps
    // sending after its final dot.
    for (name, after) in [
        (
            "a reset right after the final dot",
            "VRFY x\r\n".to_string(),
        ),
        (
            "a drop right after the final dot",
            format!("MAIL FROM:<{EVIL}>\r\n"),
        ),
    ] {
        let mut s = ehlo();
        s.push(send(format!("MAIL FROM:<{GOOD}>\r\n")));
        s.push(json!({ "send": format!("RCPT TO:<{RCPT}>\r\n"), "times": 300 }));
        s.push(send("DATA\r\n"));
        s.push(json!({ "sleep": 0.5 }));
        s.push(send(format!(
            "Subject: keep sending\r\n\r\nhello\r\n.\r\n{after}"
        )));
        s.push(json!({ "stream": "NOOP\r\n", "for": 2 }));
        add(Case::new(name, "7 closing", &[P])
            .steps(s)
            .client("rcvbuf", json!(1))
            .client("linger", json!(10))
            .allow(GOOD, &[RCPT])
            .check(Check::Got("queued as")));
    }

    // 8. A half-close after the final dot is the client's close.
    let mut s = open_tx();
    s.extend(cmd("DATA\r\n"));
    s.push(send("Subject: half close\r\n\r\nhello\r\n.\r\n"));
    s.push(json!({ "shutdown": true }));
    add(
        Case::new("half-close after the final dot", "8 outcome", &[P])
            .steps(s)
            .client("linger", json!(10))
            .allow(GOOD, &[RCPT])
            .check(Check::Outcome("Closed")),
    );

    cases
}

#[test]
fn real_servers_execute_only_what_the_engine_allowed() {
    let cases = modern_cases();
    assert!(TAG.len() == "k00x0k".len());
    let l = DiffLab::new("modern", POLICY, &[P, E, X]);
    let started = Instant::now();
    let (mut table, mut failures) = run_cases(&l, &cases);

    // Exim as the client, through the inspector to both servers: CHUNKING
    // and PIPELINING, each message executed once.
    for (i, server) in [P, E].into_iter().enumerate() {
        let tag = format!("i{i:02}x0i");
        let (sender, rcpt) = (GOOD.replace(TAG, &tag), RCPT.replace(TAG, &tag));
        let (out, log) = Exim::send(
            &l.f.lab.client,
            &l.f.dir.join(format!("exim-client-{i}")),
            server.address(),
            &sender,
            &[&rcpt],
            b"Subject: from Exim\r\n\r\nhello from Exim\r\n",
        );
        l.quiesce();
        let executed: Vec<Envelope> = l
            .executed(server)
            .into_iter()
            .filter(|r| r.sender == sender)
            .collect();
        let want = vec![Envelope {
            sender: sender.clone(),
            rcpts: vec![rcpt.clone()],
        }];
        let chunked = log.lines().any(|l| l.contains(" => ") && l.contains(" K "));
        let ok = out.status.success() && executed == want && chunked;
        table.push_str(&format!(
            "{:<4} {:<44} {:<9} executed {executed:?}, Exim's delivery with CHUNKING: {chunked}\n",
            if ok { "ok" } else { "FAIL" },
            "Exim as the client [interop]",
            format!("{server:?}"),
        ));
        if !ok {
            failures.push(format!(
                "Exim client vs {server:?}: executed {executed:?}, log: {log}{}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    eprintln!("{} cases in {:?}", cases.len(), started.elapsed());
    report("modern policy", &table, &failures);
}

/// Compat mode: the original's `|` rewriting (108002) and its program
/// address check (108003) must see the address Postfix and Exim read.
fn compat_cases() -> Vec<Case> {
    let mut cases = Vec::new();
    let pipe_sender = "|pipe.TAGxxx@client.test";
    for (name, line, servers) in [
        (
            "MAIL  FROM:<|pipe> (two spaces)",
            format!("MAIL  FROM:<{pipe_sender}>"),
            &[P, E],
        ),
        (
            "MAIL FROM:<TAB><|pipe>",
            format!("MAIL FROM:\t<{pipe_sender}>"),
            &[P, E],
        ),
    ] {
        let mut s = ehlo();
        s.extend(cmd(format!("{line}\r\n")));
        s.extend(cmd(format!("RCPT TO:<{RCPT}>\r\n")));
        s.extend(data("Subject: pipe\r\n\r\npipe"));
        cases.push(
            Case::new(name, "2 108003 pipe", servers)
                .steps(s)
                .check(Check::Refused),
        );
    }
    // The rewritten address is the server's to take or refuse (Postfix
    // refuses `a b`, Exim takes it as `a=b`): what matters is that no `|`
    // gets there.
    for (name, line, hole) in [
        (
            "RCPT TO:<a|b> (rewritten: control)",
            "RCPT TO:<a|b.TAGxxx@server.test>",
            "control",
        ),
        (
            "RCPT  TO:<a|b> (two spaces)",
            "RCPT  TO:<a|b.TAGxxx@server.test>",
            "2 compat |",
        ),
        (
            "RCPT TO:<TAB><a|b>",
            "RCPT TO:\t<a|b.TAGxxx@server.test>",
            "2 compat |",
        ),
    ] {
        let mut s = ehlo();
        s.extend(cmd(format!("MAIL FROM:<{GOOD}>\r\n")));
        s.extend(cmd(format!("{line}\r\n")));
        s.extend(data("Subject: bar\r\n\r\nbar"));
        cases.push(
            Case::new(name, hole, &[P, E])
                .steps(s)
                .loose()
                .check(Check::NoAddress("|")),
        );
    }
    cases
}

#[test]
fn compat_mode_rewrites_and_refuses_what_the_servers_read() {
    let compat = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies/compat.toml"),
    )
    .unwrap();
    let policy = format!("[proxy]\ncommand-timeout = 4\n\n{compat}");
    let cases = compat_cases();
    let l = DiffLab::new("compat", &policy, &[P, E]);
    let (table, failures) = run_cases(&l, &cases);
    report("compat policy", &table, &failures);
}
