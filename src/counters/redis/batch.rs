//! Concurrent callers' requests to Redis, sent as one.
//!
//! Every request of a busy instance spends limits and counts things, and each command
//! is a round trip: encoding, a write to the socket, a wake-up for the answer, and on
//! the server a read, a parse and a reply. A batcher is one task that takes every call
//! waiting for it, sends them as one request (a [`Batch`] says how) and answers each
//! caller with what it would have got alone, the calls applied one after another in
//! the order they reached the task. One batch is in flight at a time, so batches grow
//! with the load: alone, a call is its own batch.

use std::future::Future;
use std::time::Duration;

use redis::aio::ConnectionManager;
use tokio::sync::{mpsc, oneshot};

use super::super::{CountersError, CountersResult};

/// What a batcher sends for its calls, and how the answer is shared out.
pub(super) trait Batch: Send + 'static {
    type Call: Send + 'static;
    type Answer: Send + 'static;

    /// At most this much work (see [`Batch::weight`]) shares a request; a call
    /// heavier than that alone is still sent, alone.
    const MAX_WEIGHT: usize;

    /// A call's share of [`Batch::MAX_WEIGHT`].
    fn weight(call: &Self::Call) -> usize;

    /// Runs `calls` as one request; answers one per call, in order.
    fn run(
        &self,
        conn: &mut ConnectionManager,
        calls: &[Self::Call],
    ) -> impl Future<Output = Result<Vec<Self::Answer>, Failure>> + Send;
}

/// Why a batch failed, for [`Batcher::spawn`]'s `describe`.
pub(super) enum Failure {
    Redis(redis::RedisError),
    Timeout,
    /// Redis answered, but not one answer per call (or per key).
    WrongCount,
}

type Reply<A> = oneshot::Sender<CountersResult<A>>;

/// The handle callers go through; dropping the last one ends the task.
pub(super) struct Batcher<B: Batch> {
    tx: mpsc::UnboundedSender<(B::Call, Reply<B::Answer>)>,
}

impl<B: Batch> Batcher<B> {
    /// Starts the task on the current Tokio runtime. A batch gets `timeout` for its
    /// request; `describe` turns a failure into the error each of its callers gets.
    pub fn spawn(
        batch: B,
        conn: ConnectionManager,
        timeout: Duration,
        describe: impl Fn(Failure) -> CountersError + Send + 'static,
    ) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(drive(batch, rx, conn, timeout, describe));
        Self { tx }
    }

    /// Runs `call` in the next batch and returns its answer.
    pub async fn call(&self, call: B::Call) -> CountersResult<B::Answer> {
        let (reply, answer) = oneshot::channel();
        let stopped = || CountersError::Unavailable("redis: the batching task has stopped".into());
        self.tx.send((call, reply)).map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

async fn drive<B: Batch>(
    batch: B,
    mut rx: mpsc::UnboundedReceiver<(B::Call, Reply<B::Answer>)>,
    mut conn: ConnectionManager,
    timeout: Duration,
    describe: impl Fn(Failure) -> CountersError,
) {
    // A call taken that would have made the batch too heavy opens the next one.
    let mut carried = None;
    loop {
        let first = match carried.take() {
            Some(call) => call,
            None => match rx.recv().await {
                Some(call) => call,
                None => return,
            },
        };
        let mut weight = B::weight(&first.0);
        let (mut calls, mut replies) = (vec![first.0], vec![first.1]);
        while let Ok((call, reply)) = rx.try_recv() {
            weight += B::weight(&call);
            if weight > B::MAX_WEIGHT {
                carried = Some((call, reply));
                break;
            }
            calls.push(call);
            replies.push(reply);
        }
        let outcome = match tokio::time::timeout(timeout, batch.run(&mut conn, &calls)).await {
            Ok(Ok(answers)) if answers.len() == calls.len() => Ok(answers),
            Ok(Ok(_)) => Err(describe(Failure::WrongCount)),
            Ok(Err(failure)) => Err(describe(failure)),
            Err(_) => Err(describe(Failure::Timeout)),
        };
        match outcome {
            Ok(answers) => {
                for (reply, answer) in replies.into_iter().zip(answers) {
                    // A caller that gave up (its own timeout) no longer listens.
                    let _ = reply.send(Ok(answer));
                }
            }
            Err(e) => {
                for reply in replies {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    }
}
