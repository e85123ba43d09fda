//! Which backends the suite runs on, and how a test gets a fresh instance of each.
//!
//! A backend contributes two things: a way to open a fresh, empty store (`Opened`) and
//! an `Inspect` that reads what the trait does not expose. Nothing else in the suite
//! knows which backend it is talking to.

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use async_trait::async_trait;
use futures::future::BoxFuture;
use futures::FutureExt;
use ringfence::clock::Millis;
use ringfence::crypto::{CodeHasher, Keyring};
use ringfence::store::Store;

/// Every backend the suite runs on. Each entry opens a fresh, empty store per test.
pub fn backends() -> Vec<BackendKind> {
    let mut all = vec![BackendKind::new("sqlite", crate::sqlite::open)];
    // PostgreSQL whenever RINGFENCE_TEST_POSTGRES_URL is set (CI sets it); a server
    // that does not answer fails the tests instead of skipping them.
    if let Ok(url) = std::env::var("RINGFENCE_TEST_POSTGRES_URL") {
        all.push(BackendKind::new("postgres", move |codes| {
            crate::postgres::open(url.clone(), codes)
        }));
    }
    all
}

/// A freshly opened store and what goes with it.
pub struct Opened {
    pub store: Arc<dyn Store>,
    pub inspect: Box<dyn Inspect>,
    /// Whatever must outlive the store: a temporary directory, a schema to drop.
    pub keep: Box<dyn Any + Send + Sync>,
}

type OpenFn = Box<dyn Fn(CodeHasher) -> BoxFuture<'static, Opened> + Send + Sync>;

/// One backend: a name for failure messages and a way to open a fresh instance.
pub struct BackendKind {
    pub name: &'static str,
    open: OpenFn,
}

impl BackendKind {
    pub fn new<F, Fut>(name: &'static str, open: F) -> Self
    where
        F: Fn(CodeHasher) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Opened> + Send + 'static,
    {
        Self {
            name,
            open: Box::new(move |codes| open(codes).boxed()),
        }
    }
}

/// What a test gets: a fresh store, the keys its data is sealed with, and a reader
/// for the rows the trait does not expose.
pub struct Backend {
    pub store: Arc<dyn Store>,
    pub keys: Keyring,
    pub inspect: Box<dyn Inspect>,
}

/// Runs `test` once per backend, each time on a fresh store with fresh keys. A failure
/// names the backend it happened on.
pub async fn each_backend<F, Fut>(test: F)
where
    F: Fn(Backend) -> Fut,
    Fut: Future<Output = ()>,
{
    for kind in backends() {
        let keys = Keyring::ephemeral();
        let opened = (kind.open)(keys.codes.clone()).await;
        // Held here, not in `Backend`: a test's closure may capture only the fields it
        // uses and drop the rest before it runs.
        let keep = opened.keep;
        let backend = Backend {
            store: opened.store,
            keys,
            inspect: opened.inspect,
        };
        let outcome = AssertUnwindSafe(test(backend)).catch_unwind().await;
        drop(keep);
        if let Err(panic) = outcome {
            eprintln!("conformance test failed on the {} backend", kind.name);
            std::panic::resume_unwind(panic);
        }
    }
}

/// Reads rows the `Store` trait does not expose. Each backend implements it with its
/// own queries; tests use it only where the trait cannot show the effect.
#[async_trait]
pub trait Inspect: Send + Sync {
    /// The outbox messages of a verification, oldest first.
    async fn outbox(&self, verification_id: &str) -> Vec<OutboxRow>;
    /// Whether the verification still holds a code hash.
    async fn has_code_hash(&self, verification_id: &str) -> bool;
    /// How many rows the tables that a start writes to hold.
    async fn counts(&self) -> Counts;
}

/// One outbox message as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxRow {
    pub id: i64,
    pub status: String,
    /// Whether the sealed content (recipient and code) is still there.
    pub has_payload: bool,
    pub attempts: u32,
    pub next_attempt_at: Millis,
    pub lease_until: Option<Millis>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub subjects: u64,
    pub verifications: u64,
    pub outbox: u64,
    pub idempotency_keys: u64,
}
