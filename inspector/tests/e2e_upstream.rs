//! What the mail server sees of the clients, with a real Postfix behind the
//! inspector: transparent by default (the client's own address), XCLIENT
//! or a PROXY v2 header where the server is not routed through the gateway,
//! and the gateway's address only when asked for, with a warning.
//!
//! The 60-session test: 3 client addresses hold 20 sessions each at once,
//! against a Postfix with its default per-client limit
//! (`smtpd_client_connection_count_limit = 50`) that trusts neither the
//! clients nor the gateway (`mynetworks` would exempt them from the
//! limit). When Postfix sees each client, all 60 are served; when it sees
//! the gateway, it refuses 10. Needs root; fails, never skips, without it.

mod support;

use std::time::Duration;

use inspector_lab::{
    CLIENT_V4, CLIENT2_V4, CLIENT3_V4, GATEWAY_INSIDE_V4, MAIL_GATEWAY_V4, SERVER_V4,
};
use support::{cli, postfix::Postfix, proxy::*, wait_until};

const PER_CLIENT: usize = 20;

/// Postfix trusting no lab address (`mynetworks` is also what exempts
/// clients from its connection limits).
const UNTRUSTED: &str = "mynetworks = 127.0.0.0/8\n";

fn clients() -> [String; 3] {
    [CLIENT_V4, CLIENT2_V4, CLIENT3_V4].map(|c| c.to_string())
}

