//! Shipping batches: one POST per attempt over mutual TLS, and when to try
//! again. The run loop (`run.rs`) drives the attempts, because it gates a
//! batch again before each one. A batch keeps its id across retries, so the
//! server stores it once however often it arrives.
//!
//! # Retry schedule
//!
//! [`RetrySchedule`] decides how long to wait after a failed attempt. It is
//! pure: the caller passes the number of failures, the time since the first
//! one, and a random generator, so the whole schedule is tested without a
//! clock. The default follows common agent practice (quick backoff, then a
//! steady cadence, then hourly for as long as data is queued):
//!
//! | phase | when | delay (default) | jitter |
//! |---|---|---|---|
//! | backoff | while `initial × 2^(failures−1)` < `max_backoff` | 1 s, 2 s, 4 s … 256 s | uniform in [d/2, d] |
//! | steady | then, until `steady_until` after the first failure | every 8 min | ± 10 % |
//! | slow | after that, for as long as the batch is queued | every hour | ± 10 % |
//!
//! Jitter keeps a fleet that lost its server at the same moment from coming
//! back in step. Over a 3-hour outage the default makes 9 backoff attempts
//! (4 to 8½ minutes in all), 13 to 17 steady ones, then one an hour.
//!
//! A server that answers 429 or 503 with `Retry-After` is obeyed instead of
//! the schedule: both forms (delta-seconds and HTTP-date, see
//! [`parse_retry_after`]) are understood, the wait is at least `initial`
//! (so `Retry-After: 0` cannot make a busy loop) and at most
//! `max_retry_after` (so a broken header cannot park the agent for days),
//! plus up to 10 % so the agents told the same thing do not return together.
//!
//! `give_up_after` is for `custos agent run --once`: stop retrying once that
//! long has passed since the first failure. By default the agent never gives up
//! (a batch leaves the queue only when acknowledged or dead-lettered).

use crate::error::{error_chain, AgentError};
use crate::identity::refused;
use custos_model::api::IngestAck;
use custos_model::wire;
use rand::Rng;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Jitter of the steady and slow phases, as a fraction of the interval (± 10 %).
pub const STEADY_JITTER: f64 = 0.10;
/// Extra wait added to a server's Retry-After, at most this fraction of it.
pub const RETRY_AFTER_JITTER: f64 = 0.10;

/// Default [`RetrySchedule::initial`]: 1 s.
pub const DEFAULT_INITIAL_DELAY: Duration = Duration::from_secs(1);
/// Default [`RetrySchedule::max_backoff`]: 8 minutes.
pub const DEFAULT_MAX_BACKOFF: Duration = Duration::from_secs(8 * 60);
/// Default [`RetrySchedule::steady_interval`]: 8 minutes.
pub const DEFAULT_STEADY_INTERVAL: Duration = Duration::from_secs(8 * 60);
/// Default [`RetrySchedule::steady_until`]: 2 hours.
pub const DEFAULT_STEADY_UNTIL: Duration = Duration::from_secs(2 * 3600);
/// Default [`RetrySchedule::slow_interval`]: 1 hour.
pub const DEFAULT_SLOW_INTERVAL: Duration = Duration::from_secs(3600);
/// Default [`RetrySchedule::max_retry_after`]: 1 hour.
pub const DEFAULT_MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// Which part of the schedule a delay comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Exponential backoff with full jitter in [d/2, d].
    Backoff,
    /// Every `steady_interval` (± 10 %) until `steady_until`.
    Steady,
    /// Every `slow_interval` (± 10 %) from then on.
    Slow,
}

/// When to try a failed batch again. See the module documentation; the
/// `[retry]` section of the agent configuration is one
/// ([`crate::config::AgentConfig::retry`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetrySchedule {
    /// Delay after the first failure (the backoff's start).
    pub initial: Duration,
    /// The backoff doubles from `initial` while it is below this; from then
    /// on the steady phase applies.
    pub max_backoff: Duration,
    /// Delay of the steady phase.
    pub steady_interval: Duration,
    /// The steady phase ends this long after the first failure.
    pub steady_until: Duration,
    /// Delay of the slow phase.
    pub slow_interval: Duration,
    /// Longest wait a server's Retry-After can impose.
    pub max_retry_after: Duration,
    /// Give up (an error) once this long has passed since the first failure;
    /// `None` retries for as long as it takes.
    pub give_up_after: Option<Duration>,
}

