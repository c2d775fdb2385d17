//! Any bytes as a client's side of the NBD handshake: the client flags,
//! then option headers and payloads. Decoding ends in a value or an
//! error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    umpath::nbd::proto::fuzz_option(data);
});
