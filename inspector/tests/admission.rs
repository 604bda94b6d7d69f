//! One client cannot take mail down: per-client session limits, fair
//! admission when the proxy is full, and stress mode, through the real path
//! (kernel steering, the proxy, Postfix's smtp-sink), with an attacker
//! holding idle sessions (`py/attack.py`) while other clients deliver mail
//! (`py/deliver.py`). Needs root; fails, never skips, without it.
//!
//! A client at its session limit has its next SYNs dropped in XDP
//! (`per-client-in-kernel`, on by default); the tests of the proxy's own
//! `421 4.7.0` turn that off, the `kernel_*` tests check it.

mod support;

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use inspector_lab::{CLIENT_V4, CLIENT2_V4, SERVER_V4, SERVER_V6};
use serde_json::Value;
use support::proxy::*;

const METRICS: &str = "127.0.0.1:9725";

/// More client addresses for the lab's client namespace.
fn add_addresses(f: &Fixture, addrs: &[IpAddr]) {
    for a in addrs {
        let (cidr, v6) = match a {
            IpAddr::V4(_) => (format!("{a}/24"), false),
            IpAddr::V6(_) => (format!("{a}/64"), true),
        };
        let mut args = vec!["addr", "add", &cidr, "dev", "eth0"];
        if v6 {
            args.push("nodad");
        }
        f.lab.client.ip(&args).unwrap();
    }
}

fn v4(last: u8) -> IpAddr {
    IpAddr::from([198, 18, 0, last])
}

/// `attack.py` in the background: `n` sockets from `sources` held for
/// `seconds`; returns once its first `n` attempts are done.
fn start_attack(f: &Fixture, seconds: u32, n: usize, sources: &[IpAddr]) -> Child {
    let ready = f.dir.join("attack-ready");
    let mut cmd = f.client("attack.py");
    cmd.arg(SERVER_V4.to_string())
        .arg(seconds.to_string())
        .arg(n.to_string())
        .arg(&ready)
        .args(sources.iter().map(|a| a.to_string()))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    spawn_until(cmd, &ready, "attack.py", Duration::from_secs(60))
}

/// Spawns `cmd` and returns once it has made `ready`; it must, within
/// `limit`, and not exit before.
fn spawn_until(mut cmd: Command, ready: &Path, name: &str, limit: Duration) -> Child {
    let mut child = cmd.spawn().unwrap();
    let start = Instant::now();
    while !ready.exists() {
        if let Some(status) = child.try_wait().unwrap() {
            let out = child.wait_with_output().unwrap();
            panic!("{name} exited ({status}): {}", text(&out));
        }
        assert!(start.elapsed() < limit, "{name} never got ready");
        std::thread::sleep(Duration::from_millis(50));
    }
    child
}

fn finish(child: Child) -> Value {
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out)))
}

