//! `/v1/verifications` and `/v1/verification-checks`: start, re-send, check, read and
//! cancel phone verifications.
//!
//! A handler turns the request into domain values first (`E164`, `Channel`, `OtpCode`,
//! validated references), seals what is personal under the subject's key, and hands one
//! command to the store. Nothing in a response reveals whether a number is bound to an
//! account: starting a verification never looks at bindings.

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use std::sync::Arc;
use tokio::sync::oneshot;
use tracing::Instrument;

use ringfence_phone::E164;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::extract::{ApiJson, ApiPath, VerifyCaller};
use super::{masked_number, validate, ApiError};
use crate::abuse::policy::RateSpec;
use crate::abuse::{Action, Decision, LimitState, Reason, SendContext};
use crate::app::AppState;
use crate::clock::{rfc3339, Millis};
use crate::counters::{GcraDecision, Rate};
use crate::crypto::{self, BlindIndex, DataKey};
use crate::delivery::{Handoff, OutgoingMessage, Payload};
use crate::store::{
    CancelOutcome, CheckGate, CheckOutcome, DecisionRecord, IdempotencyCmd, NewSubject, Reseal,
    Sealed, SendAttempt, ServiceRecord, StartCmd, StartOutcome, SubjectSecrets, VerificationRow,
};
use crate::verify::{Channel, OtpCode, Status, VerifyError};

/// Start a verification (or send a new code on the pending one).
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartVerification {
    /// The phone number, in international format (`+447700900123`, `tel:` URIs and
    /// punctuation accepted).
    pub to: String,
    /// `sms` (default), `voice` or `whatsapp`; must be enabled on the service.
    #[serde(default = "default_channel")]
    pub channel: Channel,
    /// Service id or name; `default` when absent.
    #[serde(default)]
    pub service: Option<String>,
    /// Language tag for the message template, e.g. `en`, `pt-BR`.
    #[serde(default)]
    pub locale: Option<String>,
    /// The integrator's account reference; binding then only works for this account.
    #[serde(default)]
    pub account_ref: Option<String>,
    /// Why the number is verified, e.g. `signup`, `login`, `change_number`.
    #[serde(default)]
    pub purpose: Option<String>,
    /// Client IP address as seen by the integrator (for abuse detection).
    #[serde(default)]
    pub ip: Option<String>,
    /// Client user agent (for abuse detection).
    #[serde(default)]
    pub user_agent: Option<String>,
    /// Client device identifier (for abuse detection).
    #[serde(default)]
    pub device_id: Option<String>,
}

fn default_channel() -> Channel {
    Channel::Sms
}

/// Check a code on a verification known by id.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckCode {
    /// The code the person typed.
    pub code: String,
}

/// Check a code on the pending verification of a number.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckByNumber {
    pub to: String,
    pub code: String,
    /// Service id or name; `default` when absent.
    #[serde(default)]
    pub service: Option<String>,
}

/// One message sent (or queued) for a verification.
#[derive(Debug, Serialize, ToSchema)]
pub struct MessageView {
    pub channel: Channel,
    /// `queued`, `sending`, `retry`, `sent`, `failed`, `expired` or `canceled`.
    pub status: String,
    pub created_at: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct VerificationView {
    pub id: String,
    pub service_id: String,
    pub status: Status,
    /// The number, masked (country code and last digits); `null` once erased.
    pub to: Option<String>,
    pub channel: Channel,
    pub locale: Option<String>,
    pub account_ref: Option<String>,
    pub purpose: Option<String>,
    /// Codes sent so far.
    pub send_attempts: u32,
    pub max_sends: u32,
    /// Wrong codes tried so far.
    pub check_attempts: u32,
    pub attempts_left: u32,
    pub created_at: String,
    pub updated_at: String,
    pub expires_at: String,
    pub approved_at: Option<String>,
    /// The messages of this verification (on `GET` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub messages: Option<Vec<MessageView>>,
}

impl VerificationView {
    fn new(row: &VerificationRow, to: Option<String>, now: Millis) -> Self {
        Self {
            id: row.id.clone(),
            service_id: row.service_id.clone(),
            status: row.status.effective(row.expires_at, now),
            to,
            channel: row.channel,
            locale: row.locale.clone(),
            account_ref: row.account_ref.clone(),
            purpose: row.purpose.clone(),
            send_attempts: row.sends,
            max_sends: row.max_sends,
            check_attempts: row.attempts,
            attempts_left: row.max_attempts.saturating_sub(row.attempts),
            created_at: rfc3339(row.created_at),
            updated_at: rfc3339(row.updated_at),
            expires_at: rfc3339(row.expires_at),
            approved_at: row.approved_at.map(rfc3339),
            messages: None,
        }
    }

