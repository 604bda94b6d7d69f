//! Live exemptions that survive a reboot: every `exempt add` is also
//! written to a state file (JSON, one per pin directory, under the state
//! directory, `/var/lib/inspector` by default), with its comment and
//! expiry. The daemon puts the file's rules back into the kernel at start
//! (a reboot or `unload` wiped the pinned maps), adopts live rules the
//! kernel has and the file lacks, and removes rules whose time is up.
//!
//! The file is changed under an flock of `FILE.lock` and replaced
//! atomically (written aside, then renamed), so the CLI and the daemon
//! never lose each other's changes.

use std::{
    fs::{self, File, OpenOptions},
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::{
    bpffs::DEFAULT_PIN_DIR,
    exempt::{ExemptTable, Origin},
};

/// Where live exemptions are kept by default.
pub use inspector_common::DEFAULT_STATE_DIR;

/// One live rule as saved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Saved {
    pub network: IpNet,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    /// Seconds since the Unix epoch.
    pub added: u64,
    /// Seconds since the Unix epoch; `None`: until `exempt del`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<u64>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Document {
    rules: Vec<Saved>,
}

pub struct Store {
    path: PathBuf,
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

impl Store {
    /// The state file of `pin_dir`: `exemptions.json` for the default pin
    /// directory, `exemptions-NAME.json` for another (tests, the lab), so
    /// deployments never share one.
    pub fn for_pin_dir(state_dir: &Path, pin_dir: &Path) -> Self {
        let name = if pin_dir == Path::new(DEFAULT_PIN_DIR) {
            "exemptions.json".to_string()
        } else {
            let base = pin_dir
                .file_name()
                .map_or("pins".into(), |n| n.to_string_lossy().into_owned());
            format!("exemptions-{base}.json")
        };
        Self {
            path: state_dir.join(name),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn lock(&self) -> Result<File> {
        if let Some(dir) = self.path.parent() {
            fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let lock = self.path.with_extension("json.lock");
        // Read-only when it exists: root's CLI and the daemon's user share it.
        let file = File::open(&lock)
            .or_else(|_| {
                OpenOptions::new()
                    .create(true)
                    .truncate(false)
                    .write(true)
                    .open(&lock)
            })
            .with_context(|| format!("opening {}", lock.display()))?;
        // SAFETY: flock on a descriptor we own; released when it closes.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("locking {}", lock.display()));
        }
        Ok(file)
    }

    fn read(&self) -> Result<Document> {
        match fs::read_to_string(&self.path) {
            Ok(text) => serde_json::from_str(&text)
                .with_context(|| format!("reading {}", self.path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Document::default()),
            Err(e) => Err(e).with_context(|| format!("reading {}", self.path.display())),
        }
    }

    fn write(&self, doc: &Document) -> Result<()> {
        let tmp = self.path.with_extension("json.tmp");
        fs::write(&tmp, serde_json::to_string_pretty(doc)? + "\n")
            .with_context(|| format!("writing {}", tmp.display()))?;
        fs::rename(&tmp, &self.path).with_context(|| format!("writing {}", self.path.display()))
    }

    /// Changes the file under its lock.
    fn update<T>(&self, f: impl FnOnce(&mut Document) -> T) -> Result<T> {
        let _lock = self.lock()?;
        let mut doc = self.read()?;
        let out = f(&mut doc);
        self.write(&doc)?;
        Ok(out)
    }

    /// The saved rules (none when there is no file).
    pub fn rules(&self) -> Result<Vec<Saved>> {
        Ok(self.read()?.rules)
    }

    /// Saves a live rule (replacing one for the same network).
    pub fn add(
        &self,
        network: IpNet,
        comment: Option<String>,
        lasts: Option<Duration>,
    ) -> Result<Saved> {
        let now = now();
        let saved = Saved {
            network,
            comment,
            added: now,
            expires: lasts.map(|d| now + d.as_secs().max(1)),
        };
        self.update(|doc| {
            doc.rules.retain(|r| r.network != network);
            doc.rules.push(saved.clone());
        })?;
        Ok(saved)
    }

    /// Forgets a rule; whether it was saved.
    pub fn remove(&self, network: &IpNet) -> Result<bool> {
        if !self.path.exists() {
            return Ok(false);
        }
        self.update(|doc| {
            let before = doc.rules.len();
            doc.rules.retain(|r| r.network != *network);
            doc.rules.len() != before
        })
    }

    /// At the daemon's start: the saved rules that have not expired go
    /// (back) into `table` as live rules; live rules the table has and the
    /// file lacks are saved; expired ones go from both. Returns how many
    /// were restored.
    pub fn restore(&self, table: &mut ExemptTable) -> Result<usize> {
        let now = now();
        let live: Vec<IpNet> = table
            .list()?
            .into_iter()
            .filter(|r| r.origin == Origin::Live)
            .map(|r| r.network)
            .collect();
        let (keep, expired): (Vec<Saved>, Vec<Saved>) = self
            .rules()?
            .into_iter()
            .partition(|r| r.expires.is_none_or(|t| t > now));
        let mut restored = 0;
        for rule in &keep {
            if table.add(&rule.network, Origin::Live)? {
                restored += 1;
            }
        }
        for rule in &expired {
            if live.contains(&rule.network) {
                table.remove(&rule.network)?;
            }
        }
        let adopted: Vec<IpNet> = live
            .into_iter()
            .filter(|n| !keep.iter().chain(&expired).any(|r| r.network == *n))
            .collect();
        if !expired.is_empty() || !adopted.is_empty() {
            self.update(|doc| {
                doc.rules.retain(|r| r.expires.is_none_or(|t| t > now));
                for network in adopted {
                    doc.rules.push(Saved {
                        network,
                        comment: None,
                        added: now,
                        expires: None,
                    });
                }
            })?;
        }
        Ok(restored)
    }

    /// Removes the rules whose time is up, from the file and the kernel;
    /// returns them.
    pub fn expire(&self, table: &mut ExemptTable) -> Result<Vec<IpNet>> {
        let now = now();
        let due = |r: &Saved| r.expires.is_some_and(|t| t <= now);
        if !self.rules()?.iter().any(due) {
            return Ok(Vec::new());
        }
        let gone = self.update(|doc| {
            let gone: Vec<IpNet> = doc
                .rules
                .iter()
                .filter(|r| due(r))
                .map(|r| r.network)
                .collect();
            doc.rules.retain(|r| !due(r));
            gone
        })?;
        for network in &gone {
            table.remove(network)?;
        }
        Ok(gone)
    }
}

/// `90s`, `30m`, `2h`, `1d`, or plain seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (digits, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("`{text}`: expected a duration such as 90s, 30m, 2h or 1d"))?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => return Err(format!("`{text}`: the unit is s, m, h or d")),
    };
    if secs == 0 {
        return Err(format!("`{text}`: must be at least one second"));
    }
    Ok(Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1d"), Ok(Duration::from_secs(86_400)));
        assert!(parse_duration("2w").is_err());
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("h").is_err());
    }

