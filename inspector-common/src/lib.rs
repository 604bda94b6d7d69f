//! Types shared by the kernel programs (`inspector-ebpf`) and userspace
//! (`inspector`). Every type here crosses the kernel/user boundary
//! through a BPF map, so each is `#[repr(C)]`, has no implicit padding, and
//! its size is asserted at compile time on both sides.
#![no_std]

pub mod csum;

/// Map names, as pinned under the bpffs directory. Userspace opens the pins
/// by these names, so they are the on-disk interface between daemon and CLI.
pub mod maps {
    /// Per-CPU array of [`super::ClassCounters`], indexed by [`super::Class`].
    pub const CLASS_STATS: &str = "CLASS_STATS";
    /// LPM trie of IPv4 exemption rules: `Key<[u8; 4]>` (network order) -> [`super::ExemptRule`].
    pub const EXEMPT_V4: &str = "EXEMPT_V4";
    /// LPM trie of IPv6 exemption rules: `Key<[u8; 16]>` -> [`super::ExemptRule`].
    pub const EXEMPT_V6: &str = "EXEMPT_V6";
    /// Hash of protected servers: [`super::Addr16`] -> [`super::ServerLimits`] (written by the daemon).
    pub const SERVERS: &str = "SERVERS";
    /// LRU hash of tracked TCP flows: [`super::FlowKey`] -> [`super::FlowEntry`].
    pub const FLOWS: &str = "FLOWS";
    /// Hash of per-server connection counts: [`super::Addr16`] -> [`super::ConnCounts`].
    pub const SERVER_CONNS: &str = "SERVER_CONNS";
    /// LRU hash of per-client connection counts: [`super::ClientKey`] -> [`super::ConnCounts`].
    pub const CLIENT_CONNS: &str = "CLIENT_CONNS";
    /// Per-CPU array of u64 SYN drops, indexed by [`super::DropReason`].
    pub const LIMIT_DROPS: &str = "LIMIT_DROPS";
    /// Per-CPU array of u64 TCP intercept events, indexed by [`super::InterceptEvent`].
    pub const INTERCEPTS: &str = "INTERCEPTS";
    /// Every pinned map, for `inspector unload`.
    pub const ALL: [&str; 9] = [
        CLASS_STATS,
        EXEMPT_V4,
        EXEMPT_V6,
        SERVERS,
        FLOWS,
        SERVER_CONNS,
        CLIENT_CONNS,
        LIMIT_DROPS,
        INTERCEPTS,
    ];
}

/// Program names as they appear in the object file.
pub mod programs {
    pub const XDP_CLASSIFY: &str = "inspector_xdp";
    /// TC (clsact ingress) program marking flagged flows for the engine.
    pub const TC_STEER: &str = "inspector_steer";
    /// TC (clsact ingress) program for the interfaces facing the servers
    /// with a transparent upstream: marks the servers' answers to the
    /// engine's connections, nothing else.
    pub const TC_STEER_RETURN: &str = "inspector_steer_return";
    /// `XDP_PASS` and nothing else: the benchmark's baseline.
    pub const XDP_EMPTY: &str = "inspector_xdp_empty";
}

/// Name of the steering program's settings map (one [`SteerConfig`] at
/// index 0). Not pinned: each daemon start writes it.
pub const STEER_CONFIG_MAP: &str = "STEER_CONFIG";

/// The fwmark the steering program gives flagged packets; the daemon's
/// policy-routing rule sends marked packets to [`STEER_TABLE`].
pub const STEER_MARK: u32 = 0x2525;
/// The routing table holding `local 0.0.0.0/0 dev lo` (and `::/0`).
pub const STEER_TABLE: u32 = 2525;
/// The priority of the daemon's `fwmark` rules (before `main`, 32766).
pub const STEER_RULE_PRIORITY: u32 = 2525;

/// [`SteerConfig::fail`]: with no proxy listening, new SMTP flows go
/// straight to the server, uninspected.
pub const FAIL_OPEN: u32 = 0;
/// [`SteerConfig::fail`]: with no proxy listening, the SYNs of new SMTP
/// flows are dropped (the client retries later).
pub const FAIL_CLOSED: u32 = 1;

/// The steering program's settings, written by the daemon.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SteerConfig {
    /// [`FAIL_OPEN`] or [`FAIL_CLOSED`].
    pub fail: u32,
    /// 1 when the daemon runs the engine: TCP intercept then leaves the
    /// flows the engine terminates to its listener.
    pub engine: u32,
}

