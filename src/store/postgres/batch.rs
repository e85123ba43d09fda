//! Group commit for PostgreSQL: requests of one kind that arrive together are applied
//! in one transaction.
//!
//! A transaction per request costs PostgreSQL a commit (a WAL flush) and the service a
//! handful of round trips per request; under load both dominate. A `Batcher` owns a
//! queue of one kind of request. Its task takes whatever is queued (up to `max_batch`)
//! and hands it to a batch transaction on a pooled connection. A batch starts when no
//! other of its kind is running: meanwhile new requests wait in the queue and form the
//! next, larger batch. At low load a request is a batch of one, so latency stays that
//! of a lone transaction; under load batches grow by themselves. Only a batch that has
//! waited `patience` for the one before it (stuck behind another instance's row lock,
//! say) starts beside it, up to `in_flight` at once, so one slow transaction holds its
//! kind up for at most that long.
//!
//! A request is answered only after its batch committed. When the batch transaction as
//! a whole fails (connection lost, server restarting), every request of the batch gets
//! that error: nothing of the batch was committed, so each may be retried.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::pool::PoolConnection;
use sqlx::{PgPool, Postgres};
use tokio::sync::{mpsc, oneshot, Notify, Semaphore};

use super::PING_IF_IDLE_FOR;

use crate::store::{StoreError, StoreResult};

/// The connections a kind of batch keeps between its batches (as many as run at once).
///
/// A connection given back to sqlx's pool is tested on its way in with a round trip
/// (`Sync`, then waiting for `ReadyForQuery`): under load that is one more round trip
/// per batch, for both the service and PostgreSQL, and the connection is unavailable
/// until it returns. Kept here instead, a batch's connection goes straight to the next
/// batch. One idle for [`PING_IF_IDLE_FOR`] or more is given back to the pool (tested
/// there) and the batch takes one from the pool, which pings it if it sat idle too:
/// after a quiet spell, a connection that broke meanwhile (a restarted server) is not
/// handed to a batch. A batch that fails drops its connection rather than keeping it.
/// At most `most` are kept: none with a small pool (see [`KeptConnections::most`]).
pub(super) struct KeptConnections {
    pool: PgPool,
    most: usize,
    idle: Mutex<Vec<(PoolConnection<Postgres>, Instant)>>,
}

