//! Admission: whether a new session may start, and what the proxy does when
//! one client, or all of them together, ask for more than it holds.
//!
//! - **Per client** (Postfix's anvil): a client is its address, an IPv6
//!   client the network of `client-prefix-v6` bits around it (default /64:
//!   a host rotating addresses inside its /64 counts once). It may hold
//!   `per-client-sessions` sessions at once and open `per-client-rate` per
//!   minute (attempts count, refused ones too, as anvil counts them);
//!   over either it is answered `421 4.7.0` and closed, counted by reason,
//!   with an audit record (201013) at most once a minute per client.
//! - **Fair admission**: at `max-sessions`, a newcomer whose client holds
//!   `n` sessions takes the slot of the longest-idle session of the client
//!   holding the most, if that client holds at least `n + 2` (so the slot
//!   moves towards a fairer split, never back and forth). Idle means
//!   between commands, waiting for the client: never in DATA, never
//!   waiting for a server's reply, never after STARTTLS, so no message is
//!   lost; the evicted session gets `421 4.3.2` and is closed. With no such
//!   session the newcomer is refused as before.
//! - **Stress mode** (Postfix's STRESS_README): at `stress-threshold`
//!   percent of `max-sessions` or of the memory budget, the greeting,
//!   command and idle timeouts shrink to `stress-timeout` (the DATA timeout
//!   stays); sessions already idle longer are closed at once. It ends when
//!   occupancy falls an eighth of the threshold below it (80 %: below 70 %),
//!   so it does not flap at the threshold.
//!
//! - **In the kernel**: a client that reaches `per-client-sessions` is
//!   told to an [`AtLimit`] (the daemon's `kernel::clients`, whose XDP
//!   check drops the client's next SYNs before a socket exists) and untold
//!   when it falls below; the refusals above are then for the SYNs that
//!   were on their way.
//!
//! The state is one table behind a mutex, taken for a few operations per
//! new session and per ended one; a session reports whether it is idle,
//! and the memory it holds, through atomics of its own ([`Ticket`]).

use std::{
    collections::{BTreeSet, HashMap},
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::{
        Arc, Mutex, MutexGuard, OnceLock,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use inspector_esmtp::{
    AuditEvent, AuditKind, Peers, SESSION_MEMORY_BOUND,
    audit::{ClientLimit, ClientLimitRecord},
};
use tokio::sync::{Notify, watch};

use super::session::READ_BUF;
use crate::{
    config::{ClientLimits, ProxyConfig, SessionTimeouts, StressPolicy},
    observe::{
        admission::{AdmissionCounts, RefusalReason},
        audit::AuditLog,
    },
};

/// Sent to a session of the client holding the most, to make room.
pub const EVICTED: &[u8] = b"421 4.3.2 Service busy, closing an idle session, try again later\r\n";
/// Sent to a client over `max-sessions`, when no slot could be freed.
pub const TOO_MANY: &[u8] = b"421 4.3.2 Too many sessions, try again later\r\n";

/// Anvil's `anvil_rate_time_unit`.
pub const RATE_WINDOW: Duration = Duration::from_secs(60);
/// A client's refusals are noted in the log and the audit log at most this
/// often.
pub const NOTE_EVERY: Duration = Duration::from_secs(60);

/// A client as the per-client limits count it: an address, or a network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientKey {
    /// The address with the bits past `prefix` cleared.
    pub network: IpAddr,
    pub prefix: u8,
}

impl ClientKey {
    pub fn of(ip: IpAddr, prefix_v4: u8, prefix_v6: u8) -> Self {
        match ip {
            IpAddr::V4(a) => {
                let prefix = prefix_v4.min(32);
                let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
                Self {
                    network: Ipv4Addr::from(u32::from(a) & mask).into(),
                    prefix,
                }
            }
            IpAddr::V6(a) => {
                let prefix = prefix_v6.min(128);
                let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
                Self {
                    network: Ipv6Addr::from(u128::from(a) & mask).into(),
                    prefix,
                }
            }
        }
    }

    fn is_host(&self) -> bool {
        self.prefix == if self.network.is_ipv4() { 32 } else { 128 }
    }
}

impl fmt::Display for ClientKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_host() {
            write!(f, "{}", self.network)
        } else {
            write!(f, "{}/{}", self.network, self.prefix)
        }
    }
}

