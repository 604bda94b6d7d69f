//! Capabilities the daemon needs only while it starts: dropped once used,
//! so the running daemon cannot craft packets.

use std::io;

/// `CAP_NET_RAW` (linux/capability.h): opening the RST sockets.
const CAP_NET_RAW: u32 = 13;
/// `_LINUX_CAPABILITY_VERSION_3`: two 32-bit words per set.
const VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct Header {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct Data {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// Drops `CAP_NET_RAW` from this thread's ambient, effective, permitted and
/// inheritable sets; the raw sockets already open stay usable (the check
/// is made when a socket is created). Called before any other thread runs,
/// so every later thread inherits the sets.
pub fn drop_net_raw() -> io::Result<()> {
    let check = |rc: libc::c_long| {
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    };
    let mut header = Header {
        version: VERSION_3,
        pid: 0,
    };
    let mut data = [Data::default(); 2];
    // SAFETY: plain syscalls with a header and two data words of the
    // layout version 3 defines, all owned here.
    unsafe {
        check(libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_LOWER,
            CAP_NET_RAW as libc::c_ulong,
            0,
            0,
        ) as libc::c_long)?;
        check(libc::syscall(
            libc::SYS_capget,
            &mut header as *mut Header,
            data.as_mut_ptr(),
        ))?;
        let keep = !(1u32 << CAP_NET_RAW);
        data[0].effective &= keep;
        data[0].permitted &= keep;
        data[0].inheritable &= keep;
        check(libc::syscall(
            libc::SYS_capset,
            &mut header as *mut Header,
            data.as_ptr(),
        ))
    }
}
