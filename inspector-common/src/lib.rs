//! Types shared by the kernel programs (`inspector-ebpf`) and userspace
//! (`inspector`). Every type here crosses the kernel/user boundary
//! through a BPF map, so each is `#[repr(C)]`, has no implicit padding, and
//! its size is asserted at compile time on both sides.
#![no_std]

pub mod csum;
pub mod tcpopt;

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
    /// Array of per-server connection counts, [`super::MAX_SERVERS`]
    /// [`super::ConnCounts`], a server's at its `ServerLimits::counts`.
    pub const SERVER_CONNS: &str = "SERVER_CONNS";
    /// LRU hash of per-client connection counts: [`super::ClientKey`] -> [`super::ConnCounts`].
    pub const CLIENT_CONNS: &str = "CLIENT_CONNS";
    /// Array of one [`super::FlowMarks`] (mmapable): the flow table's
    /// tuples, counted by [`super::FlowKey::mark_slot`].
    pub const FLOW_MARKS: &str = "FLOW_MARKS";
    /// Per-CPU array of u64 SYN drops, indexed by [`super::DropReason`].
    pub const LIMIT_DROPS: &str = "LIMIT_DROPS";
    /// Per-CPU array of u64 TCP intercept events, indexed by [`super::InterceptEvent`].
    pub const INTERCEPTS: &str = "INTERCEPTS";
    /// Per-CPU array of u64 packets dropped for their shape (fragments,
    /// headers the classifier cannot parse), indexed by [`super::ParseDrop`].
    pub const PARSE_DROPS: &str = "PARSE_DROPS";
    /// LPM trie of IPv4 clients at their session limit, written by the
    /// proxy: `Key<[u8; 4]>` (the client's network) -> u64, the
    /// CLOCK_MONOTONIC nanoseconds until which their SYNs are dropped.
    pub const CLIENT_BLOCK_V4: &str = "CLIENT_BLOCK_V4";
    /// The same for IPv6: `Key<[u8; 16]>` -> u64.
    pub const CLIENT_BLOCK_V6: &str = "CLIENT_BLOCK_V6";
    /// Array of one u32: how many networks the two tries block now (their
    /// exceptions not counted); 0 tells XDP to skip the lookups.
    pub const CLIENT_BLOCKED: &str = "CLIENT_BLOCKED";
    /// Every pinned map, for `inspector unload`.
    pub const ALL: [&str; 14] = [
        CLASS_STATS,
        EXEMPT_V4,
        EXEMPT_V6,
        SERVERS,
        FLOWS,
        FLOW_MARKS,
        SERVER_CONNS,
        CLIENT_CONNS,
        LIMIT_DROPS,
        INTERCEPTS,
        PARSE_DROPS,
        CLIENT_BLOCK_V4,
        CLIENT_BLOCK_V6,
        CLIENT_BLOCKED,
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

/// Where the daemon keeps live exemptions by default (also where the lab
/// looks for those a killed test run left).
pub const DEFAULT_STATE_DIR: &str = "/var/lib/inspector";

/// Name of the XDP program's settings map (an [`XdpConfig`] per interface
/// index, written when the program is attached there). Not pinned: each
/// daemon start writes it.
pub const XDP_CONFIG_MAP: &str = "XDP_CONFIG";
/// The most interfaces [`XDP_CONFIG_MAP`] holds settings for.
pub const XDP_CONFIG_ENTRIES: u32 = 64;

/// The XDP program's settings, written by the daemon.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct XdpConfig {
    /// 1 when the program is attached in generic (skb) mode. There, a
    /// packet sent back with `XDP_TX` keeps its checksum offload state, so
    /// TCP intercept's answers to a local sender carry the pseudo-header
    /// sum for the device to complete; in native mode they become frames
    /// without that state and carry the full checksum.
    pub generic: u32,
    pub _pad: u32,
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

/// Name of the steering program's heartbeat map: one u64 at index 0, the
/// CLOCK_MONOTONIC nanoseconds (`bpf_ktime_get_ns`'s clock) of the proxy
/// loop's last beat. Not pinned.
pub const HEARTBEAT_MAP: &str = "HEARTBEAT";
/// How often the proxy's loop writes its heartbeat.
pub const HEARTBEAT_INTERVAL_NS: u64 = 1_000_000_000;
/// A heartbeat older than this means the proxy is stuck or stopped: new
/// SMTP sessions then follow `fail` as with no proxy.
pub const HEARTBEAT_STALE_NS: u64 = 3_000_000_000;

/// Name of the classifier's settings map (one [`ClassifyConfig`] at index
/// 0), read by XDP and TC alike. Not pinned: each daemon start writes it;
/// until then every field is 0, the safe default.
pub const CLASSIFY_CONFIG_MAP: &str = "CLASSIFY_CONFIG";

/// [`ClassifyConfig::unparsable`]: a packet whose transport header cannot
/// be found is dropped when it could be TCP to an inspected port or is addressed to a
/// protected server (the default).
pub const UNPARSABLE_DROP: u32 = 0;
/// [`ClassifyConfig::unparsable`]: every such packet is passed (counted
/// `malformed`).
pub const UNPARSABLE_PASS: u32 = 1;

/// Most TCP ports the policy can inspect (`[esmtp] ports`).
pub const INSPECT_MAX_PORTS: usize = 8;

/// The classifier's settings, written by the daemon from the policy.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClassifyConfig {
    /// [`UNPARSABLE_DROP`] or [`UNPARSABLE_PASS`].
    pub unparsable: u32,
    /// The inspected TCP ports (destination ports of client traffic), 0
    /// for an unused slot. All 0 (not yet written) means [`SMTP_PORT`]
    /// alone, so the settings' zero value stays the safe default.
    pub ports: [u16; INSPECT_MAX_PORTS],
}

