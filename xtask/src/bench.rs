//! `cargo xtask bench`: measures, prints a table and writes
//! `docs/benchmarks.md`. Every figure is a median over repeats and sits next
//! to a baseline measured side by side in the same run; the ratio is the
//! number to compare across machines. Needs root (BPF programs).

use std::{fmt::Write as _, process::Command};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::{cargo, workspace_root};

const REPEATS: u32 = 9;
const FLOOD_REPEATS: u32 = 5;
const FLOOD_SYNS: u32 = 200_000;
const SMTP_SESSIONS: u32 = 10_000;
const ATTACK_REPEATS: u32 = 5;
const CLUSTER_REPEATS: u32 = 5;
const COMMAND: &str = "cargo xtask bench";
/// The engine's profile, copied into the report (see `render`).
const ENGINE_PROFILE: &str = "docs/engine-profile.md";
/// The heading of the attack's section, which `--only attack` replaces.
const ATTACK_HEADING: &str = "## Legitimate mail during an attack";
/// The heading of the cluster's section, which `--only cluster` replaces.
const CLUSTER_HEADING: &str = "## Many gateways (the cluster lab)";
const GATEWAY_REPEATS: u32 = 5;
/// The heading of the gateway's section, which `--only gateway` replaces.
const GATEWAY_HEADING: &str = "## The gateway's cost under a SYN flood";
/// The headings of the SMTP bench's sections, which `--only smtp` replaces.
const SMTP_HEADING: &str = "## SMTP through the inspector";
const ENGINE_HEADING: &str = "## ESMTP engine, in process";
const MEMORY_HEADING: &str = "## Daemon memory per inspected session";

/// A part `cargo xtask bench --only PART` measures alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Part {
    Attack,
    Cluster,
    Engine,
    Gateway,
    Smtp,
}

/// Measures one part and replaces its sections of docs/benchmarks.md.
pub fn run_part(part: Part) -> Result<()> {
    type Render = fn(&mut String, &Value, Option<(&str, &str)>) -> Result<()>;
    let repeats = |n: u32| vec!["--repeats".to_string(), n.to_string()];
    let (name, args, headings, render): (&str, Vec<String>, &[&str], Render) = match part {
        Part::Attack => (
            "attack",
            repeats(ATTACK_REPEATS),
            &[ATTACK_HEADING],
            render_attack,
        ),
        Part::Gateway => (
            "gateway",
            repeats(GATEWAY_REPEATS),
            &[GATEWAY_HEADING],
            render_gateway,
        ),
        Part::Cluster => (
            "cluster",
            repeats(CLUSTER_REPEATS),
            &[CLUSTER_HEADING],
            render_cluster,
        ),
        Part::Smtp => (
            "smtp",
            smtp_args().to_vec(),
            &[SMTP_HEADING, MEMORY_HEADING],
            render_smtp,
        ),
        Part::Engine => ("engine", Vec::new(), &[ENGINE_HEADING], render_engine),
    };
    let figures = if part == Part::Engine {
        eprintln!("bench: ESMTP engine in process");
        engine()?
    } else {
        cargo(&["bench", "-p", "inspector", "--no-run", "--bench", name])?;
        eprintln!("bench: {name}");
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        bench(name, &args)?
    };
    let date = output(Command::new("date").args(["-u", "+%Y-%m-%d"]))?;
    let measured = Some((date.trim(), machine()));
    let measured = measured.as_ref().map(|(d, m)| (*d, m.as_str()));
    let mut section = String::new();
    render(&mut section, &figures, measured)?;
    println!("{section}");
    let path = workspace_root().join("docs/benchmarks.md");
    let mut text = std::fs::read_to_string(&path).unwrap_or_default();
    for (i, heading) in headings.iter().enumerate() {
        // Each heading's part of the rendered text, up to the next one.
        let from = section.find(heading).unwrap_or(0);
        let to = headings
            .get(i + 1)
            .and_then(|next| section.find(next))
            .unwrap_or(section.len());
        text = replace_section(&text, heading, &section[from..to]);
    }
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    eprintln!("bench: wrote its sections of {}", path.display());
    Ok(())
}

fn smtp_args() -> [String; 4] {
    [
        "--repeats".into(),
        REPEATS.to_string(),
        "--sessions".into(),
        SMTP_SESSIONS.to_string(),
    ]
}

/// Where a section measured apart from the rest of the report came from.
fn measured_note(w: &mut String, measured: Option<(&str, &str)>, part: &str) -> Result<()> {
    if let Some((date, machine)) = measured {
        writeln!(
            w,
            "Measured {date} on: {machine}, by `{COMMAND} --only {part}` (the rest of \
             this report by `{COMMAND}`, perhaps on another day).\n"
        )?;
    }
    Ok(())
}

/// `text` with the section under `heading` (up to the next `## ` heading
/// or the closing line of the report) replaced by `section`, or with
/// `section` added before the closing line.
fn replace_section(text: &str, heading: &str, section: &str) -> String {
    let closing = text.find("\nThis run of `").map_or(text.len(), |i| i + 1);
    let (start, end) = match text.find(&format!("\n{heading}\n")) {
        Some(at) => {
            let from = at + 1;
            let rest = &text[from + heading.len()..];
            // The next section, or the closing line if it comes first
            // (sections written after the report follow that line).
            let next = rest.find("\n## ").map(|i| from + heading.len() + i + 1);
            let closing = (closing > from).then_some(closing);
            let end = match (next, closing) {
                (Some(n), Some(c)) => n.min(c),
                (n, c) => n.or(c).unwrap_or(from),
            };
            (from, end)
        }
        None => (closing, closing),
    };
    let mut out = String::with_capacity(text.len() + section.len());
    out.push_str(&text[..start]);
    out.push_str(section.trim_start_matches('\n'));
    if !out.ends_with("\n\n") {
        out.push('\n');
    }
    out.push_str(&text[end..]);
    out
}

