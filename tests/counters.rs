//! One conformance suite for the counters, written once and run against both
//! backends: in memory always, and on Redis whenever `RINGFENCE_TEST_REDIS_URL` is set
//! (CI sets it). When it is set, a Redis that does not answer fails the Redis tests; it
//! never skips them.
//!
//! Time is a manual clock, so nothing sleeps. Every test uses its own random key
//! prefix, so tests running in parallel on one Redis never share a key.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ringfence::clock::{Clock, ManualClock, SystemClock};
use ringfence::counters::{
    Counters, CountersError, CountersSpec, MemoryCounters, Rate, RedisCounters,
};

/// A fresh key prefix, unique per test run.
fn prefix() -> String {
    format!("test:{:016x}", rand::random::<u64>())
}

fn memory() -> Arc<dyn Counters> {
    Arc::new(MemoryCounters::default())
}

/// Runs `n` calls of `task` at once, each on a Tokio task of its own, and returns
/// their results.
async fn race<T, F>(n: usize, task: impl Fn() -> F) -> Vec<T>
where
    F: std::future::Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let tasks: Vec<_> = (0..n).map(|_| tokio::spawn(task())).collect();
    futures::future::join_all(tasks)
        .await
        .into_iter()
        .map(|r| r.expect("a racing task"))
        .collect()
}

/// The Redis under test, or `None` when `RINGFENCE_TEST_REDIS_URL` is unset. Panics if
/// it is set and Redis does not answer.
async fn redis() -> Option<Arc<dyn Counters>> {
    let url = std::env::var("RINGFENCE_TEST_REDIS_URL")
        .ok()
        .filter(|u| !u.is_empty())?;
    // A generous bound here: the suite checks behaviour, and a loaded two-core CI
    // machine must not turn into false failures. The default bound is tested below.
    let c = RedisCounters::connect_with_timeout(&url, Duration::from_secs(5))
        .await
        .unwrap_or_else(|e| panic!("RINGFENCE_TEST_REDIS_URL is set but unusable: {e}"));
    c.ping().await.unwrap_or_else(|e| {
        panic!("RINGFENCE_TEST_REDIS_URL is set but Redis does not answer: {e}")
    });
    Some(Arc::new(c))
}

/// Declares every conformance test once per backend.
macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::memory()).await;
                }
            )*
        }
        mod redis {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    match super::redis().await {
                        Some(c) => super::$name(c).await,
                        None => eprintln!("RINGFENCE_TEST_REDIS_URL unset: Redis not tested"),
                    }
                }
            )*
        }
    };
}

conformance!(
    gcra_admits_the_burst_refuses_then_recovers,
    gcra_refusal_does_not_consume,
    gcra_peek_decides_as_a_spend_and_spends_nothing,
    gcra_keys_and_rates_are_independent,
    one_key_is_separate_state_in_each_kind_and_window,
    gcra_cost_spends_several_or_nothing,
    gcra_refund_gives_back_but_never_builds_credit,
    gcra_is_atomic_under_concurrency,
    racing_spends_given_back_leave_the_full_budget,
    gcra_all_spends_every_key_or_none,
    gcra_all_is_exact_under_concurrency,
    windows_count_and_expire_with_the_window,
    window_increments_are_atomic_under_concurrency,
    sliding_estimate_weighs_the_previous_window,
    several_windows_at_once_are_the_windows_one_by_one,
    concurrent_batches_count_as_if_one_after_another,
    keys_that_look_like_phone_numbers_are_refused,
    values_are_stored_once_and_expire_in_caller_time,
    put_if_absent_is_atomic_under_concurrency,
    values_that_look_like_phone_numbers_are_refused,
    the_previous_window_outlives_its_end_in_real_time,
    ping_answers,
);

