//! The Kamailio `dispatcher.list` reader: any text gives sets or an error naming the line,
//! and sets it accepts build a dispatcher without a panic (host names are not resolved: the
//! resolver here refuses every name).
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(sets) = sbc::dispatch::list::parse_str(text, Some("fuzz.list")) else {
        return;
    };
    let cfg = sbc::dispatch::list::dispatcher_config(sets);
    let no_dns: sbc::dispatch::Resolver = Arc::new(|h: &str, _| Err(format!("no DNS for {h}")));
    if let Ok(d) = sbc::dispatch::Dispatcher::with_resolver(&cfg, no_dns) {
        let _ = d.select(d.default_set(), &Default::default(), &[]);
        let _ = d.snapshot();
    }
});
