//! `E164`: a phone number that libphonenumber holds valid, and the vocabulary around it
//! (number types, formats, default regions, error kinds).
//!
//! An `E164` can only be built by parsing, and parsing succeeds only for numbers that
//! libphonenumber (through the `rlibphonenumber` port, metadata v9.0.42) calls valid, so
//! two spellings of one number always give equal values, equal hashes and the same
//! `expose()` string. `Display` and `Debug` show only the masked form; the raw number
//! needs the explicit [`E164::expose`]. Values are small, allocation-free to clone and
//! `Send + Sync`.

use std::fmt;
use std::hash::{Hash, Hasher};

use rlibphonenumber::{
    ParseError, PhoneNumber, PhoneNumberFormat, PhoneNumberType, Region, RegionStr,
    PHONE_NUMBER_UTIL,
};
use serde::{Deserialize, Serialize};

use crate::carrier::carrier_for;
use crate::conformance;
use crate::mask::mask_international;
use crate::time_zones::time_zones_for;

/// Room for `+`, a three-digit country code and the longest national number
/// libphonenumber parses (17 digits).
const E164_CAPACITY: usize = 24;

/// libphonenumber's bounds on a national significant number (`MIN_LENGTH_FOR_NSN`,
/// `MAX_LENGTH_FOR_NSN`).
const MIN_NSN_LENGTH: usize = 2;
const MAX_NSN_LENGTH: usize = 17;

/// Why libphonenumber could not parse an input at all (its `NumberParseException` kinds).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, thiserror::Error)]
#[serde(rename_all = "snake_case")]
pub enum ParseErrorKind {
    /// No country calling code could be found: the code after `+` is unknown, or the
    /// number is in national format and no default region was given.
    #[error("invalid country calling code")]
    InvalidCountryCode,
    /// The input does not look like a phone number.
    #[error("not a phone number")]
    NotANumber,
    /// Too few digits after an international dialling prefix.
    #[error("too short after the international dialling prefix")]
    TooShortAfterIdd,
    /// The national significant number is too short.
    #[error("national number too short")]
    TooShortNsn,
    /// The national number, or the input itself, is too long.
    #[error("too long")]
    TooLong,
}

impl ParseErrorKind {
    /// libphonenumber's name for the kind, in snake case: `invalid_country_code`,
    /// `not_a_number`, `too_short_after_idd`, `too_short_nsn`, `too_long`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::InvalidCountryCode => "invalid_country_code",
            Self::NotANumber => "not_a_number",
            Self::TooShortAfterIdd => "too_short_after_idd",
            Self::TooShortNsn => "too_short_nsn",
            Self::TooLong => "too_long",
        }
    }

    fn from_port(err: &ParseError) -> Self {
        match err {
            ParseError::InvalidCountryCode => Self::InvalidCountryCode,
            ParseError::NotANumber(_) => Self::NotANumber,
            ParseError::TooShortAfterIdd => Self::TooShortAfterIdd,
            ParseError::TooShortNsn => Self::TooShortNsn,
            ParseError::TooLongNsn => Self::TooLong,
        }
    }
}

/// Why [`E164::parse`] refused an input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PhoneError {
    /// libphonenumber could not parse the input.
    #[error("cannot parse phone number: {0}")]
    Parse(#[from] ParseErrorKind),
    /// The default region is not one libphonenumber knows (a caller's mistake, not the
    /// number's). Holds what was given, cut to a few characters.
    #[error("unknown region code {0:?}")]
    InvalidRegion(String),
    /// The input parses but is not a valid number (wrong length or unallocated range).
    #[error("not a valid phone number")]
    NotValid,
}

impl PhoneError {
    /// A stable machine-readable code: the parse kind (`too_short_nsn`…),
    /// `invalid_region` or `not_valid`.
    pub const fn code(&self) -> &'static str {
        match self {
            Self::Parse(kind) => kind.as_str(),
            Self::InvalidRegion(_) => "invalid_region",
            Self::NotValid => "not_valid",
        }
    }
}

