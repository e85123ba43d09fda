//! Codes have a lifetime (ten minutes by default), measured on the instance's clock,
//! which the tests move by hand: a code past it is refused, a new start after it
//! begins a new verification, and a message whose code expired before it could be
//! delivered is never sent.

use std::time::Duration;

use crate::helpers::*;

#[tokio::test]
async fn a_code_past_its_lifetime_is_refused_and_a_new_start_begins_afresh() {
    let app = spawn_app().await;
    let (id, code) = app.started(UK_MOBILE).await;

    app.advance(Duration::from_secs(599));
    assert_eq!(app.get_verification(&id).await.str("status"), "pending");
    app.advance(Duration::from_secs(1));
    // Expired from the first millisecond past its lifetime, before anything wrote it.
    assert_eq!(app.get_verification(&id).await.str("status"), "expired");

    app.check(&id, &code)
        .await
        .assert_error(410, "verification_expired");
    let g = app.get_verification(&id).await;
    assert_eq!(g.str("status"), "expired");
    assert_eq!(
        g.num("check_attempts"),
        0,
        "an expired check is not an attempt"
    );
    app.check_by_number(UK_MOBILE, &code)
        .await
        .assert_error(404, "verification_not_found");
    app.cancel(&id)
        .await
        .assert_error(410, "verification_expired");

    let r = app.start(UK_MOBILE).await;
    r.assert_status(201);
    let new_id = r.str("id").to_owned();
    assert_ne!(new_id, id, "a start after expiry makes a new verification");
    assert_eq!(r.num("send_attempts"), 1);
    assert_eq!(r.str("status"), "pending");
    let new_code = app.nth_code_for(UK_MOBILE, 2).await;
    if new_code != code {
        let old = app.check(&new_id, &code).await;
        assert_eq!(
            old.str("status"),
            "pending",
            "the old code must not approve the new verification"
        );
    }
    let ok = app.check(&new_id, &new_code).await;
    assert_eq!(ok.str("status"), "approved");
    assert_eq!(app.get_verification(&id).await.str("status"), "expired");
}

#[tokio::test]
async fn a_message_whose_code_expired_before_delivery_is_never_sent() {
    let app = spawn_app().await;
    // The provider fails; the message waits for a retry one second later.
    app.fail_next_sends(1);
    let r = app.start(UK_MOBILE).await;
    r.assert_status(201);
    let id = r.str("id").to_owned();
    eventually("the first send to fail", || async {
        let g = app.get_verification(&id).await;
        (g.json["messages"][0]["status"] == "retry").then_some(())
    })
    .await;

    // The provider is back only after the code's ten minutes are over.
    app.advance(Duration::from_secs(601));
    eventually("the message to expire", || async {
        let g = app.get_verification(&id).await;
        (g.json["messages"][0]["status"] == "expired").then_some(())
    })
    .await;
    assert!(
        app.messages_to(UK_MOBILE).is_empty(),
        "a code was delivered after it expired"
    );
    let (status, payload_is_null): (String, bool) = app
        .db()
        .query_row(
            "SELECT status, payload IS NULL FROM outbox WHERE verification_id = ?1",
            [&id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(status, "expired");
    assert!(payload_is_null, "an expired message keeps no content");
    assert_eq!(app.get_verification(&id).await.str("status"), "expired");

    // A new start sends a fresh code, which does arrive.
    let r = app.start(UK_MOBILE).await;
    r.assert_status(201);
    assert_ne!(r.str("id"), id);
    let code = app.code_for(UK_MOBILE).await;
    app.check(r.str("id"), &code).await.assert_status(200);
}
