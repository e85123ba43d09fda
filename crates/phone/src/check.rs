//! `check`: everything libphonenumber says about an input, whether or not it is a valid
//! number: the parse error kind, or the E.164 form, validity, type, region, length
//! verdict, carrier and time zones.
//!
//! This is the operator's view (the `ringfence phone check` command, imports of an
//! existing user base). Services that only accept valid numbers use [`E164::parse`].
//! A `Report`'s `Debug` shows the masked number only; [`Report::expose_e164`] is the
//! explicit way to the raw one.

use std::fmt;

use rlibphonenumber::{NumberLengthType, ValidationError, PHONE_NUMBER_UTIL};
use serde::Serialize;

use crate::number::{DefaultRegion, NumberType, ParseErrorKind, Parsed, E164};

/// libphonenumber's verdict on a number's length (`is_possible_number_with_reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Possibility {
    IsPossible,
    /// Long enough to dial within an area, not from elsewhere in the country.
    IsPossibleLocalOnly,
    InvalidCountryCode,
    TooShort,
    /// Between the shortest and longest lengths, but no number type has this length.
    InvalidLength,
    TooLong,
}

impl Possibility {
    /// The snake-case name (`is_possible`, `is_possible_local_only`,
    /// `invalid_country_code`, `too_short`, `invalid_length`, `too_long`).
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::IsPossible => "is_possible",
            Self::IsPossibleLocalOnly => "is_possible_local_only",
            Self::InvalidCountryCode => "invalid_country_code",
            Self::TooShort => "too_short",
            Self::InvalidLength => "invalid_length",
            Self::TooLong => "too_long",
        }
    }

    fn from_port(result: Result<NumberLengthType, ValidationError>) -> Self {
        match result {
            Ok(NumberLengthType::IsPossible) => Self::IsPossible,
            Ok(NumberLengthType::IsPossibleLocalOnly) => Self::IsPossibleLocalOnly,
            Err(ValidationError::InvalidCountryCode) => Self::InvalidCountryCode,
            Err(ValidationError::TooShort) => Self::TooShort,
            Err(ValidationError::InvalidLength) => Self::InvalidLength,
            Err(ValidationError::TooLong) => Self::TooLong,
        }
    }
}

/// What libphonenumber says about one input.
#[derive(Clone)]
pub struct Report {
    outcome: Result<Checked, ParseErrorKind>,
}

#[derive(Clone)]
struct Checked {
    parsed: Parsed,
    valid: bool,
    possible: Possibility,
}

/// Parses, validates and classifies `input` in the optional default region.
pub fn check(input: &str, region: Option<DefaultRegion>) -> Report {
    let outcome = Parsed::parse(input, region).map(|(parsed, number)| Checked {
        valid: parsed.is_valid(),
        possible: Possibility::from_port(PHONE_NUMBER_UTIL.is_possible_number_with_reason(&number)),
        parsed,
    });
    Report { outcome }
}

impl Report {
    /// Why parsing failed, if it did.
    pub fn error(&self) -> Option<ParseErrorKind> {
        self.outcome.as_ref().err().copied()
    }

    /// Whether the input is a valid number.
    pub fn is_valid(&self) -> bool {
        self.checked().is_some_and(|c| c.valid)
    }

    /// The valid number, if it is one.
    pub fn e164(&self) -> Option<E164> {
        self.checked()
            .filter(|c| c.valid)
            .map(|c| E164::from_valid(c.parsed.clone()))
    }

    /// The raw E.164 form of whatever parsed, valid or not (`+15550100`).
    pub fn expose_e164(&self) -> Option<&str> {
        self.checked().map(|c| c.parsed.e164())
    }

    /// The masked form of whatever parsed.
    pub fn masked(&self) -> Option<String> {
        self.checked().map(|c| c.parsed.masked())
    }

    /// The number type (`unknown` for most invalid numbers); `None` if parsing failed.
    pub fn number_type(&self) -> Option<NumberType> {
        self.checked().map(|c| c.parsed.number_type())
    }

    /// The region libphonenumber assigns (`GB`, `001`), if any.
    pub fn region(&self) -> Option<&str> {
        self.checked().and_then(|c| c.parsed.region())
    }

    /// The length verdict; `None` if parsing failed.
    pub fn possible(&self) -> Option<Possibility> {
        self.checked().map(|c| c.possible)
    }

    /// The country calling code; `None` if parsing failed.
    pub fn country_code(&self) -> Option<u16> {
        self.checked().map(|c| c.parsed.country_code())
    }

    /// The original carrier, as libphonenumber's carrier mapper answers.
    pub fn carrier(&self) -> Option<&'static str> {
        self.checked().and_then(|c| c.parsed.carrier())
    }

    /// The time zones, as libphonenumber's time-zone mapper answers (`["Etc/Unknown"]`
    /// for numbers of unknown type); `None` if parsing failed.
    pub fn time_zones(&self) -> Option<&'static [&'static str]> {
        self.checked().map(|c| c.parsed.time_zones())
    }

    fn checked(&self) -> Option<&Checked> {
        self.outcome.as_ref().ok()
    }
}

impl fmt::Debug for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.outcome {
            Ok(c) => f
                .debug_struct("Report")
                .field("number", &c.parsed)
                .field("valid", &c.valid)
                .field("type", &c.parsed.number_type())
                .field("region", &c.parsed.region())
                .field("possible", &c.possible)
                .finish(),
            Err(kind) => f.debug_struct("Report").field("error", kind).finish(),
        }
    }
}
