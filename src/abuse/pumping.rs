//! SMS-pumping defence: close a number prefix whose send→approve conversion
//! collapses, and stop all sends when a day's spend reaches its budget.
//!
//! Pumping (artificially inflated traffic) sends codes to number ranges whose
//! terminating operator shares the revenue with the fraudster; nobody ever types those
//! codes in. So the signal is conversion — approvals ÷ sends — per **prefix** (country
//! calling code + the first few national digits, [`Prefix`]), judged against the
//! conversion of the prefix's country. A prefix that has had enough sends and whose
//! conversion is, with 99 % confidence, below a fraction of its country's baseline is
//! closed for a cool-down (12 h by default), or only *watched* in monitor mode. A
//! spend breaker (a price per SMS per country, a daily budget per country and
//! overall) stops what the prefix rule misses: many prefixes pumped a little each.
//!
//! What this module guarantees:
//!
//! * **State lives only in the [`Counters`]**: two instances that share Redis count
//!   the same sends, see the same closures and trip the same breakers. A closure is
//!   stored with [`Counters::put_if_absent`], so exactly one instance reports the
//!   event that closed a prefix.
//! * **Time is the caller's `now`**; nothing here reads a clock or sleeps.
//! * **No phone number** is ever a key, a value or a field: a [`Prefix`] keeps at
//!   least [`HIDDEN_DIGITS`] digits of a number out, and at most
//!   [`MAX_PREFIX_DIGITS`] in.
//! * **No side effects**: the calls return the [`Event`]s they cause (this call closed
//!   a prefix, this send tripped a breaker); logging, metrics and webhooks are the
//!   caller's.
//! * **Fail closed**: an error means the counters could not answer; the caller must
//!   treat it as [`Verdict::Closed`].
//!
//! The arithmetic, the defaults and why, and the replay figures are in
//! `docs/abuse.md`.
//!
//! ## Use
//!
//! Before sending, [`PumpingDetector::assess`] the prefix; send only if the verdict
//! [`Verdict::allows`] it, then [`PumpingDetector::record_send`]. Feed delivery receipts
//! to [`PumpingDetector::record_delivery`] (or many at once to
//! [`PumpingDetector::record_deliveries`]) and approved checks to
//! [`PumpingDetector::record_approval`].

pub mod trace;

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use crate::clock::Millis;
use crate::counters::{window_of, Counters, CountersError, CountersResult};

/// The most national digits a prefix holds.
pub const MAX_PREFIX_DIGITS: usize = 6;

/// The fewest digits of a national number that a prefix leaves out (the field's
/// "number without its last 4 digits"), so a prefix never is a whole number.
pub const HIDDEN_DIGITS: usize = 4;

/// The spend breaker's day: UTC days, aligned to the epoch like every counter window.
pub const DAY_MS: i64 = 24 * 3600 * 1000;

const MINUTE_MS: i64 = 60 * 1000;
const HOUR_MS: i64 = 60 * MINUTE_MS;

/// A number prefix: a country calling code and the first few digits of the national
/// significant number, e.g. `44:790`. Built from digits only, and never a whole
/// number.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Prefix {
    country_code: u16,
    digits: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PrefixError {
    #[error("a country calling code is 1 to 999")]
    CountryCode,
    #[error("a prefix holds 1 to 6 national digits, and only digits")]
    Digits,
    #[error("the national number is too short to take a prefix from")]
    TooShort,
}

impl Prefix {
    /// A prefix from its parts: `Prefix::new(44, "790")`.
    pub fn new(country_code: u16, leading_digits: &str) -> Result<Self, PrefixError> {
        if !(1..=999).contains(&country_code) {
            return Err(PrefixError::CountryCode);
        }
        if leading_digits.is_empty()
            || leading_digits.len() > MAX_PREFIX_DIGITS
            || !leading_digits.bytes().all(|b| b.is_ascii_digit())
        {
            return Err(PrefixError::Digits);
        }
        Ok(Self {
            country_code,
            digits: leading_digits.to_owned(),
        })
    }

    /// The prefix of a number: its first `digits` national digits, but never more
    /// than leaves [`HIDDEN_DIGITS`] out. The number is only read, never kept.
    pub fn of_number(
        country_code: u16,
        national_number: &str,
        digits: usize,
    ) -> Result<Self, PrefixError> {
        if !national_number.bytes().all(|b| b.is_ascii_digit()) {
            return Err(PrefixError::Digits);
        }
        let take = digits
            .min(MAX_PREFIX_DIGITS)
            .min(national_number.len().saturating_sub(HIDDEN_DIGITS));
        if take == 0 {
            return Err(PrefixError::TooShort);
        }
        Self::new(country_code, &national_number[..take])
    }

    pub fn country_code(&self) -> u16 {
        self.country_code
    }

    pub fn leading_digits(&self) -> &str {
        &self.digits
    }

    /// The counters key of this prefix, `pp:44:790`; the detector appends to it.
    pub fn key(&self) -> String {
        ["pp:", &self.country_code.to_string(), ":", &self.digits].concat()
    }
}

