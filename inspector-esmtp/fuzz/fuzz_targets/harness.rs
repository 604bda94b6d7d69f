//! Shared by both targets: a session under one of the shipped policies, fed
//! alternately with fuzzed bytes from one side and scripted bytes from the
//! other. Checks: no panic, and the memory bound after every call.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use inspector_esmtp::policy::EsmtpPolicy;
use inspector_esmtp::{Output, Peers, PolicyStats, SESSION_MEMORY_BOUND, Session};

fn shipped(text: &str) -> EsmtpPolicy {
    EsmtpPolicy::from_toml(text).expect("shipped policy compiles")
}

/// The policies, compiled once (compiling per input would dominate).
fn policies() -> &'static [Arc<EsmtpPolicy>; 3] {
    static POLICIES: OnceLock<[Arc<EsmtpPolicy>; 3]> = OnceLock::new();
    POLICIES.get_or_init(|| {
        [
            Arc::new(EsmtpPolicy::default()),
            Arc::new(shipped(include_str!("../../../policies/compat.toml"))),
            Arc::new(shipped(include_str!("../../../policies/exchange.toml"))),
        ]
    })
}

pub fn session(selector: u8) -> Session {
    let all = policies();
    let policy = all[usize::from(selector) % all.len()].clone();
    let stats = Arc::new(PolicyStats::new(&policy));
    let peers = Peers {
        client: "198.18.0.1:40000".parse().unwrap(),
        server: "198.18.1.1:25".parse().unwrap(),
    };
    Session::new(policy, stats, peers)
}

/// Runs `data`: byte 0 picks the policy; the rest is cut at 0xFF into
/// segments of fuzzed bytes, each followed by the other side's next
/// scripted write.
pub fn run(data: &[u8], fuzzed_is_client: bool, script: &[&[u8]]) {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let mut s = session(selector);
    let mut now = Instant::now();
    let mut script = script.iter().cycle();
    let out = &mut Output::default();
    for segment in rest.split(|&b| b == 0xFF) {
        now += Duration::from_millis(300);
        if fuzzed_is_client {
            s.on_client_data(segment, now, out);
        } else {
            s.on_server_data(segment, now, out);
        }
        assert!(s.heap_bytes() <= SESSION_MEMORY_BOUND);
        let other = script.next().copied().unwrap_or_default();
        if fuzzed_is_client {
            s.on_server_data(other, now, out);
        } else {
            s.on_client_data(other, now, out);
        }
        assert!(s.heap_bytes() <= SESSION_MEMORY_BOUND);
    }
    s.on_client_eof(now, out);
}
