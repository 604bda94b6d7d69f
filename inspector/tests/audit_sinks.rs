//! Audit sinks against real files and sockets: a JSON-lines file, a syslog
//! datagram socket, and a sink that stops reading (a FIFO nobody drains),
//! which must drop and count records instead of blocking the caller.

use std::{
    ffi::CString,
    io::Read,
    os::unix::{ffi::OsStrExt, fs::OpenOptionsExt, net::UnixDatagram},
    path::{Path, PathBuf},
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use inspector::{config::SinkSpec, observe::audit::AuditLog};
use inspector_esmtp::{
    AuditEvent, AuditKind, Peers,
    audit::{Classification, Source, Verdict},
};

/// A temporary path, removed on drop.
struct TempPath(PathBuf);

impl TempPath {
    fn new(name: &str) -> Self {
        let path =
            std::env::temp_dir().join(format!("inspector-audit-{}-{name}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        Self(path)
    }
}

impl Drop for TempPath {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn event(n: u16) -> AuditEvent {
    AuditEvent {
        peers: Peers {
            client: format!("198.18.0.2:{}", 40000 + n).parse().unwrap(),
            server: "198.18.1.25:25".parse().unwrap(),
        },
        kind: AuditKind::Classification(Classification {
            verdict: Verdict::Received,
            source: Source::Class(2),
            criterion: "cmd RCPT count gt 100".into(),
            action: "log".into(),
            value: "x".repeat(100),
        }),
    }
}

fn wait_written(log: &AuditLog, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while log.counts().written.load(Ordering::Relaxed) < n {
        assert!(Instant::now() < deadline, "the sink wrote {n} record(s)");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn json_lines_file() {
    let path = TempPath::new("file.json");
    let log = AuditLog::start(&SinkSpec::File(path.0.clone()), 16).unwrap();
    log.record(event(1));
    log.record(event(2));
    wait_written(&log, 2);
    let text = std::fs::read_to_string(&path.0).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["id"], 108005);
    assert_eq!(lines[0]["severity"], 6);
    assert_eq!(lines[1]["client"], "198.18.0.2:40002");
    assert_eq!(lines[1]["server"], "198.18.1.25:25");
}

#[test]
fn syslog_datagrams() {
    let path = TempPath::new("syslog.sock");
    let receiver = UnixDatagram::bind(&path.0).unwrap();
    receiver
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let log = AuditLog::start(&SinkSpec::Syslog(path.0.clone()), 16).unwrap();
    log.record(event(7));
    let mut buf = [0u8; 4096];
    let n = receiver.recv(&mut buf).expect("a syslog datagram");
    let msg = std::str::from_utf8(&buf[..n]).unwrap();
    // local4 * 8 + informational (6).
    assert!(msg.starts_with("<166>1 "), "{msg}");
    assert!(msg.contains(" inspector "), "{msg}");
    assert!(
        msg.contains(" 108005 [esmtp@32473 client=\"198.18.0.2:40007\" server=\"198.18.1.25:25\""),
        "{msg}"
    );
    assert!(
        msg.contains("%INSPECTOR-6-108005: ESMTP Classification: Received"),
        "{msg}"
    );
}

#[test]
fn a_missing_syslog_socket_fails_the_start() {
    let path = TempPath::new("absent.sock");
    assert!(AuditLog::start(&SinkSpec::Syslog(path.0.clone()), 16).is_err());
}

fn mkfifo(path: &Path) {
    let c = CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
}

/// The sink is a FIFO whose reader never reads: once the pipe and the queue
/// are full, the writer thread is blocked in write(2). Recording must still
/// return at once, dropping and counting what does not fit.
#[test]
fn a_blocked_sink_drops_and_counts_instead_of_blocking() {
    let path = TempPath::new("blocked.fifo");
    mkfifo(&path.0);
    let mut reader = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&path.0)
        .unwrap();
    const QUEUE: usize = 64;
    const RECORDS: u16 = 20_000;
    let log = AuditLog::start(&SinkSpec::File(path.0.clone()), QUEUE).unwrap();
    let mut slowest = Duration::ZERO;
    for n in 0..RECORDS {
        let start = Instant::now();
        log.record(event(n));
        slowest = slowest.max(start.elapsed());
    }
    let counts = log.counts();
    let (queued, dropped) = (
        counts.queued.load(Ordering::Relaxed),
        counts.dropped.load(Ordering::Relaxed),
    );
    assert_eq!(queued + dropped, u64::from(RECORDS));
    // A 64 KiB pipe holds about 150 of these records, the queue 64.
    assert!(
        dropped > u64::from(RECORDS) / 2,
        "dropped {dropped} of {RECORDS}"
    );
    assert!(
        slowest < Duration::from_millis(50),
        "record() waited {slowest:?}"
    );
    assert_eq!(log.dropped(), dropped);

    // What got through is whole JSON lines, in order. The writer thread may
    // not have written its first batch yet: the FIFO is read without
    // blocking, so wait for it.
    let mut first = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(5);
    let n = loop {
        match reader.read(&mut first) {
            Ok(n) if n > 0 => break n,
            Err(e) if e.kind() != std::io::ErrorKind::WouldBlock => panic!("read: {e}"),
            _ => {
                assert!(Instant::now() < deadline, "nothing reached the FIFO");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    };
    let line = first[..n].split(|&b| b == b'\n').next().unwrap();
    let v: serde_json::Value = serde_json::from_slice(line).unwrap();
    assert_eq!(v["client"], "198.18.0.2:40000");
    drop(reader);
}

fn recv_datagram(sock: &UnixDatagram) -> String {
    let mut buf = [0u8; 4096];
    let n = sock.recv(&mut buf).expect("a syslog datagram");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

/// The syslog daemon restarts (its socket goes away and comes back, as
/// journald's and rsyslog's do): the sink connects again, records written
/// meanwhile are counted as failed, and later ones arrive.
#[test]
fn syslog_comes_back_after_its_server_restarts() {
    let path = TempPath::new("restart.sock");
    let first = UnixDatagram::bind(&path.0).unwrap();
    first
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    // mail (2) * 8 + informational (6).
    let log = AuditLog::start_with(&SinkSpec::Syslog(path.0.clone()), 16, 2).unwrap();
    log.record(event(1));
    assert!(recv_datagram(&first).starts_with("<22>1 "));
    // Gone.
    drop(first);
    std::fs::remove_file(&path.0).unwrap();
    log.record(event(2));
    let deadline = Instant::now() + Duration::from_secs(5);
    while log.counts().failed.load(Ordering::Relaxed) == 0 {
        assert!(Instant::now() < deadline, "the lost record is counted");
        std::thread::sleep(Duration::from_millis(10));
    }
    // Back, at the same path.
    let second = UnixDatagram::bind(&path.0).unwrap();
    second
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut n = 3;
    let got = loop {
        log.record(event(n));
        let mut buf = [0u8; 4096];
        if let Ok(len) = second.recv(&mut buf) {
            break String::from_utf8_lossy(&buf[..len]).into_owned();
        }
        assert!(
            Instant::now() < deadline,
            "no record reached the new socket"
        );
        n += 1;
    };
    assert!(got.contains("%INSPECTOR-6-108005"), "{got}");
    assert!(log.counts().reconnects.load(Ordering::Relaxed) >= 1);
}

/// Remote syslog: UDP datagrams, and TCP with octet counting that
/// connects again when the server restarts.
#[test]
fn remote_syslog_over_udp_and_tcp() {
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    udp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let log = AuditLog::start(
        &SinkSpec::SyslogUdp(udp.local_addr().unwrap().to_string()),
        16,
    )
    .unwrap();
    log.record(event(1));
    let mut buf = [0u8; 4096];
    let n = udp.recv(&mut buf).unwrap();
    assert!(
        std::str::from_utf8(&buf[..n])
            .unwrap()
            .starts_with("<166>1 ")
    );

    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let log = AuditLog::start(&SinkSpec::SyslogTcp(addr.to_string()), 16).unwrap();
    let (mut conn, _) = listener.accept().unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    log.record(event(1));
    let frame = read_frame(&mut conn);
    assert!(frame.starts_with("<166>1 "), "{frame}");
    // The server restarts on the same port.
    drop(conn);
    drop(listener);
    let listener = std::net::TcpListener::bind(addr).unwrap();
    listener.set_nonblocking(true).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut n = 2;
    let mut conn = loop {
        log.record(event(n));
        n += 1;
        std::thread::sleep(Duration::from_millis(200));
        if let Ok((c, _)) = listener.accept() {
            break c;
        }
        assert!(Instant::now() < deadline, "the sink did not connect again");
    };
    conn.set_nonblocking(false).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert!(read_frame(&mut conn).contains("%INSPECTOR-6-108005"));
    assert!(log.counts().reconnects.load(Ordering::Relaxed) >= 1);
}

/// One `LEN SP MSG` frame.
fn read_frame(conn: &mut std::net::TcpStream) -> String {
    let mut len = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        conn.read_exact(&mut byte).unwrap();
        if byte[0] == b' ' {
            break;
        }
        len.push(byte[0]);
    }
    let len: usize = String::from_utf8(len).unwrap().parse().unwrap();
    let mut msg = vec![0u8; len];
    conn.read_exact(&mut msg).unwrap();
    String::from_utf8(msg).unwrap()
}
