//! STARTTLS (relayed opaquely under `allow-tls`), PIPELINING and
//! CHUNKING/BDAT between real clients and a private Postfix, through the
//! inspector. Needs root; fails, never skips, without it.

mod support;

use std::process::Command;

use inspector_lab::SERVER_V4;
use support::proxy::*;

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
    let (f, pf) = with_postfix("tls", "[esmtp]\nallow-tls = \"log\"\n", &extra);
    let out = client_py(&f, "starttls.py");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(out.contains("STARTTLS"), "STARTTLS not offered: {out}");
    assert!(out.contains("tls: TLSv1."), "{out}");
    wait_for(|| f.log().contains("108007"), "the TLS audit record 108007");
    // The session record says TLS, and the 108007 record carries its id.
    wait_for(|| !session_records(&f).is_empty(), "the session record");
    let records = session_records(&f);
    assert_eq!(records.len(), 1, "{records:#?}");
    let r = &records[0];
    assert_eq!(
        (r["tls"].as_bool(), r["helo"].is_string()),
        (Some(true), true),
        "{r}"
    );
    // What follows STARTTLS is opaque: the transaction is not seen.
    assert_eq!(r["transactions"], serde_json::json!([]), "{r}");
    let tls: Vec<serde_json::Value> = audit_records(&f)
        .into_iter()
        .filter(|v| v["id"] == 108007)
        .collect();
    assert_eq!(tls.len(), 1, "{tls:#?}");
    assert_eq!(tls[0]["session_id"], r["session_id"]);
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
