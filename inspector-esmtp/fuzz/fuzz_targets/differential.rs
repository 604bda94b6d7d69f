//! One fuzzed command line read by the engine and by smtp-proto: where
//! they disagree on the verb, the address or BDAT's framing, the engine
//! must refuse it (see `differential_check`).
#![no_main]

mod differential_check;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| differential_check::check(&differential_check::line_of(data)));
