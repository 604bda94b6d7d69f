//! The replies the engine writes itself. Never a success: the engine only
//! refuses, it never answers for the server. The one text it puts in the
//! server's place is the masked greeting, which names no software.

/// A command the policy does not let through (modern mode).
pub const UNRECOGNIZED: &[u8] = b"500 5.5.1 Command unrecognized\r\n";
/// A command line longer than every mainstream server reads as one line
/// (the session closes after it).
pub const LINE_TOO_LONG: &[u8] = b"500 5.5.2 Line too long\r\n";
/// A command some mainstream server would read differently from the
/// engine (an address form, a BDAT framing, a bare CR or NUL).
pub const SYNTAX: &[u8] = b"501 5.5.4 Syntax error in parameters or arguments\r\n";
/// A BDAT chunk, or BDAT message, bigger than the server's SIZE or 2^31-1
/// (RFC 1870's reply; the session closes after it, since the chunk follows).
pub const TOO_BIG: &[u8] = b"552 5.3.4 Message size exceeds fixed maximum message size\r\n";
/// A final dot next to a bare CR or LF: servers disagree on whether the
/// message ends there. Permanent, as Postfix's `550 5.5.2 ... bare <LF>
/// received` (`smtpd.c`), so the sender does not retry it for days; the
/// session closes after it.
pub const BARE_LINE_END: &[u8] =
    b"550 5.5.2 Message refused: bare CR or LF next to a final dot\r\n";
/// A RCPT past `cmd RCPT count gt N` with `reject-excess-recipients`.
pub const TOO_MANY_RCPTS: &[u8] = b"452 4.5.3 Too many recipients\r\n";
/// A command over its `rate-limit`.
pub const RATE_LIMITED: &[u8] = b"450 4.7.0 Rate limit exceeded, try again later\r\n";
/// A BDAT chunk after one the engine refused, in the same transaction.
pub const CHUNK_AFTER_REFUSAL: &[u8] =
    b"503 5.5.1 Transaction failed: an earlier BDAT chunk was refused\r\n";
/// The policy closes the session (modern mode; compat closes silently).
pub const POLICY_CLOSE: &[u8] = b"421 4.7.0 Connection closed by security policy\r\n";
/// A protocol anomaly closes the session.
pub const PROTOCOL_CLOSE: &[u8] = b"421 4.5.0 Protocol error, closing connection\r\n";

/// The masked greeting of modern mode: `220 <banner-name> ESMTP`.
pub fn banner(banner_name: &str, to: &mut Vec<u8>) {
    to.extend_from_slice(b"220 ");
    to.extend_from_slice(banner_name.as_bytes());
    to.extend_from_slice(b" ESMTP\r\n");
}
