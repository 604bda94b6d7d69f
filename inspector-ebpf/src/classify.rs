//! The one decision both programs take about a packet before any flow
//! logic: its [`Class`], and whether it is dropped for its shape. XDP and
//! TC call the same code on the same parser, so no packet is judged one
//! way in XDP and another in TC (TC only reads the fragment table that XDP
//! keeps; see `fragments`).
//!
//! | packet | verdict |
//! |---|---|
//! | whole, parsed | passed with its class (TCP then meets limits, steering) |
//! | fragment | `fragments`: TCP to an inspected port or a protected server dropped, the rest passed with its datagram's class |
//! | first fragment too short for its TCP header (or IPv6 header chain) | dropped (`tiny-fragment`) when it could be TCP to an inspected port or is to a protected server |
//! | transport header not found (cut short, impossible value, too many IPv6 extension headers, an encapsulation not looked into) | dropped (`unparsable-*`) when it could be TCP to an inspected port or is to a protected server and the policy says `unparsable = "drop"` (the default); else passed |
//!
//! "Could be TCP to an inspected port": the protocol is TCP or unknown, and neither
//! address is exempt (exempt traffic is never inspected anyway). When not
//! even the addresses are known, it could be anything. "Port 25" here and
//! below stands for the policy's inspected ports (`[esmtp] ports`, 25 by
//! default; [`is_inspected_port`]).

use aya_ebpf::{macros::map, maps::Array};
use inspector_common::{Class, ClassifyConfig, ParseDrop, SMTP_PORT, UNPARSABLE_PASS};

use crate::{
    exempt, fragments, limits,
    packet::Packet,
    parse::{self, Addr, Headers, Transport},
};

/// The policy's settings for the classifier, written by the daemon.
#[map]
static CLASSIFY_CONFIG: Array<ClassifyConfig> = Array::with_max_entries(1, 0);

/// Which program asks: XDP keeps the fragment table, TC reads it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Xdp,
    Tc,
}

#[derive(Clone, Copy)]
pub struct Decision {
    pub class: Class,
    /// Why the packet is dropped, or `None` to let it go on.
    pub drop: Option<ParseDrop>,
    /// A whole TCP segment (not a fragment): the limits and the steering
    /// look at it, through `parse::tcp`.
    pub tcp: bool,
}

impl Decision {
    /// The decision in one register, for a BPF subprogram's return value.
    #[inline(always)]
    pub fn pack(self) -> u32 {
        let drop = self.drop.map_or(0, |r| r as u32 + 1);
        (self.class as u32) | (drop << 8) | ((self.tcp as u32) << 16)
    }

    #[inline(always)]
    pub fn unpack(v: u32) -> Self {
        Self {
            class: Class::from_u8(v as u8),
            drop: match (v >> 8) as u8 {
                0 => None,
                r => ParseDrop::from_u8(r - 1),
            },
            tcp: (v >> 16) & 1 != 0,
        }
    }
}

/// The decision, from a BPF subprogram: the parser's stack frame is not
/// added to its caller's, which calls the limits and TCP intercept after
/// it (the fragment verdict is a subprogram of its own, see `fragments`).
#[inline(always)]
pub fn decide(packet: &Packet, stage: Stage) -> Decision {
    Decision::unpack(decide_packed(packet, stage))
}

#[inline(never)]
fn decide_packed(packet: &Packet, stage: Stage) -> u32 {
    decide_inline(packet, stage).pack()
}

#[inline(always)]
fn decide_inline(packet: &Packet, stage: Stage) -> Decision {
    match parse::headers(packet) {
        Ok(Headers::NotIp) => Decision {
            class: Class::Pass,
            drop: None,
            tcp: false,
        },
        Ok(Headers::Ip {
            src,
            dst,
            transport: Transport::Unparsable(reason, maybe_tcp),
            ..
        }) => Decision {
            class: Class::Malformed,
            drop: unparsable(reason, Some((&src, &dst)), maybe_tcp),
            tcp: false,
        },
        Ok(Headers::Ip {
            src,
            dst,
            transport,
            fragment: None,
        }) => {
            let tcp = if let Transport::Tcp(tcp) = &transport {
                parse::keep_tcp(&src, &dst, tcp);
                true
            } else {
                false
            };
            Decision {
                class: exempt::classify(&src, &dst, &transport, stage),
                drop: None,
                tcp,
            }
        }
        Ok(Headers::Ip {
            src,
            dst,
            transport,
            fragment: Some(f),
        }) => {
            let (class, drop) = fragments::judge(&src, &dst, &transport, &f, stage);
            Decision {
                class,
                drop,
                tcp: false,
            }
        }
        Err(reason) => Decision {
            class: Class::Malformed,
            drop: unparsable(reason, None, true),
            tcp: false,
        },
    }
}

/// Whether an unparsable packet is dropped, and why.
#[inline(always)]
fn unparsable(
    reason: ParseDrop,
    addrs: Option<(&Addr, &Addr)>,
    maybe_tcp: bool,
) -> Option<ParseDrop> {
    // Tiny fragments are a fragment rule: never passed by the policy.
    if reason.is_unparsable() && policy_passes() {
        return None;
    }
    let guarded = match addrs {
        None => true,
        Some((src, dst)) => {
            (maybe_tcp && !(exempt::is_exempt(src) || exempt::is_exempt(dst)))
                || limits::is_protected(dst)
        }
    };
    guarded.then_some(reason)
}

/// Whether TCP to `port` is SMTP the policy inspects (`[esmtp] ports`;
/// port 25 until the daemon writes the settings).
#[inline(always)]
pub fn is_inspected_port(port: u16) -> bool {
    match CLASSIFY_CONFIG.get(0) {
        Some(c) => c.inspects(port),
        None => port == SMTP_PORT,
    }
}

#[inline(always)]
fn policy_passes() -> bool {
    CLASSIFY_CONFIG
        .get(0)
        .is_some_and(|c| c.unparsable == UNPARSABLE_PASS)
}
