//! The shipper's clock: when to try the server again. The agent uses the
//! system's monotonic clock; tests inject a [`ManualClock`] to run hours of
//! retry schedule without sleeping.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// A source of time for the retry schedule.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Now.
    fn now(&self) -> Instant;
    /// Resolve at `deadline` (at once if it passed).
    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn Future<Output = ()> + Send + 'static>>;
}

/// The system's monotonic clock (tokio's timer).
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn Future<Output = ()> + Send + 'static>> {
        Box::pin(tokio::time::sleep_until(deadline))
    }
}

/// A clock that moves only when told to ([`ManualClock::advance`]).
#[derive(Debug, Clone)]
pub struct ManualClock {
    start: Instant,
    offset: Arc<Mutex<Duration>>,
    tick: watch::Sender<Duration>,
}

impl Default for ManualClock {
    fn default() -> Self {
        Self::new()
    }
}

impl ManualClock {
    /// A clock standing at the real "now".
    pub fn new() -> Self {
        Self { start: Instant::now(), offset: Arc::new(Mutex::new(Duration::ZERO)), tick: watch::channel(Duration::ZERO).0 }
    }

    /// Move the clock forward, waking every sleeper whose deadline passed.
    pub fn advance(&self, by: Duration) {
        let mut o = crate::sources::lock(&self.offset);
        *o += by;
        self.tick.send_replace(*o);
    }

    /// Time elapsed on this clock since it was made.
    pub fn elapsed(&self) -> Duration {
        *crate::sources::lock(&self.offset)
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        self.start + self.elapsed()
    }
    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn Future<Output = ()> + Send + 'static>> {
        let mut rx = self.tick.subscribe();
        let start = self.start;
        Box::pin(async move {
            loop {
                if start + *rx.borrow_and_update() >= deadline {
                    return;
                }
                if rx.changed().await.is_err() {
                    return;
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_manual_sleeper_wakes_only_when_the_clock_passes_its_deadline() {
        let c = ManualClock::new();
        let deadline = c.now() + Duration::from_secs(3600);
        let sleeper = tokio::spawn(c.sleep_until(deadline));
        tokio::task::yield_now().await;
        c.advance(Duration::from_secs(1800));
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!sleeper.is_finished());
        c.advance(Duration::from_secs(1800));
        tokio::time::timeout(Duration::from_secs(5), sleeper).await.unwrap().unwrap();
        assert_eq!(c.elapsed(), Duration::from_secs(3600));
    }
}
