//! The verification lifecycle: `pending → approved | canceled | expired |
//! max_attempts_reached | failed`.
//!
//! Everything here is pure: it takes the stored state, the service's configuration and
//! `now`, and returns what must happen. The store applies the plan inside one
//! transaction with conditional updates, so the guarantees (single use, attempt and send
//! limits, cooldowns) hold however many checks race and on however many instances.

pub mod code;
pub mod service;

use serde::{Deserialize, Serialize};

use crate::clock::Millis;

pub use code::OtpCode;
pub use service::{ConfigError, ServiceConfig, ServicePatch, TestNumber};

/// How a code reaches the person.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Channel {
    Sms,
    Voice,
    Whatsapp,
}

impl Channel {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sms => "sms",
            Self::Voice => "voice",
            Self::Whatsapp => "whatsapp",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "sms" => Some(Self::Sms),
            "voice" => Some(Self::Voice),
            "whatsapp" => Some(Self::Whatsapp),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Pending,
    Approved,
    Canceled,
    Expired,
    MaxAttemptsReached,
    Failed,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Approved => "approved",
            Self::Canceled => "canceled",
            Self::Expired => "expired",
            Self::MaxAttemptsReached => "max_attempts_reached",
            Self::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => Self::Pending,
            "approved" => Self::Approved,
            "canceled" => Self::Canceled,
            "expired" => Self::Expired,
            "max_attempts_reached" => Self::MaxAttemptsReached,
            "failed" => Self::Failed,
            _ => return None,
        })
    }

    /// The status a reader should see: a pending verification past its expiry is
    /// expired even before a sweeper or a check has written that down.
    pub fn effective(self, expires_at: Millis, now: Millis) -> Self {
        if self == Self::Pending && now >= expires_at {
            Self::Expired
        } else {
            self
        }
    }
}

/// Why a start or check was refused. Each maps to one stable API error code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("a new code was sent recently; wait before asking again")]
    ResendCooldown { retry_after_ms: i64 },
    #[error("this verification has used all its sends")]
    MaxSendsReached { retry_after_ms: i64 },
    #[error("too many wrong codes for this number; wait before starting again")]
    LockedOut { retry_after_ms: i64 },
    #[error("the verification expired")]
    Expired,
    #[error("the verification is no longer pending")]
    NotPending(Status),
    #[error("too many wrong codes for this verification")]
    MaxAttemptsReached { retry_after_ms: i64 },
}