/// What a number is used for, as libphonenumber classifies it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NumberType {
    FixedLine,
    Mobile,
    /// Regions (such as the NANP) where fixed and mobile ranges cannot be told apart.
    FixedLineOrMobile,
    TollFree,
    PremiumRate,
    SharedCost,
    Voip,
    PersonalNumber,
    Pager,
    Uan,
    Voicemail,
    Unknown,
}

impl NumberType {
    /// Every type, in libphonenumber's order.
    pub const ALL: [NumberType; 12] = [
        Self::FixedLine,
        Self::Mobile,
        Self::FixedLineOrMobile,
        Self::TollFree,
        Self::PremiumRate,
        Self::SharedCost,
        Self::Voip,
        Self::PersonalNumber,
        Self::Pager,
        Self::Uan,
        Self::Voicemail,
        Self::Unknown,
    ];

    /// The snake-case name: `fixed_line`, `mobile`, `fixed_line_or_mobile`, `toll_free`,
    /// `premium_rate`, `shared_cost`, `voip`, `personal_number`, `pager`, `uan`,
    /// `voicemail`, `unknown`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::FixedLine => "fixed_line",
            Self::Mobile => "mobile",
            Self::FixedLineOrMobile => "fixed_line_or_mobile",
            Self::TollFree => "toll_free",
            Self::PremiumRate => "premium_rate",
            Self::SharedCost => "shared_cost",
            Self::Voip => "voip",
            Self::PersonalNumber => "personal_number",
            Self::Pager => "pager",
            Self::Uan => "uan",
            Self::Voicemail => "voicemail",
            Self::Unknown => "unknown",
        }
    }

    pub(crate) const fn from_port(t: PhoneNumberType) -> Self {
        match t {
            PhoneNumberType::FixedLine => Self::FixedLine,
            PhoneNumberType::Mobile => Self::Mobile,
            PhoneNumberType::FixedLineOrMobile => Self::FixedLineOrMobile,
            PhoneNumberType::TollFree => Self::TollFree,
            PhoneNumberType::PremiumRate => Self::PremiumRate,
            PhoneNumberType::SharedCost => Self::SharedCost,
            PhoneNumberType::VoIP => Self::Voip,
            PhoneNumberType::PersonalNumber => Self::PersonalNumber,
            PhoneNumberType::Pager => Self::Pager,
            PhoneNumberType::UAN => Self::Uan,
            PhoneNumberType::VoiceMail => Self::Voicemail,
            PhoneNumberType::Unknown => Self::Unknown,
        }
    }

    pub(crate) const fn to_port(self) -> PhoneNumberType {
        match self {
            Self::FixedLine => PhoneNumberType::FixedLine,
            Self::Mobile => PhoneNumberType::Mobile,
            Self::FixedLineOrMobile => PhoneNumberType::FixedLineOrMobile,
            Self::TollFree => PhoneNumberType::TollFree,
            Self::PremiumRate => PhoneNumberType::PremiumRate,
            Self::SharedCost => PhoneNumberType::SharedCost,
            Self::Voip => PhoneNumberType::VoIP,
            Self::PersonalNumber => PhoneNumberType::PersonalNumber,
            Self::Pager => PhoneNumberType::Pager,
            Self::Uan => PhoneNumberType::UAN,
            Self::Voicemail => PhoneNumberType::VoiceMail,
            Self::Unknown => PhoneNumberType::Unknown,
        }
    }
}

impl fmt::Display for NumberType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Ways to write a number out (libphonenumber's formats).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    /// `+442079460958`
    E164,
    /// `+44 20 7946 0958`
    International,
    /// `020 7946 0958`
    National,
    /// `tel:+44-20-7946-0958`
    Rfc3966,
}

impl Format {
    fn to_port(self) -> PhoneNumberFormat {
        match self {
            Self::E164 => PhoneNumberFormat::E164,
            Self::International => PhoneNumberFormat::International,
            Self::National => PhoneNumberFormat::National,
            Self::Rfc3966 => PhoneNumberFormat::RFC3966,
        }
    }
}

/// The region a number in national format is read in: a two-letter code libphonenumber
/// has metadata for (`GB`, `us`…; letters in either case).
///
/// libphonenumber itself treats an unknown default region like none at all; ringfence
/// refuses it instead, because it is always a caller's mistake.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DefaultRegion(Region);

