//! The janitor: pending verifications nobody looks at again still lose their code hash
//! once expired, idempotency keys are forgotten after their retention, ended lockouts
//! go. The test calls the store's sweep directly with the instance's clock, as the
//! janitor task does every minute.

use std::time::Duration;

use ringfence::clock::Clock;
use serde_json::json;

use crate::helpers::*;

fn status_and_hash(app: &TestApp, id: &str) -> (String, bool) {
    app.db()
        .query_row(
            "SELECT status, code_hash IS NOT NULL FROM verifications WHERE id = ?1",
            [id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap()
}

#[tokio::test]
async fn sweep_expires_forgotten_verifications_and_erases_their_code_hash() {
    let app = spawn_app().await;
    let (id, _code) = app.started(UK_MOBILE).await;
    let day = 24 * 3600 * 1000;

    let now = app.clock.now();
    let r = app.store().sweep(now, now - day, 100).await.unwrap();
    assert_eq!(r.expired, 0, "nothing has expired yet");
    assert_eq!(status_and_hash(&app, &id), ("pending".into(), true));

    app.advance(Duration::from_secs(600));
    let now = app.clock.now();
    let r = app.store().sweep(now, now - day, 100).await.unwrap();
    assert_eq!(r.expired, 1);
    assert_eq!(status_and_hash(&app, &id), ("expired".into(), false));
    // A second pass finds nothing more.
    assert_eq!(
        app.store()
            .sweep(now, now - day, 100)
            .await
            .unwrap()
            .expired,
        0
    );
}

#[tokio::test]
async fn sweep_forgets_old_idempotency_keys_and_ended_lockouts() {
    let app = spawn_app().await;
    let body = json!({ "to": UK_MOBILE });
    let first = fetch(
        app.api(reqwest::Method::POST, "/v1/verifications")
            .header("Idempotency-Key", "k-1")
            .json(&body),
    )
    .await;
    first.assert_status(201);

    // Lock another number out: five wrong codes.
    let (other_id, code) = app.started(&mobile(77)).await;
    for _ in 0..5 {
        app.check(&other_id, &wrong_code(&code)).await;
    }

    let day = Duration::from_secs(24 * 3600);
    app.advance(day);
    let now = app.clock.now();
    let r = app
        .store()
        .sweep(now, now - day.as_millis() as i64 + 1, 100)
        .await
        .unwrap();
    assert_eq!(
        r.idempotency_keys, 1,
        "a key a day old is past its retention"
    );
    assert_eq!(r.lockouts, 1, "the 15-minute lockout has ended");
    assert_eq!(r.expired, 1, "the first verification expired unseen");

    // The key is free again: the same key now starts a new verification.
    let again = fetch(
        app.api(reqwest::Method::POST, "/v1/verifications")
            .header("Idempotency-Key", "k-1")
            .json(&body),
    )
    .await;
    again.assert_status(201);
    assert_ne!(again.str("id"), first.str("id"));
    assert!(again.header("idempotent-replayed").is_none());
}