impl ClassifyConfig {
    /// Whether `port` is inspected. A port of 0 never is (a packet can
    /// carry it; an unused slot holds it).
    #[inline(always)]
    pub fn inspects(&self, port: u16) -> bool {
        if self.ports[0] == 0 {
            return port == SMTP_PORT;
        }
        port != 0 && self.ports.contains(&port)
    }
}

/// Capacity of each exemption trie (rules per IP version).
pub const EXEMPT_MAX_RULES: u32 = 16_384;

/// Capacity of each client block trie (clients at their session limit, per
/// IP version).
pub const CLIENT_BLOCK_MAX: u32 = 65_536;

/// The TCP port inspected when the policy lists none (`[esmtp] ports`).
pub const SMTP_PORT: u16 = 25;

/// What the classifier decided about one packet.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// Not SMTP and not exempt: forwarded untouched.
    Pass = 0,
    /// TCP to an inspected port, not exempt: subject to inspection.
    Inspect = 1,
    /// Source or destination matches an exemption rule: never inspected.
    Exempt = 2,
    /// A header was truncated or invalid, or the transport header could not
    /// be found: dropped or passed as `unparsable` says.
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

    /// The class stored as a byte (fragment table entries); anything else
    /// reads as `Pass`.
    pub const fn from_u8(v: u8) -> Class {
        match v {
            1 => Class::Inspect,
            2 => Class::Exempt,
            3 => Class::Malformed,
            _ => Class::Pass,
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
    pub _pad: u32,
    /// Packets the rule exempted (XDP adds to it atomically; 0 when the
    /// rule is made). Lives and dies with the rule.
    pub hits: u64,
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
    /// The server's entry in `SERVER_CONNS` (below [`MAX_SERVERS`]): an
    /// array, so the kernel reaches a server's counts without a second
    /// hash lookup.
    pub counts: u32,
}

/// Key of the flow table: the 5-tuple, oriented client -> server whichever
/// way the packet went. Padding is explicit and always zero.
#[repr(C, align(8))]
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

/// Slots of [`FlowMarks`]: a power of two, and few enough (32 KiB) that
/// the array stays in the first-level cache under a flood (at 64 KiB and
/// more its read missed about as often as the packet's; docs/limits.md).
pub const FLOW_MARK_SLOTS: usize = 1 << 12;

/// What an insert adds to its slot of [`FlowMarks`]: one flow (the low
/// half) and one insert (the high half, which only grows), so that the
/// sweeper can tell a slot no flow entered since it last looked.
pub const FLOW_MARK_INSERT: u64 = 1 | 1 << 32;

/// The flows a slot of [`FlowMarks`] counts (its low half).
#[inline(always)]
pub const fn marked_flows(slot: u64) -> u32 {
    slot as u32
}

/// A counting filter of the flow table: slot [`FlowKey::mark_slot`]
/// counts the tracked flows that hash there (low half) and the inserts
/// there ever (high half). The kernel adds [`FLOW_MARK_INSERT`] before it
/// inserts a flow and takes one flow away after it removes one (or its
/// insert failed); the sweeper takes away those it removes. A slot that
/// counts no flow means no tracked flow has that tuple, so a new SYN there
/// needs no lookup in the (much larger, uncached) flow table. An entry the
/// table evicts leaves its mark (a slot that only costs a lookup) until
/// the sweeper settles the slot (`inspector::kernel::flow_marks`).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct FlowMarks {
    pub slots: [u64; FLOW_MARK_SLOTS],
}

