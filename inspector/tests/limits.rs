//! Connection and embryonic limits enforced by the XDP program, on a real
//! lab (veth pairs in namespaces) with real TCP clients, a real listening
//! server and spoofed SYN floods. Needs root; fails, never skips, without it.

mod support;

use std::{
    io::ErrorKind,
    net::{IpAddr, SocketAddr, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::Duration,
};

use inspector::kernel::{bpffs, flow_marks::FlowMarks};
use inspector_common::{FlowEntry, FlowKey, maps};
use inspector_lab::{
    CLIENT_V4, CLIENT_V6, CLIENT2_V4, INSIDE, Lab, Netns, OUTSIDE, SERVER_V4, SERVER_V6,
    frame_flood::FrameFlood, syn::SynFlood,
};
use support::flood::{
    Through, route_spoofed_sources_to_client, start_smtp_sink, swaks_during_flood, syn_recv,
};
use support::{PinDir, PolicyFile, lab, start_daemon, start_daemon_with, stats_json, wait_until};

const PORT: u16 = 25;
/// Longer than the SYN retransmissions a dropped connect would need.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// A server in the server namespace that accepts and holds connections
/// (closing them when the client does), until dropped.
struct Server {
    stop: Arc<AtomicBool>,
    addr: SocketAddr,
}

impl Server {
    fn start(ns: &Netns, ip: IpAddr, backlog: i32) -> Self {
        let addr = SocketAddr::new(ip, PORT);
        let listener = ns
            .tcp_listen(addr, backlog)
            .unwrap()
            .expect("listening in the server namespace");
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        thread::spawn(move || {
            let mut held: Vec<TcpStream> = Vec::new();
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((s, _)) => {
                        s.set_nonblocking(true).unwrap();
                        held.push(s);
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        thread::sleep(Duration::from_millis(2))
                    }
                    Err(e) => panic!("accept: {e}"),
                }
                // Close what the client closed, so FINs flow both ways.
                held.retain(|s| {
                    let mut b = [0u8; 64];
                    !matches!(std::io::Read::read(&mut &*s, &mut b), Ok(0))
                });
            }
        });
        Self { stop, addr }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn connect(lab: &Lab, src: IpAddr, server: &Server) -> std::io::Result<TcpStream> {
    lab.client
        .tcp_connect(src, server.addr, CONNECT_TIMEOUT)
        .unwrap()
}

fn server_counts(pins: &PinDir, server: IpAddr) -> (u64, u64) {
    let json = stats_json(pins.path());
    let servers = json["limits"]["servers"]
        .as_array()
        .expect("limits.servers");
    let s = servers
        .iter()
        .find(|s| s["address"] == server.to_string())
        .unwrap_or_else(|| panic!("{server} not in {json}"));
    (
        s["embryonic"].as_u64().unwrap(),
        s["established"].as_u64().unwrap(),
    )
}

fn drops(pins: &PinDir, reason: &str) -> u64 {
    let json = stats_json(pins.path());
    json["limits"]["drops"][reason]
        .as_u64()
        .unwrap_or_else(|| panic!("no limits.drops.{reason} in {json}"))
}

/// With `max-conns = 3`: three connections succeed, the fourth's SYNs are
/// dropped (counted), and once one closes a new one succeeds. IPv4 and IPv6.
#[test]
fn max_conns_holds_and_frees_a_slot_on_close() {
    let lab = lab("maxconns");
    let pins = PinDir::new("maxconns");
    let policy = PolicyFile::new(
        "maxconns",
        &format!(
            "[[server]]\naddress = \"{SERVER_V4}\"\nmax-conns = 3\n\n\
             [[server]]\naddress = \"{SERVER_V6}\"\nmax-conns = 3\n"
        ),
    );
    let _daemon = start_daemon(&lab, &pins, &[OUTSIDE, INSIDE], Some(policy.path()));

    for (client, server_ip) in [
        (IpAddr::from(CLIENT_V4), IpAddr::from(SERVER_V4)),
        (CLIENT_V6.into(), SERVER_V6.into()),
    ] {
        let server = Server::start(&lab.server, server_ip, 128);
        let dropped_before = drops(&pins, "max-conns");
        let mut open: Vec<TcpStream> = (0..3)
            .map(|i| {
                connect(&lab, client, &server)
                    .unwrap_or_else(|e| panic!("{server_ip}: connection {i} within the limit: {e}"))
            })
            .collect();
        assert!(
            wait_until(Duration::from_secs(2), || server_counts(&pins, server_ip)
                == (0, 3)),
            "{server_ip}: 3 established, got {:?}",
            server_counts(&pins, server_ip)
        );
        let err = connect(&lab, client, &server).expect_err("the 4th is over max-conns");
        assert_eq!(err.kind(), ErrorKind::TimedOut, "{server_ip}: {err}");
        assert!(drops(&pins, "max-conns") > dropped_before, "counted");

        drop(open.pop());
        assert!(
            wait_until(Duration::from_secs(3), || server_counts(&pins, server_ip).1
                == 2),
            "{server_ip}: released on close"
        );
        open.push(connect(&lab, client, &server).expect("a slot is free again"));
        drop(open);
        assert!(
            wait_until(Duration::from_secs(3), || server_counts(&pins, server_ip)
                == (0, 0)),
            "{server_ip}: back to zero, got {:?}",
            server_counts(&pins, server_ip)
        );
    }
}

/// `per-client-max = 2` stops a third connection from one client while
/// another client still connects; the per-client view shows both.
#[test]
fn per_client_limit_holds_for_one_client_only() {
    let lab = lab("perclient");
    let pins = PinDir::new("perclient");
    let policy = PolicyFile::new(
        "perclient",
        &format!("[[server]]\naddress = \"{SERVER_V4}\"\nper-client-max = 2\nmax-conns = 10\n"),
    );
    let _daemon = start_daemon(&lab, &pins, &[OUTSIDE, INSIDE], Some(policy.path()));
    let server = Server::start(&lab.server, SERVER_V4.into(), 128);

    let a: Vec<TcpStream> = (0..2)
        .map(|_| connect(&lab, CLIENT_V4.into(), &server).expect("within per-client-max"))
        .collect();
    let err = connect(&lab, CLIENT_V4.into(), &server).expect_err("over per-client-max");
    assert_eq!(err.kind(), ErrorKind::TimedOut, "{err}");
    assert!(drops(&pins, "per-client-max") >= 1);
    let b = connect(&lab, CLIENT2_V4.into(), &server).expect("another client still connects");

    let json = stats_json(pins.path());
    let clients = json["limits"]["clients"].as_array().unwrap();
    let established = |c: &str| {
        clients
            .iter()
            .find(|v| v["client"] == c)
            .and_then(|v| v["established"].as_u64())
    };
    assert_eq!(established(&CLIENT_V4.to_string()), Some(2), "{json}");
    assert_eq!(established(&CLIENT2_V4.to_string()), Some(1), "{json}");
    drop((a, b));
}

/// A spoofed SYN flood over `max-embryonic = 20` with `drop`: the server's
/// own SYN backlog never holds more than the limit, the excess is counted,
/// and the half-open entries expire after the embryonic timeout.
#[test]
fn syn_flood_is_held_to_max_embryonic_and_expires() {
    let lab = lab("flood");
    let pins = PinDir::new("flood");
    let policy = PolicyFile::new(
        "flood",
        &format!(
            "[[server]]\naddress = \"{SERVER_V4}\"\nmax-embryonic = 20\non-embryonic-limit = \"drop\"\n\n\
             [timeouts]\nembryonic = 2\n"
        ),
    );
    let _daemon = start_daemon(&lab, &pins, &[OUTSIDE, INSIDE], Some(policy.path()));
    route_spoofed_sources_to_client(&lab);
    // A backlog far above the limit, and no SYN cookies, so the server's
    // SYN queue shows exactly what got through.
    lab.server.sysctl("net.ipv4.tcp_syncookies", "0").unwrap();
    lab.server
        .sysctl("net.ipv4.tcp_max_syn_backlog", "4096")
        .unwrap();
    let server = Server::start(&lab.server, SERVER_V4.into(), 4096);

    let mut flood = SynFlood::new(&lab.client, server.addr).unwrap();
    let mut most = 0;
    for _ in 0..20 {
        flood.send(100).unwrap();
        most = most.max(syn_recv(&lab.server));
    }
    thread::sleep(Duration::from_millis(200));
    most = most.max(syn_recv(&lab.server));
    assert!(most > 0, "the flood reached the server at all");
    assert!(most <= 20, "server saw {most} half-open connections");
    assert!(
        drops(&pins, "max-embryonic") >= 2000 - 20,
        "excess SYNs counted: {}",
        drops(&pins, "max-embryonic")
    );
    assert_eq!(server_counts(&pins, SERVER_V4.into()).0, 20);

    // Embryonic timeout 2 s, then one sweep.
    assert!(
        wait_until(Duration::from_secs(5), || server_counts(
            &pins,
            SERVER_V4.into()
        ) == (0, 0)),
        "embryonic entries expired: {:?}",
        server_counts(&pins, SERVER_V4.into())
    );
    // The sweeper took the marks of the flows it expired away.
    assert_eq!(FlowMarks::open(pins.path()).unwrap().total(), 0);
}

/// Marks whose flows left the table without the kernel's knowing (what an
/// LRU eviction does; here removed from userspace behind its back) are
/// cleared by the sweeper within a few passes, and only those: the flows
/// still tracked keep theirs, and one whose mark was lost gets it back.
#[test]
fn marks_of_flows_evicted_from_the_table_are_cleared_by_the_sweeper() {
    let lab = lab("marks");
    let pins = PinDir::new("marks");
    let policy = PolicyFile::new(
        "marks",
        &format!(
            "[[server]]\naddress = \"{SERVER_V4}\"\nmax-embryonic = 20\non-embryonic-limit = \"drop\"\n"
        ),
    );
    let _daemon = start_daemon(&lab, &pins, &[OUTSIDE, INSIDE], Some(policy.path()));
    route_spoofed_sources_to_client(&lab);
    let server = Server::start(&lab.server, SERVER_V4.into(), 4096);
    SynFlood::new(&lab.client, server.addr)
        .unwrap()
        .send(200)
        .unwrap();
    let marks = FlowMarks::open(pins.path()).unwrap();
    let mut flows: aya::maps::HashMap<_, FlowKey, FlowEntry> =
        bpffs::open_map(pins.path(), maps::FLOWS)
            .unwrap()
            .try_into()
            .unwrap();
    assert!(
        wait_until(Duration::from_secs(3), || flows.keys().count() == 20),
        "20 half-open flows tracked: {}",
        flows.keys().count()
    );
    assert_eq!(marks.total(), 20, "each tracked flow is marked");
    let evicted: Vec<FlowKey> = flows.keys().flatten().take(5).collect();
    for key in &evicted {
        flows.remove(key).unwrap();
    }
    assert_eq!(marks.total(), 20, "nothing took the evicted flows' marks");
    assert!(
        wait_until(Duration::from_secs(6), || marks.total() == 15),
        "the evicted flows' marks cleared: {} left",
        marks.total()
    );
    let kept: Vec<FlowKey> = flows.keys().flatten().collect();
    assert_eq!(kept.len(), 15);
    for key in &kept {
        assert!(marks.count(key) > 0, "a tracked flow lost its mark");
    }
    // A tracked flow's mark lost (as a clearing that raced its insert
    // could lose it) is given back.
    let lost = kept[0];
    while marks.count(&lost) > 0 {
        marks.removed(&lost);
    }
    assert!(
        wait_until(Duration::from_secs(3), || marks.count(&lost) > 0),
        "the lost mark given back"
    );
}

/// A flood that reaches the gateway as XDP frames, the way a NIC delivers
/// packets (no socket buffer behind them, see `inspector_lab::frame_flood`),
/// to the program in native mode: first, with no program, every frame is a
/// valid SYN the server takes (so the sender is sound); then the limit holds
/// the server to `max-embryonic = 20` and counts every other SYN.
#[test]
fn syn_flood_of_xdp_frames_is_held_to_max_embryonic_native() {
    let lab = lab("frames");
    let pins = PinDir::new("frames");
    route_spoofed_sources_to_client(&lab);
    lab.server.sysctl("net.ipv4.tcp_syncookies", "0").unwrap();
    lab.server
        .sysctl("net.ipv4.tcp_max_syn_backlog", "4096")
        .unwrap();
    // ndo_xdp_xmit needs NAPI on the receiving veth: GRO asks for it
    // while no XDP program is attached.
    assert!(
        lab.gateway
            .command("ethtool")
            .args(["-K", OUTSIDE, "gro", "on"])
            .status()
            .unwrap()
            .success()
    );
    let server = Server::start(&lab.server, SERVER_V4.into(), 4096);
    let SocketAddr::V4(dst) = server.addr else {
        unreachable!()
    };
    let gateway_mac = inspector_lab::raw::mac(&lab.gateway, OUTSIDE).unwrap();
    let flood = FrameFlood::new(&lab.client, "eth0", gateway_mac, dst).unwrap();
    // The server's MAC first: a burst to an unresolved neighbour waits in
    // its queue, which holds about 50 frames of a page each.
    drop(connect(&lab, CLIENT_V4.into(), &server).expect("a connection before the flood"));
    flood.send(300).unwrap();
    assert!(
        wait_until(Duration::from_secs(3), || syn_recv(&lab.server) >= 295),
        "valid SYNs from distinct sources reach the server: {}",
        syn_recv(&lab.server)
    );
    assert_eq!(nstat(&lab.server, "TcpInCsumErrors"), 0);
    assert_eq!(nstat(&lab.gateway, "IpInHdrErrors"), 0);

    let policy = PolicyFile::new(
        "frames",
        &format!(
            "[[server]]\naddress = \"{SERVER_V4}\"\nmax-embryonic = 20\non-embryonic-limit = \"drop\"\n"
        ),
    );
    let _daemon = start_daemon_with(
        &lab,
        &pins,
        &[OUTSIDE, INSIDE],
        Some(policy.path()),
        &["--no-proxy", "--xdp-mode", "native"],
    );
    let before = syn_recv(&lab.server);
    for _ in 0..20 {
        flood.send(100).unwrap();
    }
    thread::sleep(Duration::from_millis(200));
    let through = syn_recv(&lab.server).saturating_sub(before);
    assert!(through <= 20, "{through} more half-open at the server");
    assert_eq!(server_counts(&pins, SERVER_V4.into()).0, 20);
    let dropped = drops(&pins, "max-embryonic");
    assert!(dropped >= 1900, "dropped {dropped} of 1980 over the limit");
}

/// TCP intercept: a spoofed SYN flood over `max-embryonic = 20` never gives
/// the server more than 20 half-open connections, while a real client
/// (swaks) completes an SMTP session with a real server (Postfix's
/// smtp-sink) through the SYN cookies the gateway answers with.
#[test]
fn intercept_lets_a_real_client_through_a_syn_flood_v4() {
    intercept_through_flood("icept4", V4, Plain, (50, 20), Generic);
}

/// The same with the program in native (driver) mode.
#[test]
fn intercept_lets_a_real_client_through_a_syn_flood_v4_native() {
    intercept_through_flood("icept4n", V4, Plain, (50, 20), Native);
}

/// The same over IPv6.
#[test]
fn intercept_lets_a_real_client_through_a_syn_flood_v6() {
    intercept_through_flood("icept6", V6, Plain, (50, 20), Generic);
}

/// IPv6 in native mode.
#[test]
fn intercept_lets_a_real_client_through_a_syn_flood_v6_native() {
    intercept_through_flood("icept6n", V6, Plain, (50, 20), Native);
}

/// With the proxy running, the SMTP sessions it terminates are left to its
/// listener (the kernel's own SYN cookies when its queue is full): the XDP
/// program answers none of those SYNs, the client still gets through the
/// flood, and the server still never holds more than the limit.
#[test]
fn intercept_leaves_inspected_sessions_to_the_proxy() {
    intercept_through_flood("icepte", V4, Proxy, (50, 20), Generic);
}

/// The same in native mode.
#[test]
fn intercept_leaves_inspected_sessions_to_the_proxy_native() {
    intercept_through_flood("iceplen", V4, Proxy, (50, 20), Native);
}

/// The first source document's own limits, `static … tcp 50 100`: max-conns
/// below max-embryonic, so the flood's half-open flows fill every slot of
/// max-conns. SYNs are then answered with cookies (not dropped as over
/// max-conns), and the real client that returns its cookie is served.
#[test]
fn intercept_serves_a_real_client_when_half_open_flows_fill_max_conns() {
    intercept_through_flood("icept50", V4, Plain, (50, 100), Generic);
}

/// The same in native mode.
#[test]
fn intercept_serves_a_real_client_when_half_open_flows_fill_max_conns_native() {
    intercept_through_flood("icept50n", V4, Plain, (50, 100), Native);
}

/// The same with `tcp 3 20`.
#[test]
fn intercept_serves_a_real_client_with_three_slots() {
    intercept_through_flood("icept3", V4, Plain, (3, 20), Generic);
}

/// `tcp 3 20` in native mode.
#[test]
fn intercept_serves_a_real_client_with_three_slots_native() {
    intercept_through_flood("icept3n", V4, Plain, (3, 20), Native);
}

/// An intercepted connection keeps TCP's options: `ss -ti` shows window
/// scaling, SACK and timestamps on the client's socket and on the
/// server's (each negotiated through the cookie's timestamp).
/// An intercepted client whose SYN to the server is lost (the server's
/// namespace drops the client's SYNs until one has been dropped) still
/// gets its session: the sweeper nudges the client, and the duplicate ACK
/// it answers with goes to the server as the SYN again. Without that, the
/// client, which took our cookie for the server's handshake, waits for a
/// greeting that never comes.
#[test]
fn intercept_sends_the_syn_a_server_never_got_again() {
    intercept_resends_a_lost_syn("resend", V4, Generic, None);
}

#[test]
fn intercept_sends_the_syn_a_server_never_got_again_native() {
    intercept_resends_a_lost_syn("resendn", V4, Native, None);
}

#[test]
fn intercept_sends_the_syn_a_server_never_got_again_v6() {
    intercept_resends_a_lost_syn("resend6", V6, Generic, None);
}

/// The same for a client that drops a segment without a timestamp on a
/// connection that has them (RFC 7323 section 3.2's SHOULD, which Linux
/// does not follow): the segment that asks it for the ACK carries one.
#[test]
fn intercept_sends_the_syn_again_for_a_client_strict_about_timestamps() {
    intercept_resends_a_lost_syn("resendts", V4, Generic, Some(STRICT_ABOUT_TIMESTAMPS));
}

/// nftables in the client's namespace dropping what such a client drops
/// (from the server's port; SYNs and RSTs go without timestamps).
const STRICT_ABOUT_TIMESTAMPS: &str = "table inet strict {\n chain input {\n\
     type filter hook input priority 0;\n\
     tcp sport 25 tcp flags & (syn | rst) == 0 tcp option timestamp missing counter drop\n }\n}\n";

/// `client_nft`: see [`session_survives_a_loss`].
fn intercept_resends_a_lost_syn(test: &str, family: Family, mode: Mode, client_nft: Option<&str>) {
    let json = session_survives_a_loss(
        test,
        family,
        mode,
        SYNS,
        "the SYN sent for the verified client",
        client_nft,
    );
    let resent = &json["limits"]["intercept"]["syns-resent"];
    assert!(resent.as_u64().unwrap() >= 1, "{json}");
}

/// The client's segments the lost-packet tests drop at the server (as in
/// `tcp flags & …`): SYNs.
const SYNS: &str = "(syn | ack) == syn";

/// An intercepted session whose first segment matching `flags` from the
/// client (`what`) is dropped at the server still gets its greeting, with
/// `client_nft` (an nftables script) in the client's namespace if given;
/// `inspector stats --json` then.
fn session_survives_a_loss(
    test: &str,
    family: Family,
    mode: Mode,
    flags: &str,
    what: &str,
    client_nft: Option<&str>,
) -> serde_json::Value {
    let it = InterceptLab::start(test, family.addresses().1, Plain, (50, 1), mode);
    if let Some(script) = client_nft {
        it.lab.client.nft(script).unwrap();
    }
    let stream = intercepted_with_lost(&it, family, flags);
    assert!(
        wait_until(Duration::from_secs(2), || it
            .lab
            .server
            .nft_counter("inet", "lost")
            .unwrap()
            >= 1),
        "{what} was dropped at the server"
    );
    it.lab.server.nft("delete table inet lost").unwrap();
    let read = greeting(&stream, Duration::from_secs(6));
    assert!(
        matches!(&read, Ok(code) if code == b"220"),
        "smtp-sink's greeting after {what} was lost: {read:?}\n{}",
        stats_json(it.pins.path())
    );
    it.assert_checksums_right();
    stats_json(it.pins.path())
}

/// A verified client whose server never answers (every SYN sent for it
/// lost) is reset when the embryonic timeout expires, rather than left
/// waiting for a greeting; the server is reset too, and the slot is free.
#[test]
fn intercept_resets_a_client_whose_server_never_answers() {
    let server: IpAddr = SERVER_V4.into();
    let it = InterceptLab::start_with(
        "neveropen",
        server,
        Plain,
        (50, 1),
        Generic,
        "[timeouts]\nembryonic = 2\n",
    );
    let stream = intercepted_with_syns_lost(&it, V4);
    let read = greeting(&stream, Duration::from_secs(8));
    assert!(
        matches!(&read, Err(e) if e.kind() == ErrorKind::ConnectionReset),
        "the client's read after its server never answered: {read:?}\n{}",
        stats_json(it.pins.path())
    );
    // Sent again after each nudge, and lost each time.
    assert!(it.lab.server.nft_counter("inet", "lost").unwrap() >= 2);
    let json = stats_json(it.pins.path());
    let intercept = &json["limits"]["intercept"];
    assert!(intercept["syns-resent"].as_u64().unwrap() >= 1, "{json}");
    assert_eq!(intercept["client-resets"], 1, "{json}");
    assert!(
        wait_until(Duration::from_secs(3), || server_counts(&it.pins, server).1
            == 0),
        "the flow no longer holds a slot: {}",
        stats_json(it.pins.path())
    );
}

/// A verified client that gives up while its server side is still
/// opening (every SYN sent for it lost) frees its slot with its RST at
/// once, not at the embryonic timeout (30 s here): the RST at its next
/// number ends the flow.
#[test]
fn an_intercepted_client_that_resets_while_opening_frees_its_slot() {
    let server: IpAddr = SERVER_V4.into();
    let it = InterceptLab::start("openrst", server, Plain, (50, 1), Generic);
    let stream = intercepted_with_syns_lost(&it, V4);
    assert!(
        wait_until(Duration::from_secs(2), || server_counts(&it.pins, server).1
            == 1),
        "the opening flow holds a slot: {}",
        stats_json(it.pins.path())
    );
    // Closed with an RST.
    socket2::SockRef::from(&stream)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(stream);
    assert!(
        wait_until(Duration::from_secs(3), || server_counts(&it.pins, server).1
            == 0),
        "the client's RST freed its slot: {}",
        stats_json(it.pins.path())
    );
}

/// The first 3 bytes `stream` reads (the greeting's code) within `timeout`.
fn greeting(stream: &TcpStream, timeout: Duration) -> std::io::Result<[u8; 3]> {
    stream.set_read_timeout(Some(timeout))?;
    let mut code = [0u8; 3];
    std::io::Read::read_exact(&mut &*stream, &mut code)?;
    Ok(code)
}

/// With `it`'s embryonic limit filled by a flood, a connection from the
/// client's `family` address, intercepted, whose SYNs to the server the
/// server's namespace drops (counted in table `inet lost`) until that
/// table is deleted.
fn intercepted_with_syns_lost(it: &InterceptLab, family: Family) -> TcpStream {
    intercepted_with_lost(it, family, SYNS)
}

/// [`intercepted_with_syns_lost`] for the segments whose TCP flags
/// `flags` matches (as in `tcp flags & …`).
fn intercepted_with_lost(it: &InterceptLab, family: Family, flags: &str) -> TcpStream {
    let client = family.addresses().0;
    let ip = if family == V4 { "ip" } else { "ip6" };
    it.flood().send(100).unwrap();
    it.lab
        .server
        .nft(&format!(
            "table inet lost {{\n chain input {{\n type filter hook input priority -300;\n\
             {ip} saddr {client} tcp dport {PORT} tcp flags & {flags} counter drop\n }}\n}}\n"
        ))
        .unwrap();
    it.connect(client)
}

/// The ACK the program sends a server to complete its handshake for an
/// intercepted client, lost: the server sends its SYN-ACK again, which
/// reaches the client translated; the client's answer (a challenge ACK,
/// RFC 5961 section 4) completes the server's handshake, and the session
/// goes on.
#[test]
fn intercept_recovers_from_a_lost_ack_to_the_server() {
    let json = session_survives_a_loss(
        "lostack",
        V4,
        Generic,
        "(syn | ack | fin | rst) == ack",
        "the ACK sent to the server",
        None,
    );
    // The server's side was open: nothing was sent again for it.
    assert_eq!(json["limits"]["intercept"]["syns-resent"], 0, "{json}");
}

#[test]
fn intercepted_connection_keeps_wscale_sack_and_timestamps() {
    intercepted_connection_keeps_options("iceptopt", Generic);
}

/// The same in native mode.
#[test]
fn intercepted_connection_keeps_wscale_sack_and_timestamps_native() {
    intercepted_connection_keeps_options("iceptoptn", Native);
}

use Family::{V4, V6};
use Mode::{Generic, Native};
use Proxying::{Plain, Proxy};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Family {
    V4,
    V6,
}

impl Family {
    fn addresses(self) -> (IpAddr, IpAddr) {
        match self {
            V4 => (CLIENT_V4.into(), SERVER_V4.into()),
            V6 => (CLIENT_V6.into(), SERVER_V6.into()),
        }
    }
}

/// Whether the daemon runs its proxy (which terminates the SMTP sessions).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Proxying {
    Plain,
    Proxy,
}

