//! One named network namespace: run commands in it, run Rust code in it,
//! and start processes that are killed when their guard drops.

use std::{
    fs::File,
    net::IpAddr,
    os::fd::AsRawFd,
    path::PathBuf,
    process::{Child, Command, Stdio},
};

use anyhow::{Context, Result, bail};

use crate::run;

/// Where `ip netns` keeps the namespaces' bind mounts.
pub(crate) const NETNS_DIR: &str = "/run/netns";

pub struct Netns {
    pub name: String,
}

impl Netns {
    pub(crate) fn new(name: String) -> Self {
        Self { name }
    }

    /// The namespace's bind mount, for `nsenter --net=` and setns(2).
    pub fn path(&self) -> PathBuf {
        PathBuf::from(NETNS_DIR).join(&self.name)
    }

    /// A command that runs in this network namespace only. Unlike
    /// `ip netns exec` it keeps the caller's mount namespace, so the process
    /// sees the same bpffs (pinned maps) as everything else.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", self.path().display()))
            .arg("--")
            .arg(program);
        cmd
    }

    /// Runs `ip ARGS` in this namespace, through [`Self::command`]: `ip -n`
    /// would mount a /sys of its own, where a program pinned in bpffs
    /// (`xdpdrv pinned PATH`) cannot be found.
    pub fn ip(&self, args: &[&str]) -> Result<()> {
        run(self.command("ip").args(args))
    }

    pub(crate) fn addr(&self, dev: &str, addrs: &[IpAddr], prefix: u8) -> Result<()> {
        for addr in addrs {
            let cidr = format!("{addr}/{prefix}");
            // nodad: IPv6 addresses are usable at once, not after DAD.
            let mut args = vec!["addr", "add", &cidr, "dev", dev];
            if addr.is_ipv6() {
                args.push("nodad");
            }
            self.ip(&args)?;
        }
        Ok(())
    }

    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        run(self
            .command("sh")
            .args(["-c", &format!("echo {value} > {path}")]))
    }

    /// Runs `f` on a thread that has joined this namespace, so sockets it
    /// opens live here.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T> {
        let file =
            File::open(self.path()).with_context(|| format!("opening namespace {}", self.name))?;
        std::thread::scope(|scope| {
            scope
                .spawn(move || {
                    // SAFETY: setns on a namespace fd we own affects only this thread.
                    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                        bail!("setns: {}", std::io::Error::last_os_error());
                    }
                    Ok(f())
                })
                .join()
                .map_err(|_| anyhow::anyhow!("thread in {} panicked", self.name))?
        })
    }

    /// Starts `cmd` (made by [`Self::command`]); it is killed when the
    /// returned guard drops.
    pub fn spawn(&self, cmd: &mut Command) -> Result<ScopedChild> {
        let child = cmd
            .stdin(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {cmd:?}"))?;
        Ok(ScopedChild(Some(child)))
    }

    pub(crate) fn delete(&self) {
        if self.path().exists() {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.name])
                .status();
        }
    }
}

/// A child process stopped on drop: SIGTERM, so it can clean up, then
/// SIGKILL if it has not exited within a grace period.
pub struct ScopedChild(Option<Child>);

// Generous: a daemon stopped mid-start first finishes verifying its
// programs, which takes seconds on a loaded machine.
const GRACE: std::time::Duration = std::time::Duration::from_secs(15);

impl ScopedChild {
    pub fn child(&mut self) -> &mut Child {
        self.0.as_mut().expect("child present until drop")
    }

    /// Sends SIGTERM and waits for the process to exit (SIGKILL after the
    /// grace period).
    pub fn terminate(mut self) -> Result<std::process::ExitStatus> {
        let child = self.0.take().expect("child present until drop");
        stop(child)
    }
}

fn stop(mut child: Child) -> Result<std::process::ExitStatus> {
    // SAFETY: kill on the pid of a child we have not reaped yet.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = std::time::Instant::now() + GRACE;
    while std::time::Instant::now() < deadline {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.kill()?;
    Ok(child.wait()?)
}

impl Drop for ScopedChild {
    fn drop(&mut self) {
        if let Some(child) = self.0.take() {
            let _ = stop(child);
        }
    }
}

impl Netns {
    /// Opens a TCP connection from `src` to `dst` inside this namespace and
    /// returns how it ended: `Ok` if accepted, the error (e.g. refused)
    /// otherwise. Either way one SYN has crossed the path.
    pub fn tcp_connect(
        &self,
        src: IpAddr,
        dst: std::net::SocketAddr,
        timeout: std::time::Duration,
    ) -> Result<std::io::Result<std::net::TcpStream>> {
        use socket2::{Domain, Socket, Type};
        self.run(move || {
            let socket = Socket::new(Domain::for_address(dst), Type::STREAM, None)?;
            socket.bind(&std::net::SocketAddr::new(src, 0).into())?;
            socket.connect_timeout(&dst.into(), timeout)?;
            Ok(socket.into())
        })
    }

    /// Listens on `addr` inside this namespace with a backlog of `backlog`.
    pub fn tcp_listen(
        &self,
        addr: std::net::SocketAddr,
        backlog: i32,
    ) -> Result<std::io::Result<std::net::TcpListener>> {
        use socket2::{Domain, Socket, Type};
        self.run(move || {
            let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
            socket.set_reuse_address(true)?;
            socket.bind(&addr.into())?;
            socket.listen(backlog)?;
            Ok(socket.into())
        })
    }
}

impl Netns {
    /// Waits up to 30 s until a TCP socket in this namespace listens on
    /// `addr` as `ss` shows it (`0.0.0.0:25`, `[::]:25`).
    pub fn wait_listening(&self, addr: &str) -> Result<()> {
        let port = addr.rsplit(':').next().unwrap_or_default();
        let listening = || {
            self.command("ss")
                .args(["-ltnH", &format!("sport = :{port}")])
                .output()
                .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).contains(addr))
        };
        if !crate::inspector::wait_until(std::time::Duration::from_secs(30), listening) {
            bail!("nothing listens on {addr} in {}", self.name);
        }
        Ok(())
    }
}
