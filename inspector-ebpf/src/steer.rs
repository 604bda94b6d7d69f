//! Steering: the decision of the TC (clsact ingress) program
//! `inspector_steer`, which gives flagged flows (TCP to an inspected port,
//! 25 by default, not exempt) the fwmark `STEER_MARK`. The daemon's rule
//! `fwmark STEER_MARK lookup STEER_TABLE` and the route `local 0.0.0.0/0 dev
//! lo table STEER_TABLE` then deliver them locally, to the engine's
//! `IP_TRANSPARENT` listener on that port; other traffic is forwarded as
//! before.
//!
//! The decision uses the kernel's own socket table (`sockets`), so it is
//! stable per flow and needs no state of its own:
//! - a packet of a connection the engine holds (an established or
//!   half-open socket matches its 4-tuple) is always marked, so sessions
//!   already inspected stay with the engine whatever happens;
//! - a SYN is marked when the engine's listener is there and the proxy's
//!   heartbeat is fresh (`liveness`): the listener vanishes with the
//!   process, the heartbeat stops with a stopped or stuck proxy loop.
//!   Otherwise the policy's `fail` decides: `"closed"` answers the SYN with
//!   a RST (`refuse`: the client's MTA sees the refusal at once and retries
//!   later), `"open"` lets it go to the server uninspected;
//! - any other packet is not marked: it belongs to a flow that went
//!   straight to the server.
//!
//! On the interface facing the servers, a packet *from* an inspected port is marked
//! when it matches one of the engine's connections: with a transparent
//! upstream (`upstream-source = "client"`, the default where it works) the
//! engine connects from the client's address, and the server's answers,
//! addressed to the client, must come back to it. The daemon attaches
//! `inspector_steer_return` ([`is_engines_answer`] only) to the interfaces
//! the routes to the servers use, when they are not inspected themselves.

mod liveness;
mod refuse;
mod sockets;

use aya_ebpf::{macros::map, maps::Array, programs::TcContext};
use inspector_common::{FAIL_CLOSED, SteerConfig};

pub use self::refuse::refuse;
use self::sockets::TCP_LISTEN;
use crate::{
    classify::{self, Decision, Stage},
    packet::Packet,
    parse::{Addr, TCP_ACK, TCP_SYN, Tcp},
};

#[map]
static STEER_CONFIG: Array<SteerConfig> = Array::with_max_entries(1, 0);

/// Bytes made linear before parsing: Ethernet, two VLAN tags, IPv6 with
/// some extension headers, and TCP with options.
const PULL_LEN: u32 = 256;
/// Packets up to this long are made linear whole before the classifier
/// reads them (the headers of bigger, GRO-merged packets are in the part
/// `PULL_LEN` makes linear).
const PULL_ALL: u32 = 1_600;

/// Makes the headers linear before they are parsed (a no-op for the usual
/// packet): outside the linear part of the skb they would be unreadable,
/// and a packet of an engine's flow left unmarked would reach the server.
#[inline(always)]
pub fn pull_headers(ctx: &TcContext) {
    let want = core::cmp::min(ctx.len(), PULL_LEN);
    if ctx.data_end() - ctx.data() < want as usize {
        let _ = ctx.pull_data(want);
    }
}

/// The classifier's decision (`classify`), as XDP took it. Headers
/// outside the linear part of the skb would read as cut short where XDP
/// read them whole, so a packet whose linear part is shorter than
/// `PULL_ALL` is made linear whole first (`pull_headers` made the first
/// `PULL_LEN` bytes linear in any case).
#[inline(always)]
pub fn classify(ctx: &TcContext) -> Decision {
    if ctx.data_end() - ctx.data() < ctx.len() as usize && ctx.len() <= PULL_ALL {
        let _ = ctx.pull_data(ctx.len());
    }
    classify::decide(&Packet::new(ctx.data(), ctx.data_end()), Stage::Tc)
}

/// Whether to mark a TCP packet that is not exempt: `Some(mark?)`, or
/// `None` to refuse it (a SYN under `fail = "closed"` with no live proxy).
/// Unmarked packets are forwarded (or delivered) as the kernel decides.
#[inline(always)]
pub fn decide(ctx: &TcContext, packet: &Packet, src: &Addr, dst: &Addr, tcp: &Tcp) -> Option<bool> {
    let to_smtp = classify::is_inspected_port(tcp.dst_port);
    if !to_smtp && classify::is_inspected_port(tcp.src_port) {
        return Some(is_engines_answer(ctx, src, dst, tcp));
    }
    if !to_smtp {
        return Some(false);
    }
    let syn = tcp.flags & (TCP_SYN | TCP_ACK) == TCP_SYN;
    let live = syn && liveness::proxy_alive();
    match sockets::lookup(
        ctx.skb.skb as *mut _,
        src,
        dst,
        tcp.src_port,
        tcp.dst_port,
        |sk, state| {
            // The engine's connection; a new flow while it listens; or the ACK
            // that completes a handshake its listener answered with a SYN
            // cookie (under a flood it keeps no half-open socket to find).
            state != TCP_LISTEN || live || sockets::is_valid_syncookie(packet, tcp, sk)
        },
    ) {
        Some(true) => Some(true),
        _ if syn && fail_closed() => None,
        _ => Some(false),
    }
}

/// Whether a packet from an inspected port is a server's answer to one of the
/// engine's connections (a local socket, not a listener, matches its
/// 4-tuple). The only decision of `inspector_steer_return`, which runs on
/// the interfaces facing the servers: with a transparent upstream the
/// engine connects from the client's address, and the server's answers,
/// addressed to the client, must be delivered to the engine's socket
/// instead of being forwarded to the client.
#[inline(always)]
pub fn is_engines_answer(ctx: &TcContext, src: &Addr, dst: &Addr, tcp: &Tcp) -> bool {
    sockets::lookup(
        ctx.skb.skb as *mut _,
        src,
        dst,
        tcp.src_port,
        tcp.dst_port,
        |_, state| state != TCP_LISTEN,
    )
    .unwrap_or(false)
}

#[inline(always)]
fn fail_closed() -> bool {
    STEER_CONFIG.get(0).is_some_and(|c| c.fail == FAIL_CLOSED)
}

/// Whether the daemon runs the engine (it says so when it loads us) and
/// its heartbeat is fresh: a stuck proxy's flows are nobody's to protect.
#[inline(always)]
pub fn engine_runs() -> bool {
    STEER_CONFIG.get(0).is_some_and(|c| c.engine != 0) && liveness::proxy_alive()
}

/// Whether the engine's local listener answers a new connection of this
/// class (`inspected`): then the server's side of the flow is never seen
/// by the XDP program.
#[inline(always)]
pub fn engine_takes(inspected: bool) -> bool {
    inspected && engine_runs()
}