/// `deliver.py` from each source at once, `count` messages each; returns
/// their summaries.
fn deliver(f: &Fixture, server: &str, sources: &[IpAddr], count: usize) -> Vec<Value> {
    let children: Vec<Child> = sources
        .iter()
        .map(|src| {
            f.client("deliver.py")
                .arg(server)
                .arg(src.to_string())
                .arg(count.to_string())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    children.into_iter().map(finish).collect()
}

fn assert_all_delivered(results: &[Value], count: usize) {
    for r in results {
        assert_eq!(r["sent"], count, "{r}");
    }
}

/// The metrics endpoint's body, scraped in the gateway.
fn metrics(f: &Fixture) -> String {
    let out = f
        .lab
        .gateway
        .command("curl")
        .args(["-s", "--max-time", "5"])
        .arg(format!("http://{METRICS}/metrics"))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The value of one sample (`name{labels}`) in a scrape.
fn sample(body: &str, series: &str) -> u64 {
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {series} in {body}"))
}

/// The daemon's audit records (JSON lines on its stdout) with this id.
fn audit_records(f: &Fixture, id: u64) -> Vec<Value> {
    f.log()
        .lines()
        .filter(|l| l.starts_with('{'))
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["id"] == id)
        .collect()
}

/// One address opens more sockets than its per-client limit and holds
/// them; it gets its limit, then `421 4.7.0`, one audit record, a counted
/// refusal per socket; two other clients deliver every message meanwhile.
#[test]
fn one_address_is_held_to_its_per_client_limit() {
    let f = Fixture::new(
        "percl",
        "[proxy]\nmax-sessions = 40\nper-client-sessions = 10\nper-client-in-kernel = false\n",
    );
    add_addresses(&f, &[v4(4)]);
    let attack = start_attack(&f, 6, 60, &[CLIENT_V4.into()]);
    let results = deliver(&f, &SERVER_V4.to_string(), &[CLIENT2_V4.into(), v4(4)], 20);
    let attack = finish(attack);
    eprintln!("attack: {attack}\nclients: {results:?}");
    assert_all_delivered(&results, 20);
    assert_eq!(f.stored().len(), 40);
    assert_eq!(attack["held_max"], 10, "{attack}");
    let refused =
        &attack["replies"]["421 4.7.0 Too many sessions from 198.18.0.2, try again later"];
    assert!(refused.as_u64().unwrap_or(0) >= 50, "{attack}");
    let records = audit_records(&f, 201013);
    assert_eq!(
        records.len(),
        1,
        "one record a minute per client: {records:?}"
    );
    assert_eq!(records[0]["client_key"], "198.18.0.2");
    assert_eq!(records[0]["limit"], "per-client-sessions");
    let body = metrics(&f);
    let counted = sample(
        &body,
        "inspector_sessions_refused_total{reason=\"per-client-limit\"}",
    );
    assert!(counted >= 50, "{counted}");
    assert_eq!(
        sample(
            &body,
            "inspector_sessions_refused_total{reason=\"max-sessions\"}"
        ),
        0
    );
    assert_eq!(sample(&body, "inspector_sessions_evicted_total"), 0);
}

/// A client that ends its sessions one after another is never refused for
/// the ones it already ended: a session only closing (lingering until the
/// client has its last reply) gives its slot back at once.
#[test]
fn sessions_that_ended_do_not_count_against_their_client() {
    let f = Fixture::new("ended", "[proxy]\nper-client-sessions = 2\n");
    let messages = 200;
    let out = f
        .lab
        .client
        .command("smtp-source")
        .args(["-s", "2", "-m", &messages.to_string(), "-l", "200"])
        .args(["-f", "a@client.test", "-t", "b@server.test"])
        .arg(format!("{SERVER_V4}:25"))
        .output()
        .unwrap();
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "smtp-source: {}",
        text(&out)
    );
    let body = metrics(&f);
    assert_eq!(
        sample(
            &body,
            "inspector_sessions_refused_total{reason=\"per-client-limit\"}"
        ),
        0
    );
    assert_eq!(f.stored().len(), messages);
}

/// The attack with the default policy scaled down (`max-sessions =
/// 40`, so the default `per-client-sessions = 50` does not bite): one
/// address fills the proxy with idle sessions and keeps re-opening them;
/// each other client's session takes the slot of one of them, and every
/// message is delivered on the first try.
#[test]
fn a_full_proxy_gives_idle_slots_to_other_clients() {
    let f = Fixture::new("fair", "[proxy]\nmax-sessions = 40\n");
    add_addresses(&f, &[v4(4), v4(5)]);
    let attack = start_attack(&f, 8, 60, &[CLIENT_V4.into()]);
    assert!(
        f.log().contains("stress: on"),
        "40 of 40 sessions: {}",
        f.log()
    );
    let results = deliver(
        &f,
        &SERVER_V4.to_string(),
        &[CLIENT2_V4.into(), v4(4), v4(5)],
        15,
    );
    let attack = finish(attack);
    eprintln!("attack: {attack}\nclients: {results:?}");
    assert_all_delivered(&results, 15);
    assert_eq!(f.stored().len(), 45);
    assert_eq!(attack["held_after_first"], 40, "{attack}");
    let replies = &attack["replies"];
    assert!(
        replies["421 4.3.2 Too many sessions, try again later"]
            .as_u64()
            .unwrap_or(0)
            >= 20,
        "{attack}"
    );
    assert!(
        replies["421 4.3.2 Service busy, closing an idle session, try again later"]
            .as_u64()
            .unwrap_or(0)
            >= 1,
        "{attack}"
    );
    let body = metrics(&f);
    assert!(sample(&body, "inspector_sessions_evicted_total") >= 1);
    assert!(
        sample(
            &body,
            "inspector_sessions_refused_total{reason=\"max-sessions\"}"
        ) >= 20
    );
    assert!(
        f.log()
            .contains("closing the longest-idle session of client 198.18.0.2")
    );
}

/// Above the threshold the greeting, command and idle timeouts shrink to
/// the stress timeout: clients that go silent are closed within it while a
/// client pausing longer inside DATA still delivers (the DATA timeout
/// stays); when occupancy falls, the timeouts are restored.
#[test]
fn under_stress_silent_clients_are_closed_within_the_stress_timeout() {
    let f = Fixture::new(
        "stress",
        "[proxy]\nmax-sessions = 20\nstress-threshold = 25\nstress-timeout = 2\n",
    );
    let out = f
        .client("stress_clients.py")
        .arg(SERVER_V4.to_string())
        .arg("5")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    eprintln!("clients: {r}");
    assert_eq!(r["keepers_closed"], 0, "{r}");
    let silent = r["silent"].as_array().unwrap();
    assert_eq!(silent.len(), 4, "{r}");
    for s in silent {
        let secs = s[0].as_f64().unwrap();
        assert!(
            (1.5..5.0).contains(&secs),
            "closed after {secs} s, not the stress timeout of 2 s (command-timeout is 300): {r}"
        );
        assert!(s[1].as_str().unwrap().starts_with("421 4.4.2"), "{r}");
    }
    assert!(r["data"].as_str().unwrap().starts_with("250"), "{r}");
    assert_eq!(f.stored().len(), 1);
    wait_for(|| f.log().contains("stress: off"), "stress mode to end");
    let body = metrics(&f);
    assert_eq!(sample(&body, "inspector_stress"), 0);
    assert_eq!(sample(&body, "inspector_stress_entered_total"), 1);
    // Restored: an idle session outlives the stress timeout.
    let out = f
        .client("hold.py")
        .arg(SERVER_V4.to_string())
        .arg("4")
        .output()
        .unwrap();
    assert!(text(&out).starts_with("250"), "{}", text(&out));
}

/// A host rotating its IPv6 address inside one /64 counts as one client:
/// 16 addresses of 2001:2::/64 get 4 sessions between them, the rest `421
/// 4.7.0` naming the /64; an IPv4 client is not affected.
#[test]
fn ipv6_addresses_inside_one_64_count_as_one_client() {
    let mut f = Fixture::new(
        "v6prefix",
        "[proxy]\nper-client-sessions = 4\nper-client-in-kernel = false\n",
    );
    f.sink_v6 = Some(f.start_sink("[::]:25"));
    let rotating: Vec<IpAddr> = (0..16u16)
        .map(|i| IpAddr::from([0x2001, 2, 0, 0, 0, 0, 0x100, i]))
        .collect();
    add_addresses(&f, &rotating);
    let out = f
        .client("first_replies.py")
        .arg(SERVER_V6.to_string())
        .args(rotating.iter().map(|a| a.to_string()))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let replies: Vec<String> = serde_json::from_slice(&out.stdout).unwrap();
    let greeted = replies.iter().filter(|r| r.starts_with("220")).count();
    assert_eq!(greeted, 4, "{replies:?}");
    let refused = replies
        .iter()
        .filter(|r| *r == "421 4.7.0 Too many sessions from 2001:2::/64, try again later")
        .count();
    assert_eq!(refused, 12, "{replies:?}");
    let records = audit_records(&f, 201013);
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0]["client_key"], "2001:2::/64");
    let results = deliver(&f, &SERVER_V4.to_string(), &[CLIENT_V4.into()], 3);
    assert_all_delivered(&results, 3);
}

