//! The exemption ACL and the class of a packet it decides. The rules are
//! CIDRs in LPM tries, one per IP version; a packet whose source or
//! destination falls in any rule is exempt, whatever its protocol (like
//! `permit ip any HOST` / `permit ip HOST any`), and is never inspected.

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::{
    macros::map,
    maps::{LpmTrie, lpm_trie::Key},
};
use inspector_common::{Class, EXEMPT_MAX_RULES, ExemptRule, SMTP_PORT};

use crate::parse::{Addr, Headers, Transport};

#[map]
static EXEMPT_V4: LpmTrie<[u8; 4], ExemptRule> = LpmTrie::pinned(EXEMPT_MAX_RULES, 0);

#[map]
static EXEMPT_V6: LpmTrie<[u8; 16], ExemptRule> = LpmTrie::pinned(EXEMPT_MAX_RULES, 0);

/// The exemption ACL first (it matches any IP packet), then SMTP.
/// (Malformed packets never get here.)
#[inline(always)]
pub fn classify(headers: &Headers) -> Class {
    match headers {
        Headers::NotIp => Class::Pass,
        Headers::Ip {
            src,
            dst,
            transport,
        } => {
            if hit(src) || hit(dst) {
                Class::Exempt
            } else if matches!(transport, Transport::Tcp(tcp) if tcp.dst_port == SMTP_PORT) {
                Class::Inspect
            } else {
                Class::Pass
            }
        }
    }
}

/// Whether `addr` falls in a rule, counting the packet in the rule's
/// `hits` (XDP's classification; TC asks [`is_exempt`], which does not
/// count, so a packet counts once).
#[inline(always)]
fn hit(addr: &Addr) -> bool {
    let rule = match addr {
        Addr::V4(a) => EXEMPT_V4.get(Key::new(32, *a)),
        Addr::V6(a) => EXEMPT_V6.get(Key::new(128, *a)),
    };
    let Some(rule) = rule else {
        return false;
    };
    // SAFETY: the value lives in the trie for this program run; the add is
    // atomic because other CPUs count into the same rule.
    unsafe {
        let hits = core::ptr::addr_of!(rule.hits) as *mut u64;
        atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(hits, 1);
    }
    true
}

/// Whether `addr` falls in a rule (a packet is exempt when its source or
/// its destination does).
#[inline(always)]
pub fn is_exempt(addr: &Addr) -> bool {
    match addr {
        Addr::V4(a) => EXEMPT_V4.get(Key::new(32, *a)).is_some(),
        Addr::V6(a) => EXEMPT_V6.get(Key::new(128, *a)).is_some(),
    }
}
