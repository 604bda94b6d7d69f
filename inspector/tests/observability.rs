//! The daemon's Prometheus endpoint and the ESMTP part of `inspector stats`,
//! on a real lab: the endpoint is scraped with curl inside the gateway's
//! namespace while real TCP connections cross it. Needs root; fails, never
//! skips, without it.

mod support;

use std::{
    collections::BTreeMap,
    io::ErrorKind,
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use inspector_common::ParseDrop;
use inspector_lab::{CLIENT_V4, INSIDE, Lab, OUTSIDE, SERVER_V4};
use support::{PinDir, PolicyFile, cli_ok, lab, start_daemon_with, stats_json, wait_until};

const METRICS: &str = "127.0.0.1:9725";

/// `curl` in the gateway's namespace: (HTTP status, body).
fn curl(lab: &Lab, path: &str) -> (u16, String) {
    let out = lab
        .gateway
        .command("curl")
        .args(["-sS", "--max-time", "5", "-w", "\n%{http_code}"])
        .arg(format!("http://{METRICS}{path}"))
        .output()
        .expect("running curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// One scrape: `name{labels}` -> value.
fn scrape(lab: &Lab) -> BTreeMap<String, f64> {
    let (status, body) = curl(lab, "/metrics");
    assert_eq!(status, 200, "GET /metrics: {body}");
    assert!(
        body.ends_with("# EOF\n"),
        "OpenMetrics text ends with # EOF"
    );
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (key, value) = l.rsplit_once(' ').expect("`sample value`");
            (key.to_string(), value.parse().expect("a number"))
        })
        .collect()
}

fn get(m: &BTreeMap<String, f64>, key: &str) -> f64 {
    *m.get(key)
        .unwrap_or_else(|| panic!("{key} not scraped; got {:#?}", m.keys()))
}

/// The kernel families of one scrape equal what `inspector stats --json`
/// reads from the maps, taken between two identical scrapes (so no packet
/// crossed in between).
fn assert_scrape_matches_cli(lab: &Lab, pins: &PinDir) {
    let kernel = |m: &BTreeMap<String, f64>| -> Vec<(String, f64)> {
        m.iter()
            .filter(|(k, _)| !k.starts_with("inspector_esmtp") && !k.starts_with("inspector_audit"))
            .map(|(k, v)| (k.clone(), *v))
            .collect()
    };
    for _ in 0..20 {
        let first = scrape(lab);
        let json = stats_json(pins.path());
        if kernel(&first) != kernel(&scrape(lab)) {
            continue; // traffic in between: try again
        }
        for class in ["pass", "inspect", "exempt", "malformed"] {
            for (family, field) in [("packets", "packets"), ("bytes", "bytes")] {
                assert_eq!(
                    get(
                        &first,
                        &format!(r#"inspector_{family}_total{{class="{class}"}}"#)
                    ),
                    json["classes"][class][field].as_f64().unwrap(),
                    "{family} of {class}: scrape vs stats --json {json}"
                );
            }
        }
        for (reason, n) in json["limits"]["drops"].as_object().unwrap() {
            assert_eq!(
                get(
                    &first,
                    &format!(r#"inspector_limit_drops_total{{reason="{reason}"}}"#)
                ),
                n.as_f64().unwrap()
            );
        }
        let parse_drops = json["parse_drops"].as_object().unwrap();
        assert_eq!(parse_drops.len(), ParseDrop::COUNT as usize, "{json}");
        for (reason, n) in parse_drops {
            assert_eq!(
                get(
                    &first,
                    &format!(r#"inspector_parse_drops_total{{reason="{reason}"}}"#)
                ),
                n.as_f64().unwrap()
            );
        }
        for (event, n) in json["limits"]["intercept"].as_object().unwrap() {
            assert_eq!(
                get(
                    &first,
                    &format!(r#"inspector_intercept_events_total{{event="{event}"}}"#)
                ),
                n.as_f64().unwrap()
            );
        }
        for server in json["limits"]["servers"].as_array().unwrap() {
            for state in ["embryonic", "established"] {
                assert_eq!(
                    get(
                        &first,
                        &format!(
                            r#"inspector_server_connections{{server="{}",state="{state}"}}"#,
                            server["address"].as_str().unwrap()
                        )
                    ),
                    server[state].as_f64().unwrap()
                );
            }
        }
        return;
    }
    panic!("no two identical scrapes in 20 tries");
}

#[test]
fn metrics_move_with_real_traffic() {
    let lab = lab("obsmetrics");
    let pins = PinDir::new("obsmetrics");
    let policy = PolicyFile::new(
        "obsmetrics",
        &format!(
            "[[server]]\naddress = \"{SERVER_V4}\"\nmax-conns = 1\n\n\
             [esmtp]\n[[esmtp.match]]\nmatch = \"cmd verb VRFY\"\naction = \"drop-connection log\"\n"
        ),
    );
    let _daemon = start_daemon_with(
        &lab,
        &pins,
        &[OUTSIDE, INSIDE],
        Some(policy.path()),
        &["--metrics", METRICS, "--audit", "off"],
    );
    assert!(
        wait_until(Duration::from_secs(5), || curl(&lab, "/metrics").0 == 200),
        "the endpoint answers"
    );
    let before = scrape(&lab);
    let inspect_packets = r#"inspector_packets_total{class="inspect"}"#;
    let inspect_bytes = r#"inspector_bytes_total{class="inspect"}"#;
    let established =
        format!(r#"inspector_server_connections{{server="{SERVER_V4}",state="established"}}"#);
    let max_conns_drops = r#"inspector_limit_drops_total{reason="max-conns"}"#;
    assert_eq!(get(&before, &established), 0.0);

    // A real connection to TCP/25 across the gateway: inspected packets,
    // one established connection to the protected server.
    let server_addr = SocketAddr::new(SERVER_V4.into(), 25);
    let _listener = lab
        .server
        .tcp_listen(server_addr, 16)
        .unwrap()
        .expect("listening in the server namespace");
    let held = lab
        .client
        .tcp_connect(CLIENT_V4.into(), server_addr, Duration::from_secs(2))
        .unwrap()
        .expect("the first connection is within max-conns");
    assert!(
        wait_until(Duration::from_secs(3), || get(&scrape(&lab), &established)
            == 1.0),
        "one established connection scraped"
    );
    // The second is over max-conns: its SYNs are dropped and counted.
    let err = lab
        .client
        .tcp_connect(IpAddr::from(CLIENT_V4), server_addr, Duration::from_secs(2))
        .unwrap()
        .expect_err("the second connection is over max-conns");
    assert_eq!(err.kind(), ErrorKind::TimedOut, "{err}");

    let after = scrape(&lab);
    assert!(
        get(&after, inspect_packets) >= get(&before, inspect_packets) + 3.0,
        "SYN, ACK and the dropped SYNs counted as inspect: {} -> {}",
        get(&before, inspect_packets),
        get(&after, inspect_packets)
    );
    assert!(get(&after, inspect_bytes) >= get(&before, inspect_bytes) + 3.0 * 54.0);
    assert!(get(&after, max_conns_drops) > get(&before, max_conns_drops));
    // The ESMTP families: the policy's criteria, with their actions.
    assert_eq!(
        get(
            &after,
            r#"inspector_esmtp_matches_total{class="1",kind="cmd verb"}"#
        ),
        0.0
    );
    assert_eq!(
        get(
            &after,
            r#"inspector_esmtp_criterion_info{class="1",kind="cmd verb",criterion="match cmd verb VRFY",action="drop-connection log"}"#
        ),
        1.0
    );
    // The held connection is steered to the proxy: one session open.
    assert_eq!(get(&after, "inspector_esmtp_sessions_active"), 1.0);
    assert_eq!(get(&after, "inspector_audit_dropped_total"), 0.0);
    for event in ["syn-cookies-sent", "clients-verified", "servers-opened"] {
        get(
            &after,
            &format!(r#"inspector_intercept_events_total{{event="{event}"}}"#),
        );
    }
    assert_eq!(curl(&lab, "/nothing").0, 404);
    assert_scrape_matches_cli(&lab, &pins);

    // `inspector stats` reads the daemon's ESMTP counters over its socket.
    let text = cli_ok(pins.path(), &["stats"]);
    assert!(text.contains("ESMTP (daemon pid "), "{text}");
    assert!(
        text.contains("Inspect: esmtp _default_esmtp_map, packet 0, drop 0, reset-drop 0"),
        "{text}"
    );
    assert!(
        text.lines().any(|l| l.starts_with("  match cmd verb VRFY")
            && l.ends_with("drop-connection log, packet 0")),
        "{text}"
    );
    let json = stats_json(pins.path());
    let esmtp = &json["esmtp"][0];
    assert_eq!(esmtp["drop"], 0, "{json}");
    let vrfy = esmtp["criteria"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["criterion"] == "match cmd verb VRFY")
        .unwrap_or_else(|| panic!("{json}"));
    assert_eq!(vrfy["action"], "drop-connection log");
    assert_eq!(json["limits"]["servers"][0]["established"], 1);
    assert_eq!(esmtp["sessions-active"], 1, "{json}");
    drop(held);
    // Its end is counted by outcome.
    assert!(
        wait_until(Duration::from_secs(5), || {
            let m = scrape(&lab);
            get(&m, "inspector_esmtp_sessions_active") == 0.0
                && get(&m, r#"inspector_esmtp_sessions_total{outcome="closed"}"#) == 1.0
        }),
        "the session ended and was counted"
    );
    // Its duration and its connect to the server are in the histograms;
    // it ended without an error.
    let m = scrape(&lab);
    assert_eq!(get(&m, "inspector_session_duration_seconds_count"), 1.0);
    assert_eq!(get(&m, "inspector_upstream_connect_seconds_count"), 1.0);
    assert!(
        get(
            &m,
            r#"inspector_upstream_connect_seconds_bucket{le="+Inf"}"#
        ) == 1.0
    );
    for reason in ["server-unreachable", "timeout", "reset"] {
        assert_eq!(
            get(
                &m,
                &format!(r#"inspector_esmtp_session_errors_total{{reason="{reason}"}}"#)
            ),
            0.0
        );
    }
}

#[test]
fn metrics_off_binds_nothing() {
    let lab = lab("obsoff");
    let pins = PinDir::new("obsoff");
    let _daemon = start_daemon_with(
        &lab,
        &pins,
        &[OUTSIDE],
        None,
        &["--metrics", "off", "--audit", "off"],
    );
    // The daemon is attached; give the (absent) endpoint time anyway.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(curl(&lab, "/metrics").0, 0, "nothing listens");
    // The stats socket works without the endpoint.
    let json = stats_json(pins.path());
    assert_eq!(json["esmtp"].as_array().map(Vec::len), Some(1), "{json}");
}

/// The policy's `[audit]` section chooses the sink, `--audit` overrides it:
/// a syslog socket that does not exist fails the start and is named.
#[test]
fn audit_sink_comes_from_the_policy_unless_overridden() {
    let lab = lab("obsaudit");
    let pins = PinDir::new("obsaudit");
    let socket =
        std::env::temp_dir().join(format!("inspector-test-{}-absent.sock", std::process::id()));
    let policy = PolicyFile::new(
        "obsaudit",
        &format!("[audit]\nsink = \"syslog:{}\"\n", socket.display()),
    );
    let run = |extra: &[&str]| {
        lab.gateway
            .command(support::inspector_bin())
            .arg("--pin-dir")
            .arg(pins.path())
            .args(["run", "--iface", OUTSIDE, "--metrics", "off", "--policy"])
            .arg(policy.path())
            .args(extra)
            .output()
            .unwrap()
    };
    let out = run(&[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "started without its syslog socket");
    assert!(
        stderr.contains(&format!("connecting to syslog at {}", socket.display())),
        "{stderr}"
    );
    // `--audit off` overrides the policy: the daemon starts and attaches.
    let mut daemon = lab
        .gateway
        .spawn(
            lab.gateway
                .command(support::inspector_bin())
                .arg("--pin-dir")
                .arg(pins.path())
                .args([
                    "run",
                    "--iface",
                    OUTSIDE,
                    "--metrics",
                    "off",
                    "--audit",
                    "off",
                    "--policy",
                ])
                .arg(policy.path()),
        )
        .unwrap();
    assert!(
        wait_until(Duration::from_secs(20), || support::xdp_attached(
            &lab, OUTSIDE
        )),
        "the daemon attached with --audit off: {:?}",
        daemon.child().try_wait()
    );
    // Stopped while its proxy may still be starting: a clean stop all the
    // same, with nothing left under /run/inspector.
    let pid = daemon.child().id();
    assert!(daemon.terminate().unwrap().success());
    let left: Vec<_> = std::fs::read_dir(inspector::RUN_DIR)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            e.file_name().to_string_lossy() == format!("{pid}.stats")
                || std::fs::read_to_string(e.path())
                    .is_ok_and(|t| t.lines().next() == Some(&pid.to_string()))
        })
        .map(|e| e.path())
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// The metric names an expression text uses (`inspector_…`; Prometheus's
/// own `up` is not the daemon's).
fn metric_names(text: &str) -> std::collections::BTreeSet<String> {
    let mut names = std::collections::BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find("inspector_") {
        let start = i + at;
        let boundary =
            start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        if boundary {
            names.insert(text[start..end].to_string());
        }
        i = end;
    }
    names
}

/// The shipped alert rules load in Prometheus (`promtool check rules`),
/// and every metric they and the Grafana dashboard use is exported by a
/// running daemon.
#[test]
fn dashboard_and_alerts_use_exported_metrics() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let rules = root.join("deploy/prometheus/alerts.yml");
    let out = std::process::Command::new("promtool")
        .args(["check", "rules"])
        .arg(&rules)
        .output()
        .expect("running promtool (Debian's prometheus package; `cargo xtask setup` installs it)");
    assert!(
        out.status.success(),
        "promtool check rules: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let dashboard_text =
        std::fs::read_to_string(root.join("deploy/grafana/inspector.json")).unwrap();
    let dashboard: serde_json::Value =
        serde_json::from_str(&dashboard_text).expect("the dashboard is JSON");
    let mut exprs = String::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            exprs += target["expr"].as_str().unwrap();
            exprs.push('\n');
        }
    }
    for var in dashboard["templating"]["list"].as_array().unwrap() {
        if let Some(q) = var["query"].as_str() {
            exprs += q;
            exprs.push('\n');
        }
    }
    let mut used = metric_names(&exprs);
    used.extend(metric_names(&std::fs::read_to_string(&rules).unwrap()));
    // The cluster's rules, without their own names (`cluster:…:sum`).
    let cluster_rules = std::fs::read_to_string(root.join("deploy/prometheus/cluster-rules.yml"));
    let words: Vec<String> = cluster_rules
        .unwrap()
        .split_whitespace()
        .filter(|w| !w.contains(':'))
        .map(String::from)
        .collect();
    used.extend(metric_names(&words.join(" ")));
    assert!(used.len() >= 15, "{used:?}");

    let lab = lab("obsdash");
    let pins = PinDir::new("obsdash");
    let policy = PolicyFile::new(
        "obsdash",
        &format!("[[server]]\naddress = \"{SERVER_V4}\"\nmax-conns = 10\n"),
    );
    let dir = std::env::temp_dir().join(format!("inspector-obsdash-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("daemon.log");
    let _daemon = inspector_lab::inspector::start_proxy(
        &lab.gateway,
        std::path::Path::new(support::inspector_bin()),
        pins.path(),
        &[
            "--iface",
            OUTSIDE,
            "--metrics",
            METRICS,
            "--audit",
            "off",
            "--policy",
            policy.path().to_str().unwrap(),
        ],
        &log,
    )
    .unwrap_or_else(|e| panic!("{e:#}"));
    assert!(
        wait_until(Duration::from_secs(5), || curl(&lab, "/metrics").0 == 200),
        "the endpoint answers"
    );
    let scraped = scrape(&lab);
    let exported: std::collections::BTreeSet<String> = scraped
        .keys()
        .map(|k| k.split('{').next().unwrap().to_string())
        .collect();
    let missing: Vec<&String> = used.iter().filter(|n| !exported.contains(*n)).collect();
    assert!(
        missing.is_empty(),
        "used but not exported: {missing:?}; exported: {exported:?}"
    );
    assert_eq!(get(&scraped, "inspector_ready"), 1.0);
    assert_eq!(get(&scraped, "inspector_proxy_max_sessions"), 1024.0);
    assert!(get(&scraped, "inspector_open_fds") > 3.0);
    assert!(get(&scraped, "inspector_max_fds") >= get(&scraped, "inspector_open_fds"));
    assert_eq!(
        get(
            &scraped,
            &format!(
                r#"inspector_build_info{{version="{}"}}"#,
                env!("CARGO_PKG_VERSION")
            )
        ),
        1.0
    );
    assert_eq!(get(&scraped, "inspector_audit_write_failures_total"), 0.0);
    let _ = std::fs::remove_dir_all(&dir);
}
