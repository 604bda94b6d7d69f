//! A private Postfix instance in a network namespace: its own config,
//! queue and data directories under `dir`, delivering every recipient of
//! `server.test` to one maildir (`dir/mail/inbox/`), logging to
//! `dir/maillog` (Postfix's own log daemon). Stopped on drop.
//! Its queue tools run in its namespace (Postfix checks that
//! `inet_interfaces` are local addresses).

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use inspector_lab::Netns;

use super::Envelope;

pub struct Postfix {
    netns: PathBuf,
    dir: PathBuf,
}

const NOBODY: u32 = 65534;

impl Postfix {
    pub fn start(ns: &Netns, dir: &Path) -> Self {
        Self::start_with(ns, dir, "")
    }

    /// With `extra` lines appended to main.cf.
    pub fn start_with(ns: &Netns, dir: &Path, extra: &str) -> Self {
        Self::start_listening(ns, dir, "0.0.0.0:25", extra)
    }

    /// With `extra` lines appended to main.cf (a later line overrides an
    /// earlier one), once it listens on `listen` as `ss` shows it (the
    /// address `inet_interfaces` in `extra` gives).
    pub fn start_listening(ns: &Netns, dir: &Path, listen: &str, extra: &str) -> Self {
        let etc = dir.join("etc");
        for sub in ["etc", "queue", "data", "mail"] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
        }
        chown(&dir.join("data"), "postfix");
        // The map types Debian builds as plugins (postfix check needs these).
        let _ = std::fs::copy("/etc/postfix/dynamicmaps.cf", etc.join("dynamicmaps.cf"));
        let _ = Command::new("cp")
            .arg("-r")
            .arg("/etc/postfix/dynamicmaps.cf.d")
            .arg(&etc)
            .status();
        chown(&dir.join("mail"), "nobody");
        // Debian's services, without chroot (the queue is not a chroot jail).
        let master = std::fs::read_to_string("/etc/postfix/master.cf").expect("postfix installed");
        let master: String = master
            .lines()
            .map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                if !l.starts_with(|c: char| c.is_ascii_alphabetic()) || f.len() < 8 {
                    return format!("{l}\n");
                }
                let mut f = f;
                f[4] = "n";
                format!("{}\n", f.join(" "))
            })
            .collect();
        std::fs::write(etc.join("master.cf"), master).unwrap();
        let d = dir.display();
        std::fs::write(
            etc.join("main.cf"),
            format!(
                "compatibility_level = 3.6
queue_directory = {d}/queue
data_directory = {d}/data
mail_owner = postfix
setgid_group = postdrop
inet_interfaces = all
inet_protocols = all
myhostname = server.test
mydestination =
mynetworks = 198.18.0.0/15, 127.0.0.0/8, [2001:2::]/48
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
virtual_mailbox_domains = server.test
virtual_mailbox_base = {d}/mail
virtual_mailbox_maps = static:inbox/
virtual_uid_maps = static:{NOBODY}
virtual_gid_maps = static:{NOBODY}
virtual_minimum_uid = 100
message_size_limit = 0
virtual_mailbox_limit = 0
biff = no
# No DNS in the namespaces: no reverse lookup of each client.
smtpd_peername_lookup = no
maillog_file = {d}/maillog
maillog_file_prefixes = {d}
{extra}
"
            ),
        )
        .unwrap();
        let pf = Self {
            netns: ns.path(),
            dir: dir.to_path_buf(),
        };
        let out = ns
            .command("postfix")
            .arg("-c")
            .arg(&etc)
            .arg("start")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "postfix start failed: {}{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            pf.log()
        );
        if let Err(e) = ns.wait_listening(listen) {
            panic!("postfix not listening ({e}): {}", pf.log());
        }
        pf
    }

    /// The queue (what is not delivered yet), for failure messages. (No
    /// log file: Postfix's `maillog_file` needs its log daemon, which is
    /// not up before `postfix start` returns.)
    pub fn log(&self) -> String {
        let out = self.tool("postqueue").arg("-p").output();
        out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    }

    /// Postfix's log so far (`maillog_file`; its log daemon starts with
    /// the instance, so the first lines may take a moment).
    pub fn maillog(&self) -> String {
        std::fs::read_to_string(self.dir.join("maillog")).unwrap_or_default()
    }

    /// The envelope of every message in the queue (`postqueue -j`), held
    /// ones included: with `smtpd_end_of_data_restrictions =
    /// check_client_access static:HOLD` these are, at once and exactly,
    /// the transactions the server executed.
    pub fn queued(&self) -> Vec<Envelope> {
        let out = self.tool("postqueue").arg("-j").output().unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                Envelope {
                    sender: v["sender"].as_str().unwrap().to_string(),
                    rcpts: v["recipients"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|r| r["address"].as_str().unwrap().to_string())
                        .collect(),
                }
            })
            .collect()
    }

    /// A Postfix tool for this instance, in its namespace.
    fn tool(&self, program: &str) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", self.netns.display()))
            .arg("--")
            .arg(program)
            .arg("-c")
            .arg(self.dir.join("etc"));
        cmd
    }

    /// The messages delivered so far, raw.
    pub fn delivered(&self) -> Vec<Vec<u8>> {
        let new = self.dir.join("mail/inbox/new");
        let Ok(entries) = std::fs::read_dir(new) else {
            return Vec::new();
        };
        entries
            .flatten()
            .map(|e| std::fs::read(e.path()).unwrap())
            .collect()
    }
}

impl Drop for Postfix {
    fn drop(&mut self) {
        let _ = self.tool("postfix").arg("stop").status();
        // Whatever is left of the master (and its children) after stop.
        let pid = std::fs::read_to_string(self.dir.join("queue/pid/master.pid"))
            .ok()
            .and_then(|p| p.trim().parse::<i32>().ok());
        if let Some(pid) = pid
            && std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim() == "master")
        {
            // SAFETY: kill on the pid of this instance's master, checked above.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

fn chown(path: &Path, user: &str) {
    let status = Command::new("chown").arg(user).arg(path).status().unwrap();
    assert!(status.success());
}
