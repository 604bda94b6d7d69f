//! TCP intercept: what to do with each verdict of `limits` that asks for
//! it (`apply`), and the packet rewrites (IPv4, and IPv6 without extension
//! headers). Over an embryonic limit the kernel answers a client's SYN
//! itself with a SYN cookie and keeps no state. A client that returns a
//! valid cookie has its ACK turned into a SYN to the server (from the
//! client's own ISN), and the server's SYN-ACK is turned into the ACK that
//! completes the server's handshake. From then on the client knows the
//! cookie as the server's ISN, so every later packet of the flow is shifted
//! by the difference (`shift`). Which packets to rewrite and the flow state
//! are decided in `limits`; the flows this opens are recorded there.
//!
//! Only MSS is negotiated on either side (no window scaling, SACK or
//! timestamps): the cookie check does not say which MSS the client sent,
//! so the server is offered the minimum (536 over IPv4, 1220 over IPv6).
//!
//! The three rewrites are BPF subprograms (`inline(never)`) working in
//! per-CPU scratch memory: on the stack, with the caller's frame, they
//! would not fit the 512-byte limit.

use aya_ebpf::{
    bindings::{iphdr, ipv6hdr, tcphdr, xdp_action},
    helpers::{
        bpf_tcp_raw_check_syncookie_ipv4, bpf_tcp_raw_check_syncookie_ipv6,
        bpf_tcp_raw_gen_syncookie_ipv4, bpf_tcp_raw_gen_syncookie_ipv6, bpf_xdp_adjust_tail,
    },
    macros::map,
    maps::PerCpuArray,
    programs::XdpContext,
};
use inspector_common::{InterceptEvent, csum};

use crate::{
    counters::count_intercept,
    limits::{self, Verdict},
    packet::Packet,
    parse::{self, TCP_ACK, TCP_SYN, Tcp},
    steer,
};

/// The MSS offered to the server for an intercepted client.
const MSS_TO_SERVER_V4: u16 = 536;
const MSS_TO_SERVER_V6: u16 = 1220;
/// The window announced in our SYN-ACK (unscaled).
const SYNACK_WINDOW: u16 = 65_535;
const TTL: u8 = 64;
/// Offsets of the sequence and acknowledgment numbers in the TCP header.
pub const SEQ: usize = 4;
pub const ACK: usize = 8;

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
    let engines = || inspected && steer::engine_runs();
    // Kept by the classifier rather than passed: this keeps the frames small.
    let Some((src, dst, tcp)) = parse::tcp() else {
        return xdp_action::XDP_DROP;
    };
    let tcp = &tcp;
    let done = match verdict {
        Verdict::AnswerSyn if engines() => true,
        Verdict::VerifyClient if engines() => {
            limits::adopt(src, dst, tcp);
            true
        }
        Verdict::AnswerSyn => {
            if answer_syn(ctx, tcp) {
                count_intercept(InterceptEvent::CookieSent);
                return xdp_action::XDP_TX;
            }
            false
        }
        Verdict::VerifyClient => {
            if let Some((cookie, window)) = open_server_side(ctx, tcp) {
                limits::opening(src, dst, tcp, cookie, window);
            }
            true
        }
        Verdict::CompleteServer(window) => {
            if complete_server_side(ctx, tcp, window).is_some() {
                return xdp_action::XDP_TX;
            }
            false
        }
        Verdict::Shift(field, delta) => shift(ctx, tcp, field, delta),
        Verdict::Pass | Verdict::Drop => true,
    };
    if done {
        xdp_action::XDP_PASS
    } else {
        xdp_action::XDP_DROP
    }
}

/// Working memory of one rewrite: the packet's IP header (IPv4 without
/// options in the first 20 bytes, or IPv6) and TCP header (always 60 bytes,
/// whatever the header's length: the syncookie helpers read them from
/// here), and the headers being written.
#[repr(C)]
struct Scratch {
    ip: [u8; 40],
    tcp: [u8; 60],
    new_ip: [u8; 40],
    new_tcp: [u8; 24],
}

