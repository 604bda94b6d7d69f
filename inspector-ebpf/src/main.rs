//! The inspector's kernel programs.
//!
//! `inspector_xdp` runs on ingress of the protected interface: it parses
//! every packet, decides its [`Class`] and counts it. TCP packets to and
//! from a protected server go through the connection limits, which drop
//! SYNs over a limit or, with TCP intercept, answer them with SYN cookies
//! and rewrite the flows of the clients that prove themselves; nothing
//! else is dropped or rewritten.
#![no_std]
#![no_main]
// `atomic_xadd`: the BPF target has atomic adds but no `fetch_add` (see conns.rs).
#![allow(internal_features)]
#![feature(core_intrinsics)]

mod conns;
mod counters;
mod exempt;
mod intercept;
mod limits;
mod packet;
mod parse;
mod sockets;
mod steer;

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use inspector_common::{Class, InterceptEvent};

use crate::{
    limits::Verdict,
    packet::Packet,
    parse::{Headers, Transport},
};

/// Passes every packet and does nothing else: the baseline the benchmark
/// (`cargo xtask bench`) measures the classifier against. Never attached.
#[xdp]
pub fn inspector_xdp_empty(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

#[xdp]
pub fn inspector_xdp(ctx: XdpContext) -> u32 {
    let packet = Packet::new(ctx.data(), ctx.data_end());
    let (class, tcp) = match parse::headers(&packet) {
        Ok(headers) => (
            exempt::classify(&headers),
            matches!(
                headers,
                Headers::Ip {
                    transport: Transport::Tcp(_),
                    ..
                }
            ),
        ),
        Err(_) => (Class::Malformed, false),
    };
    counters::count_class(class, packet.len());
    if !tcp {
        return xdp_action::XDP_PASS;
    }
    match limits::track(&ctx) {
        Verdict::Pass => xdp_action::XDP_PASS,
        Verdict::Drop => xdp_action::XDP_DROP,
        verdict => intercept(&ctx, verdict, class == Class::Inspect),
    }
}

/// The TCP intercept rewrites `limits` asked for (see `intercept`).
///
/// Not for a session the engine terminates: its listener stands in front
/// of the server, the kernel's own SYN cookies protect that listener, and
/// the server sees a connection only when the engine opens one. Answering
/// here too would answer for the listener. (The engine runs in the
/// daemon's process, which also holds this program: while this runs, a
/// daemon started with the engine has it.)
#[inline(always)]
fn intercept(ctx: &XdpContext, verdict: Verdict, inspected: bool) -> u32 {
    let engines = || inspected && steer::engine_runs();
    // Parsed again rather than kept: this keeps the main frame small.
    let packet = Packet::new(ctx.data(), ctx.data_end());
    let Some((src, dst, tcp)) = parse::tcp(&packet) else {
        return xdp_action::XDP_DROP;
    };
    let done = match verdict {
        Verdict::AnswerSyn if engines() => true,
        Verdict::VerifyClient if engines() => {
            limits::adopt(&src, &dst, &tcp);
            true
        }
        Verdict::AnswerSyn => {
            let sent = intercept::answer_syn(ctx, &tcp);
            if sent {
                counters::count_intercept(InterceptEvent::CookieSent);
                return xdp_action::XDP_TX;
            }
            false
        }
        Verdict::VerifyClient => {
            if let Some((cookie, window)) = intercept::open_server_side(ctx, &tcp) {
                limits::opening(&src, &dst, &tcp, cookie, window);
            }
            true
        }
        Verdict::CompleteServer(window) => {
            if intercept::complete_server_side(ctx, &tcp, window).is_some() {
                return xdp_action::XDP_TX;
            }
            false
        }
        Verdict::Shift(field, delta) => intercept::shift(ctx, &tcp, field, delta),
        Verdict::Pass | Verdict::Drop => true,
    };
    if done {
        xdp_action::XDP_PASS
    } else {
        xdp_action::XDP_DROP
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
