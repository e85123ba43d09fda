//! The anti-abuse engine over HTTP: number types, regions, rate limits on every key an
//! attacker can vary (IPv6 grouped by /64), the per-number guess budget, and the
//! headers that tell a client when to come back.

use std::time::Duration;

use serde_json::{json, Value};

use crate::helpers::*;

const UK_VOIP: &str = "+445612345678";
const UK_PREMIUM: &str = "+449098765432";
const UK_TOLL_FREE: &str = "+448001234567";
const CU_MOBILE: &str = "+5352345678";

fn allow_all() -> Value {
    json!({ "allow_by_default": { "disallowed_regions": [] } })
}

fn geo_everywhere() -> Value {
    json!({ "sms": allow_all(), "voice": allow_all(), "whatsapp": allow_all() })
}

/// A service with only the given limit switched on (the others off), so each test sees
/// one rule at a time.
async fn service_with_limit(app: &TestApp, name: &str, limit: &str, n: u32, secs: u32) {
    service_with_limits(app, name, &[(limit, n, secs)]).await
}

/// A service with only the given limits (name, requests, seconds) switched on.
async fn service_with_limits(app: &TestApp, name: &str, on: &[(&str, u32, u32)]) {
    let mut limits = json!({
        "sends_per_number": null, "sends_per_ip": null, "sends_per_account": null,
        "sends_per_device": null, "sends_per_prefix": null, "sends_per_country": null,
        "sends_per_service": null, "wrong_codes_per_number": null
    });
    for (limit, n, secs) in on {
        limits[*limit] = json!({ "limit": n, "period_seconds": secs });
    }
    app.create_service(json!({
        "name": name,
        "resend_cooldown_seconds": 0,
        "abuse": { "geo": geo_everywhere(), "limits": limits }
    }))
    .await
    .assert_status(201);
}

#[tokio::test]
async fn costly_and_virtual_number_types_are_refused_by_default_and_nothing_is_sent() {
    let app = spawn_app().await;
    for number in [UK_VOIP, UK_PREMIUM, UK_TOLL_FREE] {
        let r = app.start(number).await;
        r.assert_error(403, "number_type_not_allowed");
        assert!(!r.text.contains(&number[1..]), "the number is not echoed");
    }
    app.start(US_NUMBER).await.assert_status(201);
    let counts = app.row_counts();
    assert_eq!(
        counts["verifications"], 1,
        "refused starts store no verification"
    );
    assert!(app.messages_to(UK_VOIP).is_empty());
}

#[tokio::test]
async fn the_strict_preset_takes_mobiles_only_and_sms_only() {
    let app = spawn_app().await;
    let svc = app
        .create_service(json!({
            "name": "strict",
            "channels": ["sms", "voice"],
            "abuse": { "preset": "strict", "geo": geo_everywhere() }
        }))
        .await;
    svc.assert_status(201);
    assert_eq!(
        svc.json["channels"],
        json!(["sms"]),
        "strict means SMS only"
    );
    assert_eq!(svc.json["abuse"]["number_types"]["sms"], json!(["mobile"]));
    // A NANP number cannot be told from a landline: refused by the strict preset.
    app.start_with(json!({ "to": US_NUMBER, "service": "strict" }))
        .await
        .assert_error(403, "number_type_not_allowed");
    app.start_with(json!({ "to": UK_MOBILE, "service": "strict" }))
        .await
        .assert_status(201);
    app.start_with(json!({ "to": UK_MOBILE_2, "service": "strict", "channel": "voice" }))
        .await
        .assert_error(400, "channel_not_allowed");
}

