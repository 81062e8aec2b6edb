//! Wall-clock time that every replica agrees on (window and bucket numbers, nonce dates) and
//! that paused tokio time drives in tests.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

/// Unix time read as "Unix time at start + tokio time elapsed since", so that replicas share
/// one timeline (NTP) while tests can pause and advance it with `tokio::time`.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    unix_at_start: Duration,
    start: Instant,
}

impl Default for Clock {
    fn default() -> Self {
        Clock::new()
    }
}

impl Clock {
    /// A clock reading the system time now.
    pub fn new() -> Clock {
        Clock::at(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default(),
        )
    }

    /// A clock that reads `unix` now (tests).
    pub fn at(unix: Duration) -> Clock {
        Clock {
            unix_at_start: unix,
            start: Instant::now(),
        }
    }

    /// Milliseconds since the Unix epoch.
    pub fn now_ms(&self) -> u64 {
        let d = self.unix_at_start.saturating_add(self.start.elapsed());
        u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
    }

    /// Seconds since the Unix epoch.
    pub fn now_secs(&self) -> u64 {
        self.now_ms() / 1000
    }
}