impl Default for RetrySchedule {
    fn default() -> Self {
        Self {
            initial: DEFAULT_INITIAL_DELAY,
            max_backoff: DEFAULT_MAX_BACKOFF,
            steady_interval: DEFAULT_STEADY_INTERVAL,
            steady_until: DEFAULT_STEADY_UNTIL,
            slow_interval: DEFAULT_SLOW_INTERVAL,
            max_retry_after: DEFAULT_MAX_RETRY_AFTER,
            give_up_after: None,
        }
    }
}

impl RetrySchedule {
    /// The backoff delay before jitter after `failures` failures (at least 1):
    /// `initial × 2^(failures−1)`, saturating.
    fn backoff_base(&self, failures: u32) -> Duration {
        let doublings = failures.max(1) - 1;
        match 1u32.checked_shl(doublings) {
            Some(factor) if doublings < 32 => self.initial.checked_mul(factor).unwrap_or(Duration::MAX),
            _ => Duration::MAX,
        }
    }

    /// The phase after `failures` consecutive failures (counting the one
    /// that just happened), `since_first_failure` after the first of them.
    pub fn phase(&self, failures: u32, since_first_failure: Duration) -> Phase {
        if self.backoff_base(failures) < self.max_backoff {
            Phase::Backoff
        } else if since_first_failure < self.steady_until {
            Phase::Steady
        } else {
            Phase::Slow
        }
    }

    /// How long to wait after `failures` consecutive failed attempts (at
    /// least 1: the one that just failed), `since_first_failure` after the
    /// first of them. Jittered with `rng` as documented on the module.
    pub fn delay(&self, failures: u32, since_first_failure: Duration, rng: &mut impl Rng) -> Duration {
        self.delay_at(failures, since_first_failure, rng.gen::<f64>())
    }

    /// [`RetrySchedule::delay`] with the random draw given: `unit` in
    /// [0, 1] picks the point in the jitter range (0 the shortest, 1 the
    /// longest, 0.5 the middle). For tests and simulations.
    pub fn delay_at(&self, failures: u32, since_first_failure: Duration, unit: f64) -> Duration {
        let u = if unit.is_finite() { unit.clamp(0.0, 1.0) } else { 0.5 };
        match self.phase(failures, since_first_failure) {
            Phase::Backoff => {
                let d = self.backoff_base(failures);
                d / 2 + (d / 2).mul_f64(u)
            }
            Phase::Steady => self.steady_interval.mul_f64(1.0 - STEADY_JITTER + 2.0 * STEADY_JITTER * u),
            Phase::Slow => self.slow_interval.mul_f64(1.0 - STEADY_JITTER + 2.0 * STEADY_JITTER * u),
        }
    }

    /// How long to wait when the server sent `Retry-After`: what it asked,
    /// at least [`RetrySchedule::initial`] and at most
    /// [`RetrySchedule::max_retry_after`], plus up to 10 % of that.
    pub fn honour_retry_after(&self, retry_after: Duration, rng: &mut impl Rng) -> Duration {
        self.honour_retry_after_at(retry_after, rng.gen::<f64>())
    }

    /// [`RetrySchedule::honour_retry_after`] with the random draw given (`unit` in [0, 1]).
    pub fn honour_retry_after_at(&self, retry_after: Duration, unit: f64) -> Duration {
        let u = if unit.is_finite() { unit.clamp(0.0, 1.0) } else { 0.5 };
        let d = retry_after.min(self.max_retry_after).max(self.initial.min(self.max_retry_after));
        d + d.mul_f64(RETRY_AFTER_JITTER * u)
    }