#[tokio::test]
async fn a_service_created_through_the_api_sends_only_to_the_regions_it_was_given() {
    let app = spawn_app().await;
    let r = app.create_service_raw(json!({ "name": "eu" })).await;
    r.assert_error(400, "invalid_service_config");
    assert!(r.str_at("/error/message").contains("abuse.geo"));

    let only = json!({ "allowlist_only": { "allowed_regions": ["FR", "GB"] } });
    app.create_service_raw(json!({
        "name": "eu",
        "abuse": { "geo": { "sms": only, "voice": only, "whatsapp": only } }
    }))
    .await
    .assert_status(201);
    app.start_with(json!({ "to": FR_MOBILE, "service": "eu" }))
        .await
        .assert_status(201);
    let r = app
        .start_with(json!({ "to": US_NUMBER, "service": "eu" }))
        .await;
    r.assert_error(403, "region_not_allowed");
    assert!(r.str_at("/error/message").contains("US"));

    // Allow by default with a deny-list, changed on the running service.
    let deny = json!({ "allow_by_default": { "disallowed_regions": ["CU"] } });
    app.patch_service(
        "eu",
        json!({ "abuse": { "geo": { "sms": deny, "voice": deny, "whatsapp": deny } } }),
    )
    .await
    .assert_status(200);
    app.advance(Duration::from_secs(3)); // past the service cache
    app.start_with(json!({ "to": US_NUMBER, "service": "eu" }))
        .await
        .assert_status(201);
    app.start_with(json!({ "to": CU_MOBILE, "service": "eu" }))
        .await
        .assert_error(403, "region_not_allowed");
}

#[tokio::test]
async fn the_default_service_of_a_fresh_install_reaches_every_region() {
    let app = spawn_app().await;
    let svc = app.get_service("default").await;
    assert_eq!(svc.json["abuse"]["geo"]["sms"], allow_all());
    app.start(CU_MOBILE).await.assert_status(201);
}

#[tokio::test]
async fn sends_per_ip_group_ipv6_by_64_bit_network() {
    let app = spawn_app().await;
    service_with_limit(&app, "ip", "sends_per_ip", 2, 300).await;
    let start =
        |n: u32, ip: &str| app.start_with(json!({ "to": mobile(n), "service": "ip", "ip": ip }));
    let first = start(1, "2001:db8:1:2::1").await;
    first.assert_status(201);
    assert_eq!(
        first.header("ratelimit-policy"),
        Some("\"sends_per_ip\";q=2;w=300")
    );
    assert_eq!(
        first.header("ratelimit"),
        Some("\"sends_per_ip\";r=1;t=150")
    );
    // Another address of the same /64 is the same subscriber.
    start(2, "2001:db8:1:2:ffff:ffff:ffff:fffe")
        .await
        .assert_status(201);
    let third = start(3, "2001:db8:1:2:1234::9").await;
    third.assert_error(429, "rate_limited");
    assert_eq!(
        third.retry_after(),
        Some(150),
        "one send frees up every 150 s"
    );
    assert_eq!(
        third.header("ratelimit"),
        Some("\"sends_per_ip\";r=0;t=300")
    );
    assert!(third.str_at("/error/message").contains("sends_per_ip"));
    // The next /64, and IPv4 addresses, have budgets of their own.
    start(4, "2001:db8:1:3::1").await.assert_status(201);
    start(5, "192.0.2.1").await.assert_status(201);
    // Time refills the budget.
    app.advance(Duration::from_secs(150));
    start(6, "2001:db8:1:2::77").await.assert_status(201);
}

/// A refused send spends no limit: what the other limits admitted is given back.
#[tokio::test]
async fn a_refused_send_spends_no_other_limit() {
    let app = spawn_app().await;
    service_with_limits(
        &app,
        "both",
        &[("sends_per_number", 2, 3600), ("sends_per_ip", 1, 3600)],
    )
    .await;
    let start = |ip: &str| app.start_with(json!({ "to": mobile(1), "service": "both", "ip": ip }));
    start("192.0.2.1").await.assert_status(201);
    // Refused by the IP's limit, five times: the number's is given back each time.
    for _ in 0..5 {
        let r = start("192.0.2.1").await;
        r.assert_error(429, "rate_limited");
        assert!(
            r.str_at("/error/message").contains("sends_per_ip"),
            "{}",
            r.text
        );
    }
    // So the number still has its second send …
    start("192.0.2.2").await.assert_status(201);
    // … and no third.
    let r = start("192.0.2.3").await;
    r.assert_error(429, "rate_limited");
    assert!(
        r.str_at("/error/message").contains("sends_per_number"),
        "{}",
        r.text
    );
}

