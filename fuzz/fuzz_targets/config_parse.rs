//! Any bytes as a multipath.conf: parsing ends in a configuration or in
//! diagnostics, never a panic or a hang; a configuration that loads is
//! printed (`show config`) and read back to the same print.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    match umpath::config::parse_str(&text, "fuzz.conf") {
        Ok(cfg) => {
            let shown = cfg.render_multipath_t();
            let again = umpath::config::parse_str(&shown, "shown.conf")
                .unwrap_or_else(|e| panic!("the printed configuration does not load:\n{e}\n{shown}"));
            assert_eq!(again.render_multipath_t(), shown);
        }
        Err(e) => {
            assert!(!e.diagnostics.is_empty());
            assert!(e.errors().count() > 0);
        }
    }
});
