//! Privacy guarantees: no phone number or code is ever readable in the database files
//! (numbers are sealed under per-subject keys, codes kept only as keyed hashes,
//! message content erased once handled), and responses do not reveal whether a
//! number is bound to an account.

use std::path::Path;

use serde_json::json;

use crate::helpers::*;

/// Every byte of every file in `dir` (the database, its WAL and shared-memory files).
fn files_in(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            let name = entry.file_name().to_string_lossy().into_owned();
            // SQLite may remove a file (a -journal, the -wal at close) between the
            // listing and the read; a file that is gone holds nothing readable.
            match std::fs::read(entry.path()) {
                Ok(bytes) => out.push((name, bytes)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => panic!("cannot read {name}: {e}"),
            }
        }
    }
    out
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// The forms in which a number could leak: E.164, its digits, its national number.
fn forms(e164: &str) -> Vec<String> {
    let n = ringfence_phone::E164::parse(e164, None).unwrap();
    vec![
        e164.to_owned(),
        e164.trim_start_matches('+').to_owned(),
        n.national_significant_number().to_owned(),
    ]
}

#[track_caller]
fn assert_nothing_readable(dir: &Path, secrets: &[String], when: &str) {
    let files = files_in(dir);
    assert!(
        files.iter().any(|(name, _)| name == "ringfence.db"),
        "{when}: no database file in {}",
        dir.display()
    );
    for (name, bytes) in &files {
        for s in secrets {
            assert!(
                !contains(bytes, s.as_bytes()),
                "{when}: `{s}` is readable in {name} ({} bytes)",
                bytes.len()
            );
        }
    }
}

#[tokio::test]
async fn no_number_or_code_is_readable_in_the_database_files() {
    let mut app = spawn_app().await;
    // Ten-digit codes: a random ten-digit string turning up by chance in kilobytes of
    // ciphertext is out of the question, so a match would be a real leak.
    app.patch_service("default", json!({ "code_length": 10 }))
        .await
        .assert_status(200);
    app.create_service(json!({
        "name": "qa",
        "code_length": 10,
        "test_numbers": [{ "number": US_NUMBER_2, "code": "9081726354" }]
    }))
    .await
    .assert_status(201);

    let numbers = [
        UK_MOBILE,
        UK_MOBILE_2,
        US_NUMBER,
        FR_MOBILE,
        &mobile(424_242),
    ]
    .map(str::to_owned);
    // A test number's fixed code is configuration, shown by `GET /v1/services`; it is
    // not among the secrets. The test number itself is.
    let mut codes = Vec::new();
    for (i, n) in numbers.iter().enumerate() {
        let account = format!("acct-{i}");
        let r = app
            .start_with(json!({
                "to": n, "account_ref": account, "ip": "203.0.113.9",
                "user_agent": "Mozilla/5.0", "device_id": "device-1"
            }))
            .await;
        r.assert_status(201);
        let id = r.str("id").to_owned();
        let code = app.code_for(n).await;
        assert_eq!(code.len(), 10);
        app.check(&id, &wrong_code(&code)).await.assert_status(200);
        codes.push(wrong_code(&code));
        app.check(&id, &code).await.assert_status(200);
        codes.push(code);
        app.bind(&account, &id).await.assert_status(200);
    }
    app.unbind("acct-0").await.assert_status(204);
    // A verification left pending, and one whose code was replaced by a re-send.
    let r = app.start(&mobile(1)).await;
    r.assert_status(201);
    codes.push(app.code_for(&mobile(1)).await);
    app.advance(std::time::Duration::from_secs(30));
    app.start(&mobile(1)).await.assert_status(201);
    codes.push(app.nth_code_for(&mobile(1), 2).await);
    // A test number.
    let t = app
        .start_with(json!({ "to": US_NUMBER_2, "service": "qa" }))
        .await;
    app.check(t.str("id"), "9081726354")
        .await
        .assert_status(200);
    app.outbox_settled().await;

    let payloads: i64 = app
        .db()
        .query_row(
            "SELECT COUNT(*) FROM outbox WHERE payload IS NOT NULL",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(payloads, 0, "message content stays after delivery");
    let sent: i64 = app
        .db()
        .query_row(
            "SELECT COUNT(*) FROM outbox WHERE status = 'sent'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(sent, 7);

    let mut secrets: Vec<String> = numbers
        .iter()
        .cloned()
        .chain([mobile(1), US_NUMBER_2.to_owned()])
        .flat_map(|n| forms(&n))
        .collect();
    secrets.extend(codes.iter().cloned());
    for m in app.sink.messages() {
        secrets.push(m.body.clone());
    }

    let wal = app.db_path().with_extension("db-wal");
    assert!(wal.exists(), "the WAL is there while the instance runs");
    assert_nothing_readable(app.data_dir(), &secrets, "while running");

    app.stop().await;
    assert_nothing_readable(app.data_dir(), &secrets, "after shutdown");
}

#[tokio::test]
async fn starting_for_a_bound_an_unbound_or_an_unknown_number_looks_the_same() {
    let app = spawn_app().await;
    let id = app.approved(UK_MOBILE, Some("user-1")).await;
    app.bind("user-1", &id).await.assert_status(200);
    let id = app.approved(UK_MOBILE_2, Some("user-2")).await;
    app.bind("user-2", &id).await.assert_status(200);
    app.unbind("user-2").await.assert_status(204);
    app.outbox_settled().await;

    let bound = app.start(UK_MOBILE).await;
    let unbound = app.start(UK_MOBILE_2).await;
    let unknown = app.start(US_NUMBER).await;
    let header_names = |r: &Resp| {
        let mut names: Vec<String> = r.headers.keys().map(|k| k.to_string()).collect();
        names.sort();
        names
    };
    for (what, r) in [("unbound", &unbound), ("never seen", &unknown)] {
        assert_eq!(r.status, bound.status, "{what}");
        assert_eq!(r.keys(), bound.keys(), "{what}");
        for key in [
            "status",
            "send_attempts",
            "check_attempts",
            "attempts_left",
            "channel",
            "account_ref",
            "approved_at",
        ] {
            assert_eq!(r.json[key], bound.json[key], "{what}: `{key}` differs");
        }
        assert_eq!(header_names(r), header_names(&bound), "{what}");
    }
    assert_eq!(bound.status, 201);
}
