//! Audit sinks: where the ESMTP engine's records (108002 to 108007) go,
//! each with its session's id, and one record per session
//! ([`super::session`]).
//!
//! The data path never waits for a sink: [`AuditLog::record`] puts the
//! record in a bounded queue with `try_send` and returns; one writer thread
//! per daemon formats and writes. When the queue is full (the sink is slow or
//! blocked) the record is dropped and counted in [`AuditLog::dropped`]
//! (`inspector_audit_dropped_total`).
//!
//! The writer takes the queue in batches: it wakes for a record, takes
//! every record queued by then (JSON lines go out in one write), and,
//! unless the batch was large, rests [`BATCH_PAUSE`] before it waits
//! again. A record that finds it waiting is written at once; one that
//! comes while it rests waits at most the rest. Under load, a record costs
//! the proxy's thread no wake-up of the writer (two futex calls and a
//! context switch per session before).
//! [`AuditLog::flush`] waits for what is queued: the daemon's last act, so
//! its exit loses no record.

use std::{
    fmt::Write as _,
    fs::OpenOptions,
    io::{self, Write},
    os::unix::net::UnixDatagram,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc::{self, SyncSender, TrySendError},
    },
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result};
use inspector_esmtp::{
    AuditEvent, AuditKind,
    audit::{ClientLimit, Source},
};

use super::session::{SessionId, SessionSummary};
use crate::config::SinkSpec;

/// `local4`, the facility the firewall logs to by default.
const FACILITY_LOCAL4: u8 = crate::config::DEFAULT_FACILITY;
/// How long a lost syslog connection waits between attempts to come back.
const RECONNECT_BACKOFF: std::time::Duration = std::time::Duration::from_secs(1);
/// RFC 5424 structured-data id; 32473 is the enterprise number reserved
/// for documentation (RFC 5612).
const SD_ID: &str = "esmtp@32473";

/// How syslog messages are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyslogFormat {
    /// RFC 5424 facility code (local4 = 20).
    pub facility: u8,
    /// `%ASA-SEV-ID:` instead of `%INSPECTOR-SEV-ID:`.
    pub asa_tag: bool,
}

impl Default for SyslogFormat {
    fn default() -> Self {
        Self {
            facility: FACILITY_LOCAL4,
            asa_tag: false,
        }
    }
}

/// One record as queued: what it is and when it happened.
struct Queued {
    time: SystemTime,
    entry: Entry,
}

enum Entry {
    /// A policy record, with its session's id (none for the admission's).
    Policy(Option<SessionId>, AuditEvent),
    /// A session ended.
    Session(Box<SessionSummary>),
}

impl Queued {
    fn json(&self) -> String {
        match &self.entry {
            Entry::Policy(session, event) => json_policy(self.time, *session, event),
            Entry::Session(s) => {
                let mut line = s.json(self.time).to_string();
                line.push('\n');
                line
            }
        }
    }

    fn syslog(&self, host: &str, pid: u32, format: SyslogFormat) -> String {
        match &self.entry {
            Entry::Policy(session, event) => {
                syslog_policy(self.time, host, pid, format, *session, event)
            }
            Entry::Session(s) => syslog_session(self.time, host, pid, format.facility, s),
        }
    }
}

/// What the writer thread takes from the queue.
enum Msg {
    Record(Queued),
    /// Answered once every record queued before it is written.
    Flush(SyncSender<()>),
}

/// Writes a batch of JSON lines.
type WriteLines = Box<dyn FnMut(&[u8]) -> io::Result<()> + Send>;
/// Sends one record.
type SendRecord = Box<dyn FnMut(&Queued) -> io::Result<()> + Send>;

/// How a sink takes records.
enum Writer {
    /// JSON lines (stdout, a file): a batch's records in one write.
    Lines(WriteLines),
    /// A message per record (syslog).
    Messages(SendRecord),
}

/// How long the writer rests after a batch (see the module's comment).
const BATCH_PAUSE: Duration = Duration::from_millis(5);
/// The most records in one batch.
const BATCH_MAX: usize = 1024;