pub fn run() -> Result<()> {
    let started = std::time::Instant::now();
    let machine = machine();
    // Built first, with cargo's progress on the terminal; each run below
    // then only runs.
    cargo(&[
        "bench",
        "-p",
        "inspector",
        "--no-run",
        "--bench",
        "kernel",
        "--bench",
        "flood",
        "--bench",
        "smtp",
        "--bench",
        "attack",
        "--bench",
        "cluster",
        "--bench",
        "gateway",
    ])?;
    eprintln!("bench: kernel (BPF_PROG_TEST_RUN, map memory)");
    let kernel = bench("kernel", &["--repeats", &REPEATS.to_string()])?;
    eprintln!("bench: SYN flood on the lab, XDP vs nftables");
    let flood = bench(
        "flood",
        &[
            "--repeats",
            &FLOOD_REPEATS.to_string(),
            "--syns",
            &FLOOD_SYNS.to_string(),
        ],
    )?;
    eprintln!("bench: ESMTP engine in process");
    let engine = engine()?;
    eprintln!("bench: SMTP through the inspector vs direct, RSS per session");
    let smtp = bench("smtp", &smtp_args().each_ref().map(String::as_str))?;

    eprintln!("bench: legitimate mail during attacks");
    let attack = bench("attack", &["--repeats", &ATTACK_REPEATS.to_string()])?;
    eprintln!("bench: msgs/s through 1 and 2 gateways of the cluster lab");
    let cluster = bench("cluster", &["--repeats", &CLUSTER_REPEATS.to_string()])?;

    eprintln!("bench: the gateway's cost under a SYN flood");
    let gateway = bench("gateway", &["--repeats", &GATEWAY_REPEATS.to_string()])?;

    let date = output(Command::new("date").args(["-u", "+%Y-%m-%d"]))?;
    let mut report = render(&machine, date.trim(), &kernel, &flood, &engine, &smtp)?;
    render_attack(&mut report, &attack, None)?;
    render_cluster(&mut report, &cluster, None)?;
    render_gateway(&mut report, &gateway, None)?;
    writeln!(
        report,
        "\nThis run of `{COMMAND}` took {} s, builds included.",
        started.elapsed().as_secs()
    )?;
    println!("{report}");
    let path = workspace_root().join("docs/benchmarks.md");
    std::fs::write(&path, &report).with_context(|| format!("writing {}", path.display()))?;
    eprintln!("bench: wrote {}", path.display());
    Ok(())
}

fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("starting {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn json_of(cmd: &mut Command) -> Result<Value> {
    let text = output(cmd)?;
    serde_json::from_str(text.trim()).with_context(|| format!("parsing {text:?}"))
}

/// `cargo bench -p inspector --bench NAME -- ARGS`: the one JSON object
/// the bench prints.
fn bench(name: &str, args: &[&str]) -> Result<Value> {
    json_of(
        cargo_command()
            .args(["bench", "-p", "inspector", "--bench", name, "--"])
            .args(args),
    )
}

fn cargo_command() -> Command {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace_root());
    cmd
}

fn engine() -> Result<Value> {
    let text =
        output(cargo_command().args(["bench", "-p", "inspector-esmtp", "--bench", "engine"]))?;
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("json: "))
        .context("the engine bench printed no `json:` line")?;
    Ok(serde_json::from_str(line)?)
}

