//! The error contract: every stable code in `ApiError::CODES` is reachable over HTTP
//! with the documented status and the envelope
//! `{"error": {"code", "message", "request_id"}}` whose `request_id` matches the
//! `x-request-id` header; hostile input is refused without being echoed, and refused
//! input changes nothing in the database.

use std::collections::BTreeSet;
use std::time::Duration;

use reqwest::header::CONTENT_TYPE;
use reqwest::Method;
use ringfence::clock::Clock;
use ringfence::http::ApiError;
use ringfence::store::Scope;
use serde_json::{json, Value};

use crate::helpers::*;

/// Codes no honest HTTP request can provoke against a healthy instance: `unavailable`
/// needs the database to refuse work and `internal` needs a bug or corrupted stored
/// data. Forcing either would mean breaking the instance from the inside, which would
/// test the breakage rather than the API.
const NOT_PROVOKED: &[&str] = &["unavailable", "internal"];

/// Collects the codes a scenario provoked, checking each envelope on the way.
#[derive(Default)]
struct Catalogue {
    seen: BTreeSet<String>,
}

impl Catalogue {
    #[track_caller]
    fn saw(&mut self, r: Resp, status: u16, code: &str) -> Resp {
        r.assert_error(status, code);
        if status == 429 {
            assert!(
                r.retry_after().is_some_and(|s| s >= 1),
                "429 without Retry-After"
            );
        }
        self.seen.insert(code.to_owned());
        r
    }
}

fn raw(
    app: &TestApp,
    path: &str,
    content_type: &str,
    body: impl Into<String>,
) -> reqwest::RequestBuilder {
    app.api(Method::POST, path)
        .header(CONTENT_TYPE, content_type)
        .body(body.into())
}

