//! Types shared by the kernel programs (`inspector-ebpf`) and userspace
//! (`inspector-user`). Every type here crosses the kernel/user boundary
//! through a BPF map, so each is `#[repr(C)]`, has no implicit padding, and
//! its size is asserted at compile time on both sides.
#![no_std]

/// Map names, as pinned under the bpffs directory. Userspace opens the pins
/// by these names, so they are the on-disk interface between daemon and CLI.
pub mod maps {
    /// Per-CPU array of [`super::ClassCounters`], indexed by [`super::Class`].
    pub const CLASS_STATS: &str = "CLASS_STATS";
    /// LPM trie of IPv4 exemption rules: `Key<[u8; 4]>` (network order) -> [`super::ExemptRule`].
    pub const EXEMPT_V4: &str = "EXEMPT_V4";
    /// LPM trie of IPv6 exemption rules: `Key<[u8; 16]>` -> [`super::ExemptRule`].
    pub const EXEMPT_V6: &str = "EXEMPT_V6";
    /// Every pinned map, for `inspector unload`.
    pub const ALL: [&str; 3] = [CLASS_STATS, EXEMPT_V4, EXEMPT_V6];
}

/// Program names as they appear in the object file.
pub mod programs {
    pub const XDP_CLASSIFY: &str = "inspector_xdp";
    /// TC (clsact ingress) program marking flagged flows for the engine.
    pub const TC_STEER: &str = "inspector_steer";
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

/// [`SteerConfig::fail`]: with no engine listening, new SMTP flows go
/// straight to the server, uninspected.
pub const FAIL_OPEN: u32 = 0;
/// [`SteerConfig::fail`]: with no engine listening, the SYNs of new SMTP
/// flows are dropped (the client retries later).
pub const FAIL_CLOSED: u32 = 1;

/// The steering program's settings, written by the daemon.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SteerConfig {
    /// [`FAIL_OPEN`] or [`FAIL_CLOSED`].
    pub fail: u32,
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

// Layouts are an ABI between the object file and the daemon: pin them.
const _: () = {
    use core::mem::{offset_of, size_of};
    assert!(size_of::<ClassCounters>() == 16);
    assert!(offset_of!(ClassCounters, bytes) == 8);
    assert!(size_of::<ExemptRule>() == 4);
    assert!(size_of::<SteerConfig>() == 4);
};

#[cfg(feature = "user")]
mod pod {
    // SAFETY: each type is repr(C), Copy, and has no padding (asserted above),
    // so every byte pattern of its size is a valid value.
    unsafe impl aya::Pod for super::ClassCounters {}
    unsafe impl aya::Pod for super::ExemptRule {}
    unsafe impl aya::Pod for super::SteerConfig {}
}