async fn gcra_admits_the_burst_refuses_then_recovers(c: Arc<dyn Counters>) {
    let clock = ManualClock::starting_now();
    let key = format!("{}:n", prefix());
    let rate = Rate::per_minute(5); // one every 12 s

    let mut remaining = Vec::new();
    for _ in 0..5 {
        let d = c.gcra(&key, rate, clock.now()).await.unwrap();
        assert!(d.allowed);
        assert_eq!(d.retry_after_ms, None);
        remaining.push(d.remaining);
    }
    assert_eq!(remaining, [4, 3, 2, 1, 0]);

    let refused = c.gcra(&key, rate, clock.now()).await.unwrap();
    assert!(!refused.allowed);
    assert_eq!(refused.limit, 5);
    assert_eq!(refused.remaining, 0);
    assert_eq!(refused.retry_after_ms, Some(12_000));
    assert_eq!(refused.reset_after_ms, 60_000);

    clock.advance(Duration::from_millis(11_999));
    let early = c.gcra(&key, rate, clock.now()).await.unwrap();
    assert_eq!((early.allowed, early.retry_after_ms), (false, Some(1)));

    clock.advance(Duration::from_millis(1));
    let on_time = c.gcra(&key, rate, clock.now()).await.unwrap();
    assert!(on_time.allowed);
    assert_eq!(on_time.remaining, 0);
    assert!(!c.gcra(&key, rate, clock.now()).await.unwrap().allowed);

    clock.advance(Duration::from_secs(60));
    let mut admitted = 0;
    for _ in 0..7 {
        admitted += usize::from(c.gcra(&key, rate, clock.now()).await.unwrap().allowed);
    }
    assert_eq!(admitted, 5, "a full period restores the whole burst");
}

async fn gcra_refusal_does_not_consume(c: Arc<dyn Counters>) {
    let clock = ManualClock::starting_now();
    let key = format!("{}:ip", prefix());
    let rate = Rate::per_minute(2); // one every 30 s
    assert!(c.gcra(&key, rate, clock.now()).await.unwrap().allowed);
    assert!(c.gcra(&key, rate, clock.now()).await.unwrap().allowed);

    clock.advance(Duration::from_secs(1));
    for _ in 0..50 {
        let d = c.gcra(&key, rate, clock.now()).await.unwrap();
        assert!(!d.allowed);
        assert_eq!(d.retry_after_ms, Some(29_000));
    }
    // The hammering did not move the reopening.
    clock.advance(Duration::from_secs(29));
    assert!(c.gcra(&key, rate, clock.now()).await.unwrap().allowed);
}

/// A peek answers what a spend would, at every point of a budget being used up and
/// recovering, and leaves the key as it was.
async fn gcra_peek_decides_as_a_spend_and_spends_nothing(c: Arc<dyn Counters>) {
    let clock = ManualClock::starting_now();
    let key = format!("{}:guess", prefix());
    let rate = Rate::per_minute(3); // one every 20 s
                                    // An unknown key: admitted, with the whole burst left, and still unknown after.
    for _ in 0..5 {
        let d = c.gcra_peek(&key, rate, clock.now()).await.unwrap();
        assert!(d.allowed);
        assert_eq!(d.remaining, 2);
    }
    for spent in 1..=3u32 {
        let peeked = c.gcra_peek(&key, rate, clock.now()).await.unwrap();
        let d = c.gcra(&key, rate, clock.now()).await.unwrap();
        assert_eq!(peeked, d, "before spend {spent}");
        assert_eq!(d.remaining, 3 - spent);
    }
    // Spent: peeks refuse with the spend's retry, and move nothing.
    clock.advance(Duration::from_secs(1));
    for _ in 0..20 {
        let d = c.gcra_peek(&key, rate, clock.now()).await.unwrap();
        assert!(!d.allowed);
        assert_eq!(d.retry_after_ms, Some(19_000));
    }
    clock.advance(Duration::from_secs(19));
    let peeked = c.gcra_peek(&key, rate, clock.now()).await.unwrap();
    assert!(peeked.allowed);
    assert_eq!(c.gcra(&key, rate, clock.now()).await.unwrap(), peeked);
    assert!(!c.gcra_peek(&key, rate, clock.now()).await.unwrap().allowed);
}

/// Several limits at once: one request spent on each key when all admit it, nothing
/// on any when one refuses; each decision as `gcra` would give it.
async fn gcra_all_spends_every_key_or_none(c: Arc<dyn Counters>) {
    let clock = ManualClock::starting_now();
    let p = prefix();
    let (number, ip, service) = (format!("{p}:number"), format!("{p}:ip"), format!("{p}:all"));
    let (per_number, per_ip, per_service) =
        (Rate::per_hour(3), Rate::per_minute(1), Rate::per_hour(100));
    let now = clock.now();
    let limits = [
        (number.as_str(), per_number),
        (ip.as_str(), per_ip),
        (service.as_str(), per_service),
    ];
    let all = || c.gcra_all(&limits, now);
    let first = all().await.unwrap();
    assert!(first.iter().all(|d| d.allowed));
    assert_eq!(
        first.iter().map(|d| d.remaining).collect::<Vec<_>>(),
        [2, 0, 99]
    );
    // The IP's one request is spent: refused, and neither the number nor the
    // service pays for it, however often it is tried.
    for _ in 0..5 {
        let refused = all().await.unwrap();
        assert!(refused[0].allowed && !refused[1].allowed && refused[2].allowed);
        assert_eq!(refused[1].retry_after_ms, Some(60_000));
    }
    let d = c.gcra(&number, per_number, now).await.unwrap();
    assert_eq!(d.remaining, 1, "the number paid only for the first request");
    let d = c.gcra(&service, per_service, now).await.unwrap();
    assert_eq!(d.remaining, 98);
    assert!(c.gcra_all(&[], now).await.unwrap().is_empty());
    let err = c
        .gcra_all(&[("n:+447700900123", per_ip)], now)
        .await
        .unwrap_err();
    assert!(matches!(err, CountersError::InvalidKey(_)), "{err}");
}