    fn with_messages(mut self, sends: &[SendAttempt]) -> Self {
        self.messages = Some(
            sends
                .iter()
                .map(|s| MessageView {
                    channel: s.channel,
                    status: s.status.clone(),
                    created_at: rfc3339(s.created_at),
                })
                .collect(),
        );
        self
    }
}

fn parse_number(to: &str) -> Result<E164, ApiError> {
    if to.len() > 64 {
        return Err(ApiError::InvalidPhoneNumber("too_long"));
    }
    Ok(E164::parse(to, None)?)
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(v) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let s = v.to_str().map_err(|_| ApiError::InvalidIdempotencyKey)?;
    if s.is_empty() || s.len() > 255 || !s.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return Err(ApiError::InvalidIdempotencyKey);
    }
    Ok(Some(s.to_owned()))
}

#[derive(Serialize)]
struct Signals<'a> {
    ip: Option<&'a str>,
    user_agent: Option<&'a str>,
    device_id: Option<&'a str>,
}

/// What a start seals under the subject's key, ready to be sealed under either a fresh
/// key (a number seen for the first time) or the subject's existing one.
struct Sealer {
    kek: crate::crypto::Kek,
    blind_index: BlindIndex,
    /// The message: recipient and body (which holds the code). `None` for test numbers.
    payload: Option<Payload>,
    signals: Option<Vec<u8>>,
}

impl Sealer {
    fn seal_under(&self, key: &DataKey) -> Sealed {
        Sealed {
            message: self
                .payload
                .as_ref()
                .map(|p| p.seal(key, &self.blind_index)),
            signals_ct: self.signals.as_ref().map(|s| key.seal(s, b"signals")),
        }
    }

    /// Seals under a fresh key and describes the new subject, and returns the closure
    /// the store uses instead when the number already has a subject.
    fn prepare(self, number: &E164) -> (NewSubject, Sealed, Reseal) {
        let key = DataKey::generate();
        let new_subject = NewSubject {
            wrapped_key: self.kek.wrap(&key, &self.blind_index.0),
            phone_ct: key.seal(number.expose().as_bytes(), super::PHONE_AAD),
            country_code: number.country_code(),
            region: number.region().map(str::to_owned),
            number_type: number.number_type().as_str(),
        };
        let sealed = self.seal_under(&key);
        let reseal: Reseal = Box::new(move |existing: &SubjectSecrets| {
            let wrapped = existing.wrapped_key.as_ref()?;
            let key = self.kek.unwrap_key(wrapped, &existing.blind_index.0).ok()?;
            Some(self.seal_under(&key))
        });
        (new_subject, sealed, reseal)
    }
}

/// Stores a decision that kept a message from going out, for `GET /v1/admin/decisions`.
/// A failure to store it is logged; the answer to the request does not change.
async fn record_decision(
    st: &AppState,
    d: &Decision,
    service_id: &str,
    verification_id: Option<&str>,
    number: &E164,
    channel: Channel,
    now: Millis,
) {
    let record = DecisionRecord {
        id: 0,
        at: now,
        service_id: service_id.to_owned(),
        verification_id: verification_id.map(str::to_owned),
        action: d.action.as_str().to_owned(),
        reasons: d.reasons.iter().map(|r| r.as_str().to_owned()).collect(),
        factors: serde_json::to_string(&d.factors).unwrap_or_else(|_| "[]".into()),
        channel: channel.as_str().to_owned(),
        country_code: number.country_code(),
        region: number.region().map(str::to_owned),
        number_type: number.number_type().as_str().to_owned(),
    };
    if let Err(e) = st.store.record_decision(record).await {
        tracing::warn!(error = %e, "decision not recorded");
    }
}