#[tokio::test]
async fn sends_per_account_device_number_and_prefix_each_hold() {
    let app = spawn_app().await;
    for (svc, limit) in [
        ("acct", "sends_per_account"),
        ("dev", "sends_per_device"),
        ("num", "sends_per_number"),
        ("pfx", "sends_per_prefix"),
        ("cc", "sends_per_country"),
        ("all", "sends_per_service"),
    ] {
        service_with_limit(&app, svc, limit, 1, 3600).await;
    }
    let start = |svc: &'static str, to: String, extra: Value| {
        let mut body = json!({ "to": to, "service": svc });
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        app.start_with(body)
    };
    // Same account, different numbers.
    start("acct", mobile(1), json!({ "account_ref": "acct_1" }))
        .await
        .assert_status(201);
    start("acct", mobile(2), json!({ "account_ref": "acct_1" }))
        .await
        .assert_error(429, "rate_limited");
    start("acct", mobile(3), json!({ "account_ref": "acct_2" }))
        .await
        .assert_status(201);
    // Same device.
    start("dev", mobile(1), json!({ "device_id": "d1" }))
        .await
        .assert_status(201);
    start("dev", mobile(2), json!({ "device_id": "d1" }))
        .await
        .assert_error(429, "rate_limited");
    start("dev", mobile(3), json!({ "device_id": "d2" }))
        .await
        .assert_status(201);
    // Same number (a re-send counts).
    start("num", mobile(1), json!({})).await.assert_status(201);
    start("num", mobile(1), json!({}))
        .await
        .assert_error(429, "rate_limited");
    start("num", mobile(2), json!({})).await.assert_status(201);
    // Same prefix: +447900 00xxxx share "7900 00"; +44 7911 ... does not.
    start("pfx", mobile(1), json!({})).await.assert_status(201);
    start("pfx", mobile(2), json!({}))
        .await
        .assert_error(429, "rate_limited");
    start("pfx", UK_MOBILE_2.to_owned(), json!({}))
        .await
        .assert_status(201);
    // Same country.
    start("cc", mobile(1), json!({})).await.assert_status(201);
    start("cc", UK_MOBILE_2.to_owned(), json!({}))
        .await
        .assert_error(429, "rate_limited");
    start("cc", FR_MOBILE.to_owned(), json!({}))
        .await
        .assert_status(201);
    // The whole service.
    start("all", mobile(1), json!({})).await.assert_status(201);
    start("all", FR_MOBILE.to_owned(), json!({}))
        .await
        .assert_error(429, "rate_limited");
}

#[tokio::test]
async fn test_numbers_are_never_limited() {
    let app = spawn_app().await;
    let mut limits = json!({});
    limits["sends_per_service"] = json!({ "limit": 1, "period_seconds": 3600 });
    app.create_service(json!({
        "name": "qa",
        "resend_cooldown_seconds": 0,
        "test_numbers": [{ "number": UK_VOIP, "code": "123456" }],
        "abuse": { "geo": geo_everywhere(), "limits": limits }
    }))
    .await
    .assert_status(201);
    for _ in 0..3 {
        app.start_with(json!({ "to": UK_VOIP, "service": "qa" }))
            .await
            .assert_status(201);
    }
}

/// Brute force against one number: whatever the verifications and re-sends, at most
/// `wrong_codes_per_number` (10) codes are compared per 24 h. With 6-digit codes the
/// chance that any of them hits is at most 10 / 10^6 a day (see docs/abuse.md).
#[tokio::test]
async fn the_guess_budget_is_per_number_across_verifications_and_resends() {
    let app = spawn_app().await;
    app.create_service(json!({
        "name": "bf",
        "resend_cooldown_seconds": 0,
        "max_check_attempts": 20,
        "max_sends": 20,
        "abuse": { "geo": geo_everywhere(), "limits": { "sends_per_number": null } }
    }))
    .await
    .assert_status(201);
    let mut guesses = 0;
    let mut refused = None;
    // Re-send after every three guesses: a new code never resets the budget.
    'outer: for round in 0..10 {
        let r = app
            .start_with(json!({ "to": UK_MOBILE, "service": "bf" }))
            .await;
        r.assert_status(201);
        let id = r.str("id").to_owned();
        let code = app.nth_code_for(UK_MOBILE, round + 1).await;
        for _ in 0..3 {
            let c = app.check(&id, &wrong_code(&code)).await;
            if c.status == 429 {
                refused = Some((round, c));
                break 'outer;
            }
            c.assert_status(200);
            guesses += 1;
        }
    }
    assert_eq!(guesses, 10, "exactly ten wrong codes compared");
    let (round, r) = refused.expect("the eleventh guess is refused");
    assert_eq!(round, 3);
    r.assert_error(429, "rate_limited");
    assert!(r.retry_after().unwrap() > 0);
    // Even the right code is not compared now, by id or by number.
    // Rounds of three guesses: the eleventh guess came in the fourth verification.
    let code = app.nth_code_for(UK_MOBILE, 4).await;
    app.check_by_number_on("bf", UK_MOBILE, &code)
        .await
        .assert_error(429, "rate_limited");
    // A day later the budget is back.
    app.advance(Duration::from_secs(24 * 3600));
    let r = app
        .start_with(json!({ "to": UK_MOBILE, "service": "bf" }))
        .await;
    r.assert_status(201);
    let code = app.nth_code_for(UK_MOBILE, 5).await;
    let ok = app.check(r.str("id"), &code).await;
    assert_eq!(ok.str("status"), "approved");
}

