//! Group commit for PostgreSQL: requests of one kind that arrive together are applied
//! in one transaction.
//!
//! A transaction per request costs PostgreSQL a commit (a WAL flush) and the service a
//! handful of round trips per request; under load both dominate. A `Batcher` owns a
//! queue of one kind of request. Its task takes whatever is queued (up to `max_batch`)
//! and hands it to a batch transaction on a pooled connection; up to `in_flight` such
//! transactions run at once, and while they all do, new requests wait in the queue and
//! form the next, larger batch. At low load a request is a batch of one, so latency
//! stays that of a lone transaction; under load batches grow by themselves.
//!
//! A request is answered only after its batch committed. When the batch transaction as
//! a whole fails (connection lost, server restarting), every request of the batch gets
//! that error: nothing of the batch was committed, so each may be retried.

use std::future::Future;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::store::{StoreError, StoreResult};

/// A request and where its answer goes.
struct Job<Req, Out> {
    req: Req,
    reply: oneshot::Sender<StoreResult<Out>>,
}

/// The queue of one kind of request.
pub(super) struct Batcher<Req, Out> {
    queue: mpsc::Sender<Job<Req, Out>>,
}

/// How big batches may grow and how many run at once.
#[derive(Debug, Clone, Copy)]
pub(super) struct Limits {
    pub max_batch: usize,
    pub in_flight: usize,
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
    let slots = Arc::new(Semaphore::new(limits.in_flight.max(1)));
    while let Some(first) = rx.recv().await {
        // Wait for a free slot first: requests that arrive meanwhile join this batch.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let mut jobs = vec![first];
        while jobs.len() < limits.max_batch {
            match rx.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        let run = run.clone();
        tokio::spawn(async move {
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

/// The batch's error, once per request (`StoreError` is not `Clone`: it may carry a
/// source one day; here it carries only text).
pub(super) fn same_error(e: &StoreError) -> StoreError {
    match e {
        StoreError::Unavailable(m) => StoreError::Unavailable(m.clone()),
        StoreError::Conflict(c) => StoreError::Conflict(c),
        StoreError::Internal(m) => StoreError::Internal(m.clone()),
    }
}
