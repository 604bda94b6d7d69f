//! `fail = "closed"` without a live proxy: the client's SYN is answered
//! with a RST, so its MTA sees "connection refused" at once and queues the
//! message, instead of waiting for a connect timeout. The kernel's own
//! stack cannot do it (a RST for an address the host does not own has no
//! route back), so the program turns the SYN into the RST in place and
//! sends it back out of the interface it came in on (`bpf_redirect` to its
//! egress).
//!
//! The rewrite keeps the checksums right whatever state the skb's checksum
//! is in (computed by the NIC, partial from a veth, or none): every field
//! that changes goes through `bpf_l3_csum_replace`/`bpf_l4_csum_replace`,
//! which know that state; swapping the addresses and the ports changes no
//! sum. Options are zeroed (their words taken out of the sum) before the
//! packet is cut after the TCP header.
//!
//! Only IPv4 without options and IPv6 without extension headers, and a SYN
//! without payload (the usual SYN); anything else is dropped, as before.

use aya_ebpf::{
    bindings::{BPF_F_PSEUDO_HDR, TC_ACT_SHOT},
    helpers::{bpf_redirect, bpf_skb_change_tail},
    programs::TcContext,
};

use crate::parse;

const TTL: u8 = 64;
const RST_ACK: u8 = 0x14;
/// The TCP checksum's offset in the TCP header.
const CHECK: usize = 16;
const TCP_HLEN: usize = 20;

/// Answers the SYN in `ctx` with a RST|ACK; returns the TC action.
#[inline(never)]
pub fn refuse(ctx: &TcContext) -> i32 {
    match rewrite(ctx) {
        // SAFETY: a helper on the ifindex the packet came in on.
        Some(()) => unsafe { bpf_redirect((*ctx.skb.skb).ifindex, 0) as i32 },
        None => TC_ACT_SHOT,
    }
}

#[inline(always)]
fn rewrite(ctx: &TcContext) -> Option<()> {
    // The classifier found a whole TCP segment (the only way here).
    let (_, _, tcp) = parse::tcp()?;
    let (l3, l4) = (tcp.l3, tcp.l4);
    let version = ctx.load::<u8>(l3).ok()? >> 4;
    let v4 = version == 4 && l4 == l3 + 20;
    if !(v4 || version == 6 && l4 == l3 + 40) {
        return None;
    }
    let doff = usize::from(ctx.load::<u8>(l4 + 12).ok()? >> 4) * 4;
    let segment = (ctx.len() as usize).checked_sub(l4)?;
    if segment != doff || !(TCP_HLEN..=60).contains(&doff) {
        return None; // a SYN with data (TFO), or a header cut short
    }
    let csum = l4 + CHECK;
    let l4_replace = |from: u64, to: u64, size: u64| ctx.l4_csum_replace(csum, from, to, size).ok();

    // Ethernet: back to the sender.
    let macs: [u8; 12] = ctx.load(0).ok()?;
    let mut swapped = [0u8; 12];
    swapped[..6].copy_from_slice(&macs[6..]);
    swapped[6..].copy_from_slice(&macs[..6]);
    ctx.store(0, &swapped, 0).ok()?;

    // IP: addresses swapped (no sum changes), a fresh TTL, the new length.
    if v4 {
        let addrs: [u8; 8] = ctx.load(l3 + 12).ok()?;
        let back = [
            addrs[4], addrs[5], addrs[6], addrs[7], addrs[0], addrs[1], addrs[2], addrs[3],
        ];
        ctx.store(l3 + 12, &back, 0).ok()?;
        let old_len: [u8; 2] = ctx.load(l3 + 2).ok()?;
        let new_len = ((20 + TCP_HLEN) as u16).to_be_bytes();
        ctx.l3_csum_replace(l3 + 10, be16(old_len), be16(new_len), 2)
            .ok()?;
        ctx.store(l3 + 2, &new_len, 0).ok()?;
        let ttl_proto: [u8; 2] = ctx.load(l3 + 8).ok()?;
        let new_ttl = [TTL, ttl_proto[1]];
        ctx.l3_csum_replace(l3 + 10, be16(ttl_proto), be16(new_ttl), 2)
            .ok()?;
        ctx.store(l3 + 8, &new_ttl, 0).ok()?;
    } else {
        let src: [u8; 16] = ctx.load(l3 + 8).ok()?;
        let dst: [u8; 16] = ctx.load(l3 + 24).ok()?;
        ctx.store(l3 + 8, &dst, 0).ok()?;
        ctx.store(l3 + 24, &src, 0).ok()?;
        ctx.store(l3 + 4, &(TCP_HLEN as u16).to_be_bytes(), 0)
            .ok()?;
        ctx.store(l3 + 7, &TTL, 0).ok()?;
    }
    // The pseudo-header's TCP length.
    l4_replace(
        be16((segment as u16).to_be_bytes()),
        be16((TCP_HLEN as u16).to_be_bytes()),
        u64::from(BPF_F_PSEUDO_HDR) | 2,
    )?;

    // TCP: ports swapped (no sum change); seq 0, ack = the SYN's seq + 1,
    // RST|ACK, no window, no options.
    let ports: [u8; 4] = ctx.load(l4).ok()?;
    ctx.store(l4, &[ports[2], ports[3], ports[0], ports[1]], 0)
        .ok()?;
    let seq: [u8; 4] = ctx.load(l4 + 4).ok()?;
    let ack: [u8; 4] = ctx.load(l4 + 8).ok()?;
    let new_ack = u32::from_be_bytes(seq).wrapping_add(1).to_be_bytes();
    for (offset, old, new) in [(4, seq, [0; 4]), (8, ack, new_ack)] {
        l4_replace(be32(old), be32(new), 4)?;
        ctx.store(l4 + offset, &new, 0).ok()?;
    }
    let flags: [u8; 2] = ctx.load(l4 + 12).ok()?;
    let new_flags = [(TCP_HLEN as u8 / 4) << 4, RST_ACK];
    let window: [u8; 2] = ctx.load(l4 + 14).ok()?;
    let urgent: [u8; 2] = ctx.load(l4 + 18).ok()?;
    for (offset, old, new) in [
        (12, flags, new_flags),
        (14, window, [0; 2]),
        (18, urgent, [0; 2]),
    ] {
        l4_replace(be16(old), be16(new), 2)?;
        ctx.store(l4 + offset, &new, 0).ok()?;
    }
    for i in 0..10 {
        let at = l4 + TCP_HLEN + 4 * i;
        if at >= l4 + doff {
            break;
        }
        let word: [u8; 4] = ctx.load(at).ok()?;
        l4_replace(be32(word), 0, 4)?;
        ctx.store(at, &[0u8; 4], 0).ok()?;
    }
    // SAFETY: a helper on our own skb; packet pointers are not used after.
    if unsafe { bpf_skb_change_tail(ctx.skb.skb as *mut _, (l4 + TCP_HLEN) as u32, 0) } != 0 {
        return None;
    }
    Some(())
}

/// Bytes as the helpers take a field: its value as it lies in memory.
#[inline(always)]
fn be16(bytes: [u8; 2]) -> u64 {
    u64::from(u16::from_ne_bytes(bytes))
}

#[inline(always)]
fn be32(bytes: [u8; 4]) -> u64 {
    u64::from(u32::from_ne_bytes(bytes))
}