/// Capacity of each exemption trie (rules per IP version).
pub const EXEMPT_MAX_RULES: u32 = 16_384;

/// TCP port of the service we inspect.
pub const SMTP_PORT: u16 = 25;

/// What the classifier decided about one packet.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// Not SMTP and not exempt: forwarded untouched.
    Pass = 0,
    /// TCP to port 25, not exempt: subject to inspection.
    Inspect = 1,
    /// Source or destination matches an exemption rule: never inspected.
    Exempt = 2,
    /// A header was truncated or invalid: counted and passed.
    Malformed = 3,
}

impl Class {
    pub const COUNT: u32 = 4;
    pub const ALL: [Class; Self::COUNT as usize] =
        [Class::Pass, Class::Inspect, Class::Exempt, Class::Malformed];

    pub const fn name(self) -> &'static str {
        match self {
            Class::Pass => "pass",
            Class::Inspect => "inspect",
            Class::Exempt => "exempt",
            Class::Malformed => "malformed",
        }
    }
}

/// Packets and bytes seen for one class on one CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClassCounters {
    pub packets: u64,
    pub bytes: u64,
}

/// Where an exemption rule came from. The daemon replaces the `Policy` rules
/// with the policy file's on each start and keeps the `Live` ones, which
/// `inspector exempt add` made while it ran.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RuleOrigin {
    Policy = 1,
    Live = 2,
}

/// Value of an exemption trie entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExemptRule {
    /// A [`RuleOrigin`] as u32 (kept raw: the kernel never trusts an enum).
    pub origin: u32,
}

/// Protected servers (entries of the `SERVERS` map).
pub const MAX_SERVERS: u32 = 1_024;
/// Default capacity of the flow table (`FLOWS`), in flows.
pub const FLOW_TABLE_SIZE: u32 = 65_536;
/// Capacity of the per-client counters (`CLIENT_CONNS`), in (server, client) pairs.
pub const CLIENT_TABLE_SIZE: u32 = 65_536;

/// An IP address in one 16-byte form for both versions: IPv6 as is, IPv4
/// mapped (`::ffff:a.b.c.d`), so one key type serves both.
pub type Addr16 = [u8; 16];

/// Maps an IPv4 address (network order) into an [`Addr16`].
#[inline(always)]
pub const fn v4_mapped(a: [u8; 4]) -> Addr16 {
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, a[0], a[1], a[2], a[3],
    ]
}

/// What to do with a SYN over an embryonic limit (`ServerLimits::on_embryonic_limit`).
pub const ON_LIMIT_DROP: u32 = 0;
/// TCP intercept: the kernel answers with a SYN cookie.
pub const ON_LIMIT_INTERCEPT: u32 = 1;

/// The limits of one protected server; 0 means unlimited.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServerLimits {
    /// Connections (embryonic + established) to the server.
    pub max_conns: u32,
    /// Embryonic connections to the server.
    pub max_embryonic: u32,
    /// Connections from one client to the server.
    pub per_client_max: u32,
    /// Embryonic connections from one client to the server.
    pub per_client_embryonic_max: u32,
    /// `ON_LIMIT_DROP` or `ON_LIMIT_INTERCEPT`.
    pub on_embryonic_limit: u32,
    pub _pad: u32,
}

/// Key of the flow table: the 5-tuple, oriented client -> server whichever
/// way the packet went. Padding is explicit and always zero.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub client: Addr16,
    pub server: Addr16,
    /// Ports in host order.
    pub client_port: u16,
    pub server_port: u16,
    /// Always 6 (TCP) for now; part of the key so other protocols can join.
    pub protocol: u8,
    pub _pad: [u8; 3],
}

/// State of a tracked flow (`FlowEntry::state`).
pub mod flow_state {
    /// The client's SYN was seen, its handshake-completing ACK not yet.
    pub const EMBRYONIC: u32 = 1;
    /// The client completed the handshake.
    pub const ESTABLISHED: u32 = 2;
    /// A FIN was seen: no longer counted, kept until the half-closed
    /// timeout so its last packets are recognised (and translated).
    pub const CLOSING: u32 = 3;
    /// Intercepted: the client returned a valid SYN cookie and the kernel
    /// sent the server a SYN; waiting for the server's SYN-ACK. Counted as
    /// embryonic (the server holds it half-open).
    pub const OPENING: u32 = 4;
}