/// `hold_many.py`: 20 sessions from each client address, all open at once.
fn hold(f: &Fixture, ehlo: bool) -> serde_json::Value {
    let mut cmd = f.client("hold_many.py");
    cmd.arg(SERVER_V4.to_string()).arg(PER_CLIENT.to_string());
    cmd.args(clients());
    if ehlo {
        cmd.arg("--ehlo");
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "hold_many.py failed: {}", text(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Sessions greeted (and past EHLO) over all clients, and the other replies.
fn totals(held: &serde_json::Value) -> (u64, u64, Vec<String>) {
    let (mut greeted, mut ehlo, mut other) = (0, 0, Vec::new());
    for c in clients() {
        greeted += held[&c]["greeted"].as_u64().unwrap();
        ehlo += held[&c]["ehlo"].as_u64().unwrap();
        for r in held[&c]["other"].as_array().unwrap() {
            other.push(r.as_str().unwrap().to_string());
        }
    }
    (greeted, ehlo, other)
}

/// Waits until Postfix's log has `needle` (its log daemon writes it a
/// moment after the event).
fn wait_for_log(pf: &Postfix, needle: &str) -> bool {
    wait_until(Duration::from_secs(10), || pf.maillog().contains(needle))
}

/// All 60 held sessions greeted and past EHLO, and Postfix's log has
/// `what[CLIENT]` for each client address.
fn all_served_each_client_logged(f: &Fixture, pf: &Postfix, what: &str) {
    let held = hold(f, true);
    let (greeted, ehlo, other) = totals(&held);
    assert_eq!(
        (greeted, ehlo),
        (60, 60),
        "{held}\n{other:?}\n{}",
        pf.maillog()
    );
    for c in clients() {
        assert!(
            wait_for_log(pf, &format!("{what}[{c}]")),
            "Postfix never logged {what}[{c}]:\n{}",
            pf.maillog()
        );
    }
}

fn swaks_message(f: &Fixture) -> std::process::Output {
    f.swaks(
        &SERVER_V4.to_string(),
        &["--ehlo", "client.test", "--header", "X-Marker: upstream"],
    )
}

#[test]
fn transparent_by_default_postfix_counts_each_client_apart() {
    let policy = format!("[[server]]\naddress = \"{SERVER_V4}\"\n");
    let (f, pf) = with_postfix("tdefault", &policy, UNTRUSTED);
    // The return steering went to the interface of the route to the
    // server by itself, and the probe came back.
    assert!(
        f.log().contains("inside: return steering attached"),
        "{}",
        f.log()
    );
    assert!(f.log().contains("upstream: client (auto)"), "{}", f.log());
    let status = f.upstream_status();
    assert_eq!(status["configured"], "auto", "{status}");
    assert_eq!(status["mode"], "client", "{status}");
    let server = &status["servers"][0];
    assert_eq!(server["address"], SERVER_V4.to_string(), "{status}");
    assert_eq!(server["interface"], "inside", "{status}");
    assert_eq!(server["state"], "verified", "{status}");
    assert!(status["warning"].is_null(), "{status}");

    all_served_each_client_logged(&f, &pf, "connect from unknown");
    assert!(
        !pf.maillog().contains(&format!("[{GATEWAY_INSIDE_V4}]")),
        "Postfix saw the gateway:\n{}",
        pf.maillog()
    );
    let out = swaks_message(&f);
    assert!(out.status.success(), "{}", text(&out));
    wait_for(|| pf.delivered().len() == 1, "the delivery");
    let delivered = pf.delivered();
    let received = String::from_utf8_lossy(&delivered[0]);
    assert!(
        received.contains(&format!("(unknown [{CLIENT_V4}])")),
        "{received}"
    );
}

#[test]
fn gateway_mode_is_what_postfix_limits_and_it_is_said() {
    let policy = "[proxy]\nupstream-source = \"gateway\"\n";
    let (f, pf) = with_postfix("tgateway", policy, UNTRUSTED);
    // Said at start, in the status, and by `policy check`.
    assert!(
        f.log()
            .contains("sees the gateway's address for every client"),
        "{}",
        f.log()
    );
    let status = f.upstream_status();
    assert_eq!(status["mode"], "gateway", "{status}");
    assert!(
        status["warning"].as_str().unwrap().contains("SPF"),
        "{status}"
    );
    let check = cli(
        f.pins.path(),
        &[
            "policy",
            "check",
            &f.dir.join("policy.toml").display().to_string(),
        ],
    );
    assert!(check.status.success(), "{}", text(&check));
    assert!(
        String::from_utf8_lossy(&check.stderr).contains("WARN")
            && text(&check).contains("mynetworks"),
        "{}",
        text(&check)
    );

    // All 60 sessions count against the gateway: 10 are refused.
    let held = hold(&f, false);
    let (greeted, _, other) = totals(&held);
    assert_eq!(greeted, 50, "{held}");
    assert_eq!(other.len(), 10, "{held}");
    assert!(other.iter().all(|r| r.starts_with("421")), "{other:?}");
    assert!(
        wait_for_log(&pf, &format!("from unknown[{GATEWAY_INSIDE_V4}]")),
        "{}",
        pf.maillog()
    );
}

#[test]
fn xclient_gives_postfix_each_clients_address() {
    let policy = format!(
        "[[server]]\naddress = \"{SERVER_V4}\"\n\n[proxy]\nupstream-source = \"xclient\"\n"
    );
    let extra = format!("{UNTRUSTED}smtpd_authorized_xclient_hosts = {GATEWAY_INSIDE_V4}\n");
    let (f, pf) = with_postfix("txclient", &policy, &extra);
    let status = f.upstream_status();
    assert_eq!(status["mode"], "xclient", "{status}");
    assert!(
        status["servers"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("offers XCLIENT"),
        "{status}"
    );

    // Past EHLO (the proxy's XCLIENT comes before it), every session is
    // counted per client: all 60 are served.
    all_served_each_client_logged(&f, &pf, "disconnect from unknown");
    // One message: the client's address and HELO name in Received; the
    // client saw one greeting and one EHLO reply.
    let out = swaks_message(&f);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(text(&out).matches("<-  220 ").count(), 1, "{}", text(&out));
    wait_for(|| pf.delivered().len() == 1, "the delivery");
    let delivered = pf.delivered();
    let received = String::from_utf8_lossy(&delivered[0]);
    assert!(
        received.contains(&format!("from client.test (unknown [{CLIENT_V4}])")),
        "{received}"
    );
}

#[test]
fn xclient_not_offered_refuses_the_session_with_421() {
    let policy = format!(
        "[[server]]\naddress = \"{SERVER_V4}\"\n\n[proxy]\nupstream-source = \"xclient\"\n"
    );
    let (f, pf) = with_postfix("txnone", &policy, "");
    assert!(
        f.log().contains("does not offer XCLIENT to the gateway"),
        "{}",
        f.log()
    );
    let out = swaks_message(&f);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("421 4.3.5"), "{}", text(&out));
    assert!(
        f.log().matches("does not offer XCLIENT").count() >= 2,
        "{}",
        f.log()
    );
    assert!(pf.delivered().is_empty());
}

#[test]
fn proxy_protocol_gives_postfix_the_clients_address() {
    let policy = "[proxy]\nupstream-source = \"proxy\"\n";
    let (f, pf) = with_postfix(
        "tproxy",
        policy,
        "smtpd_upstream_proxy_protocol = haproxy\n",
    );
    let out = swaks_message(&f);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        wait_for_log(&pf, &format!("connect from unknown[{CLIENT_V4}]")),
        "{}",
        pf.maillog()
    );
    wait_for(|| pf.delivered().len() == 1, "the delivery");
    let delivered = pf.delivered();
    assert!(
        String::from_utf8_lossy(&delivered[0]).contains(&format!("(unknown [{CLIENT_V4}])")),
        "{}",
        String::from_utf8_lossy(&delivered[0])
    );
}

/// The server's route to the clients does not go through the gateway: its
/// answers to the clients' addresses are lost (here: unreachable).
fn break_the_return_path(f: &Fixture) {
    f.lab
        .server
        .ip(&["route", "add", "unreachable", "198.18.0.0/24"])
        .unwrap();
}

#[test]
fn explicit_client_refuses_to_start_when_the_return_path_fails() {
    let policy =
        format!("[[server]]\naddress = \"{SERVER_V4}\"\n\n[proxy]\nupstream-source = \"client\"\n");
    let mut f = Fixture::bare("tbroken", &policy);
    f.sink = Some(f.start_sink("0.0.0.0:25"));
    break_the_return_path(&f);
    let err = f
        .try_start_daemon_on(&[inspector_lab::OUTSIDE])
        .expect_err("the daemon must refuse to start");
    let err = format!("{err:#}");
    assert!(
        err.contains("upstream-source = \"client\" cannot work")
            && err.contains(&format!(
                "{SERVER_V4}: a probe from 198.18.0.254 got no answer"
            )),
        "{err}"
    );
}

#[test]
fn the_default_falls_back_to_the_gateway_loudly_when_the_return_path_fails() {
    let policy = format!("[[server]]\naddress = \"{SERVER_V4}\"\n");
    let mut f = Fixture::bare("tfallback", &policy);
    f.sink = Some(f.start_sink("0.0.0.0:25"));
    break_the_return_path(&f);
    f.start_daemon();
    assert!(
        f.log().contains("fell back to the gateway's address"),
        "{}",
        f.log()
    );
    let status = f.upstream_status();
    let server = &status["servers"][0];
    assert_eq!(
        (&server["mode"], &server["state"]),
        (&"gateway".into(), &"failed".into()),
        "{status}"
    );
    assert!(
        status["warning"].as_str().unwrap().contains("SPF"),
        "{status}"
    );
    let out = f.swaks(&SERVER_V4.to_string(), &[]);
    assert!(out.status.success(), "{}", text(&out));

    // A server the policy does not list: its first session is the probe,
    // gets no answer, and goes through the gateway's address.
    let out = f.swaks(&MAIL_GATEWAY_V4.to_string(), &[]);
    assert!(out.status.success(), "{}", text(&out));
    let status = f.upstream_status();
    let learned = status["servers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["address"] == MAIL_GATEWAY_V4.to_string())
        .unwrap_or_else(|| panic!("{status}"))
        .clone();
    assert_eq!(learned["mode"], "gateway", "{status}");
    assert_eq!(learned["listed"], false, "{status}");
    let raw = f.stored_raw();
    assert_eq!(raw.len(), 2);
    for r in raw {
        assert!(
            find(
                &r,
                format!("X-Client-Addr: {GATEWAY_INSIDE_V4}\n").as_bytes()
            )
            .is_some(),
            "{}",
            String::from_utf8_lossy(&r)
        );
    }
}