/// The budget holds under racing guesses too: each guess reserves before it is
/// compared, so of 50 concurrent wrong codes exactly 10 are compared.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_wrong_codes_spend_exactly_the_guess_budget() {
    let app = spawn_app().await;
    app.create_service(json!({
        "name": "bf",
        "max_check_attempts": 20,
        "abuse": { "geo": geo_everywhere() }
    }))
    .await
    .assert_status(201);
    let r = app
        .start_with(json!({ "to": UK_MOBILE, "service": "bf" }))
        .await;
    let id = r.str("id").to_owned();
    let wrong = wrong_code(&app.code_for(UK_MOBILE).await);
    let results = futures::future::join_all((0..50).map(|_| app.check(&id, &wrong))).await;
    let compared = results.iter().filter(|r| r.status == 200).count();
    let limited = results
        .iter()
        .filter(|r| r.error_code() == Some("rate_limited"))
        .count();
    assert_eq!((compared, limited), (10, 40));
    assert_eq!(app.get_verification(&id).await.num("check_attempts"), 10);
}

/// A right code gives its reservation back: a person who types the code right every
/// time is never limited by the guess budget.
#[tokio::test]
async fn right_codes_do_not_spend_the_guess_budget() {
    let app = spawn_app().await;
    for _ in 0..15 {
        let (id, code) = app.started(UK_MOBILE).await;
        let ok = app.check(&id, &code).await;
        assert_eq!(ok.str("status"), "approved");
        app.advance(Duration::from_secs(361)); // past the cooldown; refills a send
    }
}

/// SMS pumping: sends to one prefix that nobody ever approves close it, and later
/// starts there are shadow-blocked — answered like any other, never sent.
#[tokio::test]
async fn a_prefix_whose_codes_are_never_entered_is_closed_and_shadow_blocked() {
    let app = spawn_app().await;
    // 40 numbers of the prefix 44:790 (+44 7900 …), none approved.
    for n in 0..40 {
        app.start(&mobile(n)).await.assert_status(201);
    }
    app.wait_for_messages(&mobile(39), 1).await;
    // Past the time people take to type a code (two minutes; the recent sends are a
    // sliding estimate over two-minute windows, so wait two of them plus one), the
    // prefix's conversion is 0 %.
    app.advance(Duration::from_secs(300));
    let r = app.start(&mobile(40)).await;
    r.assert_status(201);
    assert_eq!(
        r.str("status"),
        "pending",
        "the answer looks like any other"
    );
    let shadow_id = r.str("id").to_owned();
    // Another prefix is untouched, and its message goes out; the shadow-blocked one
    // never does.
    let (_, code) = app.started(UK_MOBILE_2).await;
    assert!(!code.is_empty());
    assert!(
        app.messages_to(&mobile(40)).is_empty(),
        "nothing sent to a closed prefix"
    );
    let g = app.get_verification(&shadow_id).await;
    g.assert_status(200);
    assert_eq!(g.str("status"), "pending");
}