/// The handle the proxy's sessions use; cheap to clone.
#[derive(Clone)]
pub struct AuditLog {
    tx: Option<SyncSender<Msg>>,
    counts: Arc<AuditCounts>,
    /// Set by [`AuditLog::reopen`]; the writer reopens the file (or
    /// reconnects to syslog) before its next record.
    reopen: Arc<AtomicBool>,
}

#[derive(Debug, Default)]
pub struct AuditCounts {
    /// Records handed to the sink's queue.
    pub queued: AtomicU64,
    /// Records dropped because the queue was full.
    pub dropped: AtomicU64,
    /// Records the sink failed to write (an I/O error).
    pub failed: AtomicU64,
    /// Records written.
    pub written: AtomicU64,
    /// Connections to syslog made again after one was lost (its server
    /// restarted).
    pub reconnects: AtomicU64,
}

/// A connection to syslog that comes back: a send that fails drops it,
/// connects again at once and resends; when that fails too the record is
/// lost (counted as failed) and the next attempt waits [`RECONNECT_BACKOFF`].
struct Reconnecting<T> {
    connect: Box<dyn FnMut() -> io::Result<T> + Send>,
    send: fn(&mut T, &[u8]) -> io::Result<()>,
    conn: Option<T>,
    next_attempt: Option<std::time::Instant>,
    counts: Arc<AuditCounts>,
}

impl<T> Reconnecting<T> {
    fn new(
        mut connect: Box<dyn FnMut() -> io::Result<T> + Send>,
        send: fn(&mut T, &[u8]) -> io::Result<()>,
        counts: Arc<AuditCounts>,
    ) -> io::Result<Self> {
        let conn = connect()?;
        Ok(Self {
            connect,
            send,
            conn: Some(conn),
            next_attempt: None,
            counts,
        })
    }

    fn reconnect(&mut self) -> io::Result<&mut T> {
        let now = std::time::Instant::now();
        if self.next_attempt.is_some_and(|t| now < t) {
            return Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "syslog is away; waiting before connecting again",
            ));
        }
        match (self.connect)() {
            Ok(c) => {
                self.next_attempt = None;
                self.counts.reconnects.fetch_add(1, Ordering::Relaxed);
                log::info!("audit sink: connected to syslog again");
                Ok(self.conn.insert(c))
            }
            Err(e) => {
                self.next_attempt = Some(now + RECONNECT_BACKOFF);
                Err(e)
            }
        }
    }

    fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        if let Some(c) = &mut self.conn {
            match (self.send)(c, bytes) {
                Ok(()) => return Ok(()),
                Err(e) => {
                    log::warn!("audit sink: syslog: {e}; connecting again");
                    self.conn = None;
                }
            }
        }
        let send = self.send;
        let c = self.reconnect()?;
        let r = send(c, bytes);
        if r.is_err() {
            self.conn = None;
        }
        r
    }
}

/// The writer thread: batches from `rx`, a queue of `capacity`, to `sink`
/// until every sender is gone (see the module's comment). It rests only
/// after a batch under a quarter of the queue: records that come faster
/// are taken at once, so a small queue drops no more than it did before
/// the batches.
fn write_batches(
    rx: &mpsc::Receiver<Msg>,
    capacity: usize,
    sink: &mut Writer,
    counts: &AuditCounts,
) {
    let busy = (capacity / 4).clamp(1, BATCH_MAX);
    let mut lines = String::new();
    let mut acks = Vec::new();
    while let Ok(first) = rx.recv() {
        let rest = std::iter::from_fn(|| rx.try_recv().ok());
        let mut taken = 0;
        let mut batched = 0;
        for msg in std::iter::once(first).chain(rest).take(BATCH_MAX) {
            taken += 1;
            match (msg, &mut *sink) {
                (Msg::Flush(ack), _) => acks.push(ack),
                (Msg::Record(q), Writer::Lines(_)) => {
                    lines.push_str(&q.json());
                    batched += 1;
                }
                (Msg::Record(q), Writer::Messages(send)) => tally(counts, 1, send(&q)),
            }
        }
        if let Writer::Lines(write) = sink
            && batched > 0
        {
            tally(counts, batched, write(lines.as_bytes()));
            lines.clear();
        }
        for ack in acks.drain(..) {
            let _ = ack.send(());
        }
        if taken < busy {
            thread::sleep(BATCH_PAUSE);
        }
    }
}

