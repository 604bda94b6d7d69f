//! TCP intercept: what to do with each verdict of `limits` that asks for
//! it (`apply`), and the packet rewrites (IPv4, and IPv6 without extension
//! headers). Over a limit the kernel answers a client's SYN itself with a
//! SYN cookie and keeps no state. A client that returns a valid cookie has
//! its ACK turned into a SYN to the server (from the client's own ISN), and
//! the server's SYN-ACK is turned into the ACK that completes the server's
//! handshake. From then on the client knows the cookie as the server's ISN,
//! so every later packet of the flow is translated (`translate`). A SYN
//! the server does not answer is sent again from the client's answer to
//! the sweeper's nudge (`resend_syn`). Which
//! packets to rewrite and the flow state are decided in `limits`; the flows
//! this opens are recorded there.
//!
//! TCP options survive the cookie when the client's SYN carries a
//! timestamp (as with the kernel's own SYN cookies, netfilter SYNPROXY and
//! the kernel's `xdp_synproxy` selftest): our SYN-ACK's timestamp encodes
//! the client's window scale, SACK permission, ECN and MSS class
//! (`inspector_common::tcpopt`), the client echoes it in its ACK, and the
//! SYN to the server offers the same options. Afterwards the program
//! translates sequence numbers, acknowledgments, timestamps and SACK
//! blocks, and rescales windows if the server's window scale differs from
//! the one the client was told. Without a timestamp only the MSS is
//! negotiated, and the server is offered the minimum (536 over IPv4, 1220
//! over IPv6: the cookie check does not say which MSS the client sent).
//!
//! Checksums: a packet from a local sender (a container's veth) may arrive
//! with its checksum still to be completed by offload (`CHECKSUM_PARTIAL`;
//! its check field then holds the pseudo-header sum, the "seed"). An XDP
//! program cannot see that state, so it tells the two apart: a handshake
//! packet is verified in full (it is all header), and each side's packets
//! are marked partial or not by its handshake packet. Rewritten partial
//! packets keep a seed (for a new length, a new seed) and are completed by
//! the kernel or the device later; other packets get their checksum
//! updated (RFC 1624) or written in full. Native-mode `XDP_TX` frames lose
//! the offload state, so they always carry the full checksum.
//!
//! The rewrites are BPF global functions working in per-CPU scratch
//! memory: on the stack, with the caller's frame, they would not fit the
//! 512-byte limit.

use aya_ebpf::{
    bindings::{iphdr, ipv6hdr, tcphdr, xdp_action, xdp_md},
    cty::c_void,
    helpers::{
        bpf_ktime_get_ns, bpf_tcp_raw_check_syncookie_ipv4, bpf_tcp_raw_check_syncookie_ipv6,
        bpf_tcp_raw_gen_syncookie_ipv4, bpf_tcp_raw_gen_syncookie_ipv6, bpf_xdp_adjust_tail,
        bpf_xdp_load_bytes, bpf_xdp_store_bytes,
    },
    macros::map,
    maps::{HashMap, PerCpuArray},
    programs::XdpContext,
};
use inspector_common::{
    InterceptEvent, XDP_CONFIG_ENTRIES, XdpConfig,
    csum::{self, Delta},
    flow_flags,
    tcpopt::{self, Cookie, HEADER_BUF, NO_WSCALE, SynOptions},
};

use crate::{
    counters::count_intercept,
    limits::{self, Answered, Opened, Opening, TcpAt, Verdict},
    packet::{Packet, opaque},
    parse::{TCP_ACK, TCP_SYN},
    steer,
};

/// The MSS offered to the server for an intercepted client without
/// timestamps (its MSS class is unknown).
const MSS_TO_SERVER_V4: u16 = 536;
const MSS_TO_SERVER_V6: u16 = 1220;
/// The window announced in our SYN-ACK (never scaled in a SYN).
const SYNACK_WINDOW: u16 = 65_535;
const TTL: u8 = 64;
const TCP_ECE: u8 = 0x40;
const TCP_CWR: u8 = 0x80;

/// The daemon's settings for this program (see [`XdpConfig`]), per
/// interface index: one daemon may attach natively on one interface and
/// in generic mode on another.
#[map]
static XDP_CONFIG: HashMap<u32, XdpConfig> = HashMap::with_max_entries(XDP_CONFIG_ENTRIES, 0);