/// Approvals keep a prefix open: the same volume, converting, is never closed.
#[tokio::test]
async fn a_prefix_whose_codes_are_entered_stays_open() {
    let app = spawn_app().await;
    app.without_guess_budget().await;
    for n in 0..40 {
        let (id, code) = app.started(&mobile(n)).await;
        if n % 3 != 0 {
            assert_eq!(app.check(&id, &code).await.str("status"), "approved");
        }
    }
    app.advance(Duration::from_secs(300));
    app.started(&mobile(40)).await;
}

/// Accounts per number: three within 90 days by default; unbinding (an account deleted)
/// leaves a tombstone that still counts.
#[tokio::test]
async fn a_number_binds_at_most_three_accounts_and_unbinding_does_not_reset_it() {
    let app = spawn_app().await;
    for n in 1..=3 {
        let id = app.approved(UK_MOBILE, None).await;
        app.bind(&format!("acct_{n}"), &id).await.assert_status(200);
        app.unbind(&format!("acct_{n}")).await.assert_status(204);
        app.advance(Duration::from_secs(3600));
    }
    let id = app.approved(UK_MOBILE, None).await;
    let r = app.bind("acct_4", &id).await;
    r.assert_error(409, "phone_limit_reached");
    assert!(!r.text.contains("447400123456"));
    app.get_binding("acct_4")
        .await
        .assert_error(404, "binding_not_found");
    // After the window, the oldest binding no longer counts.
    app.advance(Duration::from_secs(90 * 24 * 3600 - 2 * 3600));
    let id = app.approved(UK_MOBILE, None).await;
    app.bind("acct_4", &id).await.assert_status(200);
}

/// Recycled numbers: with `one_verified_holder`, whoever verifies the number now takes it
/// over from the earlier holder's account.
#[tokio::test]
async fn in_one_verified_holder_mode_the_new_holder_takes_the_number_over() {
    let app = spawn_app().await;
    app.patch_service(
        "default",
        json!({ "abuse": { "accounts": { "max_accounts_per_number": 3, "window_days": 90, "one_verified_holder": true } } }),
    )
    .await
    .assert_status(200);
    app.advance(Duration::from_secs(3)); // past the service cache
    let first = app.approved(UK_MOBILE, None).await;
    app.bind("old_holder", &first).await.assert_status(200);
    app.advance(Duration::from_secs(3600));
    let second = app.approved(UK_MOBILE, None).await;
    app.bind("new_holder", &second).await.assert_status(200);
    app.get_binding("old_holder")
        .await
        .assert_error(404, "binding_not_found");
    app.get_binding("new_holder").await.assert_status(200);
}

/// "Why was this blocked?": every decision that kept a message from going out is
/// stored with its reasons and factors, listed newest first for admins, filterable by
/// reason, and holds no number.
#[tokio::test]
async fn blocked_and_shadow_blocked_starts_are_explained_to_admins() {
    let app = spawn_app().await;
    app.start(UK_VOIP).await.assert_status(403);
    service_with_limit(&app, "ip", "sends_per_ip", 1, 300).await;
    let ip = |n: u32| json!({ "to": mobile(n), "service": "ip", "ip": "2001:db8::1" });
    app.start_with(ip(1)).await.assert_status(201);
    app.start_with(ip(2)).await.assert_status(429);

    let list = |query: &str| {
        fetch(app.admin(reqwest::Method::GET, &format!("/v1/admin/decisions{query}")))
    };
    let all = list("").await;
    all.assert_status(200);
    let decisions = all.json["decisions"].as_array().unwrap().clone();
    assert_eq!(decisions.len(), 2, "{}", all.text);
    // Newest first.
    assert_eq!(decisions[0]["reasons"], json!(["rate_limited"]));
    assert_eq!(decisions[0]["action"], "block");
    assert_eq!(
        decisions[0]["factors"],
        json!([{ "name": "limit", "value": "sends_per_ip" }])
    );
    assert_eq!(decisions[1]["reasons"], json!(["number_type_not_allowed"]));
    assert_eq!(decisions[1]["number_type"], "voip");
    assert_eq!(decisions[1]["region"], "GB");
    assert!(decisions[1]["verification_id"].is_null());
    for secret in [&UK_VOIP[1..], &mobile(2)[1..], "2001:db8"] {
        assert!(!all.text.contains(secret), "the listing holds {secret}");
    }

    let only = list("?reason=number_type_not_allowed").await;
    assert_eq!(only.json["decisions"].as_array().unwrap().len(), 1);
    let page = list("?limit=1").await;
    assert_eq!(page.json["decisions"].as_array().unwrap().len(), 1);
    let next = page.json["next_before"].as_i64().expect("a next page");
    let rest = list(&format!("?limit=1&before={next}")).await;
    assert_eq!(
        rest.json["decisions"][0]["reasons"],
        json!(["number_type_not_allowed"])
    );
    list("?limit=0").await.assert_error(400, "invalid_field");
    list("?nope=1").await.assert_error(400, "invalid_request");
    fetch(app.api(reqwest::Method::GET, "/v1/admin/decisions"))
        .await
        .assert_error(403, "forbidden");
}