/// The XDP attach mode of the gateway's program.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Generic (skb) mode: `XDP_TX` frames go through the device like any
    /// packet and keep their checksum offload state.
    Generic,
    /// Native mode on the veths, with a pass-only program on the end
    /// hosts' ends: a veth drops native `XDP_TX` frames (counted as its TX
    /// drops) unless its peer has an XDP program.
    Native,
}

/// The lab of an intercept test: the daemon with `on-embryonic-limit =
/// "intercept"`, smtp-sink on the server (no SYN cookies of its own, a deep
/// SYN queue), the spoofed sources routed to the client, and checksum
/// offload on at both end hosts, so their packets reach the gateway with
/// the checksum still to be completed (`CHECKSUM_PARTIAL`).
struct InterceptLab {
    _sink: inspector_lab::ScopedChild,
    _daemon: inspector_lab::ScopedChild,
    _ends: Option<support::EndHostXdp>,
    pins: PinDir,
    lab: Lab,
    server: IpAddr,
}

impl InterceptLab {
    fn start(test: &str, server: IpAddr, proxy: Proxying, limits: (u32, u32), mode: Mode) -> Self {
        Self::start_with(test, server, proxy, limits, mode, "")
    }

    /// [`InterceptLab::start`] with `more` at the end of the policy.
    fn start_with(
        test: &str,
        server: IpAddr,
        proxy: Proxying,
        (max_conns, max_embryonic): (u32, u32),
        mode: Mode,
        more: &str,
    ) -> Self {
        let lab = lab(test);
        let pins = PinDir::new(test);
        let policy = PolicyFile::new(
            test,
            &format!(
                "[[server]]\naddress = \"{server}\"\nmax-embryonic = {max_embryonic}\nmax-conns = {max_conns}\n\
                 on-embryonic-limit = \"intercept\"\n{more}"
            ),
        );
        for (ns, iface) in lab.end_host_interfaces() {
            ns.command("ethtool")
                .args(["-K", iface, "tx", "on"])
                .output()
                .ok()
                .filter(|o| o.status.success())
                .unwrap_or_else(|| panic!("ethtool -K {iface} tx on in {}", ns.name));
        }
        let ends = (mode == Native).then(|| support::pass_on_end_hosts(&lab, test));
        let mut args = vec![
            "--xdp-mode",
            if mode == Native { "native" } else { "generic" },
        ];
        if proxy == Plain {
            args.push("--no-proxy");
        }
        let daemon = start_daemon_with(&lab, &pins, &[OUTSIDE, INSIDE], Some(policy.path()), &args);
        route_spoofed_sources_to_client(&lab);
        if proxy == Proxy {
            // The proxy starts after the XDP programs: flood only once its
            // steering is attached, or the first SYNs go straight to the server.
            assert!(
                // The daemon pins each steering link once attached.
                wait_until(Duration::from_secs(10), || [OUTSIDE, INSIDE].iter().all(
                    |i| inspector::kernel::steer::link_pin(pins.path(), i).exists()
                )),
                "steering attached"
            );
            // The proxy's listener answers every SYN with a cookie, so the
            // client's completing ACK is one the steering must recognise.
            lab.gateway.sysctl("net.ipv4.tcp_syncookies", "2").unwrap();
        }
        let sink = start_smtp_sink(&lab, server);
        Self {
            _sink: sink,
            _daemon: daemon,
            _ends: ends,
            pins,
            lab,
            server,
        }
    }