    /// The wait after a failed attempt: the server's Retry-After when it
    /// sent one ([`RetrySchedule::honour_retry_after`]), else the schedule
    /// ([`RetrySchedule::delay`]).
    pub fn pause(&self, failures: u32, since_first_failure: Duration, retry_after: Option<Duration>, rng: &mut impl Rng) -> Duration {
        match retry_after {
            Some(ra) => self.honour_retry_after(ra, rng),
            None => self.delay(failures, since_first_failure, rng),
        }
    }

    /// Whether to stop retrying, `since_first_failure` after the first failure.
    pub fn gives_up(&self, since_first_failure: Duration) -> bool {
        self.give_up_after.is_some_and(|g| since_first_failure >= g)
    }
}

/// Sends batch frames to one server.
#[derive(Clone, Debug)]
pub struct Shipper {
    client: reqwest::Client,
    server: String,
}

/// The outcome of one attempt.
#[derive(Debug)]
pub enum Attempt {
    /// Acknowledged.
    Acked(IngestAck),
    /// Failed; worth retrying (network, 5xx, 408, 429), with the server's
    /// Retry-After if it sent one (either form, as a wait from the moment
    /// the answer arrived; not yet capped: see
    /// [`RetrySchedule::honour_retry_after`]).
    Retry(AgentError, Option<Duration>),
    /// Refused for good (another 4xx): retrying the same bytes cannot help.
    Permanent(AgentError),
}

impl Shipper {
    /// A shipper for `server` using `client` (which presents the agent certificate).
    pub fn new(client: reqwest::Client, server: &str) -> Self {
        Self { client, server: server.trim_end_matches('/').to_string() }
    }

    /// The HTTP client (it presents the agent certificate).
    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// One attempt to deliver a frame.
    pub async fn send_once(&self, frame: &[u8]) -> Attempt {
        let url = format!("{}/v1/ingest", self.server);
        let resp = self
            .client
            .post(&url)
            .header(reqwest::header::CONTENT_TYPE, wire::CONTENT_TYPE)
            .body(frame.to_vec())
            .send()
            .await;
        let resp = match resp {
            Ok(r) => r,
            Err(e) => return Attempt::Retry(AgentError::Unreachable { url: self.server.clone(), reason: error_chain(&e) }, None),
        };
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, SystemTime::now()));
        let body = match resp.bytes().await {
            Ok(b) => b,
            Err(e) => return Attempt::Retry(AgentError::Unreachable { url: self.server.clone(), reason: error_chain(&e) }, None),
        };
        match status {
            200..=299 => match serde_json::from_slice::<IngestAck>(&body) {
                Ok(ack) => Attempt::Acked(ack),
                Err(e) => Attempt::Retry(AgentError::Invalid(format!("invalid acknowledgement from server: {e}")), None),
            },
            408 | 429 | 500..=599 => Attempt::Retry(refused(status, &body), retry_after),
            _ => Attempt::Permanent(refused(status, &body)),
        }
    }
}

/// Whether a permanent refusal with this status is about the batch itself
/// (its bytes will never be accepted: keep it as a dead letter) rather than
/// about the agent or the address (401, 403: the certificate; 404, 421: the
/// URL; 407: a proxy), where the same batch would be accepted once the agent
/// is fixed and should stay queued. Statuses the shipper retries (408, 429,
/// 5xx) are not refusals at all.
pub fn refuses_the_batch(status: u16) -> bool {
    (400..500).contains(&status) && !matches!(status, 401 | 403 | 404 | 407 | 408 | 421 | 429)
}

