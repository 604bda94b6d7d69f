//! TCP options for TCP intercept: parsing a header's options, the options
//! of the SYN-ACK and SYN the kernel program writes, and the timestamp
//! cookie that carries a client's options from its SYN to its ACK.
//!
//! A SYN cookie (the sequence number) has room for the MSS class only.
//! When the client's SYN carries a timestamp, our SYN-ACK's timestamp value
//! carries the rest, and the client echoes it in its ACK: the kernel's
//! `cookie_init_timestamp`, netfilter SYNPROXY and the kernel's
//! `xdp_synproxy` selftest all do this. Our layout extends theirs:
//!
//! ```text
//! | 31..12 time (ms) | 11..8 our window scale | 7..6 MSS class | 5 ECN | 4 SACK | 3..0 client's window scale (0xf: none) |
//! ```
//!
//! The MSS class is the index of the cookie's MSS in the kernel's table
//! (the raw cookie check does not say which MSS it encoded), and our window
//! scale is the one announced to the client (the program's choice may
//! change between the SYN and the ACK). The bits are not authenticated,
//! as in the kernel: a forged echo changes only the forger's connection.
//!
//! Everything works on fixed-size arrays with masked indices, so the BPF
//! verifier sees every access in bounds.

/// "The client sent no window scale."
pub const NO_WSCALE: u8 = 0xf;
/// RFC 7323: the largest shift.
pub const MAX_WSCALE: u8 = 14;

pub const KIND_EOL: u8 = 0;
pub const KIND_NOP: u8 = 1;
pub const KIND_MSS: u8 = 2;
pub const KIND_WSCALE: u8 = 3;
pub const KIND_SACK_PERM: u8 = 4;
pub const KIND_SACK: u8 = 5;
pub const KIND_TS: u8 = 8;

/// The kernel's MSS classes for SYN cookies (`net/ipv4/syncookies.c`,
/// `net/ipv6/syncookies.c`): the cookie encodes the largest not above the
/// client's MSS.
pub const MSS_TABLE_V4: [u16; 4] = [536, 1300, 1440, 1460];
pub const MSS_TABLE_V6: [u16; 4] = [1220, 1420, 1440, 8940];

/// A TCP header copied into an array this long: 60 bytes of header and
/// room for a 10-byte option starting at any masked offset (`& 63`).
pub const HEADER_BUF: usize = 80;

/// What a header's options say. Offsets are from the start of the TCP
/// header; 0 means "absent".
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Options {
    /// 0: none.
    pub mss: u16,
    /// [`NO_WSCALE`] if absent, else at most [`MAX_WSCALE`].
    pub wscale: u8,
    pub sack_perm: bool,
    /// Offset of the timestamp option (kind 8, length 10).
    pub ts_at: u8,
    pub tsval: u32,
    pub tsecr: u32,
    /// Offset and length of a SACK option (kind 5).
    pub sack_at: u8,
    pub sack_len: u8,
}

/// Parses the options of the header in `h` (`len` bytes, 20 to 60). An
/// option that runs past the header ends the walk.
#[inline(always)]
pub fn parse(h: &[u8; HEADER_BUF], len: usize) -> Options {
    let mut o = Options::default();
    parse_into(h, len, &mut o);
    o
}

