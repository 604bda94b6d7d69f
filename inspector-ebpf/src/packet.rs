//! Bounds-checked reads and writes of packet memory: the only place that
//! touches the raw packet, so every access elsewhere is checked by
//! construction.

use core::mem::size_of;

pub struct Packet {
    start: usize,
    end: usize,
}

impl Packet {
    #[inline(always)]
    pub fn new(start: usize, end: usize) -> Self {
        Self { start, end }
    }

    #[inline(always)]
    pub fn len(&self) -> u64 {
        (self.end - self.start) as u64
    }

    /// Reads a `T` at byte `offset`, or `None` when it would end past the
    /// packet. `T` is plain bytes (arrays of u8), so any bit pattern is valid.
    #[inline(always)]
    pub fn read<T: Copy>(&self, offset: usize) -> Option<T> {
        let at = self.start + offset;
        if at + size_of::<T>() > self.end {
            return None;
        }
        // SAFETY: [at, at + size_of::<T>()) lies inside the packet (checked
        // just above, which is also what the verifier needs to see); the
        // read is unaligned because packet headers are not aligned.
        Some(unsafe { (at as *const T).read_unaligned() })
    }

    /// Writes `value` at byte `offset`, or `None` when it would end past
    /// the packet (TCP intercept rewrites headers in place).
    #[inline(always)]
    pub fn write<T: Copy>(&self, offset: usize, value: T) -> Option<()> {
        let at = self.start + offset;
        if at + size_of::<T>() > self.end {
            return None;
        }
        // SAFETY: as in `read`; XDP packet memory is writable.
        unsafe { (at as *mut T).write_unaligned(value) };
        Some(())
    }

    #[inline(always)]
    pub fn u16_at(&self, offset: usize) -> Option<u16> {
        self.read::<[u8; 2]>(offset).map(u16::from_be_bytes)
    }
}
