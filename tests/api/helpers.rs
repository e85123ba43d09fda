//! The test harness: `spawn_app()` starts the real `Application` in-process on
//! `127.0.0.1:0` with a fresh SQLite file, ephemeral keys, a manual clock and a
//! recording SMS sink, and hands back a `TestApp` that speaks to it over HTTP.
//!
//! Every test gets its own app, database and keys, so tests share nothing and may run
//! in any order. Nothing here sleeps for a fixed time: waiting for the asynchronous
//! outbox worker is a bounded poll (`eventually`), and time-dependent behaviour is
//! driven by moving the manual clock (`advance`).

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use reqwest::header::HeaderMap;
use reqwest::{Method, RequestBuilder, StatusCode};
use ringfence::app::{AppOptions, Application, Settings};
use ringfence::clock::{Clock, ManualClock, Millis, SystemClock};
use ringfence::crypto::{self, Keyring};
use ringfence::delivery::{OutgoingMessage, RecordingSink, SendError, WorkerSettings};
use ringfence::store::sqlite::SqliteStore;
use ringfence::store::{ApiKeyRecord, Scope, Store};
use serde_json::{json, Value};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Numbers libphonenumber accepts as valid (UK 74xx/79xx mobiles, a US and a French
/// one). `+447700900123`, the number often used in examples, is *not* valid.
pub const UK_MOBILE: &str = "+447400123456";
pub const UK_MOBILE_2: &str = "+447911123456";
pub const US_NUMBER: &str = "+14155552671";
pub const US_NUMBER_2: &str = "+12015550123";
pub const FR_MOBILE: &str = "+33612345678";

/// A distinct valid UK mobile number for each `n` below one million:
/// `+447900` followed by six digits.
pub fn mobile(n: u32) -> String {
    assert!(n < 1_000_000, "mobile(n) takes six digits");
    format!("+447900{n:06}")
}

/// The masked form the API shows for a number, e.g. `+44 •••• ••3456`.
pub fn masked(e164: &str) -> String {
    ringfence_phone::E164::parse(e164, None)
        .unwrap_or_else(|e| panic!("test number {e164} is not valid: {e:?}"))
        .masked()
}

/// A code of the same length that is certainly not `code` (every digit shifted by one).
pub fn wrong_code(code: &str) -> String {
    code.bytes()
        .map(|b| char::from(b'0' + (b - b'0' + 1) % 10))
        .collect()
}

/// The first run of at least four digits in a message body: the code. (WebOTP and
/// templates repeat it later; the first occurrence is the one the template put there.)
pub fn extract_code(body: &str) -> Option<String> {
    body.split(|c: char| !c.is_ascii_digit())
        .find(|run| run.len() >= 4)
        .map(str::to_owned)
}

/// How long a bounded wait for the outbox worker may take before the test fails.
const WAIT_LIMIT: Duration = Duration::from_secs(15);
const WAIT_STEP: Duration = Duration::from_millis(10);

/// Polls `probe` until it returns `Some`, for at most five seconds; panics naming
/// `what` otherwise. For waiting on asynchronous work (the outbox worker), never for
/// asserting on timing.
pub async fn eventually<T, F, Fut>(what: &str, probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    eventually_within(WAIT_LIMIT, what, probe).await
}

/// `eventually` with another bound, for slower things such as a process starting.
pub async fn eventually_within<T, F, Fut>(limit: Duration, what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(WAIT_STEP).await;
    }
}

/// A response read to the end: status, headers and body (parsed as JSON when it is).
#[derive(Debug)]
pub struct Resp {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub text: String,
    pub json: Value,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// `Retry-After` in seconds.
    pub fn retry_after(&self) -> Option<u64> {
        self.header("retry-after").and_then(|v| v.parse().ok())
    }