/// 50 racing requests over two limits of 10 and 1,000: exactly 10 admitted, and the
/// larger limit pays for those 10 only.
async fn gcra_all_is_exact_under_concurrency(c: Arc<dyn Counters>) {
    let now = ManualClock::starting_now().now();
    let p = prefix();
    let (small, large) = (format!("{p}:small"), format!("{p}:large"));
    let admitted = race(50, || {
        let (c, small, large) = (c.clone(), small.clone(), large.clone());
        async move {
            let d = c
                .gcra_all(
                    &[(&large, Rate::per_hour(1000)), (&small, Rate::per_hour(10))],
                    now,
                )
                .await
                .unwrap();
            d.iter().all(|d| d.allowed)
        }
    })
    .await;
    let admitted = admitted.into_iter().filter(|a| *a).count();
    assert_eq!(admitted, 10);
    let d = c.gcra(&large, Rate::per_hour(1000), now).await.unwrap();
    assert_eq!(d.remaining, 1000 - 10 - 1);
}

async fn gcra_keys_and_rates_are_independent(c: Arc<dyn Counters>) {
    let now = ManualClock::starting_now().now();
    let p = prefix();
    let (a, b) = (format!("{p}:a"), format!("{p}:b"));
    let rate = Rate::per_hour(1);
    assert!(c.gcra(&a, rate, now).await.unwrap().allowed);
    assert!(!c.gcra(&a, rate, now).await.unwrap().allowed);
    assert!(c.gcra(&b, rate, now).await.unwrap().allowed);
    // A zero limit refuses everything and writes nothing.
    let z = format!("{p}:z");
    let d = c.gcra(&z, Rate::per_hour(0), now).await.unwrap();
    assert!(!d.allowed);
    assert!(c.gcra(&z, rate, now).await.unwrap().allowed);
}

async fn one_key_is_separate_state_in_each_kind_and_window(c: Arc<dyn Counters>) {
    let now = ManualClock::starting_now().now();
    let key = format!("{}:k", prefix());
    assert!(c.gcra(&key, Rate::per_hour(1), now).await.unwrap().allowed);
    assert_eq!(c.incr_window(&key, 60_000, 3, now).await.unwrap(), 3);
    assert_eq!(c.incr_window(&key, 3_600_000, 5, now).await.unwrap(), 5);
    let stored = c.put_if_absent(&key, "v", 60_000, now).await.unwrap();
    assert!(stored.created);
    // None of them saw another's state: the windows of either size count on their
    // own, the rate is spent, and the next window of a size starts from zero.
    assert!(!c.gcra(&key, Rate::per_hour(1), now).await.unwrap().allowed);
    assert_eq!(c.get_window(&key, 60_000, now).await.unwrap(), 3);
    assert_eq!(c.get_window(&key, 3_600_000, now).await.unwrap(), 5);
    assert_eq!(c.get_window(&key, 60_000, now + 60_000).await.unwrap(), 0);
    assert_eq!(c.get_value(&key, now).await.unwrap().as_deref(), Some("v"));
}

