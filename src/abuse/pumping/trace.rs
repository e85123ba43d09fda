//! A synthetic, deterministic verification trace for replaying against the pumping
//! detector: legitimate traffic from many prefixes in many countries converting at
//! about 70 %, and, from the middle of the trace on, a pumping burst at about 0 %
//! against a few premium-like prefixes.
//!
//! The same [`TraceConfig`] always yields the same trace, on every platform and with
//! every version of the `rand` crate: the generator is a SplitMix64 written out here,
//! not a library RNG whose stream may change.
//!
//! The trace holds no phone numbers, only prefixes: the detector never sees more.

use crate::clock::Millis;

use super::Prefix;

/// What to generate. [`TraceConfig::default`] is the trace of `docs/abuse.md`.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceConfig {
    pub seed: u64,
    /// Caller time of the trace's first moment.
    pub start: Millis,
    pub duration_ms: i64,
    /// Legitimate verifications over the whole trace (arrivals are Poisson).
    pub legit_verifications: u32,
    /// Countries with legitimate traffic (at most the built-in list's 30).
    pub countries: usize,
    /// Share of legitimate verifications that ask for the code a second time.
    pub resend_share: f64,
    /// Share of messages with a delivery receipt.
    pub delivery_share: f64,
    /// Median seconds from the (last) send to the approval; log-normal.
    pub approval_median_s: f64,
    /// The log-normal's sigma.
    pub approval_sigma: f64,
    /// The prefixes being pumped.
    pub pumped: Vec<Prefix>,
    /// When the pumping starts, from `start`.
    pub pumping_offset_ms: i64,
    pub pumping_duration_ms: i64,
    /// Attempted sends per minute to each pumped prefix (Poisson).
    pub pumping_per_minute: f64,
    /// Share of pumped verifications that are approved anyway.
    pub pumping_conversion: f64,
}

impl Default for TraceConfig {
    fn default() -> Self {
        let pumped = [(998, "935"), (998, "971"), (996, "555"), (254, "809")]
            .into_iter()
            .map(|(cc, d)| Prefix::new(cc, d).expect("valid prefix"))
            .collect();
        Self {
            seed: 20_261_125,
            // 2026-01-01T00:00:00Z
            start: 1_767_225_600_000,
            duration_ms: 8 * 3600 * 1000,
            legit_verifications: 16_000,
            countries: 30,
            resend_share: 0.12,
            delivery_share: 0.97,
            approval_median_s: 25.0,
            approval_sigma: 0.9,
            pumped,
            pumping_offset_ms: 4 * 3600 * 1000,
            pumping_duration_ms: 2 * 3600 * 1000,
            pumping_per_minute: 12.0,
            pumping_conversion: 0.01,
        }
    }
}

/// One verification of the trace: where it goes and whether it is legitimate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verification {
    pub prefix: Prefix,
    pub legit: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A code is (asked to be) sent: assess, and send if allowed.
    Send,
    /// A delivery receipt for the verification's latest message.
    Delivery,
    /// The person typed the right code.
    Approval,
}

/// One moment of the trace; `verification` indexes [`Trace::verifications`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceEvent {
    pub at: Millis,
    pub verification: u32,
    pub kind: Kind,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Trace {
    pub verifications: Vec<Verification>,
    /// In time order (ties in generation order).
    pub events: Vec<TraceEvent>,
}

/// Country calling codes with legitimate traffic.
const COUNTRIES: [u16; 30] = [
    1, 44, 33, 49, 91, 55, 62, 234, 63, 52, 7, 81, 82, 20, 27, 90, 34, 39, 48, 31, 254, 92, 880,
    84, 66, 60, 57, 54, 212, 966,
];

