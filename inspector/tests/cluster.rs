//! Many gateways behind a BGP/ECMP router (the cluster lab,
//! `inspector_lab::cluster`): each gateway announces the service prefix
//! only while `inspector status` says ready. Needs root, BIRD and
//! Postfix's smtp-sink; fails, never skips, without them.

mod support;

use std::{
    collections::HashMap,
    io::{BufRead, BufReader, Write},
    net::{SocketAddr, TcpStream},
    path::Path,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use inspector_lab::{
    OUTSIDE, SERVER_V4, ScopedChild,
    cluster::Cluster,
    inspector::{Scratch, start_proxy},
};
use support::{PinDir, inspector_bin, proxy::find, wait_until};

/// How often each gateway checks its inspector, and how long one check may
/// take (deploy/bird/inspector-announce's defaults for the latter).
const CHECK_EVERY: Duration = Duration::from_millis(500);
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);
/// Sessions at once from the client.
const WORKERS: usize = 8;

// Dropped in this order: the readiness loops, the daemons, the server,
// the maps, the namespaces, the files.
struct Running {
    announcers: Vec<ScopedChild>,
    daemons: Vec<Option<ScopedChild>>,
    _sink: ScopedChild,
    pins: Vec<PinDir>,
    cluster: Cluster,
    files: Scratch,
}

impl Running {
    fn start(name: &str, members: usize) -> Self {
        Self::start_with(name, members, "")
    }

    /// With one policy file for every member: policies/cluster.toml,
    /// `extra`, and the lab's `[cluster]` table (the members' addresses).
    fn start_with(name: &str, members: usize, extra: &str) -> Self {
        let prefix = format!("cl{}-{name}", std::process::id());
        let cluster = Cluster::create(&prefix, members).expect("building the cluster lab");
        let files = Scratch::new(std::env::temp_dir().join(format!("{prefix}-files"))).unwrap();
        let mail = files.path().join("mail");
        std::fs::create_dir_all(&mail).unwrap();
        // smtp-sink drops privileges to `nobody` and writes its dumps here.
        std::process::Command::new("chmod")
            .arg("777")
            .arg(&mail)
            .status()
            .unwrap();
        let mut cmd = cluster.server.command("smtp-sink");
        cmd.args(["-u", "nobody", "-d"])
            .arg(mail.join("m"))
            .args(["0.0.0.0:25", "256"]);
        let sink = cluster.server.spawn(&mut cmd).expect("starting smtp-sink");
        cluster.server.wait_listening("0.0.0.0:25").unwrap();
        let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies/cluster.toml");
        let base = std::fs::read_to_string(base).unwrap();
        let policy = files.path().join("policy.toml");
        let table = cluster.cluster_table();
        std::fs::write(&policy, format!("{base}\n{extra}\n{table}")).unwrap();
        let mut running = Self {
            files,
            _sink: sink,
            daemons: Vec::new(),
            announcers: Vec::new(),
            pins: Vec::new(),
            cluster,
        };
        for i in 0..members {
            let m = &running.cluster.members[i];
            let pins = PinDir::new(&format!("{name}-gw{}", m.index));
            let log = running.files.path().join(format!("gw{}.log", m.index));
            let args = [
                "--iface".as_ref(),
                OUTSIDE.as_ref(),
                "--policy".as_ref(),
                policy.as_os_str(),
            ];
            let daemon = start_proxy(&m.ns, Path::new(inspector_bin()), pins.path(), &args, &log)
                .expect("starting the inspector");
            let announce_log = running
                .files
                .path()
                .join(format!("announce-gw{}.log", m.index));
            let announcer = m
                .announce_while_ready(
                    Path::new(inspector_bin()),
                    pins.path(),
                    CHECK_EVERY,
                    &announce_log,
                )
                .unwrap();
            running.daemons.push(Some(daemon));
            running.announcers.push(announcer);
            running.pins.push(pins);
        }
        let everyone = (1..=members).collect::<Vec<_>>();
        assert!(
            wait_until(Duration::from_secs(60), || running
                .cluster
                .routed_members()
                .is_ok_and(|r| r == everyone)),
            "not every gateway was announced: {:?}\n{}",
            running.cluster.routed_members(),
            running
                .cluster
                .router_birdc(&["show", "route"])
                .unwrap_or_default()
        );
        running
    }

