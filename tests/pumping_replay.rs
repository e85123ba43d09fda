//! The SMS-pumping detector replayed against a synthetic trace
//! ([`ringfence::abuse::pumping::trace`]): legitimate traffic converting at about
//! 70 % from several hundred prefixes in 30 countries, and from the fourth hour a
//! pumping burst at about 0 % against four prefixes. Time comes from the trace, never
//! from the wall clock.
//!
//! It runs on the memory counters always, and on Redis — two detector instances
//! sharing it, taking turns event by event — whenever `RINGFENCE_TEST_REDIS_URL` is
//! set; both replays must give exactly the same figures. The figures are printed
//! (`-- --nocapture`) and are the ones in `docs/abuse.md`. Beside the replays: closing
//! and the spend breaker seen by two instances, and concurrent assessments of one
//! prefix sharing one reading of the counters.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use ringfence::abuse::pumping::trace::{self, Kind, Trace, TraceConfig};
use ringfence::abuse::pumping::{
    Closure, Event, Figures, Mode, Prefix, PumpingDetector, PumpingPolicy, Reason, SpendPolicy,
    Verdict, DAY_MS,
};
use ringfence::clock::Millis;
use ringfence::counters::{
    Counters, CountersResult, GcraDecision, MemoryCounters, Rate, RedisCounters, Stored,
};

/// The most sends that may reach one pumped prefix before it closes, with the
/// default policy and the trace's 12 attempts a minute per prefix (see
/// `docs/abuse.md`, "Sends leaked before closing"): the mature sends needed with up to
/// three chance approvals against the 0.5 floor (65), plus the sends still inside the
/// 2-minute approval lag (about 24), plus slack for Poisson bursts.
const LEAK_BOUND: u64 = 100;

/// False blocks allowed: under 0.1 % of legitimate verifications.
const FALSE_BLOCK_LIMIT: f64 = 0.001;

/// The policy of the replay: defaults, plus prices and budgets generous enough that
/// legitimate traffic never reaches them (the breaker is tested on its own below).
fn replay_policy() -> PumpingPolicy {
    PumpingPolicy {
        spend: SpendPolicy {
            prices_micros: HashMap::from([(998, 250_000), (996, 200_000), (254, 80_000)]),
            default_price_micros: 40_000,
            country_budgets_micros: HashMap::new(),
            default_country_budget_micros: Some(500_000_000),
            global_budget_micros: Some(2_000_000_000),
        },
        ..PumpingPolicy::default()
    }
}

/// One pumped prefix's fate.
#[derive(Debug, Clone, PartialEq, Default)]
struct Pumped {
    attempts: u64,
    /// Sends let through (before the prefix closed).
    leaked: u64,
    /// Trace time from the first attempt to the closing, ms.
    closed_after_ms: Option<i64>,
    first_attempt: Option<Millis>,
}

#[derive(Debug, Clone, PartialEq, Default)]
struct Report {
    legit_verifications: u64,
    legit_sends: u64,
    /// Legitimate verifications with at least one send refused.
    legit_blocked: u64,
    legit_sends_blocked: u64,
    pumped: BTreeMap<Prefix, Pumped>,
    /// Every prefix closed (or watched), with its closure.
    closed: BTreeMap<Prefix, Closure>,
    /// Verdicts that were `Watched`.
    watched_verdicts: u64,
    events: Vec<Event>,
}

impl Report {
    fn false_block_rate(&self) -> f64 {
        self.legit_blocked as f64 / self.legit_verifications as f64
    }

    fn print(&self, label: &str) {
        println!("== {label}");
        println!(
            "legitimate: {} verifications ({} sends); blocked {} verifications ({:.4} %), {} sends",
            self.legit_verifications,
            self.legit_sends,
            self.legit_blocked,
            100.0 * self.false_block_rate(),
            self.legit_sends_blocked,
        );
        for (prefix, p) in &self.pumped {
            let conv = match self.closed.get(prefix).map(|c| &c.figures) {
                Some(Figures::Conversion(f)) => format!(
                    "judged {}/{} (bound {:.3} < threshold {:.3}, baseline {:.3})",
                    f.approvals, f.sends, f.upper_bound, f.threshold, f.baseline
                ),
                _ => "not closed".into(),
            };
            println!(
                "pumped {prefix}: {} attempts, {} leaked, closed after {:?} s; {conv}",
                p.attempts,
                p.leaked,
                p.closed_after_ms.map(|ms| ms / 1000),
            );
        }
        let legit_closed: Vec<_> = self
            .closed
            .keys()
            .filter(|p| !self.pumped.contains_key(p))
            .collect();
        println!("legitimate prefixes closed: {legit_closed:?}");
    }
}

