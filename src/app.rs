//! Wiring: the shared state of a running instance and the `Application` that binds the
//! listener, starts the outbox worker and serves until told to stop
//! (`build → run_until_stopped`). Tests build it in-process on port 0 with a manual
//! clock and a recording sink; `ringfence serve` builds it from configuration.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

use crate::clock::{Clock, Millis};
use crate::counters::Counters;
use crate::crypto::{self, Keyring};
use crate::delivery::{Handoff, OutboxHandle, OutboxWorker, Sink, WorkerSettings};
use crate::http::extract::Caller;
use crate::http::ApiError;
use crate::store::{ApiKeyRecord, ServiceRecord, Store, StoreError};
use crate::verify::ServiceConfig;

/// Settings of the HTTP layer and the verification flow that are not per service.
#[derive(Debug, Clone)]
pub struct Settings {
    /// How long after approval a verification may still be bound to an account.
    pub binding_window_ms: i64,
    /// How long API keys and services are cached in memory.
    pub cache_ttl_ms: i64,
    /// How often the janitor runs (`Application::run_until_stopped`).
    pub sweep_interval: std::time::Duration,
    /// How long an `Idempotency-Key` is remembered.
    pub idempotency_ttl_ms: i64,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            binding_window_ms: 15 * 60 * 1000,
            cache_ttl_ms: 2_000,
            sweep_interval: std::time::Duration::from_secs(60),
            idempotency_ttl_ms: 24 * 60 * 60 * 1000,
        }
    }
}

/// What every request handler reaches, behind one reference count: axum clones the
/// state for each extractor of each request, and a clone of this is one atomic
/// increment where the parts' own clones would be a dozen, on counters that the
/// threads serving requests share.
#[derive(Clone)]
pub struct AppState(Arc<AppParts>);

impl std::ops::Deref for AppState {
    type Target = AppParts;

    fn deref(&self) -> &AppParts {
        &self.0
    }
}

/// The parts of [`AppState`].
pub struct AppParts {
    pub store: Arc<dyn Store>,
    pub keys: Arc<Keyring>,
    pub clock: Arc<dyn Clock>,
    pub outbox: OutboxHandle,
    pub services: Arc<ServiceCache>,
    pub api_keys: Arc<ApiKeyCache>,
    pub settings: Arc<Settings>,
    pub counters: Arc<dyn Counters>,
    pub abuse: Arc<crate::abuse::Engine>,
    pub lists: Arc<ListCache>,
    pub metrics: Arc<crate::http::metrics::Metrics>,
    pub afterwork: Afterwork,
}

/// What follows a request's commit without deciding its answer: the pumping detector's
/// count of a send or an approval, a guess reservation given back. With counters in
/// this process that costs no wait, and it is done before the reply. With counters in
/// a server (Redis) it is a round trip, and the reply does not wait for it: the work
/// runs in a task of its own, tracked so that a stopping instance finishes it
/// ([`Application::run_until_stopped`]). Until it lands, the pumping detector's counts
/// lag by that round trip and a given-back reservation is still spent: a guess budget
/// is, for a moment, stricter, never looser.
#[derive(Clone)]
pub struct Afterwork {
    tracker: tokio_util::task::TaskTracker,
    after_reply: bool,
}

impl Afterwork {
    /// After the reply when `after_reply` (counters across the network), else before.
    pub fn new(after_reply: bool) -> Self {
        Self {
            tracker: tokio_util::task::TaskTracker::new(),
            after_reply,
        }
    }

    /// Does `work` now, or hands it to a task of its own and returns at once.
    pub async fn run(&self, work: impl std::future::Future<Output = ()> + Send + 'static) {
        use tracing::Instrument;
        if self.after_reply {
            self.tracker.spawn(work.in_current_span());
        } else {
            work.await;
        }
    }

    /// Waits, at most `within`, for the work handed to tasks; `false` if some is left.
    pub async fn finish(&self, within: std::time::Duration) -> bool {
        self.tracker.close();
        tokio::time::timeout(within, self.tracker.wait())
            .await
            .is_ok()
    }
}

