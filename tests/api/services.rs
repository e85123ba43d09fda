//! `/v1/services` (admin scope): named configurations of the verification flow. A
//! change applies to the next message; test numbers answer to a fixed code, receive
//! nothing, and are only ever shown masked.

use serde_json::json;

use crate::helpers::*;

#[tokio::test]
async fn services_are_created_listed_read_and_changed() {
    let app = spawn_app().await;

    let created = app
        .create_service(json!({ "name": "shop", "friendly_name": "Shop" }))
        .await;
    created.assert_status(201);
    let id = created.str("id").to_owned();
    assert!(id.starts_with("VA") && id.len() == 34, "{id}");
    assert_eq!(created.str("name"), "shop");
    assert_eq!(created.str("friendly_name"), "Shop");
    assert_eq!(created.num("code_length"), 6);
    assert_eq!(created.num("ttl_seconds"), 600);
    assert_eq!(created.num("max_check_attempts"), 5);
    assert_eq!(created.num("max_sends"), 5);
    assert_eq!(created.num("resend_cooldown_seconds"), 30);
    assert_eq!(created.num("lockout_seconds"), 900);
    assert_eq!(created.json["channels"], json!(["sms"]));
    assert_eq!(created.str("default_locale"), "en");
    assert!(created.json["webotp_domain"].is_null());

    app.create_service(json!({ "name": "shop" }))
        .await
        .assert_error(409, "service_name_taken");

    let listed = app.list_services().await;
    listed.assert_status(200);
    let names: Vec<&str> = listed.json["services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["default", "shop"]);

    let by_id = app.get_service(&id).await;
    let by_name = app.get_service("shop").await;
    by_id.assert_status(200);
    assert_eq!(by_id.json, by_name.json);
    assert_eq!(by_id.json, created.json);

    let patched = app
        .patch_service(
            "shop",
            json!({
                "code_length": 8,
                "default_locale": "en",
                "templates": {
                    "en": "Your {service} code: {code}. Valid {minutes} minutes.",
                    "fr": "Votre code {service} : {code}"
                },
                "webotp_domain": "example.com"
            }),
        )
        .await;
    patched.assert_status(200);
    assert_eq!(patched.str("id"), id);
    assert_eq!(patched.num("code_length"), 8);
    assert_eq!(patched.str("webotp_domain"), "example.com");
    assert_eq!(app.get_service(&id).await.json, patched.json);

    // The next message follows the new configuration, in the requested locale.
    app.start_with(json!({ "to": FR_MOBILE, "service": "shop", "locale": "fr-FR" }))
        .await
        .assert_status(201);
    let body = app.wait_for_messages(FR_MOBILE, 1).await[0].body.clone();
    let code = extract_code(&body).unwrap();
    assert_eq!(code.len(), 8, "{body}");
    assert!(
        body.starts_with(&format!("Votre code Shop : {code}")),
        "{body}"
    );
    assert_eq!(
        body.lines().last(),
        Some(format!("@example.com #{code}").as_str())
    );
    app.check_by_number_on("shop", FR_MOBILE, &code)
        .await
        .assert_status(200);

    app.start_with(json!({ "to": UK_MOBILE, "service": "shop" }))
        .await
        .assert_status(201);
    let body = app.wait_for_messages(UK_MOBILE, 1).await[0].body.clone();
    let code = extract_code(&body).unwrap();
    assert_eq!(
        body,
        format!("Your Shop code: {code}. Valid 10 minutes.\n\n@example.com #{code}")
    );

    // `null` clears an optional field; absent fields stay.
    let cleared = app
        .patch_service(&id, json!({ "webotp_domain": null }))
        .await;
    cleared.assert_status(200);
    assert!(cleared.json["webotp_domain"].is_null());
    assert_eq!(cleared.num("code_length"), 8);

    // Renaming onto a taken name is refused.
    app.patch_service(&id, json!({ "name": "default" }))
        .await
        .assert_error(409, "service_name_taken");
}

#[tokio::test]
async fn invalid_service_configurations_are_refused_by_field() {
    let app = spawn_app().await;
    let before = app.row_counts();
    let cases = [
        (json!({ "friendly_name": "no name" }), "name"),
        (json!({ "name": "" }), "name"),
        (json!({ "name": "has space" }), "name"),
        (json!({ "name": "a", "code_length": 11 }), "code_length"),
        (json!({ "name": "a", "code_length": 3 }), "code_length"),
        (json!({ "name": "a", "ttl_seconds": 59 }), "ttl_seconds"),
        (json!({ "name": "a", "ttl_seconds": 3601 }), "ttl_seconds"),
        (
            json!({ "name": "a", "max_check_attempts": 0 }),
            "max_check_attempts",
        ),
        (json!({ "name": "a", "max_sends": 21 }), "max_sends"),
        (
            json!({ "name": "a", "resend_cooldown_seconds": 3601 }),
            "resend_cooldown_seconds",
        ),
        (
            json!({ "name": "a", "lockout_seconds": 86401 }),
            "lockout_seconds",
        ),
        (json!({ "name": "a", "channels": [] }), "channels"),
        (
            json!({ "name": "a", "default_locale": "x" }),
            "default_locale",
        ),
        (json!({ "name": "a", "default_locale": "fr" }), "templates"),
        (
            json!({ "name": "a", "templates": { "en": "no placeholder" } }),
            "templates",
        ),
        (
            json!({ "name": "a", "webotp_domain": "not a domain" }),
            "webotp_domain",
        ),
        (
            json!({ "name": "a", "android_app_hash": "short" }),
            "android_app_hash",
        ),
        (
            json!({ "name": "a", "test_numbers": [{ "number": "+44 7400", "code": "123456" }] }),
            "test_numbers",
        ),
        (
            json!({ "name": "a", "test_numbers": [{ "number": UK_MOBILE, "code": "12" }] }),
            "test_numbers",
        ),
    ];
    for (body, field) in cases {
        let r = app.create_service(body.clone()).await;
        r.assert_error(400, "invalid_service_config");
        let message = r.json["error"]["message"].as_str().unwrap();
        assert!(
            message.starts_with(field),
            "{body}: the message `{message}` should name `{field}`"
        );
    }
    // The same validation guards changes, and a refused change leaves the service as
    // it was.
    let r = app
        .patch_service("default", json!({ "code_length": 11 }))
        .await;
    r.assert_error(400, "invalid_service_config");
    assert!(r.text.contains("code_length"), "{}", r.text);
    assert_eq!(app.get_service("default").await.num("code_length"), 6);
    assert_eq!(app.row_counts(), before);
}

#[tokio::test]
async fn a_test_number_receives_nothing_answers_its_fixed_code_and_is_shown_masked() {
    let app = spawn_app().await;
    let created = app
        .create_service(json!({
            "name": "qa",
            "test_numbers": [{ "number": "+1 415 555 2671", "code": "424242" }]
        }))
        .await;
    created.assert_status(201);
    let service_id = created.str("id").to_owned();
    let raw_forms = [US_NUMBER, "14155552671", "4155552671", "415 555 2671"];
    let shown = |text: &str| raw_forms.iter().any(|f| text.contains(f));

    assert_eq!(
        created.json["test_numbers"],
        json!([{ "number": masked(US_NUMBER), "code": "424242" }])
    );
    assert!(!shown(&created.text), "raw test number in {}", created.text);
    let read = app.get_service(&service_id).await;
    assert_eq!(read.json["test_numbers"], created.json["test_numbers"]);
    assert!(!shown(&read.text), "raw test number in {}", read.text);
    let listed = app.list_services().await;
    assert!(!shown(&listed.text), "raw test number in {}", listed.text);

    let r = app
        .start_with(json!({ "to": US_NUMBER, "service": "qa" }))
        .await;
    r.assert_status(201);
    let id = r.str("id").to_owned();
    let g = app.get_verification(&id).await;
    assert_eq!(
        g.json["messages"],
        json!([]),
        "a test number gets no message"
    );

    // A real number on the same service is sent its code; by then the worker has
    // looked at the outbox, and the test number was not in it.
    app.start_with(json!({ "to": US_NUMBER_2, "service": "qa" }))
        .await
        .assert_status(201);
    app.code_for(US_NUMBER_2).await;
    assert!(app.messages_to(US_NUMBER).is_empty());

    let ok = app.check(&id, "424242").await;
    ok.assert_status(200);
    assert_eq!(ok.str("status"), "approved");

    // The fixed code is for that service only: on the default service the number is an
    // ordinary one.
    app.start(US_NUMBER).await.assert_status(201);
    app.code_for(US_NUMBER).await;
}
