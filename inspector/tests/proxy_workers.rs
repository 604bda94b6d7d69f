//! The proxy's workers and what it checks once per session or at start:
//! sessions spread over the workers' listeners, the gateway's own
//! addresses (kept current from rtnetlink) refused, and a `max-sessions`
//! that cannot fit in the descriptor limit refused at start. Needs root;
//! fails, never skips, without it.

mod support;

use std::{
    io::Read,
    net::{IpAddr, SocketAddr, TcpStream},
    time::Duration,
};

use inspector_lab::{GATEWAY_OUTSIDE_V4, Netns, OUTSIDE, SERVER_V4};
use support::{proxy::*, wait_until};

/// The first bytes a server sends on a new connection to `ip:25` from `ns`.
fn greeting(ns: &Netns, ip: IpAddr) -> String {
    ns.run(move || {
        let mut s = TcpStream::connect_timeout(&SocketAddr::new(ip, 25), Duration::from_secs(5))
            .expect("connecting");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut buf = [0u8; 256];
        let n = s.read(&mut buf).unwrap_or(0);
        String::from_utf8_lossy(&buf[..n]).into_owned()
    })
    .unwrap()
}

#[test]
fn sessions_spread_over_the_workers() {
    let f = Fixture::new("workers", "[proxy]\nworkers = 2\n");
    assert!(f.log().contains("(2 worker(s),"), "{}", f.log());
    for _ in 0..20 {
        assert!(greeting(&f.lab.client, SERVER_V4.into()).starts_with("220 "));
    }
    // The kernel picks a listener by a hash of each connection's 4-tuple:
    // 20 source ports all on one of two workers would be a broken group.
    let log = f.log();
    for worker in ["(worker 0)", "(worker 1)"] {
        assert!(log.contains(worker), "no session on {worker}:\n{log}");
    }
}

#[test]
fn the_gateways_own_addresses_are_refused_also_one_added_while_it_runs() {
    let f = Fixture::new("own", "");
    let refused = |ip: IpAddr| greeting(&f.lab.client, ip).starts_with("421 4.3.0");
    assert!(refused(GATEWAY_OUTSIDE_V4.into()));
    assert!(greeting(&f.lab.client, SERVER_V4.into()).starts_with("220 "));
    // An address the gateway gets after the start: the set follows
    // rtnetlink's events, not a dump at start.
    let added: IpAddr = "198.18.0.9".parse().unwrap();
    f.lab
        .gateway
        .ip(&["addr", "add", "198.18.0.9/32", "dev", OUTSIDE])
        .unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || refused(added)),
        "a session to the added address was not refused: {}",
        greeting(&f.lab.client, added)
    );
}

#[test]
fn a_max_sessions_over_the_descriptor_limit_is_refused_at_start() {
    let mut f = Fixture::bare("nofile", "[proxy]\nmax-sessions = 600000\n");
    let err = f
        .try_start_daemon_on(&[OUTSIDE])
        .expect_err("the daemon started with 600000 sessions' worth of descriptors");
    let text = format!("{err:#}");
    assert!(
        text.contains("proxy.max-sessions = 600000 needs 1201024 file descriptors"),
        "{text}"
    );
}
