//! The anti-abuse decision of one start, with realistic rules and warm counters:
//! the default number types, a 30-region allow-list, all seven send limits on (every
//! key present: number, device, account, IPv6 /64, prefix, country, service), the
//! in-process counters already holding about 150,000 keys, and the SMS-pumping detector's
//! assessment of the number's prefix (and the recording of the send).
//!
//!   cargo bench --bench decision
//!
//! Criterion reports the mean; the run then prints the percentiles of 200,000 single
//! decisions timed one by one (the target is on the p99: ≤ 50 µs added to a start).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use criterion::{black_box, Criterion};
use futures::executor::block_on;
use ringfence::abuse::policy::GeoPolicy;
use ringfence::abuse::pumping::PumpingPolicy;
use ringfence::abuse::{AbusePolicy, Engine, SendContext};
use ringfence::counters::{Counters, MemoryCounters};
use ringfence::crypto::{BlindIndex, BlindIndexer, KeyBytes};
use ringfence::verify::Channel;
use ringfence_phone::E164;

const NUMBERS: u32 = 10_000;

struct Case {
    number: E164,
    bi: BlindIndex,
    ip: IpAddr,
    device: String,
    account: String,
}

fn cases(indexer: &BlindIndexer) -> Vec<Case> {
    (0..NUMBERS)
        .map(|n| {
            // Spread over several ranges (prefixes) of UK mobiles.
            let range = ["7400", "7800", "7500", "7900", "7600"][n as usize % 5];
            let number = E164::parse(&format!("+44{range}{:06}", n * 97 % 1_000_000), None)
                .expect("valid UK mobile");
            let bi = indexer.index(number.expose());
            Case {
                number,
                bi,
                ip: format!("2001:db8:{:x}:{:x}::1", n / 200, n % 200)
                    .parse()
                    .unwrap(),
                device: format!("device-{n}"),
                account: format!("acct_{n}"),
            }
        })
        .collect()
}

fn policy() -> AbusePolicy {
    let regions = [
        "GB", "IE", "FR", "DE", "ES", "IT", "NL", "BE", "PT", "AT", "CH", "SE", "NO", "DK", "FI",
        "PL", "CZ", "US", "CA", "MX", "BR", "AR", "JP", "KR", "IN", "SG", "AU", "NZ", "ZA", "KE",
    ];
    let mut p = AbusePolicy::strict(GeoPolicy::allowlist(
        regions.iter().map(|r| r.to_string()).collect(),
    ));
    // Limits high enough that the measured decisions are allows (the common case), with
    // every limit still evaluated.
    for s in [
        &mut p.limits.sends_per_number,
        &mut p.limits.sends_per_ip,
        &mut p.limits.sends_per_account,
        &mut p.limits.sends_per_device,
        &mut p.limits.sends_per_prefix,
        &mut p.limits.sends_per_country,
        &mut p.limits.sends_per_service,
    ]
    .into_iter()
    .flatten()
    {
        s.limit = 1_000_000_000;
    }
    p
}

fn main() {
    let counters: Arc<dyn Counters> = Arc::new(MemoryCounters::default());
    let indexer = BlindIndexer::new(KeyBytes::generate());
    let engine = Engine::new(counters.clone(), indexer.clone(), PumpingPolicy::default());
    let policy = policy();
    let cases = cases(&indexer);
    let now = 1_800_000_000_000i64;

    // Warm: every case decided, sent and approved a few times; plus unrelated keys.
    for round in 0..3 {
        for c in &cases {
            block_on(decide(&engine, &policy, c, now + round)).unwrap();
        }
    }
    for k in 0..120_000 {
        block_on(counters.incr_window(&format!("warm:{k}"), 3_600_000, 1, now)).unwrap();
    }

    let mut crit = Criterion::default().configure_from_args();
    let mut i = 0usize;
    crit.bench_function(
        "decision of one start (7 limits, geo, type, pumping)",
        |b| {
            b.iter(|| {
                i = (i + 1) % cases.len();
                black_box(block_on(decide(&engine, &policy, &cases[i], now + 10)).unwrap())
            })
        },
    );
    crit.final_summary();

    let mut samples: Vec<u128> = Vec::with_capacity(200_000);
    for n in 0..200_000usize {
        let c = &cases[n % cases.len()];
        let t = Instant::now();
        black_box(block_on(decide(&engine, &policy, c, now + 20)).unwrap());
        samples.push(t.elapsed().as_nanos());
    }
    samples.sort_unstable();
    let at = |q: f64| {
        samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)] as f64 / 1000.0
    };
    println!(
        "decision percentiles over {} single decisions: p50 {:.2} µs, p90 {:.2} µs, p99 {:.2} µs, p99.9 {:.2} µs, max {:.2} µs",
        samples.len(),
        at(0.50),
        at(0.90),
        at(0.99),
        at(0.999),
        at(1.0)
    );
}

async fn decide(
    engine: &Engine,
    policy: &AbusePolicy,
    c: &Case,
    now: i64,
) -> Result<bool, ringfence::counters::CountersError> {
    let cx = SendContext {
        service_id: "SVbench",
        number: &c.number,
        blind_index: &c.bi,
        channel: Channel::Sms,
        ip: Some(c.ip),
        account_ref: Some(&c.account),
        device_id: Some(&c.device),
    };
    let d = engine
        .decide_send(policy, &ringfence::abuse::lists::Lists::default(), &cx, now)
        .await?;
    if let Some(p) = &d.prefix {
        engine.record_send(p, now).await?;
    }
    Ok(d.action == ringfence::abuse::Action::Allow)
}