/// `44:790`.
impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.country_code, self.digits)
    }
}

/// What a judgement does: close (`Enforce`) or only report (`Monitor`, to try a
/// policy on live traffic first).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    #[default]
    Enforce,
    Monitor,
}

/// How prefixes are judged. The defaults and the reasons for them are in
/// `docs/abuse.md`.
#[derive(Debug, Clone, PartialEq)]
pub struct PumpingPolicy {
    /// Enforce (close) or monitor (report only). Applies to the spend breaker too.
    pub mode: Mode,
    /// National digits in a prefix, per country calling code; others use
    /// `default_prefix_digits` (3).
    pub prefix_digits: HashMap<u16, usize>,
    pub default_prefix_digits: usize,
    /// The sliding window over which a prefix's conversion is judged (1 h).
    pub window_ms: i64,
    /// How long a send is given to be approved before it counts (2 min): sends younger
    /// than this are left out of the judgement, since people take seconds to minutes
    /// to type a code.
    pub approval_lag_ms: i64,
    /// No judgement before this many sends older than the lag (20).
    pub min_sends: u64,
    /// Close when conversion is below `collapse_ratio × baseline` (0.3) …
    pub collapse_ratio: f64,
    /// … with this confidence: the one-sided z-score of the Wilson upper bound that
    /// must lie below it (2.326, 99 %).
    pub confidence_z: f64,
    /// The window of a country's own conversion, the observed baseline (24 h).
    pub baseline_window_ms: i64,
    /// Fewer country sends than this in the baseline window: the observed baseline
    /// is not used, only the floor (200).
    pub baseline_min_sends: u64,
    /// The floor of the baseline per country; others use `default_baseline_floor`
    /// (0.5). The baseline is `max(floor, observed)`, so pumping that dominates a
    /// country's traffic cannot drag its own yardstick down.
    pub baseline_floor: HashMap<u16, f64>,
    pub default_baseline_floor: f64,
    /// How long a closed prefix stays closed (12 h).
    pub cooldown_ms: i64,
    pub spend: SpendPolicy,
}

impl Default for PumpingPolicy {
    fn default() -> Self {
        Self {
            mode: Mode::Enforce,
            prefix_digits: HashMap::new(),
            default_prefix_digits: 3,
            window_ms: HOUR_MS,
            approval_lag_ms: 2 * MINUTE_MS,
            min_sends: 20,
            collapse_ratio: 0.3,
            confidence_z: 2.326,
            baseline_window_ms: 24 * HOUR_MS,
            baseline_min_sends: 200,
            baseline_floor: HashMap::new(),
            default_baseline_floor: 0.5,
            cooldown_ms: 12 * HOUR_MS,
            // A flat 0.05 a message until a price table is configured: what an
            // international SMS costs in order of magnitude, so estimates are not zero.
            spend: SpendPolicy {
                default_price_micros: 50_000,
                ..SpendPolicy::default()
            },
        }
    }
}

impl PumpingPolicy {
    /// The prefix of a number under this policy's digits per country.
    pub fn prefix_of(
        &self,
        country_code: u16,
        national_number: &str,
    ) -> Result<Prefix, PrefixError> {
        let digits = self
            .prefix_digits
            .get(&country_code)
            .copied()
            .unwrap_or(self.default_prefix_digits);
        Prefix::of_number(country_code, national_number, digits)
    }

    /// Checks the policy once, at start-up; the error names the setting at fault.
    pub fn validate(&self) -> Result<(), PolicyError> {
        let bad = |setting: &'static str, rule: &'static str| Err(PolicyError { setting, rule });
        let digits_ok = |d: usize| (1..=MAX_PREFIX_DIGITS).contains(&d);
        if !digits_ok(self.default_prefix_digits)
            || !self.prefix_digits.values().all(|&d| digits_ok(d))
        {
            return bad("prefix_digits", "1 to 6 digits");
        }
        if self.window_ms <= 0 || self.baseline_window_ms <= 0 || self.cooldown_ms <= 0 {
            return bad(
                "window_ms / baseline_window_ms / cooldown_ms",
                "must be positive",
            );
        }
        if self.approval_lag_ms <= 0 || self.approval_lag_ms >= self.window_ms {
            return bad("approval_lag_ms", "positive and shorter than window_ms");
        }
        if !(self.collapse_ratio > 0.0 && self.collapse_ratio <= 1.0) {
            return bad("collapse_ratio", "above 0 and at most 1");
        }
        if !(self.confidence_z >= 0.0 && self.confidence_z.is_finite()) {
            return bad("confidence_z", "a non-negative number");
        }
        let unit = |f: f64| (0.0..=1.0).contains(&f);
        if !unit(self.default_baseline_floor) || !self.baseline_floor.values().all(|&f| unit(f)) {
            return bad("baseline_floor", "between 0 and 1");
        }
        Ok(())
    }

