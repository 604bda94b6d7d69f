//! SYN floods delivered the way a NIC delivers packets: as XDP frames, with
//! no socket buffer behind them.
//!
//! A veth hands XDP a locally sent packet (a raw socket's, see
//! [`crate::syn`]) only after copying it into a page of its own with XDP's
//! headroom (`veth_convert_skb_to_xdp_buff`, `skb_pp_cow_data`), a cost a
//! NIC driver does not have and the gateway would be charged for. Frames
//! that reach a veth through `ndo_xdp_xmit` skip it: they arrive as
//! `xdp_frame`s, as from a NIC's receive ring, and become socket buffers
//! only if a program passes them.
//!
//! The sender is `BPF_PROG_RUN` in live-frames mode (`BPF_F_TEST_XDP_LIVE_FRAMES`,
//! Documentation/bpf/bpf_prog_run.rst): the kernel runs a small XDP program
//! on copies of one frame, and transmits each copy the program returns
//! `XDP_TX` for out of the ingress device given in the context, here the
//! client's veth, whose peer is the gateway. The program gives every copy a
//! random source address in [`SPOOFED_V4`], port and sequence number and
//! fixes both checksums: some 60 BPF instructions, written out here so
//! that the lab needs no C compiler.

use std::{
    net::SocketAddrV4,
    os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
};

use anyhow::{Context, Result, bail, ensure};
use inspector_common::csum;

use crate::{
    Netns, is_lab_address,
    raw::{ifindex, mac},
    syn::{SPOOFED_V4, syn_v4},
};

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_PROG_TEST_RUN: libc::c_long = 10;
const BPF_PROG_TYPE_XDP: u32 = 6;
const BPF_XDP: u32 = 37;
const BPF_F_TEST_XDP_LIVE_FRAMES: u32 = 1 << 1;
const BPF_MAP_TYPE_PROG_ARRAY: u32 = 3;
const BPF_PSEUDO_MAP_FD: u8 = 1;
const BPF_FUNC_GET_PRANDOM_U32: i32 = 7;
const BPF_FUNC_TAIL_CALL: i32 = 12;
const XDP_DROP: i32 = 1;
const XDP_PASS: i32 = 2;
const XDP_TX: i32 = 3;

/// Where the fields the program writes sit in the frame (Ethernet, IPv4
/// without options, TCP with an MSS option).
const IP_CHECK: i16 = 14 + 10;
/// The low half of the source address: the spoofed prefix is a /16.
const SRC_LOW: i16 = 14 + 14;
const SPORT: i16 = 34;
const SEQ: i16 = 34 + 4;
const TCP_CHECK: i16 = 34 + 16;
const FRAME_LEN: usize = 14 + 20 + 24;

/// A SYN flood out of one device of a namespace, as XDP frames.
pub struct FrameFlood {
    ns: Netns,
    prog: OwnedFd,
    frame: Vec<u8>,
    ifindex: u32,
    /// The program array a [`Then::Handler`] is called through.
    _handlers: Option<OwnedFd>,
}

/// What becomes of each SYN of a flood that arrives on a device
/// ([`FrameFlood::arriving`]), once written.
pub enum Then<'a> {
    /// Given to this XDP program (a tail call), as a driver gives it the
    /// frames of its receive ring.
    Handler(BorrowedFd<'a>),
    /// `XDP_PASS`: to the device's stack, as a driver with a pass-only
    /// program gives it.
    Pass,
    /// `XDP_DROP`: what writing the SYN and receiving it cost, the floor
    /// under both.
    Drop,
}

impl FrameFlood {
    /// SYNs to `dst` out of `dev` in `ns`, to `next_hop_mac` (the peer's,
    /// the gateway's side of the link).
    pub fn new(ns: &Netns, dev: &str, next_hop_mac: [u8; 6], dst: SocketAddrV4) -> Result<Self> {
        ensure!(
            is_lab_address((*dst.ip()).into()),
            "{dst} is not a lab address"
        );
        ensure!(
            SPOOFED_V4.1 == 16,
            "the program writes the low half of a /16"
        );
        let frame = template(next_hop_mac, mac(ns, dev)?, dst);
        let prog = load(&program(&frame, &[Insn::MovK(0, XDP_TX), Insn::Exit])?)?;
        Self::with(ns, dev, prog, frame, None)
    }