/// [`parse`], writing into `o`. In the kernel program `o` is map memory:
/// the walk goes byte by byte (so every index is a constant), and each
/// finding is stored at once (volatile), so that the verifier, which
/// tracks registers and the stack but not map memory, does not tell paths
/// apart by what they found.
#[inline(always)]
pub fn parse_into(h: &[u8; HEADER_BUF], len: usize, o: &mut Options) {
    // SAFETY (every `write_volatile` below): `o` is a valid, exclusive
    // reference; volatile only keeps the stores where they are.
    unsafe {
        (&raw mut *o).write_volatile(Options {
            wscale: NO_WSCALE,
            ..Options::default()
        });
    }
    let len = if len > 60 { 60 } else { len };
    // Where the next option starts.
    let mut next = 20usize;
    for at in 20..60usize {
        if at >= len {
            break;
        }
        if at < next {
            continue;
        }
        let kind = h[at];
        if kind == KIND_EOL {
            break;
        }
        if kind == KIND_NOP {
            next = at + 1;
            continue;
        }
        let olen = h[at + 1] as usize;
        if olen < 2 || at + olen > len {
            break;
        }
        unsafe {
            match (kind, olen) {
                (KIND_MSS, 4) => {
                    (&raw mut o.mss).write_volatile(u16::from_be_bytes([h[at + 2], h[at + 3]]))
                }
                (KIND_WSCALE, 3) => (&raw mut o.wscale).write_volatile(if h[at + 2] > MAX_WSCALE {
                    MAX_WSCALE
                } else {
                    h[at + 2]
                }),
                (KIND_SACK_PERM, 2) => (&raw mut o.sack_perm).write_volatile(true),
                (KIND_TS, 10) => {
                    (&raw mut o.ts_at).write_volatile(at as u8);
                    (&raw mut o.tsval).write_volatile(u32::from_be_bytes([
                        h[at + 2],
                        h[at + 3],
                        h[at + 4],
                        h[at + 5],
                    ]));
                    (&raw mut o.tsecr).write_volatile(u32::from_be_bytes([
                        h[at + 6],
                        h[at + 7],
                        h[at + 8],
                        h[at + 9],
                    ]));
                }
                (KIND_SACK, l) if l >= 10 && (l - 2) % 8 == 0 => {
                    (&raw mut o.sack_at).write_volatile(at as u8);
                    (&raw mut o.sack_len).write_volatile(l as u8);
                }
                _ => {}
            }
        }
        next = at + olen;
    }
}

/// The options a timestamp cookie carries from a client's SYN to its ACK.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cookie {
    /// The client's window scale, or [`NO_WSCALE`].
    pub client_wscale: u8,
    pub sack: bool,
    pub ecn: bool,
    /// Index into the MSS table of the IP version.
    pub mss_class: u8,
    /// The window scale our SYN-ACK announced (when the client sent one).
    pub our_wscale: u8,
}

/// Low bits of our timestamp that carry a [`Cookie`].
pub const COOKIE_BITS: u32 = 12;

/// Our SYN-ACK's timestamp value: the clock (ms) with a [`Cookie`] in its
/// low bits.
#[inline(always)]
pub fn encode(now_ms: u32, c: &Cookie) -> u32 {
    (now_ms & !((1 << COOKIE_BITS) - 1))
        | ((c.our_wscale as u32 & 0xf) << 8)
        | ((c.mss_class as u32 & 3) << 6)
        | ((c.ecn as u32) << 5)
        | ((c.sack as u32) << 4)
        | (c.client_wscale as u32 & 0xf)
}

/// The [`Cookie`] in the timestamp a client echoes.
#[inline(always)]
pub fn decode(ts: u32) -> Cookie {
    let client_wscale = (ts & 0xf) as u8;
    Cookie {
        // Anything but "none" above the largest shift was not ours: clamp.
        client_wscale: if client_wscale > MAX_WSCALE && client_wscale != NO_WSCALE {
            MAX_WSCALE
        } else {
            client_wscale
        },
        sack: ts & (1 << 4) != 0,
        ecn: ts & (1 << 5) != 0,
        mss_class: ((ts >> 6) & 3) as u8,
        our_wscale: {
            let w = ((ts >> 8) & 0xf) as u8;
            if w > MAX_WSCALE { MAX_WSCALE } else { w }
        },
    }
}

/// The class of an MSS the cookie helper returned (one of the table's).
#[inline(always)]
pub fn mss_class(mss: u16, v6: bool) -> u8 {
    let t = if v6 { &MSS_TABLE_V6 } else { &MSS_TABLE_V4 };
    if mss >= t[3] {
        3
    } else if mss >= t[2] {
        2
    } else if mss >= t[1] {
        1
    } else {
        0
    }
}

#[inline(always)]
pub fn mss_of_class(class: u8, v6: bool) -> u16 {
    let t = if v6 { &MSS_TABLE_V6 } else { &MSS_TABLE_V4 };
    t[(class & 3) as usize]
}

