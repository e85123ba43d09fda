//! The PostgreSQL backend of the suite: a schema of its own per test (dropped
//! afterwards) on the server of `RINGFENCE_TEST_POSTGRES_URL`, and an inspector that
//! reads it through the store's pool.

use std::sync::Arc;

use async_trait::async_trait;
use ringfence::crypto::CodeHasher;
use ringfence::store::postgres::{PgSettings, PgStore};
use sqlx::Row;

use crate::backend::{Counts, Inspect, Opened, OutboxRow};

pub async fn open(url: String, codes: CodeHasher) -> Opened {
    open_pg_with(url, codes, |_| {}).await.1
}

/// [`open`], with the store's settings as `tune` leaves them, and the store as its own
/// type, for tests that read the schema directly.
pub async fn open_pg_with(
    url: String,
    codes: CodeHasher,
    tune: impl FnOnce(&mut PgSettings),
) -> (Arc<PgStore>, Opened) {
    let schema = format!(
        "rf_conf_{}",
        hex::encode(ringfence::crypto::random_bytes::<6>())
    );
    let mut settings = PgSettings {
        schema: Some(schema.clone()),
        max_connections: 8,
        ..PgSettings::default()
    };
    tune(&mut settings);
    let store = Arc::new(
        PgStore::connect(&url, codes, settings)
            .await
            .expect("RINGFENCE_TEST_POSTGRES_URL is set but PostgreSQL does not answer"),
    );
    let opened = Opened {
        store: store.clone(),
        inspect: Box::new(PostgresInspector {
            store: store.clone(),
        }),
        keep: Box::new(DropSchema { url, schema }),
    };
    (store, opened)
}

/// Drops the test's schema when the test is done.
struct DropSchema {
    url: String,
    schema: String,
}

impl Drop for DropSchema {
    fn drop(&mut self) {
        let (url, schema) = (self.url.clone(), self.schema.clone());
        // Drop runs inside the test's runtime; a thread of its own may block.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            rt.block_on(async {
                use sqlx::Connection;
                let mut conn = sqlx::PgConnection::connect(&url).await.ok()?;
                sqlx::query(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
                    .execute(&mut conn)
                    .await
                    .ok()
            })
        })
        .join();
    }
}

struct PostgresInspector {
    store: Arc<PgStore>,
}

impl PostgresInspector {
    async fn count(&self, table: &str) -> u64 {
        let n: i64 = sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {table}"))
            .fetch_one(self.store.pool())
            .await
            .expect("count rows");
        n as u64
    }
}

#[async_trait]
impl Inspect for PostgresInspector {
    async fn outbox(&self, verification_id: &str) -> Vec<OutboxRow> {
        sqlx::query(
            "SELECT id, status, payload IS NOT NULL, attempts, next_attempt_at, lease_until
             FROM outbox WHERE verification_id = $1 ORDER BY id",
        )
        .bind(verification_id)
        .fetch_all(self.store.pool())
        .await
        .expect("query outbox")
        .iter()
        .map(|r| OutboxRow {
            id: r.get(0),
            status: r.get(1),
            has_payload: r.get(2),
            attempts: r.get::<i32, _>(3) as u32,
            next_attempt_at: r.get(4),
            lease_until: r.get(5),
        })
        .collect()
    }

    async fn has_code_hash(&self, verification_id: &str) -> bool {
        sqlx::query_scalar::<_, bool>(
            "SELECT code_hash IS NOT NULL FROM verifications WHERE id = $1",
        )
        .bind(verification_id)
        .fetch_optional(self.store.pool())
        .await
        .expect("read code hash")
        .unwrap_or_else(|| panic!("no verification {verification_id}"))
    }

    async fn counts(&self) -> Counts {
        Counts {
            subjects: self.count("subjects").await,
            verifications: self.count("verifications").await,
            outbox: self.count("outbox").await,
            idempotency_keys: self.count("idempotency_keys").await,
        }
    }
}
