//! Delivery through the inspector with real software: swaks and Python's
//! smtplib in the client namespace, Postfix's smtp-sink or a private Postfix
//! as the server, `inspector run` on the gateway. Flagged sessions are
//! steered by the kernel (TC mark, policy route, transparent listener) into
//! the proxy, which runs them through the ESMTP engine and relays them to
//! the server: every message arrives once and intact, over IPv4 and IPv6,
//! from the gateway's address or the client's; and the close gets the last
//! reply to the client however it ends its side, without lingering once
//! nothing is left to wait for. Needs root; fails, never skips, without
//! it.

mod support;

use std::{
    path::{Path, PathBuf},
    thread::sleep,
    time::{Duration, Instant},
};

use inspector_lab::{
    OUTSIDE, SERVER_V4,
    messages::{messages, varied},
};
use support::{postfix::Postfix, proxy::*};

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
    // The engine masked the banner: the session went through the proxy.
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
    // The server saw the client's address (the default upstream source is
    // transparent where it works, as on the lab: the return steering was
    // attached to `inside` at the first session).
    for raw in f.stored_raw() {
        assert!(
            find(&raw, b"X-Client-Addr: 198.18.0.2\n").is_some(),
            "{}",
            String::from_utf8_lossy(&raw[..200.min(raw.len())])
        );
    }
    eprintln!("5 messages (5.3 MB) through the inspector in {took:?}");
}

/// The client's half-close after its final `.` still gets the reply.
#[test]
fn client_half_close_after_the_final_dot_gets_the_reply() {
    let f = Fixture::new("halfclose", "");
    let out = client_py(&f, "half_close.py");
    assert!(out.starts_with("250"), "no reply to the message: {out:?}");
    assert_eq!(f.stored().len(), 1);
}

/// The client's port, from a script's `port: N` line.
fn port_of(out: &str) -> u64 {
    let line = out.lines().find_map(|l| l.strip_prefix("port: "));
    line.and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| panic!("no port in {out:?}"))
}

/// The session record of the session from the client's `port`.
fn record_of(f: &Fixture, port: u64) -> serde_json::Value {
    let find = || {
        session_records(f)
            .into_iter()
            .find(|r| r["src_port"] == port)
    };
    wait_for(|| find().is_some(), "the session record");
    find().unwrap()
}

/// How long the session took, as its record says.
fn duration_ms(record: &serde_json::Value) -> u64 {
    record["duration_ms"]
        .as_u64()
        .unwrap_or_else(|| panic!("no duration: {record}"))
}

/// A client that closes without reading the 221 (as smtp-source does)
/// resets the connection while the 221 is still unacknowledged: nothing
/// sent can reach it any more, so the close ends at once instead of
/// lingering to its deadline (5 s) for an acknowledgment that never comes.
#[test]
fn a_client_resetting_after_quit_ends_its_session_at_once() {
    let f = Fixture::new("quitreset", "");
    let out = f
        .client("quit.py")
        .arg(SERVER_V4.to_string())
        .arg("unread")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let record = record_of(&f, port_of(&text(&out)));
    let ms = duration_ms(&record);
    assert!(ms < 1000, "the close lingered: {ms} ms, {record}");
}

/// A client that reads the 221 and then keeps its side open and silent
/// gets the 221 and the FIN at once, and its session ends as soon as it
/// has acknowledged them: before the client closes (2 s later), well
/// before the linger's deadline (5 s).
#[test]
fn a_client_staying_open_after_quit_gets_the_221_and_the_close_ends_without_it() {
    let f = Fixture::new("quitopen", "");
    let out = f
        .client("quit.py")
        .arg(SERVER_V4.to_string())
        .arg("open")
        .output()
        .unwrap();
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    let fin_after: f64 = t
        .lines()
        .find_map(|l| l.strip_prefix("EOF after "))
        .and_then(|l| l.trim_end_matches(" s").parse().ok())
        .unwrap_or_else(|| panic!("no FIN after the 221: {t}"));
    assert!(fin_after < 1.0, "the FIN came {fin_after} s after the 221");
    let record = record_of(&f, port_of(&t));
    let ms = duration_ms(&record);
    assert!(
        ms < 1000,
        "the close waited for the client: {ms} ms, {record}"
    );
}

/// A client that pipelines past its QUIT and keeps sending without
/// reading, its receive window full of the replies to 300 NOOPs, still
/// gets every reply and the 221: the close reads and discards what it
/// sends until it has acknowledged them, and never resets it before.
#[test]
fn a_client_sending_after_quit_with_a_full_window_gets_the_221() {
    let f = Fixture::new("quitflood", "");
    let case = serde_json::json!({
        "rcvbuf": 1,
        "linger": 10,
        "steps": [
            { "send": "EHLO c\r\n" },
            { "reply": true },
            { "send": "NOOP\r\n", "times": 300 },
            { "send": "QUIT\r\n" },
            { "sleep": 0.5 },
            { "stream": "NOOP\r\n", "for": 2 },
        ],
    });
    let file = f.write("case.json", case.to_string().as_bytes());
    let out = f
        .client("raw_client.py")
        .arg(SERVER_V4.to_string())
        .arg(&file)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let seen: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let received = seen["received"].as_str().unwrap_or_default();
    assert_eq!(
        received.matches("\r\n250 2.0.0").count(),
        300,
        "the NOOPs' replies: {seen}"
    );
    assert!(received.contains("\r\n221 "), "no 221: {seen}");
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

#[test]
fn upstream_source_client_keeps_the_clients_address() {
    let mut f = Fixture::bare("tsource", "[proxy]\nupstream-source = \"client\"\n");
    f.sink = Some(f.start_sink("0.0.0.0:25"));
    // The server's answers to the client's address come back through the
    // return steering, which the daemon attaches to `inside` by itself
    // (the interface of the route to the server).
    f.start_daemon_on(&[OUTSIDE]);
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