/// Carries out a TCP intercept verdict of `limits`; returns the XDP action.
///
/// Not for a session the engine terminates: its listener stands in front
/// of the server, the kernel's own SYN cookies protect that listener, and
/// the server sees a connection only when the engine opens one. Answering
/// here too would answer for the listener. (The engine runs in the
/// daemon's process, which also holds this program: while this runs, a
/// daemon started with the engine has it.)
#[inline(always)]
pub fn apply(ctx: &XdpContext, verdict: Verdict, inspected: bool) -> u32 {
    let engines = || steer::engine_takes(inspected);
    let md = ctx.ctx;
    let done = match verdict {
        Verdict::AnswerSyn if engines() => true,
        Verdict::VerifyClient if engines() => {
            limits::adopt();
            true
        }
        Verdict::AnswerSyn => {
            if inspector_answer_syn(md) != 0 {
                count_intercept(InterceptEvent::CookieSent);
                return xdp_action::XDP_TX;
            }
            false
        }
        Verdict::VerifyClient => inspector_open_server_side(md) == 0,
        Verdict::CompleteServer => {
            if inspector_complete_server_side(md) != 0 {
                return xdp_action::XDP_TX;
            }
            false
        }
        Verdict::ToServer => inspector_translate(md, 1) != 0,
        Verdict::ToClient => inspector_translate(md, 0) != 0,
        Verdict::ResendSyn => {
            let resent = inspector_resend_syn(md) != 0;
            if resent {
                count_intercept(InterceptEvent::SynResent);
            }
            resent
        }
        Verdict::Pass | Verdict::Drop => true,
    };
    if done {
        xdp_action::XDP_PASS
    } else {
        xdp_action::XDP_DROP
    }
}

// The rewrites are global functions: the verifier checks each once, on its
// own, rather than once for every state its caller reaches it in. They
// take the context and return a number; the rest is in per-CPU maps.

/// [`answer_syn`]: 1 to transmit the answer.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn inspector_answer_syn(md: *mut xdp_md) -> u32 {
    answer_syn(&XdpContext::new(md)) as u32
}

/// [`open_server_side`]: 1 to drop the packet (a copy of an ACK another
/// CPU is opening), else 0: passed on, rewritten or not.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn inspector_open_server_side(md: *mut xdp_md) -> u32 {
    (open_server_side(&XdpContext::new(md)) == Some(Opening::Copy)) as u32
}

/// [`resend_syn`]: 1 to pass the packet, 0 to drop it.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn inspector_resend_syn(md: *mut xdp_md) -> u32 {
    resend_syn(&XdpContext::new(md)) as u32
}

/// [`complete_server_side`], and the flow's translation it sets up: 1 to
/// transmit the answer.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn inspector_complete_server_side(md: *mut xdp_md) -> u32 {
    match complete_server_side(&XdpContext::new(md)) {
        Some(answered) => {
            limits::server_answered(&answered);
            1
        }
        None => 0,
    }
}

/// [`translate`]: 1 to pass the packet, 0 to drop it.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn inspector_translate(md: *mut xdp_md, to_server: u32) -> u32 {
    translate(&XdpContext::new(md), to_server != 0) as u32
}

/// Working memory of one rewrite: the packet's IP header (IPv4 without
/// options in the first 20 bytes, or IPv6) and TCP header (its length,
/// then zeros: the syncookie helpers and the option parser read it here),
/// and the headers being written.
#[repr(C)]
pub struct Scratch {
    ip: [u8; 40],
    tcp: [u8; HEADER_BUF],
    new_ip: [u8; 40],
    new_tcp: [u8; 40],
    opts: [u8; 20],
    /// What `parse_options` found in `tcp`.
    parsed: tcpopt::Options,
}

#[map]
static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

/// How a received segment's checksum stands.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Csum {
    /// A full, valid checksum (or, for a segment with payload, one we
    /// could not check and take as full).
    Complete,
    /// The seed of a segment still to be completed by offload.
    Partial,
    /// Neither: a corrupt segment.
    Bad,
}

/// A packet's headers, copied to this CPU's scratch space.
struct Segment {
    s: &'static mut Scratch,
    l3: usize,
    l4: usize,
    /// The TCP header's length (20 to 60).
    tcp_len: u32,
    /// The TCP segment's length, from the IP header.
    l4_len: u32,
    v6: bool,
}