/// Who else holds a client at its session limit (the kernel, see
/// `kernel::clients`). Called under the admission's lock, so the calls for
/// one client come in the order of its sessions.
pub trait AtLimit: Send + Sync {
    /// `client` reached its limit (`true`) or fell below it (`false`).
    fn set(&self, client: ClientKey, at_limit: bool);
    /// Once a second: the clients at their limit still are.
    fn renew(&self);
}

/// What the admission decided for a new session.
pub enum Admit {
    /// Start the session; it counts while the ticket lives.
    Yes(Ticket),
    /// Answer `reply` and close.
    No {
        reason: RefusalReason,
        reply: Vec<u8>,
    },
}

/// One session's place in the table, shared with the table.
#[derive(Debug)]
struct Cell {
    id: u64,
    /// When the session became idle, in ms since the admission's epoch plus
    /// one; 0 while it is not idle.
    idle_since: AtomicU64,
    evicted: AtomicBool,
    wake: Notify,
    /// Memory the session reported holding.
    bytes: AtomicU64,
}

#[derive(Debug)]
struct Client {
    sessions: Vec<Arc<Cell>>,
    /// Anvil's rate: attempts since `window_start`.
    window_start: Instant,
    attempts: u32,
    /// When a refusal of this client was last logged and audited, and how
    /// many were refused since.
    noted: Option<Instant>,
    refused_since: u64,
}

impl Client {
    fn new(now: Instant) -> Self {
        Self {
            sessions: Vec::new(),
            window_start: now,
            attempts: 0,
            noted: None,
            refused_since: 0,
        }
    }

    /// Nothing left to remember: no session, the rate window and the note
    /// window over.
    fn forgettable(&self, now: Instant) -> bool {
        self.sessions.is_empty()
            && now.duration_since(self.window_start) >= RATE_WINDOW
            && self
                .noted
                .is_none_or(|t| now.duration_since(t) >= NOTE_EVERY)
            && self.refused_since == 0
    }
}

#[derive(Debug, Default)]
struct Table {
    clients: HashMap<ClientKey, Client>,
    /// `(sessions, client)` of every client holding one or more, so the
    /// client holding the most is the last.
    ranking: BTreeSet<(usize, ClientKey)>,
    sessions: usize,
    next_id: u64,
}

impl Table {
    /// Moves `key` in the ranking from `before` sessions to its count now.
    fn rerank(&mut self, key: ClientKey, before: usize) {
        let now = self.clients.get(&key).map_or(0, |c| c.sessions.len());
        if before > 0 {
            self.ranking.remove(&(before, key));
        }
        if now > 0 {
            self.ranking.insert((now, key));
        }
    }
}

pub struct Admission {
    limits: ClientLimits,
    max_sessions: usize,
    stress_policy: StressPolicy,
    memory_budget: u64,
    epoch: Instant,
    table: Mutex<Table>,
    /// Bytes the sessions hold, as they report them.
    memory: AtomicU64,
    stress: watch::Sender<bool>,
    counts: Arc<AdmissionCounts>,
    audit: AuditLog,
    kernel: OnceLock<Arc<dyn AtLimit>>,
}

impl Admission {
    pub fn new(config: &ProxyConfig, counts: Arc<AdmissionCounts>, audit: AuditLog) -> Arc<Self> {
        // The engine's bound and one read's worth of output (a session owns
        // no read buffer: its worker's is shared).
        let per_session = (SESSION_MEMORY_BOUND + READ_BUF) as u64;
        let memory_budget = config
            .stress
            .memory_budget
            .unwrap_or(config.max_sessions as u64 * per_session);
        counts.set_stress(false);
        Arc::new(Self {
            limits: config.clients.clone(),
            max_sessions: config.max_sessions,
            stress_policy: config.stress,
            memory_budget: memory_budget.max(1),
            epoch: Instant::now(),
            table: Mutex::default(),
            memory: AtomicU64::new(0),
            stress: watch::channel(false).0,
            counts,
            audit,
            kernel: OnceLock::new(),
        })
    }

    /// From now on, clients reaching and leaving their session limit are
    /// told to `kernel` (once; later calls are ignored).
    pub fn tell(&self, kernel: Arc<dyn AtLimit>) {
        let _ = self.kernel.set(kernel);
    }

