//! `/v1/services`: verify services (admin scope).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use ringfence_phone::E164;
use serde::{Deserialize, Deserializer, Serialize};
use utoipa::ToSchema;

use super::extract::{AdminCaller, ApiJson, ApiPath};
use super::{validate, ApiError};
use crate::abuse::policy::{AccountsPolicy, GeoPolicy, Limits, NumberTypes};
use crate::abuse::AbusePolicy;
use crate::app::{new_service_id, AppState};
use crate::clock::rfc3339;
use crate::store::ServiceRecord;
use crate::verify::{Channel, ServiceConfig, ServicePatch, TestNumber};

/// A test number and its fixed code, as given.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TestNumberInput {
    pub number: String,
    pub code: String,
}

/// A test number as shown: masked.
#[derive(Debug, Serialize, ToSchema)]
pub struct TestNumberView {
    pub number: String,
    pub code: String,
}

/// Create a service (`name` required) or change one (every field optional; `null`
/// clears `webotp_domain` and `android_app_hash`).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ServiceInput {
    pub name: Option<String>,
    pub friendly_name: Option<String>,
    /// 4–10, default 6.
    pub code_length: Option<u8>,
    /// 60–3600, default 600.
    pub ttl_seconds: Option<u32>,
    /// 1–20, default 5.
    pub max_check_attempts: Option<u32>,
    /// 1–20, default 5.
    pub max_sends: Option<u32>,
    /// 0–3600, default 30.
    pub resend_cooldown_seconds: Option<u32>,
    /// After the last wrong code, how long the number gets no new verification on this
    /// service. 0–86400, default 900.
    pub lockout_seconds: Option<u32>,
    pub channels: Option<Vec<Channel>>,
    pub default_locale: Option<String>,
    /// Language tag → template containing `{code}`; may use `{service}`, `{minutes}`.
    pub templates: Option<BTreeMap<String, String>>,
    /// Adds the WebOTP line `@domain #code` as the message's last line.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>)]
    pub webotp_domain: Option<Option<String>>,
    /// Adds the Android SMS Retriever app hash (11 characters).
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>)]
    pub android_app_hash: Option<Option<String>>,
    pub test_numbers: Option<Vec<TestNumberInput>>,
    /// Anti-abuse policy. `abuse.geo` is required when creating a service: a new
    /// service sends only where it is told to.
    pub abuse: Option<AbuseInput>,
}

/// Anti-abuse settings of a service; absent parts stay as they are (on creation: the
/// defaults, see the API guide).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AbuseInput {
    /// `strict`: mobile numbers only, SMS only (sets `number_types` and `channels`).
    pub preset: Option<Preset>,
    pub number_types: Option<NumberTypes>,
    pub geo: Option<GeoPolicy>,
    pub limits: Option<Limits>,
    pub accounts: Option<AccountsPolicy>,
}

#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Preset {
    /// The defaults: mobiles and fixed-or-mobile numbers; voice also fixed lines.
    Default,
    /// Mobile numbers only, SMS only.
    Strict,
}