    /// A string at a JSON pointer of the body (e.g. `/error/message`).
    #[track_caller]
    pub fn str_at(&self, pointer: &str) -> &str {
        self.json
            .pointer(pointer)
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("no string at `{pointer}` in {} {}", self.status, self.text))
    }

    /// A string field of the JSON body; panics (showing the body) if absent.
    #[track_caller]
    pub fn str(&self, key: &str) -> &str {
        self.json[key]
            .as_str()
            .unwrap_or_else(|| panic!("no string `{key}` in {} {}", self.status, self.text))
    }

    /// A numeric field of the JSON body; panics (showing the body) if absent.
    #[track_caller]
    pub fn num(&self, key: &str) -> u64 {
        self.json[key]
            .as_u64()
            .unwrap_or_else(|| panic!("no number `{key}` in {} {}", self.status, self.text))
    }

    /// The top-level keys of a JSON object body.
    pub fn keys(&self) -> Vec<String> {
        self.json
            .as_object()
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default()
    }

    #[track_caller]
    pub fn assert_status(&self, status: u16) -> &Self {
        assert_eq!(
            self.status.as_u16(),
            status,
            "unexpected status; body: {}",
            self.text
        );
        self
    }

    /// Asserts the error envelope: the status, the stable `error.code`, a message, and
    /// an `error.request_id` equal to the `x-request-id` response header.
    #[track_caller]
    pub fn assert_error(&self, status: u16, code: &str) -> &Self {
        self.assert_status(status);
        assert_eq!(
            self.header("content-type"),
            Some("application/json"),
            "error bodies are JSON: {}",
            self.text
        );
        let err = &self.json["error"];
        assert_eq!(err["code"], code, "wrong error code; body: {}", self.text);
        assert!(
            err["message"].as_str().is_some_and(|m| !m.is_empty()),
            "error without a message: {}",
            self.text
        );
        let rid = err["request_id"]
            .as_str()
            .unwrap_or_else(|| panic!("error without request_id: {}", self.text));
        assert!(!rid.is_empty(), "empty request_id: {}", self.text);
        assert_eq!(
            self.header("x-request-id"),
            Some(rid),
            "error.request_id must equal the x-request-id header"
        );
        self
    }

    /// The stable error code, if this is an error response.
    pub fn error_code(&self) -> Option<&str> {
        self.json["error"]["code"].as_str()
    }
}

/// Sends a request and reads the whole response.
pub async fn fetch(rb: RequestBuilder) -> Resp {
    let res = rb.send().await.expect("request reaches the server");
    let status = res.status();
    let headers = res.headers().clone();
    let text = res.text().await.expect("response body is readable");
    let json = serde_json::from_str(&text).unwrap_or(Value::Null);
    Resp {
        status,
        headers,
        text,
        json,
    }
}

/// An HTTP client that never goes through a proxy (the tests talk to loopback).
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("reqwest client builds")
}

pub struct TestApp {
    pub addr: SocketAddr,
    pub client: reqwest::Client,
    /// A key with the `verify` scope.
    pub verify_key: String,
    /// A key with the `admin` scope only.
    pub admin_key: String,
    pub clock: ManualClock,
    pub sink: RecordingSink,
    store: Option<Arc<dyn Store>>,
    db_path: PathBuf,
    dir: tempfile::TempDir,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<anyhow::Result<()>>>,
}

/// Creates an API key directly in the store and returns the full key.
pub async fn create_key(store: &dyn Store, name: &str, scopes: Vec<Scope>) -> (String, String) {
    let key = crypto::generate_api_key();
    store
        .create_api_key(ApiKeyRecord {
            id: key.id.clone(),
            name: name.to_owned(),
            secret_hash: key.secret_hash.to_vec(),
            scopes,
            created_at: SystemClock.now(),
            revoked_at: None,
        })
        .await
        .expect("API key is stored");
    (key.id.clone(), key.key.clone())
}

