//! `/v1/admin/…`: what the anti-abuse engine decided (admin scope).

use axum::extract::{Query, State};
use axum::http::Uri;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::extract::AdminCaller;
use super::{validate, ApiError};
use crate::app::AppState;
use crate::clock::rfc3339;
use crate::store::{DecisionFilter, DecisionRecord};

/// Filters of `GET /v1/admin/decisions`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct DecisionQuery {
    /// Only decisions with this reason code (e.g. `rate_limited`).
    pub reason: Option<String>,
    /// Only decisions of this service (its id).
    pub service: Option<String>,
    /// Decisions older than this id (the `next_before` of the previous page).
    pub before: Option<i64>,
    /// 1–500, default 100.
    pub limit: Option<u32>,
}

/// A decision that kept a message from going out.
#[derive(Debug, Serialize, ToSchema)]
pub struct DecisionView {
    pub id: i64,
    pub at: String,
    pub service_id: String,
    /// The shadow-blocked verification (none for a block).
    pub verification_id: Option<String>,
    /// `block` or `shadow_block`.
    pub action: String,
    pub reasons: Vec<String>,
    /// The facts behind it (`[{"name", "value"}]`): number type, region, channel, the
    /// limit or the prefix — never a number.
    #[schema(value_type = Object)]
    pub factors: serde_json::Value,
    pub channel: String,
    pub country_code: u16,
    pub region: Option<String>,
    pub number_type: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DecisionList {
    pub decisions: Vec<DecisionView>,
    /// Pass as `before` for the next (older) page; absent on the last page.
    pub next_before: Option<i64>,
}

impl From<DecisionRecord> for DecisionView {
    fn from(d: DecisionRecord) -> Self {
        Self {
            id: d.id,
            at: rfc3339(d.at),
            service_id: d.service_id,
            verification_id: d.verification_id,
            action: d.action,
            reasons: d.reasons,
            factors: serde_json::from_str(&d.factors).unwrap_or_default(),
            channel: d.channel,
            country_code: d.country_code,
            region: d.region,
            number_type: d.number_type,
        }
    }
}

#[utoipa::path(
    get, path = "/v1/admin/decisions", tag = "admin",
    params(DecisionQuery),
    responses(
        (status = 200, body = DecisionList, description = "Newest first"),
        (status = 400, description = "invalid_request, invalid_field"),
    ),
    security(("api_key" = []))
)]
pub async fn decisions(
    State(st): State<AppState>,
    _admin: AdminCaller,
    uri: Uri,
) -> Result<Json<DecisionList>, ApiError> {
    let Query(q) = Query::<DecisionQuery>::try_from_uri(&uri)
        .map_err(|e| ApiError::InvalidRequest(format!("query: {}", e.body_text())))?;
    let limit = q.limit.unwrap_or(100);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::InvalidField("limit: 1 to 500".into()));
    }
    if let Some(r) = &q.reason {
        validate::reference("reason", r, 64)?;
    }
    if let Some(s) = &q.service {
        validate::reference("service", s, 128)?;
    }
    let rows = st
        .store
        .list_decisions(DecisionFilter {
            reason: q.reason,
            service_id: q.service,
            before_id: q.before,
            limit,
        })
        .await?;
    let next_before = (rows.len() == limit as usize)
        .then(|| rows.last().map(|d| d.id))
        .flatten();
    Ok(Json(DecisionList {
        decisions: rows.into_iter().map(DecisionView::from).collect(),
        next_before,
    }))
}
