//! The PostgreSQL backend: the same operations as the SQLite backend, for several
//! instances sharing one database.
//!
//! Each operation is one transaction. Starts and checks, the hot operations, are
//! batched: the requests that arrive together share one transaction (`batch.rs`,
//! `starts.rs`, `checks.rs`), with the same locks and the same answers as one
//! transaction each. Where two instances could race, the database
//! decides: starts and binds for the same number (or account) are serialised by a
//! transaction-scoped advisory lock on its blind index (or account reference); checks
//! write a verification only if it is still as they read it, and decide again
//! otherwise; workers claim outbox rows with `FOR UPDATE SKIP LOCKED` and a lease.
//! Connections come from a sized pool; every statement has a timeout.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgPool, PgPoolOptions, PgRow};
use sqlx::{Postgres, Row, Transaction};

use super::*;
use crate::crypto::CodeHasher;
use crate::verify::{self, PendingState, StartPlan};

mod batch;
mod checks;
mod starts;

use batch::{Batcher, KeptConnections, Limits};
use checks::{CheckReq, Target};

/// A pooled connection idle at least this long is pinged before it is handed out
/// (HikariCP's default for the same choice).
const PING_IF_IDLE_FOR: std::time::Duration = std::time::Duration::from_millis(500);

const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("migrations/0001_init.sql")),
    (2, include_str!("migrations/0002_decisions.sql")),
    (3, include_str!("migrations/0003_lists.sql")),
    (4, include_str!("migrations/0004_prefix.sql")),
    (5, include_str!("migrations/0005_tombstone_index.sql")),
    (6, include_str!("migrations/0006_hot_references.sql")),
    (7, include_str!("migrations/0007_guess_budgets.sql")),
];

/// How long a batch waits for the one before it of its kind to end before it starts
/// beside it (see `batch.rs`): longer than a batch takes under load here (a few ms),
/// short enough that a transaction waiting for a lock holds few requests up for long.
const BATCH_PATIENCE: Duration = Duration::from_millis(20);

/// Pool and timeout settings.
#[derive(Debug, Clone)]
pub struct PgSettings {
    pub max_connections: u32,
    pub acquire_timeout: Duration,
    pub statement_timeout: Duration,
    /// Schema holding ringfence's tables (created if missing); `None` uses the
    /// connection's default search path. Lets tests and shared databases keep
    /// instances apart.
    pub schema: Option<String>,
}

impl Default for PgSettings {
    fn default() -> Self {
        Self {
            max_connections: 16,
            acquire_timeout: Duration::from_secs(3),
            statement_timeout: Duration::from_secs(5),
            schema: None,
        }
    }
}

pub struct PgStore {
    pool: PgPool,
    starts: Batcher<UndecidedStart, Option<StartOutcome>>,
    checks: Batcher<CheckReq, CheckOutcome>,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore").finish_non_exhaustive()
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        if retryable(&e) {
            StoreError::Unavailable(e.to_string())
        } else {
            StoreError::Internal(e.to_string())
        }
    }
}

/// Whether `e` is the connection's or the server's state rather than the request's:
/// worth a retry by the client (503). By kind for the connection (it broke, timed out,
/// or its messages stopped making sense, as when a restarting server cuts it
/// mid-reply), and by SQLSTATE class for the server: 08 connection exception, 53
/// insufficient resources, 57 operator intervention (a restart, a statement timeout);
/// and serialization failures and deadlocks (40001, 40P01).
fn retryable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            ["08", "53", "57"]
                .iter()
                .any(|class| code.starts_with(class))
                || code == "40001"
                || code == "40P01"
        }),
        _ => false,
    }
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.code().as_deref() == Some("23505"))
}

fn internal(msg: impl Into<String>) -> StoreError {
    StoreError::Internal(msg.into())
}

/// The advisory-lock key of some bytes: their first eight, big-endian, folded to the
/// 32 bits of the two-key form.
fn advisory_lock_key(bytes: &[u8]) -> i32 {
    let mut k = [0u8; 8];
    let n = bytes.len().min(8);
    k[..n].copy_from_slice(&bytes[..n]);
    let key = i64::from_be_bytes(k);
    (key ^ (key >> 32)) as i32
}

async fn advisory_lock(
    tx: &mut Transaction<'_, Postgres>,
    namespace: i32,
    bytes: &[u8],
) -> StoreResult<()> {
    // Two-key form: a namespace per kind of lock, so kinds never collide.
    sqlx::query("SELECT pg_advisory_xact_lock($1, $2)")
        .bind(namespace)
        .bind(advisory_lock_key(bytes))
        .execute(&mut **tx)
        .await?;
    Ok(())
}

const LOCK_SUBJECT: i32 = 1;
const LOCK_ACCOUNT: i32 = 2;
const LOCK_SUBJECT_BINDINGS: i32 = 3;

/// The advisory lock, `(namespace, key)`, that a start of the number with this blind
/// index takes: what `pg_locks` shows as `classid` and `objid` while starts of that
/// number wait on each other.
pub fn number_lock(blind_index: &crate::crypto::BlindIndex) -> (i32, i32) {
    (LOCK_SUBJECT, advisory_lock_key(&blind_index.0))
}