/// A shadow block is recorded with the verification it answered with.
#[tokio::test]
async fn a_shadow_block_is_recorded_with_its_verification() {
    let app = spawn_app().await;
    for n in 0..40 {
        app.start(&mobile(n)).await.assert_status(201);
    }
    for n in 0..40 {
        app.wait_for_messages(&mobile(n), 1).await;
    }
    app.advance(Duration::from_secs(300));
    let r = app.start(&mobile(40)).await;
    let id = r.str("id").to_owned();
    let list = fetch(app.admin(
        reqwest::Method::GET,
        "/v1/admin/decisions?reason=prefix_conversion_collapse",
    ))
    .await;
    let d = &list.json["decisions"][0];
    assert_eq!(d["action"], "shadow_block", "{}", list.text);
    assert_eq!(d["verification_id"], id);
    // The figures behind it: 40 mature sends, none approved, all delivered.
    let factor = |name: &str| {
        d["factors"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["name"] == name)
            .map(|f| f["value"].as_str().unwrap().to_owned())
    };
    assert_eq!(factor("sends").as_deref(), Some("40"), "{}", list.text);
    assert_eq!(factor("approvals").as_deref(), Some("0"));
    assert_eq!(factor("deliveries").as_deref(), Some("40"));
    assert_eq!(factor("conversion").as_deref(), Some("0.000"));
    assert!(d["factors"]
        .as_array()
        .unwrap()
        .iter()
        .any(|f| f["name"] == "prefix" && f["value"] == "44:790"));
}

async fn add_to(app: &TestApp, list: &str, body: Value) -> Resp {
    fetch(
        app.admin(reqwest::Method::POST, &format!("/v1/admin/lists/{list}"))
            .json(&body),
    )
    .await
}

