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

    /// The packet of an XDP program's context, read inside the subprogram
    /// that uses it: the loads are volatile so that LLVM does not hoist
    /// them into the caller and pass the pointers as arguments, whose
    /// zero-extension the verifier refuses (arithmetic on the end pointer).
    #[inline(always)]
    pub fn of(ctx: &aya_ebpf::programs::XdpContext) -> Self {
        // SAFETY: the context pointer is the program's, valid for its run.
        unsafe {
            let md = ctx.ctx;
            Self::new(
                (&raw const (*md).data).read_volatile() as usize,
                (&raw const (*md).data_end).read_volatile() as usize,
            )
        }
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

    /// [`Self::read`] at an offset that is not a constant (a header's
    /// position kept from an earlier parse). The address goes through an
    /// empty `asm` block, as the kernel's `barrier_var`: LLVM can no longer
    /// derive it anew or merge its bounds check with another, so the check
    /// and the load use the one register the verifier follows.
    #[inline(always)]
    pub fn read_var<T: Copy>(&self, offset: usize) -> Option<T> {
        let at = opaque(self.start + offset);
        if at + size_of::<T>() > self.end {
            return None;
        }
        // SAFETY: as in `read`.
        Some(unsafe { (at as *const T).read_unaligned() })
    }

    /// [`Self::write`] at an offset that is not a constant (see `read_var`).
    #[inline(always)]
    pub fn write_var<T: Copy>(&self, offset: usize, value: T) -> Option<()> {
        let at = opaque(self.start + offset);
        if at + size_of::<T>() > self.end {
            return None;
        }
        // SAFETY: as in `write`.
        unsafe { (at as *mut T).write_unaligned(value) };
        Some(())
    }

    #[inline(always)]
    pub fn u16_at(&self, offset: usize) -> Option<u16> {
        self.read::<[u8; 2]>(offset).map(u16::from_be_bytes)
    }
}

/// `x`, which LLVM can no longer see through: what it knew about `x`
/// (a bound, or that it equals another value) is forgotten, so a check of
/// the result stays where it is and is made on the register that is used.
#[inline(always)]
pub fn opaque(mut x: usize) -> usize {
    // SAFETY: one move of `x` to itself. A real instruction, not an empty
    // block: the line information of an empty one would share its
    // instruction with the next statement's, which the kernel refuses.
    unsafe {
        core::arch::asm!("{0} = {0}", inout(reg) x, options(nomem, nostack, preserves_flags))
    };
    x
}
