//! The IANA time zones of a phone number, from libphonenumber's `timezones/` data
//! (release in [`crate::DATA_VERSION`]).
//!
//! It answers exactly as libphonenumber's time-zone mapper (`time_zones_for_number`):
//! a number of unknown type gets `["Etc/Unknown"]`; a number whose type is not
//! geographical (toll free, VoIP, mobile in most countries…) gets the zones of its
//! country calling code; any other gets the zones of the longest prefix of its E.164
//! digits; and where nothing matches, `["Etc/Unknown"]`. The zones describe where the
//! number was allocated, never where its holder is.

use rlibphonenumber::PHONE_NUMBER_UTIL;

use crate::prefix::{time_zone_set, TIME_ZONES};
use crate::NumberType;

/// The zone libphonenumber answers when it knows none.
pub const UNKNOWN_TIME_ZONE: &str = "Etc/Unknown";

static UNKNOWN: [&str; 1] = [UNKNOWN_TIME_ZONE];

/// Time zones of a number, given its type, country calling code and E.164 digits.
pub(crate) fn time_zones_for(
    number_type: NumberType,
    country_code: u16,
    e164_digits: &str,
) -> &'static [&'static str] {
    if number_type == NumberType::Unknown {
        return &UNKNOWN;
    }
    let geographical = PHONE_NUMBER_UTIL.is_number_geographical_by_country_code_and_type(
        number_type.to_port(),
        i32::from(country_code),
    );
    let found = if geographical {
        TIME_ZONES.longest_match(e164_digits)
    } else {
        country_level(country_code)
    };
    found.map_or(&UNKNOWN, time_zone_set)
}

/// The country-level entry, looked up as the reference mapper does: `cc[:1 + n]` for
/// `n` from the longest prefix length down to 1 (the whole code, then its first two
/// digits).
fn country_level(country_code: u16) -> Option<u16> {
    let cc = country_code.to_string();
    let cc = cc.as_bytes();
    (1..=TIME_ZONES.max_len)
        .rev()
        .find_map(|n| TIME_ZONES.get(&cc[..cc.len().min(n + 1)]))
}