    /// SYNs to `dst` that arrive on `dev` in `ns` from `peer_mac`, each
    /// handled as `then` says in the sending thread, on its CPU: what the
    /// handler costs is that thread's CPU time, and the frames' pages stay
    /// on it, as a driver's own pages do (but for those a handler sends
    /// back out, `XDP_TX`, which the peer's receive returns).
    pub fn arriving(
        ns: &Netns,
        dev: &str,
        peer_mac: [u8; 6],
        dst: SocketAddrV4,
        then: Then,
    ) -> Result<Self> {
        use Insn::*;
        let frame = template(mac(ns, dev)?, peer_mac, dst);
        let (end, handlers) = match then {
            Then::Handler(prog) => {
                let handlers = prog_array(prog)?;
                let call = vec![
                    MovX(1, 6),
                    LdMapFd(2, handlers.as_raw_fd()),
                    Imm64High,
                    MovK(3, 0),
                    Call(BPF_FUNC_TAIL_CALL),
                    // Only if the call failed: nothing handled it.
                    MovK(0, XDP_DROP),
                    Exit,
                ];
                (call, Some(handlers))
            }
            Then::Pass => (vec![MovK(0, XDP_PASS), Exit], None),
            Then::Drop => (vec![MovK(0, XDP_DROP), Exit], None),
        };
        let prog = load(&program(&frame, &end)?)?;
        Self::with(ns, dev, prog, frame, handlers)
    }

    fn with(
        ns: &Netns,
        dev: &str,
        prog: OwnedFd,
        frame: Vec<u8>,
        handlers: Option<OwnedFd>,
    ) -> Result<Self> {
        Ok(Self {
            ns: Netns::new(ns.name.clone()),
            prog,
            frame,
            ifindex: ifindex(ns, dev)?,
            _handlers: handlers,
        })
    }

    /// Sends `count` SYNs (from the calling thread's CPUs: the kernel runs
    /// the program in this call). Frames the peer's ring has no room for
    /// are dropped there, as a NIC's would be. Returns the CPU time of the
    /// thread that sent them, in ns: for a flood [`Self::arriving`], what
    /// its handler took too.
    pub fn send(&self, count: u32) -> Result<u64> {
        let (prog, ifindex, frame) = (self.prog.as_raw_fd(), self.ifindex, &self.frame);
        self.ns.run(move || {
            let start = thread_cpu_ns();
            test_run_live(prog, ifindex, frame, count)?;
            Ok(thread_cpu_ns() - start)
        })?
    }
}

/// The frame the program starts each copy from: a SYN to `dst` with an
/// MSS option. The fields the program writes are zero here, so each copy's
/// checksums are the template's plus the words written.
fn template(dst_mac: [u8; 6], src_mac: [u8; 6], dst: SocketAddrV4) -> Vec<u8> {
    let mut frame = [dst_mac, src_mac].concat();
    frame.extend_from_slice(&0x0800u16.to_be_bytes());
    let mut ip = syn_v4(SPOOFED_V4.0, 0, *dst.ip(), dst.port(), 0);
    let header: [u8; 20] = ip[..20].try_into().expect("an IPv4 header");
    ip[10..12].copy_from_slice(&csum::ipv4_header(&header).to_be_bytes());
    frame.extend_from_slice(&ip);
    frame
}

/// An XDP program that drops every frame, pinned at `path` (removed on
/// drop) for `ip link set … xdpdrv pinned`: the cost of a veth's receive
/// path with no program work at all, the floor under any XDP handler on it.
pub struct DropAll {
    path: std::path::PathBuf,
}

impl DropAll {
    pub fn pin(path: &std::path::Path) -> Result<Self> {
        let prog = load(&[Insn::MovK(0, XDP_DROP), Insn::Exit].map(Insn::encode))?;
        let name = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())?;
        let mut attr = ObjPin {
            pathname: name.as_ptr() as u64,
            bpf_fd: prog.as_raw_fd() as u32,
            file_flags: 0,
        };
        if bpf(BPF_OBJ_PIN, &mut attr) < 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("pinning the drop-all program at {}", path.display()));
        }
        Ok(Self {
            path: path.to_owned(),
        })
    }

    pub fn path(&self) -> &std::path::Path {
        &self.path
    }
}

