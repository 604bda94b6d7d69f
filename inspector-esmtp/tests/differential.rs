//! The differential check of the fuzz target `differential`, on its seed
//! corpus and on every form of the reference's tables: wherever smtp-proto
//! accepts a line and reads its verb, address or BDAT framing otherwise
//! than the engine, the engine refuses it, and a refused line never
//! reaches the server.

#[path = "../fuzz/fuzz_targets/differential_check.rs"]
mod differential_check;

use differential_check::{check, line_of};

#[test]
fn the_seed_corpus_agrees_or_is_refused() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/corpus/differential");
    let mut n = 0;
    for entry in std::fs::read_dir(dir).expect("seed corpus") {
        let data = std::fs::read(entry.expect("entry").path()).expect("seed");
        check(&line_of(&data));
        n += 1;
    }
    assert!(n > 40, "{n} seeds");
}

#[test]
fn smtp_protos_known_mismatches_are_refused() {
    for line in [
        "MA\rIL FROM:<a@b>\r\n",
        "BDAT 1\r2 LAST\r\n",
        "MAIL FROM :<a@b>\r\n",
        "MAIL FROM:<a@b>SIZE=100\r\n",
        "RCPT TO:<>\r\n",
        "BDAT 99999999999999999999999\r\n",
        "BDAT 5 LAST junk\r\n",
        "MAIL FROM:<a@b> SIZE=99999999999999999999999\r\n",
    ] {
        check(line.as_bytes());
        assert!(
            inspector_esmtp::read_command(line.as_bytes())
                .refusal
                .is_some(),
            "{line:?}"
        );
    }
    // Agreement: `<postmaster>` normalised, canonical forms accepted.
    for line in [
        "RCPT TO:<postmaster>\r\n",
        "MAIL FROM:<a@b> SIZE=123 BODY=8BITMIME\r\n",
        "BDAT 0 LAST\r\n",
        "bdat 10 last\r\n",
    ] {
        check(line.as_bytes());
        assert_eq!(
            inspector_esmtp::read_command(line.as_bytes()).refusal,
            None,
            "{line:?}"
        );
    }
}
