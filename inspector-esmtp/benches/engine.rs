//! In-process benchmark of the engine, next to a plain memchr scan of the
//! same bytes (the least any line-based relay must do), as a ratio. Timings
//! on shared machines are noisy: each figure is the median of `REPEATS` runs
//! measured side by side.
//!
//! `cargo bench -p inspector-esmtp --bench engine`; a profiler can run one
//! workload alone: `... --bench engine -- commands` (or `data`).

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use inspector_esmtp::policy::EsmtpPolicy;
use inspector_esmtp::{Output, Peers, PolicyStats, Session};

const REPEATS: usize = 9;
/// Commands per pipelined batch (the reply queue holds 1000).
const BATCH: usize = 1000;
const BATCHES: usize = 50;
/// DATA content per run, fed in reads of `READ` bytes.
const DATA_BYTES: usize = 64 << 20;
const READ: usize = 64 << 10;

fn session(policy: &Arc<EsmtpPolicy>) -> Session {
    let peers = Peers {
        client: "198.18.0.1:40000".parse().unwrap(),
        server: "198.18.1.1:25".parse().unwrap(),
    };
    Session::new(policy.clone(), Arc::new(PolicyStats::new(policy)), peers)
}

/// A session after the greeting and EHLO, with PIPELINING.
fn ready(policy: &Arc<EsmtpPolicy>, now: Instant) -> Session {
    let mut s = session(policy);
    let out = &mut Output::default();
    s.on_server_data(b"220 mx.example ESMTP\r\n", now, out);
    s.on_client_data(b"EHLO client.example\r\n", now, out);
    s.on_server_data(
        b"250-mx.example\r\n250-PIPELINING\r\n250 8BITMIME\r\n",
        now,
        out,
    );
    s
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// The baseline: find every line end, as any relay that reads lines must.
fn memchr_lines(bytes: &[u8]) -> usize {
    memchr::memchr_iter(b'\n', bytes).count()
}

fn commands(policy: &Arc<EsmtpPolicy>) -> (f64, f64) {
    let cycle: [&[u8]; 4] = [
        b"MAIL FROM:<sender@client.example>\r\n",
        b"RCPT TO:<user@mx.example>\r\n",
        b"RSET\r\n",
        b"NOOP\r\n",
    ];
    let client: Vec<u8> = (0..BATCH)
        .flat_map(|i| cycle[i % 4].iter().copied())
        .collect();
    let server: Vec<u8> = b"250 2.0.0 Ok\r\n".repeat(BATCH);
    let (mut engine, mut scan) = (Vec::new(), Vec::new());
    // One output for all calls, as the proxy does: no allocation per call.
    let (mut a, mut b) = (Output::default(), Output::default());
    for _ in 0..REPEATS {
        let now = Instant::now();
        let mut s = ready(policy, now);
        let t = Instant::now();
        for _ in 0..BATCHES {
            s.on_client_data(&client, now, &mut a);
            s.on_server_data(&server, now, &mut b);
            assert_eq!(a.to_server.len(), client.len());
            assert_eq!(b.to_client.len(), server.len());
        }
        engine.push(t.elapsed());
        let t = Instant::now();
        for _ in 0..BATCHES {
            black_box(memchr_lines(black_box(&client)) + memchr_lines(black_box(&server)));
        }
        scan.push(t.elapsed());
    }
    let n = (BATCH * BATCHES) as f64;
    (
        n / median(engine).as_secs_f64(),
        n / median(scan).as_secs_f64(),
    )
}

/// A plausible message body: base64 lines, a few dot-stuffed lines.
fn content() -> Vec<u8> {
    let mut body = b"From: a@client.example\r\nTo: b@mx.example\r\nSubject: bench\r\n\
                     MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b\"\r\n\r\n\
                     --b\r\nContent-Type: application/octet-stream; name=\"f.bin\"\r\n\
                     Content-Transfer-Encoding: base64\r\n\r\n"
        .to_vec();
    let line = b"QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWZnaGlqa2xtbm9wcXJzdHV2d3h5ejAx\r\n";
    let mut i = 0;
    while body.len() < DATA_BYTES {
        if i % 1000 == 0 {
            body.extend_from_slice(b"..stuffed\r\n");
        }
        body.extend_from_slice(line);
        i += 1;
    }
    body.extend_from_slice(b"--b--\r\n");
    body
}

fn data(policy: &Arc<EsmtpPolicy>) -> (f64, f64) {
    let body = content();
    let (mut engine, mut scan) = (Vec::new(), Vec::new());
    let mut out = Output::default();
    for _ in 0..REPEATS {
        let now = Instant::now();
        let mut s = ready(policy, now);
        s.on_client_data(
            b"MAIL FROM:<a@client.example>\r\nRCPT TO:<b@mx.example>\r\nDATA\r\n",
            now,
            &mut out,
        );
        s.on_server_data(b"250 ok\r\n250 ok\r\n354 go\r\n", now, &mut out);
        let t = Instant::now();
        let mut relayed = 0;
        for read in body.chunks(READ) {
            s.on_client_data(read, now, &mut out);
            relayed += out.to_server.len();
        }
        s.on_client_data(b".\r\n", now, &mut out);
        relayed += out.to_server.len();
        engine.push(t.elapsed());
        assert_eq!(relayed, body.len() + 3);
        let t = Instant::now();
        for read in body.chunks(READ) {
            black_box(memchr_lines(black_box(read)));
        }
        scan.push(t.elapsed());
    }
    let gb = body.len() as f64 / 1e9;
    (
        gb / median(engine).as_secs_f64(),
        gb / median(scan).as_secs_f64(),
    )
}

fn main() {
    let policy = Arc::new(EsmtpPolicy::default());
    // Workloads named on the command line (cargo passes `--bench`), else both.
    let only: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let run = |name: &str| only.is_empty() || only.iter().any(|a| a == name);
    let (mut cmd_engine, mut cmd_scan, mut data_engine, mut data_scan) = (0.0, 0.0, 0.0, 0.0);
    if run("commands") {
        (cmd_engine, cmd_scan) = commands(&policy);
        println!(
            "commands: engine {:>12.0} cmd/s   memchr scan {:>12.0} cmd/s   engine/scan {:.3}",
            cmd_engine,
            cmd_scan,
            cmd_engine / cmd_scan
        );
    }
    if run("data") {
        (data_engine, data_scan) = data(&policy);
        println!(
            "DATA:     engine {:>12.2} GB/s    memchr scan {:>12.2} GB/s    engine/scan {:.3}",
            data_engine,
            data_scan,
            data_engine / data_scan
        );
    }
    println!("(medians of {REPEATS} runs; default policy: _default_esmtp_map, modern mode)");
    if !only.is_empty() {
        return;
    }
    // For `cargo xtask bench`.
    println!(
        "json: {{\"repeats\": {REPEATS}, \"cmd_engine\": {cmd_engine}, \"cmd_scan\": {cmd_scan}, \
         \"data_engine_gbps\": {data_engine}, \"data_scan_gbps\": {data_scan}}}"
    );
}