    fn floor(&self, country_code: u16) -> f64 {
        self.baseline_floor
            .get(&country_code)
            .copied()
            .unwrap_or(self.default_baseline_floor)
    }
}

/// A setting of [`PumpingPolicy`] out of its range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("pumping policy: {setting} must be {rule}")]
pub struct PolicyError {
    pub setting: &'static str,
    pub rule: &'static str,
}

/// The spend breaker: what one SMS costs per country, and how much a UTC day may
/// cost per country and in all. Amounts are micro-units of one currency
/// (1 000 000 = 1.00). No budget (`None`) means no limit.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SpendPolicy {
    pub prices_micros: HashMap<u16, u64>,
    /// The price of a country missing from the table.
    pub default_price_micros: u64,
    pub country_budgets_micros: HashMap<u16, u64>,
    pub default_country_budget_micros: Option<u64>,
    pub global_budget_micros: Option<u64>,
}

impl SpendPolicy {
    pub fn price_micros(&self, country_code: u16) -> u64 {
        self.prices_micros
            .get(&country_code)
            .copied()
            .unwrap_or(self.default_price_micros)
    }

    pub fn country_budget_micros(&self, country_code: u16) -> Option<u64> {
        self.country_budgets_micros
            .get(&country_code)
            .copied()
            .or(self.default_country_budget_micros)
    }
}

/// Why a prefix is closed; [`Reason::code`] is the stable, machine-readable form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// The prefix's conversion fell far below its country's baseline.
    PrefixConversionCollapse,
    /// The day's spend on the prefix's country reached its budget.
    CountryBudgetExceeded,
    /// The day's spend on all countries reached the global budget.
    GlobalBudgetExceeded,
}

impl Reason {
    pub const fn code(self) -> &'static str {
        match self {
            Self::PrefixConversionCollapse => "prefix_conversion_collapse",
            Self::CountryBudgetExceeded => "country_budget_exceeded",
            Self::GlobalBudgetExceeded => "global_budget_exceeded",
        }
    }

    fn from_code(code: &str) -> Option<Self> {
        [
            Self::PrefixConversionCollapse,
            Self::CountryBudgetExceeded,
            Self::GlobalBudgetExceeded,
        ]
        .into_iter()
        .find(|r| r.code() == code)
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// The figures behind a closure, so that every decision can be explained.
#[derive(Debug, Clone, PartialEq)]
pub enum Figures {
    Conversion(ConversionFigures),
    Spend {
        /// The day's spend when judged, micro-units.
        spent_micros: u64,
        budget_micros: u64,
    },
}

/// A prefix's conversion as judged, over the policy's window.
#[derive(Debug, Clone, PartialEq)]
pub struct ConversionFigures {
    /// Sends old enough to have been approved (older than the approval lag).
    pub sends: u64,
    /// Approvals in the window (at most `sends`).
    pub approvals: u64,
    /// Delivery receipts in the window; reported, not judged (pumped messages are
    /// delivered: that is how the fraudster is paid).
    pub deliveries: u64,
    /// `approvals / sends`.
    pub conversion: f64,
    /// The Wilson upper bound of the conversion at the policy's confidence.
    pub upper_bound: f64,
    /// The country's baseline conversion: `max(floor, observed)`.
    pub baseline: f64,
    /// `collapse_ratio × baseline`: the upper bound was below it.
    pub threshold: f64,
}

/// A closed (or, in monitor mode, watched) prefix: why and until when.
#[derive(Debug, Clone, PartialEq)]
pub struct Closure {
    pub reason: Reason,
    /// Caller time (ms) from which sends are allowed again.
    pub until: Millis,
    pub figures: Figures,
}

/// The answer of [`PumpingDetector::assess`].
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Open,
    /// Do not send.
    Closed(Closure),
    /// Monitor mode: this would be closed; send, and report.
    Watched(Closure),
}

impl Verdict {
    /// Whether the message may be sent (open, or only watched).
    pub fn allows(&self) -> bool {
        !matches!(self, Self::Closed(_))
    }

    pub fn closure(&self) -> Option<&Closure> {
        match self {
            Self::Open => None,
            Self::Closed(c) | Self::Watched(c) => Some(c),
        }
    }
}

/// Something that just happened, returned by the call that caused it — once, on
/// exactly one instance — for the caller to log, count or send on.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// This assessment closed the prefix (enforce mode).
    PrefixClosed { prefix: Prefix, closure: Closure },
    /// Monitor mode: this assessment would have closed the prefix.
    PrefixWatched { prefix: Prefix, closure: Closure },
    /// This send took the day's spend to its budget: of the country when `country`
    /// is set, of all countries otherwise. In monitor mode nothing is blocked.
    BudgetReached {
        country: Option<u16>,
        spent_micros: u64,
        budget_micros: u64,
        until: Millis,
    },
}

/// What an assessment decided, and the events it caused.
#[derive(Debug, Clone, PartialEq)]
pub struct Assessment {
    pub verdict: Verdict,
    pub events: Vec<Event>,
}