/// The error a refused send answers with.
fn refusal(d: &Decision, number: &E164) -> ApiError {
    match (d.reasons.first(), &d.limit) {
        (Some(Reason::RateLimited), Some(l)) => ApiError::RateLimited(l.clone()),
        (Some(Reason::RegionNotAllowed), _) => {
            ApiError::RegionNotAllowed(number.region().unwrap_or("001").to_owned())
        }
        (Some(Reason::NumberTypeNotAllowed), _) => {
            ApiError::NumberTypeNotAllowed(number.number_type().as_str())
        }
        (Some(r @ (Reason::NumberBanned | Reason::PrefixBanned | Reason::IpBanned)), _) => {
            ApiError::Banned(r.as_str())
        }
        _ => ApiError::Internal("a refused send without a reason".into()),
    }
}

#[utoipa::path(
    post, path = "/v1/verifications", tag = "verifications",
    request_body = StartVerification,
    params(("Idempotency-Key" = Option<String>, Header, description = "Retries with the same key and body return the first result and send nothing")),
    responses(
        (status = 201, description = "Code sent (or queued)", body = VerificationView),
        (status = 400, description = "invalid_json, invalid_request, invalid_phone_number, invalid_field, channel_not_allowed, invalid_idempotency_key"),
        (status = 403, description = "number_type_not_allowed, region_not_allowed (the service's anti-abuse policy)"),
        (status = 404, description = "service_not_found"),
        (status = 422, description = "idempotency_key_reused"),
        (status = 429, description = "resend_cooldown, max_sends_reached, verification_locked, rate_limited; with Retry-After (and RateLimit, RateLimit-Policy for rate_limited)"),
    ),
    security(("api_key" = []))
)]
pub async fn start(
    State(st): State<AppState>,
    VerifyCaller(caller): VerifyCaller,
    headers: HeaderMap,
    ApiJson(body): ApiJson<StartVerification>,
) -> Result<Response, ApiError> {
    let now = st.clock.now();
    let number = parse_number(&body.to)?;
    let service_key = body
        .service
        .as_deref()
        .unwrap_or(crate::app::DEFAULT_SERVICE);
    validate::reference("service", service_key, 128)?;
    let locale = body.locale.as_deref().map(validate::locale).transpose()?;
    let account_ref = body
        .account_ref
        .as_deref()
        .map(validate::account_ref)
        .transpose()?;
    let purpose = body.purpose.as_deref().map(validate::purpose).transpose()?;
    let ip = body.ip.as_deref().map(validate::ip).transpose()?;
    let user_agent = body
        .user_agent
        .as_deref()
        .map(|v| validate::text("user_agent", v, 512))
        .transpose()?;
    let device_id = body
        .device_id
        .as_deref()
        .map(|v| validate::text("device_id", v, 128))
        .transpose()?;
    let idem = idempotency_key(&headers)?;

    let service = st
        .services
        .get(service_key, now)
        .await?
        .ok_or(ApiError::ServiceNotFound)?;
    if !service.config.allows(body.channel) {
        return Err(ApiError::ChannelNotAllowed(body.channel.as_str()));
    }
    let bi = st.keys.blind.index(number.expose());
    let test_code = service.config.test_code_for(&bi.0).map(str::to_owned);
    // Only a request with an Idempotency-Key needs its fingerprint.
    let idempotency = idem.map(|key| {
        let mut canonical = serde_json::to_vec(&body).expect("request serialises");
        canonical.extend_from_slice(service.id.as_bytes());
        IdempotencyCmd {
            api_key_id: caller.key_id.clone(),
            key,
            fingerprint: crypto::sha256(&canonical),
        }
    });

    let code = match &test_code {
        Some(c) => {
            OtpCode::parse(c).ok_or_else(|| ApiError::Internal("test code is malformed".into()))?
        }
        None => OtpCode::generate(service.config.code_length),
    };
    let payload = test_code.is_none().then(|| Payload {
        to: number.expose().to_owned(),
        body: service.config.render(locale.as_deref(), code.expose()),
    });
    let signals = (ip.is_some() || user_agent.is_some() || device_id.is_some()).then(|| {
        let s = Signals {
            ip: ip.as_deref(),
            user_agent: user_agent.as_deref(),
            device_id: device_id.as_deref(),
        };
        serde_json::to_vec(&s).expect("signals serialise")
    });
    // The start joins the store's queue now and is written once the decision below
    // allows it: with the counters in Redis, the decision's round trip is made while
    // the start waits for its batch. A refusal, an error, or the caller gone before the
    // decision drops `decided`, and the store writes nothing.
    let (decided, undecided) = oneshot::channel::<StartCmd>();
    let stored = {
        let store = st.store.clone();
        tokio::spawn(
            async move {
                let cmd = Box::pin(async move { undecided.await.ok() });
                store.start_verification_once_decided(cmd).await
            }
            .in_current_span(),
        )
    };
    // Test numbers never count and are never judged.
    let mut limit = None;
    let mut shadow: Option<Decision> = None;
    let mut noted: Option<Decision> = None;
    // The number's prefix as the decision judged it (none for test numbers).
    let mut prefix = None;
    if test_code.is_none() {
        let cx = SendContext {
            service_id: &service.id,
            number: &number,
            blind_index: &bi,
            channel: body.channel,
            ip: ip.as_deref().and_then(|v| v.parse().ok()),
            account_ref: account_ref.as_deref(),
            device_id: device_id.as_deref(),
        };
        let decision = st
            .abuse
            .decide_send(
                &service.config.abuse,
                st.lists.get(now).await?.as_ref(),
                &cx,
                now,
            )
            .await
            .map_err(|e| ApiError::Unavailable(format!("counters: {e}")))?;
        for event in &decision.events {
            tracing::warn!(event = ?event, "anti-abuse event");
        }
        prefix = decision.prefix.clone();
        st.metrics.decision(
            decision.action.as_str(),
            decision.reasons.first().map_or("none", |r| r.as_str()),
        );
        if decision.action != Action::Allow {
            tracing::info!(
                subject = %bi.short(),
                region = number.region().unwrap_or("-"),
                action = ?decision.action,
                reasons = ?decision.reasons,
                "send not allowed"
            );
        }
        match decision.action {
            Action::Allow => {
                limit = decision.limit.clone();
                // An allow with something to say (the safe list, or what monitor mode
                // would have done) is kept like a refusal.
                if !decision.factors.is_empty() {
                    noted = Some(decision);
                }
            }
            // Answered like any start; nothing is queued, nothing is sent.
            Action::ShadowBlock => shadow = Some(decision),
            Action::Block => {
                // The start is withdrawn at once: its batch does not wait for the record.
                drop(decided);
                record_decision(
                    &st,
                    &decision,
                    &service.id,
                    None,
                    &number,
                    body.channel,
                    now,
                )
                .await;
                return Err(refusal(&decision, &number));
            }
        }
    }
    let payload = payload.filter(|_| shadow.is_none());
    let sent_message = payload.is_some();
    // When the worker has room, the message is queued claimed and handed over from
    // memory once committed (no claim, no decryption); otherwise the worker finds it in
    // the outbox.
    let handoff = payload
        .as_ref()
        .and_then(|p| Some((st.outbox.reserve()?, p.to.clone(), p.body.clone())));
    let sealer = Sealer {
        kek: st.keys.kek.clone(),
        blind_index: bi,
        payload,
        signals,
    };
    let (new_subject, sealed, reseal) = sealer.prepare(&number);
    let cmd = StartCmd {
        id_if_new: crate::app::new_verification_id(),
        service_id: service.id.clone(),
        config: service.config.clone(),
        blind_index: bi,
        new_subject,
        sealed,
        reseal,
        channel: body.channel,
        locale,
        account_ref,
        purpose,
        code,
        idempotency,
        claim_for_ms: handoff.as_ref().map(|(slot, ..)| slot.lease_ms),
        prefix: prefix.as_ref().map(ToString::to_string),
        now,
    };
    let masked = Some(number.masked());
    let channel = body.channel;
    // The commit and what must follow it, as one task (see `detached`): the command
    // is handed to the store from there, so that once it is, all of it happens.
    detached(async move {
        // Refused only if the store's task already ended, with the error awaited next.
        let _ = decided.send(cmd);
        let outcome = stored
            .await
            .map_err(|_| ApiError::Internal("the start's task stopped".into()))??
            .ok_or_else(|| ApiError::Internal("a decided start was withdrawn".into()))?;
        match outcome {
            StartOutcome::Started {
                verification,
                resent,
                claimed_message,
            } => {
                if let Some(d) = shadow.as_ref().or(noted.as_ref()) {
                    record_decision(
                        &st,
                        d,
                        &service.id,
                        Some(&verification.id),
                        &number,
                        channel,
                        now,
                    )
                    .await;
                }
                if let (true, Some(p)) = (sent_message, &prefix) {
                    let (abuse, p) = (st.abuse.clone(), p.clone());
                    st.afterwork
                        .run(async move {
                            match abuse.record_send(&p, now).await {
                                Ok(events) => {
                                    for event in &events {
                                        tracing::warn!(event = ?event, "anti-abuse event");
                                    }
                                }
                                Err(e) => {
                                    tracing::warn!(error = %e, "send not recorded for the pumping detector")
                                }
                            }
                        })
                        .await;
                }
                match (claimed_message, handoff) {
                    (Some(message_id), Some((slot, to, text))) => slot.send(Handoff {
                        message: OutgoingMessage {
                            message_id,
                            attempt: 1,
                            verification_id: verification.id.clone(),
                            channel: verification.channel,
                            to,
                            body: text,
                        },
                        not_after: verification.expires_at,
                        prefix,
                    }),
                    _ => st.outbox.notify(),
                }
                tracing::debug!(
                    verification_id = %verification.id,
                    subject = %bi.short(),
                    region = number.region().unwrap_or("-"),
                    channel = channel.as_str(),
                    resent,
                    "verification started"
                );
                let mut res = (
                    StatusCode::CREATED,
                    Json(VerificationView::new(&verification, masked, now)),
                )
                    .into_response();
                if let Some(l) = &limit {
                    super::error::rate_limit_headers(res.headers_mut(), l);
                }
                Ok(res)
            }
            StartOutcome::Replayed(verification) => {
                let mut res = (
                    StatusCode::CREATED,
                    Json(VerificationView::new(&verification, masked, now)),
                )
                    .into_response();
                res.headers_mut()
                    .insert("idempotent-replayed", HeaderValue::from_static("true"));
                Ok(res)
            }
            StartOutcome::IdempotencyMismatch => Err(ApiError::IdempotencyKeyReused),
            StartOutcome::Refused(why) => Err(why.into()),
        }
    })
    .await
}

