//! One record per session in the audit sink (JSON lines on the daemon's
//! stdout), from a real session through the kernel steering to Postfix's
//! smtp-sink: its id on every policy record of the session, the two ends
//! as separate fields, the HELO name, each transaction (MAIL FROM,
//! recipients, size, the server's reply), the criteria that fired, the
//! outcome. (The TLS case is in `e2e_tls_and_chunking.rs`.) Needs root;
//! fails, never skips, without it.

mod support;

use inspector_lab::{CLIENT_V4, SERVER_V4};
use support::proxy::*;

#[test]
fn a_session_gives_one_record_and_its_id_to_each_policy_record() {
    let f = Fixture::new("record", "");
    let out = f
        .client("two_transactions.py")
        .arg(SERVER_V4.to_string())
        .output()
        .unwrap();
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    let port: u64 = value_after(&t, "port: ").parse().unwrap();
    let sizes: Vec<u64> = value_after(&t, "sizes: ")
        .split(' ')
        .map(|s| s.parse().unwrap())
        .collect();
    wait_for(|| !session_records(&f).is_empty(), "the session record");
    let records = session_records(&f);
    assert_eq!(records.len(), 1, "{records:#?}");
    let r = &records[0];
    assert_eq!(r["src_ip"], CLIENT_V4.to_string());
    assert_eq!(r["src_port"], port);
    assert_eq!(r["dest_ip"], SERVER_V4.to_string());
    assert_eq!(r["dest_port"], 25);
    assert_eq!(r["helo"], "client.test");
    assert_eq!(r["tls"], false);
    assert_eq!(r["outcome"], "closed");
    assert!(r["duration_ms"].is_u64(), "{r}");
    let txs = r["transactions"].as_array().unwrap();
    assert_eq!(txs.len(), 2, "{r}");
    for (tx, (from, rcpts, size)) in txs.iter().zip([
        ("a@client.test", 3, sizes[0]),
        ("b@client.test", 1, sizes[1]),
    ]) {
        assert_eq!(tx["mail_from"], from, "{r}");
        assert_eq!(tx["rcpt_count"], rcpts, "{r}");
        assert_eq!(tx["size"], size, "{r}");
        assert!(
            tx["reply"]
                .as_str()
                .is_some_and(|s| s.starts_with("250 2.0.0 Ok")),
            "{r}"
        );
    }
    assert_eq!(
        r["criteria"],
        serde_json::json!(["body line length gt 998"])
    );
    // The policy records of the session: the log-only body line record.
    let policy: Vec<serde_json::Value> = audit_records(&f)
        .into_iter()
        .filter(|v| v.get("id").is_some())
        .collect();
    assert!(policy.iter().any(|v| v["id"] == 108005), "{policy:#?}");
    for v in &policy {
        assert_eq!(v["session_id"], r["session_id"], "{v}");
    }
    assert_eq!(f.stored().len(), 2);
}

fn value_after<'a>(text: &'a str, key: &str) -> &'a str {
    let line = text.lines().find(|l| l.starts_with(key)).expect(key);
    &line[key.len()..]
}

/// The daemon's stop waits for its audit sink: the records of the last
/// sessions are written before it exits, not lost with its writer thread.
/// The sink here is a syslog socket read slowly (a datagram every 2 ms,
/// with the kernel's queue of 10 datagrams), so most of a session's 300
/// records are still queued in the daemon when it is told to stop.
#[test]
fn a_stop_writes_the_audit_records_still_queued() {
    use std::os::unix::net::UnixDatagram;
    const NOOPS: usize = 300;
    let mut f = Fixture::bare("auditstop", "");
    let socket = f.dir.join("syslog.sock");
    let receiver = UnixDatagram::bind(&socket).unwrap();
    receiver
        .set_read_timeout(Some(std::time::Duration::from_secs(3)))
        .unwrap();
    f.write(
        "policy.toml",
        format!(
            "[audit]\nsink = \"syslog:{}\"\n\n[esmtp]\n[[esmtp.match]]\n\
             match = \"cmd verb NOOP\"\naction = \"log\"\n",
            socket.display()
        )
        .as_bytes(),
    );
    f.sink = Some(f.start_sink("0.0.0.0:25"));
    f.start_daemon();
    let reader = std::thread::spawn(move || {
        let (mut matched, mut sessions) = (0, 0);
        let mut buf = [0u8; 8192];
        // Until 3 s pass without a datagram.
        while let Ok(n) = receiver.recv(&mut buf) {
            let msg = String::from_utf8_lossy(&buf[..n]);
            // The session's record names the criterion too.
            let session = msg.contains("INSPECTOR-6-session");
            sessions += session as usize;
            matched += (!session && msg.contains("cmd verb NOOP")) as usize;
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        (matched, sessions)
    });
    let mut steps = hello();
    steps.extend((0..NOOPS).map(|_| "NOOP\r\n".to_string()));
    steps.push("QUIT\r\n".into());
    let replies = f.dialog(&SERVER_V4.to_string(), &steps);
    assert!(replies.last().unwrap().starts_with("221"), "{replies:?}");
    // Stopped as systemd stops it, right after the session.
    let mut daemon = f.daemon.take().unwrap();
    let pid = daemon.child().id() as i32;
    // SAFETY: a signal to our own child.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    assert!(daemon.child().wait().unwrap().success());
    let (matched, sessions) = reader.join().unwrap();
    assert_eq!(
        (matched, sessions),
        (NOOPS, 1),
        "records received of {NOOPS} NOOPs and 1 session"
    );
}