/// Generates the trace of `config`.
pub fn generate(config: &TraceConfig) -> Trace {
    let mut rng = SplitMix64(config.seed);
    let mut verifications = Vec::new();
    let mut events = Vec::new();

    // The legitimate prefixes: each country gets 8–30, with a country mean
    // conversion of 62–78 % and a prefix spread around it; traffic is uneven
    // (log-normal country weights, Zipf-like prefix weights), so a few big prefixes
    // carry much of it and many small ones little.
    struct Legit {
        prefix: Prefix,
        conversion: f64,
        weight: f64,
    }
    let mut legit = Vec::new();
    for &cc in COUNTRIES.iter().take(config.countries) {
        let country_weight = (1.2 * rng.normal()).exp();
        let country_conversion = 0.62 + 0.16 * rng.unit();
        let n = 8 + (rng.next() % 23) as usize;
        let mut taken: Vec<String> = Vec::new();
        while taken.len() < n {
            let digits = format!("{}{:02}", 1 + rng.next() % 9, rng.next() % 100);
            let prefix = Prefix::new(cc, &digits).expect("valid prefix");
            if taken.contains(&digits) || config.pumped.contains(&prefix) {
                continue;
            }
            let rank = taken.len() as f64 + 1.0;
            taken.push(digits);
            legit.push(Legit {
                prefix,
                conversion: (country_conversion + 0.05 * rng.normal()).clamp(0.45, 0.92),
                weight: country_weight / rank.powf(1.2),
            });
        }
    }
    let total: f64 = legit.iter().map(|l| l.weight).sum();
    let mut cumulative = Vec::with_capacity(legit.len());
    let mut acc = 0.0;
    for l in &legit {
        acc += l.weight / total;
        cumulative.push(acc);
    }

    let approval_delay = |rng: &mut SplitMix64| -> i64 {
        let s = config.approval_median_s * (config.approval_sigma * rng.normal()).exp();
        // At least a few seconds to read and type; never after the code's 10 min.
        (s.clamp(4.0, 590.0) * 1000.0) as i64
    };
    let delivery_delay = |rng: &mut SplitMix64| -> i64 { 1_000 + (rng.unit() * 9_000.0) as i64 };

    // One verification: its sends, their receipts, perhaps an approval.
    let mut add = |rng: &mut SplitMix64,
                   verifications: &mut Vec<Verification>,
                   at: Millis,
                   prefix: Prefix,
                   legit: bool,
                   conversion: f64,
                   resend_share: f64| {
        let id = verifications.len() as u32;
        verifications.push(Verification { prefix, legit });
        let mut sends = vec![at];
        if rng.unit() < resend_share {
            sends.push(at + 30_000 + (rng.unit() * 60_000.0) as i64);
        }
        for &s in &sends {
            events.push(TraceEvent {
                at: s,
                verification: id,
                kind: Kind::Send,
            });
            if rng.unit() < config.delivery_share {
                events.push(TraceEvent {
                    at: s + delivery_delay(rng),
                    verification: id,
                    kind: Kind::Delivery,
                });
            }
        }
        if rng.unit() < conversion {
            let last = *sends.last().expect("one send at least");
            events.push(TraceEvent {
                at: last + approval_delay(rng),
                verification: id,
                kind: Kind::Approval,
            });
        }
    };

    let mean_gap = config.duration_ms as f64 / f64::from(config.legit_verifications.max(1));
    let mut at = config.start as f64;
    for _ in 0..config.legit_verifications {
        at += rng.exponential(mean_gap);
        let u = rng.unit();
        let i = cumulative.partition_point(|&c| c < u).min(legit.len() - 1);
        let l = &legit[i];
        add(
            &mut rng,
            &mut verifications,
            at as Millis,
            l.prefix.clone(),
            true,
            l.conversion,
            config.resend_share,
        );
    }

    let pumping_start = config.start + config.pumping_offset_ms;
    let pumping_end = pumping_start + config.pumping_duration_ms;
    let gap = 60_000.0 / config.pumping_per_minute.max(1e-9);
    for prefix in &config.pumped {
        let mut at = pumping_start as f64;
        loop {
            at += rng.exponential(gap);
            if at >= pumping_end as f64 {
                break;
            }
            add(
                &mut rng,
                &mut verifications,
                at as Millis,
                prefix.clone(),
                false,
                config.pumping_conversion,
                0.0,
            );
        }
    }

    events.sort_by_key(|e| e.at);
    Trace {
        verifications,
        events,
    }
}

/// SplitMix64 (Steele, Lea, Flood 2014): tiny, fast, and its stream is fixed forever.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Standard normal (Box–Muller).
    fn normal(&mut self) -> f64 {
        let u = 1.0 - self.unit();
        let v = self.unit();
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }

    fn exponential(&mut self, mean: f64) -> f64 {
        -mean * (1.0 - self.unit()).ln()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_config_gives_the_same_trace() {
        let config = TraceConfig {
            legit_verifications: 500,
            ..TraceConfig::default()
        };
        let a = generate(&config);
        assert_eq!(a, generate(&config));
        let other = generate(&TraceConfig {
            seed: 1,
            ..config.clone()
        });
        assert_ne!(a.events, other.events);
        assert!(a.events.windows(2).all(|w| w[0].at <= w[1].at));
    }

    #[test]
    fn legitimate_traffic_converts_near_seventy_percent_and_pumping_near_zero() {
        let trace = generate(&TraceConfig::default());
        let mut approved = [0u32; 2];
        let mut total = [0u32; 2];
        for v in &trace.verifications {
            total[usize::from(v.legit)] += 1;
        }
        for e in trace.events.iter().filter(|e| e.kind == Kind::Approval) {
            approved[usize::from(trace.verifications[e.verification as usize].legit)] += 1;
        }
        let legit = f64::from(approved[1]) / f64::from(total[1]);
        let pumped = f64::from(approved[0]) / f64::from(total[0]);
        assert!((0.65..0.75).contains(&legit), "{legit}");
        assert!(pumped < 0.03, "{pumped}");
        assert_eq!(total[1], 16_000);
    }
}
