//! The read path: a fixed set of threads, each owning a read-only connection, taking
//! reads from one queue.
//!
//! Threads of their own rather than tokio's blocking pool: that pool starts a thread
//! whenever a task arrives while none is idle, and a thread that has just finished a
//! read is not idle yet, so a steady stream of reads (one per check) kept starting
//! threads that then lingered — twenty more during the load script's checks, each with
//! its stack and its share of the allocator's arenas. Here the number of threads is the
//! number of connections, and a read waits in the queue for the first free one.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};

use rusqlite::Connection;
use tokio::sync::oneshot;

use crate::store::{StoreError, StoreResult};

type ReadJob = Box<dyn FnOnce(&Connection) + Send>;

/// Handle to the read threads; they stop when the last handle is dropped.
pub struct Readers {
    jobs: Sender<ReadJob>,
}

impl Readers {
    /// Starts one thread per connection.
    pub fn spawn(conns: Vec<Connection>) -> std::io::Result<Self> {
        let (tx, rx) = channel::<ReadJob>();
        let rx = Arc::new(Mutex::new(rx));
        for (i, conn) in conns.into_iter().enumerate() {
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("rf-sqlite-read-{i}"))
                .spawn(move || serve(&conn, &rx))?;
        }
        Ok(Self { jobs: tx })
    }

    /// Runs `f` on the first free read connection and returns its result.
    pub async fn read<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> StoreResult<T> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let job: ReadJob = Box::new(move |conn| {
            // The requester may have gone away (client disconnected); that is fine.
            let _ = reply.send(f(conn));
        });
        self.jobs
            .send(job)
            .map_err(|_| StoreError::Internal("the read connections are closed".into()))?;
        answer
            .await
            .map_err(|_| StoreError::Internal("a read failed without an answer".into()))?
    }
}

/// A read thread's loop: takes the next job while the queue is open. A job that panics
/// loses its answer (its requester gets an error), not the thread.
fn serve(conn: &Connection, jobs: &Mutex<Receiver<ReadJob>>) {
    loop {
        // The lock is held only while waiting for a job, never while running one.
        let next = jobs.lock().unwrap_or_else(|p| p.into_inner()).recv();
        let Ok(job) = next else { return };
        if catch_unwind(AssertUnwindSafe(|| job(conn))).is_err() {
            tracing::error!("a read panicked; its request got an error");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conns(dir: &std::path::Path, n: usize) -> Vec<Connection> {
        let path = dir.join("r.db");
        Connection::open(&path)
            .unwrap()
            .execute_batch(
                "PRAGMA journal_mode = WAL; CREATE TABLE t (x INTEGER); INSERT INTO t VALUES (7);",
            )
            .unwrap();
        (0..n).map(|_| Connection::open(&path).unwrap()).collect()
    }

    #[tokio::test]
    async fn a_read_that_panics_loses_its_answer_not_its_thread() {
        let dir = tempfile::tempdir().unwrap();
        let readers = Readers::spawn(conns(dir.path(), 1)).unwrap();
        let failed = readers
            .read(|_| -> StoreResult<()> { panic!("a broken read") })
            .await;
        assert!(matches!(failed, Err(StoreError::Internal(_))), "{failed:?}");
        // The one thread still serves: without it this read would wait forever.
        let next = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            readers.read(|c| Ok(c.query_row("SELECT x FROM t", [], |r| r.get::<_, i64>(0))?)),
        )
        .await
        .expect("the read thread is gone");
        assert_eq!(next.unwrap(), 7);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reads_run_on_the_read_threads_only() {
        let dir = tempfile::tempdir().unwrap();
        let readers = Arc::new(Readers::spawn(conns(dir.path(), 2)).unwrap());
        let reads = (0..64).map(|_| {
            let readers = readers.clone();
            tokio::spawn(async move {
                readers
                    .read(|c| {
                        let x: i64 = c.query_row("SELECT x FROM t", [], |r| r.get(0))?;
                        Ok((x, std::thread::current().name().map(str::to_owned)))
                    })
                    .await
            })
        });
        let mut threads = std::collections::BTreeSet::new();
        for r in futures::future::join_all(reads).await {
            let (x, thread) = r.unwrap().unwrap();
            assert_eq!(x, 7);
            threads.insert(thread.unwrap());
        }
        let expected = ["rf-sqlite-read-0", "rf-sqlite-read-1"];
        assert!(
            threads.iter().all(|t| expected.contains(&t.as_str())),
            "{threads:?}"
        );
    }
}
