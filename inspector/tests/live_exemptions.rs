//! The daemon on a real lab (veth pairs in namespaces): classes of real
//! traffic, live exemptions, restart, and clean stop and unload.
//! Needs root; fails, never skips, without it.

mod support;

use std::{
    net::{IpAddr, SocketAddr},
    path::Path,
    time::Duration,
};

use inspector_lab::{CLIENT_V4, CLIENT_V6, INSIDE, MAIL_GATEWAY_V4, OUTSIDE, SERVER_V4, SERVER_V6};
use support::{PinDir, cli, cli_ok, inspector_bin, lab, start_daemon, xdp_attached};

/// Packets counted for `class` so far, read through `inspector stats --json`.
fn packets(pins: &PinDir, class: &str) -> u64 {
    let json: serde_json::Value =
        serde_json::from_str(&cli_ok(pins.path(), &["stats", "--json"])).unwrap();
    json["classes"][class]["packets"]
        .as_u64()
        .unwrap_or_else(|| panic!("no classes.{class}.packets in {json}"))
}

/// One TCP connection attempt to port 25 (the lab's server has no
/// listener, so it is refused at once: exactly one SYN crosses the gateway).
fn smtp_attempt(from: &inspector_lab::Netns, src: IpAddr, dst: IpAddr) {
    let result = from
        .tcp_connect(src, SocketAddr::new(dst, 25), Duration::from_secs(3))
        .unwrap();
    let err = result.expect_err("nothing listens on port 25 in the lab");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
}

/// Runs `f` and returns how many packets `inspect` and `exempt` gained.
fn delta(pins: &PinDir, f: impl FnOnce()) -> (u64, u64) {
    let (i, e) = (packets(pins, "inspect"), packets(pins, "exempt"));
    f();
    (packets(pins, "inspect") - i, packets(pins, "exempt") - e)
}

#[test]
fn exempt_hosts_are_exempt_both_ways_and_other_smtp_is_inspected() {
    let lab = lab("classes");
    let pins = PinDir::new("classes");
    let policy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies/esa-exempt.toml");
    let _daemon = start_daemon(&lab, &pins, &[OUTSIDE, INSIDE], Some(&policy));

    let client = CLIENT_V4.into();
    let listed = cli_ok(pins.path(), &["exempt", "list"]);
    assert!(
        listed.contains("198.18.1.26/32") && listed.contains("policy"),
        "{listed}"
    );

    let to_server = delta(&pins, || {
        smtp_attempt(&lab.client, client, SERVER_V4.into())
    });
    // The RST back is from port 25, not to it: `pass`.
    assert_eq!(to_server, (1, 0), "client -> mail server: inspected");
    // With both interfaces watched, the refusing RST is seen too: to an
    // exempt host, the SYN matches by destination and the RST by source.
    let to_gateway = delta(&pins, || {
        smtp_attempt(&lab.client, client, MAIL_GATEWAY_V4.into())
    });
    assert_eq!(
        to_gateway,
        (0, 2),
        "client -> mail gateway: SYN and RST exempt"
    );
    let from_gateway = delta(&pins, || {
        smtp_attempt(&lab.server, MAIL_GATEWAY_V4.into(), client)
    });
    assert_eq!(
        from_gateway,
        (0, 2),
        "mail gateway -> client: SYN and RST exempt"
    );
    let from_server = delta(&pins, || {
        smtp_attempt(&lab.server, SERVER_V4.into(), client)
    });
    assert_eq!(from_server, (1, 0), "mail server -> client: inspected");
    let v6 = delta(&pins, || {
        smtp_attempt(&lab.client, CLIENT_V6.into(), SERVER_V6.into())
    });
    assert_eq!(v6, (1, 0), "IPv6 client -> mail server: inspected");
}