/// Kernel, distribution, CPU, cores and memory of this machine.
fn machine() -> String {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let os = read("/etc/os-release")
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .unwrap_or("unknown")
        .trim_matches('"')
        .to_string();
    let kernel = read("/proc/sys/kernel/osrelease").trim().to_string();
    let cpuinfo = read("/proc/cpuinfo");
    let cpu = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem_kib: u64 = read("/proc/meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
        .unwrap_or(0);
    format!(
        "{os}, Linux {kernel}, {cpu}, {cores} cores, {:.0} GiB",
        mem_kib as f64 / (1 << 20) as f64
    )
}

fn f(v: &Value, key: &str) -> Result<f64> {
    v[key]
        .as_f64()
        .with_context(|| format!("no number `{key}` in {v}"))
}

fn render(
    machine: &str,
    date: &str,
    kernel: &Value,
    flood: &Value,
    engine: &Value,
    smtp: &Value,
) -> Result<String> {
    let mut out = String::new();
    let w = &mut out;
    writeln!(w, "# Benchmarks\n")?;
    writeln!(
        w,
        "Written by `{COMMAND}` (needs root; installs what it needs through \
         `cargo xtask setup`). Timings on shared machines are noisy: each figure is \
         the median of repeated runs and sits next to a baseline measured side by \
         side in the same run; the ratio is the number to compare.\n"
    )?;
    writeln!(w, "Measured {date} on: {machine}.\n")?;

    writeln!(w, "## XDP classifier, per packet\n")?;
    let repeats = kernel["repeats"].as_u64().unwrap_or(0);
    let runs = kernel["runs_per_repeat"].as_u64().unwrap_or(0);
    writeln!(
        w,
        "`inspector_xdp` under `BPF_PROG_TEST_RUN` ({runs} runs per call, the kernel's \
         mean, which it reports in whole ns), alternating with an empty XDP program \
         (`inspector_xdp_empty`, `XDP_PASS` only) on the same frame; medians of \
         {repeats} calls each. The difference is what the classifier adds to a packet.\n"
    )?;
    writeln!(
        w,
        "| frame | bytes | classifier ns | empty program ns | added ns | classifier / empty |"
    )?;
    writeln!(w, "|---|---|---|---|---|---|")?;
    for row in kernel["xdp"].as_array().context("xdp rows")? {
        let (ours, base) = (f(row, "ns")?, f(row, "empty_ns")?);
        writeln!(
            w,
            "| {} | {} | {ours:.0} | {base:.0} | {:.0} | {:.1} |",
            row["workload"].as_str().unwrap_or("?"),
            row["bytes"],
            ours - base,
            ours / base.max(1.0)
        )?;
    }

    let m = &kernel["memory"];
    writeln!(w, "\n## Kernel memory\n")?;
    writeln!(
        w,
        "As the kernel accounts it (`memlock` in the maps' fdinfo). The flow table \
         and the fragment table are preallocated; the exemption tries grow with \
         their rules (measured by inserting {} rules of each version).\n",
        m["exempt_rules_inserted"]
    )?;
    writeln!(w, "| what | bytes |")?;
    writeln!(w, "|---|---|")?;
    writeln!(
        w,
        "| per flow-table entry ({} entries, {:.1} MiB in all) | {:.0} |",
        m["flow_table_entries"],
        f(m, "flow_table_bytes")? / (1 << 20) as f64,
        f(m, "flow_entry_bytes")?
    )?;
    writeln!(
        w,
        "| per fragment-table entry ({} entries, {:.1} MiB in all) | {:.0} |",
        m["fragment_table_entries"],
        f(m, "fragment_table_bytes")? / (1 << 20) as f64,
        f(m, "fragment_entry_bytes")?
    )?;
    writeln!(
        w,
        "| per IPv4 exemption rule | {:.0} |",
        f(m, "exempt_v4_rule_bytes")?
    )?;
    writeln!(
        w,
        "| per IPv6 exemption rule | {:.0} |",
        f(m, "exempt_v6_rule_bytes")?
    )?;

    writeln!(w, "\n## SYN flood on the lab\n")?;
    let (x, n) = (f(flood, "xdp_drops_per_s")?, f(flood, "nft_drops_per_s")?);
    writeln!(
        w,
        "Spoofed SYNs (one raw socket in the client namespace, {} per run) to a \
         server held at {} half-open connections, dropped on the gateway either by \
         our XDP limit (`max-embryonic = {}`, `on-embryonic-limit = \"drop\"`, native \
         XDP on the veth) or by the same limit in nftables (`ct state new ct count \
         over {}` on the forward hook); the two alternate, medians of {} runs each. \
         The sender is the same for both, so the rate is what the whole path \
         sustains on these cores: the cheaper the drop, the more of the CPU the \
         sender gets.\n",
        flood["syns"], flood["limit"], flood["limit"], flood["limit"], flood["repeats"]
    )?;
    writeln!(
        w,
        "| SYNs dropped per second | XDP limit | nftables `ct count` | XDP / nftables |"
    )?;
    writeln!(w, "|---|---|---|---|")?;
    writeln!(
        w,
        "| spoofed flood | {:.0} k/s | {:.0} k/s | {:.2} |",
        x / 1e3,
        n / 1e3,
        x / n
    )?;

    let sessions = &flood["sessions"];
    let (during, quiet) = (f(sessions, "flood_per_s")?, f(sessions, "quiet_per_s")?);
    writeln!(
        w,
        "\nWith TCP intercept instead (`on-embryonic-limit = \"intercept\"`, generic \
         XDP on both gateway interfaces), a real client completes SMTP sessions \
         (connect, greeting, `QUIT`) one after another with Postfix's `smtp-sink` \
         for {} s at a time, alternately during a steady spoofed flood of about \
         {:.0} k SYNs/s ({} SYN cookies sent in all) and without it (the flood's \
         half-open entries expired first); medians of {} windows each.\n",
        sessions["seconds"],
        f(sessions, "flood_syns_per_s")? / 1e3,
        sessions["syn_cookies_sent"],
        flood["repeats"]
    )?;
    writeln!(
        w,
        "| SMTP sessions per second | during the flood | without | during / without |"
    )?;
    writeln!(w, "|---|---|---|---|")?;
    writeln!(
        w,
        "| connect, greeting, QUIT | {during:.0} | {quiet:.0} | {:.2} |",
        during / quiet
    )?;

    render_engine(w, engine, None)?;

    render_smtp(w, smtp, None)?;
    Ok(out)
}

/// The engine's section, with its hand-taken profile; `measured` (date,
/// machine) when it was measured apart from the rest of the report.
fn render_engine(w: &mut String, engine: &Value, measured: Option<(&str, &str)>) -> Result<()> {
    section_start(w, ENGINE_HEADING, "engine", measured)?;
    writeln!(
        w,
        "`cargo bench -p inspector-esmtp --bench engine`: pipelined commands (MAIL, \
         RCPT, RSET, NOOP in batches of 1000) and 64 MiB of DATA content fed in 64 KiB \
         reads through one `Session` with the default policy (`_default_esmtp_map`, \
         modern mode: line reassembly, every criterion, the streaming MIME scanner), \
         next to a plain `memchr` scan for line ends over the same bytes: the least any \
         line-based relay must do. Medians of {} runs.\n",
        engine["repeats"]
    )?;
    let (ce, cs) = (f(engine, "cmd_engine")?, f(engine, "cmd_scan")?);
    let (de, ds) = (f(engine, "data_engine_gbps")?, f(engine, "data_scan_gbps")?);
    writeln!(w, "| workload | engine | memchr scan | engine / scan |")?;
    writeln!(w, "|---|---|---|---|")?;
    writeln!(
        w,
        "| commands | {:.1} M cmd/s | {:.0} M cmd/s | {:.3} |",
        ce / 1e6,
        cs / 1e6,
        ce / cs
    )?;
    writeln!(
        w,
        "| DATA content | {de:.2} GB/s | {ds:.2} GB/s | {:.3} |",
        de / ds
    )?;
    writeln!(
        w,
        "\nPer command the engine spends about {:.0} ns; at {de:.2} GB/s per core \
         it is {} a 10 Gbit/s link (1.25 GB/s).",
        1e9 / ce,
        if de >= 1.25 {
            "not the bottleneck of"
        } else {
            "slower than"
        }
    )?;
    // The engine's profile is taken by hand, not by this run: kept beside it.
    let profile = workspace_root().join(ENGINE_PROFILE);
    let notes = std::fs::read_to_string(&profile)
        .with_context(|| format!("reading {}", profile.display()))?;
    writeln!(w, "\n{}", notes.trim_end())?;
    Ok(())
}

/// Where the CPU of a small message goes on each path, and what that
/// leaves a proxy: when the cores are busy, messages per second follow
/// the CPU each one takes, so a proxy whose own code cost nothing would
/// still take the machine's CPU less its user time.
fn render_smtp_cpu(w: &mut String, small: &Value, direct_rate: f64) -> Result<()> {
    let cpu = &small["cpu_per_message"];
    writeln!(
        w,
        "\nCPU per small message, measured over the same runs: the whole \
         machine's busy time (`/proc/stat`, both cores: client, sink, proxy and \
         the kernel's work for all of them), the proxy process's user and kernel \
         time (`/proc/PID/stat`, every thread; its kernel time includes the \
         receive work a send on a veth runs inline for the peer), and the share \
         of the cores left idle; medians.\n"
    )?;
    writeln!(
        w,
        "| path | machine µs / msg | proxy user µs / msg | proxy kernel µs / msg | idle |"
    )?;
    writeln!(w, "|---|---|---|---|---|")?;
    let mut rows = Vec::new();
    for (name, key) in [
        ("inspected", "inspected"),
        ("HAProxy", "haproxy"),
        ("direct", "direct"),
    ] {
        let row = &cpu[key];
        let (m, u, k, idle) = (
            f(row, "machine_us")?,
            f(row, "proxy_user_us")?,
            f(row, "proxy_system_us")?,
            f(row, "idle_share")?,
        );
        writeln!(
            w,
            "| {name} | {m:.0} | {u:.0} | {k:.0} | {:.0} % |",
            idle * 100.0
        )?;
        rows.push((m, u));
    }
    let [(im, iu), (hm, hu), (dm, _)] = rows[..] else {
        anyhow::bail!("three paths");
    };
    writeln!(
        w,
        "\nWith the cores busy, the direct path's CPU per message bounds what any \
         proxy that terminates both connections can reach here: without its user \
         time, the inspected path would take {:.0} µs a message, {:.2} of direct \
         ({:.0} msg/s at the direct path's {direct_rate:.0}) and {:.2} of HAProxy; \
         HAProxy without its user time would take {:.0} µs, {:.2} of direct.",
        im - iu,
        dm / (im - iu),
        direct_rate * dm / (im - iu),
        hm / (im - iu),
        hm - hu,
        dm / (hm - hu),
    )?;
    Ok(())
}

/// The SMTP bench's sections; `measured` (date, machine) when they were
/// measured apart from the rest of the report.
fn render_smtp(w: &mut String, smtp: &Value, measured: Option<(&str, &str)>) -> Result<()> {
    let (small, large, lat) = (&smtp["small"], &smtp["large"], &smtp["latency"]);
    writeln!(w, "\n{SMTP_HEADING}\n")?;
    measured_note(w, measured, "smtp")?;
    writeln!(
        w,
        "`inspector run` on the lab's gateway with the proxy ({} workers, one per \
         core), Postfix's `smtp-sink` on the server, Postfix's `smtp-source` in the \
         client namespace. The inspected path is the server's address \
         `198.18.1.25`: sessions are steered into the proxy, which relays them to \
         the server. The peer is HAProxy 2.6 in `mode tcp` on the same gateway \
         (`198.18.0.1:2525`, relaying to the same sink): the plain proxy an \
         operator would otherwise put there. The direct path is the same \
         `smtp-sink` on the server's second address `198.18.1.26`, exempt in the \
         policy (`[[exempt]]`): same namespaces, routes and sink, only the proxy \
         left out (the run checks, from the daemon's metrics, that every \
         inspected session reached the proxy and no other did). The daemon logs \
         at `info`. The three alternate; medians of {} runs each.\n",
        smtp["workers"], smtp["repeats"]
    )?;
    writeln!(
        w,
        "| workload | inspected | HAProxy | direct | inspected / HAProxy | inspected / direct |"
    )?;
    writeln!(w, "|---|---|---|---|---|---|")?;
    let (si, sh, sd) = (
        f(small, "inspected_msgs_per_s")?,
        f(small, "haproxy_msgs_per_s")?,
        f(small, "direct_msgs_per_s")?,
    );
    writeln!(
        w,
        "| `smtp-source -s {} -m {} -l {}` (a session per message) | {si:.0} msg/s | \
         {sh:.0} msg/s | {sd:.0} msg/s | {:.2} | {:.2} |",
        small["sessions"],
        small["messages"],
        small["bytes"],
        si / sh,
        si / sd
    )?;
    let (li, lh, ld) = (
        f(large, "inspected_mb_per_s")?,
        f(large, "haproxy_mb_per_s")?,
        f(large, "direct_mb_per_s")?,
    );
    writeln!(
        w,
        "| `smtp-source -s 1 -m {} -l {}` (10 MiB messages) | {li:.0} MB/s | \
         {lh:.0} MB/s | {ld:.0} MB/s | {:.2} | {:.2} |",
        large["messages"],
        large["bytes"],
        li / lh,
        li / ld
    )?;
    render_smtp_cpu(w, small, sd)?;
    if li > ld {
        writeln!(
            w,
            "\nA ratio above 1 for large messages does not make the proxy free. A \
             likely reason, not profiled: the proxy terminates TCP, so the bytes \
             travel over two connections, each with buffers of its own, where the \
             direct path is one connection forwarded by the gateway."
        )?;
    }

    writeln!(
        w,
        "\nLatency, timed one by one by a client in the bench (in the client \
         namespace, `TCP_NODELAY`, each command waiting for its reply): a \
         transaction is MAIL, RCPT, DATA, 1 KiB of content and the final `.` on an \
         open session ({} per path in all); a session is connect, greeting, QUIT \
         ({} per path in all). Median and p99 over all of them; \"added\" is \
         inspected minus direct. The p99 rows compare two tails (not the tail of \
         a difference) of these samples on shared cores: they are \
         noisy, and a p99 difference can come out negative.\n",
        lat["transactions"], lat["sessions"]
    )?;
    writeln!(
        w,
        "| latency | inspected µs | HAProxy µs | direct µs | added µs | inspected / direct |"
    )?;
    writeln!(w, "|---|---|---|---|---|---|")?;
    for (what, key) in [("transaction", "transaction"), ("session", "session")] {
        for q in ["median", "p99"] {
            let i = f(lat, &format!("{key}_inspected_{q}_us"))?;
            let h = f(lat, &format!("{key}_haproxy_{q}_us"))?;
            let d = f(lat, &format!("{key}_direct_{q}_us"))?;
            writeln!(
                w,
                "| {what}, {q} | {i:.0} | {h:.0} | {d:.0} | {:.0} | {:.2} |",
                i - d,
                i / d
            )?;
        }
    }

    let sc = &smtp["scaling"];
    let (one, two) = (
        f(sc, "one_worker_msgs_per_s")?,
        f(sc, "two_workers_msgs_per_s")?,
    );
    writeln!(
        w,
        "\nWorkers: the small-message row through the proxy with `workers = 1` and \
         `workers = 2` in the policy, a daemon started for each run, alternating; \
         medians of {} runs each. The client (`smtp-source`), the sink and the \
         kernel's side of both connections share the same 2 cores with the proxy, \
         so the second worker competes with them for the second core.\n",
        smtp["repeats"]
    )?;
    writeln!(w, "| workers | msg/s | vs 1 worker |")?;
    writeln!(w, "|---|---|---|")?;
    writeln!(w, "| 1 | {one:.0} | 1.00 |")?;
    writeln!(w, "| 2 | {two:.0} | {:.2} |", two / one)?;

    let m = &smtp["memory"];
    let (sessions, requested) = (f(m, "sessions")?, f(m, "requested_sessions")?);
    writeln!(w, "\n{MEMORY_HEADING}\n")?;
    writeln!(
        w,
        "The daemon's RSS (`VmRSS`) before and after opening {sessions:.0} idle \
         inspected sessions from the client namespace (each has read its greeting, \
         so the proxy holds the client's and the server's connection; opened in \
         {:.1} s), divided by the sessions. `max-sessions` in the policy's \
         `[proxy]` table ({}) allows them: as many as fit in the descriptor limit \
         with the daemon's reserve.",
        f(m, "opened_in_s")?,
        m["max_sessions"]
    )?;
    if sessions < requested {
        writeln!(
            w,
            "{requested:.0} were asked for, but the daemon holds two sockets per \
             session and may open only {} descriptors here (the hard \
             `RLIMIT_NOFILE` of this machine, which the bench cannot raise without \
             `CAP_SYS_RESOURCE`): {sessions:.0} is the most that fits with \
             `max-sessions`, in whole hundreds.",
            m["nofile_limit"]
        )?;
    }
    let (before, after) = (f(m, "rss_before_kib")?, f(m, "rss_after_kib")?);
    writeln!(w, "\n| sessions | RSS before | RSS after | per session |")?;
    writeln!(w, "|---|---|---|---|")?;
    writeln!(
        w,
        "| {sessions:.0} | {:.1} MiB | {:.1} MiB | {:.1} KiB |",
        before / 1024.0,
        after / 1024.0,
        f(m, "bytes_per_session")? / 1024.0
    )?;
    Ok(())
}

/// A section's heading and, when it was measured apart from the rest of
/// the report by `--only PART`, `measured`: its date and machine.
fn section_start(
    w: &mut String,
    heading: &str,
    part: &str,
    measured: Option<(&str, &str)>,
) -> Result<()> {
    writeln!(w, "\n{heading}\n")?;
    measured_note(w, measured, part)
}

/// The attack's section; `measured` (date, machine) when it was measured
/// apart from the rest of the report.
fn render_attack(w: &mut String, attack: &Value, measured: Option<(&str, &str)>) -> Result<()> {
    section_start(w, ATTACK_HEADING, "attack", measured)?;
    writeln!(
        w,
        "`cargo bench -p inspector --bench attack`: `inspector run` with the default \
         policy ({}), Postfix's `smtp-sink` on the server. The legitimate client is \
         `smtp-source -s {} -m {} -l {}` (a session per message) from the client \
         namespace's own address; its messages per second are measured alternately \
         while an attacker holds idle sessions (each greeted, then silent; one closed \
         or refused is opened again a second later) and without the attacker, \
         medians of {} runs each. `one-address` is the attack of issue 19: one \
         address opening 1,030 sessions; `many-addresses`: 40 addresses opening 50 \
         each, more than `max-sessions`, so the proxy is full and in stress mode and \
         every legitimate session takes the slot of an idle one.\n",
        attack["policy"].as_str().unwrap_or("?"),
        attack["sessions"],
        attack["messages"],
        attack["bytes"],
        attack["repeats"]
    )?;
    writeln!(
        w,
        "| attack | sockets | held by the attacker | msgs/s during | msgs/s without | during / without |"
    )?;
    writeln!(w, "|---|---|---|---|---|---|")?;
    let rows = attack["attacks"].as_array().context("attack rows")?;
    for row in rows {
        let (d, n) = (f(row, "during_msgs_per_s")?, f(row, "without_msgs_per_s")?);
        writeln!(
            w,
            "| `{}` ({} address{}) | {} | {} | {d:.0} | {n:.0} | {:.2} |",
            row["attack"].as_str().unwrap_or("?"),
            row["addresses"],
            if row["addresses"] == 1 { "" } else { "es" },
            row["sockets"],
            row["last_attack"]["held_when_measuring"],
            d / n
        )?;
    }
    writeln!(w, "\nWhat the proxy did in the last run of each attack:\n")?;
    writeln!(
        w,
        "| attack | sessions held when measuring | stress | refused per-client-limit | refused max-sessions | evicted while measuring | clients blocked in XDP | SYNs dropped in XDP while measuring |"
    )?;
    writeln!(w, "|---|---|---|---|---|---|---|---|")?;
    for row in rows {
        let l = &row["last_attack"];
        writeln!(
            w,
            "| `{}` | {} | {} | {} | {} | {} | {} | {} |",
            row["attack"].as_str().unwrap_or("?"),
            l["sessions_active_when_measuring"],
            if l["stress_when_measuring"] == 1 {
                "on"
            } else {
                "off"
            },
            l["refused_per_client_limit"],
            l["refused_max_sessions"],
            l["evicted_while_measuring"],
            l["clients_blocked_when_measuring"],
            l["syns_dropped_per_client_while_measuring"]
        )?;
    }
    writeln!(
        w,
        "\nWhere the 2 cores went while the last runs measured (cores used, from \
         `/proc`: the machine in all, of which softirq, where the kernel runs XDP and \
         the TCP stack for received packets; the daemon; the attacker's threads; the \
         rest is the legitimate client, `smtp-sink` and anything else running):\n"
    )?;
    writeln!(
        w,
        "| attack | machine | softirq | daemon | attacker | without: machine | softirq | daemon |"
    )?;
    writeln!(w, "|---|---|---|---|---|---|---|---|")?;
    for row in rows {
        let (c, n) = (&row["last_attack"]["cores"], &row["cores_without"]);
        writeln!(
            w,
            "| `{}` | {} | {} | {} | {} | {} | {} | {} |",
            row["attack"].as_str().unwrap_or("?"),
            c["machine"],
            c["softirq"],
            c["daemon"],
            c["attacker"],
            n["machine"],
            n["softirq"],
            n["daemon"]
        )?;
    }
    writeln!(
        w,
        "\nBefore per-client limits and fair admission, `one-address` left every \
         other client with `421 4.3.2 Too many sessions` for as long as it held its \
         sockets: 0 msgs/s. Now the kernel drops the SYNs of a client holding its 50 \
         sessions (`clients blocked in XDP`), so each socket `one-address` opens \
         again costs an XDP lookup instead of a handshake, an accept and a `421` \
         (only the SYNs already on their way when it reached its limit are \
         refused by the proxy). `many-addresses` brings no address to its limit \
         (each holds about 25 of the 1,024 slots), so the kernel does not help \
         there: its cost is the churn of the sockets refused at `max-sessions` and \
         of the evicted ones, each a handshake, an accept and a `421`. The \
         attacker, the legitimate client, the proxy and the server share these 2 \
         cores; when the machine is busy with other work too (`machine` near 2 \
         without the attack), the rates swing from run to run and whatever the \
         attack costs comes out of the legitimate client's share."
    )?;
    Ok(())
}

/// The gateway's section; `measured` (date, machine) when it was measured
/// apart from the rest of the report.
fn render_gateway(w: &mut String, g: &Value, measured: Option<(&str, &str)>) -> Result<()> {
    section_start(w, GATEWAY_HEADING, "gateway", measured)?;
    let cpu = &g["cpu"];
    writeln!(
        w,
        "`cargo bench -p inspector --bench gateway -- --repeats {}`: our programs in \
         native XDP mode on both gateway interfaces (a pass-only program on the end \
         hosts' veths, without which a veth drops native `XDP_TX` frames), or \
         nftables on the gateway's forward hook, the same lab. The gateway's \
         `outside` veth does its receive work in a threaded NAPI kernel thread \
         (`echo 1 > /sys/class/net/outside/threaded`, GRO on so the veth has NAPI \
         without XDP too) pinned to CPU {}; {} sender threads, pinned to the other \
         CPU, send {} spoofed SYNs per run after the limit ({}) is full. They send \
         them as XDP frames (`BPF_PROG_RUN` in live-frames mode, out of the \
         client's veth; `lab/src/frame_flood.rs`), which reach the gateway's veth \
         the way a NIC's receive ring hands packets to its driver: no socket \
         buffer, so no copy (a veth copies every packet a local socket sends \
         into a page with XDP's headroom before a program sees it, which the \
         figures before this method charged to the gateway). The cost of a SYN \
         is the growth of that thread's run time (`/proc/PID/schedstat`) \
         divided by the SYNs handled, as the handler's own counter counts them: \
         dropped (our `max-embryonic` with `on-embryonic-limit = \"drop\"`; \
         nftables `ct state new ct count over {}` drop; an XDP program that only \
         drops, the floor of this path) or answered with a SYN \
         cookie (our intercept; nftables `synproxy mss 1460 wscale {} timestamp \
         sack-perm` after `notrack` of the SYNs). nftables runs behind a \
         pass-only XDP program, so its frames become socket buffers as a \
         driver's do (`build_skb` around the frame, no copy). The client's \
         veth has a NAPI thread of its own, so the answers it receives are not \
         counted. The five alternate; medians of {} runs each.\n",
        g["repeats"],
        g["gateway_cpu"],
        g["senders"],
        g["syns"],
        g["limit"],
        g["limit"],
        g["synproxy_wscale"],
        g["repeats"]
    )?;
    let (xd, nc) = (f(cpu, "xdp_drop_ns")?, f(cpu, "nft_ct_count_ns")?);
    let (xi, ns) = (f(cpu, "xdp_intercept_ns")?, f(cpu, "nft_synproxy_ns")?);
    writeln!(
        w,
        "| gateway CPU per SYN | ours (XDP) | nftables | nftables / ours | SYNs handled, ours / nftables |"
    )?;
    writeln!(w, "|---|---|---|---|---|")?;
    let share = |key: &str| -> Result<String> { Ok(format!("{:.0} %", 100.0 * f(cpu, key)?)) };
    let ratio = nc / xd;
    writeln!(
        w,
        "| dropped (limit; `ct count`) | {xd:.0} ns | {nc:.0} ns | {ratio:.1} | {} / {} |",
        share("xdp_drop_handled")?,
        share("nft_ct_count_handled")?
    )?;
    writeln!(
        w,
        "| answered with a cookie (intercept; `synproxy`) | {xi:.0} ns | {ns:.0} ns | {:.1} | {} / {} |",
        ns / xi,
        share("xdp_intercept_handled")?,
        share("nft_synproxy_handled")?
    )?;
    let floor = f(cpu, "xdp_drop_all_ns")?;
    writeln!(
        w,
        "| dropped by a program that only drops (the floor) | {floor:.0} ns | | {:.1} (`ct count` / floor) | {} |",
        nc / floor,
        share("xdp_drop_all_handled")?
    )?;
    writeln!(
        w,
        "\nSYNs not handled were dropped by the veth's ring before any handler \
         saw them: the gateway's thread did not keep up with the senders."
    )?;
    writeln!(
        w,
        "\nThe issue's target, an XDP drop at least 5 times cheaper than `ct count`, \
         is {} in this run ({ratio:.1}; the floor, the veth receiving a frame and a \
         program that only drops it, {floor:.0} ns). Costs made of cache misses and \
         lock contention depend on the machine and on whatever shares it: on the \
         two kinds of machine this bench ran on (2 cores each, the same kernel \
         series), an AMD EPYC gave 5.9, 6.7 and 6.4 (2026-12-03), 5.3, 7.4, \
         6.5, 7.3 and 7.3 (2026-12-04: the memory builtins written inline, then \
         the frames also arriving on the gateway, then twice no client-block \
         lookup while no client is blocked, then a server's counts in an \
         array), an Intel Xeon 3.3 and 3.6 \
         (earlier builds that left the drop unchanged: it took 313 to 889 ns, \
         `ct count` 1142 to 2500), 4.6 (2026-12-03), 3.8 and 3.3 (2026-12-04, \
         before and after the memory builtins were written inline); the section \
         after this one has the full runs. On the Xeon, two costs made up our drop above the floor. \
         A profile of the drop runs alone (`perf record -a -g`, 6 s, \
         2026-12-03) put 58 % of the gateway thread's time in returning the \
         senders' pages to their page pool (`page_pool_put_unrefed_netmem` and \
         the spin lock of the pool's ring), a lock the senders take too, for \
         every frame the veth's full ring refused: a cost of this way of \
         delivering frames, which grows as the handler falls behind, and which a \
         NIC's driver, recycling its own pages, does not have; `ct count`, \
         further behind, paid it too. Our program took the other 42 %, most of \
         it in the first read of the packet, which the senders' CPU wrote just \
         before. The flow table's lookup, once the largest part of the \
         program's time (a table far larger than the caches, missed by every \
         spoofed SYN), is skipped for a SYN whose slot in the flow marks counts no \
         flow (docs/limits.md). In runs of the drop alone (a local change \
         to this bench, 400,000 SYNs a run), the build before the marks took a \
         median of 898 ns (5 runs); builds with marks of 4,096 and of 65,536 \
         4-byte slots (16 and 256 KiB), run alternately 3 times 8 runs, 713 and \
         843 ns (at 256 KiB their read missed the cache about as often as the \
         packet's); the 4,096 8-byte slots this build has (32 KiB, which also \
         count inserts for the sweeper) against the 4-byte ones, the same way, \
         703 and 688 ns (all on the Xeon).",
        if ratio >= 5.0 { "met" } else { "not met" }
    )?;
    render_gateway_cpu_at_gateway(w, &g["cpu_at_gateway"])?;
    let (one, many) = (&g["sessions"], &g["sessions_concurrent"]);
    writeln!(
        w,
        "\nSMTP sessions (connect, greeting, `QUIT`) with Postfix's `smtp-sink`, \
         from {} real clients at once, each one session after another (what the \
         path carries), and from one client (what a session's round trips \
         allow), for {} s at a time (NAPI no longer threaded), through our \
         intercept (`max-embryonic = {}`, `on-embryonic-limit = \"intercept\"`; \
         the flood's half-open entries expired before each quiet window) and \
         through nftables `synproxy` (which answers every SYN to the server), \
         each during the same steady flood (bursts of 100 SYNs with a 5 ms \
         pause, sent as XDP frames like the ones above, by one thread that \
         shares the cores with the clients: a median of {:.0} SYNs/s with {} \
         clients, {:.0} with one) and without it, one window of each \
         after another; rates are medians of {} windows each, ratios medians of \
         each round's (so that what drifts between rounds, the shared \
         machine's other load, stays out of them). The client reuses its ports in TIME-WAIT \
         (`net.ipv4.tcp_tw_reuse = 1`): without it, the sessions of a few \
         windows filled its port range, and from then on every connect searched \
         it, at about 470 sessions/s (the figures of runs before 2026-12-04 \
         measured that search for part of their windows).\n",
        many["clients"],
        many["seconds"],
        g["limit"],
        f(many, "flood_syns_per_s")?,
        many["clients"],
        f(one, "flood_syns_per_s")?,
        g["repeats"]
    )?;
    writeln!(
        w,
        "| sessions per second | clients | during the flood | without | during / without |"
    )?;
    writeln!(w, "|---|---|---|---|---|")?;
    // The ratios are medians of each repeat's (its windows follow one
    // another), not ratios of the medians.
    let during_over_quiet = |s: &Value, key: &str| -> Result<(f64, f64)> {
        let d = f(s, &format!("{key}_flood_per_s"))?;
        Ok((d, f(s, &format!("{key}_flood_over_quiet"))?))
    };
    for (name, key) in [
        ("our intercept", "ours"),
        ("nftables `synproxy`", "synproxy"),
    ] {
        for s in [many, one] {
            let (d, r) = during_over_quiet(s, key)?;
            let q = f(s, &format!("{key}_quiet_per_s"))?;
            writeln!(
                w,
                "| {name} | {} | {d:.0} | {q:.0} | {r:.2} |",
                s["clients"]
            )?;
        }
    }
    let after = |s: &Value| -> Result<(f64, f64)> {
        let a = f(s, "ours_intercepted_quiet_per_s")?;
        Ok((a, f(s, "ours_intercepted_over_quiet")?))
    };
    let ((am, rm), (a1, r1)) = (after(many)?, after(one)?);
    writeln!(
        w,
        "\nRight after each flooded window, the flood stopped but its half-open \
         entries still filling the limit (every session intercepted, a cookie \
         each, and nothing else sent): {am:.0} sessions per second from {} \
         clients, {rm:.2} of the quiet rate, and {a1:.0} from one, {r1:.2}. So \
         what a session pays for being intercepted is that difference; the rest \
         of what the flood takes is the CPU the flood itself uses on these 2 \
         shared cores: the sender's, the gateway's cookies, and the client's \
         kernel receiving and discarding the cookies sent to the spoofed \
         addresses (which the flooding host, not the gateway, pays on a real \
         network).",
        many["clients"]
    )?;
    let (rm, r1) = (
        during_over_quiet(many, "ours")?.1,
        during_over_quiet(one, "ours")?.1,
    );
    let met = |r: f64| if r >= 0.9 { "met" } else { "not met" };
    writeln!(
        w,
        "\nThe issue's target, sessions during a flood at least 0.9 of those \
         without, is {} with {} clients ({rm:.2}) and {} with one ({r1:.2}).",
        met(rm),
        many["clients"],
        met(r1)
    )?;
    let sum = |key: &str| -> Result<u64> { Ok(f(one, key)? as u64 + f(many, key)? as u64) };
    writeln!(
        w,
        "\nDuring the flood, ours / synproxy: {:.0} with {} clients. `synproxy` \
         was told the server's MSS (1460) and window scale ({}), as its \
         documentation asks; in its windows the client retransmitted {} TCP \
         segments (`nstat TcpRetransSegs`) and {} sessions failed (a step \
         waited 10 s), in our flooded windows {} segments, and of our {} \
         sessions (all their windows) {} failed the same way; checksum errors \
         counted by the client and the server over the whole run \
         (`TcpInCsumErrors`): {} and {}.",
        f(many, "ours_flood_per_s")? / f(many, "synproxy_flood_per_s")?,
        many["clients"],
        g["synproxy_wscale"],
        sum("synproxy_client_retransmits")?,
        sum("synproxy_failed_sessions")?,
        sum("ours_client_retransmits")?,
        sum("ours_sessions")?,
        sum("ours_failed_sessions")?,
        many["checksum_errors"][0],
        many["checksum_errors"][1]
    )?;
    if f(one, "synproxy_quiet_per_s")? < 10.0 {
        writeln!(
            w,
            "\nnftables `synproxy` completed about one session per second on this lab, with or without the flood: each waited about a second, though the client retransmitted nothing. A capture on the server (tcpdump, one session, the same rules) shows why: the ACK `synproxy` sends the server to complete its handshake echoes a timestamp the server never sent (`ecr 232394020` for the server's `TS val 2266068031`), the server drops it, and the handshake completes only with the server's SYN-ACK retransmitted a second later. So the comparison of sessions with `synproxy` says nothing about `synproxy` on a kernel where that works; its CPU cost per SYN above is not affected (every SYN gets its cookie)."
        )?;
    }
    let t = &g["transfer"];
    let (ti, td) = (f(t, "intercepted_mb_per_s")?, f(t, "direct_mb_per_s")?);
    writeln!(
        w,
        "\nA {} MiB transfer from the client to the server (one connection, the \
         server counts the bytes and answers), over a connection our intercept \
         opened (to the protected address with its embryonic limit full, so window \
         scaling, SACK and timestamps went through the cookie and every segment is \
         translated) and over one it did not (the server's second address, not \
         protected): same lab, same programs; medians of {} each, alternating, \
         the ratio the median of each pair's.\n",
        f(t, "bytes")? as u64 >> 20,
        t["rounds"]
    )?;
    writeln!(
        w,
        "| 50 MiB transfer | intercepted | not intercepted | intercepted / not |"
    )?;
    writeln!(w, "|---|---|---|---|")?;
    writeln!(w, "| MB/s | {ti:.0} | {td:.0} | {:.2} |", f(t, "ratio")?)?;
    Ok(())
}

/// The CPU figures measured with the frames arriving in a thread on the
/// gateway's own CPU (`cpu_per_syn_at_gateway`).
fn render_gateway_cpu_at_gateway(w: &mut String, cpu: &Value) -> Result<()> {
    if cpu.is_null() {
        return Ok(());
    }
    writeln!(
        w,
        "\nThe same five, the frames arriving on the gateway: one thread on the \
         gateway's CPU runs `BPF_PROG_RUN` in live-frames mode in the gateway's \
         namespace, with `outside` as the frames' device, and a program that \
         writes each SYN (as the sender's does) and then hands it to ours (a \
         tail call), passes it to the stack (`XDP_PASS`, to nftables) or drops it \
         (the floor: what writing and receiving a frame cost). All of a SYN's \
         work is then done in that thread, on that CPU, with pages that stay \
         there as a driver's own do (a cookie's leaves with it): no other CPU \
         takes part in a drop, nothing is lost before a handler, and no sender \
         shares a lock with the handler. A \
         SYN's cost is the thread's CPU time (`CLOCK_THREAD_CPUTIME_ID`) over \
         the SYNs handled.\n"
    )?;
    let (xd, nc) = (f(cpu, "xdp_drop_ns")?, f(cpu, "nft_ct_count_ns")?);
    let (xi, ns) = (f(cpu, "xdp_intercept_ns")?, f(cpu, "nft_synproxy_ns")?);
    let floor = f(cpu, "xdp_drop_all_ns")?;
    writeln!(
        w,
        "| CPU per SYN, arriving on the gateway | ours (XDP) | nftables | nftables / ours | the same less the floor |"
    )?;
    writeln!(w, "|---|---|---|---|---|")?;
    let less = |ours: f64, theirs: f64| (theirs - floor) / (ours - floor);
    writeln!(
        w,
        "| dropped (limit; `ct count`) | {xd:.0} ns | {nc:.0} ns | {:.1} | {:.1} |",
        nc / xd,
        less(xd, nc)
    )?;
    writeln!(
        w,
        "| answered with a cookie (intercept; `synproxy`) | {xi:.0} ns | {ns:.0} ns | {:.1} | {:.1} |",
        ns / xi,
        less(xi, ns)
    )?;
    writeln!(w, "| the floor | {floor:.0} ns | | | |")?;
    writeln!(
        w,
        "\nHere the floor is what making the frames costs (the program writing \
         each SYN, the test run's page for it), where a NIC's driver has its \
         own cost, which ours and nftables both pay: with a driver as costly \
         as this floor, the drop's ratio is {:.1}; with one that costs nothing, \
         {:.1}. Against the figures above, nothing on another CPU takes part \
         here, and the drop's ratio is {}.",
        nc / xd,
        less(xd, nc),
        if nc / xd >= 5.0 {
            "at least 5 this way too"
        } else {
            "under 5 this way"
        }
    )?;
    Ok(())
}

fn render_cluster(w: &mut String, c: &Value, measured: Option<(&str, &str)>) -> Result<()> {
    section_start(w, CLUSTER_HEADING, "cluster", measured)?;
    writeln!(
        w,
        "`cargo bench -p inspector --bench cluster`: the cluster lab (docs/cluster.md) \
         with 2 gateways behind the BIRD router, `policies/cluster.toml`. \
         `smtp-source -s {} -m {} -l {}` (a session per message) from the client, \
         alternately with only gateway 1 announced (gateway 2's route withdrawn) and with \
         both, and to an address exempt on both (forwarded by the kernel, uninspected); \
         medians of {} runs each.\n",
        c["sessions"], c["messages"], c["bytes"], c["repeats"]
    )?;
    let (one, two, direct) = (
        f(c, "one_gateway_msgs_per_s")?,
        f(c, "two_gateways_msgs_per_s")?,
        f(c, "direct_msgs_per_s")?,
    );
    writeln!(w, "| path | msgs/s | / 1 gateway |")?;
    writeln!(w, "|---|---|---|")?;
    writeln!(w, "| 1 gateway, inspected | {one:.0} | 1.00 |")?;
    writeln!(w, "| 2 gateways, inspected | {two:.0} | {:.2} |", two / one)?;
    writeln!(
        w,
        "| exempt (no proxy) | {direct:.0} | {:.2} |",
        direct / one
    )?;
    writeln!(
        w,
        "\nGateway 1's share of the sessions with both announced (the ECMP hash on the \
         5-tuple): median {:.3}, at most {:.3} from one half in any run of {} sessions.\n\n\
         What limits the figure: both gateways, the router, the client and the server \
         share this machine's cores (and whatever else runs on it), so a second gateway \
         adds no CPU, only a second proxy contending for the same cores: the rows cannot \
         scale here, and the ratio shows what spreading costs on one machine. On separate \
         machines each gateway brings its own cores.",
        f(c, "gateway1_share_median")?,
        f(c, "gateway1_share_worst_deviation")?,
        c["sessions_per_run"]
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_are_replaced_or_added_before_the_closing_line() {
        let report = "# B\n\n## A\n\nold\n\n## Z\n\nz\n\nThis run of `x` took 1 s.\n";
        let added = replace_section(report, "## New", "\n## New\n\nnew\n");
        assert_eq!(
            added,
            "# B\n\n## A\n\nold\n\n## Z\n\nz\n\n## New\n\nnew\n\nThis run of `x` took 1 s.\n"
        );
        let replaced = replace_section(&added, "## New", "\n## New\n\nnewer\n");
        assert_eq!(replaced, added.replace("new\n", "newer\n"));
        let middle = replace_section(report, "## A", "\n## A\n\nfresh\n");
        assert_eq!(middle, report.replace("old", "fresh"));
        // A section after the closing line stays where it is, and the
        // closing line too.
        let after = format!("{added}\n## Later\n\nlater\n");
        let replaced = replace_section(&after, "## New", "\n## New\n\nnewer\n");
        assert_eq!(replaced, after.replace("new\n", "newer\n"));
        // A section apart after the closing line stays where it is, and so
        // does the closing line.
        let after = "# B\n\n## A\n\nold\n\nThis run of `x` took 1 s.\n\n## C\n\nc\n";
        let last = replace_section(after, "## A", "\n## A\n\nfresh\n");
        assert_eq!(last, after.replace("old", "fresh"));
    }
}