impl FlowKey {
    /// The flow's slot in [`FlowMarks`]. The kernel and the sweeper both
    /// compute it, so it is plain integer arithmetic on the key's words (a
    /// multiplicative hash: the top bits of the product mix every word).
    /// Unkeyed: a flood aimed at the slots of tracked flows costs the
    /// flow table lookups every SYN cost before the marks, no more.
    #[inline(always)]
    pub fn mark_slot(&self) -> usize {
        // SAFETY: 40 bytes, aligned to 8, no implicit padding (the layout
        // is pinned below): five whole words, read as such (byte by byte,
        // the BPF code would take 40 loads).
        let words: [u64; 5] = unsafe { core::mem::transmute(*self) };
        let mut h: u64 = 0;
        for w in words {
            h = (h ^ w).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
        (h >> (64 - FLOW_MARK_SLOTS.trailing_zeros())) as usize
    }
}

/// State of a tracked flow (`FlowEntry::state`).
pub mod flow_state {
    /// The client's SYN was seen, its handshake-completing ACK not yet.
    /// Counted as embryonic.
    pub const EMBRYONIC: u32 = 1;
    /// The client completed the handshake. Counted as established.
    pub const ESTABLISHED: u32 = 2;
    /// A FIN was seen: no longer counted, kept until the half-closed
    /// timeout so its last packets are recognised (and translated).
    pub const CLOSING: u32 = 3;
    /// Intercepted: the client returned a valid SYN cookie (so completed
    /// its handshake, with us) and the kernel sent the server a SYN;
    /// waiting for the server's SYN-ACK. Counted as established: the client
    /// is real, and the server answers within a round trip.
    pub const OPENING: u32 = 4;
    /// An intercepted flow whose both sides' FINs were seen, each at its
    /// sender's next number: no longer counted, kept only briefly for its
    /// last ACKs and resent FINs to be translated (the sweeper's
    /// `CLOSED_LINGER`), where a flow with one FIN waits for the
    /// half-closed timeout. Any other flow both sides closed is forgotten
    /// at once. The firewall too tears a connection down once both sides
    /// have closed.
    pub const CLOSED: u32 = 5;
}

/// `FlowEntry::flags`.
pub mod flow_flags {
    /// TCP intercept opened the server side: sequence numbers are translated.
    pub const INTERCEPTED: u8 = 1 << 0;
    /// Timestamps are translated (both sides sent them).
    pub const TS: u8 = 1 << 1;
    /// SACK was offered to the client: its SACK blocks are translated.
    pub const SACK: u8 = 1 << 2;
    /// The server's windows are rescaled to the scale the client was told.
    pub const RESCALE_TO_CLIENT: u8 = 1 << 3;
    /// The client's windows are unscaled for a server that refused scaling.
    pub const RESCALE_TO_SERVER: u8 = 1 << 4;
    /// The client's packets arrive with checksum offload pending
    /// (`CHECKSUM_PARTIAL`: a local sender on a veth), as its handshake showed.
    pub const CLIENT_PARTIAL: u8 = 1 << 5;
    /// The same for the server's packets.
    pub const SERVER_PARTIAL: u8 = 1 << 6;
    /// ECN was negotiated with the client.
    pub const ECN: u8 = 1 << 7;
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
    /// acknowledged (our ISN); then the server's ISN minus the cookie, added
    /// to the client's acknowledgment numbers and taken from the server's
    /// sequence numbers.
    pub seq_delta: u32,
    /// Intercepted flows with timestamps: while `OPENING`, the timestamp
    /// our SYN-ACK sent; then the server's first timestamp minus ours, taken
    /// from the server's timestamps and added to the client's echoes.
    pub ts_delta: u32,
    /// The client's next sequence number: its ISN + 1, then, once the
    /// server's side is seen, what the server acknowledged (else what the
    /// client's in-order segments reached). Where an RST for the server
    /// must start, when the sweeper resets a half-open flow or asks the
    /// server about a client's RST (`kernel/sweeper.rs`).
    pub client_next: u32,
    /// Intercepted flows only, while `OPENING`: the client's window, for
    /// the ACK that completes the server's handshake.
    pub window: u16,
    /// [`flow_flags`].
    pub flags: u8,
    /// 1 once the client sent an RST the server may or may not have taken
    /// (the kernel cannot tell: a bad checksum, a TTL that ends at the
    /// gateway, data in flight): the sweeper finds out from the server and
    /// the flow stays counted until it does.
    pub client_reset: u8,
    /// Intercepted flows: the window scale our SYN-ACK announced, the
    /// server's and the client's (0 for none).
    pub wscale_ours: u8,
    pub wscale_server: u8,
    pub wscale_client: u8,
    /// [`seq_known`]'s bits for the sides whose FIN was seen at their
    /// next number ([`flow_state::CLOSED`] once both).
    pub fins: u8,
    /// The server's next sequence number as far as we have seen it (its
    /// ISN + 1, moved by its in-order segments): an RST or a FIN from the
    /// server releases the flow only there. `client_next` is the client's.
    pub server_next: u32,
    /// [`seq_known`]: which of `client_next` and `server_next` hold a value.
    pub seq_known: u8,
    /// 1 when the engine's local listener answers the client (a session
    /// the proxy inspects): the server's side is never seen here, so the
    /// client's own segments are all there is to go by.
    pub local: u8,
    pub _pad3: [u8; 2],
}

/// `FlowEntry::seq_known`.
pub mod seq_known {
    pub const CLIENT: u8 = 1 << 0;
    pub const SERVER: u8 = 1 << 1;
}

/// Key of the per-client counters: a client of one protected server.
#[repr(C, align(8))]
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
    /// A SYN to an inspected port from a client holding its proxy's
    /// `per-client-sessions` (the `CLIENT_BLOCK_*` tries).
    PerClient = 4,
}