async fn gcra_cost_spends_several_or_nothing(c: Arc<dyn Counters>) {
    let clock = ManualClock::starting_now();
    let key = format!("{}:svc", prefix());
    let rate = Rate::per_minute(10); // one every 6 s
    let d = c.gcra_cost(&key, rate, 4, clock.now()).await.unwrap();
    assert_eq!((d.allowed, d.remaining), (true, 6));
    // 7 do not fit: refused whole, nothing spent, and told when all 7 would fit.
    let d = c.gcra_cost(&key, rate, 7, clock.now()).await.unwrap();
    assert_eq!(
        (d.allowed, d.remaining, d.retry_after_ms),
        (false, 6, Some(6_000))
    );
    let d = c.gcra_cost(&key, rate, 6, clock.now()).await.unwrap();
    assert_eq!((d.allowed, d.remaining), (true, 0));
    // More than the whole burst never fits.
    clock.advance(Duration::from_secs(3600));
    assert!(
        !c.gcra_cost(&key, rate, 11, clock.now())
            .await
            .unwrap()
            .allowed
    );
    assert!(
        c.gcra_cost(&key, rate, 10, clock.now())
            .await
            .unwrap()
            .allowed
    );
}

async fn gcra_refund_gives_back_but_never_builds_credit(c: Arc<dyn Counters>) {
    let clock = ManualClock::starting_now();
    let key = format!("{}:guess", prefix());
    let rate = Rate::per_minute(2); // one every 30 s
    assert!(c.gcra(&key, rate, clock.now()).await.unwrap().allowed);
    assert!(c.gcra(&key, rate, clock.now()).await.unwrap().allowed);
    assert!(!c.gcra(&key, rate, clock.now()).await.unwrap().allowed);
    // One given back: one more admitted, and then no more.
    c.gcra_refund(&key, rate, 1, clock.now()).await.unwrap();
    let d = c.gcra(&key, rate, clock.now()).await.unwrap();
    assert_eq!((d.allowed, d.remaining), (true, 0));
    assert!(!c.gcra(&key, rate, clock.now()).await.unwrap().allowed);
    // Refunds past a full budget are lost, not banked.
    for _ in 0..5 {
        c.gcra_refund(&key, rate, 1, clock.now()).await.unwrap();
    }
    let d = c.gcra(&key, rate, clock.now()).await.unwrap();
    assert_eq!(
        (d.allowed, d.remaining),
        (true, 1),
        "the burst is the ceiling"
    );
    // A refund on a key never used is a no-op.
    let fresh = format!("{}:fresh", prefix());
    c.gcra_refund(&fresh, rate, 3, clock.now()).await.unwrap();
    assert_eq!(
        c.gcra(&fresh, rate, clock.now()).await.unwrap().remaining,
        1
    );
}

async fn gcra_is_atomic_under_concurrency(c: Arc<dyn Counters>) {
    let now = ManualClock::starting_now().now();
    let key = format!("{}:prefix", prefix());
    let rate = Rate::per_hour(50);
    let decisions = race(200, || {
        let (c, key) = (c.clone(), key.clone());
        async move { c.gcra(&key, rate, now).await.unwrap() }
    })
    .await;
    let mut remaining: Vec<u32> = Vec::new();
    let mut refused = 0;
    for d in decisions {
        if d.allowed {
            remaining.push(d.remaining);
        } else {
            refused += 1;
        }
    }
    assert_eq!(remaining.len(), 50, "exactly the burst is admitted");
    assert_eq!(refused, 150);
    // Each admitted request saw a distinct state: the remainders are 49, 48, …, 0.
    remaining.sort_unstable();
    assert_eq!(remaining, (0..50).collect::<Vec<u32>>());
}

/// 100 racing requests on a burst of 10, each giving back what it spent (a right code
/// returning its reserved guess): at least the burst is admitted, and once all are
/// done the budget is whole again, as after the same calls one by one.
async fn racing_spends_given_back_leave_the_full_budget(c: Arc<dyn Counters>) {
    let now = ManualClock::starting_now().now();
    let key = format!("{}:guess", prefix());
    let rate = Rate::per_hour(10);
    let admitted = race(100, || {
        let (c, key) = (c.clone(), key.clone());
        async move {
            let d = c.gcra(&key, rate, now).await.unwrap();
            if d.allowed {
                c.gcra_refund(&key, rate, 1, now).await.unwrap();
            }
            d.allowed
        }
    })
    .await;
    let admitted = admitted.into_iter().filter(|a| *a).count();
    assert!(admitted >= 10, "{admitted} admitted");
    let d = c.gcra(&key, rate, now).await.unwrap();
    assert_eq!((d.allowed, d.remaining), (true, 9));
}