impl Segment {
    /// Copies the headers with `bpf_xdp_load_bytes`: one helper call for
    /// any header length, where a copy loop would give the verifier one
    /// path (and one state for everything after) per length.
    #[inline(always)]
    fn read(ctx: &XdpContext, at: &TcpAt) -> Option<Self> {
        let (l3, l4) = (at.l3(), at.l4());
        let packet = packet(ctx);
        let ip: [u8; 20] = packet.read_var(l3)?;
        // SAFETY: this CPU's slot, used by this program run only.
        let s = unsafe { &mut *SCRATCH.get_ptr_mut(0)? };
        let (v6, l4_len) = match ip[0] >> 4 {
            // IPv4 options and IPv6 extension headers are not intercepted.
            4 if l4 == l3 + 20 => {
                s.ip[..20].copy_from_slice(&ip);
                let total = u16::from_be_bytes([ip[2], ip[3]]) as u32;
                (false, total.checked_sub(20)?)
            }
            6 if l4 == l3 + 40 => {
                load(ctx, l3, &mut s.ip, 40)?;
                (true, u16::from_be_bytes([s.ip[4], s.ip[5]]) as u32)
            }
            _ => return None,
        };
        let fixed: [u8; 20] = packet.read_var(l4)?;
        let tcp_len = ((fixed[12] >> 4) as u32) * 4;
        if tcp_len < 20 || l4_len < tcp_len {
            return None;
        }
        s.tcp = [0; HEADER_BUF];
        load(ctx, l4, &mut s.tcp, tcp_len)?;
        Some(Self {
            s,
            l3,
            l4,
            tcp_len,
            l4_len,
            v6,
        })
    }

    #[inline(always)]
    fn u32_at(&self, at: usize) -> u32 {
        u32::from_be_bytes([
            self.s.tcp[at],
            self.s.tcp[at + 1],
            self.s.tcp[at + 2],
            self.s.tcp[at + 3],
        ])
    }

    #[inline(always)]
    fn window(&self) -> u16 {
        u16::from_be_bytes([self.s.tcp[14], self.s.tcp[15]])
    }

    #[inline(always)]
    fn ports(&self) -> ([u8; 2], [u8; 2]) {
        (
            [self.s.tcp[0], self.s.tcp[1]],
            [self.s.tcp[2], self.s.tcp[3]],
        )
    }

    /// The options, parsed in the scratch space (see `inspector_parse_options`).
    #[inline(always)]
    fn options(&mut self) -> tcpopt::Options {
        inspector_parse_options(self.s, self.tcp_len);
        self.s.parsed
    }

    /// The pseudo-header sum of the segment as received.
    #[inline(always)]
    fn pseudo(&self) -> u32 {
        if self.v6 {
            csum::pseudo(&self.s.ip[8..40], self.l4_len)
        } else {
            csum::pseudo(&self.s.ip[12..20], self.l4_len)
        }
    }

    /// Whether the checksum is complete, pending offload, or wrong. A
    /// segment that is all header is verified; one with payload (not
    /// copied) is taken as pending if it holds the seed, else as complete.
    #[inline(always)]
    fn classify(&self) -> Csum {
        let check = u16::from_be_bytes([self.s.tcp[16], self.s.tcp[17]]);
        let pseudo = self.pseudo();
        if self.l4_len == self.tcp_len {
            // The zeros after the header add nothing.
            if csum::finish(csum::add_words(pseudo, &self.s.tcp[..60])) == 0 {
                return Csum::Complete;
            }
        } else if check != csum::fold(pseudo) {
            return Csum::Complete;
        }
        if check == csum::fold(pseudo) {
            Csum::Partial
        } else {
            Csum::Bad
        }
    }
}

/// A SYN over a limit: answered in place with a SYN-ACK whose sequence
/// number is a SYN cookie and whose timestamp, if the client sent one,
/// carries the client's other options. Returns whether to transmit it.
#[inline(always)]
fn answer_syn(ctx: &XdpContext) -> bool {
    let Some(w) = limits::work() else {
        return false;
    };
    let our_wscale = w.entry.wscale_ours;
    let Some(mut seg) = Segment::read(ctx, &w.tcp) else {
        return false;
    };
    let state = seg.classify();
    if state == Csum::Bad {
        return false;
    }
    let (ip, th) = (seg.s.ip.as_mut_ptr(), seg.s.tcp.as_mut_ptr() as *mut tcphdr);
    // SAFETY: both pointers are to our scratch copies, of the sizes the
    // helper reads (an IPv4 or IPv6 header, `tcp_len` <= 60 of TCP).
    let generated = unsafe {
        if seg.v6 {
            bpf_tcp_raw_gen_syncookie_ipv6(ip as *mut ipv6hdr, th, seg.tcp_len)
        } else {
            bpf_tcp_raw_gen_syncookie_ipv4(ip as *mut iphdr, th, seg.tcp_len)
        }
    };
    if generated < 0 {
        return false;
    }
    let cookie = generated as u32;
    let mss = (generated >> 32) as u16;
    let o = seg.options();
    let mut flags = TCP_SYN | TCP_ACK;
    let options = if o.ts_at != 0 {
        let ecn = seg.s.tcp[13] & (TCP_ECE | TCP_CWR) == TCP_ECE | TCP_CWR;
        if ecn {
            flags |= TCP_ECE;
        }
        let wscale = if o.wscale == NO_WSCALE {
            NO_WSCALE
        } else {
            our_wscale
        };
        let cookie = Cookie {
            client_wscale: o.wscale,
            sack: o.sack_perm,
            ecn,
            mss_class: tcpopt::mss_class(mss, seg.v6),
            our_wscale: wscale,
        };
        SynOptions {
            mss,
            ts: Some((tcpopt::encode(now_ms(), &cookie), o.tsval)),
            sack_perm: o.sack_perm,
            wscale,
        }
    } else {
        SynOptions {
            mss,
            ts: None,
            sack_perm: false,
            wscale: NO_WSCALE,
        }
    };
    let options_len = tcpopt::write_syn(&options, &mut seg.s.opts);
    let client_isn = seg.u32_at(4);
    let (client_port, server_port) = seg.ports();
    let segment = Header {
        src_port: server_port,
        dst_port: client_port,
        seq: cookie,
        ack: client_isn.wrapping_add(1),
        flags,
        window: SYNACK_WINDOW,
    };
    rewrite(ctx, seg, segment, options_len, true, state == Csum::Partial)
}

