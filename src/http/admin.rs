//! `/v1/admin/…`: what the anti-abuse engine decided, and the operator's ban and safe
//! lists (admin scope).

use axum::extract::{Query, State};
use axum::http::{StatusCode, Uri};
use axum::Json;
use ringfence_phone::E164;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::extract::{AdminCaller, ApiJson, ApiPath};
use super::{validate, ApiError};
use crate::abuse::lists::{normalise_prefix, IpNet, ListName};
use crate::app::AppState;
use crate::clock::rfc3339;
use crate::store::{DecisionFilter, DecisionRecord, ListEntry};

/// The query string as `T`; a malformed or unknown parameter is `invalid_request`.
fn query<T: serde::de::DeserializeOwned>(uri: &Uri) -> Result<T, ApiError> {
    Query::<T>::try_from_uri(uri)
        .map(|Query(q)| q)
        .map_err(|e| ApiError::InvalidRequest(format!("query: {}", e.body_text())))
}

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
    let q: DecisionQuery = query(&uri)?;
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

/// An entry to add to a list.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ListEntryInput {
    /// `number` (an E.164 number; only its blind index is stored), `prefix` (E.164
    /// digits such as `+4470`) or `ip` (an address or a CIDR network).
    pub kind: String,
    pub value: String,
    /// Why (shown in decisions): 1–200 printable characters.
    pub reason: String,
    /// The entry stops applying after this long; absent: until removed.
    pub expires_in_seconds: Option<u32>,
}

/// A list entry. A number is shown only by a short form of its blind index.
#[derive(Debug, Serialize, ToSchema)]
pub struct ListEntryView {
    pub id: i64,
    pub list: String,
    pub kind: String,
    pub value: String,
    pub reason: String,
    pub created_at: String,
    pub expires_at: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ListView {
    pub entries: Vec<ListEntryView>,
}

impl From<ListEntry> for ListEntryView {
    fn from(e: ListEntry) -> Self {
        let value = if e.kind == "number" {
            format!("blind-index:{}", &e.value[..12.min(e.value.len())])
        } else {
            e.value
        };
        Self {
            id: e.id,
            list: e.list,
            kind: e.kind,
            value,
            reason: e.reason,
            created_at: rfc3339(e.created_at),
            expires_at: e.expires_at.map(rfc3339),
        }
    }
}

fn list_name(s: &str) -> Result<ListName, ApiError> {
    ListName::parse(s).ok_or(ApiError::RouteNotFound)
}

#[utoipa::path(
    post, path = "/v1/admin/lists/{list}", tag = "admin", request_body = ListEntryInput,
    params(("list" = String, Path, description = "`ban` or `safe`")),
    responses(
        (status = 201, body = ListEntryView),
        (status = 400, description = "invalid_field, invalid_phone_number"),
    ),
    security(("api_key" = []))
)]
pub async fn add_list_entry(
    State(st): State<AppState>,
    _admin: AdminCaller,
    ApiPath(list): ApiPath<String>,
    ApiJson(input): ApiJson<ListEntryInput>,
) -> Result<(StatusCode, Json<ListEntryView>), ApiError> {
    let list = list_name(&list)?;
    let now = st.clock.now();
    let value = match input.kind.as_str() {
        "number" => {
            let n = E164::parse(&input.value, None)
                .map_err(|e| ApiError::InvalidPhoneNumber(e.code()))?;
            hex::encode(st.keys.blind.index(n.expose()).0)
        }
        "prefix" => normalise_prefix(&input.value).ok_or_else(|| {
            ApiError::InvalidField("value: 1 to 14 digits, with or without +".into())
        })?,
        "ip" => {
            IpNet::parse(&input.value).ok_or_else(|| {
                ApiError::InvalidField("value: an IP address or a CIDR network".into())
            })?;
            input.value.clone()
        }
        _ => return Err(ApiError::InvalidField("kind: number, prefix or ip".into())),
    };
    let reason = validate::text("reason", &input.reason, 200)?;
    if reason.is_empty() {
        return Err(ApiError::InvalidField("reason: required".into()));
    }
    let entry = ListEntry {
        id: 0,
        list: list.as_str().to_owned(),
        kind: input.kind.clone(),
        value,
        reason,
        created_at: now,
        expires_at: input.expires_in_seconds.map(|s| now + i64::from(s) * 1000),
    };
    let id = st.store.put_list_entry(entry.clone()).await?;
    st.lists.invalidate();
    tracing::info!(list = list.as_str(), kind = %entry.kind, id, "list entry added");
    Ok((
        StatusCode::CREATED,
        Json(ListEntryView::from(ListEntry { id, ..entry })),
    ))
}

