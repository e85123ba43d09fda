//! `ping`: the round trip `/readyz` relies on.

use crate::backend::each_backend;

#[tokio::test]
async fn ping_answers_on_a_fresh_store() {
    each_backend(|b| async move {
        b.store.ping().await.expect("ping");
    })
    .await;
}
