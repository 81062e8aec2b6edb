//! The transaction timers (RFC 3261 section 17, table 4) and what firing each one does.

use super::{Action, Core, Env};

/// A transaction timer: which transaction (map key and id) and what to do. Nothing is ever
/// cancelled: a timer for a transaction that moved on (another id, or gone) is ignored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Timer {
    /// Retransmit a request over UDP (timers A and E).
    ClientRetransmit(Vec<u8>, u64),
    /// No (final, for non-INVITE) reply in time: fail over or answer 408 (fr_timer, B, F).
    ClientNoReply(Vec<u8>, u64),
    /// An INVITE rang too long: cancel it (fr_inv_timer, C).
    ClientRing(Vec<u8>, u64),
    /// Forget a completed client transaction (timers D and K).
    ClientExpire(Vec<u8>, u64),
    /// Retransmit a final non-2xx response over UDP until the ACK (timer G).
    ServerRetransmit(Vec<u8>, u64),
    /// Forget a server transaction (timers H, I, J, L).
    ServerExpire(Vec<u8>, u64),
}

impl Core {
    /// `timer` fired.
    pub fn on_timer(&self, env: &Env<'_>, timer: Timer, out: &mut Vec<Action>) {
        match timer {
            Timer::ClientRetransmit(key, id) => self.client_retransmit(env, key, id, out),
            Timer::ClientNoReply(key, id) => self.client_failed(env, &key, Some(id), out),
            Timer::ClientRing(key, id) => self.client_ring(env, key, id, out),
            Timer::ClientExpire(key, id) => {
                let mut st = self.lock();
                if st.client.get(&key).is_some_and(|c| c.id == id) {
                    st.client.remove(&key);
                }
            }
            Timer::ServerRetransmit(key, id) => self.server_retransmit(env, key, id, out),
            Timer::ServerExpire(key, id) => self.server_expire(&mut self.lock(), &key, id),
        }
    }
}
