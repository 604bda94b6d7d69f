//! The Prometheus endpoint: `GET /metrics` in the OpenMetrics text format.
//!
//! Kernel counters are per-CPU; they are read from the pinned maps and
//! summed at scrape time (nothing is cached). The ESMTP families come from
//! the daemon's [`EsmtpState`]. Every label has a bounded set of values:
//! classes, drop reasons (limits and parse) and intercept events are fixed lists, servers are
//! the policy's protected servers, criteria are the policy's lines.

use std::{
    fmt,
    net::SocketAddr,
    path::{Path, PathBuf},
    str::FromStr,
    sync::Arc,
    time::Duration,
};

use anyhow::{Context, Result};
use inspector_common::{Class, DropReason, InterceptEvent, ParseDrop};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
    registry::Registry,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

use super::{
    admission::RefusalReason,
    esmtp::{ErrorReason, EsmtpState, SessionOutcome},
};
use crate::kernel::{
    clients,
    counters::{ClassStats, ParseDrops},
    limits::LimitStats,
};

/// The default address of the endpoint: loopback only.
pub const DEFAULT_ADDR: &str = "127.0.0.1:9725";
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// A request bigger than this, or slower than [`REQUEST_TIMEOUT`], is refused.
const MAX_REQUEST: usize = 8192;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// `--metrics ADDR` or `--metrics off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricsAddr {
    Off,
    Listen(SocketAddr),
}

impl FromStr for MetricsAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if s == "off" {
            return Ok(Self::Off);
        }
        s.parse()
            .map(Self::Listen)
            .map_err(|_| format!("`{s}`: expected ADDRESS:PORT (e.g. {DEFAULT_ADDR}) or off"))
    }
}

/// Reads the kernel's counters and the ESMTP state at each scrape.
pub struct InspectorCollector {
    pin_dir: PathBuf,
    esmtp: Arc<EsmtpState>,
}

impl fmt::Debug for InspectorCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InspectorCollector")
            .field("pin_dir", &self.pin_dir)
            .finish_non_exhaustive()
    }
}

