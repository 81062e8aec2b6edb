//! The tap sees every message received and sent, with direction, peer and local address.

use std::net::UdpSocket;
use std::time::Duration;

use super::*;
use crate::telemetry::Direction;

struct Sink;
impl Inbound for Sink {
    fn on_message(&self, _: Bytes, _: Peer) {}
    fn on_send_error(&self, _: Vec<u8>) {}
    fn on_dropped(&self, _: &'static str) {}
    fn on_framing_lost(&self, _: Bytes, _: &'static str, _: Peer) {}
}

struct Collect(Arc<Mutex<Vec<TapEvent>>>);
impl Tap for Collect {
    fn tap(&self, e: TapEvent) {
        self.0.lock().unwrap().push(e);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn the_tap_sees_udp_in_and_out_with_both_addresses() {
    let l = Listener {
        transport: Transport::Udp,
        address: "127.0.0.1:0".parse().unwrap(),
        ..Listener::default()
    };
    let inbound: Arc<dyn Inbound> = Arc::new(Sink);
    let t = Transports::bind(&[l], &Limits::default(), 1, inbound.clone())
        .await
        .unwrap();
    let local = t.local_addrs()[0].1;
    let seen = Arc::new(Mutex::new(Vec::new()));
    t.set_tap(Some(Box::new(Collect(seen.clone()))));
    let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
    peer.send_to(b"OPTIONS sip:x SIP/2.0\r\n\r\n", local)
        .unwrap();
    let to = Peer {
        transport: Transport::Udp,
        addr: peer.local_addr().unwrap(),
        flow: None,
    };
    t.send(
        &to,
        Bytes::from_static(b"SIP/2.0 200 OK\r\n\r\n"),
        None,
        &inbound,
    );
    for _ in 0..100 {
        if seen.lock().unwrap().len() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let seen = seen.lock().unwrap();
    let dirs: Vec<_> = seen
        .iter()
        .map(|e| (e.direction, e.peer.addr, e.local))
        .collect();
    assert!(
        dirs.contains(&(Direction::In, to.addr, Some(local))),
        "{dirs:?}"
    );
    assert!(
        dirs.contains(&(Direction::Out, to.addr, Some(local))),
        "{dirs:?}"
    );
    let out = seen.iter().find(|e| e.direction == Direction::Out).unwrap();
    assert_eq!(&out.data[..], b"SIP/2.0 200 OK\r\n\r\n");
}
