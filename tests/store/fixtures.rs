//! What the tests build their data with: numbers, services, start commands sealed the
//! way the HTTP edge seals them, and readers for the sealed data.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use ringfence::clock::Millis;
use ringfence::crypto::{BlindIndex, DataKey};
use ringfence::delivery::Payload;
use ringfence::store::{
    CheckOutcome, IdempotencyCmd, NewSubject, OutboxItem, Reseal, Sealed, ServiceRecord, StartCmd,
    StartOutcome, SubjectSecrets, VerificationDetails, VerificationRow,
};
use ringfence::verify::{Channel, OtpCode, ServiceConfig, Status};
use ringfence_phone::E164;

use crate::backend::Backend;

/// The fixed start of every test's time line; tests move forward from it by hand.
pub const T0: Millis = 1_700_000_000_000;
pub const SECOND: Millis = 1_000;
/// The lifetime of a code on a default service (`ttl_seconds = 600`).
pub const TTL: Millis = 600 * SECOND;

/// The code most tests send, and one that is certainly not it.
pub const CODE: &str = "123456";
pub const WRONG: &str = "000000";

/// Valid UK mobile numbers (the subject material is built from the parsed number).
pub const PHONE: &str = "+447400123456";
pub const PHONE_2: &str = "+447911123456";

/// A distinct valid UK mobile number for each `n` below one million.
pub fn mobile(n: u32) -> String {
    assert!(n < 1_000_000, "mobile(n) takes six digits");
    format!("+447900{n:06}")
}

pub fn otp(code: &str) -> OtpCode {
    OtpCode::parse(code).unwrap_or_else(|| panic!("{code} is not a valid code"))
}

/// The associated data the HTTP edge seals a subject's number with.
const PHONE_AAD: &[u8] = b"phone";

/// Compares two verification rows field by field (the store's row types do not
/// implement `PartialEq`; their `Debug` output lists every field).
#[track_caller]
pub fn assert_same_row(actual: &VerificationRow, expected: &VerificationRow) {
    assert_eq!(format!("{actual:?}"), format!("{expected:?}"));
}

impl Backend {
    /// Creates a service named `name` (id `SV-<name>`) at `T0`, with the defaults as
    /// `tune` leaves them.
    pub async fn service(
        &self,
        name: &str,
        tune: impl FnOnce(&mut ServiceConfig),
    ) -> ServiceRecord {
        let mut config = ServiceConfig::default_named(name);
        tune(&mut config);
        config
            .validate()
            .expect("test service configuration is valid");
        let rec = ServiceRecord {
            id: format!("SV-{name}"),
            config: Arc::new(config),
            created_at: T0,
            updated_at: T0,
        };
        self.store
            .create_service(rec.clone())
            .await
            .expect("create service");
        rec
    }

    pub fn blind(&self, number: &str) -> BlindIndex {
        self.keys.blind.index(number)
    }