/// One counter family: `name` (without `_total`, which the encoder adds)
/// with one sample per label set.
fn counters<'a, L>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (L, u64)>,
) -> fmt::Result
where
    L: prometheus_client::encoding::EncodeLabelSet + 'a,
{
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, value) in samples {
        ConstCounter::new(value).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

fn gauges<L>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (L, i64)>,
) -> fmt::Result
where
    L: prometheus_client::encoding::EncodeLabelSet,
{
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, value) in samples {
        ConstGauge::new(value).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

/// A family of one sample without labels.
fn single(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    value: u64,
) -> fmt::Result {
    let metric = encoder.encode_descriptor(name, help, None, kind)?;
    match kind {
        MetricType::Gauge => ConstGauge::new(value as i64).encode(metric),
        _ => ConstCounter::new(value).encode(metric),
    }
}

type Labels = Vec<(&'static str, String)>;

fn one(key: &'static str, value: impl Into<String>) -> Labels {
    vec![(key, value.into())]
}

impl Collector for InspectorCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> fmt::Result {
        match ClassStats::read(&self.pin_dir) {
            Ok(classes) => {
                counters(
                    &mut e,
                    "inspector_packets",
                    "Packets seen by the XDP classifier, by class",
                    Class::ALL
                        .iter()
                        .map(|&c| (one("class", c.name()), classes.get(c).packets)),
                )?;
                counters(
                    &mut e,
                    "inspector_bytes",
                    "Bytes seen by the XDP classifier, by class",
                    Class::ALL
                        .iter()
                        .map(|&c| (one("class", c.name()), classes.get(c).bytes)),
                )?;
            }
            Err(err) => log::warn!("metrics: reading the class counters: {err:#}"),
        }
        match ParseDrops::read(&self.pin_dir) {
            Ok(drops) => counters(
                &mut e,
                "inspector_parse_drops",
                "Packets the classifier dropped for their shape, by reason: TCP fragments \
                 to port 25 or a protected server, tiny or overlapping fragments, packets \
                 it cannot parse that could be TCP to port 25",
                ParseDrop::ALL
                    .iter()
                    .map(|&r| (one("reason", r.name()), drops.get(r))),
            )?,
            Err(err) => log::warn!("metrics: reading the parse drops: {err:#}"),
        }
        match LimitStats::read(&self.pin_dir, 0) {
            Ok(limits) => {
                counters(
                    &mut e,
                    "inspector_limit_drops",
                    "SYNs dropped by the connection limits, by the limit that dropped them \
                     (the kernel counts per reason, not per server)",
                    DropReason::ALL
                        .iter()
                        .map(|&r| (one("reason", r.name()), limits.drops[r as usize])),
                )?;
                counters(
                    &mut e,
                    "inspector_intercept_events",
                    "TCP intercept events: SYN cookies sent, clients verified, servers opened",
                    InterceptEvent::ALL
                        .iter()
                        .map(|&ev| (one("event", ev.name()), limits.intercepts[ev as usize])),
                )?;
                gauges(
                    &mut e,
                    "inspector_server_connections",
                    "Current connections to each protected server, by state",
                    limits.servers.iter().flat_map(|s| {
                        let server = s.address.to_string();
                        [("embryonic", s.embryonic), ("established", s.established)].map(
                            |(state, n)| {
                                (
                                    vec![("server", server.clone()), ("state", state.to_string())],
                                    n as i64,
                                )
                            },
                        )
                    }),
                )?;
            }
            Err(err) => log::warn!("metrics: reading the limits: {err:#}"),
        }
        match clients::blocked(&self.pin_dir) {
            Ok(blocked) => single(
                &mut e,
                "inspector_clients_blocked",
                "Clients at their per-client session limit whose new SYNs XDP drops now \
                 (counted in inspector_limit_drops_total{reason=\"per-client\"})",
                MetricType::Gauge,
                blocked.len() as u64,
            )?,
            Err(err) => log::warn!("metrics: reading the client blocks: {err:#}"),
        }

        let esmtp = &self.esmtp;
        single(
            &mut e,
            "inspector_esmtp_sessions_active",
            "ESMTP sessions being inspected now",
            MetricType::Gauge,
            esmtp.sessions_active(),
        )?;
        counters(
            &mut e,
            "inspector_esmtp_sessions",
            "Inspected ESMTP sessions that ended, by outcome",
            SessionOutcome::ALL
                .iter()
                .map(|&o| (one("outcome", o.name()), esmtp.sessions_total(o))),
        )?;
        let (packet, drop, reset_drop) = esmtp.totals();
        single(
            &mut e,
            "inspector_esmtp_inspected",
            "SMTP commands and replies inspected (`packet N` of show service-policy)",
            MetricType::Counter,
            packet,
        )?;
        counters(
            &mut e,
            "inspector_esmtp_closed",
            "Sessions closed by the policy: drop-connection (`drop N`) or reset (`reset-drop N`)",
            [
                (one("action", "drop-connection"), drop),
                (one("action", "reset"), reset_drop),
            ],
        )?;
        // Labels that stay when a threshold is edited: the class (the
        // rule's number, or the parameter) and the criterion's kind; the
        // text is in the info family.
        let current = esmtp.current();
        let criteria = current.stats.criteria(&current.policy);
        let stable = stable_labels(&current.policy);
        counters(
            &mut e,
            "inspector_esmtp_matches",
            "Hits of each criterion of the ESMTP policy, by class (its match line's number, or the parameter) and kind; the text is in inspector_esmtp_criterion_info",
            criteria.iter().zip(&stable).map(|(c, (class, kind))| {
                (
                    vec![("class", class.clone()), ("kind", kind.to_string())],
                    c.hits,
                )
            }),
        )?;
        let admission = &esmtp.admission;
        counters(
            &mut e,
            "inspector_sessions_refused",
            "New sessions the proxy refused, by reason",
            RefusalReason::ALL
                .iter()
                .map(|&r| (one("reason", r.name()), admission.refused(r))),
        )?;
        single(
            &mut e,
            "inspector_sessions_evicted",
            "Idle sessions closed to give their slot to a client holding fewer",
            MetricType::Counter,
            admission.evicted(),
        )?;
        single(
            &mut e,
            "inspector_stress",
            "1 while the proxy is in stress mode (short greeting, command and idle timeouts)",
            MetricType::Gauge,
            u64::from(admission.stress()),
        )?;
        single(
            &mut e,
            "inspector_stress_entered",
            "Times the proxy entered stress mode",
            MetricType::Counter,
            admission.stress_entered(),
        )?;
        single(
            &mut e,
            "inspector_session_clients",
            "Clients (addresses, or IPv6 prefixes) holding at least one session",
            MetricType::Gauge,
            admission.clients(),
        )?;
        gauges(
            &mut e,
            "inspector_esmtp_criterion_info",
            "The text and action of each criterion of the ESMTP policy (always 1)",
            criteria.into_iter().zip(stable).map(|(c, (class, kind))| {
                (
                    vec![
                        ("class", class),
                        ("kind", kind.to_string()),
                        ("criterion", c.criterion),
                        ("action", c.action),
                    ],
                    1,
                )
            }),
        )?;
        single(
            &mut e,
            "inspector_audit_dropped",
            "Audit records dropped because the sink was slower than the records came",
            MetricType::Counter,
            esmtp.audit.dropped(),
        )?;
        self.encode_daemon(&mut e)
    }
}

impl InspectorCollector {
    /// The daemon itself: build, readiness, the proxy's capacity, audit
    /// write failures, file descriptors.
    fn encode_daemon(&self, e: &mut DescriptorEncoder) -> fmt::Result {
        use std::sync::atomic::Ordering;
        let esmtp = &self.esmtp;
        counters(
            e,
            "inspector_esmtp_session_errors",
            "Sessions that ended in error, by why: the server unreachable, a timeout, a reset or failed write",
            ErrorReason::ALL
                .iter()
                .map(|&r| (one("reason", r.name()), esmtp.session_errors(r))),
        )?;
        gauges(
            e,
            "inspector_build_info",
            "The inspector's version (always 1)",
            [(one("version", super::process::VERSION), 1)],
        )?;
        single(
            e,
            "inspector_ready",
            "1 once the daemon is attached and its proxy listens; 0 while it starts or drains",
            MetricType::Gauge,
            u64::from(esmtp.ready.load(Ordering::Relaxed)),
        )?;
        single(
            e,
            "inspector_proxy_max_sessions",
            "The proxy's max-sessions (0 without a proxy)",
            MetricType::Gauge,
            esmtp.max_sessions.load(Ordering::Relaxed),
        )?;
        single(
            e,
            "inspector_audit_write_failures",
            "Audit records the sink failed to write (an I/O error)",
            MetricType::Counter,
            esmtp.audit.counts().failed.load(Ordering::Relaxed),
        )?;
        single(
            e,
            "inspector_audit_reconnects",
            "Connections to syslog made again after one was lost (its server restarted)",
            MetricType::Counter,
            esmtp.audit.counts().reconnects.load(Ordering::Relaxed),
        )?;
        if let Some(n) = super::process::open_fds() {
            single(
                e,
                "inspector_open_fds",
                "Open file descriptors of the daemon",
                MetricType::Gauge,
                n,
            )?;
        }
        if let Some(n) = super::process::max_fds() {
            single(
                e,
                "inspector_max_fds",
                "The daemon's limit of open file descriptors (RLIMIT_NOFILE, soft)",
                MetricType::Gauge,
                n,
            )?;
        }
        Ok(())
    }
}

/// `(class, kind)` of each entry of `PolicyStats::criteria`, in its order:
/// the parameters (class and kind their name), then each `match` line
/// (class its number from 1, kind the criterion without its values).
fn stable_labels(policy: &inspector_esmtp::policy::EsmtpPolicy) -> Vec<(String, &'static str)> {
    use inspector_esmtp::policy::Criterion as C;
    let mut out = Vec::new();
    for (on, name) in [
        (policy.mask_banner, "mask-banner"),
        (policy.mail_relay.is_some(), "mail-relay"),
        (policy.special_character.is_some(), "special-character"),
        (policy.allow_tls.is_some(), "allow-tls"),
    ] {
        if on {
            out.push((name.to_string(), name));
        }
    }
    for (i, rule) in policy.rules.iter().enumerate() {
        let kind = match (&rule.criterion, rule.negate) {
            (C::BodyLineLength(_), false) => "body line length",
            (C::BodyLineLength(_), true) => "not body line length",
            (C::BodyLength(_), false) => "body length",
            (C::BodyLength(_), true) => "not body length",
            (C::CmdLineLength(_), false) => "cmd line length",
            (C::CmdLineLength(_), true) => "not cmd line length",
            (C::CmdRcptCount(_), false) => "cmd RCPT count",
            (C::CmdRcptCount(_), true) => "not cmd RCPT count",
            (C::CmdVerb(_), false) => "cmd verb",
            (C::CmdVerb(_), true) => "not cmd verb",
            (C::EhloReplyParameter(_), false) => "ehlo-reply-parameter",
            (C::EhloReplyParameter(_), true) => "not ehlo-reply-parameter",
            (C::HeaderLineLength(_), false) => "header line length",
            (C::HeaderLineLength(_), true) => "not header line length",
            (C::HeaderLength(_), false) => "header length",
            (C::HeaderLength(_), true) => "not header length",
            (C::HeaderToFieldsCount(_), false) => "header to-fields count",
            (C::HeaderToFieldsCount(_), true) => "not header to-fields count",
            (C::InvalidRecipientsCount(_), false) => "invalid-recipients count",
            (C::InvalidRecipientsCount(_), true) => "not invalid-recipients count",
            (C::MimeFiletypeRegex(_), false) => "MIME filetype regex",
            (C::MimeFiletypeRegex(_), true) => "not MIME filetype regex",
            (C::MimeFilenameLength(_), false) => "MIME filename length",
            (C::MimeFilenameLength(_), true) => "not MIME filename length",
            (C::MimeEncoding(_), false) => "MIME encoding",
            (C::MimeEncoding(_), true) => "not MIME encoding",
            (C::SenderAddressRegex(_), false) => "sender-address regex",
            (C::SenderAddressRegex(_), true) => "not sender-address regex",
            (C::SenderAddressLength(_), false) => "sender-address length",
            (C::SenderAddressLength(_), true) => "not sender-address length",
        };
        out.push(((i + 1).to_string(), kind));
    }
    out
}

/// The registry every scrape encodes.
pub fn registry(pin_dir: &Path, esmtp: Arc<EsmtpState>) -> Registry {
    let mut registry = Registry::default();
    let timings = esmtp.timings.clone();
    registry.register_collector(Box::new(InspectorCollector {
        pin_dir: pin_dir.to_path_buf(),
        esmtp,
    }));
    registry.register(
        "inspector_session_duration_seconds",
        "How long inspected sessions lasted, from accept to close",
        timings.session_duration,
    );
    registry.register(
        "inspector_upstream_connect_seconds",
        "How long connecting to the server took (successful connects)",
        timings.upstream_connect,
    );
    registry
}

/// The body of `GET /metrics`.
pub fn render(registry: &Registry) -> String {
    let mut body = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut body, registry) {
        log::warn!("metrics: encoding: {e}");
    }
    body
}