    /// A connection from `client` to the server (5 s to open).
    fn connect(&self, client: IpAddr) -> TcpStream {
        self.lab
            .client
            .tcp_connect(
                client,
                SocketAddr::new(self.server, PORT),
                Duration::from_secs(5),
            )
            .unwrap()
            .expect("the connection opens")
    }

    /// A flood of spoofed SYNs to the server.
    fn flood(&self) -> SynFlood {
        SynFlood::new(&self.lab.client, SocketAddr::new(self.server, PORT)).unwrap()
    }

    /// No end host has counted a segment with a bad checksum: every packet
    /// the gateway rewrote or sent back was checksummed right.
    fn assert_checksums_right(&self) {
        // TCP over IPv6 counts its errors here too.
        for ns in [&self.lab.client, &self.lab.server] {
            assert_eq!(nstat(ns, "TcpInCsumErrors"), 0, "in {}", ns.name);
        }
    }
}

/// `limits`: (max-conns, max-embryonic).
fn intercept_through_flood(
    test: &str,
    family: Family,
    proxy: Proxying,
    (max_conns, max_embryonic): (u32, u32),
    mode: Mode,
) {
    let (client, server) = family.addresses();
    // The most half-open flows the flood can give the server.
    let held = max_conns.min(max_embryonic) as usize;
    let it = InterceptLab::start(test, server, proxy, (max_conns, max_embryonic), mode);
    let (lab, pins) = (&it.lab, &it.pins);

    // Fill the embryonic limit, then keep flooding while the client talks,
    // watching the server's SYN queue.
    let Through { swaks, sent, most } = swaks_during_flood(lab, client, server);
    let transcript = String::from_utf8_lossy(&swaks.stdout);
    assert!(
        swaks.status.success(),
        "swaks failed during a flood of {sent} SYNs:\n{transcript}{}\n{}",
        String::from_utf8_lossy(&swaks.stderr),
        stats_json(pins.path())
    );
    assert!(transcript.contains("<-  250"), "{transcript}");
    it.assert_checksums_right();
    if proxy == Proxy {
        // The flood ends at the proxy's listener; the server sees only
        // the proxy's own connection.
        assert!(most <= 1, "the server held {most} half-open connections");
    } else {
        assert!(most > 0, "the flood reached the server at all");
        assert!(most <= held, "the server held {most} half-open connections");
    }

    let json = stats_json(pins.path());
    let intercept = &json["limits"]["intercept"];
    if proxy == Proxy {
        assert!(
            nstat(&lab.gateway, "TcpExtSyncookiesRecv") >= 1,
            "the listener's cookie"
        );
        assert_eq!(intercept["syn-cookies-sent"], 0, "{json}");
        assert_eq!(json["limits"]["drops"]["max-embryonic"], 0, "{json}");
        return;
    }
    assert!(
        intercept["syn-cookies-sent"].as_u64().unwrap() >= 500 - held as u64,
        "{json}"
    );
    assert!(
        intercept["clients-verified"].as_u64().unwrap() >= 1,
        "{json}"
    );
    assert!(intercept["servers-opened"].as_u64().unwrap() >= 1, "{json}");
    assert_eq!(json["limits"]["drops"]["max-embryonic"], 0, "{json}");
    assert_eq!(json["limits"]["drops"]["max-conns"], 0, "{json}");
    if max_conns <= max_embryonic {
        // Half-open flows held every slot: the client took one of theirs.
        assert!(
            intercept["half-open-displaced"].as_u64().unwrap() >= 1,
            "{json}"
        );
    }
}