/// An ACK that may carry a SYN cookie of ours. If the cookie is valid, the
/// ACK becomes the client's SYN to the server (passed on), offering the
/// options its timestamp echo carries, and its flow is tracked
/// (`limits::opening`); else, or if the client finds no slot, the packet
/// is left alone.
#[inline(always)]
fn open_server_side(ctx: &XdpContext) -> Option<Opening> {
    let w = limits::work()?;
    let mut seg = Segment::read(ctx, &w.tcp)?;
    let (ip, th) = (seg.s.ip.as_mut_ptr(), seg.s.tcp.as_mut_ptr() as *mut tcphdr);
    // SAFETY: as in `answer_syn`; the helper reads the IP header and 20
    // bytes of TCP.
    let checked = unsafe {
        if seg.v6 {
            bpf_tcp_raw_check_syncookie_ipv6(ip as *mut ipv6hdr, th)
        } else {
            bpf_tcp_raw_check_syncookie_ipv4(ip as *mut iphdr, th)
        }
    };
    if checked != 0 {
        return None;
    }
    // A corrupt ACK is left for the server to drop.
    let state = seg.classify();
    if state == Csum::Bad {
        return None;
    }
    let o = seg.options();
    let syn = client_syn(&seg, &o, state == Csum::Partial);
    // The slot is taken before the ACK is rewritten: a client that loses it
    // to another CPU's keeps its ACK as it was.
    let opening = limits::opening(&syn.opened);
    if opening != Opening::Taken {
        return Some(opening);
    }
    let options_len = tcpopt::write_syn(&syn.options, &mut seg.s.opts);
    if !rewrite(ctx, seg, syn.header, options_len, false, syn.partial) {
        limits::not_opened();
        return Some(Opening::Refused);
    }
    limits::opened();
    Some(Opening::Taken)
}

/// A pure ACK from the client of a flow still opening (`Verdict::ResendSyn`):
/// rewritten into the client's SYN to the server again, as its first ACK
/// was, if it is the client's (its sequence number the one its first ACK
/// had, acknowledging the cookie, echoing our SYN-ACK's timestamp).
/// Returns whether to pass it; else it is dropped.
#[inline(always)]
fn resend_syn(ctx: &XdpContext) -> bool {
    let Some(w) = limits::work() else {
        return false;
    };
    let e = w.entry;
    let Some(mut seg) = Segment::read(ctx, &w.tcp) else {
        return false;
    };
    let state = seg.classify();
    // While opening, `seq_delta` holds the cookie and `ts_delta` our
    // timestamp.
    if state == Csum::Bad
        || seg.u32_at(4) != e.client_next
        || seg.u32_at(8) != e.seq_delta.wrapping_add(1)
    {
        return false;
    }
    let o = seg.options();
    if e.flags & flow_flags::TS != 0 && (o.ts_at == 0 || o.tsecr != e.ts_delta) {
        return false;
    }
    let syn = client_syn(&seg, &o, state == Csum::Partial);
    let options_len = tcpopt::write_syn(&syn.options, &mut seg.s.opts);
    rewrite(ctx, seg, syn.header, options_len, false, syn.partial)
}

/// The client's SYN to the server that its ACK of our SYN-ACK stands for.
struct ClientSyn {
    /// What its flow entry records.
    opened: Opened,
    options: SynOptions,
    header: Header,
    /// The ACK's checksum was pending offload.
    partial: bool,
}