/// Drives the detectors with the trace, taking turns event by event.
async fn replay(trace: &Trace, detectors: &[PumpingDetector]) -> Report {
    let mut report = Report::default();
    let mut passed = vec![false; trace.verifications.len()];
    let mut blocked = vec![false; trace.verifications.len()];
    for v in &trace.verifications {
        if v.legit {
            report.legit_verifications += 1;
        } else {
            report.pumped.entry(v.prefix.clone()).or_default();
        }
    }
    for (i, e) in trace.events.iter().enumerate() {
        let d = &detectors[i % detectors.len()];
        let id = e.verification as usize;
        let v = &trace.verifications[id];
        match e.kind {
            Kind::Send => {
                let a = d.assess(&v.prefix, e.at).await.expect("assess");
                for ev in &a.events {
                    if let Event::PrefixClosed { prefix, closure }
                    | Event::PrefixWatched { prefix, closure } = ev
                    {
                        report.closed.insert(prefix.clone(), closure.clone());
                        if let Some(p) = report.pumped.get_mut(prefix) {
                            p.closed_after_ms = p.first_attempt.map(|t| e.at - t);
                        }
                    }
                }
                report.events.extend(a.events);
                if matches!(a.verdict, Verdict::Watched(_)) {
                    report.watched_verdicts += 1;
                }
                if v.legit {
                    report.legit_sends += 1;
                } else {
                    let p = report.pumped.get_mut(&v.prefix).expect("pumped prefix");
                    p.attempts += 1;
                    p.first_attempt.get_or_insert(e.at);
                }
                if a.verdict.allows() {
                    let events = d.record_send(&v.prefix, e.at).await.expect("send");
                    report.events.extend(events);
                    passed[id] = true;
                    if !v.legit {
                        report.pumped.get_mut(&v.prefix).expect("pumped").leaked += 1;
                    }
                } else if v.legit {
                    report.legit_sends_blocked += 1;
                    if !blocked[id] {
                        blocked[id] = true;
                        report.legit_blocked += 1;
                    }
                }
            }
            Kind::Delivery if passed[id] => {
                d.record_delivery(&v.prefix, e.at).await.expect("delivery");
            }
            Kind::Approval if passed[id] => {
                d.record_approval(&v.prefix, e.at).await.expect("approval");
            }
            Kind::Delivery | Kind::Approval => {}
        }
    }
    report
}

fn assert_pumping_stopped_and_legit_spared(
    config: &TraceConfig,
    trace: &Trace,
    r: &Report,
    min_judged: usize,
) {
    let pumped: BTreeSet<_> = config.pumped.iter().cloned().collect();
    assert_eq!(r.pumped.keys().cloned().collect::<BTreeSet<_>>(), pumped);
    for (prefix, p) in &r.pumped {
        assert!(
            p.closed_after_ms.is_some(),
            "{prefix} was never closed: {p:?}"
        );
        assert!(
            p.leaked <= LEAK_BOUND,
            "{prefix}: {} sends leaked, bound {LEAK_BOUND}",
            p.leaked
        );
        // Closed early in the burst: most attempts refused.
        assert!(p.attempts > 3 * p.leaked, "{prefix}: {p:?}");
        let closure = &r.closed[prefix];
        assert_eq!(closure.reason, Reason::PrefixConversionCollapse);
    }
    assert!(
        r.false_block_rate() < FALSE_BLOCK_LIMIT,
        "{} of {} legitimate verifications blocked",
        r.legit_blocked,
        r.legit_verifications
    );
    assert!(
        r.closed.keys().all(|p| pumped.contains(p)),
        "legitimate prefixes closed: {:?}",
        r.closed.keys().collect::<Vec<_>>()
    );
    // Not a vacuous pass: the legitimate traffic was heavy enough, in enough
    // prefixes, to be judged at all (at least twice the minimum in some hour).
    let judged = busy_legit_prefixes(trace, 2 * PumpingPolicy::default().min_sends);
    assert!(
        judged >= min_judged,
        "only {judged} legitimate prefixes were ever judged"
    );
}