    /// Each stored message's id, with the member that relayed it (by the
    /// address smtp-sink saw) or None (forwarded uninspected: the client's).
    fn stored(&self) -> Vec<(usize, Option<usize>)> {
        std::fs::read_dir(self.files.path().join("mail"))
            .unwrap()
            .map(|e| {
                let raw = std::fs::read(e.unwrap().path()).unwrap();
                let text = String::from_utf8_lossy(&raw);
                let field = |name: &str| {
                    let at = find(&raw, name.as_bytes()).expect("a smtp-sink dump") + name.len();
                    text[at..].lines().next().unwrap().trim().to_string()
                };
                let id = field("X-Id: ").parse().unwrap();
                let client = field("X-Client-Addr: ").parse().unwrap();
                (id, self.cluster.member_at(client))
            })
            .collect()
    }
}

/// One reply, its continuation lines skipped: its last line.
fn reply(r: &mut BufReader<TcpStream>) -> std::io::Result<String> {
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        if line.as_bytes().get(3) != Some(&b'-') {
            return Ok(line);
        }
    }
}

/// One SMTP session with one message `X-Id: ID`; whether the server's
/// reply to its end of data was a 250 (the message acknowledged).
fn send_one(id: usize) -> bool {
    let session = || -> std::io::Result<bool> {
        let addr = SocketAddr::new(SERVER_V4.into(), 25);
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        stream.set_read_timeout(Some(Duration::from_secs(15)))?;
        let mut w = stream.try_clone()?;
        let mut r = BufReader::new(stream);
        if !reply(&mut r)?.starts_with("220") {
            return Ok(false);
        }
        let mut step = |send: &str, want: &str| -> std::io::Result<bool> {
            w.write_all(send.as_bytes())?;
            Ok(reply(&mut r)?.starts_with(want))
        };
        let message = format!("X-Id: {id}\r\nSubject: message {id}\r\n\r\nbody of {id}\r\n.\r\n");
        let ok = step("EHLO client.test\r\n", "250")?
            && step("MAIL FROM:<a@client.test>\r\n", "250")?
            && step("RCPT TO:<b@server.test>\r\n", "250")?
            && step("DATA\r\n", "354")?
            && step(&message, "250")?;
        let _ = step("QUIT\r\n", "221");
        Ok(ok)
    };
    session().unwrap_or(false)
}

/// Sends messages from `WORKERS` sessions at once until `stop`; returns
/// each message's id and whether it was acknowledged.
fn load(
    cluster: &Cluster,
    next: &AtomicUsize,
    stop: &AtomicBool,
    acked: &Mutex<Vec<(usize, bool)>>,
) {
    std::thread::scope(|s| {
        for _ in 0..WORKERS {
            s.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    let id = next.fetch_add(1, Ordering::Relaxed);
                    let ok = cluster.client.run(move || send_one(id)).unwrap();
                    acked.lock().unwrap().push((id, ok));
                }
            });
        }
    });
}