impl DefaultRegion {
    /// Accepts a supported two-letter region code, in either case.
    pub fn parse(code: &str) -> Result<Self, PhoneError> {
        let region = Region::from_code(code)
            .ok()
            .filter(|r| *r != Region::World)
            .filter(|r| PHONE_NUMBER_UTIL.get_country_code_for_region(*r).is_some());
        region
            .map(Self)
            .ok_or_else(|| PhoneError::InvalidRegion(code.chars().take(8).collect()))
    }

    /// The upper-case code, such as `GB`.
    pub fn code(&self) -> String {
        self.0.as_region_str().as_str().to_owned()
    }
}

/// What libphonenumber tells about a parsed number, valid or not.
/// A number's digits as libphonenumber holds them: the E.164 string, and the parts of
/// its `PhoneNumber` that formatting reads. What [`Parsed`] and [`StoredE164`] share.
#[derive(Clone)]
struct Digits {
    e164: [u8; E164_CAPACITY],
    e164_len: u8,
    /// Digits of the country calling code in `e164` (after the `+`).
    cc_len: u8,
    country_code: u16,
    national_number: u64,
    italian_leading_zero: Option<bool>,
    number_of_leading_zeros: Option<i32>,
}

impl Digits {
    fn new(e164: &str, country_code: u16, number: &PhoneNumber) -> Result<Self, ParseErrorKind> {
        let bytes = e164.as_bytes();
        if bytes.len() > E164_CAPACITY {
            return Err(ParseErrorKind::TooLong);
        }
        let mut buf = [0u8; E164_CAPACITY];
        buf[..bytes.len()].copy_from_slice(bytes);
        Ok(Self {
            e164: buf,
            e164_len: bytes.len() as u8,
            cc_len: digit_count(country_code),
            country_code,
            national_number: number.national_number,
            italian_leading_zero: number.italian_leading_zero,
            number_of_leading_zeros: number.number_of_leading_zeros,
        })
    }

    /// The port's number, for formatting (no extension, no raw input).
    fn to_port(&self) -> PhoneNumber {
        PhoneNumber {
            country_code: i32::from(self.country_code),
            national_number: self.national_number,
            italian_leading_zero: self.italian_leading_zero,
            number_of_leading_zeros: self.number_of_leading_zeros,
            ..PhoneNumber::default()
        }
    }

    fn e164(&self) -> &str {
        std::str::from_utf8(&self.e164[..usize::from(self.e164_len)])
            .expect("an E.164 string is ASCII")
    }

    /// The digits after `+`.
    fn e164_digits(&self) -> &str {
        &self.e164()[1..]
    }

    fn national_significant_number(&self) -> &str {
        &self.e164()[1 + usize::from(self.cc_len)..]
    }

    fn format(&self, format: Format) -> String {
        match format {
            Format::E164 => self.e164().to_owned(),
            _ => PHONE_NUMBER_UTIL
                .format(&self.to_port(), format.to_port())
                .into_owned(),
        }
    }

    fn masked(&self) -> String {
        let number = self.to_port();
        let international = PHONE_NUMBER_UTIL.format(&number, PhoneNumberFormat::International);
        mask_international(
            &international,
            usize::from(self.cc_len),
            self.national_significant_number(),
        )
    }
}

#[derive(Clone)]
pub(crate) struct Parsed {
    digits: Digits,
    number_type: NumberType,
    region: Option<RegionStr>,
}

impl Parsed {
    /// Parses as libphonenumber's `parse`, dropping any extension.
    pub(crate) fn parse(
        input: &str,
        region: Option<DefaultRegion>,
    ) -> Result<(Self, PhoneNumber), ParseErrorKind> {
        conformance::check_input_length(input)?;
        let port = PHONE_NUMBER_UTIL.parse(input, region.map(|r| r.0));
        if conformance::rejected_as_not_viable(input, &port) {
            return Err(ParseErrorKind::NotANumber);
        }
        let mut number = port.map_err(|e| ParseErrorKind::from_port(&e))?;
        number.extension = None;
        let country_code =
            u16::try_from(number.country_code).map_err(|_| ParseErrorKind::InvalidCountryCode)?;
        let formatted = PHONE_NUMBER_UTIL.format(&number, PhoneNumberFormat::E164);
        let parsed = Self {
            digits: Digits::new(&formatted, country_code, &number)?,
            number_type: NumberType::from_port(PHONE_NUMBER_UTIL.get_number_type(&number)),
            region: PHONE_NUMBER_UTIL
                .get_region_for_number(&number)
                .map(|r| r.as_region_str()),
        };
        Ok((parsed, number))
    }

