//! Fuzzed client bytes against a scripted server.
#![no_main]

mod harness;

use libfuzzer_sys::fuzz_target;

const SERVER: &[&[u8]] = &[
    b"220 mx.example ESMTP\r\n",
    b"250-mx.example\r\n250-PIPELINING\r\n250-CHUNKING\r\n250-SIZE 100\r\n250-STARTTLS\r\n250-AUTH PLAIN\r\n250 X-LINK2STATE\r\n",
    b"250 2.1.0 Ok\r\n",
    b"354 go ahead\r\n",
    b"334 VXNlcm5hbWU6\r\n",
    b"550 5.1.1 unknown\r\n250 ok\r\n",
    b"220 2.0.0 Ready to start TLS\r\n",
];

fuzz_target!(|data: &[u8]| harness::run(data, true, SERVER));
