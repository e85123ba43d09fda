//! Fuzzes phone-number parsing with arbitrary input and default region: nothing may
//! panic, and what parses must hold the crate's promises (`check` and `E164::parse`
//! agree, the masked form hides what it should). Re-parsing a formatted number must not
//! panic either, but need not give the number back: libphonenumber itself does not
//! round-trip some numbers (`+375 8103124857` re-parses without its leading 8).

#![no_main]

use libfuzzer_sys::fuzz_target;
use ringfence_phone::{check, visible_digits, DefaultRegion, Format, E164, MASK_CHAR};

const REGIONS: [&str; 8] = ["GB", "US", "DE", "IT", "AR", "BR", "JP", "IN"];

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let Ok(input) = std::str::from_utf8(rest) else {
        return;
    };
    let region = REGIONS
        .get(usize::from(selector) % 9)
        .map(|r| DefaultRegion::parse(r).expect("supported region"));

    let report = check(input, region);
    let _ = (
        report.error(),
        report.number_type(),
        report.region(),
        report.possible(),
        report.carrier(),
        report.time_zones(),
        report.masked(),
        format!("{report:?}"),
    );
    assert_eq!(report.error().is_some(), report.expose_e164().is_none());

    let strict = E164::parse_in(input, region);
    assert_eq!(strict.is_ok(), report.is_valid());
    if let Ok(number) = strict {
        assert_eq!(Some(&number), report.e164().as_ref());
        assert_eq!(number.format(Format::E164), number.expose());
        for format in [Format::International, Format::National, Format::Rfc3966] {
            let _ = E164::parse(&number.format(format), number.region());
        }
        let nsn = number.national_significant_number();
        let hidden = number.masked().chars().filter(|&c| c == MASK_CHAR).count();
        assert_eq!(hidden, nsn.len() - visible_digits(nsn.len()));
        let _ = (number.carrier(), number.time_zones(), number.to_string());
    }
});