/// The detector. Cheap to clone; its state is in the counters, apart from the
/// assessments in flight that concurrent callers share.
#[derive(Clone)]
pub struct PumpingDetector {
    counters: Arc<dyn Counters>,
    policy: Arc<PumpingPolicy>,
    /// The assessments in flight, by prefix: only on counters in a server
    /// ([`Counters::remote`]); in-process counters are read by every call.
    flights: Option<Arc<Flights>>,
}

type Flights = Mutex<HashMap<Prefix, Arc<Flight>>>;

/// One prefix's assessment in flight: the first caller reads the counters, and callers
/// for the same prefix that come while it reads take its verdict (see
/// [`PumpingDetector::assess`]).
type Flight = tokio::sync::OnceCell<CountersResult<Verdict>>;

impl fmt::Debug for PumpingDetector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PumpingDetector")
            .field("backend", &self.counters.backend())
            .field("policy", &self.policy)
            .finish()
    }
}

/// Every counters key of one prefix: `pp:<cc>:<digits>:…` for the prefix,
/// `pc:<cc>:…` for its country, `spend:…` for the breaker. Written one after another
/// into one string (a start reads and counts them: one allocation instead of twelve).
struct Keys {
    text: String,
    /// Where each key ends in `text`, in the order of [`Keys::of`].
    ends: [usize; 10],
}

/// The counter of a prefix's delivered messages: the prefix's key and this.
const DELIVERED: &str = ":dlvr";

fn delivered_key(prefix: &Prefix) -> String {
    [&prefix.key(), DELIVERED].concat()
}

impl Keys {
    fn of(prefix: &Prefix) -> Self {
        let mut cc = itoa::Buffer::new();
        let cc = cc.format(prefix.country_code());
        let digits = prefix.leading_digits();
        let mut text = String::with_capacity(160);
        let mut ends = [0; 10];
        let keys: [&[&str]; 10] = [
            &["pp:", cc, ":", digits, ":sent"],
            &["pp:", cc, ":", digits, ":sent-recent"],
            &["pp:", cc, ":", digits, ":appr"],
            &["pp:", cc, ":", digits, DELIVERED],
            &["pp:", cc, ":", digits, ":closed"],
            &["pp:", cc, ":", digits, ":watched"],
            &["pc:", cc, ":sent"],
            &["pc:", cc, ":appr"],
            &["spend:cc:", cc],
            &["spend:all"],
        ];
        for (parts, end) in keys.iter().zip(&mut ends) {
            parts.iter().for_each(|p| text.push_str(p));
            *end = text.len();
        }
        Self { text, ends }
    }

    fn key(&self, i: usize) -> &str {
        let start = i.checked_sub(1).map_or(0, |before| self.ends[before]);
        &self.text[start..self.ends[i]]
    }

    fn sent(&self) -> &str {
        self.key(0)
    }

    /// The same sends, counted over the approval lag only.
    fn sent_recent(&self) -> &str {
        self.key(1)
    }

    fn approved(&self) -> &str {
        self.key(2)
    }

    fn delivered(&self) -> &str {
        self.key(3)
    }

    fn closed(&self) -> &str {
        self.key(4)
    }

    fn watched(&self) -> &str {
        self.key(5)
    }

    fn country_sent(&self) -> &str {
        self.key(6)
    }

    fn country_approved(&self) -> &str {
        self.key(7)
    }

    fn spend_country(&self) -> &str {
        self.key(8)
    }

    fn spend_all(&self) -> &str {
        self.key(9)
    }
}

impl PumpingDetector {
    pub fn new(counters: Arc<dyn Counters>, policy: PumpingPolicy) -> Self {
        Self {
            flights: counters.remote().then(Default::default),
            counters,
            policy: Arc::new(policy),
        }
    }

    pub fn policy(&self) -> &PumpingPolicy {
        &self.policy
    }

    /// Counts a message sent to `prefix` and what it cost. Returns a
    /// [`Event::BudgetReached`] for each budget this send reached.
    pub async fn record_send(&self, prefix: &Prefix, now: Millis) -> CountersResult<Vec<Event>> {
        let p = &self.policy;
        let c = &*self.counters;
        let cc = prefix.country_code();
        let k = Keys::of(prefix);
        let price = p.spend.price_micros(cc);
        // One transaction on Redis.
        let counts = c
            .incr_windows(
                &[
                    (k.sent(), p.window_ms, 1),
                    (k.sent_recent(), p.approval_lag_ms, 1),
                    (k.country_sent(), p.baseline_window_ms, 1),
                    (k.spend_country(), DAY_MS, price),
                    (k.spend_all(), DAY_MS, price),
                ],
                now,
            )
            .await?;
        let (spent_cc, spent_all) = (counts[3], counts[4]);
        let until = day_end(now);
        let mut events = Vec::new();
        // Counts are atomic, so exactly one send sees the budget crossed.
        let crossed = |spent: u64, budget: u64| spent >= budget && spent - price < budget;
        if let Some(budget) = p.spend.country_budget_micros(cc) {
            if crossed(spent_cc, budget) {
                events.push(Event::BudgetReached {
                    country: Some(cc),
                    spent_micros: spent_cc,
                    budget_micros: budget,
                    until,
                });
            }
        }
        if let Some(budget) = p.spend.global_budget_micros {
            if crossed(spent_all, budget) {
                events.push(Event::BudgetReached {
                    country: None,
                    spent_micros: spent_all,
                    budget_micros: budget,
                    until,
                });
            }
        }
        Ok(events)
    }

