//! Liveness and readiness.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Value};

use crate::app::AppState;

/// The process is up and serving HTTP.
#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, description = "Alive")))]
pub async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// The process can do its work: the database answers reads and writes, and the counters
/// answer (without them nothing is sent; checks still work).
#[utoipa::path(
    get, path = "/readyz", tag = "operations",
    responses((status = 200, description = "Ready"), (status = 503, description = "Not ready; `checks` says which part is unavailable"))
)]
pub async fn readyz(State(st): State<AppState>) -> (StatusCode, Json<Value>) {
    let database = st.store.ping().await;
    let counters = st.counters.ping().await;
    if let Err(e) = &database {
        tracing::warn!(error = %e, "readiness: database unavailable");
    }
    if let Err(e) = &counters {
        tracing::warn!(error = %e, "readiness: counters unavailable");
    }
    let word = |ok: bool| if ok { "ok" } else { "unavailable" };
    let ready = database.is_ok() && counters.is_ok();
    let body = json!({
        "status": if ready { "ready" } else { "unavailable" },
        "checks": {
            "database": word(database.is_ok()),
            "counters": word(counters.is_ok()),
            "counters_backend": st.counters.backend(),
        }
    });
    (
        if ready {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        },
        Json(body),
    )
}
