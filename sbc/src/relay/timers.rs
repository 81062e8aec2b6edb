//! A hashed timing wheel for transaction timers. Insertion is O(1) and nothing is ever
//! cancelled: a timer that fires for a transaction that moved on is simply ignored, which
//! keeps the hot path free of timer bookkeeping.

use std::sync::Mutex;
use std::time::{Duration, Instant};

pub use super::core::Timer;

/// Resolution of the wheel. SIP timers are hundreds of milliseconds and up.
pub const TICK: Duration = Duration::from_millis(10);
const SLOTS: usize = 4096;

struct Inner {
    slots: Vec<Vec<(u64, Timer)>>,
    /// The next tick to process.
    next: u64,
}

/// The wheel. `advance` is driven by one task.
pub struct Wheel {
    start: Instant,
    inner: Mutex<Inner>,
}

impl Default for Wheel {
    fn default() -> Self {
        Wheel::new()
    }
}

impl Wheel {
    /// An empty wheel starting now.
    pub fn new() -> Wheel {
        Wheel {
            start: Instant::now(),
            inner: Mutex::new(Inner {
                slots: (0..SLOTS).map(|_| Vec::new()).collect(),
                next: 0,
            }),
        }
    }

    fn tick_of(&self, at: Instant) -> u64 {
        (at.saturating_duration_since(self.start).as_millis() / TICK.as_millis()) as u64
    }

    /// Runs `timer` after `delay` (rounded up to the next tick).
    pub fn schedule(&self, delay: Duration, timer: Timer) {
        let due = self.tick_of(Instant::now() + delay) + 1;
        if let Ok(mut w) = self.inner.lock() {
            let due = due.max(w.next);
            let slot = (due % SLOTS as u64) as usize;
            w.slots[slot].push((due, timer));
        }
    }

    /// Takes every timer due by `now`.
    pub fn advance(&self, now: Instant, fired: &mut Vec<Timer>) {
        let target = self.tick_of(now);
        let Ok(mut w) = self.inner.lock() else {
            return;
        };
        // Bound the work of one call even if the task was stalled for long.
        let mut budget = SLOTS as u64;
        while w.next <= target && budget > 0 {
            let t = w.next;
            let slot = (t % SLOTS as u64) as usize;
            let entries = std::mem::take(&mut w.slots[slot]);
            let mut keep = Vec::new();
            for (due, timer) in entries {
                if due <= t {
                    fired.push(timer);
                } else {
                    keep.push((due, timer));
                }
            }
            w.slots[slot] = keep;
            w.next += 1;
            budget -= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fires_in_order_of_due_time_and_long_delays_wrap() {
        let w = Wheel::new();
        w.schedule(
            Duration::from_millis(30),
            Timer::ServerExpire(b"a".to_vec(), 1),
        );
        w.schedule(
            Duration::from_secs(50),
            Timer::ServerExpire(b"b".to_vec(), 2),
        );
        let mut fired = Vec::new();
        w.advance(Instant::now(), &mut fired);
        assert!(fired.is_empty());
        w.advance(Instant::now() + Duration::from_millis(60), &mut fired);
        assert_eq!(fired, vec![Timer::ServerExpire(b"a".to_vec(), 1)]);
        fired.clear();
        // 50 s is more than one turn of the wheel: it must not fire early.
        w.advance(Instant::now() + Duration::from_secs(45), &mut fired);
        assert!(fired.is_empty());
        w.advance(Instant::now() + Duration::from_secs(51), &mut fired);
        assert_eq!(fired, vec![Timer::ServerExpire(b"b".to_vec(), 2)]);
    }
}