    /// Counts a delivery receipt for a message to `prefix`.
    pub async fn record_delivery(&self, prefix: &Prefix, now: Millis) -> CountersResult<()> {
        self.record_deliveries(&[(prefix.clone(), 1)], now).await
    }

    /// Counts delivery receipts, `n` for each `(prefix, n)`, in one write of the
    /// counters (a sink's batch of messages).
    pub async fn record_deliveries(
        &self,
        counts: &[(Prefix, u64)],
        now: Millis,
    ) -> CountersResult<()> {
        let keys: Vec<String> = counts.iter().map(|(p, _)| delivered_key(p)).collect();
        let incrs: Vec<(&str, i64, u64)> = keys
            .iter()
            .zip(counts)
            .map(|(k, (_, n))| (k.as_str(), self.policy.window_ms, *n))
            .collect();
        self.counters.incr_windows(&incrs, now).await?;
        Ok(())
    }

    /// Counts an approved verification of a number in `prefix`.
    pub async fn record_approval(&self, prefix: &Prefix, now: Millis) -> CountersResult<()> {
        let p = &self.policy;
        let c = &*self.counters;
        let k = Keys::of(prefix);
        c.incr_windows(
            &[
                (k.approved(), p.window_ms, 1),
                (k.country_approved(), p.baseline_window_ms, 1),
            ],
            now,
        )
        .await?;
        Ok(())
    }

    /// Whether a message to `prefix` may be sent now. Closes the prefix (and says so
    /// in the events) when its conversion has collapsed. An error means the counters
    /// could not answer: treat it as closed.
    ///
    /// On counters in a server (Redis), concurrent assessments of one prefix share one
    /// reading: a call that comes while another reads takes that reading's verdict,
    /// without the events (they are the reader's to report, once). A busy prefix is
    /// then read once per round trip instead of once per send; a verdict is at most
    /// one read old, as any verdict is by the time its send goes out. Should the
    /// reader's request go away mid-read, a waiting caller reads instead. In-process
    /// counters are read by every call: waiting would cost more than reading.
    pub async fn assess(&self, prefix: &Prefix, now: Millis) -> CountersResult<Assessment> {
        let Some(flights) = &self.flights else {
            return self.read(prefix, now).await;
        };
        let flight = {
            let mut flights = flights.lock().unwrap_or_else(|e| e.into_inner());
            flights.entry(prefix.clone()).or_default().clone()
        };
        let mut events = None;
        let verdict = flight
            .get_or_init(|| async {
                self.read(prefix, now).await.map(|a| {
                    events = Some(a.events);
                    a.verdict
                })
            })
            .await
            .clone();
        {
            // The first caller back ends the flight: later ones read afresh.
            let mut flights = flights.lock().unwrap_or_else(|e| e.into_inner());
            if flights.get(prefix).is_some_and(|f| Arc::ptr_eq(f, &flight)) {
                flights.remove(prefix);
            }
        }
        Ok(Assessment {
            verdict: verdict?,
            events: events.unwrap_or_default(),
        })
    }