    /// Tells the kernel when `key`, going from `before` to `after`
    /// sessions, reaches its limit or falls below it. Only a session from
    /// an address the limits apply to (`limited`) makes it reach it.
    fn tell_kernel(&self, key: ClientKey, before: usize, after: usize, limited: bool) {
        let (Some(kernel), limit) = (self.kernel.get(), self.limits.sessions) else {
            return;
        };
        if limit == 0 {
            return;
        }
        if after >= limit && limited {
            kernel.set(key, true);
        } else if before >= limit && after < limit {
            kernel.set(key, false);
        }
    }

    fn table(&self) -> MutexGuard<'_, Table> {
        // A panic while holding it leaves counts, not broken invariants
        // worth stopping the proxy for.
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn key(&self, ip: IpAddr) -> ClientKey {
        ClientKey::of(ip, self.limits.prefix_v4, self.limits.prefix_v6)
    }

    fn is_exception(&self, ip: IpAddr) -> bool {
        self.limits.exceptions.iter().any(|n| n.contains(&ip))
    }

    /// Decides about a new session from `peers.client` at `now`.
    pub fn admit(self: &Arc<Self>, peers: Peers, now: Instant) -> Admit {
        let ip = peers.client.ip();
        let key = self.key(ip);
        let limited = !self.is_exception(ip);
        let mut t = self.table();
        let client = t.clients.entry(key).or_insert_with(|| Client::new(now));
        if now.duration_since(client.window_start) >= RATE_WINDOW {
            client.window_start = now;
            client.attempts = 0;
        }
        client.attempts = client.attempts.saturating_add(1);
        let held = client.sessions.len();
        let (attempts, l) = (client.attempts, &self.limits);
        let over = if !limited {
            None
        } else if l.sessions > 0 && held >= l.sessions {
            Some((ClientLimit::Sessions, held as u64 + 1, l.sessions as u64))
        } else if l.rate > 0 && attempts > l.rate {
            Some((ClientLimit::Rate, u64::from(attempts), u64::from(l.rate)))
        } else {
            None
        };
        if let Some((limit, current, max)) = over {
            let reason = match limit {
                ClientLimit::Sessions => RefusalReason::PerClientLimit,
                ClientLimit::Rate => RefusalReason::PerClientRate,
            };
            self.note_refusal(&mut t, key, peers, now, Some((limit, current, max)));
            let what = match limit {
                ClientLimit::Sessions => "sessions",
                ClientLimit::Rate => "new sessions",
            };
            let reply = format!("421 4.7.0 Too many {what} from {key}, try again later\r\n");
            return self.refuse(reason, reply.into_bytes());
        }
        if t.sessions >= self.max_sessions {
            match self.victim(&t, key) {
                Some((victim, cell)) => self.evict(&mut t, victim, &cell, key, now),
                None => {
                    self.note_refusal(&mut t, key, peers, now, None);
                    return self.refuse(RefusalReason::MaxSessions, TOO_MANY.to_vec());
                }
            }
        }
        t.next_id += 1;
        let cell = Arc::new(Cell {
            id: t.next_id,
            idle_since: AtomicU64::new(0),
            evicted: AtomicBool::new(false),
            wake: Notify::new(),
            bytes: AtomicU64::new(0),
        });
        let client = t.clients.get_mut(&key).expect("inserted above");
        client.sessions.push(cell.clone());
        t.rerank(key, held);
        t.sessions += 1;
        self.tell_kernel(key, held, held + 1, limited);
        self.settle(&t);
        Admit::Yes(Ticket {
            admission: self.clone(),
            key,
            cell,
        })
    }

    fn refuse(&self, reason: RefusalReason, reply: Vec<u8>) -> Admit {
        self.counts.count_refused(reason);
        Admit::No { reason, reply }
    }