/// Ban lists: a number (kept only as its blind index), a prefix and an IP network, each
/// with a reason and an optional expiry; the safe list bypasses every check.
#[tokio::test]
async fn ban_and_safe_lists_decide_before_everything_else() {
    let app = spawn_app().await;
    let r = add_to(
        &app,
        "ban",
        json!({ "kind": "number", "value": UK_MOBILE, "reason": "chargeback fraud" }),
    )
    .await;
    r.assert_status(201);
    assert!(
        !r.text.contains(&UK_MOBILE[3..]),
        "the number is not shown: {}",
        r.text
    );
    assert!(r.str("value").starts_with("blind-index:"));
    let banned_number_id = r.json["id"].as_i64().unwrap();
    let r = app.start(UK_MOBILE).await;
    r.assert_error(403, "banned");
    assert!(r.str_at("/error/message").contains("number_banned"));

    add_to(&app, "ban", json!({ "kind": "prefix", "value": "+3361", "reason": "premium range", "expires_in_seconds": 60 }))
        .await
        .assert_status(201);
    app.start(FR_MOBILE).await.assert_error(403, "banned");
    app.advance(Duration::from_secs(61));
    app.start(FR_MOBILE).await.assert_status(201);

    add_to(
        &app,
        "ban",
        json!({ "kind": "ip", "value": "2001:db8:bad::/48", "reason": "bot farm" }),
    )
    .await
    .assert_status(201);
    app.start_with(json!({ "to": mobile(1), "ip": "2001:db8:bad:1::7" }))
        .await
        .assert_error(403, "banned");
    app.start_with(json!({ "to": mobile(1), "ip": "2001:db8:bae::7" }))
        .await
        .assert_status(201);

    // The safe list wins over everything: a ban, the number type, the rate limits.
    add_to(
        &app,
        "safe",
        json!({ "kind": "ip", "value": "198.51.100.0/24", "reason": "office" }),
    )
    .await
    .assert_status(201);
    for _ in 0..3 {
        app.start_with(json!({ "to": UK_VOIP, "ip": "198.51.100.20" }))
            .await
            .assert_status(201);
        app.advance(Duration::from_secs(31));
    }

    let list = fetch(app.admin(reqwest::Method::GET, "/v1/admin/lists/ban")).await;
    assert_eq!(
        list.json["entries"].as_array().unwrap().len(),
        2,
        "the expired entry no longer applies: {}",
        list.text
    );
    fetch(app.admin(
        reqwest::Method::DELETE,
        &format!("/v1/admin/lists/ban/{banned_number_id}"),
    ))
    .await
    .assert_status(204);
    app.start(UK_MOBILE).await.assert_status(201);

    let decisions = fetch(app.admin(
        reqwest::Method::GET,
        "/v1/admin/decisions?reason=number_banned",
    ))
    .await;
    let d = &decisions.json["decisions"][0];
    assert_eq!(
        d["factors"],
        json!([{ "name": "ban_list", "value": "number" }, { "name": "ban_reason", "value": "chargeback fraud" }])
    );

    add_to(
        &app,
        "ban",
        json!({ "kind": "prefix", "value": "44-70", "reason": "x" }),
    )
    .await
    .assert_error(400, "invalid_field");
    add_to(
        &app,
        "nope",
        json!({ "kind": "ip", "value": "10.0.0.0/8", "reason": "x" }),
    )
    .await
    .assert_error(404, "not_found");
}

/// Enumeration stays impossible: a start for a number bound to an account answers like
/// a start for any other number.
#[tokio::test]
async fn a_start_for_a_bound_number_looks_like_any_other() {
    let app = spawn_app().await;
    let id = app.approved(UK_MOBILE, None).await;
    app.bind("acct_1", &id).await.assert_status(200);
    app.advance(Duration::from_secs(31));
    let bound = app.start(UK_MOBILE).await;
    let fresh = app.start(UK_MOBILE_2).await;
    assert_eq!(bound.status, fresh.status);
    let keys = |r: &Resp| {
        let mut k: Vec<String> = r.json.as_object().unwrap().keys().cloned().collect();
        k.sort();
        k
    };
    assert_eq!(keys(&bound), keys(&fresh));
    for field in ["status", "channel", "send_attempts"] {
        assert_eq!(bound.json[field], fresh.json[field], "{field}");
    }
}

/// Statistics per country for admins: sends, approvals, conversion, refusals and the
/// estimated cost; and which services still reach every region.
#[tokio::test]
async fn admin_statistics_per_country() {
    let app = spawn_app().await;
    for n in 0..4 {
        let (id, code) = app.started(&mobile(n)).await;
        if n < 3 {
            assert_eq!(app.check(&id, &code).await.str("status"), "approved");
        }
    }
    app.started(FR_MOBILE).await;
    app.start(UK_VOIP).await.assert_status(403);
    let r = fetch(app.admin(reqwest::Method::GET, "/v1/admin/stats?hours=1")).await;
    r.assert_status(200);
    assert_eq!(r.json["services_open_to_every_region"], json!(["default"]));
    let countries = r.json["countries"].as_array().unwrap();
    let uk = &countries[0];
    assert_eq!(uk["country_code"], 44, "{}", r.text);
    assert_eq!(uk["verifications"], 4);
    assert_eq!(uk["sends"], 4);
    assert_eq!(uk["approvals"], 3);
    assert_eq!(uk["conversion"], 0.75);
    assert_eq!(uk["blocked"], 1);
    assert!(uk["estimated_cost_micros"].as_u64().unwrap() > 0);
    assert_eq!(countries[1]["country_code"], 33);
    assert_eq!(countries[1]["approvals"], 0);
    // Per prefix (as the pumping detector groups numbers): +44 7900… and +33 6 12….
    let prefixes = r.json["prefixes"].as_array().unwrap();
    assert_eq!(prefixes[0]["prefix"], "44:790", "{}", r.text);
    assert_eq!(prefixes[0]["sends"], 4);
    assert_eq!(prefixes[0]["conversion"], 0.75);
    assert_eq!(prefixes[1]["prefix"], "33:612");
    fetch(app.admin(reqwest::Method::GET, "/v1/admin/stats?hours=0"))
        .await
        .assert_error(400, "invalid_field");
    // An hour later the window is empty.
    app.advance(Duration::from_secs(3601));
    let r = fetch(app.admin(reqwest::Method::GET, "/v1/admin/stats?hours=1")).await;
    assert_eq!(r.json["countries"], json!([]));
}

