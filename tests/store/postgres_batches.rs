//! What the PostgreSQL backend promises beyond the shared contract: a start that fails
//! inside a batch fails alone (its savepoint is rolled back, not the batch), so no
//! other request has to be sent again; and starts lock no row of their service, which
//! every start of every instance shares.

use ringfence::crypto::Keyring;

use crate::backend::Backend;
use crate::batching::two_bad_starts_among_many;
use crate::fixtures::mobile;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_postgres_a_failing_start_does_not_fail_the_others() {
    let Ok(url) = std::env::var("RINGFENCE_TEST_POSTGRES_URL") else {
        return;
    };
    let keys = Keyring::ephemeral();
    let opened = crate::postgres::open(url, keys.codes.clone()).await;
    let b = Backend {
        store: opened.store,
        keys,
        inspect: opened.inspect,
    };
    let retried = two_bad_starts_among_many(&b).await;
    assert_eq!(retried, Vec::<usize>::new(), "no other start failed");
    drop(opened.keep);
}

/// A foreign key from verifications to services would take a row lock (`FOR KEY
/// SHARE`) on the service's row at every start, which writes the row; concurrent
/// batches then share it through a new multixact each time (migration 0006). A row
/// never locked nor updated since its insert keeps `xmax` at 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_postgres_starts_lock_no_row_of_their_service() {
    let Ok(url) = std::env::var("RINGFENCE_TEST_POSTGRES_URL") else {
        return;
    };
    let keys = Keyring::ephemeral();
    let (pg, opened) = crate::postgres::open_pg(url, keys.codes.clone()).await;
    let b = Backend {
        store: opened.store,
        keys,
        inspect: opened.inspect,
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
    drop(opened.keep);
}
