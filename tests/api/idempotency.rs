//! `Idempotency-Key`: an integrator may retry a start safely. The same key with the
//! same body answers with the first result and sends nothing; the same key with a
//! different body is refused.

use reqwest::header::HeaderValue;
use reqwest::Method;
use serde_json::{json, Value};

use crate::helpers::*;

async fn start_with_key(app: &TestApp, key: &str, body: &Value) -> Resp {
    fetch(
        app.api(Method::POST, "/v1/verifications")
            .header("idempotency-key", key)
            .json(body),
    )
    .await
}

fn outbox_rows(app: &TestApp, verification_id: &str) -> i64 {
    app.db()
        .query_row(
            "SELECT COUNT(*) FROM outbox WHERE verification_id = ?1",
            [verification_id],
            |r| r.get(0),
        )
        .unwrap()
}

#[tokio::test]
async fn a_retried_start_with_the_same_key_replays_and_sends_nothing() {
    let app = spawn_app().await;
    let body = json!({ "to": UK_MOBILE, "account_ref": "user-7" });

    let first = start_with_key(&app, "signup-7f3a", &body).await;
    first.assert_status(201);
    assert_eq!(first.header("idempotent-replayed"), None);
    let id = first.str("id").to_owned();

    // Within the re-send cooldown a retry would be a 429 without the key; with it, the
    // client gets the answer it missed.
    let retry = start_with_key(&app, "signup-7f3a", &body).await;
    retry.assert_status(201);
    assert_eq!(retry.header("idempotent-replayed"), Some("true"));
    assert_eq!(retry.str("id"), id);
    assert_eq!(retry.num("send_attempts"), 1);
    assert_eq!(retry.keys(), first.keys());

    app.code_for(UK_MOBILE).await;
    app.outbox_settled().await;
    assert_eq!(outbox_rows(&app, &id), 1, "the replay queued a message");
    assert_eq!(app.messages_to(UK_MOBILE).len(), 1);
    let g = app.get_verification(&id).await;
    assert_eq!(g.json["messages"].as_array().unwrap().len(), 1);

    // Replays keep answering after the cooldown, still without sending.
    app.advance(std::time::Duration::from_secs(60));
    let later = start_with_key(&app, "signup-7f3a", &body).await;
    later.assert_status(201);
    assert_eq!(later.header("idempotent-replayed"), Some("true"));
    assert_eq!(later.str("id"), id);
    assert_eq!(outbox_rows(&app, &id), 1);
}

#[tokio::test]
async fn the_same_key_with_a_different_body_is_refused() {
    let app = spawn_app().await;
    start_with_key(&app, "k-1", &json!({ "to": UK_MOBILE }))
        .await
        .assert_status(201);
    app.outbox_settled().await;
    let before = app.row_counts();
    for other in [
        json!({ "to": UK_MOBILE_2 }),
        json!({ "to": UK_MOBILE, "purpose": "login" }),
        json!({ "to": UK_MOBILE, "service": "default", "locale": "en" }),
    ] {
        start_with_key(&app, "k-1", &other)
            .await
            .assert_error(422, "idempotency_key_reused");
    }
    assert_eq!(app.row_counts(), before);
    assert!(app.messages_to(UK_MOBILE_2).is_empty());
    // A different key is a different request.
    start_with_key(&app, "k-2", &json!({ "to": UK_MOBILE_2 }))
        .await
        .assert_status(201);
}

#[tokio::test]
async fn malformed_idempotency_keys_are_refused() {
    let app = spawn_app().await;
    let before = app.row_counts();
    let body = json!({ "to": UK_MOBILE });
    let long = "k".repeat(256);
    let values = [
        HeaderValue::from_static(""),
        HeaderValue::from_str(&long).unwrap(),
        HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap(),
        HeaderValue::from_bytes(b"tab\there").unwrap(),
        HeaderValue::from_bytes(b"\xff\xfe").unwrap(),
    ];
    for v in values {
        fetch(
            app.api(Method::POST, "/v1/verifications")
                .header("idempotency-key", v)
                .json(&body),
        )
        .await
        .assert_error(400, "invalid_idempotency_key");
    }
    assert_eq!(app.row_counts(), before);
    // The longest allowed key works.
    start_with_key(&app, &"k".repeat(255), &body)
        .await
        .assert_status(201);
}
