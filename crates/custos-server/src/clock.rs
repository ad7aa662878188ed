//! Time, injectable. Everything that decides by time (token expiry, lockbox
//! requests and grants, audit record times) reads [`Clock`], so tests move
//! time forward instead of sleeping.

use custos_model::TimestampMicros;
use std::sync::atomic::{AtomicI64, Ordering};

/// A source of the current time.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Microseconds since the Unix epoch.
    fn now(&self) -> TimestampMicros;
}

/// The system clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> TimestampMicros {
        custos_model::now_micros()
    }
}

/// A clock that only moves when told (tests).
#[derive(Debug)]
pub struct ManualClock(AtomicI64);

impl ManualClock {
    /// Start at `now`.
    pub fn new(now: TimestampMicros) -> Self {
        ManualClock(AtomicI64::new(now))
    }
    /// Move forward (or back) by `micros`.
    pub fn advance(&self, micros: i64) {
        self.0.fetch_add(micros, Ordering::SeqCst);
    }
    /// Set the time.
    pub fn set(&self, now: TimestampMicros) {
        self.0.store(now, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> TimestampMicros {
        self.0.load(Ordering::SeqCst)
    }
}
