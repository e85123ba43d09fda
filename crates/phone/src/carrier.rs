//! The carrier a mobile number was originally allocated to, in English, from
//! libphonenumber's `carrier/` data (release in [`crate::DATA_VERSION`]).
//!
//! It answers exactly as libphonenumber's carrier mapper (`name_for_number` with language
//! `en`): a name only for numbers of a mobile-like type (mobile, fixed line or mobile,
//! pager), found by the longest prefix of the E.164 digits over the prefixes of every
//! language; a longest prefix that only other languages name gives no name. The name is
//! the original allocation: a number ported since may belong to another carrier now.

use crate::prefix::{carrier_name, CARRIERS};
use crate::NumberType;

/// The original carrier of a number, given its type and its E.164 digits (no `+`).
pub(crate) fn carrier_for(number_type: NumberType, e164_digits: &str) -> Option<&'static str> {
    if !matches!(
        number_type,
        NumberType::Mobile | NumberType::FixedLineOrMobile | NumberType::Pager
    ) {
        return None;
    }
    CARRIERS.longest_match(e164_digits).and_then(carrier_name)
}