/// [`ClientSyn`] from the client's ACK `seg` (options `o`): the options
/// its timestamp echo carries, or only an MSS without one.
#[inline(always)]
fn client_syn(seg: &Segment, o: &tcpopt::Options, partial: bool) -> ClientSyn {
    let mut opened = Opened {
        cookie: seg.u32_at(8).wrapping_sub(1),
        // The ACK's sequence number is the client's ISN + 1.
        client_next: seg.u32_at(4),
        window: seg.window(),
        our_ts: 0,
        flags: 0,
        wscale_ours: NO_WSCALE,
        wscale_client: NO_WSCALE,
    };
    if partial {
        opened.flags |= flow_flags::CLIENT_PARTIAL;
    }
    let mut flags = TCP_SYN;
    let options = if o.ts_at != 0 {
        let c = tcpopt::decode(o.tsecr);
        opened.our_ts = o.tsecr;
        opened.flags |= flow_flags::TS;
        if c.sack {
            opened.flags |= flow_flags::SACK;
        }
        if c.ecn {
            opened.flags |= flow_flags::ECN;
            flags |= TCP_ECE | TCP_CWR;
        }
        if c.client_wscale != NO_WSCALE {
            opened.wscale_client = c.client_wscale;
            opened.wscale_ours = c.our_wscale;
        }
        SynOptions {
            mss: tcpopt::mss_of_class(c.mss_class, seg.v6),
            // A SYN's echo is zero (RFC 7323).
            ts: Some((o.tsval, 0)),
            sack_perm: c.sack,
            wscale: c.client_wscale,
        }
    } else {
        SynOptions {
            mss: if seg.v6 {
                MSS_TO_SERVER_V6
            } else {
                MSS_TO_SERVER_V4
            },
            ts: None,
            sack_perm: false,
            wscale: NO_WSCALE,
        }
    };
    let (client_port, server_port) = seg.ports();
    let header = Header {
        src_port: client_port,
        dst_port: server_port,
        // The client's ISN: its ACK is ISN + 1.
        seq: seg.u32_at(4).wrapping_sub(1),
        ack: 0,
        flags,
        window: opened.window,
    };
    ClientSyn {
        opened,
        options,
        header,
        partial,
    }
}

/// The server's SYN-ACK to an intercepted client: answered in place with
/// the ACK the client would have sent.
#[inline(always)]
fn complete_server_side(ctx: &XdpContext) -> Option<Answered> {
    let w = limits::work()?;
    let (window, entry_flags) = (w.entry.window, w.entry.flags);
    let (wscale_client, wscale_ours) = (w.entry.wscale_client, w.entry.wscale_ours);
    let mut seg = Segment::read(ctx, &w.tcp)?;
    let state = seg.classify();
    if state == Csum::Bad {
        return None;
    }
    let o = seg.options();
    let isn = seg.u32_at(4);
    let has_ts = o.ts_at != 0 && entry_flags & flow_flags::TS != 0;
    let options_len = if has_ts {
        // Our ACK's timestamp is the client's (the server echoes it), and
        // it echoes the server's.
        tcpopt::write_ts(o.tsecr, o.tsval, &mut seg.s.opts)
    } else {
        0
    };
    // A server that refused window scaling reads the client's windows
    // unscaled (see `translate`).
    let window = if wscale_ours != NO_WSCALE && o.wscale == NO_WSCALE {
        tcpopt::rescale(window, wscale_client, 0)
    } else {
        window
    };
    let (server_port, client_port) = seg.ports();
    let ack = Header {
        src_port: client_port,
        dst_port: server_port,
        seq: seg.u32_at(8),
        ack: isn.wrapping_add(1),
        flags: TCP_ACK,
        window,
    };
    let answered = Answered {
        isn,
        ts: o.tsval,
        has_ts,
        wscale: o.wscale,
        partial: state == Csum::Partial,
    };
    rewrite(ctx, seg, ack, options_len, true, state == Csum::Partial).then_some(answered)
}

