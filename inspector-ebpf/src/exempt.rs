//! The exemption ACL and the class of a packet it decides. The rules are
//! CIDRs in LPM tries, one per IP version; a packet whose source or
//! destination falls in any rule is exempt, whatever its protocol (like
//! `permit ip any HOST` / `permit ip HOST any`), and is never inspected.

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::{
    macros::map,
    maps::{LpmTrie, lpm_trie::Key},
};
use inspector_common::{Class, EXEMPT_MAX_RULES, ExemptRule};

use crate::{
    classify::{Stage, is_inspected_port},
    parse::{Addr, Transport},
};

#[map]
static EXEMPT_V4: LpmTrie<[u8; 4], ExemptRule> = LpmTrie::pinned(EXEMPT_MAX_RULES, 0);

#[map]
static EXEMPT_V6: LpmTrie<[u8; 16], ExemptRule> = LpmTrie::pinned(EXEMPT_MAX_RULES, 0);

/// The class of an IP packet: the exemption ACL first (it matches any IP
/// packet), then SMTP (TCP to an inspected port). (Non-IP and unparsable packets never get here.)
/// XDP counts the packet in the rule it falls in; TC, which sees the same
/// packet after it, does not, so each packet counts once.
#[inline(always)]
pub fn classify(src: &Addr, dst: &Addr, transport: &Transport, stage: Stage) -> Class {
    let count = stage == Stage::Xdp;
    if hit(src, count) || hit(dst, count) {
        Class::Exempt
    } else if matches!(transport, Transport::Tcp(tcp) if is_inspected_port(tcp.dst_port)) {
        Class::Inspect
    } else {
        Class::Pass
    }
}

/// Whether `addr` falls in a rule; with `count`, the packet is added to the
/// rule's `hits`.
#[inline(always)]
fn hit(addr: &Addr, count: bool) -> bool {
    let Some(rule) = rule_of(addr) else {
        return false;
    };
    if count {
        // SAFETY: the value lives in the trie for this program run; the add
        // is atomic because other CPUs count into the same rule.
        unsafe {
            let hits = core::ptr::addr_of!(rule.hits) as *mut u64;
            atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(hits, 1);
        }
    }
    true
}

/// The rule `addr` falls in, if any.
#[inline(always)]
fn rule_of(addr: &Addr) -> Option<&ExemptRule> {
    lookup(&EXEMPT_V4, &EXEMPT_V6, addr)
}

/// The value of the longest prefix of `v4` or `v6` (by `addr`'s version)
/// that holds `addr`.
#[inline(always)]
pub fn lookup<'a, V>(
    v4: &'a LpmTrie<[u8; 4], V>,
    v6: &'a LpmTrie<[u8; 16], V>,
    addr: &Addr,
) -> Option<&'a V> {
    match addr {
        Addr::V4(a) => v4.get(Key::new(32, a.to_ne_bytes())),
        Addr::V6(a) => {
            let mut bytes = [0u8; 16];
            for (i, word) in a.iter().enumerate() {
                bytes[4 * i..4 * i + 4].copy_from_slice(&word.to_ne_bytes());
            }
            v6.get(Key::new(128, bytes))
        }
    }
}

/// Whether `addr` falls in a rule (a packet is exempt when its source or
/// its destination does).
#[inline(always)]
pub fn is_exempt(addr: &Addr) -> bool {
    rule_of(addr).is_some()
}
