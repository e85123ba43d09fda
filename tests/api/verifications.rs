//! The sign-up story an integrator builds: start a verification, the person types the
//! code (read here from the recording sink), a wrong guess costs an attempt, the right
//! one approves, and the approved number is bound to the integrator's account.

use serde_json::json;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::helpers::*;

fn instant(s: &str) -> OffsetDateTime {
    OffsetDateTime::parse(s, &Rfc3339).unwrap_or_else(|e| panic!("`{s}` is not RFC 3339: {e}"))
}

#[tokio::test]
async fn a_number_is_verified_then_bound_read_and_unbound() {
    let app = spawn_app().await;

    let r = app
        .start_with(json!({ "to": UK_MOBILE, "account_ref": "user-42", "purpose": "signup" }))
        .await;
    r.assert_status(201);
    assert!(r.header("x-request-id").is_some());
    let id = r.str("id").to_owned();
    assert!(id.starts_with("VE") && id.len() == 34, "id: {id}");
    assert_eq!(r.str("status"), "pending");
    assert_eq!(r.str("to"), "+44 •••• ••3456");
    assert_eq!(r.str("channel"), "sms");
    assert_eq!(r.str("account_ref"), "user-42");
    assert_eq!(r.str("purpose"), "signup");
    assert_eq!(r.num("send_attempts"), 1);
    assert_eq!(r.num("check_attempts"), 0);
    assert_eq!(r.num("attempts_left"), 5);
    let lifetime = instant(r.str("expires_at")) - instant(r.str("created_at"));
    assert_eq!(lifetime, time::Duration::minutes(10));
    assert!(!r.text.contains("7400123456"), "raw number in {}", r.text);

    let messages = app.wait_for_messages(UK_MOBILE, 1).await;
    let code = extract_code(&messages[0].body).unwrap();
    assert_eq!(code.len(), 6);
    assert_eq!(
        messages[0].body,
        format!("Your ringfence verification code is: {code}")
    );
    assert_eq!(messages[0].verification_id, id);

    let wrong = app.check(&id, &wrong_code(&code)).await;
    wrong.assert_status(200);
    assert_eq!(wrong.str("status"), "pending");
    assert_eq!(wrong.num("check_attempts"), 1);
    assert_eq!(wrong.num("attempts_left"), 4);

    let ok = app.check(&id, &code).await;
    ok.assert_status(200);
    assert_eq!(ok.str("status"), "approved");
    assert_eq!(ok.str("id"), id);
    assert_eq!(ok.str("to"), "+44 •••• ••3456");
    let approved_at = ok.str("approved_at").to_owned();

    let b = app.bind("user-42", &id).await;
    b.assert_status(200);
    assert_eq!(b.str("account_ref"), "user-42");
    assert_eq!(b.str("phone"), "+44 •••• ••3456");
    assert_eq!(b.str("verification_id"), id);
    assert_eq!(b.str("verified_at"), approved_at);
    // Binding the same number again is a no-op, so a retried request is harmless.
    app.bind("user-42", &id).await.assert_status(200);

    let g = app.get_binding("user-42").await;
    g.assert_status(200);
    assert_eq!(g.str("phone"), "+44 •••• ••3456");
    assert_eq!(g.str("verified_at"), approved_at);
    assert!(!g.text.contains("7400123456"), "raw number in {}", g.text);

    let d = app.unbind("user-42").await;
    d.assert_status(204);
    assert!(d.text.is_empty());
    app.get_binding("user-42")
        .await
        .assert_error(404, "binding_not_found");
    app.unbind("user-42")
        .await
        .assert_error(404, "binding_not_found");
}

#[tokio::test]
async fn a_code_can_be_checked_by_number_in_any_common_format() {
    let app = spawn_app().await;
    let (id, code) = app.started(US_NUMBER).await;

    let wrong = app.check_by_number(US_NUMBER, &wrong_code(&code)).await;
    wrong.assert_status(200);
    assert_eq!(wrong.str("id"), id);
    assert_eq!(wrong.str("status"), "pending");
    assert_eq!(wrong.num("attempts_left"), 4);

    let ok = app.check_by_number("+1 (415) 555-2671", &code).await;
    ok.assert_status(200);
    assert_eq!(ok.str("id"), id);
    assert_eq!(ok.str("status"), "approved");
    assert_eq!(ok.str("to"), masked(US_NUMBER));

    // Nothing is pending for the number any more.
    app.check_by_number(US_NUMBER, &code)
        .await
        .assert_error(404, "verification_not_found");
}

#[tokio::test]
async fn reading_a_verification_shows_its_messages_but_never_their_content() {
    let app = spawn_app().await;
    let (id, code) = app.started(FR_MOBILE).await;
    app.outbox_settled().await;

    let g = app.get_verification(&id).await;
    g.assert_status(200);
    assert_eq!(g.str("id"), id);
    assert_eq!(g.str("status"), "pending");
    assert_eq!(g.str("to"), masked(FR_MOBILE));
    let messages = g.json["messages"].as_array().expect("messages on GET");
    assert_eq!(messages.len(), 1, "{}", g.text);
    assert_eq!(messages[0]["channel"], "sms");
    assert_eq!(messages[0]["status"], "sent");
    assert!(messages[0]["created_at"].is_string());
    assert!(!g.text.contains(&code), "code in {}", g.text);
    assert!(!g.text.contains("612345678"), "raw number in {}", g.text);

    // Start and check responses carry no message list.
    let c = app.check(&id, &code).await;
    assert!(c.json.get("messages").is_none(), "{}", c.text);
}

#[tokio::test]
async fn a_canceled_verification_sends_nothing_and_accepts_no_code() {
    let app = spawn_app().await;
    // The provider is down: the message waits in the outbox for its retry.
    app.fail_next_sends(1);
    let r = app.start(UK_MOBILE).await;
    r.assert_status(201);
    let id = r.str("id").to_owned();
    eventually("the first send to fail", || async {
        let g = app.get_verification(&id).await;
        (g.json["messages"][0]["status"] == "retry").then_some(())
    })
    .await;

    let c = app.cancel(&id).await;
    c.assert_status(200);
    assert_eq!(c.str("status"), "canceled");
    assert_eq!(c.str("to"), "+44 •••• ••3456");
    let g = app.get_verification(&id).await;
    assert_eq!(g.str("status"), "canceled");
    assert_eq!(g.json["messages"][0]["status"], "canceled");

    // The retry would be due now. Another number's message going out proves the
    // worker has claimed due messages since, and the canceled one was not among them.
    app.advance(std::time::Duration::from_secs(5));
    app.started(UK_MOBILE_2).await;
    assert!(
        app.messages_to(UK_MOBILE).is_empty(),
        "a canceled verification's message was sent"
    );
    let (status, payload_is_null): (String, bool) = app
        .db()
        .query_row(
            "SELECT status, payload IS NULL FROM outbox WHERE verification_id = ?1",
            [&id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(status, "canceled");
    assert!(payload_is_null, "a canceled message keeps no content");

    app.check(&id, "123456")
        .await
        .assert_error(409, "verification_not_pending");
    app.cancel(&id)
        .await
        .assert_error(409, "verification_not_pending");
}
