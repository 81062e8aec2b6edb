//! The throttle stage (DESIGN.md step 5).

mod clock;

pub use clock::Clock;