    /// Counts the refusal against the client; once a minute per client it
    /// is logged, and a per-client one (`limit`) audited, with the count
    /// since.
    fn note_refusal(
        &self,
        t: &mut Table,
        key: ClientKey,
        peers: Peers,
        now: Instant,
        limit: Option<(ClientLimit, u64, u64)>,
    ) {
        let Some(client) = t.clients.get_mut(&key) else {
            return;
        };
        client.refused_since += 1;
        if client
            .noted
            .is_some_and(|at| now.duration_since(at) < NOTE_EVERY)
        {
            return;
        }
        let refused_since = std::mem::take(&mut client.refused_since);
        client.noted = Some(now);
        match limit {
            Some((limit, current, max)) => {
                log::warn!(
                    "{} -> {}: client {key} over its {} ({current}/{max}), refused \
                     ({refused_since} since the last note; next note in a minute at most)",
                    peers.client,
                    peers.server,
                    match limit {
                        ClientLimit::Sessions => "per-client-sessions",
                        ClientLimit::Rate => "per-client-rate per minute",
                    }
                );
                self.audit.record(AuditEvent {
                    peers,
                    kind: AuditKind::ClientLimit(ClientLimitRecord {
                        limit,
                        client: key.to_string(),
                        current,
                        max,
                        refused_since,
                    }),
                });
            }
            None => log::warn!(
                "{} -> {}: max-sessions reached ({} sessions) and no idle session of a client \
                 holding more to close, refused ({refused_since} of client {key} since the \
                 last note)",
                peers.client,
                peers.server,
                t.sessions
            ),
        }
    }

    /// The longest-idle session of the client holding the most sessions,
    /// if it holds at least two more than `newcomer` (else the next such
    /// client that has an idle session).
    fn victim(&self, t: &Table, newcomer: ClientKey) -> Option<(ClientKey, Arc<Cell>)> {
        let held = t.clients.get(&newcomer).map_or(0, |c| c.sessions.len());
        for &(count, key) in t.ranking.iter().rev() {
            if count < held + 2 {
                break;
            }
            let idle = t.clients[&key]
                .sessions
                .iter()
                .filter(|c| !c.evicted.load(Ordering::Relaxed))
                .filter_map(|c| match c.idle_since.load(Ordering::Relaxed) {
                    0 => None,
                    since => Some((since, c)),
                })
                .min_by_key(|(since, _)| *since);
            if let Some((_, cell)) = idle {
                return Some((key, cell.clone()));
            }
        }
        None
    }

    fn evict(
        &self,
        t: &mut Table,
        victim: ClientKey,
        cell: &Arc<Cell>,
        for_: ClientKey,
        now: Instant,
    ) {
        let client = t.clients.get_mut(&victim).expect("ranked clients exist");
        let before = client.sessions.len();
        client.sessions.retain(|c| c.id != cell.id);
        t.rerank(victim, before);
        t.sessions -= 1;
        self.tell_kernel(victim, before, before - 1, false);
        let idle_ms = (now.duration_since(self.epoch).as_millis() as u64)
            .saturating_sub(cell.idle_since.load(Ordering::Relaxed) - 1);
        log::info!(
            "max-sessions reached: closing the longest-idle session of client {victim} \
             ({before} sessions, idle {:.1} s) for client {for_}",
            idle_ms as f64 / 1000.0
        );
        cell.evicted.store(true, Ordering::Relaxed);
        cell.wake.notify_one();
        self.counts.count_evicted();
    }

    /// A session ended: its slot is free.
    fn release(&self, key: ClientKey, cell: &Cell) {
        self.memory
            .fetch_sub(cell.bytes.swap(0, Ordering::Relaxed), Ordering::Relaxed);
        let mut t = self.table();
        if let Some(client) = t.clients.get_mut(&key) {
            let before = client.sessions.len();
            client.sessions.retain(|c| c.id != cell.id);
            if client.sessions.len() < before {
                t.rerank(key, before);
                t.sessions -= 1;
                self.tell_kernel(key, before, before - 1, false);
            }
        }
        self.settle(&t);
    }

    /// Once a second: forgets clients with nothing left to remember, and
    /// looks at the memory the sessions hold.
    pub fn tick(&self, now: Instant) {
        let mut t = self.table();
        t.clients.retain(|_, c| !c.forgettable(now));
        if let Some(kernel) = self.kernel.get() {
            kernel.renew();
        }
        self.settle(&t);
    }

    /// Occupancy in percent: of `max-sessions`, and of the memory budget.
    fn occupancy(&self, t: &Table) -> (f64, f64) {
        (
            t.sessions as f64 * 100.0 / self.max_sessions.max(1) as f64,
            self.memory.load(Ordering::Relaxed) as f64 * 100.0 / self.memory_budget as f64,
        )
    }