#[tokio::test]
async fn every_error_code_in_the_catalogue_is_provoked_with_a_well_formed_envelope() {
    let app = spawn_app().await;
    let mut cat = Catalogue::default();
    let fake_id = format!("VE{}", "0".repeat(32));

    // Malformed requests.
    cat.saw(
        fetch(raw(
            &app,
            "/v1/verifications",
            "application/json",
            r#"{"to":"#,
        ))
        .await,
        400,
        "invalid_json",
    );
    cat.saw(
        app.start_with(json!({ "to": UK_MOBILE, "bogus": 1 })).await,
        400,
        "invalid_request",
    );
    cat.saw(
        fetch(raw(&app, "/v1/verifications", "text/plain", UK_MOBILE)).await,
        415,
        "unsupported_media_type",
    );
    let huge = format!(r#"{{"to":"{}"}}"#, "1".repeat(17 * 1024));
    cat.saw(
        fetch(raw(&app, "/v1/verifications", "application/json", huge)).await,
        413,
        "body_too_large",
    );
    cat.saw(
        app.start("<script>alert(1)</script>").await,
        400,
        "invalid_phone_number",
    );
    cat.saw(app.check(&fake_id, "12ab").await, 400, "invalid_code");
    cat.saw(
        app.start_with(json!({ "to": UK_MOBILE, "account_ref": "<script>" }))
            .await,
        400,
        "invalid_field",
    );
    cat.saw(
        app.create_service(json!({ "name": "bad", "code_length": 11 }))
            .await,
        400,
        "invalid_service_config",
    );
    cat.saw(
        app.start_with(json!({ "to": UK_MOBILE, "channel": "voice" }))
            .await,
        400,
        "channel_not_allowed",
    );
    cat.saw(
        fetch(
            app.api(Method::POST, "/v1/verifications")
                .header("idempotency-key", "k".repeat(256))
                .json(&json!({ "to": UK_MOBILE })),
        )
        .await,
        400,
        "invalid_idempotency_key",
    );

    // Who may call what, and what exists.
    cat.saw(
        fetch(
            app.anon(Method::POST, "/v1/verifications")
                .json(&json!({ "to": UK_MOBILE })),
        )
        .await,
        401,
        "unauthorized",
    );
    cat.saw(
        fetch(app.api(Method::GET, "/v1/services")).await,
        403,
        "forbidden",
    );
    cat.saw(
        fetch(app.api(Method::GET, "/v1/no-such-thing")).await,
        404,
        "not_found",
    );
    cat.saw(
        fetch(app.api(Method::DELETE, "/v1/verifications")).await,
        405,
        "method_not_allowed",
    );
    cat.saw(
        app.get_verification(&fake_id).await,
        404,
        "verification_not_found",
    );
    cat.saw(
        app.start_with(json!({ "to": UK_MOBILE, "service": "nope" }))
            .await,
        404,
        "service_not_found",
    );
    cat.saw(app.get_binding("nobody").await, 404, "binding_not_found");
    cat.saw(
        app.create_service(json!({ "name": "default" })).await,
        409,
        "service_name_taken",
    );

    // The verification lifecycle.
    let first = fetch(
        app.api(Method::POST, "/v1/verifications")
            .header("idempotency-key", "signup-1")
            .json(&json!({ "to": mobile(1) })),
    )
    .await;
    first.assert_status(201);
    let pending_id = first.str("id").to_owned();
    let pending_code = app.code_for(&mobile(1)).await;
    cat.saw(
        fetch(
            app.api(Method::POST, "/v1/verifications")
                .header("idempotency-key", "signup-1")
                .json(&json!({ "to": mobile(2) })),
        )
        .await,
        422,
        "idempotency_key_reused",
    );
    cat.saw(app.start(&mobile(1)).await, 429, "resend_cooldown");
    cat.saw(
        app.bind("acct-1", &pending_id).await,
        409,
        "verification_not_approved",
    );

    let (done_id, done_code) = app.started(&mobile(3)).await;
    app.check(&done_id, &done_code).await.assert_status(200);
    cat.saw(
        app.check(&done_id, &done_code).await,
        409,
        "verification_not_pending",
    );

    let alices = app.approved(&mobile(4), Some("alice")).await;
    cat.saw(app.bind("bob", &alices).await, 409, "account_mismatch");

    let late = app.approved(&mobile(5), None).await;
    app.advance(Duration::from_secs(15 * 60 + 1));
    cat.saw(app.bind("carol", &late).await, 409, "verification_stale");
    // The same sixteen minutes took the first verification past its ten.
    cat.saw(
        app.check(&pending_id, &pending_code).await,
        410,
        "verification_expired",
    );

    app.create_service(json!({ "name": "one-send", "max_sends": 1 }))
        .await
        .assert_status(201);
    app.start_with(json!({ "to": mobile(6), "service": "one-send" }))
        .await
        .assert_status(201);
    app.advance(Duration::from_secs(31));
    cat.saw(
        app.start_with(json!({ "to": mobile(6), "service": "one-send" }))
            .await,
        429,
        "max_sends_reached",
    );

    app.create_service(json!({ "name": "one-try", "max_check_attempts": 1 }))
        .await
        .assert_status(201);
    let r = app
        .start_with(json!({ "to": mobile(7), "service": "one-try" }))
        .await;
    r.assert_status(201);
    let code = app.code_for(&mobile(7)).await;
    cat.saw(
        app.check(r.str("id"), &wrong_code(&code)).await,
        429,
        "max_attempts_reached",
    );
    cat.saw(
        app.start_with(json!({ "to": mobile(7), "service": "one-try" }))
            .await,
        429,
        "verification_locked",
    );

    // The anti-abuse engine's refusals.
    app.patch_service(
        "default",
        json!({ "abuse": { "accounts": { "max_accounts_per_number": 1, "window_days": 1 } } }),
    )
    .await
    .assert_status(200);
    app.advance(Duration::from_secs(3)); // past the service cache
    let first = app.approved(UK_MOBILE_2, None).await;
    app.bind("cap_1", &first).await.assert_status(200);
    let second = app.approved(UK_MOBILE_2, None).await;
    cat.saw(app.bind("cap_2", &second).await, 409, "phone_limit_reached");
    cat.saw(
        app.start("+445612345678").await,
        403,
        "number_type_not_allowed",
    );
    let only_fr = json!({ "allowlist_only": { "allowed_regions": ["FR"] } });
    app.create_service(json!({
        "name": "fr-only",
        "resend_cooldown_seconds": 0,
        "abuse": {
            "geo": { "sms": only_fr, "voice": only_fr, "whatsapp": only_fr },
            "limits": { "sends_per_number": { "limit": 1, "period_seconds": 60 } }
        }
    }))
    .await
    .assert_status(201);
    cat.saw(
        app.start_with(json!({ "to": UK_MOBILE, "service": "fr-only" }))
            .await,
        403,
        "region_not_allowed",
    );
    app.start_with(json!({ "to": FR_MOBILE, "service": "fr-only" }))
        .await
        .assert_status(201);
    cat.saw(
        app.start_with(json!({ "to": FR_MOBILE, "service": "fr-only" }))
            .await,
        429,
        "rate_limited",
    );

    fetch(
        app.admin(Method::POST, "/v1/admin/lists/ban")
            .json(&json!({ "kind": "number", "value": US_NUMBER_2, "reason": "test" })),
    )
    .await
    .assert_status(201);
    cat.saw(app.start(US_NUMBER_2).await, 403, "banned");

    let all: BTreeSet<String> = ApiError::CODES.iter().map(|c| c.to_string()).collect();
    let exempt: BTreeSet<String> = NOT_PROVOKED.iter().map(|c| c.to_string()).collect();
    assert!(
        cat.seen.is_disjoint(&exempt),
        "a code listed as not provokable was provoked: update NOT_PROVOKED"
    );
    let missing: Vec<_> = all
        .difference(&cat.seen)
        .filter(|c| !exempt.contains(*c))
        .collect();
    assert!(
        missing.is_empty(),
        "codes never provoked over HTTP: {missing:?}"
    );
    let unknown: Vec<_> = cat.seen.difference(&all).collect();
    assert!(
        unknown.is_empty(),
        "codes missing from ApiError::CODES: {unknown:?}"
    );
}

#[tokio::test]
async fn malformed_bodies_are_refused_by_name_without_echoing_values() {
    let app = spawn_app().await;
    let before = app.row_counts();
    // (what, body, code, words the message must contain)
    let cases: &[(&str, &str, &str, &str)] = &[
        (
            "truncated JSON",
            r#"{"to": "+447400123456""#,
            "invalid_json",
            "syntax",
        ),
        (
            "not JSON at all",
            "to=%2B447400123456",
            "invalid_json",
            "syntax",
        ),
        ("empty body", "", "invalid_json", "line 1"),
        (
            "trailing data",
            r#"{"to":"+447400123456"} {}"#,
            "invalid_json",
            "trailing",
        ),
        (
            "trailing garbage",
            r#"{"to":"+447400123456"}x"#,
            "invalid_json",
            "trailing",
        ),
        (
            "unknown field",
            r#"{"to":"+447400123456","admin":true}"#,
            "invalid_request",
            "unknown field `admin`",
        ),
        (
            "wrong type",
            r#"{"to":447400123456}"#,
            "invalid_request",
            "`to`",
        ),
        (
            "wrong type, nested",
            r#"{"to":["+447400123456"]}"#,
            "invalid_request",
            "`to`",
        ),
        (
            "missing field",
            r#"{"channel":"sms"}"#,
            "invalid_request",
            "missing field `to`",
        ),
        (
            "unknown channel",
            r#"{"to":"+447400123456","channel":"pigeon"}"#,
            "invalid_request",
            "`channel`",
        ),
        (
            "an array",
            r#"["+447400123456"]"#,
            "invalid_request",
            "JSON object",
        ),
        (
            "an array of every field",
            r#"["+447400123456", "sms", "default"]"#,
            "invalid_request",
            "JSON object",
        ),
        ("null", "null", "invalid_request", "wrong type"),
    ];
    for (what, body, code, words) in cases {
        let r = fetch(raw(&app, "/v1/verifications", "application/json", *body)).await;
        assert_eq!(r.status, 400, "{what}: {}", r.text);
        r.assert_error(400, code);
        let message = r.json["error"]["message"].as_str().unwrap();
        assert!(
            message.contains(words),
            "{what}: message `{message}` should mention {words}"
        );
        assert!(
            !r.text.contains("447400123456") && !r.text.contains("pigeon"),
            "{what}: the response echoes the input: {}",
            r.text
        );
    }
    // The same strictness on the other JSON endpoints.
    let r = fetch(raw(
        &app,
        "/v1/verification-checks",
        "application/json",
        r#"{"to":"+447400123456","code":"123456","x":1}"#,
    ))
    .await;
    r.assert_error(400, "invalid_request");
    let r = fetch(
        app.admin(Method::POST, "/v1/services")
            .header(CONTENT_TYPE, "application/json")
            .body(r#"{"name":"s","code_length":"six"}"#),
    )
    .await;
    r.assert_error(400, "invalid_request");
    assert_eq!(app.row_counts(), before);
    assert!(app.sink.messages().is_empty());
}

#[tokio::test]
async fn bodies_over_16_kib_are_refused_with_413() {
    let app = spawn_app().await;
    let before = app.row_counts();
    // Exactly 16 KiB is read (and refused for what it says); one byte more is not read.
    let body_of = |len: usize| {
        let frame = r#"{"to":""}"#.len();
        format!(r#"{{"to":"{}"}}"#, "1".repeat(len - frame))
    };
    let at_limit = body_of(16 * 1024);
    assert_eq!(at_limit.len(), 16 * 1024);
    fetch(raw(&app, "/v1/verifications", "application/json", at_limit))
        .await
        .assert_error(400, "invalid_phone_number");
    fetch(raw(
        &app,
        "/v1/verifications",
        "application/json",
        body_of(16 * 1024 + 1),
    ))
    .await
    .assert_error(413, "body_too_large");
    let big_code = format!(r#"{{"code":"{}"}}"#, "1".repeat(64 * 1024));
    let path = format!("/v1/verifications/VE{}/check", "0".repeat(32));
    fetch(raw(&app, &path, "application/json", big_code))
        .await
        .assert_error(413, "body_too_large");
    assert_eq!(app.row_counts(), before);
}

#[tokio::test]
async fn bodies_that_are_not_json_are_refused_with_415() {
    let app = spawn_app().await;
    let before = app.row_counts();
    let body = json!({ "to": UK_MOBILE }).to_string();
    for ct in [
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/xml",
        "",
    ] {
        let r = fetch(raw(&app, "/v1/verifications", ct, body.clone())).await;
        r.assert_error(415, "unsupported_media_type");
    }
    let r = fetch(
        app.api(Method::POST, "/v1/verifications")
            .body(body.clone()),
    )
    .await;
    r.assert_error(415, "unsupported_media_type");
    assert_eq!(app.row_counts(), before);

    // A JSON media type with parameters is fine.
    fetch(raw(
        &app,
        "/v1/verifications",
        "application/json; charset=utf-8",
        body,
    ))
    .await
    .assert_status(201);
}

#[tokio::test]
async fn impossible_and_hostile_numbers_are_refused_without_echo() {
    let app = spawn_app().await;
    let before = app.row_counts();
    let ten_thousand_digits = format!("+{}", "4".repeat(10_000));
    let hostile: Vec<String> = vec![
        "".into(),
        " ".into(),
        "+".into(),
        "0".into(),
        "+0".into(),
        "123".into(),
        "+44".into(),
        "+44 7400".into(),
        "+999 1234 5678".into(),
        "+44 7400 123456 7890 1234".into(),
        "<script>alert(1)</script>".into(),
        "'; DROP TABLE subjects; --".into(),
        "../../etc/passwd".into(),
        "${jndi:ldap://x}".into(),
        ten_thousand_digits,
        "☎☎☎☎☎☎".into(),
        "\u{202e}\u{200b}\u{feff}".into(),
        "𝟘𝟙𝟚".into(),
        "+44\u{0}\u{0}\u{0}".into(),
        "\u{0}+447400123456\u{0}abc\u{0}".into(),
        "+4\u{0}4\u{0}7\u{0}4\u{0}0\u{0}0\u{0}1\u{0}2\u{0}3\u{0}4\u{0}5\u{0}6".into(),
        "tel:".into(),
        "%2B447400123456".into(),
    ];
    for to in &hostile {
        let r = app.start(to).await;
        let shown: String = to.chars().take(40).collect();
        assert_eq!(
            r.error_code(),
            Some("invalid_phone_number"),
            "input {shown:?}: {}",
            r.text
        );
        r.assert_error(400, "invalid_phone_number");
        if to.trim().len() > 3 {
            assert!(!r.text.contains(to.as_str()), "input echoed: {}", r.text);
        }
        app.check_by_number(to, "123456")
            .await
            .assert_error(400, "invalid_phone_number");
    }
    assert_eq!(app.row_counts(), before);
    assert!(app.sink.messages().is_empty());
}

#[tokio::test]
async fn malformed_codes_are_refused_and_cost_no_attempt() {
    let app = spawn_app().await;
    let (id, code) = app.started(UK_MOBILE).await;
    let before = app.row_counts();
    for bad in [
        "",
        "123",
        "12345678901",
        "12a456",
        " 123456",
        "123456 ",
        "12 456",
        "-12345",
        "1e5000",
        "١٢٣٤٥٦",
        "１２３４５６",
        "12345\u{0}",
        "<script>",
    ] {
        app.check(&id, bad).await.assert_error(400, "invalid_code");
        app.check_by_number(UK_MOBILE, bad)
            .await
            .assert_error(400, "invalid_code");
    }
    // A code must be a string.
    fetch(
        app.api(Method::POST, &format!("/v1/verifications/{id}/check"))
            .json(&json!({ "code": 123456 })),
    )
    .await
    .assert_error(400, "invalid_request");
    assert_eq!(app.row_counts(), before);

    let g = app.get_verification(&id).await;
    assert_eq!(
        g.num("check_attempts"),
        0,
        "a malformed code used an attempt"
    );
    assert_eq!(g.num("attempts_left"), 5);
    app.check(&id, &code).await.assert_status(200);
}

#[tokio::test]
async fn malformed_ids_and_references_are_refused_by_field() {
    let app = spawn_app().await;
    let before = app.row_counts();
    let id = app.approved(UK_MOBILE, None).await;
    let before_bad = app.row_counts();
    let long = "a".repeat(129);
    for account in ["%3Cscript%3E", "a%20b", "a%00b", "%E2%98%8E", long.as_str()] {
        let r = app.bind(account, &id).await;
        r.assert_error(400, "invalid_field");
        assert!(r.text.contains("account_ref"), "{}", r.text);
        app.get_binding(account)
            .await
            .assert_error(400, "invalid_field");
        app.unbind(account).await.assert_error(400, "invalid_field");
    }
    for account_ref in ["", "<script>", "a b", long.as_str()] {
        app.start_with(json!({ "to": UK_MOBILE_2, "account_ref": account_ref }))
            .await
            .assert_error(400, "invalid_field");
    }
    for (field, value) in [
        ("purpose", json!("Sign Up!")),
        ("locale", json!("<script>")),
        ("ip", json!("999.1.1.1")),
        ("user_agent", json!("a\u{0}b")),
        ("device_id", json!("x".repeat(129))),
        ("service", json!("../default")),
    ] {
        let mut body = json!({ "to": UK_MOBILE_2 });
        body[field] = value;
        let r = app.start_with(body).await;
        r.assert_error(400, "invalid_field");
        assert!(
            r.json["error"]["message"]
                .as_str()
                .unwrap()
                .starts_with(field),
            "{}",
            r.text
        );
    }
    // Verification ids that cannot exist are simply not found.
    for bad in [
        "VE..%2F..%2Fetc",
        "nope",
        "VE0123",
        &format!("ve{}", "0".repeat(32)),
    ] {
        app.get_verification(bad)
            .await
            .assert_error(404, "verification_not_found");
        app.bind("acct", bad)
            .await
            .assert_error(404, "verification_not_found");
    }
    // A path that does not even decode is refused in the same envelope.
    app.get_binding("%FF%FE")
        .await
        .assert_error(400, "invalid_request");
    app.bind("%C0%AF", &id)
        .await
        .assert_error(400, "invalid_request");
    app.get_verification("VE%FF")
        .await
        .assert_error(400, "invalid_request");
    app.patch_service("%FF", json!({}))
        .await
        .assert_error(400, "invalid_request");
    assert_eq!(app.row_counts(), before_bad);
    assert_ne!(before, before_bad);
}

#[tokio::test]
async fn unknown_routes_and_methods_use_the_error_envelope() {
    let app = spawn_app().await;
    for (method, path) in [
        (Method::GET, "/"),
        (Method::GET, "/v1"),
        (Method::GET, "/v2/verifications"),
        (
            Method::POST,
            "/v1/verifications/VE00000000000000000000000000000000/approve",
        ),
        (Method::GET, "/v1/accounts/x/email"),
    ] {
        fetch(app.api(method, path))
            .await
            .assert_error(404, "not_found");
    }
    for (method, path) in [
        (Method::DELETE, "/v1/verifications"),
        (Method::GET, "/v1/verification-checks"),
        (Method::PUT, "/v1/services"),
        (Method::DELETE, "/v1/services/default"),
        (Method::POST, "/healthz"),
    ] {
        // Routing comes before authentication: no key is needed to learn this.
        fetch(app.anon(method, path))
            .await
            .assert_error(405, "method_not_allowed");
    }
}

#[tokio::test]
async fn requests_without_a_valid_key_are_refused_with_401() {
    let app = spawn_app().await;
    let before = app.row_counts();
    let body = json!({ "to": UK_MOBILE });
    let never_stored = ringfence::crypto::generate_api_key().key;
    let mut wrong_secret = app.verify_key.clone();
    let last = wrong_secret.pop().unwrap();
    wrong_secret.push(if last == '0' { '1' } else { '0' });
    let cases: Vec<(&str, Option<String>)> = vec![
        ("no Authorization header", None),
        ("empty bearer", Some("Bearer ".into())),
        ("not a key", Some("Bearer hunter2".into())),
        ("basic auth", Some("Basic dXNlcjpwYXNz".into())),
        ("key without scheme", Some(app.verify_key.clone())),
        (
            "well-formed but unknown key",
            Some(format!("Bearer {never_stored}")),
        ),
        (
            "right id, wrong secret",
            Some(format!("Bearer {wrong_secret}")),
        ),
    ];
    for (what, auth) in cases {
        let mut rb = app.anon(Method::POST, "/v1/verifications").json(&body);
        if let Some(a) = &auth {
            rb = rb.header("authorization", a);
        }
        let r = fetch(rb).await;
        assert_eq!(r.status, 401, "{what}: {}", r.text);
        r.assert_error(401, "unauthorized");
        assert!(!r.text.contains("rfk_"), "{what}: key echoed: {}", r.text);
    }
    assert_eq!(app.row_counts(), before);
}

#[tokio::test]
async fn a_revoked_key_stops_working_once_the_key_cache_expires() {
    let app = spawn_app().await;
    let (id, key) = create_key(app.store(), "to-revoke", vec![Scope::Verify]).await;
    let get = |k: &str| {
        fetch(
            app.anon(Method::GET, "/v1/accounts/nobody/phone")
                .bearer_auth(k),
        )
    };
    get(&key).await.assert_error(404, "binding_not_found");
    assert!(app
        .store()
        .revoke_api_key(&id, app.clock.now())
        .await
        .unwrap());
    // Keys are cached for two seconds (of the instance's clock).
    app.advance(Duration::from_secs(3));
    get(&key).await.assert_error(401, "unauthorized");
    // Other keys are unaffected.
    get(&app.verify_key.clone())
        .await
        .assert_error(404, "binding_not_found");
}

#[tokio::test]
async fn a_key_without_the_needed_scope_is_refused_with_403() {
    let app = spawn_app().await;
    let before = app.row_counts();
    for (method, path, body) in [
        (Method::GET, "/v1/services", None),
        (Method::GET, "/v1/services/default", None),
        (
            Method::POST,
            "/v1/services",
            Some(json!({ "name": "mine" })),
        ),
        (
            Method::PATCH,
            "/v1/services/default",
            Some(json!({ "code_length": 4 })),
        ),
    ] {
        let mut rb = app.api(method, path);
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        let r = fetch(rb).await;
        r.assert_error(403, "forbidden");
        assert!(
            r.text.contains("admin"),
            "the message names the scope: {}",
            r.text
        );
    }
    // An admin key is not a verify key either.
    let r = fetch(
        app.admin(Method::POST, "/v1/verifications")
            .json(&json!({ "to": UK_MOBILE })),
    )
    .await;
    r.assert_error(403, "forbidden");
    assert!(r.text.contains("verify"), "{}", r.text);
    assert_eq!(app.row_counts(), before);
}

#[tokio::test]
async fn unknown_services_and_disabled_channels_are_refused() {
    let app = spawn_app().await;
    let before = app.row_counts();
    for service in ["nope", "VA00000000000000000000000000000000"] {
        app.start_with(json!({ "to": UK_MOBILE, "service": service }))
            .await
            .assert_error(404, "service_not_found");
        fetch(
            app.api(Method::POST, "/v1/verification-checks")
                .json(&json!({ "to": UK_MOBILE, "code": "123456", "service": service })),
        )
        .await
        .assert_error(404, "service_not_found");
        app.get_service(service)
            .await
            .assert_error(404, "service_not_found");
        app.patch_service(service, json!({ "code_length": 4 }))
            .await
            .assert_error(404, "service_not_found");
    }
    for channel in ["voice", "whatsapp"] {
        let r = app
            .start_with(json!({ "to": UK_MOBILE, "channel": channel }))
            .await;
        r.assert_error(400, "channel_not_allowed");
        assert!(r.text.contains(channel), "{}", r.text);
    }
    assert_eq!(app.row_counts(), before);

    // Enabling the channel on the service makes the same request work.
    app.patch_service("default", json!({ "channels": ["sms", "voice"] }))
        .await
        .assert_status(200);
    let r = app
        .start_with(json!({ "to": UK_MOBILE, "channel": "voice" }))
        .await;
    r.assert_status(201);
    assert_eq!(r.str("channel"), "voice");
}

#[tokio::test]
async fn a_well_formed_client_request_id_is_kept_and_a_bad_one_replaced() {
    let app = spawn_app().await;
    let r = fetch(
        app.api(Method::GET, "/v1/accounts/nobody/phone")
            .header("x-request-id", "trace-4f2a_01"),
    )
    .await;
    r.assert_error(404, "binding_not_found");
    assert_eq!(r.json["error"]["request_id"], "trace-4f2a_01");

    let r = fetch(
        app.api(Method::GET, "/v1/accounts/nobody/phone")
            .header("x-request-id", "not ok; <script>"),
    )
    .await;
    r.assert_error(404, "binding_not_found");
    let rid = r.json["error"]["request_id"].as_str().unwrap();
    assert!(
        !rid.contains("script") && rid.bytes().all(|b| b.is_ascii_hexdigit()),
        "{rid}"
    );

    // Successful responses carry an id too.
    let ok = fetch(app.anon(Method::GET, "/healthz")).await;
    assert!(ok.header("x-request-id").is_some_and(|v| !v.is_empty()));
}

#[tokio::test]
async fn bad_input_changes_nothing() {
    let app = spawn_app().await;
    // Some legitimate state first, so "nothing changed" is measured against real rows.
    let id = app.approved(UK_MOBILE, None).await;
    app.bind("user-1", &id).await.assert_status(200);
    app.outbox_settled().await;
    let before = app.row_counts();
    let sent = app.sink.messages().len();

    let bad: Vec<(Method, &str, Option<&str>, Value)> = vec![
        (
            Method::POST,
            "/v1/verifications",
            Some("application/json"),
            json!("{\"to\":"),
        ),
        (
            Method::POST,
            "/v1/verifications",
            Some("text/plain"),
            json!(UK_MOBILE_2),
        ),
        (
            Method::POST,
            "/v1/verifications",
            None,
            json!({ "to": UK_MOBILE_2, "extra": 1 }),
        ),
        (
            Method::POST,
            "/v1/verifications",
            None,
            json!({ "to": "+44 7400" }),
        ),
        (
            Method::POST,
            "/v1/verifications",
            None,
            json!({ "to": UK_MOBILE_2, "channel": "voice" }),
        ),
        (
            Method::POST,
            "/v1/verifications",
            None,
            json!({ "to": UK_MOBILE_2, "service": "nope" }),
        ),
        (
            Method::POST,
            "/v1/verifications",
            None,
            json!({ "to": UK_MOBILE_2, "locale": "!!" }),
        ),
        (
            Method::POST,
            "/v1/verification-checks",
            None,
            json!({ "to": UK_MOBILE, "code": "x" }),
        ),
        (
            Method::PUT,
            "/v1/accounts/%3Cx%3E/phone",
            None,
            json!({ "verification_id": id }),
        ),
        (
            Method::PUT,
            "/v1/accounts/user-2/phone",
            None,
            json!({ "verification_id": "VE123" }),
        ),
        (
            Method::DELETE,
            "/v1/accounts/%3Cx%3E/phone",
            None,
            Value::Null,
        ),
        (
            Method::POST,
            "/v1/services",
            None,
            json!({ "name": "x", "ttl_seconds": 5 }),
        ),
        (
            Method::POST,
            "/v1/services",
            None,
            json!({ "name": "default" }),
        ),
        (
            Method::PATCH,
            "/v1/services/default",
            None,
            json!({ "templates": { "en": "no code here" } }),
        ),
        (
            Method::PATCH,
            "/v1/services/default",
            None,
            json!({ "test_numbers": [{ "number": "+44 7400", "code": "123456" }] }),
        ),
    ];
    for (method, path, content_type, body) in bad {
        let admin = path.starts_with("/v1/services");
        let mut rb = if admin {
            app.admin(method, path)
        } else {
            app.api(method, path)
        };
        rb = match (content_type, &body) {
            (_, Value::Null) => rb,
            (Some(ct), Value::String(s)) => rb.header(CONTENT_TYPE, ct).body(s.clone()),
            _ => rb.json(&body),
        };
        let r = fetch(rb).await;
        assert!(
            r.status.is_client_error(),
            "{path}: {} {}",
            r.status,
            r.text
        );
    }
    // Unauthenticated and unauthorised attempts at changes.
    fetch(
        app.anon(Method::POST, "/v1/verifications")
            .json(&json!({ "to": UK_MOBILE_2 })),
    )
    .await
    .assert_error(401, "unauthorized");
    fetch(app.anon(Method::DELETE, "/v1/accounts/user-1/phone"))
        .await
        .assert_error(401, "unauthorized");
    fetch(
        app.api(Method::POST, "/v1/services")
            .json(&json!({ "name": "mine" })),
    )
    .await
    .assert_error(403, "forbidden");

    assert_eq!(
        app.row_counts(),
        before,
        "a refused request changed the database"
    );
    assert_eq!(
        app.sink.messages().len(),
        sent,
        "a refused request sent a message"
    );
    let g = app.get_binding("user-1").await;
    g.assert_status(200);
    assert_eq!(g.str("verification_id"), id);
    let s = app.get_service("default").await;
    assert_eq!(s.num("ttl_seconds"), 600);
    assert_eq!(s.json["test_numbers"], json!([]));
}