    /// A start of a verification of `number` on `service` at `T0` with `CODE`; the
    /// builder's methods change that.
    pub fn start<'a>(&'a self, service: &ServiceRecord, number: &str) -> Start<'a> {
        Start {
            b: self,
            service: service.clone(),
            number: number.to_owned(),
            code: CODE.to_owned(),
            now: T0,
            channel: Channel::Sms,
            locale: None,
            account_ref: None,
            purpose: None,
            idempotency: None,
            claim_for_ms: None,
            test_number: false,
        }
    }

    /// Starts and approves a verification of `number` (started at `at`, approved one
    /// second later); returns the approved row.
    pub async fn approved(
        &self,
        service: &ServiceRecord,
        number: &str,
        account_ref: Option<&str>,
        at: Millis,
    ) -> VerificationRow {
        let mut start = self.start(service, number).at(at);
        start.account_ref = account_ref.map(str::to_owned);
        let v = start.started().await;
        match self.check(&v.id, CODE, at + SECOND).await {
            CheckOutcome::Approved(c) => c.row,
            other => panic!("expected approval, got {other:?}"),
        }
    }

    pub async fn check(&self, id: &str, code: &str, now: Millis) -> CheckOutcome {
        self.store
            .check_verification(id, otp(code), now)
            .await
            .expect("check")
    }

    pub async fn details(&self, id: &str) -> VerificationDetails {
        self.store
            .get_verification(id)
            .await
            .expect("get verification")
            .unwrap_or_else(|| panic!("verification {id} exists"))
    }

    pub async fn status(&self, id: &str) -> Status {
        self.details(id).await.row.status
    }

    /// The statuses of a verification's messages, oldest first, as `get_verification`
    /// reports them.
    pub async fn message_statuses(&self, id: &str) -> Vec<String> {
        self.details(id)
            .await
            .sends
            .into_iter()
            .map(|s| s.status)
            .collect()
    }

    /// The subject's data key, unwrapped with the KEK as the delivery worker does.
    pub fn data_key(&self, s: &SubjectSecrets) -> DataKey {
        let wrapped = s.wrapped_key.as_ref().expect("subject has a wrapped key");
        self.keys
            .kek
            .unwrap_key(wrapped, &s.blind_index.0)
            .expect("the subject's key unwraps")
    }

    /// The subject's number, decrypted.
    pub fn phone_of(&self, s: &SubjectSecrets) -> String {
        let ct = s.phone_ct.as_ref().expect("subject has a phone ciphertext");
        let raw = self
            .data_key(s)
            .open(ct, PHONE_AAD)
            .expect("the phone ciphertext opens under the subject's key");
        String::from_utf8(raw).expect("the number is UTF-8")
    }

    /// A claimed message's content, opened as the delivery worker opens it.
    pub fn open_message(&self, item: &OutboxItem) -> Payload {
        Payload::open(
            &self.data_key(&item.subject),
            &item.subject.blind_index,
            &item.payload,
        )
        .expect("the message opens under its subject's key")
    }
}

/// A start command under construction.
pub struct Start<'a> {
    b: &'a Backend,
    service: ServiceRecord,
    number: String,
    code: String,
    now: Millis,
    channel: Channel,
    locale: Option<String>,
    account_ref: Option<String>,
    purpose: Option<String>,
    idempotency: Option<IdempotencyCmd>,
    claim_for_ms: Option<i64>,
    test_number: bool,
}

/// A start command ready for the store, with what the test needs to look behind it.
pub struct Prepared {
    pub cmd: StartCmd,
    /// The fresh data key the new-subject material is sealed under.
    pub fresh_key: DataKey,
    /// Set when the store calls the command's reseal closure.
    pub resealed: Arc<AtomicBool>,
}