    /// libphonenumber's `isValidNumber`. It holds exactly when the number type is known:
    /// both look the number up in the metadata of the region `getRegionCodeForNumber`
    /// picks and test the same patterns (and a number without region has unknown type).
    /// Reading it off the type saves a second pass over the patterns; the fixture corpus
    /// checks the equivalence on every case.
    pub(crate) fn is_valid(&self) -> bool {
        self.number_type != NumberType::Unknown
    }

    pub(crate) fn e164(&self) -> &str {
        self.digits.e164()
    }

    pub(crate) fn national_significant_number(&self) -> &str {
        self.digits.national_significant_number()
    }

    pub(crate) fn country_code(&self) -> u16 {
        self.digits.country_code
    }

    pub(crate) fn number_type(&self) -> NumberType {
        self.number_type
    }

    pub(crate) fn region(&self) -> Option<&str> {
        self.region.as_ref().map(RegionStr::as_str)
    }

    pub(crate) fn format(&self, format: Format) -> String {
        self.digits.format(format)
    }

    pub(crate) fn masked(&self) -> String {
        self.digits.masked()
    }

    pub(crate) fn carrier(&self) -> Option<&'static str> {
        carrier_for(self.number_type, self.digits.e164_digits())
    }

    pub(crate) fn time_zones(&self) -> &'static [&'static str] {
        time_zones_for(
            self.number_type,
            self.digits.country_code,
            self.digits.e164_digits(),
        )
    }
}

fn digit_count(mut n: u16) -> u8 {
    let mut count = 1;
    while n >= 10 {
        n /= 10;
        count += 1;
    }
    count
}

/// A phone number that libphonenumber holds valid, in E.164 form.
///
/// ```
/// use ringfence_phone::{E164, NumberType};
///
/// let a = E164::parse("+44 7400 123456", None).unwrap();
/// let b = E164::parse("07400-123-456", Some("GB")).unwrap();
/// assert_eq!(a, b);
/// assert_eq!(a.expose(), "+447400123456");
/// assert_eq!(a.to_string(), "+44 •••• ••3456");
/// assert_eq!(a.number_type(), NumberType::Mobile);
/// ```
#[derive(Clone)]
pub struct E164(Parsed);

impl E164 {
    /// Parses `input` as libphonenumber does (international formats with punctuation,
    /// `tel:` URIs, Unicode digits, extensions, and, with a default region, that
    /// region's national and international dialling prefixes), and keeps it only if
    /// it is a valid number. An extension is dropped: it is not part of the identity.
    pub fn parse(input: &str, region: Option<&str>) -> Result<Self, PhoneError> {
        let region = region.map(DefaultRegion::parse).transpose()?;
        Self::parse_in(input, region)
    }

    /// [`E164::parse`] with an already checked default region.
    pub fn parse_in(input: &str, region: Option<DefaultRegion>) -> Result<Self, PhoneError> {
        let (parsed, _) = Parsed::parse(input, region)?;
        if parsed.is_valid() {
            Ok(Self(parsed))
        } else {
            Err(PhoneError::NotValid)
        }
    }

    pub(crate) fn from_valid(parsed: Parsed) -> Self {
        Self(parsed)
    }

    /// The raw E.164 string (`+447400123456`): the only way to see the whole number.
    pub fn expose(&self) -> &str {
        self.0.e164()
    }

    /// The masked form, also what `Display` and `Debug` print: the international format
    /// with every digit of the national number hidden except the last few (at most 4,
    /// at most half of them): `+44 •••• ••3456`.
    pub fn masked(&self) -> String {
        self.0.masked()
    }