fn intercepted_connection_keeps_options(test: &str, mode: Mode) {
    let (client, server) = V4.addresses();
    let it = InterceptLab::start(test, server, Plain, (50, 20), mode);
    // Fill the embryonic limit: the next connection is intercepted.
    it.flood().send(100).unwrap();
    let verified = || stats_json(it.pins.path())["limits"]["intercept"]["clients-verified"].clone();
    let before = verified().as_u64().unwrap();
    let stream = it.connect(client);
    let port = stream.local_addr().unwrap().port();
    let mut greeting = [0u8; 3];
    std::io::Read::read_exact(&mut &stream, &mut greeting).expect("smtp-sink's greeting");
    assert_eq!(&greeting, b"220");
    assert!(
        verified().as_u64().unwrap() > before,
        "the connection was intercepted: {}",
        stats_json(it.pins.path())
    );
    // The same connection, seen from each end. `-e`: without it, this
    // iproute2 (6.1) on newer kernels prints no `ts` and `sack` at all.
    let filter = format!("( sport = :{port} or dport = :{port} )");
    for ns in [&it.lab.client, &it.lab.server] {
        let out = ns
            .command("ss")
            .args(["-Htien", "state", "established", &filter])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let info = text.split_whitespace().collect::<Vec<_>>();
        for option in ["ts", "sack"] {
            assert!(info.contains(&option), "{option} in {}: {text}", ns.name);
        }
        assert!(
            info.iter().any(|w| w.starts_with("wscale:")),
            "wscale in {}: {text}",
            ns.name
        );
    }
    it.assert_checksums_right();
    drop(stream);
}

