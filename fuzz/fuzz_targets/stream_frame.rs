//! The TCP/TLS stream framer (Content-Length framing, CRLF keep-alives): the input is cut
//! into the chunks a connection might read, and every frame taken off must be a prefix of
//! what came in; framing never panics or loops.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use sbc::transport::{Frame, next_frame};

fuzz_target!(|data: &[u8]| {
    // The first byte picks the read size, so chunk boundaries fall everywhere.
    let Some((&step, rest)) = data.split_first() else {
        return;
    };
    let step = usize::from(step).max(1);
    let max = 4096;
    let mut buf = BytesMut::new();
    let mut taken = 0usize;
    for chunk in rest.chunks(step) {
        buf.extend_from_slice(chunk);
        // Each frame removes bytes from the buffer, so its length bounds the loop.
        for _ in 0..=buf.len() {
            match next_frame(&mut buf, max) {
                Frame::Message(m) => {
                    assert!(!m.is_empty() && m.len() <= max, "a frame over the limit");
                    taken += m.len();
                }
                Frame::Ping => taken += 4,
                Frame::NeedMore => break,
                Frame::Invalid(_) => return,
            }
        }
        assert!(taken <= rest.len());
    }
});
