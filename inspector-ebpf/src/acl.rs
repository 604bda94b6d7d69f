//! The exemption ACL: CIDR rules in LPM tries, one per IP version. A packet
//! whose source or destination falls in any rule is exempt.

use aya_ebpf::{
    macros::map,
    maps::{LpmTrie, lpm_trie::Key},
};
use inspector_common::{EXEMPT_MAX_RULES, ExemptRule};

use crate::parse::Addr;

#[map]
static EXEMPT_V4: LpmTrie<[u8; 4], ExemptRule> = LpmTrie::pinned(EXEMPT_MAX_RULES, 0);

#[map]
static EXEMPT_V6: LpmTrie<[u8; 16], ExemptRule> = LpmTrie::pinned(EXEMPT_MAX_RULES, 0);

#[inline(always)]
pub fn is_exempt(addr: &Addr) -> bool {
    match addr {
        Addr::V4(a) => EXEMPT_V4.get(Key::new(32, *a)).is_some(),
        Addr::V6(a) => EXEMPT_V6.get(Key::new(128, *a)).is_some(),
    }
}