impl Start<'_> {
    pub fn at(mut self, now: Millis) -> Self {
        self.now = now;
        self
    }

    pub fn code(mut self, code: &str) -> Self {
        self.code = code.to_owned();
        self
    }

    pub fn channel(mut self, channel: Channel) -> Self {
        self.channel = channel;
        self
    }

    pub fn account(mut self, account_ref: &str) -> Self {
        self.account_ref = Some(account_ref.to_owned());
        self
    }

    pub fn locale(mut self, locale: &str) -> Self {
        self.locale = Some(locale.to_owned());
        self
    }

    pub fn purpose(mut self, purpose: &str) -> Self {
        self.purpose = Some(purpose.to_owned());
        self
    }

    /// An `Idempotency-Key` of `api_key_id`; `request` stands for the request body
    /// (requests with the same number have the same fingerprint).
    /// Queues the message claimed by the caller for `lease_ms` (the hand-over path).
    pub fn claimed_for(mut self, lease_ms: i64) -> Self {
        self.claim_for_ms = Some(lease_ms);
        self
    }

    pub fn idempotency(mut self, api_key_id: &str, key: &str, request: u8) -> Self {
        self.idempotency = Some(IdempotencyCmd {
            api_key_id: api_key_id.to_owned(),
            key: key.to_owned(),
            fingerprint: [request; 32],
        });
        self
    }

    /// A test number of the service: the code is fixed and no message is queued.
    pub fn test_number(mut self) -> Self {
        self.test_number = true;
        self
    }

    /// Builds the command as the HTTP edge does: everything sealed under a fresh data
    /// key for a number seen for the first time, and a closure that seals the same
    /// content under the existing subject's key otherwise.
    pub fn prepare(self) -> Prepared {
        let keys = &self.b.keys;
        let bi = self.b.blind(&self.number);
        let number = E164::parse(&self.number, None)
            .unwrap_or_else(|e| panic!("test number {} is not valid: {e:?}", self.number));
        let body = self
            .service
            .config
            .render(self.locale.as_deref(), &self.code);
        let sealer = Sealer {
            blind_index: bi,
            message: (!self.test_number).then(|| (number.expose().to_owned(), body)),
        };
        let fresh_key = DataKey::generate();
        let new_subject = NewSubject {
            wrapped_key: keys.kek.wrap(&fresh_key, &bi.0),
            phone_ct: fresh_key.seal(number.expose().as_bytes(), PHONE_AAD),
            country_code: number.country_code(),
            region: number.region().map(str::to_owned),
            number_type: number.number_type().as_str(),
        };
        let sealed = sealer.seal_under(&fresh_key);
        let resealed = Arc::new(AtomicBool::new(false));
        let reseal: Reseal = {
            let kek = keys.kek.clone();
            let flag = resealed.clone();
            Box::new(move |existing: &SubjectSecrets| {
                flag.store(true, Ordering::SeqCst);
                let key = kek
                    .unwrap_key(existing.wrapped_key.as_ref()?, &existing.blind_index.0)
                    .ok()?;
                Some(sealer.seal_under(&key))
            })
        };
        let cmd = StartCmd {
            id_if_new: ringfence::app::new_verification_id(),
            service_id: self.service.id.clone(),
            config: self.service.config.clone(),
            blind_index: bi,
            new_subject,
            sealed,
            reseal,
            channel: self.channel,
            locale: self.locale,
            account_ref: self.account_ref,
            purpose: self.purpose,
            code: otp(&self.code),
            idempotency: self.idempotency,
            claim_for_ms: self.claim_for_ms,
            // Every fixture number is a UK mobile of the 44:7 range.
            prefix: Some("44:7".to_owned()),
            now: self.now,
        };
        Prepared {
            cmd,
            fresh_key,
            resealed,
        }
    }

    pub async fn send(self) -> StartOutcome {
        let store = self.b.store.clone();
        store
            .start_verification(self.prepare().cmd)
            .await
            .expect("start")
    }

    /// Sends the start and expects a new verification.
    pub async fn started(self) -> VerificationRow {
        match self.send().await {
            StartOutcome::Started {
                verification,
                resent: false,
                ..
            } => verification,
            other => panic!("expected a new verification, got {other:?}"),
        }
    }

    /// Sends the start and expects a new code on the pending verification.
    pub async fn resent(self) -> VerificationRow {
        match self.send().await {
            StartOutcome::Started {
                verification,
                resent: true,
                ..
            } => verification,
            other => panic!("expected a resend, got {other:?}"),
        }
    }
}

/// What a start seals under a subject's key: the message (recipient and body) and the
/// client signals.
struct Sealer {
    blind_index: BlindIndex,
    message: Option<(String, String)>,
}

impl Sealer {
    fn seal_under(&self, key: &DataKey) -> Sealed {
        Sealed {
            message: self.message.as_ref().map(|(to, body)| {
                Payload {
                    to: to.clone(),
                    body: body.clone(),
                }
                .seal(key, &self.blind_index)
            }),
            signals_ct: Some(key.seal(br#"{"ip":"192.0.2.1"}"#, b"signals")),
        }
    }
}
