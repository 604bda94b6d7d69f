//! The kernel's own socket table, as the programs see it: which local
//! socket a packet would reach. The engine's listener and its connections
//! live there, so steering asks it whether a flow is the engine's, and the
//! socket vanishes with the process that holds it.

use aya_ebpf::{
    bindings::{BPF_F_CURRENT_NETNS, bpf_sock, bpf_sock_tuple, tcphdr},
    cty::c_void,
    helpers::{bpf_sk_release, bpf_skc_lookup_tcp, bpf_tcp_check_syncookie},
};

use crate::{
    packet::Packet,
    parse::{Addr, Tcp},
};

/// `TCP_LISTEN` from the kernel's `tcp_states.h`.
pub const TCP_LISTEN: u32 = 10;

/// Looks up the local socket a packet with this 4-tuple would reach
/// (established, half-open, time-wait or listening) and returns what
/// `decide` makes of it and its state, or `None` when there is none.
/// `ctx` is the program's context (an XDP `xdp_md` or a TC `__sk_buff`).
#[inline(always)]
pub fn lookup<T>(
    ctx: *mut c_void,
    src: &Addr,
    dst: &Addr,
    sport: u16,
    dport: u16,
    decide: impl FnOnce(*mut bpf_sock, u32) -> T,
) -> Option<T> {
    // SAFETY: an all-zero tuple is a valid value of this plain C union.
    let mut tuple: bpf_sock_tuple = unsafe { core::mem::zeroed() };
    let size = match (src, dst) {
        (Addr::V4(s), Addr::V4(d)) => {
            // SAFETY: writing plain integers into the union's IPv4 member.
            unsafe {
                let t = &mut tuple.__bindgen_anon_1.ipv4;
                t.saddr = *s;
                t.daddr = *d;
                t.sport = sport.to_be();
                t.dport = dport.to_be();
            }
            core::mem::size_of_val(unsafe { &tuple.__bindgen_anon_1.ipv4 })
        }
        (Addr::V6(s), Addr::V6(d)) => {
            // SAFETY: as above, the IPv6 member.
            unsafe {
                let t = &mut tuple.__bindgen_anon_1.ipv6;
                t.saddr = *s;
                t.daddr = *d;
                t.sport = sport.to_be();
                t.dport = dport.to_be();
            }
            core::mem::size_of_val(unsafe { &tuple.__bindgen_anon_1.ipv6 })
        }
        _ => return None,
    };
    // SAFETY: the helper reads `size` bytes of the tuple; the socket it
    // returns is released before this function returns, on every path.
    unsafe {
        let sk = bpf_skc_lookup_tcp(ctx, &mut tuple, size as u32, BPF_F_CURRENT_NETNS as u64, 0);
        if sk.is_null() {
            return None;
        }
        let decided = decide(sk, (*sk).state);
        bpf_sk_release(sk as *mut _);
        Some(decided)
    }
}

/// Whether the packet (a pure ACK) completes a handshake that the listener
/// `sk` answered with a SYN cookie.
#[inline(always)]
pub fn is_valid_syncookie(packet: &Packet, tcp: &Tcp, sk: *mut bpf_sock) -> bool {
    // Stack copies: the helper reads the IP header (20 bytes of IPv4 or 40
    // of IPv6) and 20 bytes of TCP.
    let mut ip = [0u8; 40];
    let ip_len = if tcp.l4 == tcp.l3 + 20 {
        let Some(v4) = packet.read::<[u8; 20]>(tcp.l3) else {
            return false;
        };
        ip[..20].copy_from_slice(&v4);
        20
    } else if tcp.l4 == tcp.l3 + 40 {
        let Some(v6) = packet.read::<[u8; 40]>(tcp.l3) else {
            return false;
        };
        ip = v6;
        40
    } else {
        return false;
    };
    let Some(mut th) = packet.read::<[u8; 20]>(tcp.l4) else {
        return false;
    };
    // SAFETY: `sk` is the caller's referenced listener; the buffers are
    // ours and as long as the lengths say.
    unsafe {
        bpf_tcp_check_syncookie(
            sk as *mut c_void,
            ip.as_mut_ptr() as *mut c_void,
            ip_len,
            th.as_mut_ptr() as *mut tcphdr,
            20,
        ) == 0
    }
}
