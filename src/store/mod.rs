//! Storage behind one interface, two backends (SQLite now, PostgreSQL next).
//!
//! Every operation that must be atomic is one method here and one transaction in the
//! backend: the backend loads the rows, asks the pure domain (`crate::verify`) what to
//! do, and applies the answer with conditional updates. Correctness under concurrency
//! comes from the database (conditional `UPDATE … WHERE status = 'pending'`, unique
//! indexes, transactions), never from in-process locks, so it still holds with several
//! instances sharing one PostgreSQL.
//!
//! The store never sees a raw phone number: subjects arrive with a blind index, a
//! wrapped data key and ciphertext made by the caller.

pub mod migrate;
pub mod postgres;
pub mod sqlite;

use std::sync::Arc;

use async_trait::async_trait;

use crate::clock::Millis;
use crate::counters::{GcraDecision, Rate};
use crate::crypto::BlindIndex;
use crate::verify::{Channel, OtpCode, ServiceConfig, Status, VerifyError};

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The database cannot be reached or refused work; worth retrying later.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// A uniqueness rule was violated; the string names the rule.
    #[error("conflict: {0}")]
    Conflict(&'static str),
    #[error("store error: {0}")]
    Internal(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

/// What an API key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// Start and check verifications, bind accounts.
    Verify,
    /// Manage services and read administrative data.
    Admin,
}

impl Scope {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "verify" => Some(Self::Verify),
            "admin" => Some(Self::Admin),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Verify => "verify",
            Self::Admin => "admin",
        }
    }
}

#[derive(Debug, Clone)]
pub struct ApiKeyRecord {
    pub id: String,
    pub name: String,
    pub secret_hash: Vec<u8>,
    pub scopes: Vec<Scope>,
    pub created_at: Millis,
    pub revoked_at: Option<Millis>,
}

#[derive(Debug, Clone)]
pub struct ServiceRecord {
    pub id: String,
    pub config: Arc<ServiceConfig>,
    pub created_at: Millis,
    pub updated_at: Millis,
}

/// A subject's sealed material, enough to decrypt its number given the KEK.
#[derive(Debug, Clone)]
pub struct SubjectSecrets {
    pub id: i64,
    pub blind_index: BlindIndex,
    /// `None` once the subject's key was destroyed (erasure).
    pub wrapped_key: Option<Vec<u8>>,
    pub phone_ct: Option<Vec<u8>>,
}

/// A subject seen for the first time, sealed by the caller.
#[derive(Debug, Clone)]
pub struct NewSubject {
    pub wrapped_key: Vec<u8>,
    pub phone_ct: Vec<u8>,
    pub country_code: u16,
    pub region: Option<String>,
    pub number_type: &'static str,
}

/// What a start seals under the subject's key.
#[derive(Debug, Clone, Default)]
pub struct Sealed {
    /// The message (recipient and body); `None` for a test number.
    pub message: Option<Vec<u8>>,
    /// Client signals.
    pub signals_ct: Option<Vec<u8>>,
}

/// Seals a start's message again under an existing subject's key. The store calls it
/// inside the transaction when the number already has a subject; it is pure
/// computation (unwrap the key, encrypt), no I/O.
pub type Reseal = Box<dyn FnOnce(&SubjectSecrets) -> Option<Sealed> + Send>;

#[derive(Debug)]
pub struct IdempotencyCmd {
    pub api_key_id: String,
    pub key: String,
    pub fingerprint: [u8; 32],
}

/// A start. The caller prepares it for a number seen for the first time (a new data
/// key, the number and the message sealed under it); when the subject exists, the store
/// uses `reseal` instead, so the common case needs no look-up before the write.
pub struct StartCmd {
    pub id_if_new: String,
    pub service_id: String,
    pub config: Arc<ServiceConfig>,
    pub blind_index: BlindIndex,
    pub new_subject: NewSubject,
    pub sealed: Sealed,
    pub reseal: Reseal,
    pub channel: Channel,
    pub locale: Option<String>,
    pub account_ref: Option<String>,
    pub purpose: Option<String>,
    pub code: OtpCode,
    pub idempotency: Option<IdempotencyCmd>,
    /// When set, the message is queued already claimed by the caller (attempt 1, leased
    /// for this many milliseconds), so that it can be sent at once from memory without
    /// a claim and a decryption (see [`crate::delivery::Handoff`]). If the caller dies
    /// before recording the result, the lease runs out and any worker sends it.
    pub claim_for_ms: Option<i64>,
    /// The number's prefix as the pumping detector groups numbers (`44:790`), stored
    /// with a new verification for the statistics per prefix.
    pub prefix: Option<String>,
    pub now: Millis,
}

