//! The inspector's kernel programs.
//!
//! `inspector_xdp` runs on ingress of the protected interface: it parses
//! every packet, decides its [`Class`] and counts it. It never drops or
//! rewrites anything; later programs (limits, steering) act on the class.
#![no_std]
#![no_main]

mod acl;
mod counters;
mod packet;
mod parse;
mod steer;

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use inspector_common::{Class, SMTP_PORT};

use crate::{
    packet::Packet,
    parse::{Headers, Transport},
};

#[xdp]
pub fn inspector_xdp(ctx: XdpContext) -> u32 {
    let packet = Packet::new(ctx.data(), ctx.data_end());
    let class = classify(&packet);
    counters::count(class, packet.len());
    xdp_action::XDP_PASS
}

/// Malformed first (we could not read the headers), then the exemption ACL
/// (it matches any IP packet, like `permit ip`), then SMTP.
#[inline(always)]
fn classify(packet: &Packet) -> Class {
    match parse::headers(packet) {
        Err(_) => Class::Malformed,
        Ok(Headers::NotIp) => Class::Pass,
        Ok(Headers::Ip {
            src,
            dst,
            transport,
        }) => {
            if acl::is_exempt(&src) || acl::is_exempt(&dst) {
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