/// Parse a `Retry-After` header value (RFC 9110 §10.2.3) into a wait from
/// `now`: either delta-seconds (`120`) or an HTTP-date in any of its three
/// forms (§5.6.7): IMF-fixdate `Sun, 06 Nov 1994 08:49:37 GMT`, the
/// obsolete RFC 850 `Sunday, 06-Nov-94 08:49:37 GMT` and asctime
/// `Sun Nov  6 08:49:37 1994`. A date in the past means no wait. `None` for
/// anything else. The result is not capped; callers cap it
/// ([`RetrySchedule::honour_retry_after`]).
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let v = value.trim();
    if v.is_empty() {
        return None;
    }
    if v.bytes().all(|b| b.is_ascii_digit()) {
        // More digits than a u64 holds is still "a very long time".
        return Some(Duration::from_secs(v.parse::<u64>().unwrap_or(u64::MAX)));
    }
    let now_secs = now.duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
    let at = parse_http_date(v, now_secs)?;
    Some(Duration::from_secs(u64::try_from(at.saturating_sub(now_secs)).unwrap_or(0)))
}

const WEEKDAYS: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
const WEEKDAYS_LONG: [&str; 7] = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"];
const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];

/// An HTTP-date as Unix seconds. `now_secs` resolves the two-digit year of
/// the RFC 850 form: a year more than 50 years in the future is the most
/// recent past year with the same last two digits (RFC 9110 §5.6.7).
fn parse_http_date(s: &str, now_secs: i64) -> Option<i64> {
    let month = |m: &str| MONTHS.iter().position(|x| *x == m).map(|i| i as u8 + 1);
    let digits = |t: &str, n: usize| -> Option<u32> {
        (t.len() == n && t.bytes().all(|b| b.is_ascii_digit())).then(|| t.parse().ok()).flatten()
    };
    let clock = |t: &str| -> Option<(u8, u8, u8)> {
        let mut it = t.split(':');
        let (h, m, s) = (it.next()?, it.next()?, it.next()?);
        if it.next().is_some() {
            return None;
        }
        Some((digits(h, 2)? as u8, digits(m, 2)? as u8, digits(s, 2)? as u8))
    };
    if let Some((day_name, rest)) = s.split_once(", ") {
        if WEEKDAYS.contains(&day_name) {
            // IMF-fixdate: 06 Nov 1994 08:49:37 GMT
            let p: Vec<&str> = rest.split(' ').collect();
            let [d, mon, y, t, "GMT"] = p.as_slice() else { return None };
            return unix_seconds(digits(y, 4)? as i32, month(mon)?, digits(d, 2)? as u8, clock(t)?);
        }
        if WEEKDAYS_LONG.contains(&day_name) {
            // RFC 850: 06-Nov-94 08:49:37 GMT
            let p: Vec<&str> = rest.split(' ').collect();
            let [date, t, "GMT"] = p.as_slice() else { return None };
            let dp: Vec<&str> = date.split('-').collect();
            let [d, mon, yy] = dp.as_slice() else { return None };
            let yy = digits(yy, 2)? as i32;
            let this_year = time::OffsetDateTime::from_unix_timestamp(now_secs).map(|t| t.year()).unwrap_or(1970);
            let mut year = this_year - this_year.rem_euclid(100) + yy;
            if year > this_year + 50 {
                year -= 100;
            }
            return unix_seconds(year, month(mon)?, digits(d, 2)? as u8, clock(t)?);
        }
        return None;
    }
    // asctime: Sun Nov  6 08:49:37 1994 (the day is padded with a space).
    let (day_name, rest) = s.split_once(' ')?;
    if !WEEKDAYS.contains(&day_name) {
        return None;
    }
    let (mon, rest) = rest.split_once(' ')?;
    let (day, rest) = match rest.strip_prefix(' ') {
        Some(r) => (digits(r.get(..1)?, 1)?, r.get(1..)?),
        None => (digits(rest.get(..2)?, 2)?, rest.get(2..)?),
    };
    let p: Vec<&str> = rest.strip_prefix(' ')?.split(' ').collect();
    let [t, y] = p.as_slice() else { return None };
    unix_seconds(digits(y, 4)? as i32, month(mon)?, day as u8, clock(t)?)
}

