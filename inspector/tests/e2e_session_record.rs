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