/// Counters never drift: after 10,000 connections opened and closed, both
/// the server's and the client's counts are back to zero.
#[test]
fn counters_return_to_zero_after_10000_connections() {
    let lab = lab("churn");
    let pins = PinDir::new("churn");
    let policy = PolicyFile::new(
        "churn",
        &format!("[[server]]\naddress = \"{SERVER_V4}\"\nmax-conns = 50\nmax-embryonic = 100\n"),
    );
    let _daemon = start_daemon(&lab, &pins, &[OUTSIDE, INSIDE], Some(policy.path()));
    let server = Server::start(&lab.server, SERVER_V4.into(), 1024);

    let mut failed = 0;
    for i in 0..10_000 {
        match connect(&lab, CLIENT_V4.into(), &server) {
            // Halfway, one stays open a moment: the flows are really counted.
            Ok(_open) if i == 5_000 => assert!(
                wait_until(Duration::from_secs(2), || server_counts(
                    &pins,
                    SERVER_V4.into()
                ) == (0, 1)),
                "one connection open: {:?}",
                server_counts(&pins, SERVER_V4.into())
            ),
            Ok(s) => drop(s),
            Err(_) => failed += 1,
        }
    }
    assert_eq!(failed, 0, "connections within max-conns all succeed");
    assert!(
        wait_until(Duration::from_secs(5), || server_counts(
            &pins,
            SERVER_V4.into()
        ) == (0, 0)),
        "server counts back to zero: {:?}",
        server_counts(&pins, SERVER_V4.into())
    );
    let json = stats_json(pins.path());
    assert_eq!(json["limits"]["clients"], serde_json::json!([]), "{json}");
}