/// A start whose command is still being decided (see
/// [`Store::start_verification_once_decided`]): it resolves to the command once the
/// caller's decision allows the start, or to `None` when it does not (refused, or the
/// caller gone), and then nothing is written.
pub type UndecidedStart =
    std::pin::Pin<Box<dyn std::future::Future<Output = Option<StartCmd>> + Send>>;

#[derive(Debug)]
pub enum StartOutcome {
    Started {
        verification: VerificationRow,
        resent: bool,
        /// The outbox id of the message, when it was queued claimed (`claim_for_ms`).
        claimed_message: Option<i64>,
    },
    /// An earlier request with the same idempotency key created this verification.
    Replayed(VerificationRow),
    /// The idempotency key was used before with a different request.
    IdempotencyMismatch,
    Refused(VerifyError),
}

/// A verification as stored, without the subject's secrets.
#[derive(Debug, Clone)]
pub struct VerificationRow {
    pub id: String,
    pub service_id: String,
    pub subject_id: i64,
    pub status: Status,
    pub channel: Channel,
    pub locale: Option<String>,
    pub account_ref: Option<String>,
    pub purpose: Option<String>,
    pub sends: u32,
    pub max_sends: u32,
    pub attempts: u32,
    pub max_attempts: u32,
    pub test_number: bool,
    pub created_at: Millis,
    pub updated_at: Millis,
    pub expires_at: Millis,
    pub approved_at: Option<Millis>,
}

/// What a new verification needs besides its service's configuration.
#[derive(Debug, Clone)]
pub struct NewVerification {
    pub id: String,
    pub service_id: String,
    pub subject_id: i64,
    pub channel: Channel,
    pub locale: Option<String>,
    pub account_ref: Option<String>,
    pub purpose: Option<String>,
    pub test_number: bool,
}

/// The rows the backends write, built in one place so that both report them alike
/// without reading them back.
impl VerificationRow {
    /// A verification as created: pending, one send, no attempt, the service's limits.
    pub fn pending(
        n: NewVerification,
        cfg: &ServiceConfig,
        now: Millis,
        expires_at: Millis,
    ) -> Self {
        Self {
            id: n.id,
            service_id: n.service_id,
            subject_id: n.subject_id,
            status: Status::Pending,
            channel: n.channel,
            locale: n.locale,
            account_ref: n.account_ref,
            purpose: n.purpose,
            sends: 1,
            max_sends: cfg.max_sends,
            attempts: 0,
            max_attempts: cfg.max_check_attempts,
            test_number: n.test_number,
            created_at: now,
            updated_at: now,
            expires_at,
            approved_at: None,
        }
    }

    /// After a new code was sent on it.
    pub fn resent(mut self, channel: Channel, now: Millis, expires_at: Millis) -> Self {
        self.channel = channel;
        self.sends += 1;
        self.updated_at = now;
        self.expires_at = expires_at;
        self
    }

    /// After its approval.
    pub fn approved(mut self, now: Millis) -> Self {
        self.status = Status::Approved;
        self.approved_at = Some(now);
        self.updated_at = now;
        self
    }
}

/// One message of a verification, as the outbox recorded it.
#[derive(Debug, Clone)]
pub struct SendAttempt {
    pub channel: Channel,
    pub status: String,
    pub created_at: Millis,
}

#[derive(Debug, Clone)]
pub struct VerificationDetails {
    pub row: VerificationRow,
    pub subject: SubjectSecrets,
    pub sends: Vec<SendAttempt>,
}

/// A verification after a check, with its subject's sealed number for the response.
#[derive(Debug, Clone)]
pub struct Checked {
    pub row: VerificationRow,
    pub subject: SubjectSecrets,
}

#[derive(Debug)]
pub enum CheckOutcome {
    Approved(Checked),
    Wrong {
        v: Checked,
        attempts_left: u32,
    },
    Refused {
        v: Checked,
        why: VerifyError,
    },
    /// The check's [`CheckGate`] refused it: nothing changed, and the answer says nothing
    /// of the code.
    Gated,
    NotFound,
}

