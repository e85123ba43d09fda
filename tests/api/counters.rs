//! Sends are decided in the counters before they are queued, and counted there once
//! queued. When the counters cannot be reached, sending fails closed — 503 `unavailable`, nothing queued — `/readyz`
//! says why, and checks keep working from the database.

use std::sync::Arc;

use ringfence::counters::{Counters, CountersSpec};
use serde_json::json;

use crate::helpers::*;

/// Each queued send is counted per country (the pumping detector's baseline).
#[tokio::test]
async fn a_send_is_counted_per_country() {
    let counters = Arc::new(ringfence::counters::MemoryCounters::default());
    let app = spawn_app_with_counters(counters.clone()).await;
    app.started(UK_MOBILE).await;
    app.started(UK_MOBILE_2).await;
    let now = ringfence::clock::Clock::now(&app.clock);
    let per_country = counters
        .get_window("pc:44:sent", 24 * 3600 * 1000, now)
        .await
        .unwrap();
    assert_eq!(per_country, 2);
}

#[tokio::test]
async fn without_counters_nothing_is_sent_but_checks_still_work() {
    // Nothing listens on port 1: every counter operation fails within its timeout.
    let spec: CountersSpec = "redis://127.0.0.1:1".parse().unwrap();
    let counters: Arc<dyn Counters> = spec.build().await.unwrap();
    let app = spawn_app_with_counters(counters).await;

    let r = app.start(UK_MOBILE).await;
    r.assert_error(503, "unavailable");
    assert!(r.retry_after().is_some());
    assert_eq!(
        app.db()
            .query_row("SELECT COUNT(*) FROM outbox", [], |r| r.get::<_, i64>(0))
            .unwrap(),
        0
    );

    let ready = fetch(app.anon(reqwest::Method::GET, "/readyz")).await;
    ready.assert_status(503);
    assert_eq!(ready.json["checks"]["counters"], "unavailable");
    assert_eq!(ready.json["checks"]["database"], "ok");

    // A test number sends nothing, so it needs no metering: its verification starts,
    // and checking it works without the counters.
    let svc = app
        .create_service(
            json!({ "name": "qa", "test_numbers": [{ "number": UK_MOBILE_2, "code": "424242" }] }),
        )
        .await;
    svc.assert_status(201);
    let started = app
        .start_with(json!({ "to": UK_MOBILE_2, "service": "qa" }))
        .await;
    started.assert_status(201);
    let checked = app.check(started.str("id"), "424242").await;
    checked.assert_status(200);
    assert_eq!(checked.str("status"), "approved");
}

#[tokio::test]
async fn with_redis_counters_sends_are_metered_and_the_instance_is_ready() {
    let Ok(url) = std::env::var("RINGFENCE_TEST_REDIS_URL") else {
        return;
    };
    let counters = url.parse::<CountersSpec>().unwrap().build().await.unwrap();
    let app = spawn_app_with_counters(counters.clone()).await;
    let ready = fetch(app.anon(reqwest::Method::GET, "/readyz")).await;
    assert_eq!(
        ready.status, 200,
        "RINGFENCE_TEST_REDIS_URL is set but Redis does not answer: {}",
        ready.text
    );
    assert_eq!(ready.json["checks"]["counters_backend"], "redis");
    // The send's count for the pumping detector follows the reply on Redis: it lands
    // within moments. (Other runs' counts of this window may be there: a difference.)
    let now = ringfence::clock::Clock::now(&app.clock);
    let day = 24 * 3600 * 1000;
    let before = counters.get_window("pc:44:sent", day, now).await.unwrap();
    app.started(&mobile(4242)).await;
    let mut after = before;
    for _ in 0..100 {
        after = counters.get_window("pc:44:sent", day, now).await.unwrap();
        if after > before {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(after, before + 1, "the send was not counted in Redis");
}
