//! What the PostgreSQL backend promises beyond the shared contract: a start that fails
//! inside a batch fails alone (its savepoint is rolled back, not the batch), so no
//! other request has to be sent again.

use ringfence::crypto::Keyring;

use crate::backend::Backend;
use crate::batching::two_bad_starts_among_many;

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