/// What a check asks of a code of this number on this service: may it count? The
/// anti-abuse engine's per-number guess budget is such a gate. It is asked once per
/// check that compares a code, inside the check, so that a store which can
/// (PostgreSQL's batches) needs no separate look-up of the verification's number
/// first. A store asks in one of two ways:
///
/// - [`CheckGate::admit`], before comparing, when the budget lives in the counters
///   (SQLite): the gate holds a unit of the budget for the check (its caller gives it
///   back unless the code was wrong), so that a guess finding the budget spent is never
///   compared, whatever the concurrency;
/// - [`CheckGate::budget`] and then [`CheckGate::judged`], when the store keeps the
///   budget itself, beside the verification and written with it (PostgreSQL): the gate
///   names the budget's rate, the store applies it once the code is compared (a wrong
///   code spends a unit if one is left, a right one needs one left and spends nothing)
///   and tells the gate what it found. Nothing is held or given back.
#[async_trait]
pub trait CheckGate: Send + Sync {
    /// `true` compares the code; `false` answers [`CheckOutcome::Gated`].
    async fn admit(&self, blind_index: &BlindIndex, service_id: &str) -> bool;

    /// The rate of the budget of codes of numbers on `service_id`, for a store that
    /// keeps it; `None`: no budget, every code counts.
    async fn budget(&self, service_id: &str) -> Option<Rate>;

    /// What the store's budget found for a compared code (`right`: whether it
    /// matched): for a right code whether a unit is left, for a wrong one whether one
    /// could be spent. `true` lets the comparison's outcome stand; `false` answers
    /// [`CheckOutcome::Gated`] and the comparison changes nothing.
    fn judged(
        &self,
        blind_index: &BlindIndex,
        service_id: &str,
        right: bool,
        found: &GcraDecision,
    ) -> bool;
}

#[derive(Debug)]
pub enum CancelOutcome {
    Canceled(VerificationRow),
    NotPending(VerificationRow),
    NotFound,
}

#[derive(Debug, Clone)]
pub struct BindingRow {
    pub account_ref: String,
    pub subject: SubjectSecrets,
    pub verification_id: String,
    pub verified_at: Millis,
}

/// An anti-abuse decision that kept a message from going out, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecisionRecord {
    pub id: i64,
    pub at: Millis,
    pub service_id: String,
    /// The shadow-blocked verification; `None` for a block.
    pub verification_id: Option<String>,
    /// `block` or `shadow_block`.
    pub action: String,
    pub reasons: Vec<String>,
    /// JSON array of `{"name", "value"}`.
    pub factors: String,
    pub channel: String,
    pub country_code: u16,
    pub region: Option<String>,
    pub number_type: String,
}

/// Which decisions to list: newest first, before `before_id` (paging), with `reason`
/// among their reasons.
#[derive(Debug, Clone, Default)]
pub struct DecisionFilter {
    pub reason: Option<String>,
    pub service_id: Option<String>,
    pub before_id: Option<i64>,
    pub limit: u32,
}

/// An entry of an operator list (`ban` or `safe`): a number (hex of its blind index),
/// a number prefix (E.164 digits without `+`) or an IP network (CIDR).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListEntry {
    pub id: i64,
    pub list: String,
    pub kind: String,
    pub value: String,
    pub reason: String,
    pub created_at: Millis,
    pub expires_at: Option<Millis>,
}

/// Traffic of one country calling code since some time, for the admin statistics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CountryStats {
    pub country_code: u16,
    /// Verifications that sent a message (test numbers and shadow blocks excluded).
    pub verifications: u64,
    /// Messages queued (first sends and re-sends).
    pub sends: u64,
    pub approvals: u64,
    pub blocked: u64,
    pub shadow_blocked: u64,
}

impl CountryStats {
    /// Per-country rows from the two queries each backend runs — verifications
    /// `(country, verifications, sends, approvals)` and decisions `(country, blocked,
    /// shadow_blocked)` — merged, in country order.
    pub fn merge(
        verifications: impl IntoIterator<Item = (u16, u64, u64, u64)>,
        decisions: impl IntoIterator<Item = (u16, u64, u64)>,
    ) -> Vec<Self> {
        let mut by_cc: std::collections::BTreeMap<u16, Self> = Default::default();
        for (cc, verifications, sends, approvals) in verifications {
            let e = by_cc.entry(cc).or_insert_with(|| Self {
                country_code: cc,
                ..Self::default()
            });
            (e.verifications, e.sends, e.approvals) = (verifications, sends, approvals);
        }
        for (cc, blocked, shadow_blocked) in decisions {
            let e = by_cc.entry(cc).or_insert_with(|| Self {
                country_code: cc,
                ..Self::default()
            });
            (e.blocked, e.shadow_blocked) = (blocked, shadow_blocked);
        }
        by_cc.into_values().collect()
    }
}

