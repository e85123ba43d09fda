//! One commit of the SQLite writer's kind, through SQLite's default VFS and through this
//! crate's: a transaction of 20 rows with random keys (each lands on its own page of a
//! unique index, as the blind index's entries do), in WAL mode with
//! `synchronous = FULL`, on a real file in the system's temporary directory, so each
//! commit includes its flush. Both sides use the same table, grown first to 40,000 rows
//! (some 400 leaf pages of the index), so that a commit writes a frame per row and a
//! few more; SQLite's automatic checkpoint runs on both. Figures are recorded in
//! docs/BENCHMARKS.md.

use criterion::{criterion_group, criterion_main, Criterion};
use rusqlite::{Connection, OpenFlags};

fn open(path: &std::path::Path, vfs: Option<&std::ffi::CStr>) -> Connection {
    let conn = match vfs {
        Some(vfs) => Connection::open_with_flags_and_vfs(path, OpenFlags::default(), vfs),
        None => Connection::open(path),
    }
    .unwrap();
    conn.execute_batch(
        "PRAGMA journal_mode = WAL;
         PRAGMA synchronous = FULL;
         CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, k BLOB NOT NULL UNIQUE, v BLOB NOT NULL);",
    )
    .unwrap();
    conn
}

const COMMIT: &str = "BEGIN;
     WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 20)
     INSERT INTO t (k, v) SELECT randomblob(32), zeroblob(100) FROM n;
     COMMIT;";

fn commit(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    {
        let conn = open(&path, None);
        conn.execute_batch(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 40000)
             INSERT INTO t (k, v) SELECT randomblob(32), zeroblob(100) FROM n;
             PRAGMA wal_checkpoint(TRUNCATE);",
        )
        .unwrap();
    }
    let vfs = ringfence_sqlite_wal::register().unwrap();
    let mut group = c.benchmark_group("commit of 20 random-key rows");
    for (name, vfs) in [("default VFS", None), ("ringfence-wal", Some(vfs))] {
        let conn = open(&path, vfs);
        group.bench_function(name, |b| b.iter(|| conn.execute_batch(COMMIT).unwrap()));
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(50);
    targets = commit
}
criterion_main!(benches);