    pub fn number_type(&self) -> NumberType {
        self.0.number_type()
    }

    /// The region (`GB`), or `001` for non-geographic numbers. Always `Some` for a
    /// valid number with the current metadata.
    pub fn region(&self) -> Option<&str> {
        self.0.region()
    }

    pub fn country_code(&self) -> u16 {
        self.0.country_code()
    }

    /// The national significant number: the digits after the country code, without
    /// any national prefix (`7400123456`). As sensitive as [`E164::expose`].
    pub fn national_significant_number(&self) -> &str {
        self.0.national_significant_number()
    }

    /// The number written in `format`. Every format but the masked one shows the
    /// whole number.
    pub fn format(&self, format: Format) -> String {
        self.0.format(format)
    }

    /// The carrier the number was originally allocated to (English name), for mobile,
    /// fixed-line-or-mobile and pager numbers where libphonenumber knows it.
    pub fn carrier(&self) -> Option<&'static str> {
        self.0.carrier()
    }

    /// The IANA time zones of the number's range (`["Europe/London"]`), as
    /// libphonenumber's mapper answers; `["Etc/Unknown"]` when it knows none.
    pub fn time_zones(&self) -> &'static [&'static str] {
        self.0.time_zones()
    }
}

impl PartialEq for E164 {
    fn eq(&self, other: &Self) -> bool {
        self.expose() == other.expose()
    }
}

impl Eq for E164 {}

impl Hash for E164 {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.expose().hash(state);
    }
}

impl fmt::Display for E164 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.masked())
    }
}

impl fmt::Debug for E164 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "E164({})", self.masked())
    }
}

/// A number this crate validated before, read back from storage in the form
/// [`E164::expose`] gave it (`+447400123456`): enough to show it masked and to name its
/// country code and national number, without parsing and validating it again.
///
/// Parsing runs libphonenumber's patterns to classify the number; a number that was
/// valid when it was stored needs none of that to be shown, and this rebuilds exactly
/// the `PhoneNumber` its parse had produced (the country calling code, which is a
/// prefix code, then the national significant number, its leading zeros as
/// libphonenumber counts them), at a fraction of the cost. It checks the form only,
/// not validity: use [`E164::parse`] for anything that did not come from an `E164`.
///
/// ```
/// use ringfence_phone::{StoredE164, E164};
///
/// let n = E164::parse("+39 06 1234 5678", None).unwrap();
/// let stored = StoredE164::from_e164(n.expose()).unwrap();
/// assert_eq!(stored.masked(), n.masked());
/// assert_eq!(stored.national_significant_number(), "0612345678");
/// ```
#[derive(Clone)]
pub struct StoredE164(Digits);

impl StoredE164 {
    /// Reads an E.164 string: `+`, a country calling code libphonenumber knows, and a
    /// national significant number of 2 to 17 digits.
    pub fn from_e164(e164: &str) -> Result<Self, PhoneError> {
        let digits = e164
            .strip_prefix('+')
            .filter(|d| d.bytes().all(|b| b.is_ascii_digit()))
            .ok_or(ParseErrorKind::NotANumber)?;
        if digits.starts_with('0') {
            return Err(ParseErrorKind::InvalidCountryCode.into());
        }
        // Country calling codes are a prefix code: at most one of the first three
        // digits' prefixes is one (libphonenumber's `extractCountryCode`).
        let (country_code, nsn) = (1..=3.min(digits.len()))
            .find_map(|len| {
                let code: u16 = digits[..len].parse().ok()?;
                PHONE_NUMBER_UTIL
                    .get_regions_for_country_calling_code(i32::from(code))
                    .map(|_| (code, &digits[len..]))
            })
            .ok_or(ParseErrorKind::InvalidCountryCode)?;
        if nsn.len() < MIN_NSN_LENGTH {
            return Err(ParseErrorKind::TooShortNsn.into());
        }
        if nsn.len() > MAX_NSN_LENGTH {
            return Err(ParseErrorKind::TooLong.into());
        }
        let leading_zeros = leading_zeros(nsn);
        let number = PhoneNumber {
            country_code: i32::from(country_code),
            national_number: nsn.parse().map_err(|_| ParseErrorKind::NotANumber)?,
            italian_leading_zero: leading_zeros.map(|_| true),
            number_of_leading_zeros: leading_zeros.filter(|&n| n > 1).map(|n| n as i32),
            ..PhoneNumber::default()
        };
        Ok(Self(Digits::new(e164, country_code, &number)?))
    }

