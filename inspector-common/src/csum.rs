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

/// Folds a 32-bit sum to 16 bits and complements it.
#[inline(always)]
pub fn finish(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
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
    let sum = add_words(0, addresses) + 6 + segment.len() as u32;
    finish(add_words(sum, segment))
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
