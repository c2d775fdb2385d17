//! Any text as an NBD URI (the `uri` of an `nbd` path): a URI or a clear
//! error, and a parsed URI prints back to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use umpath::nbd::uri::NbdUri;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(u) = NbdUri::parse(&text) {
        let again = NbdUri::parse(&u.to_string()).expect("a printed URI parses");
        assert_eq!(again, u);
    }
});