/// Counts `n` records written, or failed with `result`'s error.
fn tally(counts: &AuditCounts, n: u64, result: io::Result<()>) {
    match result {
        Ok(()) => counts.written.fetch_add(n, Ordering::Relaxed),
        Err(e) => {
            log::warn!("audit sink: {e}");
            counts.failed.fetch_add(n, Ordering::Relaxed)
        }
    };
}

impl AuditLog {
    /// Starts the writer thread for `spec` with a queue of `capacity`
    /// records. Opens the file or socket now, so a bad path fails the start.
    pub fn start(spec: &SinkSpec, capacity: usize) -> Result<Self> {
        Self::start_with(spec, capacity, FACILITY_LOCAL4)
    }

    /// [`Self::start`] with the syslog facility (RFC 5424 code).
    pub fn start_with(spec: &SinkSpec, capacity: usize, facility: u8) -> Result<Self> {
        Self::start_syslog(
            spec,
            capacity,
            SyslogFormat {
                facility,
                asa_tag: false,
            },
        )
    }

    /// [`Self::start`] with the syslog facility and tag.
    pub fn start_syslog(spec: &SinkSpec, capacity: usize, format: SyslogFormat) -> Result<Self> {
        let counts = Arc::new(AuditCounts::default());
        let reopen = Arc::new(AtomicBool::new(false));
        let reopening = reopen.clone();
        let mut sink: Writer = match spec {
            SinkSpec::Off => {
                return Ok(Self {
                    tx: None,
                    counts,
                    reopen,
                });
            }
            SinkSpec::Stdout => {
                let mut out = io::stdout();
                Writer::Lines(Box::new(move |lines| {
                    out.write_all(lines)?;
                    out.flush()
                }))
            }
            SinkSpec::File(path) => {
                let open = {
                    let path = path.clone();
                    move || OpenOptions::new().create(true).append(true).open(&path)
                };
                let mut file =
                    open().with_context(|| format!("opening the audit log {}", path.display()))?;
                let shown = path.display().to_string();
                Writer::Lines(Box::new(move |lines| {
                    // After logrotate moved the file: write to a new one.
                    // One that cannot be opened leaves the batch to the old
                    // file, lost to no one (the next reopen tries again).
                    if reopening.swap(false, Ordering::Relaxed) {
                        match open() {
                            Ok(f) => file = f,
                            Err(e) => log::warn!(
                                "audit sink: reopening {shown}: {e}; still writing to the file it replaced"
                            ),
                        }
                    }
                    file.write_all(lines)
                }))
            }
            SinkSpec::Syslog(socket) => {
                let path = socket.clone();
                let mut sock = Reconnecting::new(
                    Box::new(move || {
                        let sock = UnixDatagram::unbound()?;
                        sock.connect(&path)?;
                        Ok(sock)
                    }),
                    |s: &mut UnixDatagram, b| s.send(b).map(drop),
                    counts.clone(),
                )
                .with_context(|| format!("connecting to syslog at {}", socket.display()))?;
                let host = hostname();
                let pid = std::process::id();
                Writer::Messages(Box::new(move |q| {
                    sock.write(q.syslog(&host, pid, format).as_bytes())
                }))
            }
            SinkSpec::SyslogUdp(addr) => {
                let target = addr.clone();
                let mut sock = Reconnecting::new(
                    Box::new(move || {
                        let to = resolve(&target)?;
                        let any: std::net::SocketAddr = if to.is_ipv4() {
                            "0.0.0.0:0".parse().expect("an address")
                        } else {
                            "[::]:0".parse().expect("an address")
                        };
                        let sock = std::net::UdpSocket::bind(any)?;
                        sock.connect(to)?;
                        Ok(sock)
                    }),
                    |s: &mut std::net::UdpSocket, b| s.send(b).map(drop),
                    counts.clone(),
                )
                .with_context(|| format!("syslog over UDP to {addr}"))?;
                let host = hostname();
                let pid = std::process::id();
                Writer::Messages(Box::new(move |q| {
                    sock.write(q.syslog(&host, pid, format).as_bytes())
                }))
            }
            SinkSpec::SyslogTcp(addr) => {
                let target = addr.clone();
                let mut sock = Reconnecting::new(
                    Box::new(move || {
                        let to = resolve(&target)?;
                        let s = std::net::TcpStream::connect_timeout(
                            &to,
                            std::time::Duration::from_secs(5),
                        )?;
                        s.set_write_timeout(Some(std::time::Duration::from_secs(5)))?;
                        Ok(s)
                    }),
                    |s: &mut std::net::TcpStream, b| s.write_all(b),
                    counts.clone(),
                )
                .with_context(|| format!("connecting to syslog over TCP at {addr}"))?;
                let host = hostname();
                let pid = std::process::id();
                Writer::Messages(Box::new(move |q| {
                    // Octet counting (RFC 6587 3.4.1): `LEN SP MSG`.
                    let msg = q.syslog(&host, pid, format);
                    sock.write(format!("{} {msg}", msg.len()).as_bytes())
                }))
            }
        };
        let (tx, rx) = mpsc::sync_channel::<Msg>(capacity);
        let writer_counts = counts.clone();
        thread::Builder::new()
            .name("audit".into())
            .spawn(move || write_batches(&rx, capacity, &mut sink, &writer_counts))?;
        Ok(Self {
            tx: Some(tx),
            counts,
            reopen,
        })
    }