/// Runs a request's work in a task of its own, and waits for it. When a client goes
/// away, hyper drops the request's future wherever it is; what follows a commit (a
/// message's hand-over to the worker, the pumping detector's counts, a decision's
/// record, a guess budget's settling) must happen all the same.
async fn detached<F>(work: F) -> Result<Response, ApiError>
where
    F: std::future::Future<Output = Result<Response, ApiError>> + Send + 'static,
{
    use tracing::Instrument;
    tokio::spawn(work.in_current_span())
        .await
        .unwrap_or_else(|_| Err(ApiError::Internal("the request's task stopped".into())))
}

async fn check_by_id(st: &AppState, id: &str, code: &str) -> Result<Response, ApiError> {
    let now = st.clock.now();
    let code = OtpCode::parse(code).ok_or(ApiError::InvalidCode)?;
    // The store asks the gate with the verification's number and service, within the
    // check itself: no look-up of its owner first.
    let gate = Arc::new(GuessGate::new(st, None, now));
    let outcome = st.store.check_gated(id, code, now, gate.clone()).await;
    finish_check(st, &gate, outcome, now).await
}

/// The number's budget of wrong codes, as a check's gate (see [`CheckGate`] for the two
/// ways a store asks it). Asked before the code is compared, it reserves a unit, which
/// [`finish_check`] gives back unless the code was wrong, so a guess that finds the
/// budget spent is never compared, whatever the concurrency; without the counters,
/// such checks go on with only each verification's own attempt limit (enforced by the
/// database). A store that keeps the budget itself (PostgreSQL) asks it for the
/// budget's rate, and tells it what the budget found once the code is compared: a wrong
/// code spent a unit, a right one only needed one left, nothing to give back, and no
/// counters involved.
struct GuessGate {
    abuse: Arc<crate::abuse::Engine>,
    services: Arc<crate::app::ServiceCache>,
    /// The service, when the caller has it already (a check by number).
    service: Option<ServiceRecord>,
    now: Millis,
    asked: std::sync::Mutex<Gated>,
    /// The budget named to a store that keeps it ([`CheckGate::budget`]).
    spec: std::sync::Mutex<Option<RateSpec>>,
}