#[test]
fn live_exemptions_apply_at_once_and_survive_a_restart() {
    let lab = lab("live");
    let prefix = lab.client.name.trim_end_matches("-client").to_string();
    let pins = PinDir::new("live");
    let (client, server): (IpAddr, IpAddr) = (CLIENT_V4.into(), SERVER_V4.into());
    let daemon = start_daemon(&lab, &pins, &[OUTSIDE], None);

    assert_eq!(
        delta(&pins, || smtp_attempt(&lab.client, client, server)),
        (1, 0)
    );
    assert!(
        cli_ok(pins.path(), &["exempt", "add", "198.18.1.25"]).contains("exempted 198.18.1.25/32")
    );
    assert_eq!(
        delta(&pins, || smtp_attempt(&lab.client, client, server)),
        (0, 1),
        "the next packets are exempt without a restart"
    );
    let listed: serde_json::Value =
        serde_json::from_str(&cli_ok(pins.path(), &["exempt", "list", "--json"])).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(listed[0]["network"], "198.18.1.25/32");
    assert_eq!(listed[0]["origin"], "live");
    assert_eq!(listed[0]["hits"], 1, "the SYN it exempted: {listed}");

    // Stop: the program is detached, the maps stay.
    let exempt_before = packets(&pins, "exempt");
    assert!(
        daemon.terminate().unwrap().success(),
        "the daemon exits cleanly on SIGTERM"
    );
    assert!(
        !xdp_attached(&lab, OUTSIDE),
        "no program left attached after stop"
    );

    // Restart: the live exemption and the counters are still there.
    let daemon = start_daemon(&lab, &pins, &[OUTSIDE], None);
    assert_eq!(
        packets(&pins, "exempt"),
        exempt_before,
        "counters survive a restart"
    );
    assert!(cli_ok(pins.path(), &["exempt", "list"]).contains("198.18.1.25/32"));
    assert_eq!(
        delta(&pins, || smtp_attempt(&lab.client, client, server)),
        (0, 1)
    );

    assert!(cli_ok(pins.path(), &["exempt", "del", "198.18.1.25/32"]).contains("removed"));
    assert_eq!(
        delta(&pins, || smtp_attempt(&lab.client, client, server)),
        (1, 0),
        "exempt del reverts at once"
    );

    assert!(daemon.terminate().unwrap().success());
    assert!(!xdp_attached(&lab, OUTSIDE));
    let unloaded = cli_ok(pins.path(), &["unload"]);
    let every_map = format!(
        "removed {} pinned map(s)",
        inspector_common::maps::ALL.len()
    );
    assert!(unloaded.contains(&every_map), "{unloaded}");
    assert!(!pins.path().exists(), "unload removes the pin directory");
    drop(lab);
    let left: Vec<String> = inspector_lab::list_namespaces()
        .into_iter()
        .filter(|n| n.starts_with(&prefix))
        .collect();
    assert!(left.is_empty(), "namespaces left behind: {left:?}");
}

#[test]
fn a_second_daemon_and_unload_while_running_are_refused() {
    let lab = lab("twice");
    let pins = PinDir::new("twice");
    let _daemon = start_daemon(&lab, &pins, &[OUTSIDE], None);

    let second = lab
        .gateway
        .command(inspector_bin())
        .arg("--pin-dir")
        .arg(pins.path())
        .args(["run", "--iface", OUTSIDE])
        .output()
        .unwrap();
    assert!(!second.status.success());
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(
        stderr.contains("outside is already inspected by another `inspector run`"),
        "{stderr}"
    );

    let unload = cli(pins.path(), &["unload"]);
    assert!(!unload.status.success());
    let stderr = String::from_utf8_lossy(&unload.stderr);
    assert!(stderr.contains("stop it first"), "{stderr}");
    assert!(xdp_attached(&lab, OUTSIDE), "the first daemon is untouched");
}

#[test]
fn bad_input_gets_a_clear_error() {
    let pins = PinDir::new("badinput");
    let out = cli(pins.path(), &["exempt", "add", "198.18.1.300"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("`198.18.1.300` is not a network"));

    let out = cli(pins.path(), &["exempt", "list"]);
    assert!(!out.status.success(), "no daemon has run with this pin dir");
    assert!(String::from_utf8_lossy(&out.stderr).contains("no pinned map"));

    let dir = std::env::temp_dir().join(format!("inspector-policy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("bad.toml");
    std::fs::write(
        &file,
        "[[exempt]]\nnetwork = \"198.18.1.26/32\"\n\n[esmtp]\nmode = \"fast\"\n",
    )
    .unwrap();
    let out = cli(pins.path(), &["policy", "check", file.to_str().unwrap()]);
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("{}:5:8: esmtp.mode:", file.display())),
        "{stderr}"
    );
}
