//! Any bytes as transmission-phase requests: header decoding and request
//! validation against an export never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    umpath::nbd::proto::fuzz_request(data);
});