/// Prints what the legitimate part of the trace is made of.
fn describe(trace: &Trace) {
    let legit = |e: &&trace::TraceEvent| trace.verifications[e.verification as usize].legit;
    let count = |kind| {
        trace
            .events
            .iter()
            .filter(legit)
            .filter(|e| e.kind == kind)
            .count()
    };
    let (sends, approvals) = (count(Kind::Send), count(Kind::Approval));
    let verifications = trace.verifications.iter().filter(|v| v.legit).count();
    let mut prefixes = BTreeSet::new();
    let mut per_country: BTreeMap<u16, usize> = BTreeMap::new();
    for v in trace.verifications.iter().filter(|v| v.legit) {
        prefixes.insert(&v.prefix);
        *per_country.entry(v.prefix.country_code()).or_default() += 1;
    }
    println!(
        "trace: {} legitimate prefixes; approvals {approvals} = {:.1} % of {verifications} verifications, {:.1} % of {sends} sends",
        prefixes.len(),
        100.0 * approvals as f64 / verifications as f64,
        100.0 * approvals as f64 / sends as f64,
    );
    println!("legitimate verifications per country: {per_country:?}");
    println!(
        "legitimate prefixes with at least 40 sends in some hour: {}",
        busy_legit_prefixes(trace, 40)
    );
}

/// Legitimate prefixes that had at least `sends` sends within some clock hour.
fn busy_legit_prefixes(trace: &Trace, sends: u64) -> usize {
    let mut per_hour: HashMap<(&Prefix, i64), u64> = HashMap::new();
    for e in trace.events.iter().filter(|e| e.kind == Kind::Send) {
        let v = &trace.verifications[e.verification as usize];
        if v.legit {
            *per_hour.entry((&v.prefix, e.at / 3_600_000)).or_default() += 1;
        }
    }
    per_hour
        .into_iter()
        .filter(|(_, n)| *n >= sends)
        .map(|((p, _), _)| p)
        .collect::<BTreeSet<_>>()
        .len()
}

fn memory() -> Arc<dyn Counters> {
    Arc::new(MemoryCounters::default())
}

/// A Redis connection under a fresh key namespace, or `None` when
/// `RINGFENCE_TEST_REDIS_URL` is unset. Panics if it is set and Redis does not answer.
async fn redis(namespace: &str) -> Option<Arc<dyn Counters>> {
    let url = std::env::var("RINGFENCE_TEST_REDIS_URL")
        .ok()
        .filter(|u| !u.is_empty())?;
    let c = RedisCounters::connect_with_timeout(&url, Duration::from_secs(5))
        .await
        .unwrap_or_else(|e| panic!("RINGFENCE_TEST_REDIS_URL is set but unusable: {e}"));
    c.ping().await.unwrap_or_else(|e| {
        panic!("RINGFENCE_TEST_REDIS_URL is set but Redis does not answer: {e}")
    });
    Some(Arc::new(Namespaced::new(Arc::new(c), namespace)))
}

fn fresh_namespace() -> String {
    format!("test:{:016x}", rand::random::<u64>())
}

/// Prefixes every key, so that runs sharing one Redis (the trace's times are fixed,
/// and closures outlive a run) never see each other's state. Counts the reads of
/// stored values (one per assessment that reads the counters), which may be slowed
/// down to make concurrent assessments overlap.
struct Namespaced {
    inner: Arc<dyn Counters>,
    namespace: String,
    value_reads: AtomicUsize,
    read_delay: Duration,
}

impl Namespaced {
    fn new(inner: Arc<dyn Counters>, namespace: &str) -> Self {
        Self {
            inner,
            namespace: namespace.to_owned(),
            value_reads: AtomicUsize::new(0),
            read_delay: Duration::ZERO,
        }
    }

    fn key(&self, key: &str) -> String {
        format!("{}:{key}", self.namespace)
    }

