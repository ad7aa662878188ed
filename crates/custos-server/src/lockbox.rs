//! Lockbox rules, pure: how long requests wait, how long grants last, and
//! whether a grant is live at a given time. No I/O; the API layer feeds
//! catalog records and the clock's time in.
//!
//! - A request not decided within [`REQUEST_TTL`] expires.
//! - A grant lasts the requested duration (default [`DEFAULT_GRANT`], at
//!   most [`MAX_GRANT`]) from its approval, and ends early when its case
//!   closes.
//! - A grant is read-only and covers only its case's workspace; the
//!   permission check in `authz` enforces both.

use custos_catalog::{AccessRequest, AccessState, Case};
use custos_model::TimestampMicros;

/// One hour, microseconds.
pub const HOUR: i64 = 3_600_000_000;
/// An undecided request expires after this long.
pub const REQUEST_TTL: i64 = 12 * HOUR;
/// Grant length when none is asked for.
pub const DEFAULT_GRANT: i64 = 8 * HOUR;
/// Longest grant.
pub const MAX_GRANT: i64 = 7 * 24 * HOUR;

/// Where an access request stands at a given time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Waiting for an owner, still decidable.
    Pending,
    /// Nobody decided within [`REQUEST_TTL`].
    Expired,
    /// An owner denied it.
    Denied,
    /// Approved and live: the holder may read the case's workspace.
    Active,
    /// Approved once, but the grant ran out or the case closed.
    Ended,
}

impl Status {
    /// The name the API shows.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Expired => "expired",
            Status::Denied => "denied",
            Status::Active => "active",
            Status::Ended => "ended",
        }
    }
}

/// Why a requested duration is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// Zero length.
    #[error("access duration must be positive")]
    Zero,
    /// Longer than [`MAX_GRANT`].
    #[error("access duration of {hours} hours exceeds the maximum of 168 hours (7 days)")]
    TooLong {
        /// Hours requested (rounded up).
        hours: u64,
    },
}

/// The grant duration in microseconds for a request of `secs` seconds.
pub fn grant_duration(secs: Option<u64>) -> Result<i64, DurationError> {
    let Some(secs) = secs else { return Ok(DEFAULT_GRANT) };
    if secs == 0 {
        return Err(DurationError::Zero);
    }
    let micros = i64::try_from(secs).ok().and_then(|s| s.checked_mul(1_000_000));
    match micros {
        Some(m) if m <= MAX_GRANT => Ok(m),
        _ => Err(DurationError::TooLong { hours: secs.div_ceil(3600) }),
    }
}

/// The end of a grant approved at `approved_at` for a request of `duration`.
pub fn grant_end(approved_at: TimestampMicros, duration: i64) -> TimestampMicros {
    approved_at.saturating_add(duration.clamp(0, MAX_GRANT))
}

/// Whether an undecided request can still be decided at `now`.
pub fn decidable(req: &AccessRequest, now: TimestampMicros) -> bool {
    req.state == AccessState::Pending && now < req.requested_at.saturating_add(REQUEST_TTL)
}

/// The status of `req` (whose case is `case`) at `now`.
pub fn status(req: &AccessRequest, case: &Case, now: TimestampMicros) -> Status {
    match req.state {
        AccessState::Pending if decidable(req, now) => Status::Pending,
        AccessState::Pending => Status::Expired,
        AccessState::Denied => Status::Denied,
        AccessState::Approved => {
            let end = req.grant_expires_at.unwrap_or(i64::MIN);
            let case_open = case.closed_at.is_none_or(|closed| closed > now);
            if now < end && case_open && case.id == req.case_id && case.workspace_id == req.workspace_id {
                Status::Active
            } else {
                Status::Ended
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use custos_model::{AccessRequestId, CaseId, PrincipalId, WorkspaceId};

    fn fixture(t0: i64) -> (AccessRequest, Case) {
        let ws = WorkspaceId::new();
        let case = Case {
            id: CaseId::new(),
            workspace_id: ws,
            title: "disk errors".into(),
            opened_by: PrincipalId::new(),
            opened_at: t0,
            closed_at: None,
            closed_by: None,
        };
        let req = AccessRequest {
            id: AccessRequestId::new(),
            case_id: case.id,
            workspace_id: ws,
            requester: PrincipalId::new(),
            reason: "look at logs".into(),
            duration: DEFAULT_GRANT,
            requested_at: t0,
            state: AccessState::Pending,
            decided_at: None,
            decided_by: None,
            grant_expires_at: None,
        };
        (req, case)
    }

    #[test]
    fn undecided_request_expires_after_twelve_hours() {
        let (req, case) = fixture(1_000);
        assert_eq!(status(&req, &case, 1_000 + REQUEST_TTL - 1), Status::Pending);
        assert!(decidable(&req, 1_000 + REQUEST_TTL - 1));
        assert_eq!(status(&req, &case, 1_000 + REQUEST_TTL), Status::Expired);
        assert!(!decidable(&req, 1_000 + REQUEST_TTL));
    }

    #[test]
    fn grant_is_active_until_its_end_then_ended() {
        let (mut req, case) = fixture(0);
        req.state = AccessState::Approved;
        req.decided_at = Some(HOUR);
        req.grant_expires_at = Some(grant_end(HOUR, req.duration));
        assert_eq!(status(&req, &case, HOUR), Status::Active);
        assert_eq!(status(&req, &case, HOUR + DEFAULT_GRANT - 1), Status::Active);
        assert_eq!(status(&req, &case, HOUR + DEFAULT_GRANT), Status::Ended);
    }

    #[test]
    fn closing_the_case_ends_the_grant() {
        let (mut req, mut case) = fixture(0);
        req.state = AccessState::Approved;
        req.grant_expires_at = Some(grant_end(0, MAX_GRANT));
        assert_eq!(status(&req, &case, 5 * HOUR), Status::Active);
        case.closed_at = Some(5 * HOUR);
        assert_eq!(status(&req, &case, 5 * HOUR), Status::Ended);
        assert_eq!(status(&req, &case, 4 * HOUR), Status::Active, "before the close it was live");
    }

    #[test]
    fn a_grant_never_covers_another_case_or_workspace() {
        let (mut req, case) = fixture(0);
        req.state = AccessState::Approved;
        req.grant_expires_at = Some(DEFAULT_GRANT);
        let (_, other_case) = fixture(0);
        assert_eq!(status(&req, &other_case, 1), Status::Ended);
        let mut moved = case.clone();
        moved.workspace_id = WorkspaceId::new();
        assert_eq!(status(&req, &moved, 1), Status::Ended);
    }

    #[test]
    fn denied_stays_denied() {
        let (mut req, case) = fixture(0);
        req.state = AccessState::Denied;
        assert_eq!(status(&req, &case, 1), Status::Denied);
    }

    #[test]
    fn durations_default_to_eight_hours_and_cap_at_seven_days() {
        assert_eq!(grant_duration(None), Ok(DEFAULT_GRANT));
        assert_eq!(grant_duration(Some(3600)), Ok(HOUR));
        assert_eq!(grant_duration(Some(7 * 24 * 3600)), Ok(MAX_GRANT));
        assert_eq!(grant_duration(Some(7 * 24 * 3600 + 1)), Err(DurationError::TooLong { hours: 169 }));
        assert_eq!(grant_duration(Some(0)), Err(DurationError::Zero));
        assert!(grant_duration(Some(u64::MAX)).is_err());
        assert_eq!(grant_end(0, i64::MAX), MAX_GRANT, "a stored duration is clamped again");
    }
}