/// Translates a packet of an intercepted flow in place: the client knows
/// the cookie as the server's ISN and our timestamp as the server's first.
/// Client to server: acknowledgment, timestamp echo and SACK blocks, into
/// the server's numbers. Server to client: sequence number and timestamp
/// into the client's, and the window into the scale the client was told.
/// The checksum is updated, or left alone while offload is still to
/// complete it (it covers what changed then).
#[inline(always)]
fn translate(ctx: &XdpContext, to_server: bool) -> bool {
    let Some(w) = limits::work() else {
        return false;
    };
    let e = w.entry;
    let packet = packet(ctx);
    let l4 = w.tcp.l4();
    let Some(fixed) = packet.read_var::<[u8; 20]>(l4) else {
        return false;
    };
    let check = u16::from_be_bytes([fixed[16], fixed[17]]);
    let side = if to_server {
        flow_flags::CLIENT_PARTIAL
    } else {
        flow_flags::SERVER_PARTIAL
    };
    let partial = e.flags & side != 0 && check as u32 == seed(&packet, &w.tcp);
    let mut d = Delta::default();
    let window = u16::from_be_bytes([fixed[14], fixed[15]]);
    if to_server {
        if fixed[13] & TCP_ACK != 0 {
            let ack = u32::from_be_bytes([fixed[8], fixed[9], fixed[10], fixed[11]]);
            let new = ack.wrapping_add(e.seq_delta);
            d.u32(ack, new);
            if packet.write_var(l4 + 8, new.to_be_bytes()).is_none() {
                return false;
            }
        }
        if e.flags & flow_flags::RESCALE_TO_SERVER != 0 {
            let new = tcpopt::rescale(window, e.wscale_client, 0);
            d.u16(window, new);
            if packet.write_var(l4 + 14, new.to_be_bytes()).is_none() {
                return false;
            }
        }
    } else {
        let seq = u32::from_be_bytes([fixed[4], fixed[5], fixed[6], fixed[7]]);
        let new = seq.wrapping_sub(e.seq_delta);
        d.u32(seq, new);
        if packet.write_var(l4 + 4, new.to_be_bytes()).is_none() {
            return false;
        }
        if e.flags & flow_flags::RESCALE_TO_CLIENT != 0 && fixed[13] & TCP_SYN == 0 {
            let new = tcpopt::rescale(window, e.wscale_server, e.wscale_ours);
            d.u16(window, new);
            if packet.write_var(l4 + 14, new.to_be_bytes()).is_none() {
                return false;
            }
        }
    }
    let tcp_len = ((fixed[12] >> 4) as usize) * 4;
    if tcp_len > 20
        && e.flags & (flow_flags::TS | flow_flags::SACK) != 0
        && !translate_options(ctx, &packet, l4, tcp_len, &e, to_server, &mut d)
    {
        return false;
    }
    partial
        || packet
            .write_var(l4 + 16, d.apply(check).to_be_bytes())
            .is_some()
}

/// The timestamp option and (client to server) SACK blocks of a packet
/// of an intercepted flow. Linux and most stacks put `NOP NOP TS` first:
/// that is read in place; anything else is parsed from a copy.
#[inline(always)]
fn translate_options(
    ctx: &XdpContext,
    packet: &Packet,
    l4: usize,
    tcp_len: usize,
    e: &inspector_common::FlowEntry,
    to_server: bool,
    d: &mut Delta,
) -> bool {
    let aligned = tcp_len >= 32 && packet.read_var::<[u8; 4]>(l4 + 20) == Some([1, 1, 8, 10]);
    let sack = to_server && e.flags & flow_flags::SACK != 0;
    let (ts_at, sack_at, sack_len) = if aligned && !(sack && tcp_len > 32) {
        (22, 0, 0)
    } else {
        let Some(o) = parse_options(ctx, l4, tcp_len) else {
            return false;
        };
        (o.ts_at as usize, o.sack_at as usize, o.sack_len as usize)
    };
    if ts_at != 0 && e.flags & flow_flags::TS != 0 {
        // Client to server: the echo (at +6); server to client: the value (+2).
        let at = l4 + (ts_at & 63) + if to_server { 6 } else { 2 };
        let Some(old) = packet.read_var::<[u8; 4]>(at).map(u32::from_be_bytes) else {
            return false;
        };
        let new = if to_server {
            old.wrapping_add(e.ts_delta)
        } else {
            old.wrapping_sub(e.ts_delta)
        };
        d.u32(old, new);
        if packet.write_var(at, new.to_be_bytes()).is_none() {
            return false;
        }
    }
    if sack && sack_at != 0 {
        // Up to four blocks of two edges, each in the server's numbers.
        for i in 0..8 {
            if 2 + 4 * (i + 1) > sack_len {
                break;
            }
            let at = l4 + (sack_at & 63) + 2 + 4 * i;
            let Some(old) = packet.read_var::<[u8; 4]>(at).map(u32::from_be_bytes) else {
                return false;
            };
            let new = old.wrapping_add(e.seq_delta);
            d.u32(old, new);
            if packet.write_var(at, new.to_be_bytes()).is_none() {
                return false;
            }
        }
    }
    true
}