    fn value_reads(&self) -> usize {
        self.value_reads.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl Counters for Namespaced {
    async fn gcra_cost(
        &self,
        key: &str,
        rate: Rate,
        cost: u32,
        now: Millis,
    ) -> CountersResult<GcraDecision> {
        self.inner.gcra_cost(&self.key(key), rate, cost, now).await
    }

    async fn gcra_peek(&self, key: &str, rate: Rate, now: Millis) -> CountersResult<GcraDecision> {
        self.inner.gcra_peek(&self.key(key), rate, now).await
    }

    async fn gcra_refund(
        &self,
        key: &str,
        rate: Rate,
        cost: u32,
        now: Millis,
    ) -> CountersResult<()> {
        self.inner
            .gcra_refund(&self.key(key), rate, cost, now)
            .await
    }

    async fn incr_window(
        &self,
        key: &str,
        window_ms: i64,
        by: u64,
        now: Millis,
    ) -> CountersResult<u64> {
        self.inner
            .incr_window(&self.key(key), window_ms, by, now)
            .await
    }

    async fn get_window(&self, key: &str, window_ms: i64, now: Millis) -> CountersResult<u64> {
        self.inner.get_window(&self.key(key), window_ms, now).await
    }

    async fn put_if_absent(
        &self,
        key: &str,
        value: &str,
        ttl_ms: i64,
        now: Millis,
    ) -> CountersResult<Stored> {
        self.inner
            .put_if_absent(&self.key(key), value, ttl_ms, now)
            .await
    }

    async fn get_value(&self, key: &str, now: Millis) -> CountersResult<Option<String>> {
        self.value_reads.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(self.read_delay).await;
        self.inner.get_value(&self.key(key), now).await
    }

    async fn ping(&self) -> CountersResult<()> {
        self.inner.ping().await
    }

    fn backend(&self) -> &'static str {
        self.inner.backend()
    }

    /// Slowed-down reads are shared like a server's.
    fn remote(&self) -> bool {
        self.inner.remote() || !self.read_delay.is_zero()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_closes_every_pumped_prefix_and_spares_legitimate_traffic() {
    let config = TraceConfig::default();
    let trace = trace::generate(&config);
    replay_policy().validate().expect("valid policy");
    let detector = PumpingDetector::new(memory(), replay_policy());
    let report = replay(&trace, &[detector]).await;
    report.print("memory counters, one instance");
    describe(&trace);
    assert_pumping_stopped_and_legit_spared(&config, &trace, &report, 10);
    // Only the closings themselves were events: no budget was reached.
    assert_eq!(report.events.len(), report.closed.len());
}

/// A shorter trace for Redis, where every event is a round trip: 2 h, pumping from
/// minute 50 for 25 minutes, a sixth of the legitimate volume at the same rate.
fn short_trace_config() -> TraceConfig {
    TraceConfig {
        duration_ms: 120 * 60_000,
        legit_verifications: 2_000,
        pumping_offset_ms: 50 * 60_000,
        pumping_duration_ms: 25 * 60_000,
        ..TraceConfig::default()
    }
}

/// Two instances sharing Redis, taking turns, decide exactly as one instance on
/// memory counters does.
#[tokio::test]
async fn redis_two_instances_replay_exactly_like_memory() {
    let ns = fresh_namespace();
    let (Some(a), Some(b)) = (redis(&ns).await, redis(&ns).await) else {
        eprintln!("RINGFENCE_TEST_REDIS_URL unset: Redis not tested");
        return;
    };
    let config = short_trace_config();
    let trace = trace::generate(&config);
    let on_memory = replay(&trace, &[PumpingDetector::new(memory(), replay_policy())]).await;
    let on_redis = replay(
        &trace,
        &[
            PumpingDetector::new(a, replay_policy()),
            PumpingDetector::new(b, replay_policy()),
        ],
    )
    .await;
    on_redis.print("redis counters, two instances");
    assert_pumping_stopped_and_legit_spared(&config, &trace, &on_redis, 3);
    assert_eq!(on_redis, on_memory);
}

/// Monitor mode blocks nothing, and reports exactly the prefixes enforce mode closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitor_mode_watches_the_same_prefixes_and_blocks_nothing() {
    let trace = trace::generate(&TraceConfig::default());
    let policy = PumpingPolicy {
        mode: Mode::Monitor,
        ..replay_policy()
    };
    let report = replay(&trace, &[PumpingDetector::new(memory(), policy)]).await;
    assert_eq!(report.legit_sends_blocked, 0);
    assert!(report.pumped.values().all(|p| p.leaked == p.attempts));
    let watched: BTreeSet<_> = report.closed.keys().cloned().collect();
    let pumped: BTreeSet<_> = TraceConfig::default().pumped.into_iter().collect();
    assert_eq!(watched, pumped);
    // No closing; the pumping, not stopped, reaches the country budgets of 998.
    assert!(report
        .events
        .iter()
        .all(|e| matches!(e, Event::PrefixWatched { .. } | Event::BudgetReached { .. })));
    // Watched, not closed, for the rest of the burst.
    assert!(
        report.watched_verdicts > 1_000,
        "{}",
        report.watched_verdicts
    );
}

/// A prefix with no approvals, fed to one instance, closed by a crowd of concurrent
/// assessments on both: exactly one of them reports the closing, and all see the
/// same closure, for the whole cool-down and no longer.
async fn closing_is_reported_once_and_seen_by_all(a: Arc<dyn Counters>, b: Arc<dyn Counters>) {
    let a = PumpingDetector::new(a, PumpingPolicy::default());
    let b = PumpingDetector::new(b, PumpingPolicy::default());
    let prefix = Prefix::new(998, "935").unwrap();
    let t0: Millis = 1_767_225_600_000;
    for i in 0..40 {
        a.record_send(&prefix, t0 + i * 1_000).await.unwrap();
    }
    // Right after the sends, most are still within the approval lag: open.
    let early = b.assess(&prefix, t0 + 40_000).await.unwrap();
    assert_eq!(early.verdict, Verdict::Open, "young sends judged");

    let now = t0 + 40_000 + 3 * 60_000;
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let d = if i % 2 == 0 { a.clone() } else { b.clone() };
            let prefix = prefix.clone();
            tokio::spawn(async move { d.assess(&prefix, now).await.unwrap() })
        })
        .collect();
    let outcomes: Vec<_> = futures::future::join_all(tasks)
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .collect();
    let events: Vec<_> = outcomes.iter().flat_map(|o| o.events.clone()).collect();
    assert_eq!(events.len(), 1, "{events:?}");
    let Event::PrefixClosed {
        prefix: closed,
        closure,
    } = &events[0]
    else {
        panic!("{events:?}")
    };
    assert_eq!(closed, &prefix);
    assert_eq!(closure.reason.code(), "prefix_conversion_collapse");
    assert_eq!(closure.until, now + 12 * 3_600_000);
    let Figures::Conversion(f) = &closure.figures else {
        panic!("{closure:?}")
    };
    assert_eq!(f.approvals, 0);
    assert!(f.sends >= 20 && f.sends <= 40, "{f:?}");
    assert_eq!(f.baseline, 0.5, "no country traffic: the floor");
    for o in &outcomes {
        assert_eq!(o.verdict, Verdict::Closed(closure.clone()));
    }

