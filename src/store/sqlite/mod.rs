//! The embedded SQLite backend: one database file in WAL mode, written by one thread
//! with group commit (`writer`), read on a few threads with a connection each
//! (`readers`).
//!
//! Durability (`Durability`): with `full` (the default) a write is acknowledged only
//! once it is on disk, so it survives a power cut as well as a crash of the process.
//! With `normal`, a commit is acknowledged once it is in the operating system's page
//! cache: it survives a crash of the process (kill -9) but a power cut or kernel crash
//! can lose what was acknowledged since the last WAL sync; a checkpointer syncs the WAL
//! every `CHECKPOINT_INTERVAL` at least, which bounds that window. With `full` the
//! writer writes its WAL through `ringfence_sqlite_wal`, a commit's frames in one
//! write; that is safe only where every commit syncs the WAL, so not with `normal`.
//!
//! This backend serves exactly one instance; `ringfence serve` takes a lock file next
//! to the database to make sure of it.

mod ops;
mod readers;
mod writer;

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use rusqlite::{Connection, OpenFlags};

use super::*;
use crate::crypto::CodeHasher;
use readers::Readers;
use writer::Writer;

const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("migrations/0001_init.sql")),
    (2, include_str!("migrations/0002_decisions.sql")),
    (3, include_str!("migrations/0003_lists.sql")),
    (4, include_str!("migrations/0004_prefix.sql")),
    (5, include_str!("migrations/0005_tombstone_index.sql")),
    (6, include_str!("migrations/0006_outbox_due_predicate.sql")),
];

/// Read connections, each on a thread of its own (see `readers`).
const READERS: usize = 4;

/// How often the checkpointer moves the WAL into the database (and syncs the WAL).
pub const CHECKPOINT_INTERVAL: std::time::Duration = std::time::Duration::from_millis(100);

/// When an acknowledged write is safe; see the module documentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// `synchronous=FULL`: on disk before acknowledged.
    #[default]
    Full,
    /// `synchronous=NORMAL`: in the page cache before acknowledged; synced every
    /// `CHECKPOINT_INTERVAL`.
    Normal,
}

impl Durability {
    fn pragma(self) -> &'static str {
        match self {
            Self::Full => "FULL",
            Self::Normal => "NORMAL",
        }
    }
}

pub struct SqliteStore {
    writer: Writer,
    readers: Readers,
    codes: CodeHasher,
    path: PathBuf,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        use rusqlite::ErrorCode;
        match e.sqlite_error_code() {
            Some(
                ErrorCode::DatabaseBusy
                | ErrorCode::DatabaseLocked
                | ErrorCode::DiskFull
                | ErrorCode::CannotOpen,
            ) => StoreError::Unavailable(e.to_string()),
            _ => StoreError::Internal(e.to_string()),
        }
    }
}

/// Page cache of the writing connection, in KiB. The read connections and the
/// checkpointer get much smaller ones: together they bound the resident memory.
const WRITER_CACHE_KIB: u32 = 8 * 1024;
/// A read connection's page cache, in KiB: room for the inner pages of the tables a
/// read walks. In WAL mode a connection empties its cache whenever it begins a read
/// after another connection committed (`pager_reset` in `pagerBeginReadTransaction`),
/// so under writes a larger cache would only hold memory, not pages read again.
const READER_CACHE_KIB: u32 = 512;

fn configure(conn: &Connection, durability: Durability, cache_kib: u32) -> rusqlite::Result<()> {
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    conn.execute_batch(&format!(
        "PRAGMA journal_mode = WAL;
         PRAGMA synchronous = {};
         PRAGMA foreign_keys = ON;
         PRAGMA temp_store = MEMORY;
         PRAGMA cache_size = -{cache_kib};
         PRAGMA journal_size_limit = 67108864;",
        durability.pragma(),
    ))?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(())
}

/// Checkpoints the WAL on a connection of its own every `CHECKPOINT_INTERVAL`, and
/// whenever the writer wakes it through the returned sender (as the WAL grows, see
/// `writer`); stops once the sender is dropped. The writer also checkpoints by itself
/// when the WAL is larger still, right after a batch's replies: that is when the WAL
/// can be copied completely and start over, which keeps it bounded under sustained load
/// (a checkpointer on another thread never catches up with a busy writer). This thread
/// copies most of it beforehand, on the other core, and adds the time bound that an
/// idle or lightly loaded instance would otherwise lack.
fn spawn_checkpointer(
    path: &Path,
    durability: Durability,
) -> anyhow::Result<std::sync::mpsc::SyncSender<()>> {
    let conn = Connection::open(path)?;
    configure(&conn, durability, 1024)?;
    let (tx, rx) = std::sync::mpsc::sync_channel::<()>(1);
    std::thread::Builder::new()
        .name("rf-sqlite-ckpt".into())
        .spawn(move || {
            use std::sync::mpsc::RecvTimeoutError;
            // A wake-up or the interval: checkpoint. No sender left: stop.
            while !matches!(
                rx.recv_timeout(CHECKPOINT_INTERVAL),
                Err(RecvTimeoutError::Disconnected)
            ) {
                // PASSIVE never blocks the writer or readers; syncing the WAL is part of
                // it, which is what bounds the loss window of `normal`.
                if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
                    tracing::warn!(error = %e, "WAL checkpoint failed");
                }
            }
        })?;
    Ok(tx)
}