/// What a binding must respect (from the settings and the verification's service).
#[derive(Debug, Clone, Copy)]
pub struct BindRules {
    /// How long after approval a verification may still be bound.
    pub approval_window_ms: i64,
    /// Accounts one number may be bound to within `cap_window_ms`, counting ended
    /// bindings (tombstones) too.
    pub max_accounts: u32,
    pub cap_window_ms: i64,
    /// Recycled numbers: binding ends every other live binding of the number
    /// (`superseded`).
    pub one_verified_holder: bool,
}

#[derive(Debug)]
pub enum BindOutcome {
    Bound {
        binding: BindingRow,
        replaced: bool,
        /// Live bindings of other accounts ended by this one (one-verified-holder mode).
        superseded: u32,
    },
    /// The number was bound to `max_accounts` other accounts within the window.
    PhoneLimitReached,
    VerificationNotFound,
    NotApproved,
    /// Approved too long ago to bind now.
    Stale,
    /// The verification was started for another account reference.
    AccountMismatch,
}

/// A claimed outbox message. The payload is sealed under the subject's key.
#[derive(Debug, Clone)]
pub struct OutboxItem {
    pub id: i64,
    pub verification_id: String,
    pub channel: Channel,
    pub payload: Vec<u8>,
    pub subject: SubjectSecrets,
    pub attempts: u32,
    pub not_after: Millis,
}

#[derive(Debug, Clone)]
pub enum DeliveryResult {
    Sent { provider_ref: Option<String> },
    Retry { at: Millis, error: String },
    Failed { error: String },
}

/// Counts the outbox worker reports after a claim.
#[derive(Debug, Default, Clone)]
pub struct OutboxClaim {
    pub items: Vec<OutboxItem>,
    pub expired: u64,
}

/// What one janitor pass cleaned up.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SweepReport {
    /// Pending verifications past expiry, now `expired` with their code hash erased.
    pub expired: u64,
    /// Idempotency keys older than their retention.
    pub idempotency_keys: u64,
    /// Lockouts that have ended.
    pub lockouts: u64,
    /// Guess budgets whole again (a store that keeps them: PostgreSQL).
    pub guess_budgets: u64,
    /// Ended bindings (tombstones) older than [`TOMBSTONE_RETENTION_MS`].
    pub tombstones: u64,
}