impl DropReason {
    pub const COUNT: u32 = 5;
    pub const ALL: [DropReason; Self::COUNT as usize] = [
        DropReason::MaxConns,
        DropReason::MaxEmbryonic,
        DropReason::PerClientMax,
        DropReason::PerClientEmbryonicMax,
        DropReason::PerClient,
    ];

    /// As in the policy file.
    pub const fn name(self) -> &'static str {
        match self {
            DropReason::MaxConns => "max-conns",
            DropReason::MaxEmbryonic => "max-embryonic",
            DropReason::PerClientMax => "per-client-max",
            DropReason::PerClientEmbryonicMax => "per-client-embryonic-max",
            DropReason::PerClient => "per-client",
        }
    }
}

/// Why the classifier dropped a packet for its shape, before any flow
/// logic: the index into `PARSE_DROPS`. XDP and TC take the same decision
/// (a packet XDP drops never reaches TC).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParseDrop {
    /// A fragment of a TCP datagram to an inspected port (not exempt) or to a
    /// protected server: TCP with path MTU discovery never fragments.
    TcpFragment = 0,
    /// A first fragment too short to hold the whole TCP header (RFC 1858)
    /// or, over IPv6, the header chain (RFC 7112).
    TinyFragment = 1,
    /// A fragment overlapping its datagram's first fragment, where the
    /// ports and flags are (RFC 1858, 3128, 5722); the datagram is dropped.
    FragmentOverlap = 2,
    /// A later fragment of a TCP datagram whose first fragment was not
    /// seen (out of order, evicted, or never sent).
    FragmentWithoutFirst = 3,
    /// A fragment ending past the largest datagram (65,535 bytes).
    FragmentBadOffset = 4,
    /// A header cut short (by the frame or by the IP length).
    UnparsableTruncated = 5,
    /// A header with an impossible value (IP version, header lengths).
    UnparsableInvalid = 6,
    /// An IPv6 extension header chain longer than the classifier walks.
    UnparsableExtHeaders = 7,
    /// An encapsulation the classifier does not look into but the kernel
    /// may route: a third VLAN tag, MPLS, a PPPoE session.
    UnparsableEncapsulation = 8,
}

