//! The inspector's kernel programs: every entry point is here, and each
//! reads as the path of a packet through the modules that do the work.
//!
//! - `inspector_xdp` (XDP, ingress of the protected interfaces): parse the
//!   headers (`parse`), give the packet its [`Class`] (`exempt`: the
//!   exemption ACL, then SMTP) and decide whether its shape is refused
//!   (`classify`: fragments of TCP to an inspected port or to a protected server,
//!   followed through `fragments`; packets it cannot parse that could be
//!   TCP to an inspected port), count it (`counters`); a whole TCP packet to or from
//!   a protected server then goes through the connection limits (`limits`),
//!   which pass it, drop a SYN over a limit, or ask TCP intercept
//!   (`intercept`) to answer it with a SYN cookie or rewrite it. Before
//!   the limits, an inspected SYN from a client the proxy holds at its
//!   session limit is dropped (`clients`). Nothing else is dropped or
//!   rewritten.
//! - `inspector_steer` (TC clsact ingress, the same interfaces): the same
//!   decision (`classify`), then leave exempt traffic alone and mark the
//!   flows the engine inspects for local delivery (`steer`).
//! - `inspector_steer_return` (TC clsact ingress, the interfaces facing
//!   the servers when the proxy connects from the client's address): the
//!   same decision (`classify`, then the same per-CPU TCP headers), then
//!   mark the servers' answers to the engine's connections, nothing else
//!   (`steer::is_engines_answer`).
//! - `inspector_xdp_empty`: the benchmark's baseline.
//!
//! `packet` is the only module that touches packet memory; every read and
//! write elsewhere goes through its bounds checks.
#![no_std]
#![no_main]
// `atomic_xadd`: the BPF target has atomic adds but no
// `AtomicU64::fetch_add` (limits/marks.rs, exempt.rs).
#![allow(internal_features)]
#![feature(core_intrinsics)]
// `asm!` on the BPF target: an empty block hides a packet offset from
// LLVM (see packet.rs, `read_var`), and the fetch-and-add LLVM selects
// only for `-mcpu=v3` (limits/conns.rs).
#![feature(asm_experimental_arch)]
// A map helper takes a pointer to its key: a borrowed key is passed where
// it already is, one passed by value is first copied onto the program's
// 512-byte stack.
#![allow(clippy::needless_borrows_for_generic_args)]

mod classify;
mod clients;
mod counters;
mod exempt;
mod fragments;
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
use inspector_common::{Class, STEER_MARK};

use crate::{classify::Stage, limits::Verdict, packet::Packet};

#[xdp]
pub fn inspector_xdp(ctx: XdpContext) -> u32 {
    let packet = Packet::new(ctx.data(), ctx.data_end());
    let decision = classify::decide(&packet, Stage::Xdp);
    counters::count_class(decision.class, packet.len());
    if let Some(reason) = decision.drop {
        counters::count_parse_drop(reason);
        return xdp_action::XDP_DROP;
    }
    if !decision.tcp {
        return xdp_action::XDP_PASS;
    }
    // An inspected SYN from a client at its session limit: no socket for it.
    if decision.class == Class::Inspect && clients::refuses() {
        return xdp_action::XDP_DROP;
    }
    // A whole TCP segment: the connection limits and TCP intercept.
    match limits::track(&ctx, decision.class == Class::Inspect) {
        Verdict::Pass => xdp_action::XDP_PASS,
        Verdict::Drop => xdp_action::XDP_DROP,
        verdict => intercept::apply(&ctx, verdict, decision.class == Class::Inspect),
    }
}

#[classifier]
pub fn inspector_steer(ctx: TcContext) -> i32 {
    steer::pull_headers(&ctx);
    let decision = steer::classify(&ctx);
    if let Some(reason) = decision.drop {
        // Only when XDP passed it (it runs first): a packet that changed
        // between the two, or an interface without XDP.
        counters::count_parse_drop(reason);
        return TC_ACT_SHOT;
    }
    if !decision.tcp || decision.class == Class::Exempt {
        return TC_ACT_OK;
    }
    steer(&ctx)
}

/// A whole TCP segment, not exempt: mark it for the engine, or not. A
/// subprogram, for the same reason as `limit`.
#[inline(never)]
fn steer(ctx: &TcContext) -> i32 {
    let packet = Packet::new(ctx.data(), ctx.data_end());
    // `Some(mark?)`, or `None` to refuse (see `steer::decide`).
    let mark = match parse::tcp() {
        Some((src, dst, tcp)) => steer::decide(ctx, &packet, src, dst, &tcp),
        None => Some(false),
    };
    match mark {
        Some(true) => {
            ctx.set_mark(STEER_MARK);
            TC_ACT_OK
        }
        Some(false) => TC_ACT_OK,
        None => steer::refuse(ctx),
    }
}

#[classifier]
pub fn inspector_steer_return(ctx: TcContext) -> i32 {
    steer::pull_headers(&ctx);
    // The same classifier and parse as `inspector_steer` (one path per
    // packet). This interface is not inspected: nothing is dropped here,
    // a packet the classifier refuses is left to the kernel unmarked.
    let decision = steer::classify(&ctx);
    if decision.drop.is_some() || !decision.tcp {
        return TC_ACT_OK;
    }
    steer_return(&ctx)
}

/// A whole TCP segment on an interface facing the servers: mark it when it
/// answers one of the engine's connections. No exemption check: a packet
/// that matches one of the engine's sockets belongs to it (a live `exempt
/// add` must not cut the sessions the engine holds), and nothing else is
/// marked. A subprogram, for the same reason as `steer`.
#[inline(never)]
fn steer_return(ctx: &TcContext) -> i32 {
    if let Some((src, dst, tcp)) = parse::tcp()
        && classify::is_inspected_port(tcp.src_port)
        && steer::is_engines_answer(ctx, src, dst, &tcp)
    {
        ctx.set_mark(STEER_MARK);
    }
    TC_ACT_OK
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