/// Value of the flow table.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowEntry {
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) of the last packet.
    pub last_seen_ns: u64,
    /// A [`flow_state`] value.
    pub state: u32,
    /// Intercepted flows only: while `OPENING`, the cookie the client
    /// acknowledged; then the server's ISN minus the cookie, added to the
    /// client's acknowledgment numbers and taken from the server's sequence
    /// numbers. 0 for every other flow (and then nothing is rewritten).
    pub seq_delta: u32,
    /// Intercepted flows only: the client's receive window, announced to
    /// the server when the kernel completes the server's handshake.
    pub window: u32,
    pub _pad: u32,
}

/// Key of the per-client counters: a client of one protected server.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ClientKey {
    pub server: Addr16,
    pub client: Addr16,
}

/// Current connections of a server or a client. The kernel changes them with
/// atomic adds and the sweeper rewrites them from the flow table, so a value
/// may be briefly negative (read as i64); readers treat that as zero.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnCounts {
    pub embryonic: u64,
    pub established: u64,
}

/// Why a SYN was dropped: the index into `LIMIT_DROPS`.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    MaxConns = 0,
    MaxEmbryonic = 1,
    PerClientMax = 2,
    PerClientEmbryonicMax = 3,
}

impl DropReason {
    pub const COUNT: u32 = 4;
    pub const ALL: [DropReason; Self::COUNT as usize] = [
        DropReason::MaxConns,
        DropReason::MaxEmbryonic,
        DropReason::PerClientMax,
        DropReason::PerClientEmbryonicMax,
    ];

    /// As in the policy file.
    pub const fn name(self) -> &'static str {
        match self {
            DropReason::MaxConns => "max-conns",
            DropReason::MaxEmbryonic => "max-embryonic",
            DropReason::PerClientMax => "per-client-max",
            DropReason::PerClientEmbryonicMax => "per-client-embryonic-max",
        }
    }
}

/// What TCP intercept did: the index into `INTERCEPTS`.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InterceptEvent {
    /// A SYN over an embryonic limit answered with a SYN cookie.
    CookieSent = 0,
    /// A client's ACK carried a valid cookie: the server side was opened.
    ClientVerified = 1,
    /// The server answered: the kernel completed its handshake.
    ServerOpened = 2,
}

impl InterceptEvent {
    pub const COUNT: u32 = 3;
    pub const ALL: [InterceptEvent; Self::COUNT as usize] = [
        InterceptEvent::CookieSent,
        InterceptEvent::ClientVerified,
        InterceptEvent::ServerOpened,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            InterceptEvent::CookieSent => "syn-cookies-sent",
            InterceptEvent::ClientVerified => "clients-verified",
            InterceptEvent::ServerOpened => "servers-opened",
        }
    }
}

// Layouts are an ABI between the object file and the daemon: pin them.
const _: () = {
    use core::mem::{offset_of, size_of};
    assert!(size_of::<ClassCounters>() == 16);
    assert!(offset_of!(ClassCounters, bytes) == 8);
    assert!(size_of::<ExemptRule>() == 4);
    assert!(size_of::<ServerLimits>() == 24);
    assert!(offset_of!(ServerLimits, on_embryonic_limit) == 16);
    assert!(size_of::<FlowKey>() == 40);
    assert!(offset_of!(FlowKey, client_port) == 32);
    assert!(offset_of!(FlowKey, protocol) == 36);
    assert!(size_of::<FlowEntry>() == 24);
    assert!(offset_of!(FlowEntry, state) == 8);
    assert!(offset_of!(FlowEntry, seq_delta) == 12);
    assert!(offset_of!(FlowEntry, window) == 16);
    assert!(size_of::<ClientKey>() == 32);
    assert!(size_of::<ConnCounts>() == 16);
    assert!(offset_of!(ConnCounts, established) == 8);
    assert!(size_of::<SteerConfig>() == 8);
};

#[cfg(feature = "user")]
mod pod {
    // SAFETY: each type is repr(C), Copy, and has no padding (asserted above),
    // so every byte pattern of its size is a valid value.
    unsafe impl aya::Pod for super::ClassCounters {}
    unsafe impl aya::Pod for super::ExemptRule {}
    unsafe impl aya::Pod for super::ServerLimits {}
    unsafe impl aya::Pod for super::FlowKey {}
    unsafe impl aya::Pod for super::FlowEntry {}
    unsafe impl aya::Pod for super::ClientKey {}
    unsafe impl aya::Pod for super::ConnCounts {}
    unsafe impl aya::Pod for super::SteerConfig {}
}