impl Drop for DropAll {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// `union bpf_attr` for `BPF_OBJ_PIN`.
#[repr(C)]
struct ObjPin {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
}

/// The one's complement sum, as the program reads words (native order), of
/// the words a checksum at `at` covers minus the ones the program writes:
/// the complement of the checksum stored in the template.
fn sum_of_others(frame: &[u8], at: i16) -> i32 {
    let at = at as usize;
    i32::from(!u16::from_ne_bytes([frame[at], frame[at + 1]]))
}

/// A program array holding `prog` at index 0, for a tail call.
fn prog_array(prog: BorrowedFd) -> Result<OwnedFd> {
    let mut create = MapCreate {
        map_type: BPF_MAP_TYPE_PROG_ARRAY,
        key_size: 4,
        value_size: 4,
        max_entries: 1,
        map_flags: 0,
    };
    let fd = bpf(BPF_MAP_CREATE, &mut create);
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("creating a program array");
    }
    // SAFETY: the kernel returned a new descriptor that nothing else owns.
    let map = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let (key, value) = (0u32, prog.as_raw_fd() as u32);
    let mut update = MapUpdate {
        map_fd: map.as_raw_fd() as u32,
        _pad: 0,
        key: &key as *const u32 as u64,
        value: &value as *const u32 as u64,
        flags: 0,
    };
    if bpf(BPF_MAP_UPDATE_ELEM, &mut update) < 0 {
        return Err(std::io::Error::last_os_error())
            .context("putting the handler in the program array");
    }
    Ok(map)
}

/// `union bpf_attr` for `BPF_MAP_CREATE`, up to the fields used.
#[repr(C)]
struct MapCreate {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
}