/// `at_limit.py` from each of `sources` in turn (one connection each, a
/// second to connect): the first replies, "timeout" where the SYNs were
/// dropped. The connections stay open until [`Holder::release`].
fn hold_from(f: &Fixture, server: IpAddr, sources: &[IpAddr]) -> (Holder, Vec<String>) {
    let result = f.dir.join("at-limit.json");
    let release = f.dir.join("at-limit-release");
    let _ = std::fs::remove_file(&result);
    let _ = std::fs::remove_file(&release);
    let mut cmd = f.client("at_limit.py");
    cmd.arg(server.to_string())
        .arg("1")
        .arg(&result)
        .arg(&release)
        .args(sources.iter().map(|a| a.to_string()))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = spawn_until(cmd, &result, "at_limit.py", Duration::from_secs(90));
    let replies = serde_json::from_slice(&std::fs::read(&result).unwrap()).unwrap();
    (Holder { child, release }, replies)
}

struct Holder {
    child: Child,
    release: PathBuf,
}

impl Holder {
    /// Closes the held connections; returns when they are closed.
    fn release(mut self) {
        std::fs::write(&self.release, b"").unwrap();
        let status = self.child.wait().unwrap();
        assert!(status.success(), "at_limit.py: {status}");
    }
}

/// Counts the replies that start with `prefix`.
fn replies_starting(replies: &[String], prefix: &str) -> usize {
    replies.iter().filter(|r| r.starts_with(prefix)).count()
}

