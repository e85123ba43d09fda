//! What the PostgreSQL backend promises beyond the shared contract: a start that fails
//! inside a batch fails alone (its savepoint is rolled back, not the batch), so no
//! other request has to be sent again; starts lock no row of their service, which
//! every start of every instance shares; a number seen for the first time starts
//! without waiting for its number's lock; a hostile id in a check finds nothing; a
//! batch of starts or checks whose locks time out leaves no connection behind in a
//! failed transaction; a pooled connection the server dropped while it sat idle is
//! replaced before a request uses it; and a batch's connection kept through a quiet
//! spell goes back to the pool before the batch takes one.

use std::any::Any;
use std::sync::Arc;
use std::time::Duration;

use ringfence::crypto::Keyring;
use ringfence::store::postgres::{number_lock, PgSettings, PgStore};
use ringfence::store::{CheckOutcome, StartOutcome, StoreError};
use sqlx::Connection;

use crate::backend::Backend;
use crate::batching::two_bad_starts_among_many;
use crate::fixtures::{mobile, otp, CODE, SECOND, T0, WRONG};

/// A store on a fresh schema of the test PostgreSQL server, tuned by `tune`; `None`
/// when `RINGFENCE_TEST_POSTGRES_URL` is not set.
struct OnPostgres {
    b: Backend,
    pg: Arc<PgStore>,
    /// Whatever must outlive the store (its schema is dropped after).
    keep: Box<dyn Any + Send + Sync>,
    url: String,
}

async fn on_postgres(tune: impl FnOnce(&mut PgSettings)) -> Option<OnPostgres> {
    let url = std::env::var("RINGFENCE_TEST_POSTGRES_URL").ok()?;
    let keys = Keyring::ephemeral();
    let (pg, opened) = crate::postgres::open_pg_with(url.clone(), keys.codes.clone(), tune).await;
    Some(OnPostgres {
        b: Backend {
            store: opened.store,
            keys,
            inspect: opened.inspect,
        },
        pg,
        keep: opened.keep,
        url,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_postgres_a_failing_start_does_not_fail_the_others() {
    let Some(OnPostgres { b, keep, .. }) = on_postgres(|_| {}).await else {
        return;
    };
    let retried = two_bad_starts_among_many(&b).await;
    assert_eq!(retried, Vec::<usize>::new(), "no other start failed");
    drop(keep);
}

/// A foreign key from verifications to services would take a row lock (`FOR KEY
/// SHARE`) on the service's row at every start, which writes the row; concurrent
/// batches then share it through a new multixact each time (migration 0006). A row
/// never locked nor updated since its insert keeps `xmax` at 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_postgres_starts_lock_no_row_of_their_service() {
    let Some(OnPostgres { b, pg, keep, .. }) = on_postgres(|_| {}).await else {
        return;
    };
    let svc = b.service("signup", |_| {}).await;
    let xmax = || async {
        sqlx::query_scalar::<_, String>("SELECT xmax::text FROM services WHERE id = $1")
            .bind(&svc.id)
            .fetch_one(pg.pool())
            .await
            .expect("the service's row")
    };
    assert_eq!(xmax().await, "0", "a new service's row");
    let starts = (1..=8).map(|n| {
        let (b, svc) = (&b, &svc);
        async move { b.start(svc, &mobile(n)).started().await }
    });
    futures::future::join_all(starts).await;
    assert_eq!(b.inspect.counts().await.verifications, 8);
    assert_eq!(xmax().await, "0", "the service's row after eight starts");
    drop(keep);
}

/// A session of its own on the store's schema, as another instance would have.
async fn other_session(url: &str, pg: &PgStore) -> sqlx::PgConnection {
    let schema: String = sqlx::query_scalar("SELECT current_schema()")
        .fetch_one(pg.pool())
        .await
        .expect("the store's schema");
    let mut other = sqlx::PgConnection::connect(url)
        .await
        .expect("a second session");
    sqlx::query(&format!("SET search_path TO {schema}"))
        .execute(&mut other)
        .await
        .expect("the store's schema");
    other
}

/// A pool of one connection with a 300 ms statement timeout, and a second session, on
/// the store's schema, that holds the advisory lock of `held`'s number in an open
/// transaction.
async fn one_connection_and_a_held_lock(held: &str) -> Option<(OnPostgres, sqlx::PgConnection)> {
    let on = on_postgres(|s| {
        s.max_connections = 1;
        s.statement_timeout = Duration::from_millis(300);
    })
    .await?;
    let mut other = other_session(&on.url, &on.pg).await;
    let (namespace, key) = number_lock(&on.b.blind(held));
    sqlx::query("BEGIN").execute(&mut other).await.unwrap();
    sqlx::query("SELECT pg_advisory_xact_lock($1, $2)")
        .bind(namespace)
        .bind(key)
        .execute(&mut other)
        .await
        .unwrap();
    Some((on, other))
}

/// The start of a number seen for the first time creates its subject, and whoever
/// else starts the same number waits on that row: it needs no lock of its own, so a
/// lock held elsewhere (here past the statement timeout) does not hold it up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres_a_new_number_starts_without_its_number_lock() {
    let held = mobile(1);
    let Some((OnPostgres { b, keep, .. }, mut other)) = one_connection_and_a_held_lock(&held).await
    else {
        return;
    };
    let svc = b.service("signup", |_| {}).await;
    b.start(&svc, &held).started().await;
    assert_eq!(b.inspect.counts().await.verifications, 1);
    sqlx::query("ROLLBACK").execute(&mut other).await.unwrap();
    drop(keep);
}

/// A start that takes its number's lock (one with an Idempotency-Key) begins and locks
/// in one round trip; when the lock fails (here on the statement timeout, while another
/// session holds it), the transaction it began is left open and aborted on the server.
/// With one connection in the pool, the next batch would get that connection and fail
/// too, unless the failed batch's connection was closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres_a_batch_whose_locks_time_out_leaves_no_failed_transaction_behind() {
    let held = mobile(1);
    let Some((OnPostgres { b, keep, .. }, mut other)) = one_connection_and_a_held_lock(&held).await
    else {
        return;
    };
    let svc = b.service("signup", |_| {}).await;
    let timed_out = b
        .store
        .start_verification(
            b.start(&svc, &held)
                .idempotency("key-1", "retry-1", 1)
                .prepare()
                .cmd,
        )
        .await;
    assert!(
        matches!(timed_out, Err(StoreError::Unavailable(_))),
        "a start waiting on its number's lock past the statement timeout: {timed_out:?}"
    );
    sqlx::query("ROLLBACK").execute(&mut other).await.unwrap();

    // The pool's one connection serves the next batches as if nothing had happened.
    b.start(&svc, &mobile(2)).at(T0 + 1).started().await;
    b.start(&svc, &held)
        .idempotency("key-1", "retry-2", 1)
        .at(T0 + 2)
        .started()
        .await;
    assert_eq!(b.inspect.counts().await.verifications, 2);
    drop(keep);
}

