//! What a session saw (`Session::record`), for the proxy's session record:
//! the HELO name, each transaction's MAIL FROM, recipients, size and the
//! server's final reply, pipelined or not, DATA and BDAT.
//!
//! Transcripts: each script runs whole-write and byte by byte
//! (`common::both`).

mod common;

use common::{both, modern};
use inspector_esmtp::{MAX_TRANSACTIONS, SESSION_MEMORY_BOUND, TransactionRecord};

fn tx(from: &str, recipients: u64, size: Option<u64>, reply: Option<&str>) -> TransactionRecord {
    TransactionRecord {
        mail_from: from.into(),
        recipients,
        size,
        reply: reply.map(Into::into),
    }
}

#[test]
fn two_transactions_one_with_three_recipients() {
    both(modern, |t| {
        t.hello(&["PIPELINING"]);
        assert_eq!(t.session.record().helo.as_deref(), Some("client.example"));
        t.pass("MAIL FROM:<a@client.example> SIZE=10\r\n")
            .reply("250 2.1.0 Ok\r\n");
        for r in ["x", "y", "z"] {
            t.pass(&format!("RCPT TO:<{r}@server.example>\r\n"))
                .reply("250 2.1.5 Ok\r\n");
        }
        t.pass("DATA\r\n").reply("354 go\r\n");
        t.pass("Subject: one\r\n\r\nbody\r\n.\r\n")
            .reply("250 2.0.0 Ok: queued as 1A\r\n");
        // Pipelined: the null reverse path, one recipient, a refused message.
        t.c("MAIL FROM:<>\r\nRCPT TO:<w@server.example>\r\nDATA\r\n");
        t.take_server();
        t.s("250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 go\r\n")
            .client_got("250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 go\r\n");
        t.pass("Subject: two\r\n\r\n.\r\n")
            .reply("554-5.7.1 Rejected\r\n554 5.7.1 for a reason\r\n");
        let r = t.session.record();
        assert_eq!(
            r.transactions,
            [
                tx(
                    "a@client.example",
                    3,
                    Some(22),
                    Some("250 2.0.0 Ok: queued as 1A")
                ),
                tx("", 1, Some(16), Some("554 5.7.1 for a reason")),
            ]
        );
        assert_eq!(r.more_transactions, 0);
    });
}

#[test]
fn a_transaction_without_a_message_and_bdat() {
    both(modern, |t| {
        t.hello(&["CHUNKING"]);
        t.pass("MAIL FROM:<a@client.example>\r\n")
            .reply("250 Ok\r\n");
        t.pass("RSET\r\n").reply("250 Ok\r\n");
        t.pass("MAIL FROM:<b@client.example>\r\n")
            .reply("250 Ok\r\n");
        t.pass("RCPT TO:<x@server.example>\r\n").reply("250 Ok\r\n");
        t.pass("BDAT 5 LAST\r\nhello").reply("250 2.0.0 queued\r\n");
        assert_eq!(
            t.session.record().transactions,
            [
                tx("a@client.example", 0, None, None),
                tx("b@client.example", 1, Some(5), Some("250 2.0.0 queued")),
            ]
        );
    });
}

#[test]
fn transactions_past_the_limit_are_counted_and_memory_stays_bounded() {
    both(modern, |t| {
        t.hello(&[]);
        let long = vec!["l".repeat(50); 4].join(".");
        for _ in 0..MAX_TRANSACTIONS + 3 {
            t.pass(&format!("MAIL FROM:<a@{long}.example>\r\n"))
                .reply("250 Ok\r\n");
            t.pass("RSET\r\n").reply("250 Ok\r\n");
        }
        let r = t.session.record();
        assert_eq!(r.transactions.len(), MAX_TRANSACTIONS);
        assert_eq!(r.more_transactions, 3);
        assert!(r.transactions[0].mail_from.len() < 200, "cut to an excerpt");
        assert!(t.session.heap_bytes() < SESSION_MEMORY_BOUND);
    });
}