impl ParseDrop {
    pub const COUNT: u32 = 9;
    pub const ALL: [ParseDrop; Self::COUNT as usize] = [
        ParseDrop::TcpFragment,
        ParseDrop::TinyFragment,
        ParseDrop::FragmentOverlap,
        ParseDrop::FragmentWithoutFirst,
        ParseDrop::FragmentBadOffset,
        ParseDrop::UnparsableTruncated,
        ParseDrop::UnparsableInvalid,
        ParseDrop::UnparsableExtHeaders,
        ParseDrop::UnparsableEncapsulation,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            ParseDrop::TcpFragment => "tcp-fragment",
            ParseDrop::TinyFragment => "tiny-fragment",
            ParseDrop::FragmentOverlap => "fragment-overlap",
            ParseDrop::FragmentWithoutFirst => "fragment-without-first",
            ParseDrop::FragmentBadOffset => "fragment-bad-offset",
            ParseDrop::UnparsableTruncated => "unparsable-truncated",
            ParseDrop::UnparsableInvalid => "unparsable-invalid",
            ParseDrop::UnparsableExtHeaders => "unparsable-ext-headers",
            ParseDrop::UnparsableEncapsulation => "unparsable-encapsulation",
        }
    }

    /// Whether the `unparsable` policy setting decides this drop (the
    /// fragment rules always apply).
    pub const fn is_unparsable(self) -> bool {
        self as u32 >= ParseDrop::UnparsableTruncated as u32
    }

    /// The reason stored as a byte (fragment table entries), if valid.
    pub const fn from_u8(v: u8) -> Option<ParseDrop> {
        Some(match v {
            0 => ParseDrop::TcpFragment,
            1 => ParseDrop::TinyFragment,
            2 => ParseDrop::FragmentOverlap,
            3 => ParseDrop::FragmentWithoutFirst,
            4 => ParseDrop::FragmentBadOffset,
            5 => ParseDrop::UnparsableTruncated,
            6 => ParseDrop::UnparsableInvalid,
            7 => ParseDrop::UnparsableExtHeaders,
            8 => ParseDrop::UnparsableEncapsulation,
            _ => return None,
        })
    }
}

/// Capacity of the fragment table (`FRAGMENTS`), in datagrams being
/// fragmented (Cilium's default).
pub const FRAG_TABLE_SIZE: u32 = 8_192;
/// How long a datagram's fragments are followed, from its first packet:
/// the kernel's reassembly timeouts (`ipfrag_time`, `ip6frag_time`).
pub const FRAG_TIMEOUT_V4_NS: u64 = 30_000_000_000;
pub const FRAG_TIMEOUT_V6_NS: u64 = 60_000_000_000;

/// Key of the fragment table: one fragmented datagram, as the receiver's
/// reassembly keys it. IPv4 (RFC 791): addresses, protocol and the 16-bit
/// identification; IPv6 (RFC 8200): addresses and the 32-bit
/// identification, protocol 0 (the first fragment's says what it is).
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FragKey {
    pub src: Addr16,
    pub dst: Addr16,
    pub id: u32,
    pub protocol: u8,
    /// 4 or 6.
    pub version: u8,
    pub _pad: [u8; 2],
}

/// Value of the fragment table: what the datagram's first fragment said,
/// and enough of the others to tell overlaps and the datagram's end.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FragEntry {
    /// `bpf_ktime_get_ns()` of the datagram's first packet seen.
    pub created_ns: u64,
    /// Bytes of fragment data seen (duplicates included).
    pub received: u32,
    /// The datagram's length, known from its last fragment (0 until then);
    /// once `received` reaches it the entry is done and its key free.
    pub total: u32,
    /// Ports of the datagram (TCP, UDP; host order), from the first fragment.
    pub src_port: u16,
    pub dst_port: u16,
    /// End of the first fragment's data (bytes, from the fragmentable part).
    pub first_end: u16,
    /// Lowest offset of a later fragment seen before the first (0xffff: none).
    pub min_later: u16,
    /// 1 once the first fragment was seen.
    pub first_seen: u8,
    /// 0 to pass the datagram's fragments, else its [`ParseDrop`] + 1.
    pub drop: u8,
    /// The datagram's [`Class`].
    pub class: u8,
    /// The datagram's protocol, from its first fragment.
    pub protocol: u8,
    pub _pad: u32,
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
    /// A verified client was let in while half-open flows held every slot
    /// of `max-conns` (or `per-client-max`): the sweeper resets the oldest
    /// of them (an RST to the server) to give the slot back.
    HalfOpenDisplaced = 3,
    /// An RST the daemon's sweeper sent a server, from the client's address,
    /// for a half-open flow that expired or was displaced, so that the
    /// server's SYN queue entry is freed. Counted by userspace, never by
    /// the kernel (whatever the limit's action, not only intercept).
    ServerReset = 4,
    /// The SYN to the server of a verified client sent again: the server
    /// had not answered the first a second later (lost, perhaps), and the
    /// client's answer to the sweeper's nudge became the SYN.
    SynResent = 5,
    /// An RST the sweeper sent a verified client whose server never
    /// answered (its flow expired while opening). Counted by userspace.
    ClientReset = 6,
}