    /// [`Self::assess`] itself: reads the counters and judges.
    async fn read(&self, prefix: &Prefix, now: Millis) -> CountersResult<Assessment> {
        let p = &self.policy;
        let c = &*self.counters;
        let cc = prefix.country_code();
        let k = Keys::of(prefix);
        let mark = match p.mode {
            Mode::Enforce => k.closed(),
            Mode::Monitor => k.watched(),
        };
        // Every read at once: one round trip on Redis (the mark's HMGET and one MGET).
        let spends = [
            (k.spend_all(), DAY_MS, now),
            (k.spend_country(), DAY_MS, now),
        ];
        let slidings = [
            (k.sent(), p.window_ms),
            (k.sent_recent(), p.approval_lag_ms),
            (k.approved(), p.window_ms),
            (k.delivered(), p.window_ms),
            (k.country_sent(), p.baseline_window_ms),
            (k.country_approved(), p.baseline_window_ms),
        ];
        let (closed, read) = tokio::join!(
            c.get_value(mark, now),
            c.get_windows_and_slidings(&spends, &slidings, now),
        );
        if let Some(stored) = closed? {
            return Ok(self.assessment(decode(&stored)?, Vec::new()));
        }
        let (spent, counts) = read?;

        let spend = |reason, spent_micros, budget_micros| Closure {
            reason,
            until: day_end(now),
            figures: Figures::Spend {
                spent_micros,
                budget_micros,
            },
        };
        let (spent_all, spent_cc) = (spent[0], spent[1]);
        if let Some(budget) = p.spend.global_budget_micros {
            if spent_all >= budget {
                let closure = spend(Reason::GlobalBudgetExceeded, spent_all, budget);
                return Ok(self.assessment(closure, Vec::new()));
            }
        }
        if let Some(budget) = p.spend.country_budget_micros(cc) {
            if spent_cc >= budget {
                let closure = spend(Reason::CountryBudgetExceeded, spent_cc, budget);
                return Ok(self.assessment(closure, Vec::new()));
            }
        }

        let baseline = baseline(p, cc, counts[4], counts[5]);
        let counts = PrefixCounts {
            sent: counts[0],
            recent: counts[1],
            approved: counts[2],
            delivered: counts[3],
        };
        let Some(figures) = judge(p, counts, baseline) else {
            return Ok(Assessment {
                verdict: Verdict::Open,
                events: Vec::new(),
            });
        };
        let closure = Closure {
            reason: Reason::PrefixConversionCollapse,
            until: now + p.cooldown_ms,
            figures: Figures::Conversion(figures),
        };
        // Another instance may close the same prefix at the same moment: one stores,
        // and everyone reports what was stored.
        let stored = c
            .put_if_absent(mark, &encode(&closure), p.cooldown_ms, now)
            .await?;
        let closure = decode(&stored.value)?;
        let mut events = Vec::new();
        if stored.created {
            let prefix = prefix.clone();
            let closure = closure.clone();
            events.push(match p.mode {
                Mode::Enforce => Event::PrefixClosed { prefix, closure },
                Mode::Monitor => Event::PrefixWatched { prefix, closure },
            });
        }
        Ok(self.assessment(closure, events))
    }

    fn assessment(&self, closure: Closure, events: Vec<Event>) -> Assessment {
        let verdict = match self.policy.mode {
            Mode::Enforce => Verdict::Closed(closure),
            Mode::Monitor => Verdict::Watched(closure),
        };
        Assessment { verdict, events }
    }
}

fn day_end(now: Millis) -> Millis {
    let (_, left) = window_of(DAY_MS, now);
    now + left
}

/// A prefix's counts over the policy's windows.
#[derive(Debug, Clone, Copy)]
struct PrefixCounts {
    /// Sends in the window.
    sent: u64,
    /// Sends in the approval lag (the most recent ones).
    recent: u64,
    approved: u64,
    delivered: u64,
}

/// The country's baseline: its observed conversion over the baseline window when it
/// has enough sends, never below the floor.
fn baseline(p: &PumpingPolicy, country_code: u16, sent: u64, approved: u64) -> f64 {
    let floor = p.floor(country_code);
    if sent < p.baseline_min_sends.max(1) {
        return floor;
    }
    let observed = (approved as f64 / sent as f64).min(1.0);
    observed.max(floor)
}

/// The figures if the prefix must be closed, `None` if it stays open.
///
/// Sends younger than the approval lag are left out: their approvals may still
/// come. Approvals in the window may include some of those young sends' (fast
/// approvers), which only errs towards leaving a prefix open.
fn judge(p: &PumpingPolicy, counts: PrefixCounts, baseline: f64) -> Option<ConversionFigures> {
    let sends = counts.sent.saturating_sub(counts.recent);
    if sends < p.min_sends.max(1) {
        return None;
    }
    let approvals = counts.approved.min(sends);
    let upper_bound = wilson_upper(approvals, sends, p.confidence_z);
    let threshold = p.collapse_ratio * baseline;
    (upper_bound < threshold).then(|| ConversionFigures {
        sends,
        approvals,
        deliveries: counts.delivered,
        conversion: approvals as f64 / sends as f64,
        upper_bound,
        baseline,
        threshold,
    })
}

/// The upper end of the Wilson score interval for `successes` out of `trials` at
/// z-score `z`. With no success it is `z² / (n + z²)`.
fn wilson_upper(successes: u64, trials: u64, z: f64) -> f64 {
    let n = trials as f64;
    let p = successes as f64 / n;
    let z2 = z * z;
    let centre = p + z2 / (2.0 * n);
    let spread = z * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt();
    ((centre + spread) / (1.0 + z2 / n)).min(1.0)
}

/// A closure as stored in the counters (fields separated by spaces; floats rounded,
/// so that every instance reads back exactly the same figures).
fn encode(c: &Closure) -> String {
    match &c.figures {
        Figures::Conversion(f) => format!(
            "1 {} {} {} {} {} {:.6} {:.6} {:.6}",
            c.until,
            c.reason.code(),
            f.sends,
            f.approvals,
            f.deliveries,
            f.upper_bound,
            f.baseline,
            f.threshold
        ),
        Figures::Spend {
            spent_micros,
            budget_micros,
        } => format!(
            "1 {} {} {spent_micros} {budget_micros}",
            c.until,
            c.reason.code()
        ),
    }
}