    /// Waits until every record queued before this call is written, or
    /// `within` passes; false then. The daemon's last act: the writer
    /// thread dies with the process.
    pub fn flush(&self, within: Duration) -> bool {
        let Some(tx) = &self.tx else {
            return true;
        };
        let deadline = Instant::now() + within;
        let (ack, done) = mpsc::sync_channel(1);
        let mut msg = Msg::Flush(ack);
        // A full queue: the writer is emptying it.
        loop {
            match tx.try_send(msg) {
                Ok(()) => break,
                Err(TrySendError::Full(back)) if Instant::now() < deadline => {
                    msg = back;
                    thread::sleep(BATCH_PAUSE);
                }
                Err(_) => return false,
            }
        }
        done.recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .is_ok()
    }

    /// A log that writes nothing (`--audit off`).
    pub fn off() -> Self {
        Self {
            tx: None,
            counts: Arc::default(),
            reopen: Arc::default(),
        }
    }

    /// Reopens a file sink (after logrotate) or reconnects to syslog,
    /// before the next record is written. Stdout stays as it is.
    pub fn reopen(&self) {
        self.reopen.store(true, Ordering::Relaxed);
    }

    /// Queues `event` for the sink; never blocks. A full queue drops it
    /// (counted in [`Self::dropped`]).
    pub fn record(&self, event: AuditEvent) {
        self.queue(Entry::Policy(None, event));
    }

    /// [`Self::record`] for a record of session `session`.
    pub fn record_in(&self, session: SessionId, event: AuditEvent) {
        self.queue(Entry::Policy(Some(session), event));
    }

    /// Queues a session's record, as [`Self::record`] does.
    pub fn record_session(&self, summary: SessionSummary) {
        self.queue(Entry::Session(Box::new(summary)));
    }

    fn queue(&self, entry: Entry) {
        let Some(tx) = &self.tx else { return };
        let queued = Queued {
            time: SystemTime::now(),
            entry,
        };
        match tx.try_send(Msg::Record(queued)) {
            Ok(()) => self.counts.queued.fetch_add(1, Ordering::Relaxed),
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.counts.dropped.fetch_add(1, Ordering::Relaxed)
            }
        };
    }

    pub fn counts(&self) -> &AuditCounts {
        &self.counts
    }

    pub fn dropped(&self) -> u64 {
        self.counts.dropped.load(Ordering::Relaxed)
    }
}

/// `2026-11-23T11:13:36.123456Z` (RFC 3339, UTC, microseconds).
pub fn rfc3339(time: SystemTime) -> String {
    let d = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Days to civil date (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        d.subsec_micros()
    )
}

/// One JSON object and a newline: the time, the firewall's id and
/// severity, the session's addresses, the firewall's text, and the fields
/// of the record.
pub fn json_line(time: SystemTime, event: &AuditEvent) -> String {
    json_policy(time, None, event)
}