/// `inspector stats --json`'s clients blocked in XDP.
fn blocked_in_kernel(f: &Fixture) -> Vec<String> {
    let out = support::cli_ok(f.pins.path(), &["stats", "--json"]);
    let v: Value = serde_json::from_str(&out).unwrap();
    v["limits"]["clients_blocked"]
        .as_array()
        .unwrap_or_else(|| panic!("no clients_blocked in {v}"))
        .iter()
        .map(|b| b["client"].as_str().unwrap().to_string())
        .collect()
}

/// What the kernel part adds: a client holding `per-client-sessions` has
/// its next SYNs dropped in XDP, so no socket is made for them (the proxy
/// neither accepts nor refuses them: its refusals stay at zero, its active
/// sessions at the limit), counted `per-client`; another client delivers
/// meanwhile; once the client's sessions are closed it connects again.
#[test]
fn kernel_drops_the_syns_of_a_client_at_its_limit() {
    let f = Fixture::new("kblock", "[proxy]\nper-client-sessions = 4\n");
    let (holder, replies) = hold_from(&f, SERVER_V4.into(), &[CLIENT_V4.into(); 10]);
    eprintln!("replies: {replies:?}");
    assert_eq!(replies_starting(&replies, "220"), 4, "{replies:?}");
    assert_eq!(
        replies_starting(&replies, "timeout"),
        6,
        "the SYNs past the limit are dropped, not answered: {replies:?}"
    );
    let results = deliver(&f, &SERVER_V4.to_string(), &[CLIENT2_V4.into()], 5);
    assert_all_delivered(&results, 5);
    let body = metrics(&f);
    let dropped = sample(&body, "inspector_limit_drops_total{reason=\"per-client\"}");
    assert!(
        dropped >= 6,
        "one SYN at least per timed-out connect: {dropped}"
    );
    assert_eq!(sample(&body, "inspector_clients_blocked"), 1);
    assert_eq!(sample(&body, "inspector_esmtp_sessions_active"), 4);
    for reason in ["per-client-limit", "max-sessions"] {
        let series = format!("inspector_sessions_refused_total{{reason=\"{reason}\"}}");
        assert_eq!(sample(&body, &series), 0, "the proxy never saw them");
    }
    assert_eq!(blocked_in_kernel(&f), ["198.18.0.2/32"]);
    holder.release();
    wait_for(
        || blocked_in_kernel(&f).is_empty(),
        "the block to be lifted",
    );
    let (holder, replies) = hold_from(&f, SERVER_V4.into(), &[CLIENT_V4.into()]);
    assert_eq!(replies_starting(&replies, "220"), 1, "{replies:?}");
    holder.release();
    assert_eq!(f.stored().len(), 5);
}

/// IPv6 addresses rotating inside one /64 count as one client in the
/// kernel too: past 4 sessions of the /64, the SYNs of every address in it
/// are dropped in XDP; an IPv4 client is not affected.
#[test]
fn kernel_counts_ipv6_addresses_inside_one_64_as_one_client() {
    let mut f = Fixture::new("kblock6", "[proxy]\nper-client-sessions = 4\n");
    f.sink_v6 = Some(f.start_sink("[::]:25"));
    let rotating: Vec<IpAddr> = (0..12u16)
        .map(|i| IpAddr::from([0x2001, 2, 0, 0, 0, 0, 0x100, i]))
        .collect();
    add_addresses(&f, &rotating);
    let (holder, replies) = hold_from(&f, SERVER_V6.into(), &rotating);
    eprintln!("replies: {replies:?}");
    assert_eq!(replies_starting(&replies, "220"), 4, "{replies:?}");
    assert_eq!(replies_starting(&replies, "timeout"), 8, "{replies:?}");
    assert_eq!(blocked_in_kernel(&f), ["2001:2::/64"]);
    let body = metrics(&f);
    assert!(sample(&body, "inspector_limit_drops_total{reason=\"per-client\"}") >= 8);
    assert_eq!(
        sample(
            &body,
            "inspector_sessions_refused_total{reason=\"per-client-limit\"}"
        ),
        0
    );
    let results = deliver(&f, &SERVER_V4.to_string(), &[CLIENT_V4.into()], 3);
    assert_all_delivered(&results, 3);
    holder.release();
    wait_for(
        || blocked_in_kernel(&f).is_empty(),
        "the block to be lifted",
    );
}