/// A counter of the kernel's SNMP statistics in `ns` (`nstat`), absolute.
fn nstat(ns: &Netns, counter: &str) -> u64 {
    let out = ns.command("nstat").args(["-az", counter]).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix(counter))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("nstat shows {counter} in {}", ns.name))
}

/// The flow-table entries of connections from `client_port`, by state.
fn flow_states(pins: &PinDir, client_port: u16) -> Vec<u32> {
    let flows: aya::maps::HashMap<_, FlowKey, FlowEntry> =
        bpffs::open_map(pins.path(), maps::FLOWS)
            .unwrap()
            .try_into()
            .unwrap();
    flows
        .iter()
        .flatten()
        .filter(|(key, _)| key.client_port == client_port)
        .map(|(_, entry)| entry.state)
        .collect()
}

/// A connection both sides closed is forgotten at once, not kept for the
/// half-closed timeout (600 s here, the default): kept, closed flows would
/// fill the flow table at a hundred connections a second, and its LRU
/// would evict live ones. A connection only one side closed stays.
#[test]
fn a_flow_both_sides_closed_leaves_the_table_and_a_half_closed_one_stays() {
    use inspector_common::flow_state::CLOSING;
    use std::io::{Read, Write};
    let lab = lab("closed");
    let pins = PinDir::new("closed");
    let policy = PolicyFile::new(
        "closed",
        &format!("[[server]]\naddress = \"{SERVER_V4}\"\nmax-conns = 10\n"),
    );
    let _daemon = start_daemon(&lab, &pins, &[OUTSIDE, INSIDE], Some(policy.path()));
    let server = Server::start(&lab.server, SERVER_V4.into(), 64);
    // A second port of the same server whose side closes first and alone.
    let half = SocketAddr::new(SERVER_V4.into(), PORT + 1);
    let listener = lab.server.tcp_listen(half, 8).unwrap().unwrap();

    // Both close: the client, then the server (`Server` closes what its
    // client closed).
    let mut both = connect(&lab, CLIENT_V4.into(), &server).unwrap();
    let both_port = both.local_addr().unwrap().port();
    both.write_all(b"QUIT\r\n").unwrap();
    assert!(
        wait_until(Duration::from_secs(2), || !flow_states(&pins, both_port)
            .is_empty()),
        "the connection is tracked"
    );
    drop(both);

    let mut one = lab
        .client
        .tcp_connect(CLIENT_V4.into(), half, CONNECT_TIMEOUT)
        .unwrap()
        .unwrap();
    let one_port = one.local_addr().unwrap().port();
    let (held, _) = listener.accept().unwrap();
    held.shutdown(std::net::Shutdown::Write).unwrap();
    let mut b = [0u8; 8];
    assert_eq!(
        one.read(&mut b).unwrap(),
        0,
        "the server's FIN reached the client"
    );

    assert!(
        wait_until(Duration::from_secs(3), || flow_states(&pins, both_port)
            .is_empty()),
        "the closed flow forgotten: {:?}",
        flow_states(&pins, both_port)
    );
    assert_eq!(server_counts(&pins, SERVER_V4.into()), (0, 0));
    // Past a sweep or two: the half-closed one stays.
    thread::sleep(Duration::from_secs(2));
    assert_eq!(
        flow_states(&pins, one_port),
        [CLOSING],
        "the half-closed one kept"
    );
    drop((one, held));
}