/// The options of a SYN or SYN-ACK the program writes, in the order Linux
/// writes them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SynOptions {
    pub mss: u16,
    /// `(tsval, tsecr)`; without it, only the MSS is sent (the other
    /// options cannot be remembered without a timestamp cookie).
    pub ts: Option<(u32, u32)>,
    pub sack_perm: bool,
    /// [`NO_WSCALE`] for none.
    pub wscale: u8,
}

/// Writes `o` into `out` (the option bytes after the 20-byte header);
/// returns their length, a multiple of 4 (4, 16 or 20).
#[inline(always)]
pub fn write_syn(o: &SynOptions, out: &mut [u8; 20]) -> usize {
    *out = [0; 20];
    out[0] = KIND_MSS;
    out[1] = 4;
    out[2..4].copy_from_slice(&o.mss.to_be_bytes());
    let Some((tsval, tsecr)) = o.ts else {
        return 4;
    };
    if o.sack_perm {
        out[4] = KIND_SACK_PERM;
        out[5] = 2;
    } else {
        out[4] = KIND_NOP;
        out[5] = KIND_NOP;
    }
    out[6] = KIND_TS;
    out[7] = 10;
    out[8..12].copy_from_slice(&tsval.to_be_bytes());
    out[12..16].copy_from_slice(&tsecr.to_be_bytes());
    if o.wscale == NO_WSCALE {
        return 16;
    }
    out[16] = KIND_NOP;
    out[17] = KIND_WSCALE;
    out[18] = 3;
    out[19] = o.wscale;
    20
}

/// `NOP NOP TS(tsval, tsecr)`, the options of an ACK: 12 bytes.
#[inline(always)]
pub fn write_ts(tsval: u32, tsecr: u32, out: &mut [u8; 20]) -> usize {
    *out = [0; 20];
    out[0] = KIND_NOP;
    out[1] = KIND_NOP;
    out[2] = KIND_TS;
    out[3] = 10;
    out[4..8].copy_from_slice(&tsval.to_be_bytes());
    out[8..12].copy_from_slice(&tsecr.to_be_bytes());
    12
}