#[derive(Default)]
enum Gated {
    /// Nothing to give back or report: not asked, none configured, the counters
    /// unavailable, or asked after the code was compared and admitted.
    #[default]
    Open,
    /// A unit was reserved from this number's budget on this service.
    Reserved {
        bi: BlindIndex,
        service_id: String,
        limit: LimitState,
    },
    /// The budget is spent: the code does not count.
    Refused(LimitState),
}

impl GuessGate {
    fn new(st: &AppState, service: Option<ServiceRecord>, now: Millis) -> Self {
        Self {
            abuse: st.abuse.clone(),
            services: st.services.clone(),
            service,
            now,
            asked: Default::default(),
            spec: Default::default(),
        }
    }

    fn set(&self, gated: Gated) {
        *self.asked.lock().unwrap_or_else(|e| e.into_inner()) = gated;
    }

    fn take(&self) -> Gated {
        std::mem::take(&mut *self.asked.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// The service whose budget applies: borrowed when the caller had it (no copy of
    /// the service per check). `None` lets the check go on unmetered: no such service,
    /// or the store could not say.
    async fn service(&self, service_id: &str) -> Option<std::borrow::Cow<'_, ServiceRecord>> {
        match &self.service {
            Some(s) => Some(std::borrow::Cow::Borrowed(s)),
            None => match self.services.get(service_id, self.now).await {
                Ok(s) => s.map(std::borrow::Cow::Owned),
                Err(e) => {
                    tracing::warn!(error = %e, "service unavailable; checking with the per-verification limit only");
                    None
                }
            },
        }
    }

    /// Records the budget's answer; `true` lets the check count.
    fn answer(
        &self,
        judged: Result<Option<LimitState>, crate::counters::CountersError>,
        reserved: impl FnOnce(LimitState) -> Gated,
        bi: &BlindIndex,
    ) -> bool {
        match judged {
            Ok(Some(limit)) if limit.retry_after_ms.is_some() => {
                tracing::info!(subject = %bi.short(), "check refused: the number's guess budget is spent");
                self.set(Gated::Refused(limit));
                false
            }
            Ok(Some(limit)) => {
                self.set(reserved(limit));
                true
            }
            Ok(None) => true,
            Err(e) => {
                tracing::warn!(error = %e, "guess budget unavailable; checking with the per-verification limit only");
                true
            }
        }
    }
}

#[async_trait::async_trait]
impl CheckGate for GuessGate {
    async fn admit(&self, bi: &BlindIndex, service_id: &str) -> bool {
        let Some(service) = self.service(service_id).await else {
            return true;
        };
        let reserved = self
            .abuse
            .reserve_guess(&service.config.abuse, &service.id, bi, self.now)
            .await;
        self.answer(
            reserved,
            |limit| Gated::Reserved {
                bi: *bi,
                service_id: service.id.clone(),
                limit,
            },
            bi,
        )
    }

