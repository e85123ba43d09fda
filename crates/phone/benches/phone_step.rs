//! The phone step of a request, per number: parse, validate, classify, mask, and the
//! blind index the service computes from the E.164 form (HMAC-SHA256 under the index
//! key). Inputs are a realistic mix drawn from the fixture corpus: valid numbers of every
//! region and type in the spellings users type, with invalid and garbage inputs among
//! them. Figures are recorded in docs/BENCHMARKS.md.

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use hmac::{Hmac, Mac};
use ringfence_phone::{check, DefaultRegion, E164};
use serde_json::Value;
use sha2::Sha256;

const CORPUS: &str = include_str!("../tests/fixtures/corpus.jsonl");

/// Every 20th corpus case: about 1,400 inputs, three in four of them valid numbers.
fn inputs() -> Vec<(String, Option<DefaultRegion>)> {
    CORPUS
        .lines()
        .step_by(20)
        .map(|line| {
            let row: Value = serde_json::from_str(line).unwrap();
            let region = row["default_region"]
                .as_str()
                .map(|r| DefaultRegion::parse(r).unwrap());
            (row["input"].as_str().unwrap().to_owned(), region)
        })
        .collect()
}

/// What a request does with a number: keep it only if valid, note its type for the
/// policy, its masked form for logs, and its blind index for look-ups.
fn phone_step(
    input: &str,
    region: Option<DefaultRegion>,
    key: &Hmac<Sha256>,
) -> Option<(ringfence_phone::NumberType, String, [u8; 32])> {
    let number = E164::parse_in(input, region).ok()?;
    let number_type = number.number_type();
    let masked = number.masked();
    let mut mac = key.clone();
    mac.update(number.expose().as_bytes());
    Some((number_type, masked, mac.finalize().into_bytes().into()))
}

fn benches(c: &mut Criterion) {
    let inputs = inputs();
    let valid: Vec<_> = inputs
        .iter()
        .filter(|(i, r)| E164::parse_in(i, *r).is_ok())
        .cloned()
        .collect();
    let key = Hmac::<Sha256>::new_from_slice(&[7u8; 32]).unwrap();
    // The port builds its metadata on first use; keep that out of the figures.
    let _ = E164::parse("+447400123456", None);

    let mut group = c.benchmark_group("phone_step");
    group.throughput(Throughput::Elements(inputs.len() as u64));
    group.bench_function("mixed_inputs", |b| {
        b.iter(|| {
            for (input, region) in &inputs {
                black_box(phone_step(black_box(input), *region, &key));
            }
        })
    });
    group.throughput(Throughput::Elements(valid.len() as u64));
    group.bench_function("valid_inputs", |b| {
        b.iter(|| {
            for (input, region) in &valid {
                black_box(phone_step(black_box(input), *region, &key));
            }
        })
    });
    group.finish();

    let mut group = c.benchmark_group("phone_parts");
    group.throughput(Throughput::Elements(valid.len() as u64));
    group.bench_function("parse_valid", |b| {
        b.iter(|| {
            for (input, region) in &valid {
                black_box(E164::parse_in(black_box(input), *region).ok());
            }
        })
    });
    let numbers: Vec<E164> = valid
        .iter()
        .map(|(i, r)| E164::parse_in(i, *r).unwrap())
        .collect();
    group.bench_function("mask", |b| {
        b.iter(|| {
            for number in &numbers {
                black_box(number.masked());
            }
        })
    });
    group.bench_function("carrier_and_time_zones", |b| {
        b.iter(|| {
            for number in &numbers {
                black_box((number.carrier(), number.time_zones()));
            }
        })
    });
    group.throughput(Throughput::Elements(inputs.len() as u64));
    group.bench_function("check_report", |b| {
        b.iter(|| {
            for (input, region) in &inputs {
                let report = check(black_box(input), *region);
                black_box((report.is_valid(), report.possible(), report.number_type()));
            }
        })
    });
    group.finish();
}

criterion_group!(phone, benches);
criterion_main!(phone);