fn decode(s: &str) -> CountersResult<Closure> {
    let bad = || CountersError::Backend("pumping: a stored closure is unreadable".into());
    let f: Vec<&str> = s.split(' ').collect();
    let int = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).ok_or_else(bad);
    let float = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).ok_or_else(bad);
    if f.first() != Some(&"1") {
        return Err(bad());
    }
    let until = f.get(1).and_then(|v| v.parse().ok()).ok_or_else(bad)?;
    let reason = f
        .get(2)
        .and_then(|c| Reason::from_code(c))
        .ok_or_else(bad)?;
    let figures = match (reason, f.len()) {
        (Reason::PrefixConversionCollapse, 9) => {
            let (sends, approvals) = (int(3)?, int(4)?);
            Figures::Conversion(ConversionFigures {
                sends,
                approvals,
                deliveries: int(5)?,
                conversion: approvals as f64 / sends.max(1) as f64,
                upper_bound: float(6)?,
                baseline: float(7)?,
                threshold: float(8)?,
            })
        }
        (Reason::CountryBudgetExceeded | Reason::GlobalBudgetExceeded, 5) => Figures::Spend {
            spent_micros: int(3)?,
            budget_micros: int(4)?,
        },
        _ => return Err(bad()),
    };
    Ok(Closure {
        reason,
        until,
        figures,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The keys are state in a shared Redis: instances of two versions must name them
    /// alike.
    #[test]
    fn a_prefix_keys_are_named_as_they_always_were() {
        let k = Keys::of(&Prefix::new(44, "790").unwrap());
        let all = [
            k.sent(),
            k.sent_recent(),
            k.approved(),
            k.delivered(),
            k.closed(),
            k.watched(),
            k.country_sent(),
            k.country_approved(),
            k.spend_country(),
            k.spend_all(),
        ];
        assert_eq!(
            all,
            [
                "pp:44:790:sent",
                "pp:44:790:sent-recent",
                "pp:44:790:appr",
                "pp:44:790:dlvr",
                "pp:44:790:closed",
                "pp:44:790:watched",
                "pc:44:sent",
                "pc:44:appr",
                "spend:cc:44",
                "spend:all",
            ]
        );
        assert!(all.iter().all(|k| crate::counters::check_key(k).is_ok()));
    }

    #[test]
    fn prefixes_are_digits_and_never_a_whole_number() {
        let p = Prefix::new(44, "790").unwrap();
        assert_eq!(p.key(), "pp:44:790");
        assert_eq!(p.to_string(), "44:790");
        assert!(crate::counters::check_key(&p.key()).is_ok());
        assert_eq!(Prefix::new(0, "1"), Err(PrefixError::CountryCode));
        assert_eq!(Prefix::new(1000, "1"), Err(PrefixError::CountryCode));
        assert_eq!(Prefix::new(44, ""), Err(PrefixError::Digits));
        assert_eq!(Prefix::new(44, "+44"), Err(PrefixError::Digits));
        assert_eq!(Prefix::new(44, "1234567"), Err(PrefixError::Digits));

        let p = Prefix::of_number(44, "7900123456", 3).unwrap();
        assert_eq!(p.leading_digits(), "790");
        // Asking for more than leaves four digits out gets fewer.
        let p = Prefix::of_number(683, "74321", 6).unwrap();
        assert_eq!(p.leading_digits(), "7");
        assert_eq!(
            Prefix::of_number(683, "4321", 3),
            Err(PrefixError::TooShort)
        );
        assert_eq!(
            Prefix::of_number(44, "79001a3456", 3),
            Err(PrefixError::Digits)
        );
        let mut policy = PumpingPolicy::default();
        policy.prefix_digits.insert(1, 6);
        assert_eq!(
            policy.prefix_of(1, "2025550123").unwrap().leading_digits(),
            "202555"
        );
        assert_eq!(
            policy.prefix_of(44, "7900123456").unwrap().leading_digits(),
            "790"
        );
    }

    #[test]
    fn wilson_upper_bound_matches_the_closed_form() {
        let z = 2.326;
        let zero = wilson_upper(0, 30, z);
        assert!((zero - z * z / (30.0 + z * z)).abs() < 1e-12);
        // 21 of 30 (70 %): the bound sits above the estimate.
        let seventy = wilson_upper(21, 30, z);
        assert!(seventy > 0.7 && seventy < 0.9, "{seventy}");
        assert!(wilson_upper(30, 30, z) <= 1.0);
    }

    fn counts(sent: u64, recent: u64, approved: u64) -> PrefixCounts {
        PrefixCounts {
            sent,
            recent,
            approved,
            delivered: sent,
        }
    }

    #[test]
    fn judges_only_mature_sends_and_only_clear_collapses() {
        let p = PumpingPolicy::default();
        // 0 approvals out of 25 mature sends against 0.7: bound 0.178 < 0.21.
        let f = judge(&p, counts(25, 0, 0), 0.7).expect("closes");
        assert_eq!((f.sends, f.approvals), (25, 0));
        assert!((f.threshold - 0.21).abs() < 1e-9);
        // The same 25 sends, 10 of them still within the approval lag: not judged.
        assert_eq!(judge(&p, counts(25, 10, 0), 0.7), None);
        // A prefix converting at 40 % in a 70 % country is not a collapse.
        assert_eq!(judge(&p, counts(100, 0, 40), 0.7), None);
        // 3 of 100 is.
        assert!(judge(&p, counts(100, 0, 3), 0.7).is_some());
        // Only the mature sends are counted …
        let f = judge(&p, counts(60, 35, 0), 0.7).expect("closes");
        assert_eq!(f.sends, 25);
        // … and approvals of young sends never make a rate above 1.
        assert_eq!(judge(&p, counts(30, 0, 45), 0.7), None);
        // Below the minimum, even no approval at all is not judged.
        assert_eq!(judge(&p, counts(19, 0, 0), 0.9), None);
    }

    #[test]
    fn the_default_policy_is_valid_and_bad_settings_are_named() {
        assert_eq!(PumpingPolicy::default().validate(), Ok(()));
        let lag = PumpingPolicy {
            approval_lag_ms: HOUR_MS,
            ..PumpingPolicy::default()
        };
        assert_eq!(lag.validate().unwrap_err().setting, "approval_lag_ms");
        let mut floor = PumpingPolicy::default();
        floor.baseline_floor.insert(44, 1.5);
        assert!(floor
            .validate()
            .unwrap_err()
            .to_string()
            .contains("baseline_floor"));
        let ratio = PumpingPolicy {
            collapse_ratio: f64::NAN,
            ..PumpingPolicy::default()
        };
        assert_eq!(ratio.validate().unwrap_err().setting, "collapse_ratio");
    }

    #[test]
    fn the_baseline_never_drops_below_its_floor() {
        let mut p = PumpingPolicy::default();
        p.baseline_floor.insert(998, 0.4);
        // Too few sends: the floor.
        assert_eq!(baseline(&p, 44, 199, 150), 0.5);
        // Enough: the observed rate, …
        assert!((baseline(&p, 44, 1000, 700) - 0.7).abs() < 1e-12);
        // … unless pumping dragged it below the floor.
        assert_eq!(baseline(&p, 44, 1000, 100), 0.5);
        assert_eq!(baseline(&p, 998, 1000, 100), 0.4);
    }

    #[test]
    fn closures_survive_the_round_trip_through_the_counters() {
        let p = PumpingPolicy::default();
        let figures = judge(&p, counts(41, 3, 1), 0.7234567).unwrap();
        let closure = Closure {
            reason: Reason::PrefixConversionCollapse,
            until: 1_767_225_600_000,
            figures: Figures::Conversion(figures),
        };
        let stored = encode(&closure);
        assert!(stored.len() <= crate::counters::MAX_VALUE_LEN);
        let back = decode(&stored).unwrap();
        assert_eq!(back.until, closure.until);
        assert_eq!(encode(&back), stored, "decoding is stable");
        let Figures::Conversion(f) = &back.figures else {
            panic!("{back:?}")
        };
        assert_eq!((f.sends, f.approvals), (38, 1));
        assert!((f.baseline - 0.723457).abs() < 1e-9);

        let spend = Closure {
            reason: Reason::CountryBudgetExceeded,
            until: 5,
            figures: Figures::Spend {
                spent_micros: 10,
                budget_micros: 9,
            },
        };
        assert_eq!(decode(&encode(&spend)).unwrap(), spend);
        assert!(decode("2 5 country_budget_exceeded 10 9").is_err());
        assert!(decode("1 5 no_such_reason 10 9").is_err());
    }

    /// A batch of deliveries counts as the same deliveries one at a time, each under
    /// its own prefix.
    #[tokio::test]
    async fn deliveries_recorded_at_once_count_as_one_at_a_time() {
        let now = 1_800_000_000_000;
        let (a, b) = (
            Prefix::new(44, "790").unwrap(),
            Prefix::new(44, "791").unwrap(),
        );
        let one_by_one = PumpingDetector::new(
            Arc::new(crate::counters::memory::MemoryCounters::new(1024)),
            PumpingPolicy::default(),
        );
        for p in [&a, &a, &a, &b, &b] {
            one_by_one.record_delivery(p, now).await.unwrap();
        }
        let at_once = PumpingDetector::new(
            Arc::new(crate::counters::memory::MemoryCounters::new(1024)),
            PumpingPolicy::default(),
        );
        at_once
            .record_deliveries(&[(a.clone(), 3), (b.clone(), 2)], now)
            .await
            .unwrap();
        let window = PumpingPolicy::default().window_ms;
        for d in [&one_by_one, &at_once] {
            let counts = d
                .counters
                .get_slidings(
                    &[(&delivered_key(&a), window), (&delivered_key(&b), window)],
                    now,
                )
                .await
                .unwrap();
            assert_eq!(counts, [3, 2]);
        }
    }
}