fn migrate(conn: &mut Connection) -> anyhow::Result<()> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL)",
    )?;
    let current: i64 = conn.query_row(
        "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
        [],
        |r| r.get(0),
    )?;
    let latest = MIGRATIONS.last().map(|m| m.0).unwrap_or(0);
    if current > latest {
        anyhow::bail!(
            "the database has schema version {current}, newer than this binary knows ({latest}); run a newer ringfence"
        );
    }
    for (version, sql) in MIGRATIONS.iter().filter(|m| m.0 > current) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.execute(
            "INSERT INTO schema_migrations (version, applied_at) VALUES (?1, ?2)",
            rusqlite::params![
                version,
                crate::clock::Clock::now(&crate::clock::SystemClock)
            ],
        )?;
        tx.commit()?;
        tracing::info!(version, "applied SQLite migration");
    }
    Ok(())
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and applies migrations.
    pub fn open(path: &Path, codes: CodeHasher, durability: Durability) -> anyhow::Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let mut conn = match durability {
            // Each commit syncs the WAL before it is published: the writer's WAL can
            // take a commit's frames in one write (see ringfence_sqlite_wal).
            Durability::Full => Connection::open_with_flags_and_vfs(
                path,
                OpenFlags::default(),
                ringfence_sqlite_wal::register().map_err(anyhow::Error::msg)?,
            )?,
            Durability::Normal => Connection::open(path)?,
        };
        configure(&conn, durability, WRITER_CACHE_KIB)?;
        migrate(&mut conn)?;
        let mut readers = Vec::with_capacity(READERS);
        for _ in 0..READERS {
            let r = Connection::open_with_flags(
                path,
                OpenFlags::SQLITE_OPEN_READ_ONLY
                    | OpenFlags::SQLITE_OPEN_NO_MUTEX
                    | OpenFlags::SQLITE_OPEN_URI,
            )?;
            r.busy_timeout(std::time::Duration::from_secs(5))?;
            r.set_prepared_statement_cache_capacity(64);
            r.pragma_update(None, "cache_size", -i64::from(READER_CACHE_KIB))?;
            readers.push(r);
        }
        let checkpointer = spawn_checkpointer(path, durability)?;
        Ok(Self {
            // The writer thread holds the checkpointer's only sender: the checkpointer
            // stops when the writer does.
            writer: Writer::spawn(conn, checkpointer),
            readers: Readers::spawn(readers)?,
            codes,
            path: path.to_owned(),
        })
    }

    /// Runs a read-only closure on a read connection, off the async threads.
    async fn read<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> StoreResult<T> + Send + 'static,
    {
        self.readers.read(f).await
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn ping(&self) -> StoreResult<()> {
        self.read(|c| Ok(c.query_row("SELECT 1", [], |_| Ok(()))?))
            .await?;
        self.writer.write(|_| Ok(())).await
    }

    async fn create_api_key(&self, key: ApiKeyRecord) -> StoreResult<()> {
        self.writer
            .write(move |c| ops::create_api_key(c, &key))
            .await
    }

    async fn get_api_key(&self, id: &str) -> StoreResult<Option<ApiKeyRecord>> {
        let id = id.to_owned();
        self.read(move |c| ops::get_api_key(c, &id)).await
    }

    async fn list_api_keys(&self) -> StoreResult<Vec<ApiKeyRecord>> {
        self.read(ops::list_api_keys).await
    }

    async fn revoke_api_key(&self, id: &str, now: Millis) -> StoreResult<bool> {
        let id = id.to_owned();
        self.writer
            .write(move |c| ops::revoke_api_key(c, &id, now))
            .await
    }

    async fn create_service(&self, rec: ServiceRecord) -> StoreResult<()> {
        self.writer
            .write(move |c| ops::create_service(c, &rec))
            .await
    }

    async fn get_service(&self, id_or_name: &str) -> StoreResult<Option<ServiceRecord>> {
        let key = id_or_name.to_owned();
        self.read(move |c| ops::get_service(c, &key)).await
    }

    async fn list_services(&self) -> StoreResult<Vec<ServiceRecord>> {
        self.read(ops::list_services).await
    }

    async fn update_service(
        &self,
        id: &str,
        config: ServiceConfig,
        now: Millis,
    ) -> StoreResult<Option<ServiceRecord>> {
        let id = id.to_owned();
        self.writer
            .write(move |c| ops::update_service(c, &id, &config, now))
            .await
    }

    async fn start_verification(&self, cmd: StartCmd) -> StoreResult<StartOutcome> {
        let codes = self.codes.clone();
        self.writer
            .write_unguarded(move |c| ops::start(c, &codes, cmd))
            .await
    }

    async fn check_verification(
        &self,
        id: &str,
        code: OtpCode,
        now: Millis,
    ) -> StoreResult<CheckOutcome> {
        let codes = self.codes.clone();
        let id = id.to_owned();
        self.writer
            .write_unguarded(move |c| ops::check(c, &codes, &id, &code, now))
            .await
    }

    async fn get_verification(&self, id: &str) -> StoreResult<Option<VerificationDetails>> {
        let id = id.to_owned();
        self.read(move |c| ops::get_verification(c, &id)).await
    }

    async fn find_pending(
        &self,
        bi: &BlindIndex,
        service_id: &str,
        now: Millis,
    ) -> StoreResult<Option<String>> {
        let (bi, service_id) = (*bi, service_id.to_owned());
        self.read(move |c| ops::find_pending(c, &bi, &service_id, now))
            .await
    }

    async fn record_decision(&self, d: DecisionRecord) -> StoreResult<i64> {
        self.writer
            .write(move |c| ops::record_decision(c, &d))
            .await
    }

    async fn list_decisions(&self, f: DecisionFilter) -> StoreResult<Vec<DecisionRecord>> {
        self.read(move |c| ops::list_decisions(c, &f)).await
    }

    async fn country_stats(&self, since: Millis) -> StoreResult<Vec<CountryStats>> {
        self.read(move |c| ops::country_stats(c, since)).await
    }

    async fn prefix_stats(
        &self,
        since: Millis,
        limit: u32,
    ) -> StoreResult<Vec<(String, CountryStats)>> {
        self.read(move |c| ops::prefix_stats(c, since, limit)).await
    }

    async fn put_list_entry(&self, e: ListEntry) -> StoreResult<i64> {
        self.writer.write(move |c| ops::put_list_entry(c, &e)).await
    }

    async fn list_entries(&self, now: Millis) -> StoreResult<Vec<ListEntry>> {
        self.read(move |c| ops::list_entries(c, now)).await
    }

    async fn remove_list_entry(&self, id: i64) -> StoreResult<bool> {
        self.writer
            .write(move |c| ops::remove_list_entry(c, id))
            .await
    }

    async fn verification_owner(&self, id: &str) -> StoreResult<Option<(BlindIndex, String)>> {
        let id = id.to_owned();
        self.read(move |c| ops::verification_owner(c, &id)).await
    }

    async fn cancel_verification(&self, id: &str, now: Millis) -> StoreResult<CancelOutcome> {
        let id = id.to_owned();
        self.writer.write(move |c| ops::cancel(c, &id, now)).await
    }

    async fn bind_account(
        &self,
        account_ref: &str,
        verification_id: &str,
        now: Millis,
        rules: BindRules,
    ) -> StoreResult<BindOutcome> {
        let (a, v) = (account_ref.to_owned(), verification_id.to_owned());
        self.writer
            .write(move |c| ops::bind(c, &a, &v, now, rules))
            .await
    }

    async fn get_binding(&self, account_ref: &str) -> StoreResult<Option<BindingRow>> {
        let a = account_ref.to_owned();
        self.read(move |c| ops::get_binding(c, &a)).await
    }

    async fn unbind_account(&self, account_ref: &str, now: Millis) -> StoreResult<bool> {
        let a = account_ref.to_owned();
        self.writer.write(move |c| ops::unbind(c, &a, now)).await
    }

    async fn claim_outbox(
        &self,
        now: Millis,
        limit: u32,
        lease_ms: i64,
    ) -> StoreResult<OutboxClaim> {
        self.writer
            .write_unguarded(move |c| ops::claim_outbox(c, now, limit, lease_ms))
            .await
    }

    async fn finish_outbox(
        &self,
        results: Vec<(i64, DeliveryResult)>,
        now: Millis,
    ) -> StoreResult<()> {
        self.writer
            .write_unguarded(move |c| ops::finish_outbox(c, &results, now))
            .await
    }

    async fn sweep(
        &self,
        now: Millis,
        idempotency_before: Millis,
        limit: u32,
    ) -> StoreResult<SweepReport> {
        self.writer
            .write(move |c| ops::sweep(c, now, idempotency_before, limit))
            .await
    }

    async fn next_outbox_due(&self) -> StoreResult<Option<Millis>> {
        self.read(ops::next_outbox_due).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::KeyBytes;

    /// The writer writes its WAL a commit at a time only where each commit syncs it.
    #[tokio::test]
    async fn only_a_full_store_writes_its_wal_through_the_coalescing_vfs() {
        for (durability, expected) in [(Durability::Full, true), (Durability::Normal, false)] {
            let dir = tempfile::tempdir().unwrap();
            let store = SqliteStore::open(
                &dir.path().join("db"),
                CodeHasher::new(KeyBytes::generate()),
                durability,
            )
            .unwrap();
            let through = store
                .writer
                .write(|c| Ok(ringfence_sqlite_wal::opened_through(c)))
                .await
                .unwrap();
            assert_eq!(through, expected, "{durability:?}");
            let synchronous: i64 = store
                .writer
                .write(|c| Ok(c.query_row("PRAGMA synchronous", [], |r| r.get(0))?))
                .await
                .unwrap();
            // FULL is 2, NORMAL 1.
            assert_eq!(synchronous == 2, expected, "{durability:?}");
        }
    }
}