/// Where a test's manual clock starts: the wall clock, moved (by 30 minutes, then
/// by 2 hours if need be) into the first half of an hour and out of a day's last
/// two hours. The anti-abuse engine counts in hourly and daily windows, and a test
/// that sends, advances a few minutes and reads its figures must not see them
/// split by a boundary the wall clock happened to put in between.
fn test_start(wall: Millis) -> Millis {
    const MINUTE: Millis = 60_000;
    const HOUR: Millis = 60 * MINUTE;
    let mut t = wall;
    if t.rem_euclid(HOUR) >= 30 * MINUTE {
        t += 30 * MINUTE;
    }
    if t.rem_euclid(24 * HOUR) >= 22 * HOUR {
        t += 2 * HOUR;
    }
    t
}

/// Starts a fresh instance: its own temporary database, keys, clock and sink.
pub async fn spawn_app() -> TestApp {
    spawn_app_with_counters(Arc::new(ringfence::counters::MemoryCounters::default())).await
}

/// `spawn_app` with the given counters (e.g. Redis, or Redis that cannot be reached).
pub async fn spawn_app_with_counters(counters: Arc<dyn ringfence::counters::Counters>) -> TestApp {
    spawn_app_with(counters, Default::default()).await
}

/// `spawn_app` with the given counters and SMS-pumping policy (mode, spend breaker).
pub async fn spawn_app_with(
    counters: Arc<dyn ringfence::counters::Counters>,
    pumping: ringfence::abuse::pumping::PumpingPolicy,
) -> TestApp {
    let dir = tempfile::tempdir().expect("temporary directory");
    let db_path = dir.path().join("ringfence.db");
    let keys = Keyring::ephemeral();
    let store: Arc<dyn Store> = Arc::new(
        SqliteStore::open(&db_path, keys.codes.clone(), Default::default())
            .expect("SQLite store opens"),
    );
    let clock = ManualClock::new(test_start(SystemClock.now()));
    let sink = RecordingSink::new();
    let app = Application::build(AppOptions {
        listen: "127.0.0.1:0".parse().expect("loopback address"),
        store: store.clone(),
        keys,
        clock: Arc::new(clock.clone()),
        sink: Arc::new(sink.clone()),
        settings: Settings::default(),
        worker: WorkerSettings {
            // On the manual clock: a failed send is retried one (manual) second later.
            backoff: Duration::from_secs(1),
            // Real time between idle polls, so a retry becomes due soon after the
            // clock is advanced.
            idle_poll: Duration::from_millis(20),
            ..WorkerSettings::default()
        },
        counters,
        pumping,
    })
    .await
    .expect("application builds");
    let addr = app.local_addr();
    let (_, verify_key) = create_key(store.as_ref(), "tests-verify", vec![Scope::Verify]).await;
    let (_, admin_key) = create_key(store.as_ref(), "tests-admin", vec![Scope::Admin]).await;
    let (tx, rx) = oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until_stopped(async {
        let _ = rx.await;
    }));
    TestApp {
        addr,
        client: http_client(),
        verify_key,
        admin_key,
        clock,
        sink,
        store: Some(store),
        db_path,
        dir,
        shutdown: Some(tx),
        server: Some(server),
    }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// A request without credentials.
    pub fn anon(&self, method: Method, path: &str) -> RequestBuilder {
        self.client.request(method, self.url(path))
    }

    /// A request with the `verify`-scope key.
    pub fn api(&self, method: Method, path: &str) -> RequestBuilder {
        self.anon(method, path).bearer_auth(&self.verify_key)
    }

    /// A request with the `admin`-scope key.
    pub fn admin(&self, method: Method, path: &str) -> RequestBuilder {
        self.anon(method, path).bearer_auth(&self.admin_key)
    }

    // ------------------------------------------------------------ verifications

    pub async fn start(&self, to: &str) -> Resp {
        self.start_with(json!({ "to": to })).await
    }

    pub async fn start_with(&self, body: Value) -> Resp {
        fetch(self.api(Method::POST, "/v1/verifications").json(&body)).await
    }

    pub async fn check(&self, id: &str, code: &str) -> Resp {
        fetch(
            self.api(Method::POST, &format!("/v1/verifications/{id}/check"))
                .json(&json!({ "code": code })),
        )
        .await
    }

    pub async fn check_by_number(&self, to: &str, code: &str) -> Resp {
        fetch(
            self.api(Method::POST, "/v1/verification-checks")
                .json(&json!({ "to": to, "code": code })),
        )
        .await
    }

    pub async fn check_by_number_on(&self, service: &str, to: &str, code: &str) -> Resp {
        fetch(
            self.api(Method::POST, "/v1/verification-checks")
                .json(&json!({ "to": to, "code": code, "service": service })),
        )
        .await
    }

    pub async fn get_verification(&self, id: &str) -> Resp {
        fetch(self.api(Method::GET, &format!("/v1/verifications/{id}"))).await
    }

    pub async fn cancel(&self, id: &str) -> Resp {
        fetch(self.api(Method::POST, &format!("/v1/verifications/{id}/cancel"))).await
    }

    /// Starts a verification (asserting 201) and waits for its code; returns both.
    pub async fn started(&self, to: &str) -> (String, String) {
        let before = self.messages_to(to).len();
        let r = self.start(to).await;
        r.assert_status(201);
        let code = self.nth_code_for(to, before + 1).await;
        (r.str("id").to_owned(), code)
    }

    /// Starts and approves a verification for `to`; returns its id.
    pub async fn approved(&self, to: &str, account_ref: Option<&str>) -> String {
        let before = self.messages_to(to).len();
        let mut body = json!({ "to": to });
        if let Some(a) = account_ref {
            body["account_ref"] = json!(a);
        }
        let r = self.start_with(body).await;
        r.assert_status(201);
        let id = r.str("id").to_owned();
        let code = self.nth_code_for(to, before + 1).await;
        let c = self.check(&id, &code).await;
        c.assert_status(200);
        assert_eq!(c.json["status"], "approved", "{}", c.text);
        id
    }

    // ------------------------------------------------------------ accounts

    pub async fn bind(&self, account_ref: &str, verification_id: &str) -> Resp {
        fetch(
            self.api(Method::PUT, &format!("/v1/accounts/{account_ref}/phone"))
                .json(&json!({ "verification_id": verification_id })),
        )
        .await
    }

    pub async fn get_binding(&self, account_ref: &str) -> Resp {
        fetch(self.api(Method::GET, &format!("/v1/accounts/{account_ref}/phone"))).await
    }

    pub async fn unbind(&self, account_ref: &str) -> Resp {
        fetch(self.api(Method::DELETE, &format!("/v1/accounts/{account_ref}/phone"))).await
    }

    // ------------------------------------------------------------ services

    /// Creates a service; one created without an `abuse` policy may reach every region
    /// (the API requires the geo rule: `create_service_raw` sends the body as given).
    pub async fn create_service(&self, mut body: Value) -> Resp {
        if body.get("abuse").is_none() {
            let all = json!({ "allow_by_default": { "disallowed_regions": [] } });
            body["abuse"] = json!({ "geo": { "sms": all, "voice": all, "whatsapp": all } });
        }
        self.create_service_raw(body).await
    }

    pub async fn create_service_raw(&self, body: Value) -> Resp {
        fetch(self.admin(Method::POST, "/v1/services").json(&body)).await
    }

    /// Switches off the default service's per-number guess budget, for tests of the
    /// per-verification limits alone (racing checks would otherwise also meet the
    /// budget: see `abuse.rs`).
    pub async fn without_guess_budget(&self) {
        self.patch_service(
            "default",
            json!({ "abuse": { "limits": { "wrong_codes_per_number": null } } }),
        )
        .await
        .assert_status(200);
    }

    pub async fn patch_service(&self, id_or_name: &str, body: Value) -> Resp {
        fetch(
            self.admin(Method::PATCH, &format!("/v1/services/{id_or_name}"))
                .json(&body),
        )
        .await
    }

    pub async fn get_service(&self, id_or_name: &str) -> Resp {
        fetch(self.admin(Method::GET, &format!("/v1/services/{id_or_name}"))).await
    }

    pub async fn list_services(&self) -> Resp {
        fetch(self.admin(Method::GET, "/v1/services")).await
    }

    // ------------------------------------------------------------ messages

    /// Messages the sink has received for `to` so far, oldest first.
    pub fn messages_to(&self, to: &str) -> Vec<OutgoingMessage> {
        self.sink
            .messages()
            .into_iter()
            .filter(|m| m.to == to)
            .collect()
    }

    /// Waits until at least `n` messages reached `to`; returns them all.
    pub async fn wait_for_messages(&self, to: &str, n: usize) -> Vec<OutgoingMessage> {
        eventually(&format!("{n} message(s) to the test number"), || async {
            let m = self.messages_to(to);
            (m.len() >= n).then_some(m)
        })
        .await
    }

    /// The code of the first message to `to`, waiting for it to arrive.
    pub async fn code_for(&self, to: &str) -> String {
        self.nth_code_for(to, 1).await
    }

    /// The code of the `n`th message (1-based) to `to`, waiting for it to arrive.
    pub async fn nth_code_for(&self, to: &str, n: usize) -> String {
        let m = self.wait_for_messages(to, n).await;
        extract_code(&m[n - 1].body).expect("the message contains a code")
    }

    /// Makes the next `n` sends fail with a temporary error.
    pub fn fail_next_sends(&self, n: usize) {
        self.sink.fail_next(
            (0..n)
                .map(|_| SendError::Temporary("provider unavailable (test)".into()))
                .collect(),
        );
    }

    /// Waits until the outbox has handed every message to the sink and recorded it.
    pub async fn outbox_settled(&self) {
        eventually("the outbox to settle", || async {
            let busy: i64 = self
                .db()
                .query_row(
                    "SELECT COUNT(*) FROM outbox WHERE status IN ('queued', 'sending', 'retry')",
                    [],
                    |r| r.get(0),
                )
                .expect("outbox is readable");
            (busy == 0).then_some(())
        })
        .await
    }

    // ------------------------------------------------------------ clock and database

    /// The app's store, for set-up the API does not offer (creating or revoking keys).
    pub fn store(&self) -> &dyn Store {
        self.store.as_deref().expect("the app is running")
    }

    pub fn advance(&self, by: Duration) {
        self.clock.advance(by);
    }

    pub fn db_path(&self) -> &Path {
        &self.db_path
    }

    /// The directory holding the database and its WAL and shared-memory files.
    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    /// A read-only connection to the app's database, for looking at what is stored.
    pub fn db(&self) -> rusqlite::Connection {
        rusqlite::Connection::open_with_flags(
            &self.db_path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .expect("database opens read-only")
    }

    /// Rows per table, for "nothing changed" assertions.
    pub fn row_counts(&self) -> BTreeMap<&'static str, i64> {
        let db = self.db();
        [
            "api_keys",
            "services",
            "subjects",
            "verifications",
            "lockouts",
            "outbox",
            "bindings",
            "idempotency_keys",
        ]
        .into_iter()
        .map(|t| {
            let n = db
                .query_row(&format!("SELECT COUNT(*) FROM {t}"), [], |r| r.get(0))
                .expect("table is readable");
            (t, n)
        })
        .collect()
    }

    /// Stops the server (draining requests and the outbox worker) and drops the
    /// store, so the database is closed; the files stay until the `TestApp` is dropped.
    pub async fn stop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(server) = self.server.take() {
            server
                .await
                .expect("server task did not panic")
                .expect("server stopped cleanly");
        }
        // The last handle to the store: its writer thread and readers close.
        self.store = None;
    }
}
