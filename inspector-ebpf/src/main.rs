//! The inspector's kernel programs: every entry point is here, and each
//! reads as the path of a packet through the modules that do the work.
//!
//! - `inspector_xdp` (XDP, ingress of the protected interfaces): parse the
//!   headers (`parse`), give the packet its [`Class`] (`exempt`: the
//!   exemption ACL, then SMTP), count it (`counters`); a TCP packet to or
//!   from a protected server then goes through the connection limits
//!   (`limits`), which pass it, drop a SYN over a limit, or ask TCP
//!   intercept (`intercept`) to answer it with a SYN cookie or rewrite it.
//!   Nothing else is dropped or rewritten.
//! - `inspector_steer` (TC clsact ingress, the same interfaces): parse,
//!   leave exempt traffic alone, and mark the flows the engine inspects for
//!   local delivery (`steer`).
//! - `inspector_steer_return` (TC clsact ingress, the interfaces facing
//!   the servers when the proxy connects from the client's address): mark
//!   the servers' answers to the engine's connections, nothing else
//!   (`steer::is_engines_answer`).
//! - `inspector_xdp_empty`: the benchmark's baseline.
//!
//! `packet` is the only module that touches packet memory; every read and
//! write elsewhere goes through its bounds checks.
#![no_std]
#![no_main]
// `atomic_xadd`: the BPF target has atomic adds but no `fetch_add` (see
// limits/conns.rs).
#![allow(internal_features)]
#![feature(core_intrinsics)]

mod counters;
mod exempt;
mod intercept;
mod limits;
mod packet;
mod parse;
mod steer;

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT, xdp_action},
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};
use inspector_common::{Class, SMTP_PORT, STEER_MARK};

use crate::{limits::Verdict, packet::Packet};

#[xdp]
pub fn inspector_xdp(ctx: XdpContext) -> u32 {
    let packet = Packet::new(ctx.data(), ctx.data_end());
    let (class, tcp) = match parse::headers(&packet) {
        Ok(headers) => (exempt::classify(&headers), headers.is_tcp()),
        Err(_) => (Class::Malformed, false),
    };
    counters::count_class(class, packet.len());
    if !tcp {
        return xdp_action::XDP_PASS;
    }
    match limits::track(&ctx) {
        Verdict::Pass => xdp_action::XDP_PASS,
        Verdict::Drop => xdp_action::XDP_DROP,
        verdict => intercept::apply(&ctx, verdict, class == Class::Inspect),
    }
}

#[classifier]
pub fn inspector_steer(ctx: TcContext) -> i32 {
    steer::pull_headers(&ctx);
    let packet = Packet::new(ctx.data(), ctx.data_end());
    // `Some(mark?)`, or `None` to drop (see `steer::decide`).
    let mark = match parse::tcp(&packet) {
        Some((src, dst, tcp)) if !(exempt::is_exempt(&src) || exempt::is_exempt(&dst)) => {
            steer::decide(&ctx, &packet, &src, &dst, &tcp)
        }
        _ => Some(false),
    };
    match mark {
        Some(true) => {
            ctx.set_mark(STEER_MARK);
            TC_ACT_OK as i32
        }
        Some(false) => TC_ACT_OK as i32,
        None => TC_ACT_SHOT as i32,
    }
}

#[classifier]
pub fn inspector_steer_return(ctx: TcContext) -> i32 {
    steer::pull_headers(&ctx);
    let packet = Packet::new(ctx.data(), ctx.data_end());
    // No exemption check: a packet that matches one of the engine's
    // sockets belongs to it (a live `exempt add` must not cut the sessions
    // the engine holds), and nothing else is marked.
    if let Some((src, dst, tcp)) = parse::tcp(&packet)
        && tcp.src_port == SMTP_PORT
        && steer::is_engines_answer(&ctx, &src, &dst, &tcp)
    {
        ctx.set_mark(STEER_MARK);
    }
    TC_ACT_OK as i32
}

/// Passes every packet and does nothing else: the baseline the benchmark
/// (`cargo xtask bench`) measures the classifier against. Never attached.
#[xdp]
pub fn inspector_xdp_empty(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
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
