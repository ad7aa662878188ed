//! Shipping batches: one POST per attempt over mutual TLS, and the retry
//! policy. The run loop (`run.rs`) drives the attempts, because it gates a
//! batch again before each one. A batch keeps its id across retries, so the
//! server stores it once however often it arrives.

use crate::error::{error_chain, AgentError};
use crate::identity::refused;
use custos_model::api::IngestAck;
use custos_model::wire;
use rand::Rng;
use std::time::Duration;

/// Retry policy for one batch.
#[derive(Clone, Debug)]
pub struct RetryPolicy {
    /// First delay after a failure.
    pub initial: Duration,
    /// Longest delay between attempts.
    pub max_delay: Duration,
    /// Give up (an error) after this long; `None` retries for as long as it takes.
    pub give_up_after: Option<Duration>,
}

impl RetryPolicy {
    /// How long to wait after a failed attempt: the server's Retry-After if
    /// it sent one, else full jitter in [delay/2, delay].
    pub fn pause(&self, delay: Duration, retry_after: Option<Duration>) -> Duration {
        retry_after.unwrap_or_else(|| {
            let half = delay / 2;
            half + Duration::from_millis(rand::thread_rng().gen_range(0..=half.as_millis().max(1) as u64))
        })
    }

    /// The delay after `delay`: doubled, at most `max_delay`.
    pub fn next_delay(&self, delay: Duration) -> Duration {
        (delay * 2).min(self.max_delay)
    }
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self { initial: Duration::from_secs(1), max_delay: Duration::from_secs(480), give_up_after: None }
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
    /// Retry-After if it sent one.
    Retry(AgentError, Option<Duration>),
    /// Refused for good (another 4xx): retrying the same bytes cannot help.
    Permanent(AgentError),
}

impl Shipper {
    /// A shipper for `server` using `client` (which presents the agent certificate).
    pub fn new(client: reqwest::Client, server: &str) -> Self {
        Self { client, server: server.trim_end_matches('/').to_string() }
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
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_are_jittered_within_half_to_full_delay_and_retry_after_wins() {
        let p = RetryPolicy::default();
        for _ in 0..200 {
            let d = p.pause(Duration::from_secs(8), None);
            assert!(d >= Duration::from_secs(4) && d <= Duration::from_secs(8), "{d:?}");
        }
        assert_eq!(p.pause(Duration::from_secs(8), Some(Duration::from_secs(30))), Duration::from_secs(30));
        assert_eq!(p.next_delay(Duration::from_secs(1)), Duration::from_secs(2));
        assert_eq!(p.next_delay(Duration::from_secs(400)), p.max_delay);
    }
}
