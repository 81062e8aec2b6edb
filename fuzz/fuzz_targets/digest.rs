//! The digest credentials parser (Authorization / Proxy-Authorization values from peers).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(c) = sbc::auth::digest::parse_credentials(data) {
        let _ = sbc::auth::digest::algorithm(c.algorithm);
    }
});