async fn windows_count_and_expire_with_the_window(c: Arc<dyn Counters>) {
    // Start at the beginning of a minute, so the window boundary is known.
    let clock = ManualClock::starting_now();
    clock.advance(Duration::from_millis(
        (60_000 - clock.now().rem_euclid(60_000)) as u64,
    ));
    let p = prefix();
    let key = format!("{p}:sends");
    let minute = 60_000;

    assert_eq!(c.get_window(&key, minute, clock.now()).await.unwrap(), 0);
    assert_eq!(
        c.incr_window(&key, minute, 1, clock.now()).await.unwrap(),
        1
    );
    assert_eq!(
        c.incr_window(&key, minute, 1, clock.now()).await.unwrap(),
        2
    );
    clock.advance(Duration::from_millis(59_999));
    assert_eq!(
        c.incr_window(&key, minute, 5, clock.now()).await.unwrap(),
        7
    );
    assert_eq!(c.get_window(&key, minute, clock.now()).await.unwrap(), 7);
    // Other keys and other window lengths are separate counters.
    assert_eq!(
        c.get_window(&format!("{p}:other"), minute, clock.now())
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        c.get_window(&key, 2 * minute, clock.now()).await.unwrap(),
        0
    );

    // The next window starts from zero.
    clock.advance(Duration::from_millis(1));
    assert_eq!(c.get_window(&key, minute, clock.now()).await.unwrap(), 0);
    assert_eq!(
        c.incr_window(&key, minute, 1, clock.now()).await.unwrap(),
        1
    );

    let err = c.incr_window(&key, 0, 1, clock.now()).await.unwrap_err();
    assert!(matches!(err, CountersError::InvalidArgument(_)), "{err}");
}

async fn window_increments_are_atomic_under_concurrency(c: Arc<dyn Counters>) {
    let now = ManualClock::starting_now().now();
    let key = format!("{}:approvals", prefix());
    let tasks: Vec<_> = (0..200)
        .map(|_| {
            let (c, key) = (c.clone(), key.clone());
            tokio::spawn(async move { c.incr_window(&key, 3_600_000, 1, now).await.unwrap() })
        })
        .collect();
    let mut seen: Vec<u64> = futures::future::join_all(tasks)
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .collect();
    seen.sort_unstable();
    assert_eq!(seen, (1..=200).collect::<Vec<u64>>());
    assert_eq!(c.get_window(&key, 3_600_000, now).await.unwrap(), 200);
}

async fn sliding_estimate_weighs_the_previous_window(c: Arc<dyn Counters>) {
    let clock = ManualClock::starting_now();
    clock.advance(Duration::from_millis(
        (60_000 - clock.now().rem_euclid(60_000)) as u64,
    ));
    let key = format!("{}:sliding", prefix());
    c.incr_window(&key, 60_000, 100, clock.now()).await.unwrap();
    // A quarter into the next window: three quarters of the previous one still count.
    clock.advance(Duration::from_secs(75));
    c.incr_window(&key, 60_000, 10, clock.now()).await.unwrap();
    assert_eq!(c.get_sliding(&key, 60_000, clock.now()).await.unwrap(), 85);
}

/// The batch forms (one round trip, one MGET or transaction on Redis) count and read
/// exactly what the single calls do, in the order given; a key repeated in one batch
/// counts twice.
async fn several_windows_at_once_are_the_windows_one_by_one(c: Arc<dyn Counters>) {
    // At the start of an hour: the test's minutes stay in one window of `b`'s hour.
    let clock = ManualClock::starting_now();
    clock.advance(Duration::from_millis(
        (3_600_000 - clock.now().rem_euclid(3_600_000)) as u64,
    ));
    let p = prefix();
    let (a, b) = (format!("{p}:a"), format!("{p}:b"));
    let counts = c
        .incr_windows(
            &[(&a, 60_000, 2), (&b, 3_600_000, 5), (&a, 60_000, 1)],
            clock.now(),
        )
        .await
        .unwrap();
    assert_eq!(counts, [2, 5, 3]);
    assert!(c.incr_windows(&[], clock.now()).await.unwrap().is_empty());
    let now = clock.now();
    assert_eq!(
        c.get_windows(&[
            (&b, 3_600_000, now),
            (&a, 60_000, now),
            (&a, 60_000, now - 60_000)
        ])
        .await
        .unwrap(),
        [5, 3, 0]
    );
    // Half into the next minute: half of `a`'s previous minute still counts.
    clock.advance(Duration::from_secs(90));
    c.incr_window(&a, 60_000, 4, clock.now()).await.unwrap();
    let slidings = c
        .get_slidings(&[(&a, 60_000), (&b, 3_600_000)], clock.now())
        .await
        .unwrap();
    assert_eq!(slidings, [4 + 2, 5]);
    assert_eq!(
        slidings[0],
        c.get_sliding(&a, 60_000, clock.now()).await.unwrap()
    );
    // Plain windows and sliding ones in one read: each part as if read alone.
    let now = clock.now();
    let (windows, both) = c
        .get_windows_and_slidings(
            &[(&b, 3_600_000, now), (&a, 60_000, now - 60_000)],
            &[(&a, 60_000), (&b, 3_600_000)],
            now,
        )
        .await
        .unwrap();
    assert_eq!(windows, [5, 3]);
    assert_eq!(both, slidings);
    // Every key is checked, also in a batch.
    let err = c
        .incr_windows(
            &[(&a, 60_000, 1), ("n:+447700900123", 60_000, 1)],
            clock.now(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, CountersError::InvalidKey(_)), "{err}");
}