fn unix_seconds(year: i32, month: u8, day: u8, (h, m, s): (u8, u8, u8)) -> Option<i64> {
    let month = time::Month::try_from(month).ok()?;
    let date = time::Date::from_calendar_date(year, month, day).ok()?;
    // A leap second (…:60) is read as the second before it.
    let t = time::Time::from_hms(h, m, s.min(59)).ok()?;
    Some(time::PrimitiveDateTime::new(date, t).assume_utc().unix_timestamp())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::{Rng, SeedableRng};

    /// One simulated outage: the server is down for `outage`; the batch
    /// fails at time 0 and at every retry until then. Returns the waits
    /// chosen during the outage with the phase and the failure count each
    /// came from. The clock is the sum of the waits: nothing sleeps.
    fn simulate(s: &RetrySchedule, outage: Duration, mut draw: impl FnMut() -> f64) -> Vec<(Phase, u32, Duration)> {
        let mut now = Duration::ZERO;
        let mut failures = 0u32;
        let mut waits = Vec::new();
        while now < outage {
            failures += 1;
            let d = s.delay_at(failures, now, draw());
            waits.push((s.phase(failures, now), failures, d));
            now += d;
        }
        waits
    }

    fn count(waits: &[(Phase, u32, Duration)], phase: Phase) -> usize {
        waits.iter().filter(|w| w.0 == phase).count()
    }

    #[test]
    fn a_three_hour_outage_gets_nine_backoff_retries_then_every_eight_minutes_then_hourly() {
        let s = RetrySchedule::default();
        // Midpoint jitter: backoff waits are 3/4 of 1, 2, … 256 s (383.25 s
        // in all); then 8 minutes while under 2 hours; then an hour.
        let waits = simulate(&s, Duration::from_secs(3 * 3600), || 0.5);
        assert_eq!(count(&waits, Phase::Backoff), 9);
        assert_eq!(count(&waits, Phase::Steady), 15);
        assert_eq!(count(&waits, Phase::Slow), 1);
        let backoff: Vec<Duration> = waits.iter().filter(|w| w.0 == Phase::Backoff).map(|w| w.2).collect();
        let expected: Vec<Duration> = (0..9).map(|i| Duration::from_secs(1 << i).mul_f64(0.75)).collect();
        assert_eq!(backoff, expected);
        assert!(waits.iter().filter(|w| w.0 == Phase::Steady).all(|w| w.2 == Duration::from_secs(480)));
        assert_eq!(waits.last().map(|w| (w.0, w.2)), Some((Phase::Slow, Duration::from_secs(3600))));
        // The phases come in order and never go back.
        let phases: Vec<Phase> = waits.iter().map(|w| w.0).collect();
        let mut sorted = phases.clone();
        sorted.sort_by_key(|p| *p as u8);
        assert_eq!(phases, sorted);

        // A whole day: hourly after the first two hours.
        let day = simulate(&s, Duration::from_secs(24 * 3600), || 0.5);
        assert_eq!(count(&day, Phase::Slow), 22);
    }

    proptest! {
        #[test]
        fn any_jitter_keeps_the_three_hour_outage_within_the_schedule(seed in any::<u64>()) {
            let s = RetrySchedule::default();
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let waits = simulate(&s, Duration::from_secs(3 * 3600), || rng.gen::<f64>());
            prop_assert_eq!(count(&waits, Phase::Backoff), 9);
            // 2 h less at most 511 s of backoff, in steps of 432 to 528 s.
            let steady = count(&waits, Phase::Steady);
            prop_assert!((13..=17).contains(&steady), "{} steady waits", steady);
            let slow = count(&waits, Phase::Slow);
            prop_assert!((1..=2).contains(&slow), "{} slow waits", slow);
            for (phase, failures, d) in waits {
                match phase {
                    Phase::Backoff => {
                        let base = Duration::from_secs(1 << (failures - 1));
                        prop_assert!(d >= base / 2 && d <= base, "failure {} waited {:?}", failures, d);
                    }
                    Phase::Steady => prop_assert!(d >= Duration::from_secs(432) && d <= Duration::from_secs(528), "{:?}", d),
                    Phase::Slow => prop_assert!(d >= Duration::from_secs(3240) && d <= Duration::from_secs(3960), "{:?}", d),
                }
            }
        }

        #[test]
        fn delays_stay_within_their_jitter_bounds(failures in 0u32..200, since in 0u64..100_000, u in any::<f64>()) {
            let s = RetrySchedule::default();
            let since = Duration::from_secs(since);
            let d = s.delay_at(failures, since, u);
            match s.phase(failures, since) {
                Phase::Backoff => {
                    let base = s.initial * (1u32 << failures.max(1).saturating_sub(1).min(31));
                    prop_assert!(base < s.max_backoff);
                    prop_assert!(d >= base / 2 && d <= base);
                }
                Phase::Steady => prop_assert!(d >= s.steady_interval.mul_f64(0.9) && d <= s.steady_interval.mul_f64(1.1)),
                Phase::Slow => prop_assert!(d >= s.slow_interval.mul_f64(0.9) && d <= s.slow_interval.mul_f64(1.1)),
            }
            let mut rng = rand::rngs::StdRng::seed_from_u64(since.as_secs());
            let r = s.delay(failures, since, &mut rng);
            prop_assert!(r <= s.slow_interval.mul_f64(1.1).max(s.steady_interval.mul_f64(1.1)).max(s.max_backoff));
        }

        #[test]
        fn honoured_retry_after_is_never_early_never_past_the_cap_plus_ten_percent(secs in any::<u64>(), u in 0.0f64..=1.0) {
            let s = RetrySchedule::default();
            let ra = Duration::from_secs(secs);
            let d = s.honour_retry_after_at(ra, u);
            let asked = ra.min(s.max_retry_after).max(s.initial);
            prop_assert!(d >= asked);
            prop_assert!(d <= asked.mul_f64(1.0 + RETRY_AFTER_JITTER));
        }

        #[test]
        fn every_imf_fixdate_parses_back_to_its_time(t in 0i64..253_402_300_799) {
            let dt = time::OffsetDateTime::from_unix_timestamp(t).unwrap();
            let text = format!(
                "{}, {:02} {} {:04} {:02}:{:02}:{:02} GMT",
                WEEKDAYS[dt.weekday().number_days_from_monday() as usize],
                dt.day(),
                MONTHS[u8::from(dt.month()) as usize - 1],
                dt.year(),
                dt.hour(),
                dt.minute(),
                dt.second()
            );
            prop_assert_eq!(parse_http_date(&text, 0), Some(t));
            let asctime = format!(
                "{} {} {:>2} {:02}:{:02}:{:02} {:04}",
                WEEKDAYS[dt.weekday().number_days_from_monday() as usize],
                MONTHS[u8::from(dt.month()) as usize - 1],
                dt.day(),
                dt.hour(),
                dt.minute(),
                dt.second(),
                dt.year()
            );
            prop_assert_eq!(parse_http_date(&asctime, 0), Some(t));
        }

        #[test]
        fn arbitrary_header_values_never_panic(v in ".{0,64}", now in any::<u32>()) {
            let _ = parse_retry_after(&v, UNIX_EPOCH + Duration::from_secs(u64::from(now)));
        }
    }

    #[test]
    fn backoff_ends_when_it_reaches_the_maximum_and_steady_ends_at_its_deadline() {
        let s = RetrySchedule::default();
        assert_eq!(s.phase(1, Duration::ZERO), Phase::Backoff);
        assert_eq!(s.phase(9, Duration::from_secs(300)), Phase::Backoff);
        assert_eq!(s.phase(10, Duration::from_secs(500)), Phase::Steady);
        assert_eq!(s.phase(30, Duration::from_secs(7199)), Phase::Steady);
        assert_eq!(s.phase(30, Duration::from_secs(7200)), Phase::Slow);
        assert_eq!(s.phase(u32::MAX, Duration::MAX), Phase::Slow);
        // Failure 0 is read as the first.
        assert_eq!(s.delay_at(0, Duration::ZERO, 1.0), Duration::from_secs(1));
        assert_eq!(s.delay_at(1, Duration::ZERO, 0.0), Duration::from_millis(500));
        assert_eq!(s.delay_at(30, Duration::from_secs(600), 0.0), Duration::from_secs(432));
        assert_eq!(s.delay_at(30, Duration::from_secs(600), 1.0), Duration::from_secs(528));
        assert_eq!(s.delay_at(30, Duration::from_secs(9000), f64::NAN), Duration::from_secs(3600));
        // No steady phase at all when steady_until is zero.
        let z = RetrySchedule { steady_until: Duration::ZERO, ..RetrySchedule::default() };
        assert_eq!(z.phase(10, Duration::from_secs(500)), Phase::Slow);
    }

    #[test]
    fn only_refusals_of_the_batch_itself_are_dead_letters() {
        for status in [400, 409, 410, 413, 415, 422] {
            assert!(refuses_the_batch(status), "{status}");
        }
        for status in [200, 401, 403, 404, 407, 408, 421, 429, 500, 503] {
            assert!(!refuses_the_batch(status), "{status}");
        }
    }

    #[test]
    fn give_up_applies_only_when_configured() {
        let s = RetrySchedule::default();
        assert!(!s.gives_up(Duration::from_secs(365 * 86400)));
        let once = RetrySchedule { give_up_after: Some(Duration::from_secs(20)), ..s };
        assert!(!once.gives_up(Duration::from_secs(19)));
        assert!(once.gives_up(Duration::from_secs(20)));
    }

    #[test]
    fn retry_after_wins_over_the_schedule_and_is_capped_and_floored() {
        let s = RetrySchedule::default();
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let d = s.pause(1, Duration::ZERO, Some(Duration::from_secs(30)), &mut rng);
        assert!(d >= Duration::from_secs(30) && d <= Duration::from_secs(33), "{d:?}");
        // A broken header asking for a year waits the cap (plus jitter).
        assert_eq!(s.honour_retry_after_at(Duration::from_secs(365 * 86400), 0.0), Duration::from_secs(3600));
        assert_eq!(s.honour_retry_after_at(Duration::from_secs(365 * 86400), 1.0), Duration::from_secs(3960));
        // Retry-After: 0 cannot make a busy loop.
        assert_eq!(s.honour_retry_after_at(Duration::ZERO, 0.0), s.initial);
        let small = RetrySchedule { max_retry_after: Duration::from_secs(10), ..RetrySchedule::default() };
        assert_eq!(small.honour_retry_after_at(Duration::from_secs(60), 0.0), Duration::from_secs(10));
    }

    #[test]
    fn retry_after_reads_delta_seconds_and_every_http_date_form() {
        // RFC 9110's example instant: Sun, 06 Nov 1994 08:49:37 GMT.
        let at = 784_111_777u64;
        let now = UNIX_EPOCH + Duration::from_secs(at - 120);
        assert_eq!(parse_retry_after("120", now), Some(Duration::from_secs(120)));
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("99999999999999999999999", now), Some(Duration::from_secs(u64::MAX)));
        for form in ["Sun, 06 Nov 1994 08:49:37 GMT", "Sunday, 06-Nov-94 08:49:37 GMT", "Sun Nov  6 08:49:37 1994"] {
            assert_eq!(parse_retry_after(form, now), Some(Duration::from_secs(120)), "{form}");
        }
        assert_eq!(parse_retry_after("Sun Nov 16 08:49:37 1994", now), Some(Duration::from_secs(120 + 10 * 86400)));
        // A date in the past: no wait.
        assert_eq!(parse_retry_after("Sun, 06 Nov 1994 08:47:37 GMT", now), Some(Duration::ZERO));
        for bad in [
            "",
            "soon",
            "-5",
            "1.5",
            "12 s",
            "Sun, 06 Nov 1994 08:49:37 UTC",
            "Sun, 31 Feb 1994 08:49:37 GMT",
            "Sun, 06 Nov 1994 24:49:37 GMT",
            "Sun, 6 Nov 1994 08:49:37 GMT",
            "Xyz, 06 Nov 1994 08:49:37 GMT",
            "Sunday, 06-Nov-1994 08:49:37 GMT",
            "Sun Nov 6 08:49:37 1994",
        ] {
            assert_eq!(parse_retry_after(bad, now), None, "{bad:?}");
        }
    }

    #[test]
    fn a_two_digit_year_more_than_fifty_years_ahead_is_the_previous_century() {
        // Now is 2030: "94" is 1994, "70" is 2070 (40 years ahead), "81" is 1981.
        let now = time::macros::datetime!(2030-01-01 0:00 UTC).unix_timestamp();
        let year = |s: &str| time::OffsetDateTime::from_unix_timestamp(parse_http_date(s, now).unwrap()).unwrap().year();
        assert_eq!(year("Sunday, 06-Nov-94 08:49:37 GMT"), 1994);
        assert_eq!(year("Sunday, 06-Nov-70 08:49:37 GMT"), 2070);
        assert_eq!(year("Sunday, 06-Nov-81 08:49:37 GMT"), 2081 - 100);
    }

    /// A plain-HTTP server answering every request with one canned response.
    async fn canned(status_line: &'static str, headers: &'static str, body: &'static str) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                tokio::spawn(async move {
                    // Read the whole request (headers, then Content-Length bytes).
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        let n = sock.read(&mut chunk).await.unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                            let len: usize = head
                                .lines()
                                .find_map(|l| l.strip_prefix("content-length:").map(|v| v.trim().parse().unwrap_or(0)))
                                .unwrap_or(0);
                            if buf.len() >= end + 4 + len {
                                break;
                            }
                        }
                    }
                    let resp = format!("HTTP/1.1 {status_line}\r\n{headers}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
                    let _ = sock.write_all(resp.as_bytes()).await;
                    let _ = sock.shutdown().await;
                });
            }
        });
        format!("http://{addr}")
    }

    #[tokio::test]
    async fn the_shipper_classifies_429_and_503_as_retryable_with_either_retry_after_form() {
        let body = r#"{"code":"overloaded","error":"server overloaded: try again later"}"#;
        let url = canned("429 Too Many Requests", "Retry-After: 7\r\n", body).await;
        match Shipper::new(reqwest::Client::new(), &url).send_once(b"frame").await {
            Attempt::Retry(AgentError::Refused { status: 429, message }, Some(ra)) => {
                assert_eq!(ra, Duration::from_secs(7));
                assert!(message.contains("overloaded"), "{message}");
            }
            other => panic!("expected a retry with Retry-After, got {other:?}"),
        }
        // An HTTP-date a long way ahead: parsed (the cap is the schedule's job).
        let url = canned("503 Service Unavailable", "Retry-After: Fri, 31 Dec 9999 23:59:59 GMT\r\n", body).await;
        match Shipper::new(reqwest::Client::new(), &url).send_once(b"frame").await {
            Attempt::Retry(AgentError::Refused { status: 503, .. }, Some(ra)) => assert!(ra > Duration::from_secs(365 * 86400)),
            other => panic!("expected a retry with Retry-After, got {other:?}"),
        }
        let url = canned("408 Request Timeout", "Retry-After: never\r\n", body).await;
        assert!(matches!(Shipper::new(reqwest::Client::new(), &url).send_once(b"x").await, Attempt::Retry(_, None)));
    }

    #[tokio::test]
    async fn the_shipper_classifies_other_4xx_as_permanent() {
        let url = canned("413 Payload Too Large", "", r#"{"code":"payload_too_large","error":"batch of 9 bytes exceeds the limit"}"#).await;
        match Shipper::new(reqwest::Client::new(), &url).send_once(b"123456789").await {
            Attempt::Permanent(AgentError::Refused { status: 413, message }) => assert!(message.contains("exceeds the limit"), "{message}"),
            other => panic!("expected permanent, got {other:?}"),
        }
    }
}
