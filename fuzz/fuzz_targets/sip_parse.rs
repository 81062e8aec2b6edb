//! The SIP parser and everything that reads its parsed view of a request from a peer:
//! sanity checks, URI, name-addr and Via views, header value splitting. Never a panic,
//! whatever the bytes.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use sbc::sip::uri::{self, Uri, Via};
use sbc::sip::{HeaderName, Message};

fuzz_target!(|data: &[u8]| {
    let Ok(m) = Message::parse(Bytes::copy_from_slice(data), 65535) else {
        return;
    };
    let _ = m.cseq();
    let _ = m.call_id();
    let _ = Uri::parse(m.request_uri()).map(|u| (u.param("transport"), u.is_sip()));
    for name in [HeaderName::Via, HeaderName::Route, HeaderName::RecordRoute, HeaderName::Contact] {
        for v in m.values(name) {
            let v = m.slice(v);
            let _ = Via::parse(v).map(|v| v.branch());
            let _ = Uri::parse(uri::name_addr_uri(v));
            let _ = uri::tag(v);
        }
    }
    for name in [HeaderName::From, HeaderName::To] {
        if let Some(v) = m.header_value(name) {
            let _ = uri::tag(v);
            let _ = Uri::parse(uri::name_addr_uri(v));
        }
    }
    if m.is_request() {
        let _ = sbc::sanity::check_request(&m);
        let _ = sbc::guard::extensions::unsupported(&m);
    }
});