/// The options of the TCP header at `l4`, parsed from a scratch copy.
#[inline(always)]
fn parse_options(ctx: &XdpContext, l4: usize, tcp_len: usize) -> Option<tcpopt::Options> {
    // SAFETY: this CPU's slot, used by this program run only.
    let s = unsafe { &mut *SCRATCH.get_ptr_mut(0)? };
    s.tcp = [0; HEADER_BUF];
    let len = if tcp_len > 60 { 60 } else { tcp_len as u32 };
    load(ctx, l4, &mut s.tcp, len)?;
    inspector_parse_options(s, len);
    Some(s.parsed)
}

/// Parses the header in `s.tcp` into `s.parsed`. A global function (its
/// own BTF linkage), so the verifier checks it once, on its own, rather
/// than at every call with every caller's state; its findings go to map
/// memory, which the verifier does not track (see `tcpopt::parse_into`).
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn inspector_parse_options(s: *mut Scratch, tcp_len: u32) -> u32 {
    if s.is_null() {
        return 1;
    }
    // SAFETY: checked non-null; callers pass this CPU's scratch slot.
    let s = unsafe { &mut *s };
    tcpopt::parse_into(&s.tcp, tcp_len as usize, &mut s.parsed);
    0
}

/// `len` if it is 1 to `N`: a helper's size, checked as the verifier must
/// see it. Each bound is checked on its own, behind a barrier: LLVM would
/// merge the two into one unsigned comparison of `len - 1`, made on a
/// register other than the one passed to the helper.
#[inline(always)]
fn helper_len<const N: usize>(len: u32) -> Option<u32> {
    let len = opaque(len as usize);
    if len == 0 {
        return None;
    }
    let len = opaque(len);
    if len > N {
        return None;
    }
    Some(len as u32)
}

/// Copies `len` bytes of the packet at `offset` into `buf`.
#[inline(always)]
fn load<const N: usize>(
    ctx: &XdpContext,
    offset: usize,
    buf: &mut [u8; N],
    len: u32,
) -> Option<()> {
    let len = helper_len::<N>(len)?;
    // SAFETY: the helper writes at most `len` <= N bytes into `buf`.
    let r =
        unsafe { bpf_xdp_load_bytes(ctx.ctx, offset as u32, buf.as_mut_ptr() as *mut c_void, len) };
    (r == 0).then_some(())
}

/// Copies `len` bytes of `buf` into the packet at `offset`.
#[inline(always)]
fn store<const N: usize>(ctx: &XdpContext, offset: usize, buf: &mut [u8; N], len: u32) -> bool {
    let Some(len) = helper_len::<N>(len) else {
        return false;
    };
    // SAFETY: the helper reads at most `len` <= N bytes of `buf`.
    unsafe {
        bpf_xdp_store_bytes(ctx.ctx, offset as u32, buf.as_mut_ptr() as *mut c_void, len) == 0
    }
}

/// The seed a packet whose checksum is pending offload carries: the
/// folded pseudo-header sum, for the length its IP header gives. Only for
/// the headers intercept handles (IPv4 without options, IPv6 without
/// extension headers); for others a value no check field holds (above
/// 16 bits), so they are taken as complete. (A plain integer, not an
/// `Option`: LLVM fills an `Option`'s undefined payload from whatever
/// register is at hand, a pointer included, which the verifier refuses.)
#[inline(always)]
fn seed(packet: &Packet, at: &TcpAt) -> u32 {
    const NONE: u32 = 1 << 16;
    let (l3, l4) = (at.l3(), at.l4());
    let Some(first) = packet.read_var::<[u8; 20]>(l3) else {
        return NONE;
    };
    match first[0] >> 4 {
        4 if l4 == l3 + 20 => {
            let total = u16::from_be_bytes([first[2], first[3]]) as u32;
            if total < 20 {
                return NONE;
            }
            csum::seed(&first[12..20], total - 20) as u32
        }
        6 if l4 == l3 + 40 => {
            // The second half on its own: LLVM merges a 40-byte read's bounds
            // check with the first's into one the verifier cannot follow.
            let Some(rest) = packet.read_var::<[u8; 20]>(l3 + 20) else {
                return NONE;
            };
            let payload = u16::from_be_bytes([first[4], first[5]]) as u32;
            let sum = csum::pseudo(&first[8..20], payload);
            csum::fold(csum::add_words(sum, &rest)) as u32
        }
        _ => NONE,
    }
}

/// The TCP fields a rewrite sets; the rest of the header is zero.
struct Header {
    src_port: [u8; 2],
    dst_port: [u8; 2],
    seq: u32,
    ack: u32,
    flags: u8,
    window: u16,
}

