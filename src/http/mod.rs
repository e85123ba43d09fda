//! The HTTP edge: routes, the request-id and error-envelope middleware, and the
//! OpenAPI document. Handlers convert requests into domain values, call the store and
//! the domain, and map results to responses; every error leaves through `ApiError`.

mod accounts;
mod admin;
mod error;
pub mod extract;
mod health;
pub mod metrics;
pub mod openapi;
mod services;
mod validate;
mod verifications;

use axum::extract::{DefaultBodyLimit, MatchedPath, Request};
use axum::http::{header, HeaderValue};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post, put};
use axum::Router;
use tracing::Instrument;

pub use error::{ApiError, ErrorBody};

use crate::app::AppState;
use crate::store::SubjectSecrets;

/// Request bodies above this are refused with `body_too_large`.
pub const MAX_BODY_BYTES: usize = 16 * 1024;

/// Associated data under which a subject's phone number is sealed.
pub(crate) const PHONE_AAD: &[u8] = b"phone";

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/verifications", post(verifications::start))
        .route("/v1/verifications/{id}", get(verifications::get))
        .route("/v1/verifications/{id}/check", post(verifications::check))
        .route("/v1/verifications/{id}/cancel", post(verifications::cancel))
        .route(
            "/v1/verification-checks",
            post(verifications::check_by_number),
        )
        .route("/v1/services", post(services::create).get(services::list))
        .route(
            "/v1/services/{id}",
            get(services::get).patch(services::update),
        )
        .route(
            "/v1/accounts/{account_ref}/phone",
            put(accounts::bind)
                .get(accounts::get)
                .delete(accounts::unbind),
        )
        .route("/v1/admin/decisions", get(admin::decisions))
        .route("/v1/admin/stats", get(admin::stats))
        .route(
            "/v1/admin/lists/{list}",
            post(admin::add_list_entry).get(admin::get_list),
        )
        .route(
            "/v1/admin/lists/{list}/{id}",
            axum::routing::delete(admin::remove_list_entry),
        )
        .route("/healthz", get(health::healthz))
        .route("/metrics", get(metrics::metrics))
        .route("/readyz", get(health::readyz))
        .route("/openapi.json", get(openapi::document))
        .route("/docs", get(openapi::reference_page))
        .fallback(|| async { ApiError::RouteNotFound })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn(envelope))
        .with_state(state)
}

/// The request's id: the caller's `X-Request-Id` when it is well-formed, otherwise a
/// random per-process prefix and a counter (unique, cheap, and not a secret).
fn request_id(req: &Request) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static PREFIX: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    req.headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            (1..=64).contains(&v.len())
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
        .map(str::to_owned)
        .unwrap_or_else(|| {
            let prefix = PREFIX.get_or_init(|| hex::encode(crate::crypto::random_bytes::<6>()));
            format!("{prefix}{:012x}", COUNTER.fetch_add(1, Ordering::Relaxed))
        })
}

/// Gives every request an id (taken from `X-Request-Id` when it is well-formed), a
/// tracing span named after the matched route (never the raw path, which may hold an
/// account reference), and renders `ApiError`s with that id.
async fn envelope(req: Request, next: Next) -> Response {
    let rid = request_id(&req);
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "-".into());
    // Values as `&str`, not `Display`: the span's fields are formatted as it is made.
    let span = tracing::info_span!(
        "request",
        method = req.method().as_str(),
        route = route.as_str(),
        request_id = rid.as_str()
    );
    let started = std::time::Instant::now();
    let mut res = next.run(req).instrument(span.clone()).await;
    if let Some(err) = res.extensions_mut().remove::<ErrorBody>() {
        let body = serde_json::json!({ "error": { "code": err.code, "message": err.message, "request_id": rid } });
        let (mut parts, _) = res.into_parts();
        parts.headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        parts.headers.remove(header::CONTENT_LENGTH);
        res = Response::from_parts(parts, axum::body::Body::from(body.to_string()));
    }
    if let Ok(v) = HeaderValue::from_str(&rid) {
        res.headers_mut().insert("x-request-id", v);
    }
    let _e = span.enter();
    tracing::debug!(
        status = res.status().as_u16(),
        micros = started.elapsed().as_micros() as u64,
        "request done"
    );
    res
}

/// The masked form of a subject's number, if it can still be decrypted.
pub(crate) fn masked_number(st: &AppState, s: &SubjectSecrets) -> Option<String> {
    open_number(st, s).map(|n| n.masked())
}

/// The subject's number, decrypted; `None` once erased (or if it does not open). It was
/// valid when stored, so it is read back as such, not parsed and validated again.
pub(crate) fn open_number(
    st: &AppState,
    s: &SubjectSecrets,
) -> Option<ringfence_phone::StoredE164> {
    let key = st
        .keys
        .kek
        .unwrap_key(s.wrapped_key.as_ref()?, &s.blind_index.0)
        .ok()?;
    let raw = key.open(s.phone_ct.as_ref()?, PHONE_AAD).ok()?;
    let e164 = std::str::from_utf8(&raw).ok()?;
    ringfence_phone::StoredE164::from_e164(e164).ok()
}