/// Ids reach the batch's statement as a bound array: one that would end a string and
/// add a condition if it were written into the SQL, or that differs from a real id
/// only in case, is simply not found, and the batch's other checks go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres_a_hostile_id_in_a_check_finds_nothing() {
    let Some(OnPostgres { b, keep, .. }) = on_postgres(|_| {}).await else {
        return;
    };
    let svc = b.service("signup", |_| {}).await;
    let v = b.start(&svc, &mobile(1)).started().await;
    for id in ["VE' OR '1'='1", "ve' OR ''='", &v.id.to_uppercase(), ""] {
        let out = b.store.check_verification(id, otp(CODE), T0 + SECOND).await;
        assert!(matches!(out, Ok(CheckOutcome::NotFound)), "{id:?}: {out:?}");
    }
    let out = b
        .store
        .check_verification(&v.id, otp(CODE), T0 + SECOND)
        .await;
    assert!(matches!(out, Ok(CheckOutcome::Approved(_))), "{out:?}");
    drop(keep);
}

/// When a check batch's lock fails inside its transaction (here on the statement
/// timeout, while another session holds the verification's row), the next batch, on
/// the pool's one connection, does not inherit an aborted transaction.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres_a_check_batch_whose_lock_times_out_leaves_no_failed_transaction_behind() {
    let Some((OnPostgres { b, keep, .. }, mut other)) =
        one_connection_and_a_held_lock(&mobile(9)).await
    else {
        return;
    };
    sqlx::query("ROLLBACK").execute(&mut other).await.unwrap();
    let svc = b.service("signup", |_| {}).await;
    let v = b.start(&svc, &mobile(1)).started().await;

    sqlx::query("BEGIN").execute(&mut other).await.unwrap();
    sqlx::query("SELECT 1 FROM verifications WHERE id = $1 FOR UPDATE")
        .bind(&v.id)
        .execute(&mut other)
        .await
        .unwrap();
    let timed_out = b
        .store
        .check_verification(&v.id, otp(CODE), T0 + SECOND)
        .await;
    assert!(
        matches!(timed_out, Err(StoreError::Unavailable(_))),
        "a check waiting on its row past the statement timeout: {timed_out:?}"
    );
    sqlx::query("ROLLBACK").execute(&mut other).await.unwrap();

    let out = b
        .store
        .check_verification(&v.id, otp(CODE), T0 + 2 * SECOND)
        .await;
    assert!(matches!(out, Ok(CheckOutcome::Approved(_))), "{out:?}");
    drop(keep);
}