/// The operator lists, cached like services: a change applies within the time to live
/// (at once on the instance that made it).
pub struct ListCache {
    store: Arc<dyn Store>,
    ttl_ms: i64,
    current: RwLock<Option<(Arc<crate::abuse::lists::Lists>, Millis)>>,
}

impl ListCache {
    pub fn new(store: Arc<dyn Store>, ttl_ms: i64) -> Self {
        Self {
            store,
            ttl_ms,
            current: RwLock::new(None),
        }
    }

    pub async fn get(&self, now: Millis) -> Result<Arc<crate::abuse::lists::Lists>, StoreError> {
        if let Some((lists, at)) = &*self.current.read().unwrap_or_else(|p| p.into_inner()) {
            if now - at < self.ttl_ms && now >= *at {
                return Ok(lists.clone());
            }
        }
        let entries = self.store.list_entries(now).await?;
        let lists = Arc::new(crate::abuse::lists::Lists::from_entries(&entries));
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Some((lists.clone(), now));
        Ok(lists)
    }

    pub fn invalidate(&self) {
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

/// API keys, cached for a short time so a request does not cost a database read.
/// A revoked key stops working within the cache's time to live.
pub struct ApiKeyCache {
    store: Arc<dyn Store>,
    ttl_ms: i64,
    entries: RwLock<HashMap<String, (Option<ApiKeyRecord>, Millis)>>,
}

impl ApiKeyCache {
    pub fn new(store: Arc<dyn Store>, ttl_ms: i64) -> Self {
        Self {
            store,
            ttl_ms,
            entries: RwLock::new(HashMap::new()),
        }
    }

    pub async fn authenticate(
        &self,
        presented: &str,
        now: Millis,
    ) -> Result<Option<Caller>, ApiError> {
        let Some((id, hash)) = crypto::parse_api_key(presented) else {
            return Ok(None);
        };
        let cached = self
            .entries
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .filter(|(_, at)| now - at < self.ttl_ms)
            .map(|(r, _)| r.clone());
        let record = match cached {
            Some(r) => r,
            None => {
                let r = self.store.get_api_key(id).await?;
                let mut map = self.entries.write().unwrap_or_else(|p| p.into_inner());
                if map.len() > 10_000 {
                    map.clear();
                }
                map.insert(id.to_owned(), (r.clone(), now));
                r
            }
        };
        Ok(record
            .filter(|r| {
                r.revoked_at.is_none() && crypto::api_key_hash_matches(&hash, &r.secret_hash)
            })
            .map(|r| Caller {
                key_id: r.id,
                scopes: r.scopes,
            }))
    }
}

/// Services by id and by name, cached for a short time. Changes made through this
/// instance are visible at once; changes made elsewhere within the time to live.
pub struct ServiceCache {
    store: Arc<dyn Store>,
    ttl_ms: i64,
    entries: RwLock<HashMap<String, (ServiceRecord, Millis)>>,
}

impl ServiceCache {
    pub fn new(store: Arc<dyn Store>, ttl_ms: i64) -> Self {
        Self {
            store,
            ttl_ms,
            entries: RwLock::new(HashMap::new()),
        }
    }

    pub async fn get(&self, key: &str, now: Millis) -> Result<Option<ServiceRecord>, StoreError> {
        let cached = self
            .entries
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .filter(|(_, at)| now - at < self.ttl_ms)
            .map(|(r, _)| r.clone());
        if cached.is_some() {
            return Ok(cached);
        }
        let found = self.store.get_service(key).await?;
        if let Some(rec) = &found {
            let mut map = self.entries.write().unwrap_or_else(|p| p.into_inner());
            map.insert(rec.id.clone(), (rec.clone(), now));
            map.insert(rec.config.name.clone(), (rec.clone(), now));
        }
        Ok(found)
    }

    pub fn invalidate(&self) {
        self.entries
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }
}

/// The name of the service that exists from the first start.
pub const DEFAULT_SERVICE: &str = "default";

/// Messages that may wait in memory for the outbox worker. When it is full, requests
/// queue their messages unclaimed and the worker finds them in the database.
const HANDOFF_CAPACITY: usize = 4096;

/// A new service id: `VA` and 32 hex digits (time-ordered).
pub fn new_service_id() -> String {
    format!("VA{}", uuid::Uuid::now_v7().simple())
}

/// A new verification id: `VE` and 32 hex digits (time-ordered, so inserts stay local
/// in the index).
pub fn new_verification_id() -> String {
    format!("VE{}", uuid::Uuid::now_v7().simple())
}

/// Creates the default service unless it exists (another instance may race us).
pub async fn ensure_default_service(store: &dyn Store, now: Millis) -> anyhow::Result<bool> {
    if store.get_service(DEFAULT_SERVICE).await?.is_some() {
        return Ok(false);
    }
    let mut config = ServiceConfig::default_named(DEFAULT_SERVICE);
    config.friendly_name = "ringfence".into();
    let rec = ServiceRecord {
        id: new_service_id(),
        config: Arc::new(config),
        created_at: now,
        updated_at: now,
    };
    match store.create_service(rec).await {
        Ok(()) => Ok(true),
        Err(StoreError::Conflict(_)) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Says, at start, which services still send to every region: pumping fraud goes where
/// a platform never had users, so a region list is the first defence to set.
async fn warn_about_open_services(store: &dyn Store) -> anyhow::Result<()> {
    for s in store.list_services().await? {
        if s.config.abuse.geo.open_anywhere() {
            tracing::warn!(
                service = %s.config.name,
                "this service sends to every region on some channel; set abuse.geo \
                 (PATCH /v1/services/{{id}}) to the regions it serves"
            );
        }
    }
    Ok(())
}

pub struct AppOptions {
    pub listen: SocketAddr,
    pub store: Arc<dyn Store>,
    pub keys: Keyring,
    pub clock: Arc<dyn Clock>,
    pub sink: Arc<dyn Sink>,
    pub settings: Settings,
    pub worker: WorkerSettings,
    /// Rate-limit and metering state: in-process, or Redis shared by instances.
    pub counters: Arc<dyn Counters>,
    /// The SMS-pumping detector's mode and the spend breaker.
    pub pumping: crate::abuse::pumping::PumpingPolicy,
}

pub struct Application {
    listener: TcpListener,
    state: AppState,
    sink: Arc<dyn Sink>,
    worker: WorkerSettings,
    handoffs: mpsc::Receiver<Handoff>,
}

impl Application {
    pub async fn build(opts: AppOptions) -> anyhow::Result<Self> {
        ensure_default_service(opts.store.as_ref(), opts.clock.now()).await?;
        warn_about_open_services(opts.store.as_ref()).await?;
        let listener = TcpListener::bind(opts.listen)
            .await
            .map_err(|e| anyhow::anyhow!("listen: cannot bind {}: {e}", opts.listen))?;
        let ttl = opts.settings.cache_ttl_ms;
        let lease_ms = i64::try_from(opts.worker.lease.as_millis()).unwrap_or(i64::MAX);
        let (outbox, handoffs) = OutboxHandle::new(HANDOFF_CAPACITY, lease_ms);
        let pseudonyms = opts.keys.blind.clone();
        let state = AppState(Arc::new(AppParts {
            services: Arc::new(ServiceCache::new(opts.store.clone(), ttl)),
            lists: Arc::new(ListCache::new(opts.store.clone(), ttl)),
            metrics: Arc::default(),
            api_keys: Arc::new(ApiKeyCache::new(opts.store.clone(), ttl)),
            store: opts.store,
            keys: Arc::new(opts.keys),
            clock: opts.clock,
            outbox,
            settings: Arc::new(opts.settings),
            abuse: Arc::new(crate::abuse::Engine::new(
                opts.counters.clone(),
                pseudonyms,
                opts.pumping,
            )),
            afterwork: Afterwork::new(opts.counters.remote()),
            counters: opts.counters,
        }));
        Ok(Self {
            listener,
            state,
            sink: opts.sink,
            worker: opts.worker,
            handoffs,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("bound listener has an address")
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves HTTP and runs the outbox worker until `shutdown` resolves, then drains
    /// in-flight requests.
    pub async fn run_until_stopped(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let (stop_tx, stop_rx) = watch::channel(false);
        let worker = OutboxWorker {
            store: self.state.store.clone(),
            sink: self.sink,
            kek: self.state.keys.kek.clone(),
            clock: self.state.clock.clone(),
            wake: self.state.outbox.wake(),
            settings: self.worker,
            abuse: Some(self.state.abuse.clone()),
        };
        let worker = tokio::spawn(worker.run(self.handoffs, stop_rx.clone()));
        let janitor = tokio::spawn(janitor(self.state.clone(), stop_rx));
        let afterwork = self.state.afterwork.clone();
        let router = crate::http::router(self.state);
        axum::serve(self.listener, router)
            .with_graceful_shutdown(shutdown)
            .await?;
        if !afterwork.finish(AFTERWORK_GRACE).await {
            tracing::warn!("stopped with counter updates still in flight");
        }
        let _ = stop_tx.send(true);
        let _ = worker.await;
        let _ = janitor.await;
        Ok(())
    }
}

/// How long a stopping instance waits for work that followed its last replies (each
/// piece is bounded by the counters' own timeout, 250 ms by default).
const AFTERWORK_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// Runs `Store::sweep` every `sweep_interval`: pending verifications past expiry lose
/// their code hash and queued messages even if nobody looks at them again, and old
/// idempotency keys and ended lockouts go.
async fn janitor(state: AppState, mut stop: watch::Receiver<bool>) {
    const BATCH: u32 = 1000;
    let mut tick = tokio::time::interval(state.settings.sweep_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        // A full batch means there is more: go again at once.
        loop {
            let now = state.clock.now();
            match state
                .store
                .sweep(now, now - state.settings.idempotency_ttl_ms, BATCH)
                .await
            {
                Ok(r) => {
                    if r != crate::store::SweepReport::default() {
                        tracing::info!(
                            expired = r.expired,
                            idempotency_keys = r.idempotency_keys,
                            lockouts = r.lockouts,
                            guess_budgets = r.guess_budgets,
                            tombstones = r.tombstones,
                            "janitor pass"
                        );
                    }
                    let full = [
                        r.expired,
                        r.idempotency_keys,
                        r.lockouts,
                        r.guess_budgets,
                        r.tombstones,
                    ]
                    .iter()
                    .any(|&n| n >= u64::from(BATCH));
                    if !full || *stop.borrow() {
                        break;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "janitor pass failed");
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Afterwork;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    /// Work that waits for `go`, and says when it has run.
    fn gated(
        go: tokio::sync::oneshot::Receiver<()>,
    ) -> (Arc<AtomicBool>, impl std::future::Future<Output = ()>) {
        let done = Arc::new(AtomicBool::new(false));
        let d = done.clone();
        (done, async move {
            let _ = go.await;
            d.store(true, Ordering::SeqCst);
        })
    }

    #[tokio::test]
    async fn work_after_the_reply_returns_at_once_and_is_finished_before_stopping() {
        let afterwork = Afterwork::new(true);
        let (go, wait) = tokio::sync::oneshot::channel();
        let (done, work) = gated(wait);
        afterwork.run(work).await;
        assert!(!done.load(Ordering::SeqCst), "run waited for the work");
        let stopping = tokio::spawn({
            let a = afterwork.clone();
            async move { a.finish(Duration::from_secs(10)).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!stopping.is_finished(), "finish did not wait for the work");
        go.send(()).unwrap();
        assert!(stopping.await.unwrap());
        assert!(done.load(Ordering::SeqCst));
    }

    #[tokio::test]
    async fn work_before_the_reply_is_done_when_run_returns() {
        let afterwork = Afterwork::new(false);
        let (go, wait) = tokio::sync::oneshot::channel();
        let (done, work) = gated(wait);
        go.send(()).unwrap();
        afterwork.run(work).await;
        assert!(done.load(Ordering::SeqCst));
    }

    #[tokio::test]
    async fn finishing_gives_up_after_its_bound() {
        let afterwork = Afterwork::new(true);
        let (_go, wait) = tokio::sync::oneshot::channel::<()>();
        let (done, work) = gated(wait);
        afterwork.run(work).await;
        assert!(!afterwork.finish(Duration::from_millis(30)).await);
        assert!(!done.load(Ordering::SeqCst));
    }
}
