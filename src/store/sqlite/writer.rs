//! The SQLite write path: one thread owns the only writing connection and commits the
//! jobs that queued up while the previous commit was being made as one transaction
//! (group commit).
//!
//! SQLite allows one writer at a time anyway; serialising writes on a thread that keeps
//! its prepared statements removes lock contention and busy-waiting, and one fsync
//! covers a whole batch, so `synchronous=FULL` costs one disk flush per batch instead of
//! per request. Each job runs inside its own savepoint: a job that fails rolls back only
//! its own writes. Replies are sent only after `COMMIT` returned, so nothing is
//! acknowledged before it is durable.
//!
//! The writer also checkpoints the WAL (copies it into the database file, so that it
//! can start over), whenever it has grown past `CHECKPOINT_PAGES` — after the batch's
//! replies are out, not inside its `COMMIT` as SQLite's automatic checkpoint would:
//! the batch that happens to cross the threshold does not wait for the copy. Before
//! that, at `NUDGE_PAGES`, it wakes the store's checkpointer thread, which copies most
//! of the WAL on its own connection while the writer goes on committing; the writer's
//! own checkpoint then copies only what was committed since, and only it can leave the
//! WAL complete so that it starts over. A WAL of a few thousand pages lets a page that
//! many commits rewrite (the right edge of every index) be copied once.

use std::cell::Cell;
use std::os::raw::c_int;
use std::sync::mpsc::SyncSender;

use rusqlite::hooks::Wal;
use rusqlite::Connection;
use tokio::sync::{mpsc, oneshot};

use crate::store::{StoreError, StoreResult};

/// Upper bound of jobs per transaction; keeps one commit's latency bounded.
const MAX_BATCH: usize = 512;

/// The WAL's size, in pages, from which the writer checkpoints after a batch (SQLite's
/// automatic checkpoint, which this replaces on the writing connection, is at 1,000).
/// Measured against 1,000 (docs/BENCHMARKS.md): 4,000 alone gave more starts but twice
/// the p99, each checkpoint holding the writer four times as long; with the nudge at
/// 3,000 the p99 stayed.
const CHECKPOINT_PAGES: c_int = 4000;

/// The WAL's size, in pages, from which the writer wakes the checkpointer thread.
const NUDGE_PAGES: c_int = 3000;

thread_local! {
    /// Pages in the WAL after the last commit on this thread's connection, as SQLite
    /// reports them to the WAL hook. Only the writer thread commits.
    static WAL_PAGES: Cell<c_int> = const { Cell::new(0) };
}

fn note_wal_pages(_: &Wal, pages: c_int) -> rusqlite::Result<()> {
    WAL_PAGES.set(pages);
    Ok(())
}

trait Job: Send {
    /// Runs the job's statements; `false` asks to roll back its savepoint.
    fn run(&mut self, conn: &Connection) -> bool;
    /// Whether the job needs its own savepoint (several statements that must apply
    /// together). Savepoints cost page copies into the sub-journal, so jobs whose
    /// partial effect is harmless go without.
    fn guarded(&self) -> bool;
    /// Delivers the result once the batch's fate is known.
    fn finish(self: Box<Self>, committed: Result<(), String>);
}

struct TypedJob<T, F> {
    guarded: bool,
    f: Option<F>,
    out: Option<StoreResult<T>>,
    reply: oneshot::Sender<StoreResult<T>>,
}

impl<T, F> Job for TypedJob<T, F>
where
    T: Send + 'static,
    F: FnOnce(&Connection) -> StoreResult<T> + Send + 'static,
{
    fn run(&mut self, conn: &Connection) -> bool {
        let f = self.f.take().expect("a job runs once");
        let r = f(conn);
        let ok = r.is_ok();
        self.out = Some(r);
        ok
    }

    fn guarded(&self) -> bool {
        self.guarded
    }

    fn finish(self: Box<Self>, committed: Result<(), String>) {
        let out = match (committed, self.out) {
            (_, Some(Err(e))) => Err(e),
            (Ok(()), Some(ok)) => ok,
            (Err(e), _) => Err(StoreError::Unavailable(e)),
            (Ok(()), None) => Err(StoreError::Internal("job did not run".into())),
        };
        // The requester may have gone away (client disconnected); that is fine.
        let _ = self.reply.send(out);
    }
}

/// Handle to the writer thread.
#[derive(Clone)]
pub struct Writer {
    tx: mpsc::Sender<Box<dyn Job>>,
}

impl Writer {
    /// Starts the writer thread on `conn`; `checkpointer` wakes the thread that
    /// checkpoints on a connection of its own (a full channel means it is awake).
    pub fn spawn(conn: Connection, checkpointer: SyncSender<()>) -> Self {
        let (tx, rx) = mpsc::channel::<Box<dyn Job>>(8192);
        std::thread::Builder::new()
            .name("rf-sqlite-writer".into())
            .spawn(move || run(conn, rx, checkpointer))
            .expect("spawn the SQLite writer thread");
        Self { tx }
    }