    #[test]
    fn files_per_pin_dir() {
        let s = Store::for_pin_dir(Path::new("/var/lib/inspector"), Path::new(DEFAULT_PIN_DIR));
        assert_eq!(s.path(), Path::new("/var/lib/inspector/exemptions.json"));
        let s = Store::for_pin_dir(Path::new("/s"), Path::new("/sys/fs/bpf/inspector-lab"));
        assert_eq!(s.path(), Path::new("/s/exemptions-inspector-lab.json"));
    }

    #[test]
    fn saves_replaces_and_removes() {
        let dir = std::env::temp_dir().join(format!("inspector-store-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let s = Store::for_pin_dir(&dir, Path::new(DEFAULT_PIN_DIR));
        let net: IpNet = "198.18.1.25/32".parse().unwrap();
        s.add(net, Some("esa".into()), None).unwrap();
        s.add(
            net,
            Some("esa, again".into()),
            Some(Duration::from_secs(60)),
        )
        .unwrap();
        let rules = s.rules().unwrap();
        assert_eq!(rules.len(), 1);
        assert_eq!(rules[0].comment.as_deref(), Some("esa, again"));
        assert!(rules[0].expires.unwrap() > now());
        assert!(s.remove(&net).unwrap());
        assert!(s.rules().unwrap().is_empty());
        fs::remove_dir_all(&dir).unwrap();
    }
}
