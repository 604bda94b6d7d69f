//! What the attack tests share: a real SMTP server (Postfix's smtp-sink)
//! that a spoofed SYN flood can reach, the server's SYN queue, and a real
//! client (swaks) talking through the flood.

use std::{
    net::{IpAddr, SocketAddr},
    process::Output,
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::Duration,
};

use inspector_lab::{
    CLIENT_V4, CLIENT_V6, Lab, Netns, ScopedChild,
    syn::{SPOOFED_V4, SPOOFED_V6, SynFlood},
};

use super::wait_until;

pub const PORT: u16 = 25;

/// Sends the server's answers to spoofed sources back into the client
/// namespace, where nothing answers them: every spoofed SYN stays half-open.
pub fn route_spoofed_sources_to_client(lab: &Lab) {
    let v4 = format!("{}/{}", SPOOFED_V4.0, SPOOFED_V4.1);
    let v6 = format!("{}/{}", SPOOFED_V6.0, SPOOFED_V6.1);
    lab.gateway
        .ip(&["route", "add", &v4, "via", &CLIENT_V4.to_string()])
        .unwrap();
    lab.gateway
        .ip(&["-6", "route", "add", &v6, "via", &CLIENT_V6.to_string()])
        .unwrap();
}

/// Half-open connections in the server's SYN queue.
pub fn syn_recv(ns: &Netns) -> usize {
    count_syn_recv(ns, &[])
}

/// Half-open connections in the server's SYN queue from the flood's
/// spoofed sources: not a real client's own handshake, which a verified
/// client completes through a slot a half-open flow gave up.
pub fn spoofed_syn_recv(ns: &Netns) -> usize {
    // ss reads an IPv6 prefix inside its brackets.
    let v4 = format!("{}/{}", SPOOFED_V4.0, SPOOFED_V4.1);
    let v6 = format!("[{}/{}]", SPOOFED_V6.0, SPOOFED_V6.1);
    count_syn_recv(ns, &["(", "dst", &v4, "or", "dst", &v6, ")"])
}

fn count_syn_recv(ns: &Netns, filter: &[&str]) -> usize {
    let out = ns
        .command("ss")
        .args(["-Htn", "state", "syn-recv"])
        .args(filter)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).lines().count()
}

/// smtp-sink on `server`:25, its SYN queue showing exactly what got
/// through: no SYN cookies of its own, a backlog far above any limit, and
/// the kernel's default SYN-ACK retries (5, about 63 s before it gives up
/// on a half-open connection by itself).
pub fn start_smtp_sink(lab: &Lab, server: IpAddr) -> ScopedChild {
    lab.server.sysctl("net.ipv4.tcp_syncookies", "0").unwrap();
    lab.server
        .sysctl("net.ipv4.tcp_max_syn_backlog", "4096")
        .unwrap();
    lab.server
        .sysctl("net.ipv4.tcp_synack_retries", "5")
        .unwrap();
    // Postfix's address syntax: [v6]:port.
    let listen = match server {
        IpAddr::V4(a) => format!("{a}:{PORT}"),
        IpAddr::V6(a) => format!("[{a}]:{PORT}"),
    };
    let sink = lab
        .server
        .spawn(
            lab.server
                .command("smtp-sink")
                .args(["-u", "nobody", &listen, "4096"]),
        )
        .expect("starting smtp-sink");
    assert!(
        wait_until(Duration::from_secs(5), || {
            let out = lab
                .server
                .command("ss")
                .args(["-Htln", "sport", "= :25"])
                .output()
                .unwrap();
            !out.stdout.is_empty()
        }),
        "smtp-sink listens"
    );
    sink
}

/// What a session through a flood gave.
pub struct Through {
    pub swaks: Output,
    /// SYNs the flood sent.
    pub sent: usize,
    /// The most half-open connections of the flood the server's SYN queue
    /// held at once.
    pub most: usize,
}

impl Through {
    /// The session completed: the message was accepted.
    pub fn assert_delivered(&self, context: &str) {
        let transcript = String::from_utf8_lossy(&self.swaks.stdout);
        assert!(
            self.swaks.status.success() && transcript.contains("<-  250"),
            "swaks failed during a flood of {} SYNs:\n{transcript}{}\n{context}",
            self.sent,
            String::from_utf8_lossy(&self.swaks.stderr),
        );
    }
}

/// Floods `server`:25 from spoofed sources (500 SYNs first, then 100 at a
/// time), while swaks from `client` sends one message through it.
pub fn swaks_during_flood(lab: &Lab, client: IpAddr, server: IpAddr) -> Through {
    let mut flood = SynFlood::new(&lab.client, SocketAddr::new(server, PORT)).unwrap();
    flood.send(500).unwrap();
    let stop = AtomicBool::new(false);
    thread::scope(|scope| {
        let flooding = scope.spawn(|| {
            let (mut sent, mut most) = (500, 0);
            while !stop.load(Ordering::Relaxed) {
                flood.send(100).unwrap();
                sent += 100;
                most = most.max(spoofed_syn_recv(&lab.server));
            }
            (sent, most)
        });
        let swaks = swaks(lab, client, server);
        stop.store(true, Ordering::Relaxed);
        let (sent, most) = flooding.join().unwrap();
        Through { swaks, sent, most }
    })
}

/// One message from `client` to `server`:25 with swaks.
pub fn swaks(lab: &Lab, client: IpAddr, server: IpAddr) -> Output {
    lab.client
        .command("swaks")
        .args(["--server", &server.to_string(), "--port", "25"])
        .args(["--local-interface", &client.to_string()])
        .args(["--from", "sender@example.org", "--to", "rcpt@example.net"])
        .args(["--timeout", "20", "--body", "through the flood"])
        .output()
        .unwrap()
}
