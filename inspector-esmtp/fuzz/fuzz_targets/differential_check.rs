//! The differential check shared by the `differential` fuzz target and the
//! `differential` test: one command line read by the engine
//! (`inspector_esmtp::read_command`) and by an independent SMTP parser,
//! smtp-proto. Wherever smtp-proto accepts the line and the two disagree on
//! its verb, its address or its BDAT size and LAST, the engine must refuse
//! the line, and a refused line must never reach the server.
//!
//! smtp-proto is one more reading, not the truth: its own quirks (the
//! reference's "known mismatches") are disagreements the engine refuses
//! anyway (a CR anywhere is dropped: the engine refuses bare CRs; the digit
//! loop restarts after saturating: the engine reads at most 10 digits;
//! `LAST junk` is LAST: the engine refuses trailing text), except one that
//! is normalised below: `<postmaster>` comes out as the empty address.

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use inspector_esmtp::policy::EsmtpPolicy;
use inspector_esmtp::{Output, Peers, PolicyStats, Session, read_command};
use smtp_proto::Request;

/// The line to check: `data` up to its first LF, which is added if missing.
pub fn line_of(data: &[u8]) -> Vec<u8> {
    let mut line = match memchr(data) {
        Some(p) => data[..=p].to_vec(),
        None => data.to_vec(),
    };
    if !line.ends_with(b"\n") {
        line.extend_from_slice(b"\r\n");
    }
    line
}

fn memchr(data: &[u8]) -> Option<usize> {
    data.iter().position(|&b| b == b'\n')
}

/// What smtp-proto makes of the line, when it accepts it: the verb, the
/// address (MAIL/RCPT), MAIL's SIZE (0 without one) and BDAT's framing.
struct Other {
    verb: &'static str,
    address: Option<String>,
    size: usize,
    bdat: Option<(u64, bool)>,
}

fn other(line: &[u8]) -> Option<Other> {
    let request = Request::parse(&mut line.iter()).ok()?;
    let verb = request.name();
    let (address, size, bdat) = match request {
        Request::Mail { from } => (Some(from.address.into_owned()), from.size, None),
        Request::Rcpt { to } => (Some(to.address.into_owned()), 0, None),
        Request::Bdat {
            chunk_size,
            is_last,
        } => (None, 0, Some((chunk_size as u64, is_last))),
        _ => (None, 0, None),
    };
    Some(Other {
        verb,
        address,
        size,
        bdat,
    })
}

/// Checks one complete line (ending in LF).
pub fn check(line: &[u8]) {
    let ours = read_command(line);
    if let Some(theirs) = other(line) {
        let address =
            |a: &Option<Vec<u8>>| a.as_ref().map(|a| String::from_utf8_lossy(a).into_owned());
        let mut our_address = address(&ours.address);
        // smtp-proto reads `<postmaster>` as `<>` (the reference's mismatch
        // 4); an unqualified postmaster is the same mailbox either way.
        if theirs.address.as_deref() == Some("")
            && our_address
                .as_deref()
                .is_some_and(|a| a.eq_ignore_ascii_case("postmaster"))
        {
            our_address = Some(String::new());
        }
        let agree = theirs.verb == ours.verb
            && match theirs.verb {
                "MAIL" => {
                    theirs.address == our_address && theirs.size as u64 == ours.size.unwrap_or(0)
                }
                "RCPT" => theirs.address == our_address,
                "BDAT" => theirs.bdat == ours.bdat,
                _ => true,
            };
        if !agree {
            assert!(
                ours.refusal.is_some(),
                "the engine accepts a line smtp-proto reads otherwise: {:?}: ours {:?}, smtp-proto {} {:?} size {} bdat {:?}",
                String::from_utf8_lossy(line),
                ours,
                theirs.verb,
                theirs.address,
                theirs.size,
                theirs.bdat,
            );
        }
    }
    if ours.refusal.is_some() {
        let mut s = session();
        let mut out = Output::default();
        s.on_client_data(line, Instant::now(), &mut out);
        assert!(
            out.to_server.is_empty(),
            "a refused line reached the server: {:?} ({:?})",
            String::from_utf8_lossy(line),
            ours.refusal
        );
    }
}

/// A session ready for any command: greeting, EHLO with PIPELINING,
/// CHUNKING and SIZE, MAIL and RCPT accepted, a policy without rules.
fn session() -> Session {
    static POLICY: OnceLock<Arc<EsmtpPolicy>> = OnceLock::new();
    let policy = POLICY
        .get_or_init(|| {
            Arc::new(EsmtpPolicy::from_toml("[esmtp]\nmask-banner = false\n").expect("policy"))
        })
        .clone();
    let stats = Arc::new(PolicyStats::new(&policy));
    let peers = Peers {
        client: "198.18.0.1:40000".parse().expect("address"),
        server: "198.18.1.1:25".parse().expect("address"),
    };
    let mut s = Session::new(policy, stats, peers);
    let now = Instant::now();
    let out = &mut Output::default();
    s.on_server_data(b"220 mx ESMTP\r\n", now, out);
    s.on_client_data(b"EHLO c\r\n", now, out);
    s.on_server_data(
        b"250-mx\r\n250-PIPELINING\r\n250-CHUNKING\r\n250 SIZE 100000000\r\n",
        now,
        out,
    );
    s.on_client_data(b"MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\n", now, out);
    s.on_server_data(b"250 ok\r\n250 ok\r\n", now, out);
    s
}
