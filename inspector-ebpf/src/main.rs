//! The inspector's kernel programs.
//!
//! `inspector_xdp` runs on ingress of the protected interface: it parses
//! every packet, decides its [`Class`] and counts it. TCP packets to and
//! from a protected server go through the connection limits, which drop
//! SYNs over a limit; nothing else is dropped or rewritten.
#![no_std]
#![no_main]
// `atomic_xadd`: the BPF target has atomic adds but no `fetch_add` (see conns.rs).
#![allow(internal_features)]
#![feature(core_intrinsics)]

mod acl;
mod conns;
mod counters;
mod limits;
mod packet;
mod parse;

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use inspector_common::{Class, SMTP_PORT};

use crate::{
    limits::Verdict,
    packet::Packet,
    parse::{Headers, Transport},
};

#[xdp]
pub fn inspector_xdp(ctx: XdpContext) -> u32 {
    let packet = Packet::new(ctx.data(), ctx.data_end());
    let (class, verdict) = match parse::headers(&packet) {
        Ok(headers) => {
            let class = classify(&headers);
            (class, limit(&headers))
        }
        Err(_) => (Class::Malformed, Verdict::Pass),
    };
    counters::count(class, packet.len());
    match verdict {
        Verdict::Pass => xdp_action::XDP_PASS,
        Verdict::Drop => xdp_action::XDP_DROP,
    }
}

/// The limits see every TCP packet to or from a protected server, exempt or
/// not: like the original's `static … tcp 50 100`, they protect the server
/// whatever inspects its traffic.
#[inline(always)]
fn limit(headers: &Headers) -> Verdict {
    match headers {
        Headers::Ip {
            src,
            dst,
            transport: Transport::Tcp(tcp),
        } => limits::track(src, dst, tcp),
        _ => Verdict::Pass,
    }
}

/// The exemption ACL first (it matches any IP packet, like `permit ip`),
/// then SMTP. (Malformed packets never get here.)
#[inline(always)]
fn classify(headers: &Headers) -> Class {
    match headers {
        Headers::NotIp => Class::Pass,
        Headers::Ip {
            src,
            dst,
            transport,
        } => {
            if acl::is_exempt(src) || acl::is_exempt(dst) {
                Class::Exempt
            } else if matches!(transport, Transport::Tcp(tcp) if tcp.dst_port == SMTP_PORT) {
                Class::Inspect
            } else {
                Class::Pass
            }
        }
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // Unreachable in a verified program; the verifier rejects what could get here.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