#[utoipa::path(
    get, path = "/v1/admin/lists/{list}", tag = "admin",
    params(("list" = String, Path, description = "`ban` or `safe`")),
    responses((status = 200, body = ListView)),
    security(("api_key" = []))
)]
pub async fn get_list(
    State(st): State<AppState>,
    _admin: AdminCaller,
    ApiPath(list): ApiPath<String>,
) -> Result<Json<ListView>, ApiError> {
    let list = list_name(&list)?;
    let entries = st.store.list_entries(st.clock.now()).await?;
    Ok(Json(ListView {
        entries: entries
            .into_iter()
            .filter(|e| e.list == list.as_str())
            .map(ListEntryView::from)
            .collect(),
    }))
}

#[utoipa::path(
    delete, path = "/v1/admin/lists/{list}/{id}", tag = "admin",
    params(("list" = String, Path, description = "`ban` or `safe`"), ("id" = i64, Path, description = "Entry id")),
    responses((status = 204, description = "Removed"), (status = 404, description = "not_found")),
    security(("api_key" = []))
)]
pub async fn remove_list_entry(
    State(st): State<AppState>,
    _admin: AdminCaller,
    ApiPath((list, id)): ApiPath<(String, i64)>,
) -> Result<StatusCode, ApiError> {
    list_name(&list)?;
    if !st.store.remove_list_entry(id).await? {
        return Err(ApiError::RouteNotFound);
    }
    st.lists.invalidate();
    Ok(StatusCode::NO_CONTENT)
}

/// Filters of `GET /v1/admin/stats`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct StatsQuery {
    /// The window, in hours back from now: 1–168, default 24.
    pub hours: Option<u32>,
}

/// One country calling code's traffic in the window.
#[derive(Debug, Serialize, ToSchema)]
pub struct CountryStatsView {
    pub country_code: u16,
    pub verifications: u64,
    pub sends: u64,
    pub approvals: u64,
    /// Approvals ÷ verifications that sent a message; `null` without any.
    pub conversion: Option<f64>,
    pub blocked: u64,
    pub shadow_blocked: u64,
    /// Sends × the country's price per message (the pumping detector's price table),
    /// in millionths of the currency unit.
    pub estimated_cost_micros: u64,
}

/// One number prefix's traffic in the window (prefixes as the pumping detector groups
/// numbers: country calling code and leading national digits).
#[derive(Debug, Serialize, ToSchema)]
pub struct PrefixStatsView {
    pub prefix: String,
    pub verifications: u64,
    pub sends: u64,
    pub approvals: u64,
    pub conversion: Option<f64>,
    pub estimated_cost_micros: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct StatsView {
    pub since: String,
    /// Services that still send to every region on some channel (see `abuse.geo`).
    pub services_open_to_every_region: Vec<String>,
    pub countries: Vec<CountryStatsView>,
    /// The 100 prefixes with the most sends.
    pub prefixes: Vec<PrefixStatsView>,
}

#[utoipa::path(
    get, path = "/v1/admin/stats", tag = "admin",
    params(StatsQuery),
    responses((status = 200, body = StatsView), (status = 400, description = "invalid_request, invalid_field")),
    security(("api_key" = []))
)]
pub async fn stats(
    State(st): State<AppState>,
    _admin: AdminCaller,
    uri: Uri,
) -> Result<Json<StatsView>, ApiError> {
    let q: StatsQuery = query(&uri)?;
    let hours = q.hours.unwrap_or(24);
    if !(1..=168).contains(&hours) {
        return Err(ApiError::InvalidField("hours: 1 to 168".into()));
    }
    let now = st.clock.now();
    let since = now - i64::from(hours) * 3600 * 1000;
    let mut countries: Vec<CountryStatsView> = st
        .store
        .country_stats(since)
        .await?
        .into_iter()
        .map(|c| CountryStatsView {
            country_code: c.country_code,
            verifications: c.verifications,
            sends: c.sends,
            approvals: c.approvals,
            conversion: (c.verifications > 0).then(|| c.approvals as f64 / c.verifications as f64),
            blocked: c.blocked,
            shadow_blocked: c.shadow_blocked,
            estimated_cost_micros: c.sends * st.abuse.price_micros(c.country_code),
        })
        .collect();
    countries.sort_by(|a, b| {
        b.sends
            .cmp(&a.sends)
            .then(a.country_code.cmp(&b.country_code))
    });
    let services_open_to_every_region = st
        .store
        .list_services()
        .await?
        .into_iter()
        .filter(|s| s.config.abuse.geo.open_anywhere())
        .map(|s| s.config.name.clone())
        .collect();
    let prefixes = st
        .store
        .prefix_stats(since, 100)
        .await?
        .into_iter()
        .map(|(prefix, c)| {
            let cc = prefix
                .split(':')
                .next()
                .and_then(|cc| cc.parse().ok())
                .unwrap_or(0);
            PrefixStatsView {
                verifications: c.verifications,
                sends: c.sends,
                approvals: c.approvals,
                conversion: (c.verifications > 0)
                    .then(|| c.approvals as f64 / c.verifications as f64),
                estimated_cost_micros: c.sends * st.abuse.price_micros(cc),
                prefix,
            }
        })
        .collect();
    Ok(Json(StatsView {
        since: rfc3339(since),
        services_open_to_every_region,
        countries,
        prefixes,
    }))
}