#[test]
fn a_killed_or_stopped_gateway_is_withdrawn_and_no_acknowledged_message_is_lost_or_duplicated() {
    let mut r = Running::start("failover", 2);
    let next = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let sent = Arc::new(Mutex::new(Vec::new()));
    let acked_count = || sent.lock().unwrap().iter().filter(|(_, ok)| *ok).count();
    let (withdrawn_after, killed_at_id) = std::thread::scope(|s| {
        s.spawn(|| load(&r.cluster, &next, &stop, &sent));
        assert!(
            wait_until(Duration::from_secs(60), || acked_count() >= 200),
            "the load did not get going: {} acknowledged",
            acked_count()
        );
        // SIGKILL: nothing of a clean stop happens.
        let mut daemon = r.daemons[0].take().unwrap();
        let pid = daemon.child().id();
        let killed_at_id = next.load(Ordering::Relaxed);
        let killed = Instant::now();
        daemon.child().kill().unwrap();
        daemon.child().wait().unwrap();
        inspector::daemon::lock::remove_leftovers_of(pid);
        let gone = wait_until(Duration::from_secs(30), || {
            r.cluster.routed_members().is_ok_and(|m| m == [2])
        });
        let withdrawn_after = killed.elapsed();
        assert!(gone, "gateway 1's route was not withdrawn");
        // The load goes on over gateway 2 alone.
        let before = acked_count();
        assert!(
            wait_until(Duration::from_secs(60), || acked_count() >= before + 200),
            "the load did not go on after the withdrawal"
        );
        stop.store(true, Ordering::Relaxed);
        (withdrawn_after, killed_at_id)
    });
    // The configured bound: one check interval, one check's timeout, and
    // BGP's update (immediate in BIRD).
    let bound = CHECK_EVERY + CHECK_TIMEOUT;
    eprintln!(
        "gateway 1 withdrawn {withdrawn_after:?} after its inspector was killed (bound {bound:?})"
    );
    assert!(
        withdrawn_after <= bound + Duration::from_secs(1),
        "withdrawn after {withdrawn_after:?}, the configured bound is {bound:?}"
    );

    let sent = sent.lock().unwrap().clone();
    let stored = r.stored();
    let mut copies: HashMap<usize, usize> = HashMap::new();
    for (id, _) in &stored {
        *copies.entry(*id).or_default() += 1;
    }
    let duplicated: Vec<_> = copies.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        duplicated.is_empty(),
        "stored more than once: {duplicated:?}"
    );
    let lost: Vec<usize> = sent
        .iter()
        .filter(|(id, ok)| *ok && !copies.contains_key(id))
        .map(|(id, _)| *id)
        .collect();
    assert!(lost.is_empty(), "acknowledged but not stored: {lost:?}");

    // ECMP spread the sessions before the kill; the hash's imbalance:
    let by_member = |id_range: &dyn Fn(usize) -> bool, member| {
        stored
            .iter()
            .filter(|(id, m)| id_range(*id) && *m == Some(member))
            .count()
    };
    let before_kill = |id| id < killed_at_id;
    let (one, two) = (by_member(&before_kill, 1), by_member(&before_kill, 2));
    eprintln!("before the kill: gateway 1 relayed {one}, gateway 2 {two}");
    assert!(one > 0 && two > 0, "ECMP did not spread: {one} and {two}");
    // After the withdrawal (and the sessions under way at it), every new
    // session went to gateway 2 and was inspected there.
    let last: Vec<&(usize, Option<usize>)> = {
        let mut all: Vec<_> = stored.iter().collect();
        all.sort();
        all.into_iter().rev().take(100).collect()
    };
    assert!(
        last.iter().all(|(_, m)| *m == Some(2)),
        "the last 100 messages did not all go through gateway 2: {last:?}"
    );

    // A clean stop withdraws too (the daemon says `stopping`, then is gone).
    r.daemons[1].take().unwrap().terminate().unwrap();
    assert!(
        wait_until(Duration::from_secs(30), || r
            .cluster
            .routed_members()
            .is_ok_and(|m| m.is_empty())),
        "gateway 2's route stayed after its inspector stopped"
    );
}

/// The cluster's Prometheus configuration and recording rules load in
/// Prometheus (`promtool check config` checks the rule files it names too).
#[test]
fn prometheus_cluster_config_and_rules_load() {
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/prometheus/cluster.yml");
    let out = std::process::Command::new("promtool")
        .args(["check", "config"])
        .arg(&config)
        .output()
        .expect("running promtool (Debian's prometheus package; `cargo xtask setup` installs it)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool check config: {text}");
    assert!(text.contains("cluster-rules.yml"), "{text}");
}

