//! Internet checksums (RFC 1071, RFC 1624) for the headers the kernel
//! program writes itself (TCP intercept). Here rather than in the kernel
//! crate so they are unit-tested; fixed sizes and no loops the verifier
//! would have to bound beyond the header lengths.

/// Adds 16-bit big-endian words of `bytes` (an even length) to `sum`.
#[inline(always)]
pub fn add_words(mut sum: u32, bytes: &[u8]) -> u32 {
    let mut i = 0;
    while i + 1 < bytes.len() {
        sum += u16::from_be_bytes([bytes[i], bytes[i + 1]]) as u32;
        i += 2;
    }
    sum
}

/// Folds a 32-bit sum to 16 bits (ones' complement addition).
#[inline(always)]
pub fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// Folds a 32-bit sum to 16 bits and complements it.
#[inline(always)]
pub fn finish(sum: u32) -> u16 {
    !fold(sum)
}

/// The sum of the TCP pseudo-header: `addresses` (source then destination,
/// 8 or 32 bytes), protocol 6 and the segment's length.
#[inline(always)]
pub fn pseudo(addresses: &[u8], len: u32) -> u32 {
    add_words(0, addresses) + 6 + (len >> 16) + (len & 0xffff)
}

/// What the check field of a segment whose checksum is still to be
/// completed by offload (`CHECKSUM_PARTIAL`) holds: the folded pseudo-header
/// sum, not complemented (the kernel's `~tcp_v4_check(len, s, d, 0)`).
/// Whoever completes it sums from the TCP header on, this field included.
#[inline(always)]
pub fn seed(addresses: &[u8], len: u32) -> u16 {
    fold(pseudo(addresses, len))
}

/// The checksum of a 20-byte IPv4 header whose checksum field is zero.
#[inline(always)]
pub fn ipv4_header(header: &[u8; 20]) -> u16 {
    finish(add_words(0, header))
}

/// The TCP checksum: the pseudo-header of `addresses` (source then
/// destination, 8 bytes for IPv4 or 32 for IPv6; the rest of either
/// pseudo-header sums to protocol 6 plus the length), then `segment` (the
/// TCP header with a zero checksum field, and any payload).
#[inline(always)]
pub fn tcp(addresses: &[u8], segment: &[u8]) -> u16 {
    finish(add_words(pseudo(addresses, segment.len() as u32), segment))
}

/// RFC 1624 updates of one checksum for several changed fields, summed
/// first and applied once: HC' = ~(~HC + sum of (~m + m')).
#[derive(Clone, Copy, Default)]
pub struct Delta(u32);

impl Delta {
    #[inline(always)]
    pub fn u16(&mut self, old: u16, new: u16) {
        self.0 += (!old) as u32 + new as u32;
    }

    #[inline(always)]
    pub fn u32(&mut self, old: u32, new: u32) {
        self.u16((old >> 16) as u16, (new >> 16) as u16);
        self.u16(old as u16, new as u16);
    }

    /// The updated checksum.
    #[inline(always)]
    pub fn apply(self, check: u16) -> u16 {
        // Each term is below 2^17: a header's worth of them cannot overflow.
        finish((!check) as u32 + (self.0 & 0xffff) + (self.0 >> 16))
    }
}