    // Closed on both for the cool-down, with no new event; open after it.
    let just_before = closure.until - 1;
    for d in [&a, &b] {
        let later = d.assess(&prefix, just_before).await.unwrap();
        assert_eq!(later.verdict, Verdict::Closed(closure.clone()));
        assert!(later.events.is_empty());
    }
    let after = b.assess(&prefix, closure.until).await.unwrap();
    assert_eq!(after.verdict, Verdict::Open);
    // Another prefix of the same country was never touched.
    let other = Prefix::new(998, "900").unwrap();
    assert_eq!(a.assess(&other, now).await.unwrap().verdict, Verdict::Open);
}

/// The spend breaker: a country's budget, then the global one, each reported once by
/// the send that reached it, each closing until the end of the UTC day.
async fn budgets_trip_the_breaker_until_the_day_ends(ca: Arc<dyn Counters>, cb: Arc<dyn Counters>) {
    let policy = |mode| PumpingPolicy {
        mode,
        spend: SpendPolicy {
            prices_micros: HashMap::from([(998, 100_000)]),
            default_price_micros: 50_000,
            country_budgets_micros: HashMap::from([(998, 1_000_000)]),
            default_country_budget_micros: None,
            global_budget_micros: Some(1_500_000),
        },
        ..PumpingPolicy::default()
    };
    let a = PumpingDetector::new(ca.clone(), policy(Mode::Enforce));
    let b = PumpingDetector::new(cb, policy(Mode::Enforce));
    let uz = Prefix::new(998, "935").unwrap();
    let uk = Prefix::new(44, "790").unwrap();
    // 09:00 UTC; the day ends 15 h later.
    let t0: Millis = 1_767_225_600_000 + 9 * 3_600_000;
    let day_end = 1_767_225_600_000 + DAY_MS;

    let mut events = Vec::new();
    for i in 0..10 {
        assert!(b.assess(&uz, t0 + i).await.unwrap().verdict.allows());
        let d = if i % 2 == 0 { &a } else { &b };
        events.extend(d.record_send(&uz, t0 + i).await.unwrap());
    }
    assert_eq!(
        events,
        [Event::BudgetReached {
            country: Some(998),
            spent_micros: 1_000_000,
            budget_micros: 1_000_000,
            until: day_end,
        }]
    );
    let v = a.assess(&uz, t0 + 10).await.unwrap().verdict;
    let closure = v.closure().expect("closed").clone();
    assert!(!v.allows());
    assert_eq!(closure.reason, Reason::CountryBudgetExceeded);
    assert_eq!(closure.until, day_end);
    assert_eq!(
        closure.figures,
        Figures::Spend {
            spent_micros: 1_000_000,
            budget_micros: 1_000_000
        }
    );
    // Other countries still send, until all of them together reach the global budget.
    let mut events = Vec::new();
    for i in 0..10 {
        assert!(a.assess(&uk, t0 + 20 + i).await.unwrap().verdict.allows());
        events.extend(b.record_send(&uk, t0 + 20 + i).await.unwrap());
    }
    assert_eq!(
        events,
        [Event::BudgetReached {
            country: None,
            spent_micros: 1_500_000,
            budget_micros: 1_500_000,
            until: day_end,
        }]
    );
    let v = b.assess(&uk, t0 + 40).await.unwrap().verdict;
    assert_eq!(v.closure().unwrap().reason, Reason::GlobalBudgetExceeded);
    assert!(!v.allows());
    // The next day starts afresh.
    assert_eq!(a.assess(&uz, day_end).await.unwrap().verdict, Verdict::Open);
    assert_eq!(b.assess(&uk, day_end).await.unwrap().verdict, Verdict::Open);

    // In monitor mode the same state only watches.
    // The same counters, the budgets reached already.
    let m = PumpingDetector::new(ca, policy(Mode::Monitor));
    let v = m.assess(&uz, t0 + 50).await.unwrap().verdict;
    assert!(matches!(v, Verdict::Watched(_)) && v.allows(), "{v:?}");
}

