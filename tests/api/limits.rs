//! Abuse limits: five wrong codes end a verification and lock the number out of new
//! ones for fifteen minutes; a new code can be asked for only every thirty seconds and
//! at most five times; every refusal is a 429 that says when to come back.

use std::time::Duration;

use serde_json::json;

use crate::helpers::*;

#[tokio::test]
async fn the_fifth_wrong_code_ends_the_verification_and_locks_the_number_out() {
    let app = spawn_app().await;
    let (id, code) = app.started(UK_MOBILE).await;
    let wrong = wrong_code(&code);

    for left in (1..=4).rev() {
        let r = app.check(&id, &wrong).await;
        r.assert_status(200);
        assert_eq!(r.str("status"), "pending");
        assert_eq!(r.num("attempts_left"), left);
    }
    let fifth = app.check(&id, &wrong).await;
    fifth.assert_error(429, "max_attempts_reached");
    assert_eq!(fifth.retry_after(), Some(900), "Retry-After is the lockout");

    // The right code no longer helps, by id or by number.
    let late = app.check(&id, &code).await;
    late.assert_error(429, "max_attempts_reached");
    app.check_by_number(UK_MOBILE, &code)
        .await
        .assert_error(404, "verification_not_found");
    let g = app.get_verification(&id).await;
    assert_eq!(g.str("status"), "max_attempts_reached");
    assert_eq!(g.num("attempts_left"), 0);
    assert!(g.json["approved_at"].is_null());

    // The number cannot start over on this service until the lockout ends.
    let locked = app.start(UK_MOBILE).await;
    locked.assert_error(429, "verification_locked");
    assert_eq!(locked.retry_after(), Some(900));
    app.advance(Duration::from_secs(899));
    let still = app.start(UK_MOBILE).await;
    still.assert_error(429, "verification_locked");
    assert_eq!(still.retry_after(), Some(1));
    // Other numbers are not affected.
    app.start(UK_MOBILE_2).await.assert_status(201);

    app.advance(Duration::from_secs(1));
    let again = app.start(UK_MOBILE).await;
    again.assert_status(201);
    assert_ne!(again.str("id"), id);
    assert_eq!(again.num("attempts_left"), 5);
    let code = app.nth_code_for(UK_MOBILE, 2).await;
    let ok = app.check(again.str("id"), &code).await;
    assert_eq!(ok.str("status"), "approved");
}

#[tokio::test]
async fn a_lockout_applies_per_service() {
    let app = spawn_app().await;
    app.create_service(json!({ "name": "shop", "max_check_attempts": 2, "lockout_seconds": 60 }))
        .await
        .assert_status(201);
    let r = app
        .start_with(json!({ "to": FR_MOBILE, "service": "shop" }))
        .await;
    r.assert_status(201);
    assert_eq!(r.num("attempts_left"), 2);
    let code = app.code_for(FR_MOBILE).await;
    app.check(r.str("id"), &wrong_code(&code))
        .await
        .assert_status(200);
    let last = app.check(r.str("id"), &wrong_code(&code)).await;
    last.assert_error(429, "max_attempts_reached");
    assert_eq!(last.retry_after(), Some(60));

    app.start_with(json!({ "to": FR_MOBILE, "service": "shop" }))
        .await
        .assert_error(429, "verification_locked");
    // The default service has its own limits for the same number.
    app.start(FR_MOBILE).await.assert_status(201);
}

#[tokio::test]
async fn a_new_code_waits_for_the_cooldown_keeps_the_id_and_counts_earlier_guesses() {
    let app = spawn_app().await;
    let (id, first_code) = app.started(UK_MOBILE).await;
    let w = app.check(&id, &wrong_code(&first_code)).await;
    assert_eq!(w.num("attempts_left"), 4);

    let soon = app.start(UK_MOBILE).await;
    soon.assert_error(429, "resend_cooldown");
    assert_eq!(soon.retry_after(), Some(30));
    app.advance(Duration::from_secs(29));
    let still = app.start(UK_MOBILE).await;
    still.assert_error(429, "resend_cooldown");
    assert_eq!(still.retry_after(), Some(1));

    app.advance(Duration::from_secs(1));
    let resent = app.start(UK_MOBILE).await;
    resent.assert_status(201);
    assert_eq!(resent.str("id"), id, "a re-send keeps the verification");
    assert_eq!(resent.num("send_attempts"), 2);
    assert_eq!(
        resent.num("check_attempts"),
        1,
        "wrong guesses before the re-send still count"
    );
    assert_eq!(resent.num("attempts_left"), 4);
    let second_code = app.nth_code_for(UK_MOBILE, 2).await;
    assert_eq!(app.messages_to(UK_MOBILE).len(), 2);

    if second_code != first_code {
        let old = app.check(&id, &first_code).await;
        old.assert_status(200);
        assert_eq!(
            old.str("status"),
            "pending",
            "the replaced code must not approve"
        );
        assert_eq!(old.num("attempts_left"), 3);
    }
    let ok = app.check(&id, &second_code).await;
    ok.assert_status(200);
    assert_eq!(ok.str("status"), "approved");
    assert_eq!(ok.num("send_attempts"), 2);
}

#[tokio::test]
async fn a_verification_gets_at_most_five_codes() {
    let app = spawn_app().await;
    let r = app.start(US_NUMBER).await;
    r.assert_status(201);
    let id = r.str("id").to_owned();
    for n in 2..=5 {
        // Each code reaches the phone before the next is asked for.
        app.wait_for_messages(US_NUMBER, n as usize - 1).await;
        app.advance(Duration::from_secs(30));
        let r = app.start(US_NUMBER).await;
        r.assert_status(201);
        assert_eq!(r.str("id"), id);
        assert_eq!(r.num("send_attempts"), n);
    }
    app.advance(Duration::from_secs(30));
    let sixth = app.start(US_NUMBER).await;
    sixth.assert_error(429, "max_sends_reached");
    // Each re-send renewed the ten minutes; the last one was thirty seconds ago.
    assert_eq!(sixth.retry_after(), Some(570));

    // Only the last code is live: every earlier message carried a code it replaced.
    let messages = app.wait_for_messages(US_NUMBER, 5).await;
    let last = extract_code(&messages[4].body).unwrap();
    let ok = app.check(&id, &last).await;
    assert_eq!(ok.str("status"), "approved", "{}", ok.text);

    // Once the verification is over, a new one may start (with its own five sends).
    let fresh = app.start(US_NUMBER).await;
    fresh.assert_status(201);
    assert_ne!(fresh.str("id"), id);
}