/// Batches counted at the same time (Redis merges them into shared transactions): no
/// count is lost or seen twice, and within a batch a repeated key counts in order.
async fn concurrent_batches_count_as_if_one_after_another(c: Arc<dyn Counters>) {
    let now = ManualClock::starting_now().now();
    let p = prefix();
    let (a, b) = (format!("{p}:a"), format!("{p}:b"));
    let calls = (0..200).map(|_| {
        let (c, a, b) = (c.clone(), a.clone(), b.clone());
        tokio::spawn(async move {
            c.incr_windows(&[(&a, 60_000, 1), (&b, 60_000, 3), (&a, 60_000, 1)], now)
                .await
                .unwrap()
        })
    });
    let (mut a_counts, mut b_counts) = (Vec::new(), Vec::new());
    for call in calls.collect::<Vec<_>>() {
        let counts = call.await.unwrap();
        assert!(counts[2] > counts[0], "{counts:?}");
        a_counts.extend([counts[0], counts[2]]);
        b_counts.push(counts[1]);
    }
    a_counts.sort_unstable();
    assert_eq!(a_counts, (1..=400).collect::<Vec<u64>>());
    b_counts.sort_unstable();
    assert_eq!(b_counts, (1..=200).map(|i| 3 * i).collect::<Vec<u64>>());
    assert_eq!(
        c.get_windows(&[(&a, 60_000, now), (&b, 60_000, now)])
            .await
            .unwrap(),
        [400, 600]
    );
}

async fn keys_that_look_like_phone_numbers_are_refused(c: Arc<dyn Counters>) {
    let now = ManualClock::starting_now().now();
    let err = c
        .gcra("n:+447700900123", Rate::per_hour(1), now)
        .await
        .unwrap_err();
    assert!(matches!(err, CountersError::InvalidKey(_)));
    assert!(!err.to_string().contains("7700900123"));
    let err = c
        .incr_window("+15005550006", 60_000, 1, now)
        .await
        .unwrap_err();
    assert!(matches!(err, CountersError::InvalidKey(_)));
}

async fn values_are_stored_once_and_expire_in_caller_time(c: Arc<dyn Counters>) {
    let clock = ManualClock::starting_now();
    let p = prefix();
    let key = format!("{p}:closed");
    assert_eq!(c.get_value(&key, clock.now()).await.unwrap(), None);

    let first = c
        .put_if_absent(&key, "first", 60_000, clock.now())
        .await
        .unwrap();
    assert!(first.created);
    assert_eq!(first.value, "first");
    assert_eq!(first.expires_at, clock.now() + 60_000);

    // A second writer neither overwrites nor extends: it is told what is there.
    clock.advance(Duration::from_secs(10));
    let second = c
        .put_if_absent(&key, "second", 60_000, clock.now())
        .await
        .unwrap();
    assert!(!second.created);
    assert_eq!(second.value, "first");
    assert_eq!(second.expires_at, first.expires_at);
    assert_eq!(
        c.get_value(&key, clock.now()).await.unwrap().as_deref(),
        Some("first")
    );
    // Values and window counters under one key are separate state.
    assert_eq!(c.get_window(&key, 60_000, clock.now()).await.unwrap(), 0);

    // Expiry follows the caller's clock (the manual one here), not the backend's.
    clock.advance(Duration::from_millis(49_999));
    assert!(c.get_value(&key, clock.now()).await.unwrap().is_some());
    clock.advance(Duration::from_millis(1));
    assert_eq!(c.get_value(&key, clock.now()).await.unwrap(), None);
    let third = c
        .put_if_absent(&key, "third", 1_000, clock.now())
        .await
        .unwrap();
    assert!(third.created);
    assert_eq!(third.value, "third");

    let err = c
        .put_if_absent(&key, "x", 0, clock.now())
        .await
        .unwrap_err();
    assert!(matches!(err, CountersError::InvalidArgument(_)), "{err}");
    let err = c
        .put_if_absent(&key, &"x".repeat(201), 1_000, clock.now())
        .await
        .unwrap_err();
    assert!(matches!(err, CountersError::InvalidArgument(_)), "{err}");
}