#[map]
static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

/// A packet's headers, copied to this CPU's scratch space.
struct Segment {
    s: &'static mut Scratch,
    tcp_len: u32,
    v6: bool,
}

impl Segment {
    #[inline(always)]
    fn read(packet: &Packet, tcp: &Tcp) -> Option<Self> {
        // (Both versions have 20 bytes of IP header at least; a one-byte
        // read here would compile to a bounds check the verifier cannot use.)
        let ip: [u8; 20] = packet.read(tcp.l3)?;
        // SAFETY: this CPU's slot, used by this program run only.
        let s = unsafe { &mut *SCRATCH.get_ptr_mut(0)? };
        let v6 = match ip[0] >> 4 {
            // IPv4 options and IPv6 extension headers are not intercepted.
            4 if tcp.l4 == tcp.l3 + 20 => {
                s.ip[..20].copy_from_slice(&ip);
                false
            }
            6 if tcp.l4 == tcp.l3 + 40 => {
                s.ip = packet.read(tcp.l3)?;
                true
            }
            _ => return None,
        };
        let fixed: [u8; 20] = packet.read(tcp.l4)?;
        let tcp_len = ((fixed[12] >> 4) as u32) * 4;
        if tcp_len < 20 {
            return None;
        }
        s.tcp = [0; 60];
        s.tcp[..20].copy_from_slice(&fixed);
        // Options, a word at a time; unrolled, so every index is constant.
        for i in 0..10 {
            let at = 20 + 4 * i;
            if at as u32 >= tcp_len {
                break;
            }
            let word: [u8; 4] = packet.read(tcp.l4 + at)?;
            s.tcp[at..at + 4].copy_from_slice(&word);
        }
        Some(Self { s, tcp_len, v6 })
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
}

/// A SYN over the embryonic limit: answered in place with a SYN-ACK whose
/// sequence number is a SYN cookie. Returns whether to transmit it.
#[inline(never)]
fn answer_syn(ctx: &XdpContext, tcp: &Tcp) -> bool {
    let Some(seg) = Segment::read(&packet(ctx), tcp) else {
        return false;
    };
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
    let client_isn = seg.u32_at(SEQ);
    let (client_port, server_port) = seg.ports();
    let segment = Header {
        src_port: server_port,
        dst_port: client_port,
        seq: cookie,
        ack: client_isn.wrapping_add(1),
        flags: TCP_SYN | TCP_ACK,
        window: SYNACK_WINDOW,
    };
    rewrite(ctx, tcp, seg, segment, Some(mss), true)
}

/// An ACK that may carry a SYN cookie of ours. If the cookie is valid, the
/// ACK becomes the client's SYN to the server (passed on) and this returns
/// the cookie and the client's window; else the packet is left alone.
#[inline(never)]
fn open_server_side(ctx: &XdpContext, tcp: &Tcp) -> Option<(u32, u16)> {
    let seg = Segment::read(&packet(ctx), tcp)?;
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
    let cookie = seg.u32_at(ACK).wrapping_sub(1);
    let window = seg.window();
    let (client_port, server_port) = seg.ports();
    let syn = Header {
        src_port: client_port,
        dst_port: server_port,
        // The client's ISN: its ACK is ISN + 1.
        seq: seg.u32_at(SEQ).wrapping_sub(1),
        ack: 0,
        flags: TCP_SYN,
        window,
    };
    let mss = if seg.v6 {
        MSS_TO_SERVER_V6
    } else {
        MSS_TO_SERVER_V4
    };
    rewrite(ctx, tcp, seg, syn, Some(mss), false).then_some((cookie, window))
}

/// The server's SYN-ACK to an intercepted client: answered in place with
/// the ACK the client would have sent. Returns the server's ISN.
#[inline(never)]
fn complete_server_side(ctx: &XdpContext, tcp: &Tcp, window: u16) -> Option<u32> {
    let seg = Segment::read(&packet(ctx), tcp)?;
    let server_isn = seg.u32_at(SEQ);
    let (server_port, client_port) = seg.ports();
    let ack = Header {
        src_port: client_port,
        dst_port: server_port,
        seq: seg.u32_at(ACK),
        ack: server_isn.wrapping_add(1),
        flags: TCP_ACK,
        window,
    };
    rewrite(ctx, tcp, seg, ack, None, true).then_some(server_isn)
}

/// Adds `delta` to the 32-bit field at `field` (`SEQ` or `ACK`) of the TCP
/// header, updating the checksum incrementally.
#[inline(always)]
fn shift(ctx: &XdpContext, tcp: &Tcp, field: usize, delta: u32) -> bool {
    // SEQ or ACK; the mask shows the verifier the offset is bounded.
    let field = field & 0b1100;
    let packet = packet(ctx);
    let (Some(old), Some(check)) = (
        packet.read::<[u8; 4]>(tcp.l4 + field),
        packet.read::<[u8; 2]>(tcp.l4 + 16),
    ) else {
        return false;
    };
    let old = u32::from_be_bytes(old);
    let new = old.wrapping_add(delta);
    let check = csum::replace32(u16::from_be_bytes(check), old, new);
    packet.write(tcp.l4 + field, new.to_be_bytes()).is_some()
        && packet.write(tcp.l4 + 16, check.to_be_bytes()).is_some()
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

/// Makes the packet exactly its IP header and `header` (with an MSS option
/// when `mss` is given), with fresh checksums. A `reply` goes back where
/// the packet came from (addresses swapped, for XDP_TX); otherwise it keeps
/// its addresses (and is passed on).
#[inline(always)]
fn rewrite(
    ctx: &XdpContext,
    tcp: &Tcp,
    seg: Segment,
    header: Header,
    mss: Option<u16>,
    reply: bool,
) -> bool {
    let Segment { s, v6, .. } = seg;
    let th = &mut s.new_tcp;
    *th = [0; 24];
    th[0..2].copy_from_slice(&header.src_port);
    th[2..4].copy_from_slice(&header.dst_port);
    th[4..8].copy_from_slice(&header.seq.to_be_bytes());
    th[8..12].copy_from_slice(&header.ack.to_be_bytes());
    th[13] = header.flags;
    th[14..16].copy_from_slice(&header.window.to_be_bytes());
    let tcp_len: usize = if let Some(mss) = mss {
        th[20] = 2; // kind MSS
        th[21] = 4;
        th[22..24].copy_from_slice(&mss.to_be_bytes());
        24
    } else {
        20
    };
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
    let check = csum::tcp(addresses, &th[..tcp_len]);
    th[16..18].copy_from_slice(&check.to_be_bytes());

    if !resize(ctx, tcp.l4 + tcp_len) {
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
    let header = s.new_tcp;
    let tcp_written = if tcp_len == 24 {
        packet.write(tcp.l4, header)
    } else {
        let mut short = [0u8; 20];
        short.copy_from_slice(&header[..20]);
        packet.write(tcp.l4, short)
    };
    let ip_written = if ip_len == 40 {
        packet.write(tcp.l3, s.new_ip)
    } else {
        let mut short = [0u8; 20];
        short.copy_from_slice(&s.new_ip[..20]);
        packet.write(tcp.l3, short)
    };
    tcp_written.is_some() && ip_written.is_some()
}

/// Grows or shrinks the packet's tail so it is `len` bytes long.
#[inline(always)]
fn resize(ctx: &XdpContext, len: usize) -> bool {
    let delta = len as i32 - (ctx.data_end() - ctx.data()) as i32;
    // SAFETY: the context is this program's; the kernel checks the bounds.
    delta == 0 || unsafe { bpf_xdp_adjust_tail(ctx.ctx, delta) } == 0
}

#[inline(always)]
fn packet(ctx: &XdpContext) -> Packet {
    Packet::new(ctx.data(), ctx.data_end())
}
