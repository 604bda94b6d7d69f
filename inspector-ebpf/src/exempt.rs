//! The exemption ACL and the class of a packet it decides. The rules are
//! CIDRs in LPM tries, one per IP version; a packet whose source or
//! destination falls in any rule is exempt, whatever its protocol (like
//! `permit ip any HOST` / `permit ip HOST any`), and is never inspected.

use aya_ebpf::{
    macros::map,
    maps::{LpmTrie, lpm_trie::Key},
};
use inspector_common::{Class, EXEMPT_MAX_RULES, ExemptRule, SMTP_PORT};

use crate::parse::{Addr, Transport};

#[map]
static EXEMPT_V4: LpmTrie<[u8; 4], ExemptRule> = LpmTrie::pinned(EXEMPT_MAX_RULES, 0);

#[map]
static EXEMPT_V6: LpmTrie<[u8; 16], ExemptRule> = LpmTrie::pinned(EXEMPT_MAX_RULES, 0);

/// The class of an IP packet: the exemption ACL first (it matches any IP
/// packet), then SMTP. (Non-IP and unparsable packets never get here.)
#[inline(always)]
pub fn classify(src: &Addr, dst: &Addr, transport: &Transport) -> Class {
    if is_exempt(src) || is_exempt(dst) {
        Class::Exempt
    } else if matches!(transport, Transport::Tcp(tcp) if tcp.dst_port == SMTP_PORT) {
        Class::Inspect
    } else {
        Class::Pass
    }
}

/// Whether `addr` falls in a rule (a packet is exempt when its source or
/// its destination does).
#[inline(always)]
pub fn is_exempt(addr: &Addr) -> bool {
    match addr {
        Addr::V4(a) => EXEMPT_V4.get(Key::new(32, a.to_ne_bytes())).is_some(),
        Addr::V6(a) => {
            let mut bytes = [0u8; 16];
            for (i, word) in a.iter().enumerate() {
                bytes[4 * i..4 * i + 4].copy_from_slice(&word.to_ne_bytes());
            }
            EXEMPT_V6.get(Key::new(128, bytes)).is_some()
        }
    }
}