    /// Runs `f` inside the next group-committed transaction, in a savepoint of its own
    /// (an error rolls back exactly its writes), and returns its result once committed.
    pub async fn write<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> StoreResult<T> + Send + 'static,
    {
        self.submit(true, f).await
    }

    /// Like `write`, without the cost of a savepoint, for hot paths whose expected
    /// outcomes are all `Ok` (refusals are values, not errors). If such a job does
    /// return an error, nothing of its batch is committed and every job in the batch
    /// fails with a retryable error: atomicity is kept, at the price of a rare batch.
    pub async fn write_unguarded<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> StoreResult<T> + Send + 'static,
    {
        self.submit(false, f).await
    }

    async fn submit<T, F>(&self, guarded: bool, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> StoreResult<T> + Send + 'static,
    {
        let (reply, rx) = oneshot::channel();
        let job = Box::new(TypedJob {
            guarded,
            f: Some(f),
            out: None,
            reply,
        });
        self.tx
            .send(job)
            .await
            .map_err(|_| StoreError::Unavailable("SQLite writer stopped".into()))?;
        rx.await
            .map_err(|_| StoreError::Unavailable("SQLite writer stopped".into()))?
    }
}

fn exec(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(|_| ())
}

fn run(conn: Connection, mut rx: mpsc::Receiver<Box<dyn Job>>, checkpointer: SyncSender<()>) {
    // Installing the hook turns SQLite's automatic checkpoint off on this connection.
    conn.wal_hook(Some(note_wal_pages));
    let mut batch: Vec<Box<dyn Job>> = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(j) => batch.push(j),
                Err(_) => break,
            }
        }
        let committed = run_batch(&conn, &mut batch);
        if let Err(e) = &committed {
            tracing::error!(error = %e, jobs = batch.len(), "SQLite batch failed");
        }
        for job in batch.drain(..) {
            job.finish(committed.clone());
        }
        let pages = WAL_PAGES.get();
        if pages >= CHECKPOINT_PAGES {
            checkpoint(&conn);
        } else if pages >= NUDGE_PAGES {
            // Full: the checkpointer has a wake-up waiting already.
            let _ = checkpointer.try_send(());
        }
    }
}

/// A passive checkpoint: copies what no reader still needs, never waits for a lock.
/// Once the WAL is copied completely, the next transaction starts it over.
fn checkpoint(conn: &Connection) {
    match conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
        Ok(()) => WAL_PAGES.set(0),
        Err(e) => tracing::warn!(error = %e, "WAL checkpoint failed"),
    }
}

fn run_batch(conn: &Connection, batch: &mut [Box<dyn Job>]) -> Result<(), String> {
    exec(conn, "BEGIN IMMEDIATE").map_err(|e| e.to_string())?;
    let result = (|| -> Result<(), String> {
        let sql = |q: &str| exec(conn, q).map_err(|e| e.to_string());
        for job in batch.iter_mut() {
            let guarded = job.guarded();
            if guarded {
                sql("SAVEPOINT job")?;
            }
            // A panicking job is a bug; it must not take the writer (and every later
            // request) down with it, so it is rolled back like a failed job.
            let ok = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job.run(conn)))
                .unwrap_or(false);
            match (guarded, ok) {
                (false, true) => {}
                // An unguarded job may have written part of its work: the whole batch
                // is rolled back and every job in it fails with a retryable error.
                (false, false) => return Err("a write failed; its batch was rolled back".into()),
                (true, true) => sql("RELEASE job")?,
                (true, false) => {
                    sql("ROLLBACK TO job")?;
                    sql("RELEASE job")?;
                }
            }
        }
        sql("COMMIT")
    })();
    result.inspect_err(|_| {
        let _ = conn.execute_batch("ROLLBACK");
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Without the writer's own checkpoint the WAL would only grow under a steady stream
    /// of writes: the hook that counts its pages turns SQLite's automatic one off.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_wal_starts_over_after_it_passes_the_checkpoint_size() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.db");
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = OFF; CREATE TABLE t (b BLOB NOT NULL);",
        )
        .unwrap();
        let (nudge, nudged) = std::sync::mpsc::sync_channel(1);
        let writer = Writer::spawn(conn, nudge);
        // Each row fills a page of its own: three times the checkpoint size in all.
        let rows = 3 * CHECKPOINT_PAGES;
        for _ in 0..rows {
            writer
                .write_unguarded(|c| {
                    c.execute("INSERT INTO t (b) VALUES (zeroblob(3500))", [])?;
                    Ok(())
                })
                .await
                .unwrap();
        }
        let frame = 24 + 4096;
        let wal = std::fs::metadata(path.with_extension("db-wal"))
            .unwrap()
            .len();
        assert!(
            wal <= 32 + (CHECKPOINT_PAGES as u64 + 16) * frame,
            "the WAL holds {} pages",
            wal / frame
        );
        // On its way there it woke the checkpointer.
        assert!(nudged.try_recv().is_ok());
        let count: i64 = writer
            .write(|c| Ok(c.query_row("SELECT count(*) FROM t", [], |r| r.get(0))?))
            .await
            .unwrap();
        assert_eq!(count, i64::from(rows));
    }
}
