//! A private Exim (Debian's binary, unpacked by `cargo xtask setup` into
//! `inspector_lab::exim::DIR`), run with configurations of its own:
//!
//! - as a server in a namespace, listening on one address, offering
//!   PIPELINING and CHUNKING, accepting every recipient of every domain
//!   and keeping the messages in its spool (`queue_only`): its mainlog's
//!   `<=` lines are the transactions it executed;
//! - as a client (`exim -odf`), delivering one message by SMTP (with
//!   CHUNKING when offered) to a given address.
//!
//! Exim insists that a `-C` file is owned by root and re-executes itself,
//! so each configuration names the binary (`exim_path`), keeps no
//! environment, and has its own spool and log directories, owned by the
//! Debian-exim user the package is built for.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    process::{Command, Output},
};

use inspector_lab::Netns;

use super::Envelope;

pub struct Exim {
    dir: PathBuf,
    pid: Option<i32>,
}

/// The binary, or a clear failure when setup has not run.
pub fn binary() -> PathBuf {
    let bin = inspector_lab::exim::binary();
    assert!(
        bin.is_file(),
        "{} is missing: run `cargo xtask setup` (it unpacks Exim privately)",
        bin.display()
    );
    bin
}

/// The settings every configuration shares, for the instance in `dir`.
fn common(dir: &Path, hostname: &str) -> String {
    let d = dir.display();
    format!(
        "exim_path = {exim}
keep_environment =
spool_directory = {d}/spool
log_file_path = {d}/log/%slog
primary_hostname = {hostname}
qualify_domain = {hostname}
host_lookup =
rfc1413_hosts =
split_spool_directory = false
",
        exim = binary().display()
    )
}

/// `dir` with the directories an instance writes, owned by Debian-exim,
/// and the configuration file (root's, as Exim insists).
fn prepare(dir: &Path, config: &str) -> PathBuf {
    for sub in ["spool", "log"] {
        std::fs::create_dir_all(dir.join(sub)).unwrap();
    }
    let status = Command::new("chown")
        .arg("-R")
        .arg(inspector_lab::exim::USER)
        .arg(dir.join("spool"))
        .arg(dir.join("log"))
        .status()
        .unwrap();
    assert!(status.success(), "no {} user", inspector_lab::exim::USER);
    let conf = dir.join("exim.conf");
    std::fs::write(&conf, config).unwrap();
    conf
}

impl Exim {
    /// A server on `addr` port 25 in `ns`, with its files in `dir`.
    pub fn server(ns: &Netns, dir: &Path, addr: IpAddr) -> Self {
        let listen = match addr {
            IpAddr::V4(a) => a.to_string(),
            IpAddr::V6(a) => format!("<; {a}"),
        };
        let config = format!(
            "{common}log_selector = +received_recipients +smtp_protocol_error +smtp_syntax_error +smtp_connection
daemon_smtp_ports = 25
local_interfaces = {listen}
chunking_advertise_hosts = *
pipelining_advertise_hosts = *
pipelining_connect_advertise_hosts =
tls_advertise_hosts =
message_size_limit = 0
smtp_accept_max = 200
smtp_accept_max_per_host = 200
queue_only = true
acl_smtp_rcpt = accept
acl_smtp_data = accept

begin routers
keep:
  driver = accept
  transport = keep

begin transports
keep:
  driver = appendfile
  file = /dev/null
  user = {user}
",
            common = common(dir, "server.test"),
            user = inspector_lab::exim::USER,
        );
        let conf = prepare(dir, &config);
        let pidfile = dir.join("exim.pid");
        let out = ns
            .command(binary())
            .arg("-C")
            .arg(&conf)
            .args(["-bd", "-oP"])
            .arg(&pidfile)
            .output()
            .unwrap();
        let mut exim = Self {
            dir: dir.to_path_buf(),
            pid: None,
        };
        assert!(
            out.status.success(),
            "exim -bd failed: {}{}",
            String::from_utf8_lossy(&out.stderr),
            exim.log()
        );
        let listening = ns.wait_listening(&match addr {
            IpAddr::V4(a) => format!("{a}:25"),
            IpAddr::V6(a) => format!("[{a}]:25"),
        });
        exim.pid = std::fs::read_to_string(&pidfile)
            .ok()
            .and_then(|p| p.trim().parse().ok());
        if let Err(e) = listening {
            panic!("{e:#}: {}", exim.log());
        }
        exim
    }

    /// The mainlog (and the paniclog, if any).
    pub fn log(&self) -> String {
        let read =
            |name| std::fs::read_to_string(self.dir.join("log").join(name)).unwrap_or_default();
        format!("{}{}", read("mainlog"), read("paniclog"))
    }

    /// The messages accepted so far, from the mainlog's `<=` lines
    /// (`… <= SENDER H=… for RCPT RCPT`).
    pub fn received(&self) -> Vec<Envelope> {
        self.log()
            .lines()
            .filter_map(|l| {
                let (_, rest) = l.split_once(" <= ")?;
                let sender = rest.split_whitespace().next()?;
                let (_, rcpts) = rest.rsplit_once(" for ")?;
                Some(Envelope {
                    sender: if sender == "<>" {
                        String::new()
                    } else {
                        sender.to_string()
                    },
                    rcpts: rcpts.split_whitespace().map(str::to_string).collect(),
                })
            })
            .collect()
    }

    /// Exim as a client: delivers `message` from `sender` to `rcpts` by
    /// SMTP to `server` port 25, in the foreground (`-odf`), trying
    /// CHUNKING and PIPELINING; `dir` holds the client's own spool and log.
    /// Returns its output and its mainlog.
    pub fn send(
        ns: &Netns,
        dir: &Path,
        server: IpAddr,
        sender: &str,
        rcpts: &[&str],
        message: &[u8],
    ) -> (Output, String) {
        let config = format!(
            "{common}
begin routers
out:
  driver = manualroute
  route_list = * {server}
  transport = out

begin transports
out:
  driver = smtp
  port = 25
  hosts_try_chunking = *
  hosts_avoid_tls = *
",
            common = common(dir, "client.test"),
        );
        let conf = prepare(dir, &config);
        let msg = dir.join("message");
        std::fs::write(&msg, message).unwrap();
        let out = ns
            .command(binary())
            .arg("-C")
            .arg(&conf)
            .args(["-odf", "-f", sender])
            .args(rcpts)
            .stdin(std::fs::File::open(&msg).unwrap())
            .output()
            .unwrap();
        let log = std::fs::read_to_string(dir.join("log/mainlog")).unwrap_or_default();
        (out, log)
    }
}

impl Drop for Exim {
    fn drop(&mut self) {
        if let Some(pid) = self.pid
            && std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim() == "exim4")
        {
            // SAFETY: kill on the pid of this instance's daemon, checked above.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
    }
}