/// [`json_line`], with the session's id when the record has one.
fn json_policy(time: SystemTime, session: Option<SessionId>, event: &AuditEvent) -> String {
    let mut obj = serde_json::json!({
        "time": rfc3339(time),
        "id": event.id(),
        "severity": event.severity(),
        "client": event.peers.client.to_string(),
        "server": event.peers.server.to_string(),
        "message": event.to_string(),
    });
    if let Some(id) = session {
        obj["session_id"] = id.to_string().into();
    }
    let fields = &mut obj;
    match &event.kind {
        AuditKind::Replaced { data } => fields["data"] = data.as_str().into(),
        AuditKind::MaliciousAddress { address } => fields["address"] = address.as_str().into(),
        AuditKind::Classification(c) => {
            fields["criterion"] = c.criterion.as_str().into();
            fields["action"] = c.action.as_str().into();
            fields["value"] = c.value.as_str().into();
            if let Source::Class(n) = c.source {
                fields["class"] = n.into();
            }
        }
        AuditKind::SizeViolation { declared, actual } => {
            fields["declared"] = (*declared).into();
            fields["actual"] = (*actual).into();
        }
        AuditKind::TlsStarted => {}
        AuditKind::ClientLimit(r) => {
            fields["limit"] = match r.limit {
                ClientLimit::Sessions => "per-client-sessions",
                ClientLimit::Rate => "per-client-rate",
            }
            .into();
            fields["client_key"] = r.client.as_str().into();
            fields["current"] = r.current.into();
            fields["max"] = r.max.into();
            fields["refused_since"] = r.refused_since.into();
        }
    }
    let mut line = obj.to_string();
    line.push('\n');
    line
}

/// RFC 5424: `<PRI>1 TIME HOST inspector PID ID [esmtp@32473 client=… server=…] MSG`,
/// the message as the firewall writes it (`%ASA-4-108004: …` with the
/// `INSPECTOR` tag), so searches for the ids keep working.
pub fn syslog_message(time: SystemTime, host: &str, pid: u32, event: &AuditEvent) -> String {
    syslog_message_with(time, host, pid, FACILITY_LOCAL4, event)
}

/// [`syslog_message`] with another facility.
pub fn syslog_message_with(
    time: SystemTime,
    host: &str,
    pid: u32,
    facility: u8,
    event: &AuditEvent,
) -> String {
    syslog_formatted(
        time,
        host,
        pid,
        SyslogFormat {
            facility,
            asa_tag: false,
        },
        event,
    )
}

/// [`syslog_message`] as `format` says.
pub fn syslog_formatted(
    time: SystemTime,
    host: &str,
    pid: u32,
    format: SyslogFormat,
    event: &AuditEvent,
) -> String {
    syslog_policy(time, host, pid, format, None, event)
}

/// [`syslog_formatted`], with the session's id (`session="…"`) when the
/// record has one.
fn syslog_policy(
    time: SystemTime,
    host: &str,
    pid: u32,
    format: SyslogFormat,
    session: Option<SessionId>,
    event: &AuditEvent,
) -> String {
    let sev = event.severity();
    let pri = u16::from(format.facility) * 8 + u16::from(sev);
    let tag = if format.asa_tag { "ASA" } else { "INSPECTOR" };
    let mut sd = format!("[{SD_ID}");
    if let Some(id) = session {
        let _ = write!(sd, " session=\"{id}\"");
    }
    let _ = write!(
        sd,
        " client=\"{}\" server=\"{}\"",
        event.peers.client, event.peers.server
    );
    if let AuditKind::Classification(c) = &event.kind {
        let _ = write!(
            sd,
            " criterion=\"{}\" action=\"{}\"",
            sd_escape(&c.criterion),
            sd_escape(&c.action)
        );
    }
    sd.push(']');
    format!(
        "<{pri}>1 {} {} inspector {pid} {} {sd} %{tag}-{sev}-{}: {event}",
        rfc3339(time),
        header_field(host),
        event.id(),
        event.id()
    )
}