impl PgStore {
    /// Connects, applies migrations (one instance at a time, under an advisory lock).
    pub async fn connect(
        url: &str,
        codes: CodeHasher,
        settings: PgSettings,
    ) -> anyhow::Result<Self> {
        let timeout_ms = settings.statement_timeout.as_millis() as i64;
        if let Some(schema) = &settings.schema {
            anyhow::ensure!(
                !schema.is_empty()
                    && schema.len() <= 63
                    && schema
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
                "database schema: 1 to 63 characters of a-z, 0-9 and '_'"
            );
        }
        let schema = settings.schema.clone();
        let pool = PgPoolOptions::new()
            .max_connections(settings.max_connections)
            .acquire_timeout(settings.acquire_timeout)
            // A connection is tested with a round trip before use only if it sat idle
            // for a while: under load each is back in the pool for microseconds, and a
            // ping per acquire (sqlx's default) was a round trip per batch. A connection
            // that broke in between fails its statement, is closed, and the request
            // gets a retryable 503; the pool opens a new one.
            .test_before_acquire(false)
            .before_acquire(|conn, meta| {
                Box::pin(async move {
                    if meta.idle_for >= PING_IF_IDLE_FOR {
                        sqlx::Connection::ping(conn).await?;
                    }
                    Ok(true)
                })
            })
            .after_connect(move |conn, _| {
                // Owned statements: the future must be Send for every lifetime of `conn`.
                let mut statements = vec![format!("SET statement_timeout = {timeout_ms}")];
                if let Some(schema) = &schema {
                    // Validated above: safe to splice.
                    statements.push(format!("CREATE SCHEMA IF NOT EXISTS {schema}"));
                    statements.push(format!("SET search_path TO {schema}"));
                }
                Box::pin(async move {
                    for sql in statements {
                        sqlx::query(&sql).execute(&mut *conn).await?;
                    }
                    Ok(())
                })
            })
            .connect(url)
            .await
            .map_err(|e| anyhow::anyhow!("database_url: cannot connect to PostgreSQL: {e}"))?;
        migrate(&pool).await?;
        // One batch at a time per kind, the next forming while it runs: on the 2-core
        // benchmark machine the per-transaction cost is what runs out (4 in flight:
        // ~4,100 checks/s; 2: ~6,400; one, unless the one before has run for
        // `BATCH_PATIENCE`: +17 % checks, docs/BENCHMARKS.md). A batch stuck behind
        // another instance's row lock holds its kind up for that long at most, then a
        // second runs beside it.
        let limits = Limits {
            max_batch: 256,
            in_flight: (settings.max_connections as usize / 4).clamp(1, 2),
            patience: BATCH_PATIENCE,
        };
        let kept = KeptConnections::most(settings.max_connections, limits.in_flight);
        let starts = Batcher::spawn(limits, {
            let conns = Arc::new(KeptConnections::new(pool.clone(), kept));
            let codes = codes.clone();
            let services = Arc::new(starts::KnownServices::default());
            move |cmds| {
                let (conns, codes, services) = (conns.clone(), codes.clone(), services.clone());
                async move { starts::run(&conns, &codes, &services, cmds).await }
            }
        });
        let checks = Batcher::spawn(limits, {
            let conns = Arc::new(KeptConnections::new(pool.clone(), kept));
            move |reqs| {
                let (conns, codes) = (conns.clone(), codes.clone());
                async move { checks::run(&conns, &codes, reqs).await }
            }
        });
        Ok(Self {
            pool,
            starts,
            checks,
        })
    }

    /// Queues a check for the check batches.
    async fn check(
        &self,
        target: Target,
        code: OtpCode,
        now: Millis,
        gate: Option<Arc<dyn CheckGate>>,
    ) -> StoreResult<CheckOutcome> {
        let req = CheckReq {
            target,
            code,
            now,
            gate,
        };
        self.checks.submit(req).await
    }