    async fn budget(&self, service_id: &str) -> Option<Rate> {
        let spec =
            crate::abuse::Engine::guess_budget(&self.service(service_id).await?.config.abuse)?;
        *self.spec.lock().unwrap_or_else(|e| e.into_inner()) = Some(spec);
        Some(spec.rate())
    }

    fn judged(
        &self,
        bi: &BlindIndex,
        _service_id: &str,
        _right: bool,
        found: &GcraDecision,
    ) -> bool {
        let spec = *self.spec.lock().unwrap_or_else(|e| e.into_inner());
        let Some(spec) = spec else {
            // Asked of no budget it named: nothing to judge by.
            return true;
        };
        // Final: the store wrote what a wrong code spent, a right one spent none.
        let limit = crate::abuse::Engine::guess_state(spec, found);
        self.answer(Ok(Some(limit)), |_| Gated::Open, bi)
    }
}

/// Answers a check: settles the gate's reservation (given back unless the code was
/// wrong), counts the outcome and renders it.
async fn finish_check(
    st: &AppState,
    gate: &GuessGate,
    outcome: Result<CheckOutcome, crate::store::StoreError>,
    now: Millis,
) -> Result<Response, ApiError> {
    let wrong = matches!(
        outcome,
        Ok(CheckOutcome::Wrong { .. })
            | Ok(CheckOutcome::Refused {
                why: VerifyError::MaxAttemptsReached { .. },
                ..
            })
    );
    let (refund, refused) = match gate.take() {
        Gated::Reserved {
            bi,
            service_id,
            limit,
        } if !wrong => (Some((bi, service_id, limit)), None),
        Gated::Refused(limit) => (None, Some(limit)),
        _ => (None, None),
    };
    // The number of an approved verification: its approval counts for its prefix.
    let approved = match &outcome {
        Ok(CheckOutcome::Approved(v)) => {
            super::open_number(st, &v.subject).map(|n| (n, v.row.test_number))
        }
        _ => None,
    };
    let masked = approved.as_ref().map(|(n, _)| n.masked());
    let counted = approved.and_then(|(n, test)| (!test).then_some(n));
    // Giving back the reservation and counting the approval: one round trip on Redis.
    if refund.is_some() || counted.is_some() {
        let abuse = st.abuse.clone();
        st.afterwork
            .run(async move {
                tokio::join!(
                    async {
                        if let Some((bi, service_id, limit)) = &refund {
                            if let Err(e) = abuse.refund_guess(limit, service_id, bi, now).await {
                                tracing::warn!(error = %e, "could not give back a guess reservation");
                            }
                        }
                    },
                    async {
                        if let Some(n) = &counted {
                            // Conversion per prefix, for the pumping detector.
                            if let Err(e) = abuse.record_approval(n, now).await {
                                tracing::warn!(error = %e, "approval not recorded for the pumping detector");
                            }
                        }
                    },
                );
            })
            .await;
    }
    st.metrics.check(match &outcome {
        Ok(CheckOutcome::Approved(_)) => "approved",
        Ok(CheckOutcome::Wrong { .. }) => "wrong",
        Ok(CheckOutcome::Refused { .. }) => "refused",
        Ok(CheckOutcome::Gated) => "rate_limited",
        Ok(CheckOutcome::NotFound) => "not_found",
        Err(_) => "error",
    });
    match outcome? {
        CheckOutcome::NotFound => Err(ApiError::VerificationNotFound),
        CheckOutcome::Gated => Err(match refused {
            Some(limit) => ApiError::RateLimited(limit),
            None => ApiError::Internal("a check was gated without a refusal".into()),
        }),
        CheckOutcome::Approved(v) => {
            tracing::debug!(verification_id = %v.row.id, "verification approved");
            Ok(Json(VerificationView::new(&v.row, masked, now)).into_response())
        }
        CheckOutcome::Wrong { v, .. } => {
            let to = masked_number(st, &v.subject);
            Ok(Json(VerificationView::new(&v.row, to, now)).into_response())
        }
        CheckOutcome::Refused { why, .. } => Err(why.into()),
    }
}

#[utoipa::path(
    post, path = "/v1/verifications/{id}/check", tag = "verifications",
    params(("id" = String, Path, description = "Verification id")),
    request_body = CheckCode,
    responses(
        (status = 200, description = "`approved`, or `pending` with `attempts_left` after a wrong code", body = VerificationView),
        (status = 400, description = "invalid_code"),
        (status = 404, description = "verification_not_found"),
        (status = 409, description = "verification_not_pending"),
        (status = 410, description = "verification_expired"),
        (status = 429, description = "max_attempts_reached, or rate_limited (the number's wrong-code budget), with Retry-After"),
    ),
    security(("api_key" = []))
)]
pub async fn check(
    State(st): State<AppState>,
    _caller: VerifyCaller,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<CheckCode>,
) -> Result<Response, ApiError> {
    validate::verification_id(&id)?;
    detached(async move { check_by_id(&st, &id, &body.code).await }).await
}