/// `union bpf_attr` for `BPF_MAP_UPDATE_ELEM`.
#[repr(C)]
struct MapUpdate {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

/// The program: the whole template written again (a page comes back from
/// the receiver as it left: forwarded, with the next hop's MAC and one hop
/// less), then a random source (host part, low bit of the third octet set
/// so it is never the network's address), port (at least 1024) and
/// sequence number, checksums fixed, then `end` (its context in r6).
fn program(template: &[u8], end: &[Insn]) -> Result<Vec<u64>> {
    use Insn::*;
    ensure!(
        template.len() == FRAME_LEN,
        "a SYN frame of {} bytes",
        template.len()
    );
    let (ip_base, tcp_base) = (
        sum_of_others(template, IP_CHECK),
        sum_of_others(template, TCP_CHECK),
    );
    let mut p = vec![
        MovX(6, 1),
        LdxW(7, 6, 0), // data
        LdxW(8, 6, 4), // data_end
        MovX(1, 7),
        AddK(1, FRAME_LEN as i32),
        JgtX(1, 8, 0), // patched: to the drop at the end
    ];
    let mut words = template.chunks_exact(4);
    for (i, w) in words.by_ref().enumerate() {
        let imm = i32::from_ne_bytes(w.try_into().expect("4 bytes"));
        p.push(StW(7, (4 * i) as i16, imm));
    }
    if let [a, b] = *words.remainder() {
        let at = (template.len() - 2) as i16;
        p.push(StH(7, at, i32::from(u16::from_ne_bytes([a, b]))));
    }
    p.extend([
        Call(BPF_FUNC_GET_PRANDOM_U32),
        MovX(9, 0),
        Call(BPF_FUNC_GET_PRANDOM_U32),
        // r1: the address's low half, r2: the port, r0: the sequence number.
        MovX(1, 9),
        AndK(1, 0xffff),
        OrK(1, 1),
        MovX(2, 9),
        RshK(2, 16),
        AndK(2, 0xffff),
        OrK(2, 4),
        StxH(7, 1, SRC_LOW),
        StxH(7, 2, SPORT),
        StxW(7, 0, SEQ),
    ]);
    p.extend([
        // IP: base + address, folded once (two 16-bit terms).
        MovK(3, ip_base),
        AddX(3, 1),
    ]);
    p.extend(fold(3, 4));
    p.extend([XorK(3, 0xffff), StxH(7, 3, IP_CHECK)]);
    // TCP: base + address + port + the sequence number's halves (the
    // address is in the pseudo-header), folded twice.
    p.extend([
        MovK(4, tcp_base),
        AddX(4, 1),
        AddX(4, 2),
        MovX(5, 0),
        AndK(5, 0xffff),
        AddX(4, 5),
        MovX(5, 0),
        RshK(5, 16),
        AndK(5, 0xffff),
        AddX(4, 5),
    ]);
    p.extend(fold(4, 5));
    p.extend(fold(4, 5));
    p.extend([XorK(4, 0xffff), StxH(7, 4, TCP_CHECK)]);
    p.extend_from_slice(end);
    let drop = p.len();
    p.extend([MovK(0, XDP_DROP), Exit]);
    p[5] = JgtX(1, 8, (drop - 6) as i16);
    Ok(p.into_iter().map(Insn::encode).collect())
}

/// `r = (r & 0xffff) + (r >> 16)`, with `t` as scratch.
fn fold(r: u8, t: u8) -> [Insn; 4] {
    use Insn::*;
    [MovX(t, r), RshK(t, 16), AndK(r, 0xffff), AddX(r, t)]
}

/// The eBPF instructions the program uses (64-bit ALU, linux/bpf.h).
#[derive(Clone, Copy)]
enum Insn {
    MovX(u8, u8),
    MovK(u8, i32),
    AddX(u8, u8),
    AddK(u8, i32),
    AndK(u8, i32),
    OrK(u8, i32),
    XorK(u8, i32),
    RshK(u8, i32),
    LdxW(u8, u8, i16),
    StxH(u8, u8, i16),
    StxW(u8, u8, i16),
    StW(u8, i16, i32),
    StH(u8, i16, i32),
    JgtX(u8, u8, i16),
    /// The first half of `r = map` (`BPF_LD | BPF_IMM | BPF_DW` of a map's
    /// descriptor); [`Insn::Imm64High`] is the second.
    LdMapFd(u8, i32),
    Imm64High,
    Call(i32),
    Exit,
}

impl Insn {
    fn encode(self) -> u64 {
        use Insn::*;
        let (code, dst, src, off, imm): (u8, u8, u8, i16, i32) = match self {
            MovX(d, s) => (0xbf, d, s, 0, 0),
            MovK(d, k) => (0xb7, d, 0, 0, k),
            AddX(d, s) => (0x0f, d, s, 0, 0),
            AddK(d, k) => (0x07, d, 0, 0, k),
            AndK(d, k) => (0x57, d, 0, 0, k),
            OrK(d, k) => (0x47, d, 0, 0, k),
            XorK(d, k) => (0xa7, d, 0, 0, k),
            RshK(d, k) => (0x77, d, 0, 0, k),
            LdxW(d, s, o) => (0x61, d, s, o, 0),
            StxH(d, s, o) => (0x6b, d, s, o, 0),
            StxW(d, s, o) => (0x63, d, s, o, 0),
            StW(d, o, k) => (0x62, d, 0, o, k),
            StH(d, o, k) => (0x6a, d, 0, o, k),
            JgtX(d, s, o) => (0x2d, d, s, o, 0),
            LdMapFd(d, fd) => (0x18, d, BPF_PSEUDO_MAP_FD, 0, fd),
            Imm64High => (0, 0, 0, 0, 0),
            Call(f) => (0x85, 0, 0, 0, f),
            Exit => (0x95, 0, 0, 0, 0),
        };
        // struct bpf_insn: code, dst_reg:4 | src_reg:4, off, imm (in memory order).
        u64::from_ne_bytes(
            [
                [code, dst | (src << 4)].as_slice(),
                &off.to_ne_bytes(),
                &imm.to_ne_bytes(),
            ]
            .concat()
            .try_into()
            .expect("8 bytes"),
        )
    }
}

/// `union bpf_attr` for `BPF_PROG_LOAD`, up to the fields used.
#[repr(C)]
#[derive(Default)]
struct ProgLoad {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// `union bpf_attr` for `BPF_PROG_TEST_RUN`.
#[repr(C)]
#[derive(Default)]
struct TestRun {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: u32,
}

/// `struct xdp_md`.
#[repr(C)]
#[derive(Default)]
struct XdpMd {
    data: u32,
    data_end: u32,
    data_meta: u32,
    ingress_ifindex: u32,
    rx_queue_index: u32,
    egress_ifindex: u32,
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> libc::c_long {
    // SAFETY: `attr` is a bpf_attr prefix the kernel reads (and may write)
    // within its size; the pointers in it outlive the call.
    unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T,
            std::mem::size_of::<T>() as libc::c_uint,
        )
    }
}

fn load(insns: &[u64]) -> Result<OwnedFd> {
    let license = c"GPL";
    let mut log = vec![0u8; 1 << 16];
    let mut name = [0u8; 16];
    name[..11].copy_from_slice(b"frame_flood");
    let mut attr = ProgLoad {
        prog_type: BPF_PROG_TYPE_XDP,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: 1,
        log_size: log.len() as u32,
        log_buf: log.as_mut_ptr() as u64,
        prog_name: name,
        // As aya loads XDP programs: a tail call needs both ends alike.
        expected_attach_type: BPF_XDP,
        ..Default::default()
    };
    let fd = bpf(BPF_PROG_LOAD, &mut attr);
    if fd < 0 {
        let err = std::io::Error::last_os_error();
        let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
        bail!(
            "loading the flood's XDP program: {err}\n{}",
            String::from_utf8_lossy(&log[..end])
        );
    }
    // SAFETY: the kernel returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// The calling thread's CPU time, user and kernel, in ns.
fn thread_cpu_ns() -> u64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

fn test_run_live(prog: i32, ifindex: u32, frame: &[u8], repeat: u32) -> Result<()> {
    let mut ctx = XdpMd {
        data_end: frame.len() as u32,
        ingress_ifindex: ifindex,
        ..Default::default()
    };
    let mut attr = TestRun {
        prog_fd: prog as u32,
        data_size_in: frame.len() as u32,
        data_in: frame.as_ptr() as u64,
        repeat,
        ctx_size_in: std::mem::size_of::<XdpMd>() as u32,
        ctx_in: &mut ctx as *mut XdpMd as u64,
        flags: BPF_F_TEST_XDP_LIVE_FRAMES,
        ..Default::default()
    };
    if bpf(BPF_PROG_TEST_RUN, &mut attr) < 0 {
        return Err(std::io::Error::last_os_error())
            .context("BPF_PROG_RUN in live-frames mode (kernel 5.18 or later)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    /// The program's checksum arithmetic, run here on the template with
    /// fields written as the program writes them, verifies.
    #[test]
    fn written_fields_keep_both_checksums_valid() {
        let dst = SocketAddrV4::new(Ipv4Addr::new(198, 18, 1, 25), 25);
        let frame = template([0; 6], [0; 6], dst);
        let (ip_base, tcp_base) = (
            sum_of_others(&frame, IP_CHECK) as u32,
            sum_of_others(&frame, TCP_CHECK) as u32,
        );
        for (r9, r0) in [
            (0u32, 0u32),
            (0xffff_ffff, 0xffff_ffff),
            (0x1234_5678, 0x9abc_def0),
        ] {
            let (a, p) = ((r9 & 0xffff) | 1, ((r9 >> 16) & 0xffff) | 4);
            let f = |s: u32| (s & 0xffff) + (s >> 16);
            let ip_sum = !(f(ip_base + a) as u16);
            let tcp_sum = !(f(f(tcp_base + a + p + (r0 & 0xffff) + (r0 >> 16))) as u16);
            let mut g = frame.clone();
            let w = |g: &mut Vec<u8>, at: i16, b: &[u8]| {
                g[at as usize..at as usize + b.len()].copy_from_slice(b)
            };
            w(&mut g, SRC_LOW, &(a as u16).to_ne_bytes());
            w(&mut g, SPORT, &(p as u16).to_ne_bytes());
            w(&mut g, SEQ, &r0.to_ne_bytes());
            w(&mut g, IP_CHECK, &ip_sum.to_ne_bytes());
            w(&mut g, TCP_CHECK, &tcp_sum.to_ne_bytes());
            let header: &[u8; 20] = (&g[14..34]).try_into().unwrap();
            let mut zeroed = *header;
            zeroed[10..12].fill(0);
            assert_eq!(csum::ipv4_header(&zeroed).to_be_bytes(), header[10..12]);
            let mut tcp = g[34..].to_vec();
            tcp[16..18].fill(0);
            assert_eq!(csum::tcp(&g[26..34], &tcp).to_be_bytes(), g[50..52]);
            assert_eq!(g[26..28], SPOOFED_V4.0.octets()[..2]);
            assert_ne!(g[28] & 1, 0, "never the network's address");
        }
    }

    #[test]
    fn the_bounds_check_jumps_to_the_drop() {
        use Insn::*;
        let ends: [&[Insn]; 2] = [
            &[MovK(0, XDP_TX), Exit],
            &[
                LdMapFd(2, 3),
                Imm64High,
                MovK(3, 0),
                Call(BPF_FUNC_TAIL_CALL),
                Exit,
            ],
        ];
        for end in ends {
            let p = program(&[0u8; FRAME_LEN], end).unwrap();
            let jump = p[5].to_ne_bytes();
            let off = i16::from_ne_bytes([jump[2], jump[3]]) as usize;
            let target = p[6 + off].to_ne_bytes();
            assert_eq!(target[0], 0xb7);
            assert_eq!(
                i32::from_ne_bytes(target[4..8].try_into().unwrap()),
                XDP_DROP
            );
            assert_eq!(p.len(), 6 + off + 2, "the drop ends the program");
        }
    }
}