impl KeptConnections {
    pub fn new(pool: PgPool, most: usize) -> Self {
        Self {
            pool,
            most,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// How many connections each kind of batch may keep, running `in_flight` batches
    /// at once on a pool of `pool_size`: as many as it runs, if the two kinds together
    /// keep at most half the pool; none otherwise, so that a small pool is never held
    /// by idle batchers while a look-up waits for a connection.
    pub fn most(pool_size: u32, in_flight: usize) -> usize {
        if 2 * 2 * in_flight <= pool_size as usize {
            in_flight
        } else {
            0
        }
    }

    /// A connection for a batch: the most recently kept one, if it is fresh enough.
    pub async fn take(&self) -> StoreResult<PoolConnection<Postgres>> {
        let kept = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        if let Some((conn, since)) = kept {
            if since.elapsed() < PING_IF_IDLE_FOR {
                return Ok(conn);
            }
            // An old one goes back to the pool (tested there) before one is taken: with
            // a pool of few connections, it may be the one the pool hands out.
            drop(conn);
        }
        Ok(self.pool.acquire().await?)
    }

    /// Keeps the connection of a batch that succeeded, for the next one, if there is
    /// room; otherwise it goes back to the pool.
    pub fn keep(&self, conn: PoolConnection<Postgres>) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < self.most {
            idle.push((conn, Instant::now()));
        }
    }
}

/// A request and where its answer goes.
struct Job<Req, Out> {
    req: Req,
    reply: oneshot::Sender<StoreResult<Out>>,
}

/// The queue of one kind of request.
pub(super) struct Batcher<Req, Out> {
    queue: mpsc::Sender<Job<Req, Out>>,
}

/// How big batches may grow, how many run at once, and how long a batch waits for the
/// one before it to end before it starts beside it.
#[derive(Debug, Clone, Copy)]
pub(super) struct Limits {
    pub max_batch: usize,
    pub in_flight: usize,
    pub patience: Duration,
}

impl<Req: Send + 'static, Out: Send + 'static> Batcher<Req, Out> {
    /// Starts the batcher's task on the current runtime. `run` applies one batch in
    /// one transaction and returns, once committed, one result per request in the
    /// order given; or one error for the whole batch if nothing was committed.
    pub fn spawn<F, Fut>(limits: Limits, run: F) -> Self
    where
        F: Fn(Vec<Req>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = StoreResult<Vec<StoreResult<Out>>>> + Send + 'static,
    {
        let (queue, rx) = mpsc::channel(limits.max_batch * 8);
        tokio::spawn(dispatch(rx, limits, Arc::new(run)));
        Self { queue }
    }

    /// Queues `req` and waits for its batch to commit.
    pub async fn submit(&self, req: Req) -> StoreResult<Out> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(Job { req, reply })
            .await
            .map_err(|_| StoreError::Unavailable("the PostgreSQL batcher stopped".into()))?;
        answer.await.map_err(|_| {
            // The batch task went away without answering (a panic): whether its
            // transaction committed is unknown to us, as after a lost connection.
            StoreError::Unavailable("a PostgreSQL batch ended without an answer".into())
        })?
    }
}

async fn dispatch<Req, Out, F, Fut>(
    mut rx: mpsc::Receiver<Job<Req, Out>>,
    limits: Limits,
    run: Arc<F>,
) where
    Req: Send + 'static,
    Out: Send + 'static,
    F: Fn(Vec<Req>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = StoreResult<Vec<StoreResult<Out>>>> + Send + 'static,
{
    let in_flight = limits.in_flight.max(1);
    let slots = Arc::new(Semaphore::new(in_flight));
    // Notified whenever a batch ends.
    let ended = Arc::new(Notify::new());
    while let Some(first) = rx.recv().await {
        // Wait for a free slot, then for the batches running to end, or for `patience`:
        // requests that arrive meanwhile join this batch.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let deadline = tokio::time::Instant::now() + limits.patience;
        loop {
            let notified = ended.notified();
            tokio::pin!(notified);
            // Registered before the count is read: an end between the two still wakes.
            notified.as_mut().enable();
            if slots.available_permits() + 1 == in_flight {
                break;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                break;
            }
        }
        let mut jobs = vec![first];
        while jobs.len() < limits.max_batch {
            match rx.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        let (run, ended) = (run.clone(), ended.clone());
        tokio::spawn(async move {
            // Dropped when the batch ends, however it ends: the slot first, then the
            // dispatcher told.
            let _ended = Ended(ended);
            let _slot = slot;
            let (reqs, replies): (Vec<Req>, Vec<_>) =
                jobs.into_iter().map(|j| (j.req, j.reply)).unzip();
            let n = replies.len();
            match run(reqs).await {
                Ok(outs) if outs.len() == n => {
                    for (reply, out) in replies.into_iter().zip(outs) {
                        // The requester may have gone away (client disconnected).
                        let _ = reply.send(out);
                    }
                }
                Ok(_) => {
                    let e = "a PostgreSQL batch answered the wrong number of requests";
                    tracing::error!(requests = n, "{e}");
                    for reply in replies {
                        let _ = reply.send(Err(StoreError::Internal(e.into())));
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, requests = n, "PostgreSQL batch failed");
                    for reply in replies {
                        let _ = reply.send(Err(same_error(&e)));
                    }
                }
            }
        });
    }
}

/// Tells the dispatcher that a batch ended when dropped.
struct Ended(Arc<Notify>);

impl Drop for Ended {
    fn drop(&mut self) {
        self.0.notify_waiters();
    }
}

/// The batch's error, once per request (`StoreError` is not `Clone`: it may carry a
/// source one day; here it carries only text).
pub(super) fn same_error(e: &StoreError) -> StoreError {
    match e {
        StoreError::Unavailable(m) => StoreError::Unavailable(m.clone()),
        StoreError::Conflict(c) => StoreError::Conflict(c),
        StoreError::Internal(m) => StoreError::Internal(m.clone()),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::time::Instant;

    use super::*;

    /// The sizes of the batches started so far, in order.
    type Sizes = Arc<Mutex<Vec<usize>>>;

    /// A batcher whose batches record their sizes as they start and then wait until
    /// `open` is notified, batch 1 included.
    fn held(patience: Duration) -> (Batcher<u32, ()>, Sizes, Arc<Notify>) {
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let open = Arc::new(Notify::new());
        let limits = Limits {
            max_batch: 256,
            in_flight: 2,
            patience,
        };
        let batcher = Batcher::spawn(limits, {
            let (sizes, open) = (sizes.clone(), open.clone());
            move |reqs: Vec<u32>| {
                let (sizes, open) = (sizes.clone(), open.clone());
                async move {
                    let waiting = open.notified();
                    tokio::pin!(waiting);
                    // Listening before it says it runs: no notification is missed.
                    waiting.as_mut().enable();
                    sizes.lock().unwrap().push(reqs.len());
                    waiting.await;
                    Ok(reqs.iter().map(|_| Ok(())).collect())
                }
            }
        });
        (batcher, sizes, open)
    }

    async fn until(what: &str, cond: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting until {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_batch_waits_for_the_one_before_and_takes_what_queued_meanwhile() {
        let (batcher, sizes, open) = held(Duration::from_secs(60));
        let batcher = Arc::new(batcher);
        let first = tokio::spawn({
            let b = batcher.clone();
            async move { b.submit(0).await }
        });
        until("the first batch runs", || sizes.lock().unwrap().len() == 1).await;
        let rest: Vec<_> = (1..=5)
            .map(|i| {
                let b = batcher.clone();
                tokio::spawn(async move { b.submit(i).await })
            })
            .collect();
        // A free slot, but the batch before still running: nothing starts.
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(*sizes.lock().unwrap(), [1]);
        open.notify_waiters();
        first.await.unwrap().unwrap();
        until("the second batch runs", || sizes.lock().unwrap().len() == 2).await;
        assert_eq!(
            *sizes.lock().unwrap(),
            [1, 5],
            "one batch of all that queued"
        );
        open.notify_waiters();
        for r in rest {
            r.await.unwrap().unwrap();
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_batch_running_past_the_patience_lets_the_next_start_beside_it() {
        let patience = Duration::from_millis(100);
        let (batcher, sizes, open) = held(patience);
        let batcher = Arc::new(batcher);
        let first = tokio::spawn({
            let b = batcher.clone();
            async move { b.submit(0).await }
        });
        until("the first batch runs", || sizes.lock().unwrap().len() == 1).await;
        let queued = Instant::now();
        let second = tokio::spawn({
            let b = batcher.clone();
            async move { b.submit(1).await }
        });
        until("the second batch runs", || sizes.lock().unwrap().len() == 2).await;
        assert!(
            queued.elapsed() >= patience,
            "started before its patience ran out"
        );
        // Two running, the limit: a third waits for a slot however long it takes.
        let third = tokio::spawn({
            let b = batcher.clone();
            async move { b.submit(2).await }
        });
        tokio::time::sleep(patience * 3).await;
        assert_eq!(sizes.lock().unwrap().len(), 2);
        open.notify_waiters();
        first.await.unwrap().unwrap();
        second.await.unwrap().unwrap();
        until("the third batch runs", || sizes.lock().unwrap().len() == 3).await;
        open.notify_waiters();
        third.await.unwrap().unwrap();
    }

    #[test]
    fn batchers_keep_connections_only_when_half_the_pool_is_left_to_the_rest() {
        // The default pool (16) and the test suite's (8): two batches of each kind at
        // once, each keeping its connection.
        assert_eq!(KeptConnections::most(16, 2), 2);
        assert_eq!(KeptConnections::most(8, 2), 2);
        assert_eq!(KeptConnections::most(4, 1), 1);
        // Smaller pools keep none: a batcher's idle connection would be missed.
        assert_eq!(KeptConnections::most(7, 2), 0);
        assert_eq!(KeptConnections::most(3, 1), 0);
        assert_eq!(KeptConnections::most(1, 1), 0);
    }
}
