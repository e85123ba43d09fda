//! `/v1/accounts/{account_ref}/phone`: bind an approved verification's number to the
//! integrator's account, read the binding (masked), unbind. An unbound binding stays as
//! a tombstone, so the accounts-per-number cap cannot be reset by deleting accounts.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::extract::{ApiJson, ApiPath, VerifyCaller};
use super::{masked_number, validate, ApiError};
use crate::app::AppState;
use crate::clock::rfc3339;
use crate::store::{BindOutcome, BindRules, BindingRow};

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BindPhone {
    /// An approved verification, approved within the binding window (15 minutes by
    /// default).
    pub verification_id: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct BindingView {
    pub account_ref: String,
    /// Masked number.
    pub phone: Option<String>,
    pub verification_id: String,
    pub verified_at: String,
}

fn view(st: &AppState, b: &BindingRow) -> BindingView {
    BindingView {
        account_ref: b.account_ref.clone(),
        phone: masked_number(st, &b.subject),
        verification_id: b.verification_id.clone(),
        verified_at: rfc3339(b.verified_at),
    }
}

#[utoipa::path(
    put, path = "/v1/accounts/{account_ref}/phone", tag = "accounts", request_body = BindPhone,
    params(("account_ref" = String, Path, description = "The integrator's account reference")),
    responses(
        (status = 200, description = "Bound (binding the same number again is a no-op)", body = BindingView),
        (status = 400, description = "invalid_field"),
        (status = 404, description = "verification_not_found"),
        (status = 409, description = "verification_not_approved, verification_stale, account_mismatch, phone_limit_reached"),
    ),
    security(("api_key" = []))
)]
pub async fn bind(
    State(st): State<AppState>,
    _caller: VerifyCaller,
    ApiPath(account_ref): ApiPath<String>,
    ApiJson(body): ApiJson<BindPhone>,
) -> Result<Json<BindingView>, ApiError> {
    let account_ref = validate::account_ref(&account_ref)?;
    validate::verification_id(&body.verification_id)?;
    let now = st.clock.now();
    // The accounts cap and the recycled-number mode are the verification's service's.
    let (_, service_id) = st
        .store
        .verification_owner(&body.verification_id)
        .await?
        .ok_or(ApiError::VerificationNotFound)?;
    let accounts = match st.services.get(&service_id, now).await? {
        Some(s) => s.config.abuse.accounts.clone(),
        None => return Err(ApiError::VerificationNotFound),
    };
    let rules = BindRules {
        approval_window_ms: st.settings.binding_window_ms,
        max_accounts: accounts.max_accounts_per_number,
        cap_window_ms: i64::from(accounts.window_days) * 24 * 3600 * 1000,
        one_verified_holder: accounts.one_verified_holder,
    };
    match st
        .store
        .bind_account(&account_ref, &body.verification_id, now, rules)
        .await?
    {
        BindOutcome::Bound {
            binding,
            replaced,
            superseded,
        } => {
            tracing::info!(verification_id = %binding.verification_id, subject = %binding.subject.blind_index.short(), replaced, superseded, "account bound");
            Ok(Json(view(&st, &binding)))
        }
        BindOutcome::PhoneLimitReached => Err(ApiError::PhoneLimitReached),
        BindOutcome::VerificationNotFound => Err(ApiError::VerificationNotFound),
        BindOutcome::NotApproved => Err(ApiError::VerificationNotApproved),
        BindOutcome::Stale => Err(ApiError::VerificationStale),
        BindOutcome::AccountMismatch => Err(ApiError::AccountMismatch),
    }
}

#[utoipa::path(
    get, path = "/v1/accounts/{account_ref}/phone", tag = "accounts",
    params(("account_ref" = String, Path, description = "The integrator's account reference")),
    responses((status = 200, body = BindingView), (status = 404, description = "binding_not_found")),
    security(("api_key" = []))
)]
pub async fn get(
    State(st): State<AppState>,
    _caller: VerifyCaller,
    ApiPath(account_ref): ApiPath<String>,
) -> Result<Json<BindingView>, ApiError> {
    let account_ref = validate::account_ref(&account_ref)?;
    let b = st
        .store
        .get_binding(&account_ref)
        .await?
        .ok_or(ApiError::BindingNotFound)?;
    Ok(Json(view(&st, &b)))
}

#[utoipa::path(
    delete, path = "/v1/accounts/{account_ref}/phone", tag = "accounts",
    params(("account_ref" = String, Path, description = "The integrator's account reference")),
    responses((status = 204, description = "Unbound"), (status = 404, description = "binding_not_found")),
    security(("api_key" = []))
)]
pub async fn unbind(
    State(st): State<AppState>,
    _caller: VerifyCaller,
    ApiPath(account_ref): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    let account_ref = validate::account_ref(&account_ref)?;
    if st
        .store
        .unbind_account(&account_ref, st.clock.now())
        .await?
    {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::BindingNotFound)
    }
}