/// A window in the sender's scale `from`, in the scale `to` the receiver
/// applies; never larger than the window really offered.
#[inline(always)]
pub fn rescale(window: u16, from: u8, to: u8) -> u16 {
    let bytes = (window as u64) << (from & 0xf);
    let scaled = bytes >> (to & 0xf);
    if scaled > 0xffff {
        0xffff
    } else {
        scaled as u16
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(options: &[u8]) -> ([u8; HEADER_BUF], usize) {
        let mut h = [0u8; HEADER_BUF];
        let len = 20 + options.len().div_ceil(4) * 4;
        h[12] = ((len / 4) as u8) << 4;
        h[20..20 + options.len()].copy_from_slice(options);
        (h, len)
    }

    #[test]
    fn parses_a_linux_syn() {
        // mss 1460, sackOK, TS val 0x01020304 ecr 0, nop, wscale 10
        let (h, len) = header(&[
            2, 4, 5, 180, 4, 2, 8, 10, 1, 2, 3, 4, 0, 0, 0, 0, 1, 3, 3, 10,
        ]);
        let o = parse(&h, len);
        assert_eq!(o.mss, 1460);
        assert!(o.sack_perm);
        assert_eq!((o.ts_at, o.tsval, o.tsecr), (26, 0x0102_0304, 0));
        assert_eq!(o.wscale, 10);
        assert_eq!(o.sack_at, 0);
    }

    #[test]
    fn parses_sack_blocks_after_timestamps() {
        let mut opts = [0u8; 32];
        opts[..16].copy_from_slice(&[1, 1, 8, 10, 0, 0, 0, 9, 0, 0, 0, 7, 1, 1, 5, 18]);
        let (h, len) = header(&opts);
        let o = parse(&h, len);
        assert_eq!((o.ts_at, o.tsval, o.tsecr), (22, 9, 7));
        assert_eq!((o.sack_at, o.sack_len), (34, 18));
        assert_eq!(o.wscale, NO_WSCALE);
        assert!(!o.sack_perm);
    }

    #[test]
    fn stops_at_broken_options() {
        // A zero length, an option past the header, EOL: nothing after counts.
        for opts in [
            &[3, 0, 7, 2, 4, 5, 180, 0][..],
            &[2, 4, 5, 180, 8, 10, 1, 2][..],
            &[0, 0, 0, 0, 2, 4, 5, 180][..],
        ] {
            let (h, len) = header(opts);
            let o = parse(&h, len);
            assert_eq!(o.ts_at, 0, "{opts:?}");
            assert!(o.mss == 0 || o.mss == 1460, "{opts:?}");
            assert_eq!(o.wscale, NO_WSCALE, "{opts:?}");
        }
        // A header length past 60 is read as 60.
        let (mut h, _) = header(&[1; 40]);
        h[59] = 2;
        assert_eq!(parse(&h, 200), parse(&h, 60));
        // A window scale above 14 is taken as 14 (RFC 7323).
        let (h, len) = header(&[3, 3, 15, 0]);
        assert_eq!(parse(&h, len).wscale, MAX_WSCALE);
    }

    #[test]
    fn cookie_round_trips() {
        for c in [
            Cookie {
                client_wscale: NO_WSCALE,
                sack: false,
                ecn: false,
                mss_class: 0,
                our_wscale: 0,
            },
            Cookie {
                client_wscale: 14,
                sack: true,
                ecn: true,
                mss_class: 3,
                our_wscale: 10,
            },
            Cookie {
                client_wscale: 7,
                sack: true,
                ecn: false,
                mss_class: 2,
                our_wscale: 7,
            },
        ] {
            let ts = encode(0xdead_beef, &c);
            assert_eq!(ts >> COOKIE_BITS, 0xdead_beef >> COOKIE_BITS);
            assert_eq!(decode(ts), c);
        }
    }

    #[test]
    fn mss_classes_match_the_kernel_tables() {
        for (i, &m) in MSS_TABLE_V4.iter().enumerate() {
            assert_eq!(mss_class(m, false) as usize, i);
            assert_eq!(mss_of_class(i as u8, false), m);
        }
        for (i, &m) in MSS_TABLE_V6.iter().enumerate() {
            assert_eq!(mss_class(m, true) as usize, i);
            assert_eq!(mss_of_class(i as u8, true), m);
        }
    }

    #[test]
    fn written_syn_options_parse_back() {
        let mut out = [0u8; 20];
        for o in [
            SynOptions {
                mss: 1460,
                ts: None,
                sack_perm: true,
                wscale: 7,
            },
            SynOptions {
                mss: 1440,
                ts: Some((5, 6)),
                sack_perm: true,
                wscale: 10,
            },
            SynOptions {
                mss: 536,
                ts: Some((0xffff_ffff, 1)),
                sack_perm: false,
                wscale: NO_WSCALE,
            },
        ] {
            let n = write_syn(&o, &mut out);
            assert_eq!(n % 4, 0);
            let (h, len) = header(&out[..n]);
            let p = parse(&h, len);
            assert_eq!(p.mss, o.mss);
            match o.ts {
                None => {
                    assert_eq!(
                        (n, p.ts_at, p.sack_perm, p.wscale),
                        (4, 0, false, NO_WSCALE)
                    )
                }
                Some((v, e)) => {
                    assert_eq!((p.tsval, p.tsecr), (v, e));
                    assert_eq!((p.sack_perm, p.wscale), (o.sack_perm, o.wscale));
                }
            }
        }
        let n = write_ts(3, 4, &mut out);
        let (h, len) = header(&out[..n]);
        assert_eq!(
            (len, parse(&h, len).ts_at, parse(&h, len).tsecr),
            (32, 22, 4)
        );
    }

    #[test]
    fn rescaling_never_offers_more() {
        assert_eq!(rescale(1000, 7, 7), 1000);
        assert_eq!(rescale(1000, 10, 7), 8000);
        assert_eq!(rescale(0x2000, 10, 7), 0xffff);
        assert_eq!(rescale(1001, 7, 10), 125);
        assert_eq!(rescale(65535, 0, 0), 65535);
    }
}