/// The part of a pending verification that decides a new start.
#[derive(Debug, Clone)]
pub struct PendingState {
    pub expires_at: Millis,
    pub sends: u32,
    /// The limit the verification started with: changing the service later does not
    /// extend (or cut short) a verification already under way.
    pub max_sends: u32,
    pub last_sent_at: Millis,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartPlan {
    /// Create a new verification (and expire the stale one, if any).
    New { expire_stale: bool },
    /// Send a new code on the pending verification.
    Resend,
}

/// Decides what a start request does, given what the store holds for this number and
/// service: any pending verification and any lockout after too many wrong codes.
pub fn plan_start(
    pending: Option<&PendingState>,
    locked_until: Option<Millis>,
    cfg: &ServiceConfig,
    now: Millis,
) -> Result<StartPlan, VerifyError> {
    if let Some(until) = locked_until.filter(|&u| u > now) {
        return Err(VerifyError::LockedOut {
            retry_after_ms: until - now,
        });
    }
    let Some(p) = pending else {
        return Ok(StartPlan::New {
            expire_stale: false,
        });
    };
    if now >= p.expires_at {
        return Ok(StartPlan::New { expire_stale: true });
    }
    if p.sends >= p.max_sends {
        return Err(VerifyError::MaxSendsReached {
            retry_after_ms: p.expires_at - now,
        });
    }
    let ready_at = p.last_sent_at + i64::from(cfg.resend_cooldown_seconds) * 1000;
    if now < ready_at {
        return Err(VerifyError::ResendCooldown {
            retry_after_ms: ready_at - now,
        });
    }
    Ok(StartPlan::Resend)
}

/// The part of a verification that decides a check.
#[derive(Debug, Clone)]
pub struct CheckState {
    pub status: Status,
    pub expires_at: Millis,
    pub attempts: u32,
    pub max_attempts: u32,
    pub lockout_seconds: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckPlan {
    Approve,
    /// Wrong code; `attempts_left` more may be tried.
    Wrong {
        attempts_left: u32,
    },
    /// Wrong code and that was the last attempt: lock the number out until `locked_until`.
    Exhausted {
        locked_until: Millis,
    },
    /// Past expiry: record it and refuse.
    Expire,
}

/// Decides what a check does. `code_matches` was computed in constant time before.
pub fn plan_check(
    s: &CheckState,
    code_matches: bool,
    now: Millis,
) -> Result<CheckPlan, VerifyError> {
    match s.status {
        Status::Pending => {}
        Status::MaxAttemptsReached => {
            return Err(VerifyError::MaxAttemptsReached { retry_after_ms: 0 })
        }
        Status::Expired => return Err(VerifyError::Expired),
        other => return Err(VerifyError::NotPending(other)),
    }
    if now >= s.expires_at {
        return Ok(CheckPlan::Expire);
    }
    if s.attempts >= s.max_attempts {
        // Unreachable through the store (the last wrong attempt changes the status), but
        // never approve past the limit whatever the stored state says.
        return Err(VerifyError::MaxAttemptsReached { retry_after_ms: 0 });
    }
    if code_matches {
        return Ok(CheckPlan::Approve);
    }
    let used = s.attempts + 1;
    if used >= s.max_attempts {
        Ok(CheckPlan::Exhausted {
            locked_until: now + i64::from(s.lockout_seconds) * 1000,
        })
    } else {
        Ok(CheckPlan::Wrong {
            attempts_left: s.max_attempts - used,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> ServiceConfig {
        ServiceConfig::default_named("t")
    }

    #[test]
    fn start_without_pending_creates() {
        assert_eq!(
            plan_start(None, None, &cfg(), 0),
            Ok(StartPlan::New {
                expire_stale: false
            })
        );
    }

    #[test]
    fn resend_respects_cooldown_then_max_sends() {
        let c = cfg();
        let p = PendingState {
            expires_at: 600_000,
            sends: 1,
            max_sends: c.max_sends,
            last_sent_at: 0,
        };
        assert_eq!(
            plan_start(Some(&p), None, &c, 10_000),
            Err(VerifyError::ResendCooldown {
                retry_after_ms: 20_000
            })
        );
        assert_eq!(
            plan_start(Some(&p), None, &c, 30_000),
            Ok(StartPlan::Resend)
        );
        let full = PendingState {
            sends: c.max_sends,
            ..p
        };
        assert_eq!(
            plan_start(Some(&full), None, &c, 30_000),
            Err(VerifyError::MaxSendsReached {
                retry_after_ms: 570_000
            })
        );
        assert_eq!(
            plan_start(Some(&full), None, &c, 600_000),
            Ok(StartPlan::New { expire_stale: true })
        );
    }

    #[test]
    fn lockout_refuses_until_it_ends() {
        let c = cfg();
        assert_eq!(
            plan_start(None, Some(5_000), &c, 1_000),
            Err(VerifyError::LockedOut {
                retry_after_ms: 4_000
            })
        );
        assert_eq!(
            plan_start(None, Some(5_000), &c, 5_000),
            Ok(StartPlan::New {
                expire_stale: false
            })
        );
    }

    #[test]
    fn check_counts_down_and_locks_out_on_the_last_wrong_code() {
        let mut s = CheckState {
            status: Status::Pending,
            expires_at: 100,
            attempts: 0,
            max_attempts: 3,
            lockout_seconds: 60,
        };
        assert_eq!(
            plan_check(&s, false, 0),
            Ok(CheckPlan::Wrong { attempts_left: 2 })
        );
        s.attempts = 2;
        assert_eq!(
            plan_check(&s, false, 0),
            Ok(CheckPlan::Exhausted {
                locked_until: 60_000
            })
        );
        s.attempts = 3;
        assert!(
            plan_check(&s, true, 0).is_err(),
            "never approve past the limit"
        );
    }

    #[test]
    fn check_refuses_expired_and_finished() {
        let s = CheckState {
            status: Status::Pending,
            expires_at: 100,
            attempts: 0,
            max_attempts: 3,
            lockout_seconds: 60,
        };
        assert_eq!(plan_check(&s, true, 100), Ok(CheckPlan::Expire));
        assert_eq!(plan_check(&s, true, 99), Ok(CheckPlan::Approve));
        let done = CheckState {
            status: Status::Approved,
            ..s
        };
        assert_eq!(
            plan_check(&done, true, 0),
            Err(VerifyError::NotPending(Status::Approved))
        );
    }

    #[test]
    fn effective_status_expires_lazily() {
        assert_eq!(Status::Pending.effective(10, 9), Status::Pending);
        assert_eq!(Status::Pending.effective(10, 10), Status::Expired);
        assert_eq!(Status::Approved.effective(10, 99), Status::Approved);
    }
}