/// RFC 1624 incremental update of `check` for a 32-bit field changing from
/// `old` to `new`: HC' = ~(~HC + ~m + m').
#[inline(always)]
pub fn replace32(check: u16, old: u32, new: u32) -> u16 {
    let mut sum = (!check) as u32;
    sum += (!(old >> 16) & 0xffff) + (!old & 0xffff);
    sum += (new >> 16) + (new & 0xffff);
    finish(sum)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A header from RFC 1071's usual worked example (Wikipedia's IPv4
    /// checksum example): 45 00 00 73 00 00 40 00 40 11 .. c0 a8 00 01 c0 a8 00 c7.
    #[test]
    fn ipv4_header_checksum_matches_the_known_value() {
        let mut h = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0, 0, 0xc0, 0xa8, 0x00,
            0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(ipv4_header(&h), 0xb861);
        h[10..12].copy_from_slice(&0xb861u16.to_be_bytes());
        assert_eq!(finish(add_words(0, &h)), 0, "a valid header sums to zero");
    }

    #[test]
    fn incremental_update_equals_recomputation() {
        let addresses = [198, 18, 0, 2, 198, 18, 1, 25];
        let mut seg = [0u8; 24];
        seg[0..4].copy_from_slice(&[0x9c, 0x40, 0, 25]);
        seg[4..8].copy_from_slice(&0x1234_5678u32.to_be_bytes());
        seg[8..12].copy_from_slice(&0xdead_beefu32.to_be_bytes());
        seg[12] = 0x60;
        seg[13] = 0x10;
        seg[20..24].copy_from_slice(&[2, 4, 5, 0xb4]);
        let before = tcp(&addresses, &seg);
        for new in [0u32, 1, 0xffff_ffff, 0x8000_0000, 0xdead_bef0, 0x0001_0000] {
            let mut s = seg;
            s[8..12].copy_from_slice(&new.to_be_bytes());
            let full = tcp(&addresses, &s);
            let incremental = replace32(before, 0xdead_beef, new);
            // 0x0000 and 0xffff are the same number in ones' complement.
            assert!(
                full == incremental
                    || (full, incremental) == (0xffff, 0)
                    || (full, incremental) == (0, 0xffff),
                "{new:#x}: {full:#x} vs {incremental:#x}"
            );
        }
    }

    #[test]
    fn delta_of_several_fields_equals_recomputation() {
        let addresses = [198, 18, 1, 25, 198, 19, 3, 4];
        let mut seg = [0u8; 32];
        seg[0..4].copy_from_slice(&[0, 25, 0x9c, 0x40]);
        seg[4..8].copy_from_slice(&0x0bad_f00du32.to_be_bytes());
        seg[12] = 0x80;
        seg[13] = 0x10;
        seg[14..16].copy_from_slice(&501u16.to_be_bytes());
        seg[20..24].copy_from_slice(&[1, 1, 8, 10]);
        seg[24..28].copy_from_slice(&0x1111_2222u32.to_be_bytes());
        let check = tcp(&addresses, &seg);
        let mut d = Delta::default();
        let mut new = seg;
        new[4..8].copy_from_slice(&0xffff_0001u32.to_be_bytes());
        d.u32(0x0bad_f00d, 0xffff_0001);
        new[14..16].copy_from_slice(&0xffffu16.to_be_bytes());
        d.u16(501, 0xffff);
        new[24..28].copy_from_slice(&0x0000_0007u32.to_be_bytes());
        d.u32(0x1111_2222, 7);
        let full = tcp(&addresses, &new);
        let incremental = d.apply(check);
        assert!(
            full == incremental || (full ^ incremental) == 0xffff && full & incremental == 0,
            "{full:#x} vs {incremental:#x}"
        );
    }

    /// A segment whose check field holds the seed sums, once completed the
    /// way offload completes it (from the TCP header on), to its checksum.
    #[test]
    fn completing_the_seed_gives_the_checksum() {
        let addresses = [198, 18, 0, 2, 198, 18, 1, 25];
        let mut seg = [0u8; 40];
        seg[0..4].copy_from_slice(&[0x9c, 0x40, 0, 25]);
        seg[12] = 0x50;
        seg[13] = 0x18;
        seg[20..40].copy_from_slice(b"EHLO client.example\n");
        let want = tcp(&addresses, &seg);
        seg[16..18].copy_from_slice(&seed(&addresses, 40).to_be_bytes());
        assert_eq!(finish(add_words(0, &seg)), want);
    }

    /// The IPv6 pseudo-header as RFC 8200 lays it out (addresses, a 32-bit
    /// length, three zero bytes, the next header) sums like ours.
    #[test]
    fn ipv6_pseudo_header_checksum_verifies() {
        let mut addresses = [0u8; 32];
        addresses[..16].copy_from_slice(&[0x20, 0x01, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
        addresses[16..].copy_from_slice(&[0x20, 0x01, 0, 2, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x25]);
        let mut seg = [0u8; 24];
        seg[0..4].copy_from_slice(&[0x9c, 0x40, 0, 25]);
        seg[4..8].copy_from_slice(&7u32.to_be_bytes());
        seg[12] = 0x60;
        seg[13] = 0x12;
        seg[20..24].copy_from_slice(&[2, 4, 0x04, 0xc4]);
        let check = tcp(&addresses, &seg);
        seg[16..18].copy_from_slice(&check.to_be_bytes());
        let mut pseudo = [0u8; 40 + 24];
        pseudo[..32].copy_from_slice(&addresses);
        pseudo[32..36].copy_from_slice(&24u32.to_be_bytes());
        pseudo[39] = 6;
        pseudo[40..].copy_from_slice(&seg);
        assert_eq!(finish(add_words(0, &pseudo)), 0);
    }
}
