//! Fuzzed server bytes against a scripted client.
#![no_main]

mod harness;

use libfuzzer_sys::fuzz_target;

const CLIENT: &[&[u8]] = &[
    b"EHLO client.example\r\n",
    b"MAIL FROM:<a@x> SIZE=10\r\nRCPT TO:<b@y>\r\nDATA\r\n",
    b"Subject: s\r\n\r\nbody\r\n.\r\n",
    b"BDAT 5 LAST\r\nhello",
    b"AUTH LOGIN\r\n",
    b"dXNlcg==\r\n",
    b"STARTTLS\r\n",
    b"QUIT\r\n",
];

fuzz_target!(|data: &[u8]| harness::run(data, false, CLIENT));