    /// The E.164 string it was read from: the whole number.
    pub fn expose(&self) -> &str {
        self.0.e164()
    }

    /// The masked form, as [`E164::masked`] shows the same number.
    pub fn masked(&self) -> String {
        self.0.masked()
    }

    pub fn country_code(&self) -> u16 {
        self.0.country_code
    }

    /// The national significant number, as [`E164::national_significant_number`].
    pub fn national_significant_number(&self) -> &str {
        self.0.national_significant_number()
    }
}

impl fmt::Display for StoredE164 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.masked())
    }
}

impl fmt::Debug for StoredE164 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StoredE164({})", self.masked())
    }
}

/// The leading zeros of a national significant number as libphonenumber's parse counts
/// them (`getItalianLeadingZerosForPhoneNumber`): none for a single digit, and never
/// the last digit of an all-zero number.
fn leading_zeros(nsn: &str) -> Option<usize> {
    if nsn.len() < 2 {
        return None;
    }
    let zeros = nsn.bytes().take_while(|&b| b == b'0').count();
    match zeros {
        0 => None,
        n if n == nsn.len() => Some(n - 1),
        n => Some(n),
    }
}

impl fmt::Debug for Parsed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Parsed({})", self.masked())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    fn gb_mobile() -> E164 {
        E164::parse("+44 7400 123456", None).unwrap()
    }

    #[test]
    fn spellings_of_one_number_are_one_value() {
        let spellings = [
            ("+44 7400 123456", None),
            ("07400 123456", Some("GB")),
            ("07400-123-456", Some("gb")),
            ("00 44 7400 123456", Some("FR")),
            ("tel:+44-7400-123456", None),
            ("+44 7400 123456 ext. 12", None),
            ("＋４４７４００１２３４５６", None),
        ];
        let set: HashSet<E164> = spellings
            .iter()
            .map(|(s, r)| E164::parse(s, *r).unwrap())
            .collect();
        assert_eq!(set.len(), 1);
        assert_eq!(set.into_iter().next().unwrap().expose(), "+447400123456");
    }

    /// A stored number rebuilds the very `PhoneNumber` its parse produced, field by
    /// field, for every valid number of the fixture corpus (leading zeros included).
    #[test]
    fn a_stored_number_is_rebuilt_as_its_parse_made_it() {
        let corpus = include_str!("../tests/fixtures/corpus.jsonl");
        let (mut checked, mut with_zeros, mut with_several_zeros) = (0, 0, 0);
        for line in corpus.lines().filter(|l| !l.trim().is_empty()) {
            let row: serde_json::Value = serde_json::from_str(line).unwrap();
            let region = row["default_region"]
                .as_str()
                .map(|r| DefaultRegion::parse(r).unwrap());
            let Ok((parsed, _)) = Parsed::parse(row["input"].as_str().unwrap(), region) else {
                continue;
            };
            if !parsed.is_valid() {
                continue;
            }
            let (want, got) = (
                &parsed.digits,
                StoredE164::from_e164(parsed.e164()).unwrap().0,
            );
            let fields = |d: &Digits| {
                (
                    d.e164().to_owned(),
                    d.cc_len,
                    d.country_code,
                    d.national_number,
                    d.italian_leading_zero,
                    d.number_of_leading_zeros,
                )
            };
            assert_eq!(fields(&got), fields(want), "{}", parsed.masked());
            checked += 1;
            with_zeros += usize::from(want.italian_leading_zero.is_some());
            with_several_zeros += usize::from(want.number_of_leading_zeros.is_some());
        }
        assert!(
            checked > 5_000 && with_zeros > 100,
            "{checked}, {with_zeros}"
        );
        // No valid number has two leading zeros today; the rule is pinned below.
        assert_eq!(with_several_zeros, 0);
        assert_eq!(leading_zeros("0"), None);
        assert_eq!(leading_zeros("61234"), None);
        assert_eq!(leading_zeros("061234"), Some(1));
        assert_eq!(leading_zeros("0061234"), Some(2));
        assert_eq!(leading_zeros("000"), Some(2));
    }

    #[test]
    fn a_stored_number_must_have_the_form_of_one() {
        let code = |s: &str| StoredE164::from_e164(s).map(|_| ()).map_err(|e| e.code());
        assert_eq!(code("+447400123456"), Ok(()));
        assert_eq!(code("447400123456"), Err("not_a_number"));
        assert_eq!(code("+44 7400 123456"), Err("not_a_number"));
        assert_eq!(code("+"), Err("invalid_country_code"));
        assert_eq!(code("+0447400123456"), Err("invalid_country_code"));
        assert_eq!(code("+999123456"), Err("invalid_country_code"));
        assert_eq!(code("+447"), Err("too_short_nsn"));
        assert_eq!(code("+44123456789012345678"), Err("too_long"));
        let n = StoredE164::from_e164("+447400123456").unwrap();
        assert_eq!(
            format!("{n} {n:?}"),
            "+44 •••• ••3456 StoredE164(+44 •••• ••3456)"
        );
    }

    #[test]
    fn display_and_debug_never_show_the_whole_number() {
        let n = gb_mobile();
        assert_eq!(n.to_string(), "+44 •••• ••3456");
        assert_eq!(format!("{n:?}"), "E164(+44 •••• ••3456)");
        assert!(!format!("{n:?}").contains("7400"));
    }

    #[test]
    fn describes_the_number() {
        let n = gb_mobile();
        assert_eq!(n.number_type(), NumberType::Mobile);
        assert_eq!(n.region(), Some("GB"));
        assert_eq!(n.country_code(), 44);
        assert_eq!(n.national_significant_number(), "7400123456");
        assert_eq!(n.format(Format::E164), "+447400123456");
        assert_eq!(n.format(Format::International), "+44 7400 123456");
        assert_eq!(n.format(Format::National), "07400 123456");
        assert_eq!(n.format(Format::Rfc3966), "tel:+44-7400-123456");
        assert_eq!(n.carrier(), Some("Three"));
        assert_eq!(
            n.time_zones(),
            [
                "Europe/Guernsey",
                "Europe/Isle_of_Man",
                "Europe/Jersey",
                "Europe/London"
            ]
        );
    }

    #[test]
    fn italian_leading_zero_survives() {
        let n = E164::parse("+39 06 6982 0000", None).unwrap();
        assert_eq!(n.expose(), "+390669820000");
        assert_eq!(n.national_significant_number(), "0669820000");
        assert_eq!(n.format(Format::National), "06 6982 0000");
    }

    #[test]
    fn non_geographic_numbers_have_region_001() {
        let n = E164::parse("+800 1234 5678", None).unwrap();
        assert_eq!(n.region(), Some("001"));
        assert_eq!(n.number_type(), NumberType::TollFree);
    }

    #[test]
    fn errors_are_told_apart() {
        assert_eq!(
            E164::parse("7400 123456", None),
            Err(PhoneError::Parse(ParseErrorKind::InvalidCountryCode))
        );
        assert_eq!(
            E164::parse("hello", None).unwrap_err().code(),
            "not_a_number"
        );
        assert_eq!(
            E164::parse("+44 7911 12345", None),
            Err(PhoneError::NotValid)
        );
        assert_eq!(
            E164::parse("07400 123456", Some("XX")),
            Err(PhoneError::InvalidRegion("XX".into()))
        );
        assert_eq!(
            E164::parse("07400 123456", Some("001")).unwrap_err().code(),
            "invalid_region"
        );
        assert!(DefaultRegion::parse("Great Britain").is_err());
        assert_eq!(DefaultRegion::parse("gb").unwrap().code(), "GB");
    }

    #[test]
    fn is_send_sync_and_small() {
        fn assert_send_sync<T: Send + Sync + Clone>() {}
        assert_send_sync::<E164>();
        assert!(std::mem::size_of::<E164>() <= 80);
    }
}
