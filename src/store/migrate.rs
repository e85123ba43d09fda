//! `ringfence migrate-store`: copies every table of a SQLite database into an empty
//! PostgreSQL database, then verifies the copy table by table (row counts and a digest
//! of every row, in primary-key order).
//!
//! Rows are copied as they are: numbers stay sealed under their subjects' keys, so the
//! PostgreSQL instances need the same three secrets. The target must be empty; the
//! source should not be written to during the copy (stop the SQLite instance first).

use std::path::Path;

use indicatif::{ProgressBar, ProgressStyle};
use rusqlite::types::Value;
use sha2::{Digest, Sha256};
use sqlx::postgres::PgArguments;
use sqlx::{Arguments, PgPool, Row};

/// How a column is stored in PostgreSQL (SQLite keeps integers and booleans alike).
#[derive(Clone, Copy)]
enum Kind {
    Int8,
    Int4,
    Bool,
    Text,
    Bytes,
}

use Kind::*;

struct Table {
    name: &'static str,
    /// Primary key, for a stable order.
    order_by: &'static str,
    columns: &'static [(&'static str, Kind)],
    /// An identity column whose sequence must continue after the copied rows.
    identity: Option<&'static str>,
}

/// Every table, parents before children.
const TABLES: &[Table] = &[
    Table {
        name: "api_keys",
        order_by: "id",
        columns: &[
            ("id", Text),
            ("name", Text),
            ("secret_hash", Bytes),
            ("scopes", Text),
            ("created_at", Int8),
            ("revoked_at", Int8),
        ],
        identity: None,
    },
    Table {
        name: "services",
        order_by: "id",
        columns: &[
            ("id", Text),
            ("name", Text),
            ("config", Text),
            ("created_at", Int8),
            ("updated_at", Int8),
        ],
        identity: None,
    },
    Table {
        name: "subjects",
        order_by: "id",
        columns: &[
            ("id", Int8),
            ("blind_index", Bytes),
            ("wrapped_key", Bytes),
            ("phone_ct", Bytes),
            ("country_code", Int4),
            ("region", Text),
            ("number_type", Text),
            ("created_at", Int8),
            ("erased_at", Int8),
        ],
        identity: Some("id"),
    },
    Table {
        name: "verifications",
        order_by: "id",
        columns: &[
            ("id", Text),
            ("service_id", Text),
            ("subject_id", Int8),
            ("status", Text),
            ("channel", Text),
            ("code_hash", Bytes),
            ("locale", Text),
            ("account_ref", Text),
            ("purpose", Text),
            ("signals_ct", Bytes),
            ("sends", Int4),
            ("max_sends", Int4),
            ("attempts", Int4),
            ("max_attempts", Int4),
            ("lockout_ms", Int8),
            ("test_number", Bool),
            ("created_at", Int8),
            ("updated_at", Int8),
            ("expires_at", Int8),
            ("last_sent_at", Int8),
            ("approved_at", Int8),
            ("prefix", Text),
        ],
        identity: None,
    },
    Table {
        name: "lockouts",
        order_by: "subject_id, service_id",
        columns: &[("subject_id", Int8), ("service_id", Text), ("until", Int8)],
        identity: None,
    },
    Table {
        name: "outbox",
        order_by: "id",
        columns: &[
            ("id", Int8),
            ("verification_id", Text),
            ("subject_id", Int8),
            ("channel", Text),
            ("payload", Bytes),
            ("status", Text),
            ("attempts", Int4),
            ("next_attempt_at", Int8),
            ("lease_until", Int8),
            ("not_after", Int8),
            ("provider_ref", Text),
            ("last_error", Text),
            ("created_at", Int8),
            ("updated_at", Int8),
        ],
        identity: Some("id"),
    },
    Table {
        name: "bindings",
        order_by: "id",
        columns: &[
            ("id", Int8),
            ("account_ref", Text),
            ("subject_id", Int8),
            ("verification_id", Text),
            ("verified_at", Int8),
            ("ended_at", Int8),
            ("end_reason", Text),
        ],
        identity: Some("id"),
    },
    Table {
        name: "idempotency_keys",
        order_by: "api_key_id, key",
        columns: &[
            ("api_key_id", Text),
            ("key", Text),
            ("fingerprint", Bytes),
            ("verification_id", Text),
            ("created_at", Int8),
        ],
        identity: None,
    },
    Table {
        name: "decisions",
        order_by: "id",
        columns: &[
            ("id", Int8),
            ("at", Int8),
            ("service_id", Text),
            ("verification_id", Text),
            ("action", Text),
            ("reasons", Text),
            ("factors", Text),
            ("channel", Text),
            ("country_code", Int4),
            ("region", Text),
            ("number_type", Text),
        ],
        identity: Some("id"),
    },
    Table {
        name: "abuse_lists",
        order_by: "id",
        columns: &[
            ("id", Int8),
            ("list", Text),
            ("kind", Text),
            ("value", Text),
            ("reason", Text),
            ("created_at", Int8),
            ("expires_at", Int8),
        ],
        identity: Some("id"),
    },
];

