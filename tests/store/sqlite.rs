//! The SQLite backend of the suite: a new database file in a temporary directory per
//! test, and an inspector that reads it through a read-only connection of its own.
//!
//! SQLite-only. A PostgreSQL variant lives in a module of its own with the same shape.

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use ringfence::crypto::CodeHasher;
use ringfence::store::sqlite::{Durability, SqliteStore};
use rusqlite::{Connection, OpenFlags, OptionalExtension};

use crate::backend::{Counts, Inspect, Opened, OutboxRow};

/// A fresh database file. `Durability::Normal`: the suite tests behaviour, not fsync,
/// and a process crash (the only failure a test run can have) loses nothing with it.
pub async fn open(codes: CodeHasher) -> Opened {
    let dir = tempfile::tempdir().expect("create a temporary directory");
    let path = dir.path().join("ringfence.db");
    let store = SqliteStore::open(&path, codes, Durability::Normal).expect("open SQLite store");
    Opened {
        store: Arc::new(store),
        inspect: Box::new(SqliteInspector { path }),
        keep: Box::new(dir),
    }
}

struct SqliteInspector {
    path: PathBuf,
}

impl SqliteInspector {
    /// A read-only connection per question: it sees everything the store acknowledged,
    /// since the store answers only after its commit.
    fn conn(&self) -> Connection {
        Connection::open_with_flags(&self.path, OpenFlags::SQLITE_OPEN_READ_ONLY)
            .expect("open the test database read-only")
    }

    fn count(&self, table: &str) -> u64 {
        self.conn()
            .query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get(0))
            .expect("count rows")
    }
}

#[async_trait]
impl Inspect for SqliteInspector {
    async fn outbox(&self, verification_id: &str) -> Vec<OutboxRow> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare(
                "SELECT id, status, payload IS NOT NULL, attempts, next_attempt_at, lease_until
                 FROM outbox WHERE verification_id = ?1 ORDER BY id",
            )
            .expect("prepare outbox query");
        stmt.query_map([verification_id], |r| {
            Ok(OutboxRow {
                id: r.get(0)?,
                status: r.get(1)?,
                has_payload: r.get(2)?,
                attempts: r.get(3)?,
                next_attempt_at: r.get(4)?,
                lease_until: r.get(5)?,
            })
        })
        .expect("query outbox")
        .collect::<Result<_, _>>()
        .expect("read outbox rows")
    }

    async fn has_code_hash(&self, verification_id: &str) -> bool {
        self.conn()
            .query_row(
                "SELECT code_hash IS NOT NULL FROM verifications WHERE id = ?1",
                [verification_id],
                |r| r.get::<_, bool>(0),
            )
            .optional()
            .expect("read code hash")
            .unwrap_or_else(|| panic!("no verification {verification_id}"))
    }

    async fn counts(&self) -> Counts {
        Counts {
            subjects: self.count("subjects"),
            verifications: self.count("verifications"),
            outbox: self.count("outbox"),
            idempotency_keys: self.count("idempotency_keys"),
        }
    }
}