/// Makes the packet exactly its IP header and `header` with the
/// `options_len` bytes of options in the scratch's `opts`. A `reply` goes
/// back where the packet came from (addresses swapped, for XDP_TX);
/// otherwise it keeps its addresses (and is passed on). The TCP checksum
/// is written in full, or as the seed when the packet came with offload
/// pending and keeps that state (passed on, or sent back in generic mode).
#[inline(always)]
fn rewrite(
    ctx: &XdpContext,
    seg: Segment,
    header: Header,
    options_len: usize,
    reply: bool,
    partial_in: bool,
) -> bool {
    let Segment { s, l3, l4, v6, .. } = seg;
    let th = &mut s.new_tcp;
    *th = [0; 40];
    th[0..2].copy_from_slice(&header.src_port);
    th[2..4].copy_from_slice(&header.dst_port);
    th[4..8].copy_from_slice(&header.seq.to_be_bytes());
    th[8..12].copy_from_slice(&header.ack.to_be_bytes());
    th[13] = header.flags;
    th[14..16].copy_from_slice(&header.window.to_be_bytes());
    th[20..40].copy_from_slice(&s.opts);
    let options_len = if options_len > 20 {
        20
    } else {
        options_len & 0x1c
    };
    let tcp_len = 20 + options_len;
    th[12] = ((tcp_len / 4) as u8) << 4;

    let ip = &mut s.new_ip;
    *ip = [0; 40];
    let ip_len = if v6 {
        ip[0] = 0x60;
        ip[4..6].copy_from_slice(&(tcp_len as u16).to_be_bytes());
        ip[6] = 6;
        ip[7] = TTL;
        let (src, dst) = if reply { (24, 8) } else { (8, 24) };
        ip[8..24].copy_from_slice(&s.ip[src..src + 16]);
        ip[24..40].copy_from_slice(&s.ip[dst..dst + 16]);
        40
    } else {
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&((20 + tcp_len) as u16).to_be_bytes());
        ip[6] = 0x40; // DF
        ip[8] = TTL;
        ip[9] = 6;
        let (src, dst) = if reply { (16, 12) } else { (12, 16) };
        ip[12..16].copy_from_slice(&s.ip[src..src + 4]);
        ip[16..20].copy_from_slice(&s.ip[dst..dst + 4]);
        let mut header = [0u8; 20];
        header.copy_from_slice(&ip[..20]);
        let check = csum::ipv4_header(&header);
        ip[10..12].copy_from_slice(&check.to_be_bytes());
        20
    };
    // The pseudo-header's addresses: source then destination, both ways.
    let addresses = if v6 { &ip[8..40] } else { &ip[12..20] };
    let pseudo = csum::pseudo(addresses, tcp_len as u32);
    let partial_out = partial_in && (!reply || generic(ctx));
    let check = if partial_out {
        csum::fold(pseudo)
    } else {
        // The zeros after the header add nothing.
        csum::finish(csum::add_words(pseudo, &th[..]))
    };
    th[16..18].copy_from_slice(&check.to_be_bytes());

    if !resize(ctx, l4 + tcp_len) {
        return false;
    }
    let packet = packet(ctx);
    if reply {
        let (Some(dst_mac), Some(src_mac)) = (packet.read::<[u8; 6]>(0), packet.read::<[u8; 6]>(6))
        else {
            return false;
        };
        if packet.write(0, src_mac).is_none() || packet.write(6, dst_mac).is_none() {
            return false;
        }
    }
    let ip_len = if ip_len == 40 { 40 } else { 20 };
    store(ctx, l4, &mut s.new_tcp, tcp_len as u32) && store(ctx, l3, &mut s.new_ip, ip_len)
}

/// Whether the daemon attached this program in generic mode on the
/// interface the packet came in on (where `XDP_TX` sends it back).
#[inline(always)]
fn generic(ctx: &XdpContext) -> bool {
    let ifindex = ctx.ingress_ifindex() as u32;
    // SAFETY: the value is plain data, only read here.
    unsafe { XDP_CONFIG.get(&ifindex) }.is_some_and(|c| c.generic != 0)
}

/// Grows or shrinks the packet's tail so it is `len` bytes long.
#[inline(always)]
fn resize(ctx: &XdpContext, len: usize) -> bool {
    let delta = len as i32 - (ctx.data_end() - ctx.data()) as i32;
    // SAFETY: the context is this program's; the kernel checks the bounds.
    delta == 0 || unsafe { bpf_xdp_adjust_tail(ctx.ctx, delta) } == 0
}

/// The clock of our timestamps, in ms (as Linux's TCP timestamps).
#[inline(always)]
fn now_ms() -> u32 {
    // SAFETY: a helper without arguments or preconditions.
    (unsafe { bpf_ktime_get_ns() } / 1_000_000) as u32
}

#[inline(always)]
fn packet(ctx: &XdpContext) -> Packet {
    Packet::of(ctx)
}