/// An SMTP session (greeting, `QUIT`, `221`, close) through `it` to its
/// server; the client's port.
fn session_and_close(it: &InterceptLab) -> u16 {
    use std::io::{Read, Write};
    let mut stream = it.connect(CLIENT_V4.into());
    let port = stream.local_addr().unwrap().port();
    assert_eq!(&greeting(&stream, Duration::from_secs(5)).unwrap(), b"220");
    stream.write_all(b"QUIT\r\n").unwrap();
    let mut rest = Vec::new();
    // Until the server's side closes, after its 221.
    stream.read_to_end(&mut rest).unwrap();
    assert!(
        String::from_utf8_lossy(&rest).contains("221"),
        "{:?}",
        String::from_utf8_lossy(&rest)
    );
    drop(stream);
    port
}

/// Sessions closed the way SMTP closes them leave the table whichever way
/// they went, forwarded or inspected by the proxy (whose own FIN the
/// program never sees): at once, or, intercepted (its embryonic limit
/// full, its numbers translated), closed and kept for the closed linger
/// (10 s), then forgotten.
#[test]
fn closed_sessions_leave_the_table_forwarded_or_proxied_intercepted_or_not() {
    use inspector_common::flow_state::CLOSED;
    for (name, proxy) in [("closedfw", Plain), ("closedpx", Proxy)] {
        let server: IpAddr = SERVER_V4.into();
        let it = InterceptLab::start(name, server, proxy, (50, 1), Generic);
        let direct = session_and_close(&it);
        it.flood().send(100).unwrap();
        let verified = || {
            stats_json(it.pins.path())["limits"]["intercept"]["clients-verified"]
                .as_u64()
                .unwrap()
        };
        let before = verified();
        let second = session_and_close(&it);
        assert!(
            wait_until(Duration::from_secs(3), || flow_states(&it.pins, direct)
                .is_empty()),
            "{name}: the first session's flow forgotten: {:?}",
            flow_states(&it.pins, direct)
        );
        if proxy == Proxy {
            // The proxy's listener answers an inspected SYN with its own
            // cookie: nothing here is translated.
            assert!(
                wait_until(Duration::from_secs(3), || flow_states(&it.pins, second)
                    .is_empty()),
                "{name}: the second session's flow forgotten: {:?}",
                flow_states(&it.pins, second)
            );
            continue;
        }
        assert_eq!(
            verified(),
            before + 1,
            "{name}: the second session intercepted"
        );
        assert!(
            wait_until(Duration::from_secs(3), || flow_states(&it.pins, second)
                == [CLOSED]),
            "{name}: the intercepted flow closed: {:?}",
            flow_states(&it.pins, second)
        );
        assert!(
            wait_until(Duration::from_secs(14), || flow_states(&it.pins, second)
                .is_empty()),
            "{name}: the intercepted flow forgotten: {:?}",
            flow_states(&it.pins, second)
        );
    }
}
