//! Packets sent as crafted, from inside a namespace: IP packets through an
//! `IPPROTO_RAW` socket (the kernel routes them and resolves the next hop,
//! but sends the header as written, fragment fields included, and never
//! fragments them itself), and whole Ethernet frames (VLAN tags in the
//! frame, not offloaded) through an `AF_PACKET` socket bound to a device.

use std::{
    net::{IpAddr, SocketAddr},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

use anyhow::{Context, Result, bail};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use crate::{Netns, is_lab_address};

/// A raw IP socket in a namespace, for one address family.
pub struct RawIp {
    socket: Socket,
}

impl RawIp {
    pub fn new(ns: &Netns, v6: bool) -> Result<Self> {
        let domain = if v6 { Domain::IPV6 } else { Domain::IPV4 };
        // IPPROTO_RAW implies IP_HDRINCL (IPV6_HDRINCL): the header is ours.
        let socket = ns
            .run(move || Socket::new(domain, Type::RAW, Some(Protocol::from(libc::IPPROTO_RAW))))?
            .context("opening a raw IP socket (needs root)")?;
        Ok(Self { socket })
    }

    /// Sends `packet` (an IP header and what follows) toward `dst`, the
    /// packet's destination. Over IPv4 the kernel fills in the header
    /// checksum and the total length.
    pub fn send(&self, packet: &[u8], dst: IpAddr) -> Result<()> {
        if !is_lab_address(dst) {
            bail!("{dst} is not a lab address");
        }
        // The port of a raw socket's address is the protocol: 0, the header is ours.
        let to = SockAddr::from(SocketAddr::new(dst, 0));
        self.socket
            .send_to(packet, &to)
            .with_context(|| format!("sending {} bytes to {dst}", packet.len()))?;
        Ok(())
    }
}

/// An `AF_PACKET` socket bound to one device of a namespace.
pub struct RawEthernet {
    fd: OwnedFd,
    ifindex: i32,
}

impl RawEthernet {
    pub fn new(ns: &Netns, dev: &str) -> Result<Self> {
        let ifindex = ifindex(ns, dev)? as i32;
        let fd = ns
            .run(|| {
                // SAFETY: a plain syscall; the fd is owned at once.
                unsafe {
                    let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
                    if fd < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(OwnedFd::from_raw_fd(fd))
                }
            })?
            .with_context(|| format!("opening a packet socket on {dev} in {}", ns.name))?;
        Ok(Self { fd, ifindex })
    }

    /// Sends `frame` (from its Ethernet header on) out of the device as is.
    pub fn send(&self, frame: &[u8]) -> Result<()> {
        // SAFETY: an all-zero sockaddr_ll is valid; the fields set below are
        // the ones sendto reads for SOCK_RAW.
        let mut to: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        to.sll_family = libc::AF_PACKET as u16;
        to.sll_ifindex = self.ifindex;
        to.sll_halen = 6;
        to.sll_addr[..6].copy_from_slice(&frame[..6]);
        // SAFETY: the buffer and the address are valid for their lengths.
        let sent = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&to as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if sent < 0 {
            return Err(std::io::Error::last_os_error()).context("sending a frame");
        }
        Ok(())
    }
}

/// The interface index of `dev` in `ns`.
pub fn ifindex(ns: &Netns, dev: &str) -> Result<u32> {
    let name = std::ffi::CString::new(dev)?;
    // SAFETY: a NUL-terminated name; the call only reads it.
    let index = ns.run(move || unsafe { libc::if_nametoindex(name.as_ptr()) })?;
    if index == 0 {
        bail!("no device {dev} in {}", ns.name);
    }
    Ok(index)
}

/// The MAC address of `dev` in `ns`.
pub fn mac(ns: &Netns, dev: &str) -> Result<[u8; 6]> {
    let out = ns
        .command("ip")
        .args(["-o", "link", "show", "dev", dev])
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let hex = text
        .split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .with_context(|| format!("no MAC address for {dev} in {}: {text}", ns.name))?;
    let mut mac = [0u8; 6];
    for (byte, part) in mac.iter_mut().zip(hex.split(':')) {
        *byte = u8::from_str_radix(part, 16)?;
    }
    Ok(mac)
}