#[utoipa::path(
    post, path = "/v1/verification-checks", tag = "verifications",
    request_body = CheckByNumber,
    responses(
        (status = 200, description = "`approved`, or `pending` with `attempts_left` after a wrong code", body = VerificationView),
        (status = 400, description = "invalid_phone_number, invalid_code"),
        (status = 404, description = "verification_not_found: no pending verification for this number on this service"),
        (status = 429, description = "max_attempts_reached, or rate_limited (the number's wrong-code budget), with Retry-After"),
    ),
    security(("api_key" = []))
)]
pub async fn check_by_number(
    State(st): State<AppState>,
    _caller: VerifyCaller,
    ApiJson(body): ApiJson<CheckByNumber>,
) -> Result<Response, ApiError> {
    let number = parse_number(&body.to)?;
    let code = OtpCode::parse(&body.code).ok_or(ApiError::InvalidCode)?;
    detached(run_check_by_number(st, number, code, body.service)).await
}

async fn run_check_by_number(
    st: AppState,
    number: E164,
    code: OtpCode,
    service: Option<String>,
) -> Result<Response, ApiError> {
    let now = st.clock.now();
    let service_key = service.as_deref().unwrap_or(crate::app::DEFAULT_SERVICE);
    validate::reference("service", service_key, 128)?;
    let service = st
        .services
        .get(service_key, now)
        .await?
        .ok_or(ApiError::ServiceNotFound)?;
    let bi = st.keys.blind.index(number.expose());
    let service_id = service.id.clone();
    let gate = Arc::new(GuessGate::new(&st, Some(service), now));
    // The store finds the number's pending verification; none is `NotFound`.
    let outcome = st
        .store
        .check_pending_gated(&bi, &service_id, code, now, gate.clone())
        .await;
    finish_check(&st, &gate, outcome, now).await
}