async fn put_if_absent_is_atomic_under_concurrency(c: Arc<dyn Counters>) {
    let now = ManualClock::starting_now().now();
    let key = format!("{}:race", prefix());
    let tasks: Vec<_> = (0..100)
        .map(|i| {
            let (c, key) = (c.clone(), key.clone());
            tokio::spawn(async move {
                c.put_if_absent(&key, &format!("w{i}"), 60_000, now)
                    .await
                    .unwrap()
            })
        })
        .collect();
    let outcomes: Vec<_> = futures::future::join_all(tasks)
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .collect();
    let winners: Vec<_> = outcomes.iter().filter(|o| o.created).collect();
    assert_eq!(winners.len(), 1, "exactly one writer stores");
    let value = &winners[0].value;
    assert!(outcomes.iter().all(|o| &o.value == value));
    assert_eq!(c.get_value(&key, now).await.unwrap().as_ref(), Some(value));
}

async fn values_that_look_like_phone_numbers_are_refused(c: Arc<dyn Counters>) {
    let now = ManualClock::starting_now().now();
    let key = format!("{}:v", prefix());
    let err = c
        .put_if_absent(&key, "closed for +447700900123", 1_000, now)
        .await
        .unwrap_err();
    assert!(matches!(err, CountersError::InvalidArgument(_)), "{err}");
    assert!(!err.to_string().contains("7700900123"));
    let err = c.get_value("v:+447700900123", now).await.unwrap_err();
    assert!(matches!(err, CountersError::InvalidKey(_)), "{err}");
    assert_eq!(c.get_value(&key, now).await.unwrap(), None);
}

/// In real time, not on a manual clock: the sliding estimate reads the previous
/// window after that window has ended, so its count must still be there (in Redis it
/// used to expire at the window's end, while the memory backend still showed it).
/// This test waits for a window boundary, about half a second.
async fn the_previous_window_outlives_its_end_in_real_time(c: Arc<dyn Counters>) {
    let key = format!("{}:realtime", prefix());
    let window = 400;
    let now = SystemClock.now();
    c.incr_window(&key, window, 100, now).await.unwrap();
    let next = (now.div_euclid(window) + 1) * window;
    tokio::time::sleep(Duration::from_millis((next - now + 50) as u64)).await;
    let later = SystemClock.now();
    assert!(later < next + window, "the machine stalled for a window");
    let estimate = c.get_sliding(&key, window, later).await.unwrap();
    assert!(estimate > 0, "the previous window was dropped at its end");
    assert_eq!(
        c.get_window(&key, window, later - window).await.unwrap(),
        100
    );
}

async fn ping_answers(c: Arc<dyn Counters>) {
    c.ping().await.unwrap();
}

/// In Redis a window's count always carries its expiry: one window past the window's
/// end (the sliding estimate reads it until then).
#[tokio::test]
async fn redis_window_counts_carry_their_expiry() {
    let Some(c) = redis().await else { return };
    let url = std::env::var("RINGFENCE_TEST_REDIS_URL").unwrap();
    let key = format!("{}:ttl", prefix());
    let window = 60_000;
    let now = SystemClock.now();
    c.incr_window(&key, window, 3, now).await.unwrap();
    let index = now.div_euclid(window);
    let left = (index + 1) * window - now;
    let mut conn = ::redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let raw = format!("rf:w:{window}:{index}:{key}");
    let (count, ttl): (i64, i64) = ::redis::pipe()
        .get(&raw)
        .pttl(&raw)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(count, 3);
    assert!(
        ttl > window && ttl <= left + window,
        "PTTL {ttl} ms, expected up to {} ms",
        left + window
    );
}