/// How long an ended binding stays as a tombstone that the accounts-per-number cap
/// counts: the longest cap window a service may set (`window_days` ≤ 366).
pub const TOMBSTONE_RETENTION_MS: Millis = 366 * 24 * 3600 * 1000;

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Cheap round trip, for `/readyz`.
    async fn ping(&self) -> StoreResult<()>;

    async fn create_api_key(&self, key: ApiKeyRecord) -> StoreResult<()>;
    async fn get_api_key(&self, id: &str) -> StoreResult<Option<ApiKeyRecord>>;
    async fn list_api_keys(&self) -> StoreResult<Vec<ApiKeyRecord>>;
    /// Revokes a key; `false` if there is no such active key.
    async fn revoke_api_key(&self, id: &str, now: Millis) -> StoreResult<bool>;

    /// Creates a service; `Conflict("service_name")` if the name is taken.
    async fn create_service(&self, rec: ServiceRecord) -> StoreResult<()>;
    /// Finds a service by id or by name.
    async fn get_service(&self, id_or_name: &str) -> StoreResult<Option<ServiceRecord>>;
    async fn list_services(&self) -> StoreResult<Vec<ServiceRecord>>;
    async fn update_service(
        &self,
        id: &str,
        config: ServiceConfig,
        now: Millis,
    ) -> StoreResult<Option<ServiceRecord>>;

    async fn start_verification(&self, cmd: StartCmd) -> StoreResult<StartOutcome>;
    /// [`Store::start_verification`] of a start that is queued before it is decided, so
    /// that the caller's decision (with counters in Redis, a round trip) is made while
    /// the start waits for its turn to be written. `None`: the start was withdrawn
    /// (`cmd` resolved to `None`) and nothing was written. A store that batches starts
    /// (PostgreSQL) queues it at once and waits for the decisions of a batch before it
    /// takes a connection, as a decision may itself read the database; by default the
    /// decision is awaited first.
    async fn start_verification_once_decided(
        &self,
        cmd: UndecidedStart,
    ) -> StoreResult<Option<StartOutcome>> {
        match cmd.await {
            Some(cmd) => self.start_verification(cmd).await.map(Some),
            None => Ok(None),
        }
    }
    async fn check_verification(
        &self,
        id: &str,
        code: OtpCode,
        now: Millis,
    ) -> StoreResult<CheckOutcome>;
    /// [`Store::check_verification`], asking `gate` first with the verification's
    /// number and service. By default one look-up of the owner, then the check.
    async fn check_gated(
        &self,
        id: &str,
        code: OtpCode,
        now: Millis,
        gate: Arc<dyn CheckGate>,
    ) -> StoreResult<CheckOutcome> {
        let Some((bi, service_id)) = self.verification_owner(id).await? else {
            return Ok(CheckOutcome::NotFound);
        };
        if !gate.admit(&bi, &service_id).await {
            return Ok(CheckOutcome::Gated);
        }
        self.check_verification(id, code, now).await
    }
    /// A check of the pending verification of a number on a service (a check by
    /// number), asking `gate` as [`Store::check_gated`] does; `NotFound` when there is
    /// none, and nobody is asked. By default [`Store::find_pending`], then the gate,
    /// asked with the number and service, then the check.
    async fn check_pending_gated(
        &self,
        bi: &BlindIndex,
        service_id: &str,
        code: OtpCode,
        now: Millis,
        gate: Arc<dyn CheckGate>,
    ) -> StoreResult<CheckOutcome> {
        let Some(id) = self.find_pending(bi, service_id, now).await? else {
            return Ok(CheckOutcome::NotFound);
        };
        if !gate.admit(bi, service_id).await {
            return Ok(CheckOutcome::Gated);
        }
        self.check_verification(&id, code, now).await
    }
    async fn get_verification(&self, id: &str) -> StoreResult<Option<VerificationDetails>>;
    /// The id of the pending verification of a number on a service, if any.
    async fn find_pending(
        &self,
        bi: &BlindIndex,
        service_id: &str,
        now: Millis,
    ) -> StoreResult<Option<String>>;
    /// The blind index of a verification's number and its service id: what a check
    /// needs to meter guesses per number before the code is compared.
    async fn verification_owner(&self, id: &str) -> StoreResult<Option<(BlindIndex, String)>>;
    async fn cancel_verification(&self, id: &str, now: Millis) -> StoreResult<CancelOutcome>;

    async fn bind_account(
        &self,
        account_ref: &str,
        verification_id: &str,
        now: Millis,
        rules: BindRules,
    ) -> StoreResult<BindOutcome>;
    async fn get_binding(&self, account_ref: &str) -> StoreResult<Option<BindingRow>>;

    /// Records a decision (its `id` is assigned); returns the id.
    async fn record_decision(&self, d: DecisionRecord) -> StoreResult<i64>;
    async fn list_decisions(&self, f: DecisionFilter) -> StoreResult<Vec<DecisionRecord>>;
    /// Sends, approvals and refusals per country calling code since `since`.
    async fn country_stats(&self, since: Millis) -> StoreResult<Vec<CountryStats>>;
    /// Verifications, sends and approvals per number prefix since `since`, the `limit`
    /// prefixes with the most sends first (`country_code` holds 0; refusals are not
    /// counted per prefix).
    async fn prefix_stats(
        &self,
        since: Millis,
        limit: u32,
    ) -> StoreResult<Vec<(String, CountryStats)>>;

    /// Adds an entry to an operator list, or replaces the reason and expiry of the same
    /// (list, kind, value); returns its id.
    async fn put_list_entry(&self, e: ListEntry) -> StoreResult<i64>;
    /// The entries that still apply at `now`.
    async fn list_entries(&self, now: Millis) -> StoreResult<Vec<ListEntry>>;
    async fn remove_list_entry(&self, id: i64) -> StoreResult<bool>;
    async fn unbind_account(&self, account_ref: &str, now: Millis) -> StoreResult<bool>;

    /// Claims up to `limit` due messages for `lease_ms`; messages past their code's
    /// expiry are marked expired and their content erased instead.
    async fn claim_outbox(
        &self,
        now: Millis,
        limit: u32,
        lease_ms: i64,
    ) -> StoreResult<OutboxClaim>;
    /// Records the outcomes of sends (one transaction for a whole round).
    async fn finish_outbox(
        &self,
        results: Vec<(i64, DeliveryResult)>,
        now: Millis,
    ) -> StoreResult<()>;
    /// When the next queued message falls due, if any.
    async fn next_outbox_due(&self) -> StoreResult<Option<Millis>>;

    /// Expires pending verifications whose time is up (erasing their code hashes and
    /// queued messages), deletes idempotency keys created before `idempotency_before`
    /// and ended lockouts. Does at most `limit` rows of each kind per call.
    async fn sweep(
        &self,
        now: Millis,
        idempotency_before: Millis,
        limit: u32,
    ) -> StoreResult<SweepReport>;
}