#[utoipa::path(
    get, path = "/v1/verifications/{id}", tag = "verifications",
    params(("id" = String, Path, description = "Verification id")),
    responses((status = 200, body = VerificationView), (status = 404, description = "verification_not_found")),
    security(("api_key" = []))
)]
pub async fn get(
    State(st): State<AppState>,
    _caller: VerifyCaller,
    ApiPath(id): ApiPath<String>,
) -> Result<Response, ApiError> {
    validate::verification_id(&id)?;
    let d = st
        .store
        .get_verification(&id)
        .await?
        .ok_or(ApiError::VerificationNotFound)?;
    let to = masked_number(&st, &d.subject);
    Ok(
        Json(VerificationView::new(&d.row, to, st.clock.now()).with_messages(&d.sends))
            .into_response(),
    )
}

#[utoipa::path(
    post, path = "/v1/verifications/{id}/cancel", tag = "verifications",
    params(("id" = String, Path, description = "Verification id")),
    responses(
        (status = 200, description = "Canceled; queued messages are not sent", body = VerificationView),
        (status = 404, description = "verification_not_found"),
        (status = 409, description = "verification_not_pending"),
        (status = 410, description = "verification_expired"),
    ),
    security(("api_key" = []))
)]
pub async fn cancel(
    State(st): State<AppState>,
    _caller: VerifyCaller,
    ApiPath(id): ApiPath<String>,
) -> Result<Response, ApiError> {
    validate::verification_id(&id)?;
    let now = st.clock.now();
    match st.store.cancel_verification(&id, now).await? {
        CancelOutcome::Canceled(row) => {
            let to = st
                .store
                .get_verification(&id)
                .await?
                .and_then(|d| masked_number(&st, &d.subject));
            Ok(Json(VerificationView::new(&row, to, now)).into_response())
        }
        CancelOutcome::NotPending(row) => Err(crate::verify::VerifyError::NotPending(
            row.status.effective(row.expires_at, now),
        )
        .into()),
        CancelOutcome::NotFound => Err(ApiError::VerificationNotFound),
    }
}