/// Without a lock, a new number's start meets a concurrent creator of the same subject
/// at the subjects' unique index: it waits for that transaction and, once it commits,
/// leaves the number to the slow path, which finds the subject and starts on it (the
/// message sealed again under that subject's key).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres_a_new_numbers_start_waits_for_a_concurrent_creator_of_its_subject() {
    let Some(OnPostgres { b, pg, keep, url }) = on_postgres(|_| {}).await else {
        return;
    };
    let svc = b.service("signup", |_| {}).await;
    let number = mobile(1);
    let mut other = other_session(&url, &pg).await;

    // The other creator: the number's subject, sealed as a start would seal it, not yet
    // committed.
    let theirs = b.start(&svc, &number).prepare().cmd;
    let s = &theirs.new_subject;
    sqlx::query("BEGIN").execute(&mut other).await.unwrap();
    let their_subject: i64 = sqlx::query_scalar(
        "INSERT INTO subjects (blind_index, wrapped_key, phone_ct, country_code, region, number_type, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
    )
    .bind(&theirs.blind_index.0[..])
    .bind(&s.wrapped_key)
    .bind(&s.phone_ct)
    .bind(i32::from(s.country_code))
    .bind(&s.region)
    .bind(s.number_type)
    .bind(T0)
    .fetch_one(&mut other)
    .await
    .unwrap();

    let ours = b.start(&svc, &number).prepare();
    let resealed = ours.resealed.clone();
    let store = b.store.clone();
    let start = tokio::spawn(async move { store.start_verification(ours.cmd).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !start.is_finished(),
        "the start waits for the other creator"
    );
    sqlx::query("COMMIT").execute(&mut other).await.unwrap();

    match start.await.expect("start task").expect("start") {
        StartOutcome::Started {
            verification,
            resent: false,
            ..
        } => assert_eq!(verification.subject_id, their_subject),
        other => panic!("unexpected outcome {other:?}"),
    }
    assert!(
        resealed.load(std::sync::atomic::Ordering::SeqCst),
        "the message was sealed again under the subject's key"
    );
    let counts = b.inspect.counts().await;
    assert_eq!((counts.subjects, counts.verifications), (1, 1));
    drop(keep);
}

/// The pool hands out a connection without testing it when it was in use a moment ago
/// (a round trip saved per batch under load), but one that sat idle is pinged first:
/// connections the server dropped meanwhile (a restart, an idle timeout, a proxy) are
/// replaced without failing a request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres_connections_dropped_while_idle_are_replaced_unnoticed() {
    let Some(OnPostgres { b, pg, keep, url }) = on_postgres(|_| {}).await else {
        return;
    };
    b.store.ping().await.expect("ping");
    // Every connection the pool holds, at once: their server processes.
    let mut held = Vec::new();
    for _ in 0..pg.pool().size() {
        held.push(pg.pool().acquire().await.unwrap());
    }
    let mut pids = Vec::new();
    for conn in &mut held {
        let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
            .fetch_one(&mut **conn)
            .await
            .unwrap();
        pids.push(pid);
    }
    drop(held);
    let mut admin = sqlx::PgConnection::connect(&url).await.unwrap();
    let ended: i64 =
        sqlx::query_scalar("SELECT count(*) FILTER (WHERE pg_terminate_backend(pid, 5000)) FROM unnest($1::int[]) AS pid")
            .bind(&pids)
            .fetch_one(&mut admin)
            .await
            .unwrap();
    assert_eq!(
        ended,
        pids.len() as i64,
        "every pooled connection was ended"
    );
    tokio::time::sleep(Duration::from_millis(700)).await;

    for _ in 0..pids.len() + 1 {
        b.store
            .ping()
            .await
            .expect("a dropped idle connection is replaced");
    }
    let now: Vec<i32> = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_all(pg.pool())
        .await
        .unwrap();
    assert!(!pids.contains(&now[0]), "a new connection answered");
    drop(keep);
}

/// A batch keeps its connection for the next batch only while it was in use a moment
/// ago: after a quiet spell the batch gives it back to the pool (which tests it) before
/// it takes one, so even a pool with no other connection free has one to give.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres_a_batchs_connection_kept_through_a_quiet_spell_goes_back_to_the_pool_first() {
    let Some(OnPostgres { b, pg, keep, .. }) = on_postgres(|s| {
        // One batch of each kind at a time, each keeping its connection.
        s.max_connections = 4;
        s.acquire_timeout = Duration::from_secs(1);
    })
    .await
    else {
        return;
    };
    let svc = b.service("signup", |_| {}).await;
    let v = b.start(&svc, &mobile(1)).started().await;
    let wrong = b
        .store
        .check_verification(&v.id, otp(WRONG), T0 + SECOND)
        .await;
    assert!(matches!(wrong, Ok(CheckOutcome::Wrong { .. })), "{wrong:?}");
    tokio::time::sleep(Duration::from_millis(700)).await;
    // Every other connection of the pool, held: the batchers keep the only two left.
    let mut held = Vec::new();
    while pg.pool().size() < 4 || pg.pool().num_idle() > 0 {
        held.push(pg.pool().acquire().await.expect("a free connection"));
    }
    assert_eq!(held.len(), 2, "the two batchers keep one connection each");

    let out = b
        .store
        .check_verification(&v.id, otp(CODE), T0 + 2 * SECOND)
        .await;
    assert!(matches!(out, Ok(CheckOutcome::Approved(_))), "{out:?}");
    drop(held);
    drop(keep);
}
