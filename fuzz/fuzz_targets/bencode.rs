//! The bencode decoder of rtpengine's ng replies (from the network), and re-encoding what it
//! accepted: decode(encode(v)) must give v back.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use sbc::media::bencode::{Limits, decode, encode};

fuzz_target!(|data: &[u8]| {
    let input = Bytes::copy_from_slice(data);
    if let Ok(v) = decode(&input, Limits::default()) {
        let again = Bytes::from(encode(&v));
        assert_eq!(decode(&again, Limits::default()).ok(), Some(v));
    }
});
