//! The one API error type. Every failure a client can see is an `ApiError`; it maps to
//! an HTTP status and a stable machine-readable code in exactly one place
//! (`ApiError::parts`), and renders as
//! `{"error": {"code": "…", "message": "…", "request_id": "…"}}`.
//!
//! Messages never contain a phone number, a code, a key or a token: they are written
//! here from the error's kind, never echoed from the input. 5xx errors hide their cause
//! from the client and log it once, inside the request's span.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::store::StoreError;
use crate::verify::{Status, VerifyError};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("malformed JSON: {0}")]
    InvalidJson(String),
    #[error("{0}")]
    InvalidRequest(String),
    #[error("request body must be JSON (Content-Type: application/json)")]
    UnsupportedMediaType,
    #[error("request body is larger than 16 KiB")]
    BodyTooLarge,
    #[error("to: not a valid phone number ({0})")]
    InvalidPhoneNumber(&'static str),
    #[error("code: 4 to 10 digits")]
    InvalidCode,
    #[error("{0}")]
    InvalidField(String),
    #[error("{0}")]
    InvalidServiceConfig(String),
    #[error("channel {0} is not enabled on this service")]
    ChannelNotAllowed(&'static str),
    #[error("Idempotency-Key: 1 to 255 printable ASCII characters")]
    InvalidIdempotencyKey,
    #[error("this Idempotency-Key was used with a different request")]
    IdempotencyKeyReused,
    #[error("missing or invalid API key")]
    Unauthorized,
    #[error("this API key lacks the `{0}` scope")]
    Forbidden(&'static str),
    #[error("no such route")]
    RouteNotFound,
    #[error("method not allowed on this route")]
    MethodNotAllowed,
    #[error("verification not found")]
    VerificationNotFound,
    #[error("service not found")]
    ServiceNotFound,
    #[error("no phone number is bound to this account")]
    BindingNotFound,
    #[error("a service with this name exists")]
    ServiceNameTaken,
    #[error("the verification is {0}, not pending")]
    VerificationNotPending(&'static str),
    #[error("the verification expired")]
    VerificationExpired,
    #[error("the verification is not approved")]
    VerificationNotApproved,
    #[error("the verification was approved too long ago to bind; verify again")]
    VerificationStale,
    #[error("the verification was started for another account")]
    AccountMismatch,
    #[error("this number is bound to as many accounts as this service allows")]
    PhoneLimitReached,
    #[error("a new code was sent recently; try again later")]
    ResendCooldown { retry_after_ms: i64 },
    #[error("this verification has used all its sends")]
    MaxSendsReached { retry_after_ms: i64 },
    #[error("too many wrong codes")]
    MaxAttemptsReached { retry_after_ms: i64 },
    #[error("too many wrong codes for this number recently; try again later")]
    VerificationLocked { retry_after_ms: i64 },
    #[error("numbers of type {0} may not receive this channel on this service")]
    NumberTypeNotAllowed(&'static str),
    #[error("this service does not send to region {0} on this channel")]
    RegionNotAllowed(String),
    #[error("refused by the operator's ban list ({0})")]
    Banned(&'static str),
    #[error("rate limit {} reached; try again later", .0.name)]
    RateLimited(crate::abuse::LimitState),
    #[error("temporarily unavailable; retry later")]
    Unavailable(String),
    #[error("internal error")]
    Internal(String),
}

/// The error body, put in the response's extensions so the request-id middleware can
/// render it with the request's id.
#[derive(Debug, Clone)]
pub struct ErrorBody {
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    /// Status and stable code: the whole mapping, in one place.
    pub fn parts(&self) -> (StatusCode, &'static str) {
        use ApiError::*;
        match self {
            InvalidJson(_) => (StatusCode::BAD_REQUEST, "invalid_json"),
            InvalidRequest(_) => (StatusCode::BAD_REQUEST, "invalid_request"),
            UnsupportedMediaType => (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type"),
            BodyTooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large"),
            InvalidPhoneNumber(_) => (StatusCode::BAD_REQUEST, "invalid_phone_number"),
            InvalidCode => (StatusCode::BAD_REQUEST, "invalid_code"),
            InvalidField(_) => (StatusCode::BAD_REQUEST, "invalid_field"),
            InvalidServiceConfig(_) => (StatusCode::BAD_REQUEST, "invalid_service_config"),
            ChannelNotAllowed(_) => (StatusCode::BAD_REQUEST, "channel_not_allowed"),
            InvalidIdempotencyKey => (StatusCode::BAD_REQUEST, "invalid_idempotency_key"),
            IdempotencyKeyReused => (StatusCode::UNPROCESSABLE_ENTITY, "idempotency_key_reused"),
            Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            RouteNotFound => (StatusCode::NOT_FOUND, "not_found"),
            MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            VerificationNotFound => (StatusCode::NOT_FOUND, "verification_not_found"),
            ServiceNotFound => (StatusCode::NOT_FOUND, "service_not_found"),
            BindingNotFound => (StatusCode::NOT_FOUND, "binding_not_found"),
            ServiceNameTaken => (StatusCode::CONFLICT, "service_name_taken"),
            VerificationNotPending(_) => (StatusCode::CONFLICT, "verification_not_pending"),
            VerificationExpired => (StatusCode::GONE, "verification_expired"),
            VerificationNotApproved => (StatusCode::CONFLICT, "verification_not_approved"),
            VerificationStale => (StatusCode::CONFLICT, "verification_stale"),
            AccountMismatch => (StatusCode::CONFLICT, "account_mismatch"),
            PhoneLimitReached => (StatusCode::CONFLICT, "phone_limit_reached"),
            ResendCooldown { .. } => (StatusCode::TOO_MANY_REQUESTS, "resend_cooldown"),
            MaxSendsReached { .. } => (StatusCode::TOO_MANY_REQUESTS, "max_sends_reached"),
            MaxAttemptsReached { .. } => (StatusCode::TOO_MANY_REQUESTS, "max_attempts_reached"),
            VerificationLocked { .. } => (StatusCode::TOO_MANY_REQUESTS, "verification_locked"),
            NumberTypeNotAllowed(_) => (StatusCode::FORBIDDEN, "number_type_not_allowed"),
            RegionNotAllowed(_) => (StatusCode::FORBIDDEN, "region_not_allowed"),
            RateLimited(_) => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
            Banned(_) => (StatusCode::FORBIDDEN, "banned"),
            Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }

    fn retry_after_ms(&self) -> Option<i64> {
        match self {
            Self::ResendCooldown { retry_after_ms }
            | Self::MaxSendsReached { retry_after_ms }
            | Self::MaxAttemptsReached { retry_after_ms }
            | Self::VerificationLocked { retry_after_ms } => Some(*retry_after_ms),
            Self::RateLimited(l) => Some(l.retry_after_ms.unwrap_or(1000)),
            Self::Unavailable(_) => Some(1000),
            _ => None,
        }
    }

    /// Every code with its status, for the API guide and the tests that check it.
    pub const CODES: &'static [&'static str] = &[
        "invalid_json",
        "invalid_request",
        "unsupported_media_type",
        "body_too_large",
        "invalid_phone_number",
        "invalid_code",
        "invalid_field",
        "invalid_service_config",
        "channel_not_allowed",
        "invalid_idempotency_key",
        "idempotency_key_reused",
        "unauthorized",
        "forbidden",
        "not_found",
        "method_not_allowed",
        "verification_not_found",
        "service_not_found",
        "binding_not_found",
        "service_name_taken",
        "verification_not_pending",
        "verification_expired",
        "verification_not_approved",
        "verification_stale",
        "account_mismatch",
        "phone_limit_reached",
        "resend_cooldown",
        "max_sends_reached",
        "max_attempts_reached",
        "verification_locked",
        "number_type_not_allowed",
        "region_not_allowed",
        "rate_limited",
        "banned",
        "unavailable",
        "internal",
    ];
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.parts();
        let message = match &self {
            Self::Internal(cause) | Self::Unavailable(cause) => {
                tracing::error!(code, cause = %cause, "request failed");
                self.to_string()
            }
            other => other.to_string(),
        };
        let mut res = status.into_response();
        if let Some(ms) = self.retry_after_ms() {
            res.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(ceil_secs(ms).max(1)));
        }
        if let Self::RateLimited(l) = &self {
            rate_limit_headers(res.headers_mut(), l);
        }
        res.extensions_mut().insert(ErrorBody { code, message });
        res
    }
}

fn ceil_secs(ms: i64) -> i64 {
    (ms.max(0) + 999) / 1000
}

/// The IETF RateLimit header fields (draft-ietf-httpapi-ratelimit-headers-11) for the
/// limit that decided the request: `RateLimit-Policy: "sends_per_ip";q=20;w=300` and
/// `RateLimit: "sends_per_ip";r=0;t=15`.
pub fn rate_limit_headers(h: &mut axum::http::HeaderMap, l: &crate::abuse::LimitState) {
    let policy = format!(
        "\"{}\";q={};w={}",
        l.name, l.spec.limit, l.spec.period_seconds
    );
    let current = format!(
        "\"{}\";r={};t={}",
        l.name,
        l.remaining,
        ceil_secs(l.reset_after_ms)
    );
    for (name, value) in [("ratelimit-policy", policy), ("ratelimit", current)] {
        if let Ok(v) = HeaderValue::from_str(&value) {
            h.insert(name, v);
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(m) => Self::Unavailable(m),
            StoreError::Conflict("service_name") => Self::ServiceNameTaken,
            StoreError::Conflict(c) => Self::Unavailable(format!("conflict {c}; retry")),
            StoreError::Internal(m) => Self::Internal(m),
        }
    }
}

impl From<VerifyError> for ApiError {
    fn from(e: VerifyError) -> Self {
        match e {
            VerifyError::ResendCooldown { retry_after_ms } => {
                Self::ResendCooldown { retry_after_ms }
            }
            VerifyError::MaxSendsReached { retry_after_ms } => {
                Self::MaxSendsReached { retry_after_ms }
            }
            VerifyError::LockedOut { retry_after_ms } => {
                Self::VerificationLocked { retry_after_ms }
            }
            VerifyError::MaxAttemptsReached { retry_after_ms } => {
                Self::MaxAttemptsReached { retry_after_ms }
            }
            VerifyError::Expired => Self::VerificationExpired,
            VerifyError::NotPending(Status::Expired) => Self::VerificationExpired,
            VerifyError::NotPending(s) => Self::VerificationNotPending(s.as_str()),
        }
    }
}

impl From<ringfence_phone::PhoneError> for ApiError {
    fn from(e: ringfence_phone::PhoneError) -> Self {
        Self::InvalidPhoneNumber(e.code())
    }
}