/// `[cluster]` divides a server's connection limit across the members: the
/// kernel of each enforces its share, and the cluster as a whole admits the
/// policy's limit, however the router's hash spreads the connections.
/// Both members run the same policy file: each finds which member it is
/// by its own address in `members`, at start and again on reload.
#[test]
fn a_server_limit_is_divided_across_members_and_holds_in_total() {
    const LIMIT: u32 = 11;
    const ATTEMPTS: usize = 30;
    let server = format!("[[server]]\naddress = \"{SERVER_V4}\"\nmax-conns = {LIMIT}\n");
    let r = Running::start_with("limits", 2, &server);
    let limit_of = |i: usize| {
        let out = support::cli_ok(r.pins[i - 1].path(), &["stats", "--json"]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        v["limits"]["servers"][0]["max-conns"].as_u64().unwrap()
    };
    assert_eq!((limit_of(1), limit_of(2)), (6, 5));
    for i in 1..=2 {
        support::cli_ok(r.pins[i - 1].path(), &["reload"]);
    }
    assert_eq!((limit_of(1), limit_of(2)), (6, 5), "after a reload");

    // Connections held open, one after another, each a new source port:
    // the router hashes each to a member.
    let mut held = Vec::new();
    let mut first_refusal = None;
    for n in 0..ATTEMPTS {
        let c = r
            .cluster
            .client
            .tcp_connect(
                inspector_lab::CLIENT_V4.into(),
                SocketAddr::new(SERVER_V4.into(), 25),
                Duration::from_secs(1),
            )
            .unwrap();
        match c {
            Ok(stream) => held.push(stream),
            Err(_) => {
                first_refusal.get_or_insert(n);
            }
        }
    }
    eprintln!(
        "{} of {ATTEMPTS} admitted (limit {LIMIT}: 6 + 5); the first refused was attempt {:?}",
        held.len(),
        first_refusal
    );
    assert_eq!(held.len(), LIMIT as usize);
    for (i, share) in [(1, 6), (2, 5)] {
        let out = support::cli_ok(r.pins[i - 1].path(), &["stats", "--json"]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        let s = &v["limits"]["servers"][0];
        let conns = s["embryonic"].as_u64().unwrap() + s["established"].as_u64().unwrap();
        assert!(
            conns <= share,
            "member {i} holds {conns}, its share is {share}"
        );
    }
}

fn kubernetes_validate(manifest: &Path) -> std::process::Output {
    use inspector_lab::kubernetes;
    std::process::Command::new(kubernetes::binary())
        .args(["--strict", "-k", kubernetes::API_VERSION])
        .arg(manifest)
        .output()
        .expect("running kubernetes-validate (`cargo xtask setup` installs it)")
}

/// deploy/kubernetes/daemonset.yaml is valid against the Kubernetes API's
/// schemas (strict: no unknown field), runs on the host network with the
/// systemd unit's capabilities, is ready on `inspector status`, and its
/// ConfigMap's policy is one the inspector accepts.
#[test]
fn the_daemonset_is_valid_and_matches_the_unit() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let manifest = root.join("deploy/kubernetes/daemonset.yaml");
    let out = kubernetes_validate(&manifest);
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{said}");
    assert_eq!(said.matches(" passed ").count(), 2, "{said}");

    // The validator refuses what the API would (so the pass above means it).
    let text = std::fs::read_to_string(&manifest).unwrap();
    let files =
        Scratch::new(std::env::temp_dir().join(format!("k8s-{}", std::process::id()))).unwrap();
    let broken = files.path().join("broken.yaml");
    std::fs::write(
        &broken,
        text.replace("hostNetwork: true", "hostNetwork: yes-please"),
    )
    .unwrap();
    assert!(!kubernetes_validate(&broken).status.success());

    assert!(text.contains("hostNetwork: true"));
    assert!(text.contains(r#"command: ["inspector", "status"]"#));
    let unit = std::fs::read_to_string(root.join("deploy/systemd/inspector.service")).unwrap();
    let caps: Vec<String> = unit
        .lines()
        .find_map(|l| l.strip_prefix("AmbientCapabilities="))
        .unwrap()
        .split_whitespace()
        .map(|c| format!("\"{}\"", c.trim_start_matches("CAP_")))
        .collect();
    assert!(
        text.contains(&format!("add: [{}]", caps.join(", "))),
        "the DaemonSet's capabilities are not the unit's {caps:?}"
    );

    // The ConfigMap's policy: the block under `policy.toml: |`.
    let policy: String = text
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("policy.toml: |"))
        .skip(1)
        .take_while(|l| l.starts_with("    ") || l.is_empty())
        .map(|l| format!("{}\n", l.trim_start()))
        .collect();
    assert!(policy.contains("[proxy]"), "{policy}");
    assert!(policy.contains("\n[cluster]\n"), "{policy}");
    assert!(policy.contains("\nmembers = [\""), "{policy}");
    let file = files.path().join("policy.toml");
    std::fs::write(&file, policy).unwrap();
    // One file for every node: each node is told by its address, or by
    // INSPECTOR_CLUSTER_MEMBER.
    let out = std::process::Command::new(inspector_bin())
        .args(["policy", "check"])
        .arg(&file)
        .env("INSPECTOR_CLUSTER_MEMBER", "2")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("cluster: on this host, member 2 of 2"),
        "{said}"
    );
}