    /// The pool, for tests and operator commands.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock(7340, 1)")
        .execute(&mut *tx)
        .await?;
    sqlx::query("CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)")
        .execute(&mut *tx)
        .await?;
    let current: i64 =
        sqlx::query_scalar("SELECT COALESCE(MAX(version), 0) FROM schema_migrations")
            .fetch_one(&mut *tx)
            .await?;
    let latest = MIGRATIONS.last().map(|m| m.0).unwrap_or(0);
    if current > latest {
        anyhow::bail!(
            "the database has schema version {current}, newer than this binary knows ({latest})"
        );
    }
    // Collected first: an iterator adapter's closure held across `await` would make
    // this future not `Send` for every lifetime.
    let pending: Vec<(i64, &'static str)> = MIGRATIONS
        .iter()
        .copied()
        .filter(|m| m.0 > current)
        .collect();
    for (version, sql) in pending {
        sqlx::Executor::execute(&mut *tx, sql).await?;
        sqlx::query("INSERT INTO schema_migrations (version, applied_at) VALUES ($1, $2)")
            .bind(version)
            .bind(crate::clock::Clock::now(&crate::clock::SystemClock))
            .execute(&mut *tx)
            .await?;
        tracing::info!(version, "applied PostgreSQL migration");
    }
    tx.commit().await?;
    Ok(())
}

// ---------------------------------------------------------------- row mapping

const VERIFICATION_COLUMNS: &str = "v.id, v.service_id, v.subject_id, v.status, v.channel, v.locale, v.account_ref, \
     v.purpose, v.sends, v.max_sends, v.attempts, v.max_attempts, v.test_number, v.created_at, v.updated_at, \
     v.expires_at, v.approved_at";
const SUBJECT_COLUMNS: &str = "s.id, s.blind_index, s.wrapped_key, s.phone_ct";

fn u32_at(r: &PgRow, i: usize) -> Result<u32, sqlx::Error> {
    Ok(u32::try_from(r.try_get::<i32, _>(i)?).unwrap_or(0))
}

fn verification_from(r: &PgRow) -> Result<VerificationRow, sqlx::Error> {
    let status: String = r.try_get(3)?;
    let channel: String = r.try_get(4)?;
    Ok(VerificationRow {
        id: r.try_get(0)?,
        service_id: r.try_get(1)?,
        subject_id: r.try_get(2)?,
        status: verify::Status::parse(&status).unwrap_or(verify::Status::Failed),
        channel: verify::Channel::parse(&channel).unwrap_or(verify::Channel::Sms),
        locale: r.try_get(5)?,
        account_ref: r.try_get(6)?,
        purpose: r.try_get(7)?,
        sends: u32_at(r, 8)?,
        max_sends: u32_at(r, 9)?,
        attempts: u32_at(r, 10)?,
        max_attempts: u32_at(r, 11)?,
        test_number: r.try_get(12)?,
        created_at: r.try_get(13)?,
        updated_at: r.try_get(14)?,
        expires_at: r.try_get(15)?,
        approved_at: r.try_get(16)?,
    })
}

fn subject_from(r: &PgRow, at: usize) -> Result<SubjectSecrets, sqlx::Error> {
    let bi: Vec<u8> = r.try_get(at + 1)?;
    Ok(SubjectSecrets {
        id: r.try_get(at)?,
        blind_index: BlindIndex::from_slice(&bi).unwrap_or(BlindIndex([0; 32])),
        wrapped_key: r.try_get(at + 2)?,
        phone_ct: r.try_get(at + 3)?,
    })
}

fn api_key_from(r: &PgRow) -> Result<ApiKeyRecord, sqlx::Error> {
    let scopes: String = r.try_get(3)?;
    Ok(ApiKeyRecord {
        id: r.try_get(0)?,
        name: r.try_get(1)?,
        secret_hash: r.try_get(2)?,
        scopes: scopes.split(',').filter_map(Scope::parse).collect(),
        created_at: r.try_get(4)?,
        revoked_at: r.try_get(5)?,
    })
}

fn service_from(r: &PgRow) -> StoreResult<ServiceRecord> {
    let id: String = r.try_get(0)?;
    let json: String = r.try_get(1)?;
    let config: ServiceConfig = serde_json::from_str(&json)
        .map_err(|e| internal(format!("service {id} has unreadable config: {e}")))?;
    Ok(ServiceRecord {
        id,
        config: Arc::new(config),
        created_at: r.try_get(2)?,
        updated_at: r.try_get(3)?,
    })
}

// ---------------------------------------------------------------- shared statements

async fn load_verification(
    tx: &mut Transaction<'_, Postgres>,
    id: &str,
) -> StoreResult<Option<VerificationRow>> {
    let row = sqlx::query(&format!(
        "SELECT {VERIFICATION_COLUMNS} FROM verifications v WHERE v.id = $1"
    ))
    .bind(id)
    .fetch_optional(&mut **tx)
    .await?;
    Ok(row.map(|r| verification_from(&r)).transpose()?)
}

async fn load_verification_required(
    tx: &mut Transaction<'_, Postgres>,
    id: &str,
) -> StoreResult<VerificationRow> {
    load_verification(tx, id)
        .await?
        .ok_or_else(|| internal(format!("verification {id} vanished inside its transaction")))
}

async fn end_queued_messages(
    tx: &mut Transaction<'_, Postgres>,
    verification_id: &str,
    status: &str,
    now: Millis,
) -> StoreResult<()> {
    sqlx::query(
        "UPDATE outbox SET status = $2, payload = NULL, lease_until = NULL, updated_at = $3
         WHERE verification_id = $1 AND status NOT IN ('sent', 'failed', 'expired', 'canceled')",
    )
    .bind(verification_id)
    .bind(status)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

async fn expire(tx: &mut Transaction<'_, Postgres>, id: &str, now: Millis) -> StoreResult<()> {
    sqlx::query(
        "UPDATE verifications SET status = 'expired', code_hash = NULL, updated_at = $2 WHERE id = $1 AND status = 'pending'",
    )
    .bind(id)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    end_queued_messages(tx, id, "expired", now).await
}

async fn lockout_until(
    tx: &mut Transaction<'_, Postgres>,
    subject_id: i64,
    service_id: &str,
) -> StoreResult<Option<Millis>> {
    Ok(
        sqlx::query_scalar("SELECT until FROM lockouts WHERE subject_id = $1 AND service_id = $2")
            .bind(subject_id)
            .bind(service_id)
            .fetch_optional(&mut **tx)
            .await?,
    )
}

async fn binding_by_account(
    tx: &mut Transaction<'_, Postgres>,
    account_ref: &str,
) -> StoreResult<Option<BindingRow>> {
    let row = sqlx::query(&format!(
        "SELECT b.account_ref, b.verification_id, b.verified_at, {SUBJECT_COLUMNS}
         FROM bindings b JOIN subjects s ON s.id = b.subject_id
         WHERE b.account_ref = $1 AND b.ended_at IS NULL"
    ))
    .bind(account_ref)
    .fetch_optional(&mut **tx)
    .await?;
    row.map(|r| -> StoreResult<BindingRow> {
        Ok(BindingRow {
            account_ref: r.try_get(0)?,
            verification_id: r.try_get(1)?,
            verified_at: r.try_get(2)?,
            subject: subject_from(&r, 3)?,
        })
    })
    .transpose()
}

// ---------------------------------------------------------------- the operations

#[async_trait]
impl Store for PgStore {
    async fn ping(&self) -> StoreResult<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn create_api_key(&self, k: ApiKeyRecord) -> StoreResult<()> {
        let scopes: Vec<&str> = k.scopes.iter().map(|s| s.as_str()).collect();
        sqlx::query("INSERT INTO api_keys (id, name, secret_hash, scopes, created_at, revoked_at) VALUES ($1, $2, $3, $4, $5, $6)")
            .bind(&k.id)
            .bind(&k.name)
            .bind(&k.secret_hash)
            .bind(scopes.join(","))
            .bind(k.created_at)
            .bind(k.revoked_at)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn get_api_key(&self, id: &str) -> StoreResult<Option<ApiKeyRecord>> {
        let r = sqlx::query("SELECT id, name, secret_hash, scopes, created_at, revoked_at FROM api_keys WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(r.map(|r| api_key_from(&r)).transpose()?)
    }

    async fn list_api_keys(&self) -> StoreResult<Vec<ApiKeyRecord>> {
        let rows = sqlx::query("SELECT id, name, secret_hash, scopes, created_at, revoked_at FROM api_keys ORDER BY created_at, id")
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().map(api_key_from).collect::<Result<_, _>>()?)
    }

    async fn revoke_api_key(&self, id: &str, now: Millis) -> StoreResult<bool> {
        let n =
            sqlx::query("UPDATE api_keys SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL")
                .bind(id)
                .bind(now)
                .execute(&self.pool)
                .await?
                .rows_affected();
        Ok(n == 1)
    }

    async fn create_service(&self, s: ServiceRecord) -> StoreResult<()> {
        let json = serde_json::to_string(&*s.config).map_err(|e| internal(e.to_string()))?;
        sqlx::query("INSERT INTO services (id, name, config, created_at, updated_at) VALUES ($1, $2, $3, $4, $5)")
            .bind(&s.id)
            .bind(&s.config.name)
            .bind(json)
            .bind(s.created_at)
            .bind(s.updated_at)
            .execute(&self.pool)
            .await
            .map_err(|e| if is_unique_violation(&e) { StoreError::Conflict("service_name") } else { e.into() })?;
        Ok(())
    }

    async fn get_service(&self, key: &str) -> StoreResult<Option<ServiceRecord>> {
        let r = sqlx::query(
            "SELECT id, config, created_at, updated_at FROM services WHERE id = $1 OR name = $1",
        )
        .bind(key)
        .fetch_optional(&self.pool)
        .await?;
        r.map(|r| service_from(&r)).transpose()
    }

    async fn list_services(&self) -> StoreResult<Vec<ServiceRecord>> {
        let rows = sqlx::query(
            "SELECT id, config, created_at, updated_at FROM services ORDER BY created_at, id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(service_from).collect()
    }

    async fn update_service(
        &self,
        id: &str,
        cfg: ServiceConfig,
        now: Millis,
    ) -> StoreResult<Option<ServiceRecord>> {
        let json = serde_json::to_string(&cfg).map_err(|e| internal(e.to_string()))?;
        let r = sqlx::query(
            "UPDATE services SET name = $2, config = $3, updated_at = $4 WHERE id = $1
             RETURNING id, config, created_at, updated_at",
        )
        .bind(id)
        .bind(&cfg.name)
        .bind(json)
        .bind(now)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| {
            if is_unique_violation(&e) {
                StoreError::Conflict("service_name")
            } else {
                e.into()
            }
        })?;
        r.map(|r| service_from(&r)).transpose()
    }

    async fn start_verification(&self, cmd: StartCmd) -> StoreResult<StartOutcome> {
        self.starts
            .submit(Box::pin(std::future::ready(Some(cmd))))
            .await?
            .ok_or_else(|| StoreError::Internal("a decided start was withdrawn".into()))
    }

    async fn start_verification_once_decided(
        &self,
        cmd: UndecidedStart,
    ) -> StoreResult<Option<StartOutcome>> {
        self.starts.submit(cmd).await
    }

    async fn check_verification(
        &self,
        id: &str,
        code: OtpCode,
        now: Millis,
    ) -> StoreResult<CheckOutcome> {
        self.check(Target::Id(id.to_owned()), code, now, None).await
    }

    /// One batch: the gate is asked inside the check's own transaction.
    async fn check_gated(
        &self,
        id: &str,
        code: OtpCode,
        now: Millis,
        gate: Arc<dyn CheckGate>,
    ) -> StoreResult<CheckOutcome> {
        self.check(Target::Id(id.to_owned()), code, now, Some(gate))
            .await
    }

    /// One batch too: the batch finds the pending verification and checks it as
    /// `check_gated` does.
    async fn check_pending_gated(
        &self,
        bi: &BlindIndex,
        service_id: &str,
        code: OtpCode,
        now: Millis,
        gate: Arc<dyn CheckGate>,
    ) -> StoreResult<CheckOutcome> {
        let target = Target::Pending {
            bi: *bi,
            service_id: service_id.to_owned(),
        };
        self.check(target, code, now, Some(gate)).await
    }

    async fn get_verification(&self, id: &str) -> StoreResult<Option<VerificationDetails>> {
        let Some(r) = sqlx::query(&format!(
            "SELECT {VERIFICATION_COLUMNS}, {SUBJECT_COLUMNS}
             FROM verifications v JOIN subjects s ON s.id = v.subject_id WHERE v.id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?
        else {
            return Ok(None);
        };
        let row = verification_from(&r)?;
        let subject = subject_from(&r, 17)?;
        let sends = sqlx::query(
            "SELECT channel, status, created_at FROM outbox WHERE verification_id = $1 ORDER BY id",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|r| -> Result<SendAttempt, sqlx::Error> {
            let ch: String = r.try_get(0)?;
            Ok(SendAttempt {
                channel: verify::Channel::parse(&ch).unwrap_or(verify::Channel::Sms),
                status: r.try_get(1)?,
                created_at: r.try_get(2)?,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
        Ok(Some(VerificationDetails {
            row,
            subject,
            sends,
        }))
    }

    async fn find_pending(
        &self,
        bi: &BlindIndex,
        service_id: &str,
        now: Millis,
    ) -> StoreResult<Option<String>> {
        Ok(sqlx::query_scalar(
            "SELECT v.id FROM verifications v JOIN subjects s ON s.id = v.subject_id
             WHERE s.blind_index = $1 AND v.service_id = $2 AND v.status = 'pending' AND v.expires_at > $3",
        )
        .bind(&bi.0[..])
        .bind(service_id)
        .bind(now)
        .fetch_optional(&self.pool)
        .await?)
    }

    async fn record_decision(&self, d: DecisionRecord) -> StoreResult<i64> {
        Ok(sqlx::query_scalar(
            "INSERT INTO decisions (at, service_id, verification_id, action, reasons, factors, channel,
                                    country_code, region, number_type)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING id",
        )
        .bind(d.at)
        .bind(&d.service_id)
        .bind(&d.verification_id)
        .bind(&d.action)
        .bind(d.reasons.join(","))
        .bind(&d.factors)
        .bind(&d.channel)
        .bind(i32::from(d.country_code))
        .bind(&d.region)
        .bind(&d.number_type)
        .fetch_one(&self.pool)
        .await?)
    }

    async fn list_decisions(&self, f: DecisionFilter) -> StoreResult<Vec<DecisionRecord>> {
        let rows = sqlx::query(
            "SELECT id, at, service_id, verification_id, action, reasons, factors, channel, country_code,
                    region, number_type
             FROM decisions
             WHERE id < $1 AND ($2::text IS NULL OR (',' || reasons || ',') LIKE '%,' || $2 || ',%')
               AND ($3::text IS NULL OR service_id = $3)
             ORDER BY id DESC LIMIT $4",
        )
        .bind(f.before_id.unwrap_or(i64::MAX))
        .bind(&f.reason)
        .bind(&f.service_id)
        .bind(i64::from(f.limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| -> Result<DecisionRecord, sqlx::Error> {
                let reasons: String = r.try_get(5)?;
                let cc: i32 = r.try_get(8)?;
                Ok(DecisionRecord {
                    id: r.try_get(0)?,
                    at: r.try_get(1)?,
                    service_id: r.try_get(2)?,
                    verification_id: r.try_get(3)?,
                    action: r.try_get(4)?,
                    reasons: reasons.split(',').map(str::to_owned).collect(),
                    factors: r.try_get(6)?,
                    channel: r.try_get(7)?,
                    country_code: u16::try_from(cc).unwrap_or(0),
                    region: r.try_get(9)?,
                    number_type: r.try_get(10)?,
                })
            })
            .collect::<Result<_, _>>()
            .map_err(Into::into)
    }

    async fn country_stats(&self, since: Millis) -> StoreResult<Vec<CountryStats>> {
        let count = |n: i64| n.max(0) as u64;
        let verifications: Vec<(i32, i64, i64, i64)> = sqlx::query_as(
            "SELECT s.country_code, COUNT(*), SUM(v.sends)::int8, SUM(CASE WHEN v.status = 'approved' THEN 1 ELSE 0 END)::int8
             FROM verifications v JOIN subjects s ON s.id = v.subject_id
             WHERE v.created_at >= $1 AND NOT v.test_number
             GROUP BY s.country_code",
        )
        .bind(since)
        .fetch_all(&self.pool)
        .await?;
        let decisions: Vec<(i32, i64, i64)> = sqlx::query_as(
            "SELECT country_code, SUM(CASE WHEN action = 'block' THEN 1 ELSE 0 END)::int8,
                    SUM(CASE WHEN action = 'shadow_block' THEN 1 ELSE 0 END)::int8
             FROM decisions WHERE at >= $1 GROUP BY country_code",
        )
        .bind(since)
        .fetch_all(&self.pool)
        .await?;
        let cc = |n: i32| u16::try_from(n).unwrap_or(0);
        Ok(CountryStats::merge(
            verifications
                .into_iter()
                .map(|(c, v, s, a)| (cc(c), count(v), count(s), count(a))),
            decisions
                .into_iter()
                .map(|(c, b, sb)| (cc(c), count(b), count(sb))),
        ))
    }

    async fn prefix_stats(
        &self,
        since: Millis,
        limit: u32,
    ) -> StoreResult<Vec<(String, CountryStats)>> {
        let rows: Vec<(String, i64, i64, i64)> = sqlx::query_as(
            "SELECT v.prefix, COUNT(*), SUM(v.sends)::int8, SUM(CASE WHEN v.status = 'approved' THEN 1 ELSE 0 END)::int8
             FROM verifications v
             WHERE v.created_at >= $1 AND NOT v.test_number AND v.prefix IS NOT NULL
             GROUP BY v.prefix ORDER BY 3 DESC, 1 LIMIT $2",
        )
        .bind(since)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(prefix, verifications, sends, approvals)| {
                let stats = CountryStats {
                    verifications: verifications as u64,
                    sends: sends as u64,
                    approvals: approvals as u64,
                    ..CountryStats::default()
                };
                (prefix, stats)
            })
            .collect())
    }

    async fn put_list_entry(&self, e: ListEntry) -> StoreResult<i64> {
        Ok(sqlx::query_scalar(
            "INSERT INTO abuse_lists (list, kind, value, reason, created_at, expires_at)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (list, kind, value) DO UPDATE SET reason = excluded.reason,
                 created_at = excluded.created_at, expires_at = excluded.expires_at
             RETURNING id",
        )
        .bind(&e.list)
        .bind(&e.kind)
        .bind(&e.value)
        .bind(&e.reason)
        .bind(e.created_at)
        .bind(e.expires_at)
        .fetch_one(&self.pool)
        .await?)
    }

    async fn list_entries(&self, now: Millis) -> StoreResult<Vec<ListEntry>> {
        let rows: Vec<(i64, String, String, String, String, i64, Option<i64>)> = sqlx::query_as(
            "SELECT id, list, kind, value, reason, created_at, expires_at FROM abuse_lists
             WHERE expires_at IS NULL OR expires_at > $1 ORDER BY id",
        )
        .bind(now)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(
                |(id, list, kind, value, reason, created_at, expires_at)| ListEntry {
                    id,
                    list,
                    kind,
                    value,
                    reason,
                    created_at,
                    expires_at,
                },
            )
            .collect())
    }

    async fn remove_list_entry(&self, id: i64) -> StoreResult<bool> {
        Ok(sqlx::query("DELETE FROM abuse_lists WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?
            .rows_affected()
            > 0)
    }

    async fn verification_owner(&self, id: &str) -> StoreResult<Option<(BlindIndex, String)>> {
        let row: Option<(Vec<u8>, String)> = sqlx::query_as(
            "SELECT s.blind_index, v.service_id FROM verifications v JOIN subjects s ON s.id = v.subject_id
             WHERE v.id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.and_then(|(bi, service)| Some((BlindIndex::from_slice(&bi)?, service))))
    }

    async fn cancel_verification(&self, id: &str, now: Millis) -> StoreResult<CancelOutcome> {
        let mut tx = self.pool.begin().await?;
        let n = sqlx::query(
            "UPDATE verifications SET status = 'canceled', code_hash = NULL, updated_at = $2
             WHERE id = $1 AND status = 'pending' AND expires_at > $2",
        )
        .bind(id)
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        let out = if n == 1 {
            end_queued_messages(&mut tx, id, "canceled", now).await?;
            CancelOutcome::Canceled(load_verification_required(&mut tx, id).await?)
        } else {
            match load_verification(&mut tx, id).await? {
                None => CancelOutcome::NotFound,
                Some(row) => CancelOutcome::NotPending(row),
            }
        };
        tx.commit().await?;
        Ok(out)
    }

    async fn bind_account(
        &self,
        account_ref: &str,
        verification_id: &str,
        now: Millis,
        rules: BindRules,
    ) -> StoreResult<BindOutcome> {
        let mut tx = self.pool.begin().await?;
        advisory_lock(
            &mut tx,
            LOCK_ACCOUNT,
            crate::crypto::sha256(account_ref.as_bytes()).as_slice(),
        )
        .await?;
        let out = bind(&mut tx, account_ref, verification_id, now, rules).await?;
        tx.commit().await?;
        Ok(out)
    }

    async fn get_binding(&self, account_ref: &str) -> StoreResult<Option<BindingRow>> {
        let mut tx = self.pool.begin().await?;
        let b = binding_by_account(&mut tx, account_ref).await?;
        tx.commit().await?;
        Ok(b)
    }

    async fn unbind_account(&self, account_ref: &str, now: Millis) -> StoreResult<bool> {
        let n = sqlx::query("UPDATE bindings SET ended_at = $2, end_reason = 'unbound' WHERE account_ref = $1 AND ended_at IS NULL")
            .bind(account_ref)
            .bind(now)
            .execute(&self.pool)
            .await?
            .rows_affected();
        Ok(n > 0)
    }

    async fn claim_outbox(
        &self,
        now: Millis,
        limit: u32,
        lease_ms: i64,
    ) -> StoreResult<OutboxClaim> {
        let mut tx = self.pool.begin().await?;
        let expired = sqlx::query(
            "UPDATE outbox SET status = 'expired', payload = NULL, lease_until = NULL, updated_at = $1
             WHERE status IN ('queued', 'sending', 'retry') AND not_after <= $1",
        )
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        // SKIP LOCKED: rows another instance is claiming right now are left to it.
        let rows = sqlx::query(&format!(
            "WITH due AS (
                SELECT id FROM outbox
                WHERE status IN ('queued', 'sending', 'retry') AND next_attempt_at <= $1
                  AND (lease_until IS NULL OR lease_until <= $1) AND payload IS NOT NULL
                ORDER BY next_attempt_at LIMIT $3
                FOR UPDATE SKIP LOCKED
             ), claimed AS (
                UPDATE outbox o SET status = 'sending', lease_until = $2, attempts = o.attempts + 1, updated_at = $1
                FROM due WHERE o.id = due.id
                RETURNING o.id, o.verification_id, o.channel, o.payload, o.attempts, o.not_after, o.subject_id
             )
             SELECT c.id, c.verification_id, c.channel, c.payload, c.attempts, c.not_after, {SUBJECT_COLUMNS}
             FROM claimed c JOIN subjects s ON s.id = c.subject_id ORDER BY c.id"
        ))
        .bind(now)
        .bind(now + lease_ms)
        .bind(i64::from(limit))
        .fetch_all(&mut *tx)
        .await?;
        let items = rows
            .iter()
            .map(|r| -> Result<OutboxItem, sqlx::Error> {
                let ch: String = r.try_get(2)?;
                Ok(OutboxItem {
                    id: r.try_get(0)?,
                    verification_id: r.try_get(1)?,
                    channel: verify::Channel::parse(&ch).unwrap_or(verify::Channel::Sms),
                    payload: r.try_get(3)?,
                    attempts: u32_at(r, 4)?,
                    not_after: r.try_get(5)?,
                    subject: subject_from(r, 6)?,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        tx.commit().await?;
        Ok(OutboxClaim { items, expired })
    }

    async fn finish_outbox(
        &self,
        results: Vec<(i64, DeliveryResult)>,
        now: Millis,
    ) -> StoreResult<()> {
        // A round's sends and retries take one statement each, whatever their number;
        // failures (rare, and each may fail its verification) one by one. Each message
        // counts once, as its first result says: later ones would find it no longer
        // `sending`, as they would one after the other.
        let mut seen = std::collections::HashSet::new();
        let (mut sent, mut provider_refs) = (Vec::new(), Vec::new());
        let (mut retried, mut retry_at, mut retry_errors) = (Vec::new(), Vec::new(), Vec::new());
        let mut failed = Vec::new();
        for (id, result) in &results {
            if !seen.insert(*id) {
                continue;
            }
            match result {
                DeliveryResult::Sent { provider_ref } => {
                    sent.push(*id);
                    provider_refs.push(provider_ref.as_deref());
                }
                DeliveryResult::Retry { at, error } => {
                    retried.push(*id);
                    retry_at.push(*at);
                    retry_errors.push(error.as_str());
                }
                DeliveryResult::Failed { error } => failed.push((*id, error.as_str())),
            }
        }
        let record_sent = sqlx::query(
            "UPDATE outbox o SET status = 'sent', payload = NULL, lease_until = NULL, provider_ref = r.provider_ref,
                    updated_at = $3
             FROM unnest($1::int8[], $2::text[]) AS r(id, provider_ref)
             WHERE o.id = r.id AND o.status = 'sending'",
        )
        .bind(&sent)
        .bind(&provider_refs)
        .bind(now);
        if retried.is_empty() && failed.is_empty() {
            // The usual round, every message sent: one statement, which commits by
            // itself, without the two round trips of a transaction around it.
            if !sent.is_empty() {
                record_sent.execute(&self.pool).await?;
            }
            return Ok(());
        }
        let mut tx = self.pool.begin().await?;
        if !sent.is_empty() {
            record_sent.execute(&mut *tx).await?;
        }
        if !retried.is_empty() {
            sqlx::query(
                "UPDATE outbox o SET status = 'retry', next_attempt_at = r.at, lease_until = NULL, last_error = r.error,
                        updated_at = $4
                 FROM unnest($1::int8[], $2::int8[], $3::text[]) AS r(id, at, error)
                 WHERE o.id = r.id AND o.status = 'sending'",
            )
            .bind(&retried)
            .bind(&retry_at)
            .bind(&retry_errors)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        // After the others: whether a verification still has a live message counts
        // sent and retried ones alike, so the order changes nothing.
        for (id, error) in failed {
            let vid: Option<String> = sqlx::query_scalar(
                "UPDATE outbox SET status = 'failed', payload = NULL, lease_until = NULL, last_error = $2, updated_at = $3
                 WHERE id = $1 AND status = 'sending' RETURNING verification_id",
            )
            .bind(id)
            .bind(error)
            .bind(now)
            .fetch_optional(&mut *tx)
            .await?;
            if let Some(vid) = vid {
                sqlx::query(
                    "UPDATE verifications SET status = 'failed', code_hash = NULL, updated_at = $2
                     WHERE id = $1 AND status = 'pending'
                       AND NOT EXISTS (SELECT 1 FROM outbox WHERE verification_id = $1
                                       AND status IN ('sent', 'queued', 'sending', 'retry'))",
                )
                .bind(vid)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            }
        }
        tx.commit().await?;
        Ok(())
    }

    async fn next_outbox_due(&self) -> StoreResult<Option<Millis>> {
        Ok(sqlx::query_scalar(
            "SELECT MIN(GREATEST(next_attempt_at, COALESCE(lease_until, next_attempt_at))) FROM outbox
             WHERE status IN ('queued', 'sending', 'retry')",
        )
        .fetch_one(&self.pool)
        .await?)
    }

    async fn sweep(
        &self,
        now: Millis,
        idempotency_before: Millis,
        limit: u32,
    ) -> StoreResult<SweepReport> {
        let mut tx = self.pool.begin().await?;
        let ids: Vec<String> = sqlx::query_scalar(
            "SELECT id FROM verifications WHERE status = 'pending' AND expires_at <= $1
             ORDER BY expires_at LIMIT $2 FOR UPDATE SKIP LOCKED",
        )
        .bind(now)
        .bind(i64::from(limit))
        .fetch_all(&mut *tx)
        .await?;
        for id in &ids {
            expire(&mut tx, id, now).await?;
        }
        let idempotency_keys = sqlx::query(
            "DELETE FROM idempotency_keys WHERE (api_key_id, key) IN
               (SELECT api_key_id, key FROM idempotency_keys WHERE created_at < $1 LIMIT $2)",
        )
        .bind(idempotency_before)
        .bind(i64::from(limit))
        .execute(&mut *tx)
        .await?
        .rows_affected();
        let lockouts = sqlx::query(
            "DELETE FROM lockouts WHERE (subject_id, service_id) IN
               (SELECT subject_id, service_id FROM lockouts WHERE until <= $1 LIMIT $2)",
        )
        .bind(now)
        .bind(i64::from(limit))
        .execute(&mut *tx)
        .await?
        .rows_affected();
        let guess_budgets = sqlx::query(
            "DELETE FROM guess_budgets WHERE (subject_id, service_id) IN
               (SELECT subject_id, service_id FROM guess_budgets WHERE tat_us <= $1 LIMIT $2)",
        )
        .bind(now.saturating_mul(1000))
        .bind(i64::from(limit))
        .execute(&mut *tx)
        .await?
        .rows_affected();
        let tombstones = sqlx::query(
            "DELETE FROM bindings WHERE id IN
               (SELECT id FROM bindings WHERE ended_at IS NOT NULL AND verified_at < $1 LIMIT $2)",
        )
        .bind(now - TOMBSTONE_RETENTION_MS)
        .bind(i64::from(limit))
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok(SweepReport {
            expired: ids.len() as u64,
            idempotency_keys,
            lockouts,
            guess_budgets,
            tombstones,
        })
    }
}

async fn start(
    tx: &mut Transaction<'_, Postgres>,
    codes: &CodeHasher,
    cmd: StartCmd,
) -> StoreResult<StartOutcome> {
    let StartCmd {
        id_if_new,
        service_id,
        config,
        blind_index,
        new_subject,
        sealed,
        reseal,
        channel,
        locale,
        account_ref,
        purpose,
        code,
        idempotency,
        claim_for_ms,
        prefix,
        now,
    } = cmd;
    // Every start for this number, on any instance, waits here for the one before it:
    // the subject, the pending verification and the idempotency key are then decided
    // without races.
    advisory_lock(tx, LOCK_SUBJECT, &blind_index.0).await?;
    if let Some(idem) = &idempotency {
        let earlier = sqlx::query("SELECT fingerprint, verification_id FROM idempotency_keys WHERE api_key_id = $1 AND key = $2")
            .bind(&idem.api_key_id)
            .bind(&idem.key)
            .fetch_optional(&mut **tx)
            .await?;
        if let Some(r) = earlier {
            let fp: Vec<u8> = r.try_get(0)?;
            let vid: String = r.try_get(1)?;
            if fp != idem.fingerprint {
                return Ok(StartOutcome::IdempotencyMismatch);
            }
            return Ok(StartOutcome::Replayed(
                load_verification_required(tx, &vid).await?,
            ));
        }
    }

    // Insert first: a number seen for the first time (the usual case at sign-up) costs
    // one round trip; a known one falls through to the look-up.
    let s = &new_subject;
    let inserted: Option<i64> = sqlx::query_scalar(
        "INSERT INTO subjects (blind_index, wrapped_key, phone_ct, country_code, region, number_type, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (blind_index) DO NOTHING RETURNING id",
    )
    .bind(&blind_index.0[..])
    .bind(&s.wrapped_key)
    .bind(&s.phone_ct)
    .bind(i32::from(s.country_code))
    .bind(&s.region)
    .bind(s.number_type)
    .bind(now)
    .fetch_optional(&mut **tx)
    .await?;
    let (subject_id, sealed, known) = match inserted {
        Some(id) => (id, sealed, false),
        None => {
            let existing = sqlx::query(
                "SELECT id, blind_index, wrapped_key, phone_ct FROM subjects WHERE blind_index = $1",
            )
            .bind(&blind_index.0[..])
            .fetch_one(&mut **tx)
            .await
            .map(|r| subject_from(&r, 0))??;
            if existing.wrapped_key.is_none() {
                return Err(internal(
                    "the subject of this number was erased; re-keying is not supported yet",
                ));
            }
            let sealed =
                reseal(&existing).ok_or_else(|| internal("subject key does not unwrap"))?;
            (existing.id, sealed, true)
        }
    };

    let locked_until = if known {
        lockout_until(tx, subject_id, &service_id).await?
    } else {
        None
    };
    let pending: Option<(VerificationRow, Millis)> = if known {
        sqlx::query(&format!(
            "SELECT {VERIFICATION_COLUMNS}, v.last_sent_at FROM verifications v
             WHERE v.subject_id = $1 AND v.service_id = $2 AND v.status = 'pending' FOR UPDATE"
        ))
        .bind(subject_id)
        .bind(&service_id)
        .fetch_optional(&mut **tx)
        .await?
        .map(|r| -> Result<_, sqlx::Error> { Ok((verification_from(&r)?, r.try_get(17)?)) })
        .transpose()?
    } else {
        None
    };
    let pending_state = pending.as_ref().map(|(v, last)| PendingState {
        expires_at: v.expires_at,
        sends: v.sends,
        max_sends: v.max_sends,
        last_sent_at: *last,
    });
    let plan = match verify::plan_start(pending_state.as_ref(), locked_until, &config, now) {
        Ok(plan) => plan,
        Err(why) => return Ok(StartOutcome::Refused(why)),
    };
    let expires_at = now + i64::from(config.ttl_seconds) * 1000;
    let lease_until = claim_for_ms.map(|ms| now + ms);
    // The message's id, once queued (together with a new verification, or after it).
    let mut message: Option<i64> = None;
    let (row, resent) = match (plan, pending) {
        (StartPlan::Resend, Some((row, _))) => {
            let hash = codes.hash(&row.id, code.expose());
            sqlx::query(
                "UPDATE verifications SET code_hash = $2, channel = $3, sends = sends + 1, last_sent_at = $4,
                        expires_at = $5, updated_at = $4
                 WHERE id = $1 AND status = 'pending' AND sends < max_sends",
            )
            .bind(&row.id)
            .bind(&hash[..])
            .bind(channel.as_str())
            .bind(now)
            .bind(expires_at)
            .execute(&mut **tx)
            .await?;
            end_queued_messages(tx, &row.id, "canceled", now).await?;
            (row.resent(channel, now, expires_at), true)
        }
        (plan, pending) => {
            if let (StartPlan::New { expire_stale: true }, Some((old, _))) = (&plan, &pending) {
                expire(tx, &old.id, now).await?;
            }
            let hash = codes.hash(&id_if_new, code.expose());
            let row = VerificationRow::pending(
                NewVerification {
                    id: id_if_new,
                    service_id,
                    subject_id,
                    channel,
                    locale,
                    account_ref,
                    purpose,
                    test_number: sealed.message.is_none(),
                },
                &config,
                now,
                expires_at,
            );
            // With its message, in one statement: one round trip less.
            let insert_verification = "INSERT INTO verifications (id, service_id, subject_id, status, channel, code_hash, locale, account_ref,
                    purpose, signals_ct, sends, max_sends, attempts, max_attempts, lockout_ms, test_number, created_at,
                    updated_at, expires_at, last_sent_at, prefix)
                 VALUES ($1, $2, $3, 'pending', $4, $5, $6, $7, $8, $9, 1, $10, 0, $11, $12, $13, $14, $14, $15, $14, $16)";
            let sql = if sealed.message.is_some() {
                format!(
                    "WITH v AS ({insert_verification} RETURNING id)
                     INSERT INTO outbox (verification_id, subject_id, channel, payload, status, attempts, next_attempt_at,
                                         lease_until, not_after, created_at, updated_at)
                     SELECT v.id, $3, $4, $17, CASE WHEN $18::bigint IS NULL THEN 'queued' ELSE 'sending' END,
                            CASE WHEN $18::bigint IS NULL THEN 0 ELSE 1 END, $14, $18, $15, $14, $14 FROM v
                     RETURNING id"
                )
            } else {
                insert_verification.to_owned()
            };
            let q = sqlx::query(&sql)
                .bind(&row.id)
                .bind(&row.service_id)
                .bind(subject_id)
                .bind(channel.as_str())
                .bind(&hash[..])
                .bind(&row.locale)
                .bind(&row.account_ref)
                .bind(&row.purpose)
                .bind(&sealed.signals_ct)
                .bind(row.max_sends as i32)
                .bind(row.max_attempts as i32)
                .bind(i64::from(config.lockout_seconds) * 1000)
                .bind(row.test_number)
                .bind(now)
                .bind(expires_at)
                .bind(&prefix);
            if let Some(payload) = &sealed.message {
                message = q
                    .bind(payload)
                    .bind(lease_until)
                    .fetch_one(&mut **tx)
                    .await?
                    .try_get(0)
                    .map(Some)?;
            } else {
                q.execute(&mut **tx).await?;
            }
            (row, false)
        }
    };
    if let (None, Some(payload)) = (message, &sealed.message) {
        message = sqlx::query_scalar(
            "INSERT INTO outbox (verification_id, subject_id, channel, payload, status, attempts, next_attempt_at,
                                 lease_until, not_after, created_at, updated_at)
             VALUES ($1, $2, $3, $4, CASE WHEN $7::bigint IS NULL THEN 'queued' ELSE 'sending' END,
                     CASE WHEN $7::bigint IS NULL THEN 0 ELSE 1 END, $5, $7, $6, $5, $5)
             RETURNING id",
        )
        .bind(&row.id)
        .bind(subject_id)
        .bind(channel.as_str())
        .bind(payload)
        .bind(now)
        .bind(expires_at)
        .bind(lease_until)
        .fetch_one(&mut **tx)
        .await
        .map(Some)?;
    }
    if let Some(idem) = &idempotency {
        sqlx::query("INSERT INTO idempotency_keys (api_key_id, key, fingerprint, verification_id, created_at) VALUES ($1, $2, $3, $4, $5)")
            .bind(&idem.api_key_id)
            .bind(&idem.key)
            .bind(&idem.fingerprint[..])
            .bind(&row.id)
            .bind(now)
            .execute(&mut **tx)
            .await?;
    }
    Ok(StartOutcome::Started {
        verification: row,
        resent,
        claimed_message: message.filter(|_| lease_until.is_some()),
    })
}

async fn bind(
    tx: &mut Transaction<'_, Postgres>,
    account_ref: &str,
    verification_id: &str,
    now: Millis,
    rules: BindRules,
) -> StoreResult<BindOutcome> {
    let Some(v) = load_verification(tx, verification_id).await? else {
        return Ok(BindOutcome::VerificationNotFound);
    };
    let Some(approved_at) = v
        .approved_at
        .filter(|_| v.status == verify::Status::Approved)
    else {
        return Ok(BindOutcome::NotApproved);
    };
    if v.account_ref.as_deref().is_some_and(|a| a != account_ref) {
        return Ok(BindOutcome::AccountMismatch);
    }
    let existing = binding_by_account(tx, account_ref).await?;
    if let Some(b) = &existing {
        if b.subject.id == v.subject_id {
            return Ok(BindOutcome::Bound {
                binding: b.clone(),
                replaced: false,
                superseded: 0,
            });
        }
    }
    if now - approved_at > rules.approval_window_ms {
        return Ok(BindOutcome::Stale);
    }
    // Bindings of one number, from any account, take turns (after the account's lock,
    // which is always taken first: no cycle).
    advisory_lock(tx, LOCK_SUBJECT_BINDINGS, &v.subject_id.to_be_bytes()).await?;
    let others: i64 = sqlx::query_scalar(
        "SELECT COUNT(DISTINCT account_ref) FROM bindings
         WHERE subject_id = $1 AND verified_at > $2 AND account_ref <> $3",
    )
    .bind(v.subject_id)
    .bind(now - rules.cap_window_ms)
    .bind(account_ref)
    .fetch_one(&mut **tx)
    .await?;
    if others >= i64::from(rules.max_accounts) {
        return Ok(BindOutcome::PhoneLimitReached);
    }
    let replaced = existing.is_some();
    if replaced {
        sqlx::query("UPDATE bindings SET ended_at = $2, end_reason = 'replaced' WHERE account_ref = $1 AND ended_at IS NULL")
            .bind(account_ref)
            .bind(now)
            .execute(&mut **tx)
            .await?;
    }
    let superseded = if rules.one_verified_holder {
        sqlx::query(
            "UPDATE bindings SET ended_at = $2, end_reason = 'superseded'
             WHERE subject_id = $1 AND ended_at IS NULL AND account_ref <> $3",
        )
        .bind(v.subject_id)
        .bind(now)
        .bind(account_ref)
        .execute(&mut **tx)
        .await?
        .rows_affected() as u32
    } else {
        0
    };
    sqlx::query("INSERT INTO bindings (account_ref, subject_id, verification_id, verified_at) VALUES ($1, $2, $3, $4)")
        .bind(account_ref)
        .bind(v.subject_id)
        .bind(verification_id)
        .bind(approved_at)
        .execute(&mut **tx)
        .await?;
    let binding = binding_by_account(tx, account_ref)
        .await?
        .ok_or_else(|| internal("binding vanished inside its transaction"))?;
    Ok(BindOutcome::Bound {
        binding,
        replaced,
        superseded,
    })
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use super::*;

    /// A server error with only a SQLSTATE, as PostgreSQL sends it.
    #[derive(Debug)]
    struct Sqlstate(&'static str);

    impl std::fmt::Display for Sqlstate {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "SQLSTATE {}", self.0)
        }
    }

    impl std::error::Error for Sqlstate {}

    impl sqlx::error::DatabaseError for Sqlstate {
        fn message(&self) -> &str {
            self.0
        }
        fn code(&self) -> Option<Cow<'_, str>> {
            Some(Cow::Borrowed(self.0))
        }
        fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
            self
        }
        fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
            self
        }
        fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
            self
        }
        fn kind(&self) -> sqlx::error::ErrorKind {
            sqlx::error::ErrorKind::Other
        }
    }

    fn server(code: &'static str) -> StoreError {
        sqlx::Error::Database(Box::new(Sqlstate(code))).into()
    }

    #[test]
    fn what_the_connection_or_the_server_caused_is_retryable_and_the_rest_is_not() {
        for code in [
            "57P01", "57P03", "57014", "08006", "08P01", "53300", "40001", "40P01",
        ] {
            assert!(matches!(server(code), StoreError::Unavailable(_)), "{code}");
        }
        for code in ["23505", "42P01", "25P02", "22P02"] {
            assert!(matches!(server(code), StoreError::Internal(_)), "{code}");
        }
        let cut = sqlx::Error::Protocol("execute: unexpected message: ParseComplete".into());
        assert!(matches!(StoreError::from(cut), StoreError::Unavailable(_)));
        let eof = sqlx::Error::Io(std::io::ErrorKind::UnexpectedEof.into());
        assert!(matches!(StoreError::from(eof), StoreError::Unavailable(_)));
        assert!(matches!(
            StoreError::from(sqlx::Error::RowNotFound),
            StoreError::Internal(_)
        ));
    }
}