/// Two instances sharing one Redis still admit exactly the burst.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_two_instances_share_one_limit() {
    let (Some(a), Some(b)) = (redis().await, redis().await) else {
        eprintln!("RINGFENCE_TEST_REDIS_URL unset: Redis not tested");
        return;
    };
    let now = ManualClock::starting_now().now();
    let key = format!("{}:acct", prefix());
    let rate = Rate::per_hour(50);
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let c = if i % 2 == 0 { a.clone() } else { b.clone() };
            let key = key.clone();
            tokio::spawn(async move { c.gcra(&key, rate, now).await.unwrap().allowed })
        })
        .collect();
    let admitted = futures::future::join_all(tasks)
        .await
        .into_iter()
        .filter(|r| *r.as_ref().unwrap())
        .count();
    assert_eq!(admitted, 50);
}

/// Two instances sharing one Redis: exactly one of them stores a value, and both read
/// it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_two_instances_agree_on_a_value() {
    let (Some(a), Some(b)) = (redis().await, redis().await) else {
        eprintln!("RINGFENCE_TEST_REDIS_URL unset: Redis not tested");
        return;
    };
    let now = ManualClock::starting_now().now();
    let key = format!("{}:closed", prefix());
    let tasks: Vec<_> = (0..50)
        .map(|i| {
            let c = if i % 2 == 0 { a.clone() } else { b.clone() };
            let key = key.clone();
            tokio::spawn(async move {
                c.put_if_absent(&key, &format!("by {}", i % 2), 60_000, now)
                    .await
                    .unwrap()
                    .created
            })
        })
        .collect();
    let created = futures::future::join_all(tasks)
        .await
        .into_iter()
        .filter(|r| *r.as_ref().unwrap())
        .count();
    assert_eq!(created, 1);
    let seen_a = a.get_value(&key, now).await.unwrap();
    assert!(seen_a.is_some());
    assert_eq!(seen_a, b.get_value(&key, now).await.unwrap());
}

/// Checks that every operation fails with `Unavailable`, each within `bound`.
async fn assert_unavailable_within(c: &dyn Counters, bound: Duration) {
    let now = ManualClock::starting_now().now();
    let started = Instant::now();
    let err = c.gcra("k:1", Rate::per_minute(1), now).await.unwrap_err();
    assert!(matches!(err, CountersError::Unavailable(_)), "{err}");
    let err = c.incr_window("k:1", 60_000, 1, now).await.unwrap_err();
    assert!(matches!(err, CountersError::Unavailable(_)), "{err}");
    let err = c.get_window("k:1", 60_000, now).await.unwrap_err();
    assert!(matches!(err, CountersError::Unavailable(_)), "{err}");
    let err = c.put_if_absent("k:1", "v", 1_000, now).await.unwrap_err();
    assert!(matches!(err, CountersError::Unavailable(_)), "{err}");
    let err = c.get_value("k:1", now).await.unwrap_err();
    assert!(matches!(err, CountersError::Unavailable(_)), "{err}");
    let err = c.ping().await.unwrap_err();
    assert!(matches!(err, CountersError::Unavailable(_)), "{err}");
    let elapsed = started.elapsed();
    assert!(elapsed < bound, "six failures took {elapsed:?}");
}

/// Nothing listens on port 1: the backend builds (it connects lazily) and every
/// operation fails closed, fast.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_that_refuses_connections_is_unavailable_fast() {
    let spec: CountersSpec = "redis://127.0.0.1:1".parse().unwrap();
    let c = spec.build().await.unwrap();
    assert_eq!(c.backend(), "redis");
    // Six operations with a 250 ms bound each; the margin is for a loaded machine.
    assert_unavailable_within(&*c, Duration::from_secs(3)).await;
}

/// A server that accepts connections and never answers (a hung Redis, a black-holed
/// network): every operation gives up at the timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_that_never_answers_is_unavailable_after_the_timeout() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let silent = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let c = RedisCounters::connect(&format!("redis://{addr}"))
        .await
        .unwrap();
    assert_unavailable_within(&c, Duration::from_secs(3)).await;
    silent.abort();
}

#[tokio::test]
async fn the_default_spec_builds_the_memory_backend() {
    let c = CountersSpec::default().build().await.unwrap();
    assert_eq!(c.backend(), "memory");
    c.ping().await.unwrap();
}

/// The same over TLS (`rediss://`): the TLS set-up works, and a server that never
/// completes the handshake is cut off at the timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_that_never_answers_is_unavailable_after_the_timeout() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let silent = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let spec: CountersSpec = format!("rediss://{addr}").parse().unwrap();
    let c = spec.build().await.unwrap();
    assert_unavailable_within(&*c, Duration::from_secs(3)).await;
    silent.abort();
}