impl InterceptEvent {
    pub const COUNT: u32 = 7;
    pub const ALL: [InterceptEvent; Self::COUNT as usize] = [
        InterceptEvent::CookieSent,
        InterceptEvent::ClientVerified,
        InterceptEvent::ServerOpened,
        InterceptEvent::HalfOpenDisplaced,
        InterceptEvent::ServerReset,
        InterceptEvent::SynResent,
        InterceptEvent::ClientReset,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            InterceptEvent::CookieSent => "syn-cookies-sent",
            InterceptEvent::ClientVerified => "clients-verified",
            InterceptEvent::ServerOpened => "servers-opened",
            InterceptEvent::HalfOpenDisplaced => "half-open-displaced",
            InterceptEvent::ServerReset => "server-resets",
            InterceptEvent::SynResent => "syns-resent",
            InterceptEvent::ClientReset => "client-resets",
        }
    }
}

// Layouts are an ABI between the object file and the daemon: pin them.
const _: () = {
    use core::mem::{offset_of, size_of};
    assert!(size_of::<ClassCounters>() == 16);
    assert!(offset_of!(ClassCounters, bytes) == 8);
    assert!(size_of::<ExemptRule>() == 16);
    assert!(offset_of!(ExemptRule, hits) == 8);
    assert!(size_of::<ServerLimits>() == 24);
    assert!(offset_of!(ServerLimits, on_embryonic_limit) == 16);
    assert!(size_of::<FlowKey>() == 40);
    assert!(offset_of!(FlowKey, client_port) == 32);
    assert!(offset_of!(FlowKey, protocol) == 36);
    assert!(size_of::<FlowEntry>() == 40);
    assert!(size_of::<FlowMarks>() == 8 * FLOW_MARK_SLOTS);
    assert!(FLOW_MARK_SLOTS.is_power_of_two());
    assert!(offset_of!(FlowEntry, state) == 8);
    assert!(offset_of!(FlowEntry, seq_delta) == 12);
    assert!(offset_of!(FlowEntry, ts_delta) == 16);
    assert!(offset_of!(FlowEntry, client_next) == 20);
    assert!(offset_of!(FlowEntry, window) == 24);
    assert!(offset_of!(FlowEntry, flags) == 26);
    assert!(offset_of!(FlowEntry, wscale_ours) == 28);
    assert!(offset_of!(FlowEntry, server_next) == 32);
    assert!(offset_of!(FlowEntry, seq_known) == 36);
    assert!(size_of::<XdpConfig>() == 8);
    assert!(size_of::<ClientKey>() == 32);
    assert!(size_of::<ConnCounts>() == 16);
    assert!(offset_of!(ConnCounts, established) == 8);
    assert!(size_of::<SteerConfig>() == 8);
    assert!(size_of::<ClassifyConfig>() == 20);
    assert!(offset_of!(ClassifyConfig, ports) == 4);
    assert!(size_of::<FragKey>() == 40);
    assert!(offset_of!(FragKey, id) == 32);
    assert!(offset_of!(FragKey, protocol) == 36);
    assert!(size_of::<FragEntry>() == 32);
    assert!(offset_of!(FragEntry, received) == 8);
    assert!(offset_of!(FragEntry, src_port) == 16);
    assert!(offset_of!(FragEntry, first_end) == 20);
    assert!(offset_of!(FragEntry, first_seen) == 24);
    assert!(offset_of!(FragEntry, protocol) == 27);
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
    unsafe impl aya::Pod for super::XdpConfig {}
    unsafe impl aya::Pod for super::ClassifyConfig {}
    unsafe impl aya::Pod for super::FragKey {}
    unsafe impl aya::Pod for super::FragEntry {}
}