/// A session record: informational, MSGID `session`, the `INSPECTOR`
/// tag whatever `tag` says (the firewall has no such record for a SIEM's
/// parser to expect).
fn syslog_session(
    time: SystemTime,
    host: &str,
    pid: u32,
    facility: u8,
    s: &SessionSummary,
) -> String {
    const INFO: u16 = 6;
    let pri = u16::from(facility) * 8 + INFO;
    format!(
        "<{pri}>1 {} {} inspector {pid} session [{SD_ID} session=\"{}\" client=\"{}\" server=\"{}\" outcome=\"{}\"] %INSPECTOR-{INFO}-session: {}",
        rfc3339(time),
        header_field(host),
        s.id,
        s.peers.client,
        s.peers.server,
        s.outcome,
        s.text()
    )
}

/// SD-PARAM values escape `"`, `\` and `]` (RFC 5424 6.3.3).
fn sd_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '"' | '\\' | ']') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// A header field: printable US-ASCII without spaces, at most 255, or `-`.
fn header_field(s: &str) -> String {
    let f: String = s
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(255)
        .collect();
    if f.is_empty() { "-".into() } else { f }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default()
}

/// The first address `HOST:PORT` resolves to (a remote syslog collector).
fn resolve(target: &str) -> io::Result<std::net::SocketAddr> {
    std::net::ToSocketAddrs::to_socket_addrs(target)?
        .next()
        .ok_or_else(|| io::Error::other("no address"))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use inspector_esmtp::{
        Peers,
        audit::{Classification, Verdict},
    };

    use super::*;

    fn event(kind: AuditKind) -> AuditEvent {
        AuditEvent {
            peers: Peers {
                client: "198.18.0.2:40000".parse().unwrap(),
                server: "198.18.1.25:25".parse().unwrap(),
            },
            kind,
        }
    }

    fn classification() -> AuditEvent {
        event(AuditKind::Classification(Classification {
            verdict: Verdict::Dropped,
            source: Source::Class(1),
            criterion: "cmd RCPT count gt 100".into(),
            action: "drop-connection \"log\"]".into(),
            value: "101".into(),
        }))
    }

    /// 2026-11-23T11:13:36.5Z
    fn t() -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(1_795_432_416_500)
    }

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000000Z");
        assert_eq!(rfc3339(t()), "2026-11-23T11:13:36.500000Z");
        // A leap day.
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00.000000Z");
    }

    #[test]
    fn json_lines_carry_id_severity_and_addresses() {
        let line = json_line(t(), &classification());
        assert!(line.ends_with('\n') && !line.trim_end().contains('\n'));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["id"], 108004);
        assert_eq!(v["severity"], 4);
        assert_eq!(v["client"], "198.18.0.2:40000");
        assert_eq!(v["server"], "198.18.1.25:25");
        assert_eq!(v["time"], "2026-11-23T11:13:36.500000Z");
        assert_eq!(v["class"], 1);
        assert_eq!(v["value"], "101");
        assert!(
            v["message"]
                .as_str()
                .unwrap()
                .starts_with("ESMTP Classification: Dropped connection")
        );
        let size = json_line(
            t(),
            &event(AuditKind::SizeViolation {
                declared: 10,
                actual: 20,
            }),
        );
        let v: serde_json::Value = serde_json::from_str(&size).unwrap();
        assert_eq!(
            (v["id"].as_u64(), v["severity"].as_u64()),
            (Some(108006), Some(7))
        );
        assert_eq!(v["actual"], 20);
    }

    #[test]
    fn policy_records_carry_their_session_id() {
        let id = SessionId(0x6a3f_1c20_0000_0001);
        let v: serde_json::Value =
            serde_json::from_str(&json_policy(t(), Some(id), &classification())).unwrap();
        assert_eq!(v["session_id"], "6a3f1c2000000001");
        let asa = SyslogFormat {
            facility: 20,
            asa_tag: true,
        };
        let m = syslog_policy(t(), "gw", 42, asa, Some(id), &classification());
        assert!(
            m.starts_with(
                "<164>1 2026-11-23T11:13:36.500000Z gw inspector 42 108004 \
                 [esmtp@32473 session=\"6a3f1c2000000001\" client=\"198.18.0.2:40000\""
            ),
            "{m}"
        );
        assert!(m.contains("] %ASA-4-108004: "), "{m}");
        // Without a session (the admission's records): no field.
        assert!(!json_line(t(), &classification()).contains("session_id"));
    }

    #[test]
    fn session_records_in_syslog_are_informational_and_tagged_inspector() {
        let s = SessionSummary {
            id: SessionId(1),
            peers: classification().peers,
            started: t(),
            duration_ms: 5,
            seen: Default::default(),
            tls: true,
            criteria: Vec::new(),
            more_criteria: 0,
            outcome: "closed",
        };
        // local4 (20) * 8 + informational (6) = 166.
        assert_eq!(
            syslog_session(t(), "gw", 42, 20, &s),
            "<166>1 2026-11-23T11:13:36.500000Z gw inspector 42 session [esmtp@32473 \
             session=\"0000000000000001\" client=\"198.18.0.2:40000\" server=\"198.18.1.25:25\" \
             outcome=\"closed\"] %INSPECTOR-6-session: session 0000000000000001 src \
             198.18.0.2/40000 dest 198.18.1.25/25 helo - tls yes duration 5ms outcome closed"
        );
    }

    #[test]
    fn syslog_messages_are_rfc5424() {
        let m = syslog_message(t(), "gw 1", 42, &classification());
        // local4 (20) * 8 + warning (4) = 164.
        assert_eq!(
            m,
            "<164>1 2026-11-23T11:13:36.500000Z gw1 inspector 42 108004 \
             [esmtp@32473 client=\"198.18.0.2:40000\" server=\"198.18.1.25:25\" \
             criterion=\"cmd RCPT count gt 100\" action=\"drop-connection \\\"log\\\"\\]\"] \
             %INSPECTOR-4-108004: ESMTP Classification: Dropped connection for ESMTP Request \
             from outside:198.18.0.2/40000 to inside:198.18.1.25/25; matched Class 1: cmd RCPT count gt 100"
        );
        let tls = syslog_message(t(), "", 1, &event(AuditKind::TlsStarted));
        // mail (2) * 8 + informational (6) = 22.
        assert!(
            syslog_message_with(t(), "h", 1, 2, &event(AuditKind::TlsStarted))
                .starts_with("<22>1 ")
        );
        assert!(tls.starts_with("<166>1 2026-11-23T11:13:36.500000Z - inspector 1 108007 "));
    }

    /// Records queued before the writer runs: the batches `write_batches`
    /// makes of them (one write each) and the lines they carry.
    fn batches_of(records: usize) -> (Vec<usize>, AuditCounts) {
        let (tx, rx) = mpsc::sync_channel(records);
        for _ in 0..records {
            let entry = Entry::Policy(None, classification());
            tx.try_send(Msg::Record(Queued { time: t(), entry }))
                .unwrap();
        }
        drop(tx);
        let writes = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = writes.clone();
        let mut sink = Writer::Lines(Box::new(move |lines: &[u8]| {
            let n = lines.iter().filter(|&&b| b == b'\n').count();
            seen.lock().unwrap().push(n);
            Ok(())
        }));
        let counts = AuditCounts::default();
        write_batches(&rx, records, &mut sink, &counts);
        let writes = writes.lock().unwrap().clone();
        (writes, counts)
    }

    #[test]
    fn queued_records_go_out_in_one_write_per_batch() {
        let (writes, counts) = batches_of(500);
        assert_eq!(writes, [500]);
        assert_eq!(counts.written.load(Ordering::Relaxed), 500);
        let (writes, counts) = batches_of(2 * BATCH_MAX + 7);
        assert_eq!(writes, [BATCH_MAX, BATCH_MAX, 7]);
        assert_eq!(
            counts.written.load(Ordering::Relaxed),
            2 * BATCH_MAX as u64 + 7
        );
    }

    #[test]
    fn a_flush_returns_once_what_was_queued_is_in_the_file() {
        let path =
            std::env::temp_dir().join(format!("inspector-audit-flush-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let log = AuditLog::start(&SinkSpec::File(path.clone()), 4096).unwrap();
        for _ in 0..3000 {
            log.record(classification());
        }
        assert!(log.flush(Duration::from_secs(5)));
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(text.lines().count(), 3000);
        assert_eq!(log.counts().written.load(Ordering::Relaxed), 3000);
        assert!(AuditLog::off().flush(Duration::ZERO));
    }
}
