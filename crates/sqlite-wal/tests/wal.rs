//! The VFS on real database files: a commit's frames in the file in one write before the
//! commit returns, other connections seeing every commit, large transactions and WAL
//! restarts keeping the database whole, and what was acknowledged surviving kill -9.

use std::cell::Cell;
use std::ffi::c_int;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};

use ringfence_sqlite_wal::{opened_through, register, writes_on_this_thread, Writes, LIMIT};
use rusqlite::hooks::Wal;
use rusqlite::{Connection, OpenFlags};

fn open(path: &Path) -> Connection {
    let conn = Connection::open_with_flags_and_vfs(
        path,
        OpenFlags::default(),
        register().expect("registers"),
    )
    .expect("opens through the VFS");
    conn.execute_batch(
        "PRAGMA journal_mode = WAL;
         PRAGMA synchronous = FULL;
         CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, k BLOB NOT NULL UNIQUE, v BLOB NOT NULL);",
    )
    .expect("configures");
    conn
}

thread_local! {
    static WAL_FRAMES: Cell<c_int> = const { Cell::new(0) };
}

fn note_frames(_: &Wal, frames: c_int) -> rusqlite::Result<()> {
    WAL_FRAMES.with(|f| f.set(frames));
    Ok(())
}

fn since(before: Writes) -> Writes {
    let now = writes_on_this_thread();
    Writes {
        received: now.received - before.received,
        issued: now.issued - before.issued,
    }
}

/// Reads frame `n` (1-based) of the WAL file as it is on disk: whether it is there,
/// carries the salts of the WAL's header, and ends a commit.
fn commit_frame_on_disk(wal: &Path, n: c_int, page_size: usize) -> bool {
    let bytes = std::fs::read(wal).expect("reads the WAL");
    let at = 32 + (n as usize - 1) * (24 + page_size);
    if bytes.len() < at + 24 + page_size {
        return false;
    }
    let word = |i: usize| u32::from_be_bytes(bytes[i..i + 4].try_into().unwrap());
    let (salt1, salt2) = (word(16), word(20));
    let db_size_after_commit = word(at + 4);
    db_size_after_commit != 0 && word(at + 8) == salt1 && word(at + 12) == salt2
}

#[test]
fn each_commit_is_in_the_file_in_one_write_before_it_returns() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let conn = open(&path);
    // The hook reports the WAL's frames after each commit (and turns the automatic
    // checkpoint off: the test checkpoints itself).
    conn.wal_hook(Some(note_frames));
    let reader = Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    assert!(opened_through(&conn));
    assert!(!opened_through(&reader));
    let page_size: usize = conn
        .query_row("PRAGMA page_size", [], |r| r.get(0))
        .unwrap();
    let wal = dir.path().join("db-wal");
    let restart = || {
        // Copy the WAL back and start it over from its first frame.
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            .unwrap();
        WAL_FRAMES.with(|f| f.set(0));
    };
    restart();
    let (mut rows, mut most_frames) = (0, 0);
    for commit in 0..300 {
        let before = writes_on_this_thread();
        let frames_before = WAL_FRAMES.with(Cell::get);
        // Random keys: each row lands on its own page of the unique index.
        conn.execute_batch(
            "BEGIN;
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 20)
             INSERT INTO t (k, v) SELECT randomblob(32), zeroblob(100) FROM n;
             COMMIT;",
        )
        .unwrap();
        rows += 20;
        let w = since(before);
        let frames = WAL_FRAMES.with(Cell::get);
        // SQLite wrote each new frame's header and page, and the WAL's header first
        // when it started over, which it syncs on its own; the frames reached the file
        // in one write.
        let new_frames = (frames - frames_before) as u64;
        most_frames = most_frames.max(new_frames);
        let parts = (new_frames * (24 + page_size as u64)).div_ceil(LIMIT as u64);
        if frames_before == 0 {
            assert_eq!(
                w,
                Writes {
                    received: 1 + 2 * new_frames,
                    issued: 1 + parts
                },
                "commit {commit}"
            );
        } else {
            assert_eq!(
                w,
                Writes {
                    received: 2 * new_frames,
                    issued: parts
                },
                "commit {commit}"
            );
        }
        assert!(
            commit_frame_on_disk(&wal, frames, page_size),
            "commit {commit}: its last frame ({frames}) is not in the file"
        );
        let seen: i64 = reader
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(seen, rows, "commit {commit}: another connection's view");
        if commit % 50 == 49 {
            restart();
        }
    }
    // Once the index is large, each commit's random keys touch a page each.
    assert!(most_frames >= 20, "at most {most_frames} frames a commit");
    let check: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
}

#[test]
fn transactions_larger_than_the_buffer_and_spilled_pages_keep_the_database_whole() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let conn = open(&path);
    // A page cache of 20 pages: a large transaction spills pages into the WAL before
    // its commit, and may rewrite them there.
    conn.execute_batch("PRAGMA cache_size = 20; PRAGMA wal_autocheckpoint = 100;")
        .unwrap();
    let before = writes_on_this_thread();
    for _ in 0..3 {
        conn.execute_batch(
            "BEGIN;
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 3000)
             INSERT INTO t (k, v) SELECT randomblob(32), randomblob(900) FROM n;
             UPDATE t SET v = zeroblob(800) WHERE id % 7 = 0;
             COMMIT;",
        )
        .unwrap();
    }
    let w = since(before);
    // Each commit is over 3 MB: written in parts of at most LIMIT bytes.
    assert!(w.issued > 3 * (3_000_000 / LIMIT) as u64, "{w:?}");
    assert!(w.received > w.issued, "{w:?}");
    let expected: (i64, i64) = conn
        .query_row("SELECT count(*), sum(length(v)) FROM t", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    drop(conn);
    // Read back through the default VFS.
    let plain = Connection::open(&path).unwrap();
    let check: String = plain
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
    let found: (i64, i64) = plain
        .query_row("SELECT count(*), sum(length(v)) FROM t", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    assert_eq!(found, expected);
    assert_eq!(found.0, 9_000);
}

const CHILD_DB: &str = "RINGFENCE_SQLITE_WAL_CHILD_DB";

/// Run by `what_was_acknowledged_survives_kill_9` in a process of its own: commits
/// rows one transaction at a time and acknowledges each on stdout, until killed.
#[test]
#[ignore = "a child process of what_was_acknowledged_survives_kill_9"]
fn child_commits_until_killed() {
    let Some(path) = std::env::var_os(CHILD_DB) else {
        return;
    };
    let conn = open(Path::new(&path));
    conn.execute_batch("PRAGMA wal_autocheckpoint = 200;")
        .unwrap();
    let mut out = std::io::stdout().lock();
    for i in 1.. {
        conn.execute(
            "INSERT INTO t (id, k, v) VALUES (?1, randomblob(32), zeroblob(200))",
            [i],
        )
        .unwrap();
        writeln!(out, "committed {i}").unwrap();
        out.flush().unwrap();
    }
}

#[test]
fn what_was_acknowledged_survives_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "child_commits_until_killed",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_DB, &path)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut acknowledged = 0;
    while acknowledged < 2_000 {
        let line = lines.next().expect("the child commits").unwrap();
        if let Some(n) = line.strip_prefix("committed ") {
            acknowledged = n.parse().unwrap();
        }
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let conn = Connection::open(&path).unwrap();
    let check: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
    let (count, max): (i64, i64) = conn
        .query_row("SELECT count(*), max(id) FROM t", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    assert!(max >= acknowledged, "{max} < {acknowledged}");
    assert_eq!(count, max, "rows 1..={max} without a gap");
}