    /// Enters or leaves stress mode as occupancy says; updates the gauges.
    fn settle(&self, t: &Table) {
        self.counts.set_clients(t.ranking.len());
        let threshold = f64::from(self.stress_policy.threshold);
        if threshold == 0.0 {
            return;
        }
        let (by_sessions, by_memory) = self.occupancy(t);
        let occupancy = by_sessions.max(by_memory);
        let on = *self.stress.borrow();
        let next = if on {
            occupancy >= threshold - threshold / 8.0
        } else {
            occupancy >= threshold
        };
        if next == on {
            return;
        }
        let mib = |b: f64| b / f64::from(1 << 20);
        let memory = self.memory.load(Ordering::Relaxed) as f64;
        if next {
            log::warn!(
                "stress: on ({} of {} sessions, {:.0} % of the memory budget of {:.0} MiB): \
                 greeting, command and idle timeouts are {} s until occupancy falls below {:.0} %",
                t.sessions,
                self.max_sessions,
                memory * 100.0 / self.memory_budget as f64,
                mib(self.memory_budget as f64),
                self.stress_policy.timeout.as_secs(),
                threshold - threshold / 8.0
            );
        } else {
            log::warn!(
                "stress: off ({} of {} sessions, {:.1} MiB held): timeouts restored",
                t.sessions,
                self.max_sessions,
                mib(memory)
            );
        }
        self.counts.set_stress(next);
        self.stress.send_replace(next);
    }

    /// Sessions held now.
    pub fn sessions(&self) -> usize {
        self.table().sessions
    }

    /// Sessions `key` holds now.
    pub fn held_by(&self, key: ClientKey) -> usize {
        self.table()
            .clients
            .get(&key)
            .map_or(0, |c| c.sessions.len())
    }

    pub fn stressed(&self) -> bool {
        *self.stress.borrow()
    }

    /// The timeouts that apply now: under stress the greeting, command and
    /// idle ones are at most `stress-timeout`.
    pub fn timeouts(&self, normal: SessionTimeouts, stressed: bool) -> SessionTimeouts {
        effective(normal, &self.stress_policy, stressed)
    }
}

/// `normal`, or under stress with the greeting, command and idle timeouts cut
/// to the stress timeout (DATA and connect keep theirs).
pub fn effective(normal: SessionTimeouts, stress: &StressPolicy, on: bool) -> SessionTimeouts {
    if !on {
        return normal;
    }
    SessionTimeouts {
        greeting: normal.greeting.min(stress.timeout),
        command: normal.command.min(stress.timeout),
        idle: normal.idle.min(stress.timeout),
        ..normal
    }
}

/// A session's slot: it counts for its client until dropped, says when the
/// session is idle (so it may be evicted) and how much memory it holds, and
/// tells it when it is evicted and when stress mode changes.
pub struct Ticket {
    admission: Arc<Admission>,
    key: ClientKey,
    cell: Arc<Cell>,
}

impl Ticket {
    pub fn client(&self) -> ClientKey {
        self.key
    }

    /// Gives the slot back now, before the session's last bytes are
    /// flushed: a session that is only closing (lingering until the client
    /// has its last reply) no longer counts against its client or
    /// `max-sessions`, so a client that opens sessions one after another is
    /// not refused for the ones it already ended. Dropping the ticket later
    /// releases nothing more.
    pub fn release(&self) {
        self.admission.release(self.key, &self.cell);
    }

    /// The session waits for its client between commands since `since`
    /// (`None`: it does not).
    pub fn set_idle(&self, since: Option<Instant>) {
        let ms = since.map_or(0, |s| {
            s.saturating_duration_since(self.admission.epoch)
                .as_millis() as u64
                + 1
        });
        self.cell.idle_since.store(ms, Ordering::Relaxed);
    }

    /// The session holds `bytes` now.
    pub fn set_memory(&self, bytes: usize) {
        let old = self.cell.bytes.swap(bytes as u64, Ordering::Relaxed);
        let m = &self.admission.memory;
        if bytes as u64 >= old {
            m.fetch_add(bytes as u64 - old, Ordering::Relaxed);
        } else {
            m.fetch_sub(old - bytes as u64, Ordering::Relaxed);
        }
    }

    pub fn is_evicted(&self) -> bool {
        self.cell.evicted.load(Ordering::Relaxed)
    }

    /// Resolves once the session is evicted.
    pub async fn evicted(&self) {
        loop {
            let notified = self.cell.wake.notified();
            if self.is_evicted() {
                return;
            }
            notified.await;
        }
    }

    /// Whether stress mode is on now.
    pub fn stressed(&self) -> bool {
        self.admission.stressed()
    }