/// Memory counters whose stored-value reads take 50 ms, and a detector on them.
fn slow_reads() -> (Arc<Namespaced>, PumpingDetector) {
    let c = Arc::new(Namespaced {
        read_delay: Duration::from_millis(50),
        ..Namespaced::new(memory(), "flights")
    });
    let d = PumpingDetector::new(c.clone(), PumpingPolicy::default());
    (c, d)
}

/// Concurrent assessments of one prefix share one reading of the counters (a busy
/// prefix is read once per round trip, not once per send); another prefix has its own,
/// and an assessment after the reading ended reads again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_assessments_of_a_prefix_share_one_reading() {
    let (c, d) = slow_reads();
    let (prefix, other) = (
        Prefix::new(44, "790").unwrap(),
        Prefix::new(44, "791").unwrap(),
    );
    let now: Millis = 1_767_225_600_000;
    let crowd = futures::future::join_all((0..10).map(|_| d.assess(&prefix, now)));
    let (crowd, alone) = tokio::join!(crowd, d.assess(&other, now));
    for a in crowd.into_iter().chain([alone]) {
        assert_eq!(a.unwrap().verdict, Verdict::Open);
    }
    assert_eq!(c.value_reads(), 2, "one reading per prefix");
    d.assess(&prefix, now + 1).await.unwrap();
    assert_eq!(c.value_reads(), 3, "the shared reading ended: a new one");
}

/// When the assessment that reads goes away mid-read (its request was dropped), one
/// that waits for its verdict reads instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_assessment_reads_when_the_reader_goes_away() {
    let (c, d) = slow_reads();
    let prefix = Prefix::new(44, "790").unwrap();
    let now: Millis = 1_767_225_600_000;
    let mut reader = Box::pin(d.assess(&prefix, now));
    let mut waiter = Box::pin(d.assess(&prefix, now));
    let tick = Duration::from_millis(10);
    assert!(
        tokio::time::timeout(tick, &mut reader).await.is_err(),
        "reading"
    );
    assert!(
        tokio::time::timeout(tick, &mut waiter).await.is_err(),
        "waiting"
    );
    assert_eq!(c.value_reads(), 1);
    drop(reader);
    assert_eq!(waiter.await.unwrap().verdict, Verdict::Open);
    assert_eq!(c.value_reads(), 2, "the waiter read");
}

macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let c = super::memory();
                    super::$name(c.clone(), c).await;
                }
            )*
        }
        mod redis {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let ns = super::fresh_namespace();
                    match (super::redis(&ns).await, super::redis(&ns).await) {
                        (Some(a), Some(b)) => super::$name(a, b).await,
                        _ => eprintln!("RINGFENCE_TEST_REDIS_URL unset: Redis not tested"),
                    }
                }
            )*
        }
    };
}

on_both_backends!(
    closing_is_reported_once_and_seen_by_all,
    budgets_trip_the_breaker_until_the_day_ends,
);