/// Binds the endpoint now (so a taken port fails the start).
pub async fn bind(addr: SocketAddr) -> Result<TcpListener> {
    if !addr.ip().is_loopback() {
        log::warn!("metrics endpoint on {addr} is reachable from the network (not loopback)");
    }
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the metrics endpoint on {addr}"))
}

/// Serves `GET /metrics` until the task is dropped; one task per client.
pub async fn serve(listener: TcpListener, registry: Arc<Registry>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let registry = registry.clone();
                tokio::spawn(async move {
                    if let Err(e) = handle(stream, registry).await {
                        log::debug!("metrics: {e}");
                    }
                });
            }
            Err(e) => {
                log::warn!("metrics: accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// A minimal HTTP/1.x server: one request per connection, then close.
async fn handle(mut stream: TcpStream, registry: Arc<Registry>) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let read = tokio::time::timeout(REQUEST_TIMEOUT, async {
        let mut chunk = [0u8; 1024];
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < MAX_REQUEST {
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        Ok::<_, std::io::Error>(())
    })
    .await;
    let (status, content_type, body) = match read {
        Err(_) => ("408 Request Timeout", "text/plain", "timeout\n".to_string()),
        Ok(Err(e)) => return Err(e),
        // Reading the maps is a handful of syscalls: off the runtime's
        // thread, so a scrape never holds up the sessions.
        Ok(Ok(())) => tokio::task::spawn_blocking(move || route(&buf, &registry))
            .await
            .map_err(std::io::Error::other)?,
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}

fn route(request: &[u8], registry: &Registry) -> (&'static str, &'static str, String) {
    let line = request.split(|&b| b == b'\r').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split(' ');
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    if !request.windows(4).any(|w| w == b"\r\n\r\n") {
        return ("400 Bad Request", "text/plain", "bad request\n".into());
    }
    match (method, path) {
        ("GET", "/metrics") => ("200 OK", CONTENT_TYPE, render(registry)),
        ("GET", "/") => (
            "200 OK",
            "text/plain",
            "inspector: metrics at /metrics\n".into(),
        ),
        ("GET", _) => ("404 Not Found", "text/plain", "not found\n".into()),
        _ => ("405 Method Not Allowed", "text/plain", "GET only\n".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::audit::AuditLog;

    #[test]
    fn addresses_parse() {
        assert_eq!("off".parse(), Ok(MetricsAddr::Off));
        assert_eq!(
            DEFAULT_ADDR.parse(),
            Ok(MetricsAddr::Listen("127.0.0.1:9725".parse().unwrap()))
        );
        assert!("9725".parse::<MetricsAddr>().is_err());
    }

    /// A real engine session, driven as the proxy will, moves the ESMTP
    /// families of the next scrape.
    #[test]
    fn esmtp_families_follow_the_sessions() {
        let policy = crate::config::Policy::parse(
            std::path::Path::new("test.toml"),
            "[esmtp]\n[[esmtp.match]]\nmatch = \"cmd verb VRFY\"\naction = \"drop-connection log\"\n",
        )
        .unwrap();
        let state = Arc::new(EsmtpState::new(policy.esmtp, AuditLog::off()));
        let reg = registry(Path::new("/nonexistent/inspector"), state.clone());
        let mut guard = state.session_started();
        assert!(render(&reg).contains("\ninspector_esmtp_sessions_active 1\n"));
        let mut session = state.new_session(inspector_esmtp::Peers {
            client: "198.18.0.2:40000".parse().unwrap(),
            server: "198.18.1.25:25".parse().unwrap(),
        });
        let now = std::time::Instant::now();
        let mut out = inspector_esmtp::Output::default();
        session.on_server_data(b"220 mx ESMTP\r\n", now, &mut out);
        session.on_client_data(b"VRFY root\r\n", now, &mut out);
        state.audit_all(out.audit);
        guard.set_outcome(SessionOutcome::from_close(out.close));
        drop(guard);
        let body = render(&reg);
        for line in [
            "inspector_esmtp_sessions_active 0",
            "inspector_esmtp_sessions_total{outcome=\"dropped\"} 1",
            "inspector_esmtp_closed_total{action=\"drop-connection\"} 1",
            "inspector_esmtp_matches_total{class=\"1\",kind=\"cmd verb\"} 1",
            "inspector_esmtp_criterion_info{class=\"1\",kind=\"cmd verb\",criterion=\"match cmd verb VRFY\",action=\"drop-connection log\"} 1",
        ] {
            assert!(
                body.contains(&format!("\n{line}\n")),
                "{line} not in {body}"
            );
        }
    }

    /// Editing a threshold keeps a criterion's labels; only its info moves.
    #[test]
    fn criterion_labels_stay_when_a_threshold_changes() {
        let labels = |limit: u32| {
            let policy = crate::config::Policy::parse(
                std::path::Path::new("test.toml"),
                &format!("[esmtp]\nmail-relay = {{ domain = \"example.com\", action = \"log\" }}\n[[esmtp.match]]\nmatch = \"cmd RCPT count gt {limit}\"\naction = \"drop-connection log\"\n[[esmtp.match]]\nmatch = \"not cmd verb HELO\"\naction = \"log\"\n"),
            )
            .unwrap();
            let state = Arc::new(EsmtpState::new(policy.esmtp, AuditLog::off()));
            let body = render(&registry(Path::new("/nonexistent/inspector"), state));
            let matches: Vec<String> = body
                .lines()
                .filter(|l| l.starts_with("inspector_esmtp_matches_total"))
                .map(String::from)
                .collect();
            (matches, body)
        };
        let (a, body_a) = labels(100);
        let (b, body_b) = labels(50);
        assert_eq!(a, b);
        assert_eq!(
            a,
            [
                "inspector_esmtp_matches_total{class=\"mask-banner\",kind=\"mask-banner\"} 0",
                "inspector_esmtp_matches_total{class=\"mail-relay\",kind=\"mail-relay\"} 0",
                "inspector_esmtp_matches_total{class=\"1\",kind=\"cmd RCPT count\"} 0",
                "inspector_esmtp_matches_total{class=\"2\",kind=\"not cmd verb\"} 0",
            ]
        );
        assert!(body_a.contains("inspector_esmtp_criterion_info{class=\"1\",kind=\"cmd RCPT count\",criterion=\"match cmd RCPT count gt 100\",action=\"drop-connection log\"} 1\n"));
        assert!(body_b.contains("criterion=\"match cmd RCPT count gt 50\""));
    }

    #[test]
    fn routes() {
        let state = Arc::new(EsmtpState::new(Default::default(), AuditLog::off()));
        // No pinned maps here: the kernel families are left out, the ESMTP ones stay.
        let reg = registry(Path::new("/nonexistent/inspector"), state);
        let (status, ctype, body) = route(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", &reg);
        assert_eq!((status, ctype), ("200 OK", CONTENT_TYPE));
        assert!(
            body.contains("inspector_esmtp_sessions_active 0\n"),
            "{body}"
        );
        assert!(
            body.contains(
                "inspector_esmtp_matches_total{class=\"mask-banner\",kind=\"mask-banner\"} 0\n"
            ),
            "{body}"
        );
        assert!(body.ends_with("# EOF\n"));
        assert_eq!(route(b"GET /x HTTP/1.1\r\n\r\n", &reg).0, "404 Not Found");
        assert_eq!(
            route(b"POST /metrics HTTP/1.1\r\n\r\n", &reg).0,
            "405 Method Not Allowed"
        );
        assert_eq!(route(b"GET /metrics", &reg).0, "400 Bad Request");
    }
}
