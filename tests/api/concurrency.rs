//! Guarantees under concurrent requests. They come from the database (conditional
//! updates, unique indexes, one transaction per command), so racing requests over
//! real HTTP must not break them.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use futures::future::join_all;

use crate::helpers::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_200_racing_correct_checks_exactly_one_approves() {
    let app = spawn_app().await;
    app.without_guess_budget().await;
    let (id, code) = app.started(UK_MOBILE).await;

    let results = join_all((0..200).map(|_| app.check(&id, &code))).await;
    let mut outcomes: BTreeMap<String, usize> = BTreeMap::new();
    for r in &results {
        let what = match r.status.as_u16() {
            200 => format!("200 {}", r.str("status")),
            s => {
                r.assert_error(s, r.error_code().unwrap_or("?"));
                format!("{s} {}", r.error_code().unwrap())
            }
        };
        *outcomes.entry(what).or_default() += 1;
    }
    assert_eq!(
        outcomes,
        BTreeMap::from([
            ("200 approved".to_owned(), 1),
            ("409 verification_not_pending".to_owned(), 199),
        ]),
    );
    let g = app.get_verification(&id).await;
    assert_eq!(g.str("status"), "approved");
    assert_eq!(
        g.num("check_attempts"),
        0,
        "a correct code is not a wrong attempt"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_wrong_checks_never_exceed_the_attempt_limit() {
    let app = spawn_app().await;
    app.without_guess_budget().await;
    let (id, code) = app.started(UK_MOBILE).await;
    let wrong = wrong_code(&code);

    let results = join_all((0..50).map(|_| app.check(&id, &wrong))).await;
    let pending = results.iter().filter(|r| r.status == 200).count();
    let exhausted = results
        .iter()
        .filter(|r| r.error_code() == Some("max_attempts_reached"))
        .count();
    assert_eq!(
        pending, 4,
        "four wrong codes leave the verification pending"
    );
    assert_eq!(exhausted, 46);
    let g = app.get_verification(&id).await;
    assert_eq!(g.str("status"), "max_attempts_reached");
    assert_eq!(g.num("check_attempts"), 5);
    app.check(&id, &code)
        .await
        .assert_error(429, "max_attempts_reached");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_starts_for_50_new_numbers_all_succeed() {
    let app = spawn_app().await;
    let numbers: Vec<String> = (0..50).map(mobile).collect();

    let results = join_all(numbers.iter().map(|n| app.start(n))).await;
    let mut ids = BTreeSet::new();
    for (n, r) in numbers.iter().zip(&results) {
        r.assert_status(201);
        assert_eq!(r.str("to"), masked(n));
        ids.insert(r.str("id").to_owned());
    }
    assert_eq!(ids.len(), 50, "every number got its own verification");
    for n in &numbers {
        assert_eq!(app.wait_for_messages(n, 1).await.len(), 1);
    }
    assert_eq!(app.row_counts()["subjects"], 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_starts_for_one_new_number_make_one_verification() {
    let app = spawn_app().await;
    let results = join_all((0..20).map(|_| app.start(UK_MOBILE))).await;
    let created: Vec<&Resp> = results.iter().filter(|r| r.status == 201).collect();
    assert_eq!(created.len(), 1, "one verification per number and service");
    // Refused by the resend cooldown, or first by the number's rate limit (which every
    // start spends, sent or not).
    for r in results.iter().filter(|r| r.status != 201) {
        r.assert_status(429);
        let code = r.json["error"]["code"].as_str().unwrap_or_default();
        assert!(
            ["resend_cooldown", "rate_limited"].contains(&code),
            "unexpected refusal {code}"
        );
    }
    let counts = app.row_counts();
    assert_eq!(counts["subjects"], 1);
    assert_eq!(counts["verifications"], 1);
    app.wait_for_messages(UK_MOBILE, 1).await;
    app.outbox_settled().await;
    assert_eq!(app.messages_to(UK_MOBILE).len(), 1);
}

/// A client that goes away while its start waits for the commit does not stop what
/// follows the commit: the message goes out from memory at once (not a lease later),
/// and the send counts for the pumping detector. The test holds SQLite's write lock so
/// that the start is waiting in the store when the client closes its connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_whose_client_goes_away_before_the_commit_still_sends_at_once() {
    use tokio::io::AsyncWriteExt;

    let app = spawn_app().await;
    let blocker = rusqlite::Connection::open(app.db_path()).expect("database opens");
    blocker
        .execute_batch("BEGIN IMMEDIATE")
        .expect("write lock");

    let body = serde_json::json!({ "to": UK_MOBILE }).to_string();
    let request = format!(
        "POST /v1/verifications HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        app.addr,
        app.verify_key,
        body.len()
    );
    let mut conn = tokio::net::TcpStream::connect(app.addr)
        .await
        .expect("connects");
    conn.write_all(request.as_bytes())
        .await
        .expect("request sent");
    // The start reaches the store and waits for the lock; then the client is gone.
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(conn);
    tokio::time::sleep(Duration::from_millis(300)).await;
    blocker.execute_batch("COMMIT").expect("lock released");

    // The manual clock never moves: a message left to its lease would never be sent.
    let sent = eventually("the message is sent", || async {
        let m = app.sink.messages();
        (!m.is_empty()).then_some(m)
    })
    .await;
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].to, UK_MOBILE);
}