    /// Changes to stress mode, for a session to wake and apply them.
    pub fn stress_watch(&self) -> StressWatch {
        StressWatch(self.admission.stress.subscribe())
    }

    /// The session's timeouts now.
    pub fn timeouts(&self, normal: SessionTimeouts) -> SessionTimeouts {
        self.admission.timeouts(normal, self.stressed())
    }
}

/// Stress mode turning on or off.
pub struct StressWatch(watch::Receiver<bool>);

impl StressWatch {
    /// Resolves at the next change (never, once the admission is gone).
    pub async fn changed(&mut self) {
        if self.0.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.admission.release(self.key, &self.cell);
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;

    fn config(max: usize, per_client: usize, rate: u32) -> ProxyConfig {
        let mut c = ProxyConfig {
            max_sessions: max,
            ..ProxyConfig::default()
        };
        c.clients.sessions = per_client;
        c.clients.rate = rate;
        c
    }

    fn admission(c: &ProxyConfig) -> Arc<Admission> {
        Admission::new(c, Arc::default(), AuditLog::off())
    }

    fn peers(client: &str) -> Peers {
        let client: IpAddr = client.parse().unwrap();
        Peers {
            client: SocketAddr::new(client, 40000),
            server: "198.18.1.25:25".parse().unwrap(),
        }
    }

    fn yes(a: &Arc<Admission>, client: &str, now: Instant) -> Ticket {
        match a.admit(peers(client), now) {
            Admit::Yes(t) => t,
            Admit::No { reason, reply } => panic!(
                "{client} refused ({}): {}",
                reason.name(),
                String::from_utf8_lossy(&reply)
            ),
        }
    }

    fn no(a: &Arc<Admission>, client: &str, now: Instant) -> (RefusalReason, String) {
        match a.admit(peers(client), now) {
            Admit::Yes(_) => panic!("{client} admitted"),
            Admit::No { reason, reply } => (reason, String::from_utf8(reply).unwrap()),
        }
    }

    /// What the kernel is told, in order.
    #[derive(Default)]
    struct Told(Mutex<Vec<(String, bool)>>);

    impl AtLimit for Told {
        fn set(&self, client: ClientKey, at_limit: bool) {
            self.0.lock().unwrap().push((client.to_string(), at_limit));
        }

        fn renew(&self) {}
    }

    #[test]
    fn the_kernel_is_told_when_a_client_reaches_and_leaves_its_limit() {
        let mut c = config(100, 2, 0);
        c.clients.exceptions = vec!["198.18.0.9/32".parse().unwrap()];
        let a = admission(&c);
        let told = Arc::new(Told::default());
        a.tell(told.clone());
        let now = Instant::now();
        let first = yes(&a, "198.18.0.2", now);
        let second = yes(&a, "198.18.0.2", now);
        no(&a, "198.18.0.2", now);
        drop(first);
        let again = yes(&a, "198.18.0.2", now);
        drop((second, again));
        // An exception holds more than the limit and is never blocked.
        let held: Vec<Ticket> = (0..3).map(|_| yes(&a, "198.18.0.9", now)).collect();
        let told = told.0.lock().unwrap().clone();
        let c2 = |on| ("198.18.0.2".to_string(), on);
        assert_eq!(told, [c2(true), c2(false), c2(true), c2(false)]);
        drop(held);
    }

    #[test]
    fn keys_are_addresses_or_prefixes() {
        let k = |ip: &str, v4, v6| ClientKey::of(ip.parse().unwrap(), v4, v6).to_string();
        assert_eq!(k("198.18.0.2", 32, 64), "198.18.0.2");
        assert_eq!(k("198.18.0.2", 24, 64), "198.18.0.0/24");
        assert_eq!(k("2001:2::1:2:3:4", 32, 64), "2001:2::/64");
        assert_eq!(k("2001:2:0:7:1:2:3:4", 32, 64), "2001:2:0:7::/64");
        assert_eq!(k("2001:2::2", 32, 128), "2001:2::2");
        assert_eq!(k("2001:2::2", 32, 1), "::/1");
        assert_eq!(k("198.18.0.2", 1, 64), "128.0.0.0/1");
    }

    #[test]
    fn per_client_sessions_are_limited_and_freed() {
        let a = admission(&config(100, 2, 0));
        let now = Instant::now();
        let t1 = yes(&a, "198.18.0.2", now);
        let _t2 = yes(&a, "198.18.0.2", now);
        let (reason, reply) = no(&a, "198.18.0.2", now);
        assert_eq!(reason, RefusalReason::PerClientLimit);
        assert_eq!(
            reply,
            "421 4.7.0 Too many sessions from 198.18.0.2, try again later\r\n"
        );
        // Another client is not affected; a freed slot is usable again.
        let _other = yes(&a, "198.18.0.3", now);
        drop(t1);
        let _t3 = yes(&a, "198.18.0.2", now);
        assert_eq!(a.sessions(), 3);
        assert_eq!(a.counts.refused(RefusalReason::PerClientLimit), 1);
    }

    #[test]
    fn ipv6_clients_count_by_prefix() {
        let a = admission(&config(100, 3, 0));
        let now = Instant::now();
        let _held: Vec<Ticket> = (1..=3)
            .map(|i| yes(&a, &format!("2001:2::{i}"), now))
            .collect();
        let (_, reply) = no(&a, "2001:2::ffff:1", now);
        assert!(reply.contains("from 2001:2::/64"), "{reply}");
        // Another /64 is another client.
        let _t = yes(&a, "2001:2:0:1::2", now);
    }

    #[test]
    fn exceptions_are_not_limited() {
        let mut c = config(100, 1, 1);
        c.clients.exceptions = vec!["198.18.0.0/24".parse().unwrap()];
        let a = admission(&c);
        let now = Instant::now();
        let _held: Vec<Ticket> = (0..5).map(|_| yes(&a, "198.18.0.2", now)).collect();
        let _t = yes(&a, "198.18.5.2", now);
        assert_eq!(no(&a, "198.18.5.2", now).0, RefusalReason::PerClientLimit);
    }

    #[test]
    fn the_rate_counts_attempts_per_minute() {
        let a = admission(&config(100, 0, 3));
        let now = Instant::now();
        for _ in 0..3 {
            drop(yes(&a, "198.18.0.2", now));
        }
        let (reason, reply) = no(&a, "198.18.0.2", now + Duration::from_secs(59));
        assert_eq!(reason, RefusalReason::PerClientRate);
        assert!(
            reply.starts_with("421 4.7.0 Too many new sessions"),
            "{reply}"
        );
        let _other = yes(&a, "198.18.0.3", now);
        // The next minute is a new window.
        let _t = yes(&a, "198.18.0.2", now + Duration::from_secs(60));
    }

    #[test]
    fn refusals_are_audited_once_a_minute_per_client() {
        let dir = std::env::temp_dir().join(format!("admission-audit-{}", std::process::id()));
        let _ = std::fs::remove_file(&dir);
        let audit = AuditLog::start(&crate::config::SinkSpec::File(dir.clone()), 100).unwrap();
        let a = Admission::new(&config(100, 1, 0), Arc::default(), audit.clone());
        let now = Instant::now();
        let _held = yes(&a, "198.18.0.2", now);
        let _held3 = yes(&a, "198.18.0.3", now);
        for i in 0..10 {
            no(&a, "198.18.0.2", now + Duration::from_secs(i));
        }
        no(&a, "198.18.0.3", now);
        no(&a, "198.18.0.2", now + Duration::from_secs(61));
        let written = || audit.counts().written.load(Ordering::Relaxed);
        let deadline = Instant::now() + Duration::from_secs(5);
        while written() < 3 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        std::thread::sleep(Duration::from_millis(100));
        let text = std::fs::read_to_string(&dir).unwrap();
        let _ = std::fs::remove_file(&dir);
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert_eq!(lines[0]["id"], 201013);
        assert_eq!(lines[0]["client_key"], "198.18.0.2");
        assert_eq!(lines[0]["refused_since"], 1);
        assert_eq!(lines[1]["client_key"], "198.18.0.3");
        // The nine refused in between are counted in the next record.
        assert_eq!(lines[2]["refused_since"], 10);
        assert_eq!(lines[2]["limit"], "per-client-sessions");
    }

    #[test]
    fn a_full_proxy_gives_the_longest_idle_slot_of_the_biggest_holder() {
        let a = admission(&config(10, 0, 0));
        let now = Instant::now();
        let mut attacker: Vec<Ticket> = (0..8).map(|_| yes(&a, "198.18.0.66", now)).collect();
        let _b1 = yes(&a, "198.18.0.3", now);
        let _b2 = yes(&a, "198.18.0.3", now);
        // Full. None of the attacker's sessions idle: nothing to take.
        assert_eq!(no(&a, "198.18.0.4", now).0, RefusalReason::MaxSessions);
        for (i, t) in attacker.iter().enumerate() {
            t.set_idle(Some(now + Duration::from_millis(100 * (8 - i as u64))));
        }
        // The newcomer takes the slot of the attacker's session idle longest
        // (the last one: idle since the earliest).
        let _c = yes(&a, "198.18.0.4", now);
        assert!(attacker[7].is_evicted());
        assert!(attacker[..7].iter().all(|t| !t.is_evicted()));
        assert_eq!(a.sessions(), 10);
        assert_eq!(a.held_by(a.key("198.18.0.66".parse().unwrap())), 7);
        assert_eq!(a.counts.evicted(), 1);
        // Its end does not free a second slot.
        drop(attacker.pop());
        assert_eq!(a.sessions(), 10);
        // The attacker itself never takes its own slots back; a client
        // holding 2 takes from one holding 7 (>= 2 + 2).
        assert_eq!(no(&a, "198.18.0.66", now).0, RefusalReason::MaxSessions);
        let _b3 = yes(&a, "198.18.0.3", now);
        assert_eq!(a.held_by(a.key("198.18.0.66".parse().unwrap())), 6);
    }

    #[test]
    fn slots_move_only_towards_a_fairer_split() {
        let a = admission(&config(4, 0, 0));
        let now = Instant::now();
        let x: Vec<Ticket> = (0..2).map(|_| yes(&a, "198.18.0.2", now)).collect();
        let y: Vec<Ticket> = (0..2).map(|_| yes(&a, "198.18.0.3", now)).collect();
        for t in x.iter().chain(&y) {
            t.set_idle(Some(now));
        }
        // A newcomer holding none takes from a client holding 2.
        let _z = yes(&a, "198.18.0.4", now);
        // Now 2/1/1 (or 1/2/1): a client holding 1 does not take from one
        // holding 2 (it would only swap who holds more).
        assert_eq!(no(&a, "198.18.0.4", now).0, RefusalReason::MaxSessions);
        drop((x, y));
    }

    #[test]
    fn stress_follows_occupancy_with_hysteresis() {
        let mut c = config(10, 0, 0);
        c.stress.threshold = 80;
        c.stress.timeout = Duration::from_secs(7);
        let a = admission(&c);
        let now = Instant::now();
        let mut held: Vec<Ticket> = (0..7)
            .map(|i| yes(&a, &format!("198.18.0.{i}"), now))
            .collect();
        assert!(!a.stressed());
        held.push(yes(&a, "198.18.0.100", now));
        assert!(a.stressed() && a.counts.stress());
        let t = a.timeouts(SessionTimeouts::default(), true);
        assert_eq!(t.command, Duration::from_secs(7));
        assert_eq!(t.greeting, Duration::from_secs(7));
        assert_eq!(t.idle, Duration::from_secs(7));
        assert_eq!(t.data, SessionTimeouts::default().data);
        assert!(held[0].stressed());
        // 70 % still stressed (80 - 80/8 = 70), 60 % not.
        held.pop();
        assert!(a.stressed());
        held.pop();
        assert!(!a.stressed());
        assert_eq!(a.counts.stress_entered(), 1);
    }

    #[test]
    fn memory_counts_towards_stress() {
        let mut c = config(100, 0, 0);
        c.stress.memory_budget = Some(1000);
        let a = admission(&c);
        let now = Instant::now();
        let t = yes(&a, "198.18.0.2", now);
        t.set_memory(700);
        a.tick(now);
        assert!(!a.stressed());
        t.set_memory(900);
        a.tick(now);
        assert!(a.stressed());
        drop(t);
        assert!(!a.stressed());
    }

    #[test]
    fn forgotten_clients_leave_the_table() {
        let a = admission(&config(100, 1, 0));
        let now = Instant::now();
        drop(yes(&a, "198.18.0.2", now));
        a.tick(now + Duration::from_secs(1));
        assert_eq!(a.table().clients.len(), 1, "the rate window is still open");
        a.tick(now + Duration::from_secs(61));
        assert!(a.table().clients.is_empty());
    }
}