/// Tells an absent field (`None`) from an explicit `null` (`Some(None)`).
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ServiceView {
    pub id: String,
    pub name: String,
    pub friendly_name: String,
    pub code_length: u8,
    pub ttl_seconds: u32,
    pub max_check_attempts: u32,
    pub max_sends: u32,
    pub resend_cooldown_seconds: u32,
    pub lockout_seconds: u32,
    pub channels: Vec<Channel>,
    pub default_locale: String,
    pub templates: BTreeMap<String, String>,
    pub webotp_domain: Option<String>,
    pub android_app_hash: Option<String>,
    pub test_numbers: Vec<TestNumberView>,
    pub abuse: AbusePolicy,
    pub created_at: String,
    pub updated_at: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ServiceList {
    pub services: Vec<ServiceView>,
}

impl From<&ServiceRecord> for ServiceView {
    fn from(r: &ServiceRecord) -> Self {
        let c = &r.config;
        Self {
            id: r.id.clone(),
            name: c.name.clone(),
            friendly_name: c.friendly_name.clone(),
            code_length: c.code_length,
            ttl_seconds: c.ttl_seconds,
            max_check_attempts: c.max_check_attempts,
            max_sends: c.max_sends,
            resend_cooldown_seconds: c.resend_cooldown_seconds,
            lockout_seconds: c.lockout_seconds,
            channels: c.channels.clone(),
            default_locale: c.default_locale.clone(),
            templates: c.templates.clone(),
            webotp_domain: c.webotp_domain.clone(),
            android_app_hash: c.android_app_hash.clone(),
            test_numbers: c
                .test_numbers
                .iter()
                .map(|t| TestNumberView {
                    number: t.masked.clone(),
                    code: t.code.clone(),
                })
                .collect(),
            abuse: c.abuse.clone(),
            created_at: rfc3339(r.created_at),
            updated_at: rfc3339(r.updated_at),
        }
    }
}

/// The change `i` asks for, on a service whose policy is now `base_abuse`.
fn to_patch(
    st: &AppState,
    i: ServiceInput,
    base_abuse: &AbusePolicy,
) -> Result<ServicePatch, ApiError> {
    let mut channels = i.channels;
    let abuse = match i.abuse {
        None => None,
        Some(a) => {
            let mut p = base_abuse.clone();
            match a.preset {
                Some(Preset::Strict) => {
                    p.number_types = NumberTypes::strict();
                    channels = Some(vec![Channel::Sms]);
                }
                Some(Preset::Default) => p.number_types = NumberTypes::default(),
                None => {}
            }
            if let Some(t) = a.number_types {
                p.number_types = t;
            }
            if let Some(g) = a.geo {
                p.geo = g;
            }
            if let Some(l) = a.limits {
                p.limits = l;
            }
            if let Some(acc) = a.accounts {
                p.accounts = acc;
            }
            Some(p)
        }
    };
    let test_numbers = match i.test_numbers {
        None => None,
        Some(list) => {
            let mut out = Vec::with_capacity(list.len());
            for t in list {
                let n = E164::parse(&t.number, None).map_err(|e| {
                    ApiError::InvalidServiceConfig(format!(
                        "test_numbers: not a valid phone number ({})",
                        e.code()
                    ))
                })?;
                out.push(TestNumber {
                    blind_index: hex::encode(st.keys.blind.index(n.expose()).0),
                    masked: n.masked(),
                    code: t.code,
                });
            }
            Some(out)
        }
    };
    Ok(ServicePatch {
        name: i.name,
        friendly_name: i.friendly_name,
        code_length: i.code_length,
        ttl_seconds: i.ttl_seconds,
        max_check_attempts: i.max_check_attempts,
        max_sends: i.max_sends,
        resend_cooldown_seconds: i.resend_cooldown_seconds,
        lockout_seconds: i.lockout_seconds,
        channels,
        default_locale: i.default_locale,
        templates: i.templates,
        webotp_domain: i.webotp_domain,
        android_app_hash: i.android_app_hash,
        test_numbers,
        abuse,
    })
}

#[utoipa::path(
    post, path = "/v1/services", tag = "services", request_body = ServiceInput,
    responses(
        (status = 201, body = ServiceView),
        (status = 400, description = "invalid_service_config (the message names the field)"),
        (status = 409, description = "service_name_taken"),
    ),
    security(("api_key" = []))
)]
pub async fn create(
    State(st): State<AppState>,
    _admin: AdminCaller,
    ApiJson(input): ApiJson<ServiceInput>,
) -> Result<(StatusCode, Json<ServiceView>), ApiError> {
    let now = st.clock.now();
    let name = input
        .name
        .clone()
        .ok_or_else(|| ApiError::InvalidServiceConfig("name: required".into()))?;
    if input.abuse.as_ref().is_none_or(|a| a.geo.is_none()) {
        return Err(ApiError::InvalidServiceConfig(
            "abuse.geo: required when creating a service: the regions each channel may reach \
             ({\"allowlist_only\": {\"allowed_regions\": [...]}}) or may not reach \
             ({\"allow_by_default\": {\"disallowed_regions\": [...]}})"
                .into(),
        ));
    }
    let mut base = ServiceConfig::default_named(&name);
    let patch = to_patch(&st, input, &base.abuse)?;
    if patch.friendly_name.is_none() {
        base.friendly_name = name.clone();
    }
    let config = base
        .apply(patch)
        .map_err(|e| ApiError::InvalidServiceConfig(e.to_string()))?;
    let rec = ServiceRecord {
        id: new_service_id(),
        config: Arc::new(config),
        created_at: now,
        updated_at: now,
    };
    st.store.create_service(rec.clone()).await?;
    st.services.invalidate();
    Ok((StatusCode::CREATED, Json(ServiceView::from(&rec))))
}

#[utoipa::path(get, path = "/v1/services", tag = "services", responses((status = 200, body = ServiceList)), security(("api_key" = [])))]
pub async fn list(
    State(st): State<AppState>,
    _admin: AdminCaller,
) -> Result<Json<ServiceList>, ApiError> {
    let services = st.store.list_services().await?;
    Ok(Json(ServiceList {
        services: services.iter().map(ServiceView::from).collect(),
    }))
}

#[utoipa::path(
    get, path = "/v1/services/{id}", tag = "services",
    params(("id" = String, Path, description = "Service id or name")),
    responses((status = 200, body = ServiceView), (status = 404, description = "service_not_found")),
    security(("api_key" = []))
)]
pub async fn get(
    State(st): State<AppState>,
    _admin: AdminCaller,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<ServiceView>, ApiError> {
    validate::reference("id", &id, 128).map_err(|_| ApiError::ServiceNotFound)?;
    let rec = st
        .store
        .get_service(&id)
        .await?
        .ok_or(ApiError::ServiceNotFound)?;
    Ok(Json(ServiceView::from(&rec)))
}

#[utoipa::path(
    patch, path = "/v1/services/{id}", tag = "services", request_body = ServiceInput,
    params(("id" = String, Path, description = "Service id or name")),
    responses(
        (status = 200, body = ServiceView),
        (status = 400, description = "invalid_service_config"),
        (status = 404, description = "service_not_found"),
        (status = 409, description = "service_name_taken"),
    ),
    security(("api_key" = []))
)]
pub async fn update(
    State(st): State<AppState>,
    _admin: AdminCaller,
    ApiPath(id): ApiPath<String>,
    ApiJson(input): ApiJson<ServiceInput>,
) -> Result<Json<ServiceView>, ApiError> {
    validate::reference("id", &id, 128).map_err(|_| ApiError::ServiceNotFound)?;
    let now = st.clock.now();
    let current = st
        .store
        .get_service(&id)
        .await?
        .ok_or(ApiError::ServiceNotFound)?;
    let patch = to_patch(&st, input, &current.config.abuse)?;
    let config = current
        .config
        .apply(patch)
        .map_err(|e| ApiError::InvalidServiceConfig(e.to_string()))?;
    let rec = st
        .store
        .update_service(&current.id, config, now)
        .await?
        .ok_or(ApiError::ServiceNotFound)?;
    st.services.invalidate();
    Ok(Json(ServiceView::from(&rec)))
}
