//! Phone numbers for ringfence: parse, validate, classify, format and mask, exactly as
//! libphonenumber does. No I/O and no dependency on the rest of the service.
//!
//! In ringfence a phone number is a person's identity: if two spellings of one number
//! normalised differently, one person could hold more accounts than the cap allows; if a
//! VoIP or premium-rate number passed for a mobile one, the number-type policy would be
//! bypassed. So this crate writes no parsing rules of its own. It wraps the
//! `rlibphonenumber` port (libphonenumber metadata v9.0.42) behind ringfence's types, and
//! a fixture corpus generated from the reference implementation proves in every test run
//! that the wrapper agrees with libphonenumber on every answer it gives.
//!
//! What the port lacks is added here: the original carrier and the time zones of a
//! number, from libphonenumber's own data (see [`DATA_VERSION`]), answered as
//! libphonenumber's mappers answer.
//!
//! - [`E164`]: a valid number; `Display`/`Debug` show only the masked form.
//! - [`check`]: everything about any input, valid or not, for operator tools.

mod carrier;
mod check;
mod conformance;
mod mask;
mod number;
mod prefix;
mod time_zones;

pub use check::{check, Possibility, Report};
pub use mask::{visible_digits, MASK_CHAR};
pub use number::{DefaultRegion, Format, NumberType, ParseErrorKind, PhoneError, StoredE164, E164};
pub use prefix::DATA_VERSION;
pub use time_zones::UNKNOWN_TIME_ZONE;

/// The libphonenumber metadata release the parser's rules come from.
pub const METADATA_VERSION: &str = "v9.0.42";