/// The spend breaker: once the day's spend reaches the budget, sends are shadow-blocked
/// until the UTC day ends.
#[tokio::test]
async fn the_daily_budget_trips_a_breaker() {
    let mut pumping = ringfence::abuse::pumping::PumpingPolicy::default();
    pumping.spend.default_price_micros = 50_000;
    pumping.spend.global_budget_micros = Some(100_000); // two messages
    let app = spawn_app_with(
        std::sync::Arc::new(ringfence::counters::MemoryCounters::default()),
        pumping,
    )
    .await;
    app.started(&mobile(1)).await;
    app.started(FR_MOBILE).await;
    let r = app.start(UK_MOBILE_2).await;
    r.assert_status(201);
    app.start(US_NUMBER).await.assert_status(201);
    assert!(
        app.messages_to(UK_MOBILE_2).is_empty(),
        "the budget is spent"
    );
    let d = fetch(app.admin(
        reqwest::Method::GET,
        "/v1/admin/decisions?reason=global_budget_exceeded",
    ))
    .await;
    assert_eq!(
        d.json["decisions"].as_array().unwrap().len(),
        2,
        "{}",
        d.text
    );
    // A new UTC day, a new budget.
    app.advance(Duration::from_secs(24 * 3600));
    app.started(&mobile(2)).await;
}

/// Monitor mode: the breaker reports, nothing is blocked.
#[tokio::test]
async fn in_monitor_mode_the_breaker_only_reports() {
    let mut pumping = ringfence::abuse::pumping::PumpingPolicy::default();
    pumping.mode = ringfence::abuse::pumping::Mode::Monitor;
    pumping.spend.global_budget_micros = Some(50_000); // one message
    let app = spawn_app_with(
        std::sync::Arc::new(ringfence::counters::MemoryCounters::default()),
        pumping,
    )
    .await;
    app.started(&mobile(1)).await;
    app.started(&mobile(2)).await;
    app.started(&mobile(3)).await;
    // What would have happened is kept, on allowed sends.
    let d = fetch(app.admin(reqwest::Method::GET, "/v1/admin/decisions")).await;
    let first = &d.json["decisions"][0];
    assert_eq!(first["action"], "allow", "{}", d.text);
    assert!(first["factors"]
        .as_array()
        .unwrap()
        .iter()
        .any(|f| f["name"] == "would_shadow_block" && f["value"] == "global_budget_exceeded"));
}

/// Decisions and checks are counted in the Prometheus metrics, by code only.
#[tokio::test]
async fn decisions_and_checks_are_counted_in_the_metrics() {
    let app = spawn_app().await;
    let (id, code) = app.started(UK_MOBILE).await;
    app.check(&id, &wrong_code(&code)).await.assert_status(200);
    app.check(&id, &code).await.assert_status(200);
    app.start(UK_VOIP).await.assert_status(403);
    let m = fetch(app.anon(reqwest::Method::GET, "/metrics")).await;
    m.assert_status(200);
    assert!(m.header("content-type").unwrap().starts_with("text/plain"));
    for line in [
        "ringfence_send_decisions_total{action=\"allow\",reason=\"none\"} 1",
        "ringfence_send_decisions_total{action=\"block\",reason=\"number_type_not_allowed\"} 1",
        "ringfence_checks_total{outcome=\"wrong\"} 1",
        "ringfence_checks_total{outcome=\"approved\"} 1",
    ] {
        assert!(
            m.text.lines().any(|l| l == line),
            "missing `{line}` in:\n{}",
            m.text
        );
    }
    assert!(!m.text.contains("447400123456") && !m.text.contains(&code));
}
