//! What a WebSocket client sends after the upgrade (frames, masks, lengths, opcodes, UTF-8),
//! read with the limits of a ws/wss listener; and the upgrade request itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sbc::transport::ws_rules::{UpgradeRules, decide, replay};

fuzz_target!(|data: &[u8]| {
    let limits = sbc::config::Limits {
        // Small, so the fuzzer reaches the size limit with short inputs too.
        max_message_bytes: 2048,
        ..Default::default()
    };
    let r = replay(data, &limits);
    assert!(r.messages <= data.len());
    if let Some(code) = r.close {
        assert!(matches!(code, 1002 | 1007 | 1009), "close code {code}");
    }
    let _ = decide(data, &UpgradeRules::default());
    let _ = decide(
        data,
        &UpgradeRules {
            path: Some("/ws".into()),
            origins: vec!["https://app.example.com".into()],
        },
    );
});