/// What was copied and verified, per table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableReport {
    pub table: &'static str,
    pub rows: u64,
}

/// `ORDER BY` for PostgreSQL: text keys in byte order (`COLLATE "C"`), as SQLite sorts.
fn pg_order_by(t: &Table) -> String {
    t.order_by
        .split(", ")
        .map(|c| match t.columns.iter().find(|(name, _)| *name == c) {
            Some((_, Text)) => format!("{c} COLLATE \"C\""),
            _ => c.to_owned(),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn column_list(t: &Table) -> String {
    t.columns.iter().map(|c| c.0).collect::<Vec<_>>().join(", ")
}

fn bind(args: &mut PgArguments, kind: Kind, v: &Value) -> anyhow::Result<()> {
    let r = match (kind, v) {
        (Int8, Value::Integer(i)) => args.add(*i),
        (Int8, Value::Null) => args.add(None::<i64>),
        (Int4, Value::Integer(i)) => args.add(i32::try_from(*i)?),
        (Int4, Value::Null) => args.add(None::<i32>),
        (Bool, Value::Integer(i)) => args.add(*i != 0),
        (Bool, Value::Null) => args.add(None::<bool>),
        (Text, Value::Text(s)) => args.add(s.clone()),
        (Text, Value::Null) => args.add(None::<String>),
        (Bytes, Value::Blob(b)) => args.add(b.clone()),
        (Bytes, Value::Null) => args.add(None::<Vec<u8>>),
        _ => anyhow::bail!("unexpected value type"),
    };
    r.map_err(|e| anyhow::anyhow!("bind: {e}"))
}

/// A canonical encoding of one row, the same from either database.
fn digest_row(h: &mut Sha256, row: &[Value]) {
    for v in row {
        match v {
            Value::Null => h.update([0]),
            Value::Integer(i) => {
                h.update([1]);
                h.update(i.to_le_bytes());
            }
            Value::Text(s) => {
                h.update([2]);
                h.update((s.len() as u64).to_le_bytes());
                h.update(s.as_bytes());
            }
            Value::Blob(b) => {
                h.update([3]);
                h.update((b.len() as u64).to_le_bytes());
                h.update(b);
            }
            Value::Real(f) => {
                h.update([4]);
                h.update(f.to_le_bytes());
            }
        }
    }
}

fn pg_value(row: &sqlx::postgres::PgRow, i: usize, kind: Kind) -> anyhow::Result<Value> {
    Ok(match kind {
        Int8 => row
            .try_get::<Option<i64>, _>(i)?
            .map_or(Value::Null, Value::Integer),
        Int4 => row
            .try_get::<Option<i32>, _>(i)?
            .map_or(Value::Null, |v| Value::Integer(i64::from(v))),
        Bool => row
            .try_get::<Option<bool>, _>(i)?
            .map_or(Value::Null, |v| Value::Integer(i64::from(v))),
        Text => row
            .try_get::<Option<String>, _>(i)?
            .map_or(Value::Null, Value::Text),
        Bytes => row
            .try_get::<Option<Vec<u8>>, _>(i)?
            .map_or(Value::Null, Value::Blob),
    })
}

fn progress(len: u64, table: &str, show: bool) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template("{prefix:>16} [{bar:40}] {pos}/{len} rows ({per_sec}, {eta})")
            .expect("valid template")
            .progress_chars("=> "),
    );
    pb.set_prefix(table.to_owned());
    pb
}

/// Copies `source` (a SQLite file) into the database of `pool` and verifies the copy.
pub async fn migrate(
    source: &Path,
    pool: &PgPool,
    show_progress: bool,
) -> anyhow::Result<Vec<TableReport>> {
    let src =
        rusqlite::Connection::open_with_flags(source, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(|e| anyhow::anyhow!("--from: cannot open {}: {e}", source.display()))?;
    for t in TABLES {
        let n: i64 = sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {}", t.name))
            .fetch_one(pool)
            .await?;
        anyhow::ensure!(
            n == 0,
            "--to: table {} is not empty; migrate into an empty database",
            t.name
        );
    }
    let mut reports = Vec::new();
    for t in TABLES {
        let total: i64 = src.query_row(&format!("SELECT COUNT(*) FROM {}", t.name), [], |r| {
            r.get(0)
        })?;
        let pb = progress(total as u64, t.name, show_progress);
        let cols = column_list(t);
        // PostgreSQL takes at most 65,535 parameters per statement.
        let batch = (60_000 / t.columns.len()).max(1);
        let mut stmt = src.prepare(&format!(
            "SELECT {cols} FROM {} ORDER BY {}",
            t.name, t.order_by
        ))?;
        let mut rows = stmt.query([])?;
        let mut buffered: Vec<Vec<Value>> = Vec::with_capacity(batch);
        let mut tx = pool.begin().await?;
        loop {
            let next = rows.next()?;
            if let Some(r) = next {
                let values = (0..t.columns.len())
                    .map(|i| r.get::<_, Value>(i))
                    .collect::<Result<Vec<_>, _>>()?;
                buffered.push(values);
            }
            let done = next.is_none();
            if buffered.len() == batch || (done && !buffered.is_empty()) {
                insert_batch(&mut tx, t, &buffered).await?;
                pb.inc(buffered.len() as u64);
                buffered.clear();
            }
            if done {
                break;
            }
        }
        if let Some(col) = t.identity {
            sqlx::query(&format!(
                "SELECT setval(pg_get_serial_sequence('{0}', '{col}'), COALESCE((SELECT MAX({col}) FROM {0}), 0) + 1, false)",
                t.name
            ))
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        pb.finish();
        reports.push(TableReport {
            table: t.name,
            rows: total as u64,
        });
    }
    verify(&src, pool, show_progress).await?;
    Ok(reports)
}

async fn insert_batch(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    t: &Table,
    rows: &[Vec<Value>],
) -> anyhow::Result<()> {
    let mut args = PgArguments::default();
    let mut sql = format!("INSERT INTO {} ({}) ", t.name, column_list(t));
    if t.identity.is_some() {
        sql.push_str("OVERRIDING SYSTEM VALUE ");
    }
    sql.push_str("VALUES ");
    let mut n = 0;
    for (ri, row) in rows.iter().enumerate() {
        if ri > 0 {
            sql.push(',');
        }
        sql.push('(');
        for (ci, (v, (_, kind))) in row.iter().zip(t.columns).enumerate() {
            if ci > 0 {
                sql.push(',');
            }
            n += 1;
            sql.push_str(&format!("${n}"));
            bind(&mut args, *kind, v)?;
        }
        sql.push(')');
    }
    sqlx::query_with(&sql, args).execute(&mut **tx).await?;
    Ok(())
}

/// Reads both databases back in primary-key order and compares counts and digests.
async fn verify(
    src: &rusqlite::Connection,
    pool: &PgPool,
    show_progress: bool,
) -> anyhow::Result<()> {
    for t in TABLES {
        let cols = column_list(t);
        let sql = format!("SELECT {cols} FROM {} ORDER BY {}", t.name, t.order_by);
        let pg_sql = format!("SELECT {cols} FROM {} ORDER BY {}", t.name, pg_order_by(t));
        let mut a = Sha256::new();
        let mut count_a = 0u64;
        let mut stmt = src.prepare(&sql)?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            let values = (0..t.columns.len())
                .map(|i| r.get::<_, Value>(i))
                .collect::<Result<Vec<_>, _>>()?;
            let values: Vec<Value> = values
                .into_iter()
                .zip(t.columns)
                .map(|(v, (_, k))| match (k, v) {
                    (Bool, Value::Integer(i)) => Value::Integer(i64::from(i != 0)),
                    (_, v) => v,
                })
                .collect();
            digest_row(&mut a, &values);
            count_a += 1;
        }
        let mut b = Sha256::new();
        let mut count_b = 0u64;
        let pg_rows = sqlx::query(&pg_sql).fetch_all(pool).await?;
        for r in &pg_rows {
            let values = t
                .columns
                .iter()
                .enumerate()
                .map(|(i, (_, k))| pg_value(r, i, *k))
                .collect::<anyhow::Result<Vec<_>>>()?;
            digest_row(&mut b, &values);
            count_b += 1;
        }
        anyhow::ensure!(
            count_a == count_b,
            "verification failed: {} has {count_a} rows in SQLite, {count_b} in PostgreSQL",
            t.name
        );
        anyhow::ensure!(
            a.finalize() == b.finalize(),
            "verification failed: the rows of {} differ",
            t.name
        );
        if show_progress {
            eprintln!("{:>16} verified: {count_a} rows identical", t.name);
        }
    }
    Ok(())
}
