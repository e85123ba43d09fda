//! Where the `rlibphonenumber` port answers differently from libphonenumber, and the
//! corrections that make ringfence answer as libphonenumber does. Each one was found by
//! the fixture corpus (`tests/exactness.rs`); each is a check on the input, never a
//! parsing rule of our own.
//!
//! 1. Input length: libphonenumber refuses inputs longer than 250 characters with
//!    `TOO_LONG` before reading them; the port has no such limit.
//! 2. Viability: before parsing, libphonenumber asks whether the extracted string could
//!    be a phone number at all, with the pattern `DIGITS{2} | LONG (EXTENSION)?`. The
//!    port groups it as `(DIGITS{2} | LONG) (EXTENSION)?`, so it also accepts two digits
//!    followed by an extension (`25#8`), which libphonenumber calls `NOT_A_NUMBER`.

use rlibphonenumber::{ParseError, PhoneNumber, PHONE_NUMBER_UTIL};

use crate::number::ParseErrorKind;

/// libphonenumber refuses inputs longer than this many characters.
const MAX_INPUT_CHARS: usize = 250;

const RFC3966_PHONE_CONTEXT: &str = ";phone-context=";
const RFC3966_PREFIX: &str = "tel:";
const RFC3966_ISDN_SUBADDRESS: &str = ";isub=";

/// Correction 1, applied before the port sees the input.
pub(crate) fn check_input_length(input: &str) -> Result<(), ParseErrorKind> {
    // Counted in characters (code points), as the reference implementation does.
    if input.len() > MAX_INPUT_CHARS && input.chars().count() > MAX_INPUT_CHARS {
        Err(ParseErrorKind::TooLong)
    } else {
        Ok(())
    }
}

/// Correction 2, applied to the port's answer: `true` when libphonenumber would have
/// stopped at its viability test with `NOT_A_NUMBER`.
pub(crate) fn rejected_as_not_viable(input: &str, port: &Result<PhoneNumber, ParseError>) -> bool {
    // Only a string that passed the port's test through "two digits and an extension"
    // is at stake. From there the port either keeps the extension or fails on the
    // missing region or the two-digit national number; any other answer cannot come
    // from such a string.
    let at_stake = match port {
        Ok(number) => number.extension.is_some(),
        Err(e) => matches!(
            e,
            ParseError::InvalidCountryCode | ParseError::TooShortNsn | ParseError::TooShortAfterIdd
        ),
    };
    if !at_stake {
        return false;
    }
    let Some(candidate) = national_number_for_parsing(input) else {
        return false;
    };
    let mut chars = candidate.chars();
    let two_digits_then_more = chars.next().is_some_and(is_digit)
        && chars.next().is_some_and(is_digit)
        && chars.next().is_some_and(|c| !is_digit(c));
    // With a `+` in front, the two-digit alternative cannot match, so the port's own test
    // answers for the long alternative with its extension: libphonenumber's pattern.
    two_digits_then_more && !PHONE_NUMBER_UTIL.is_viable_phone_number(format!("+{candidate}"))
}

/// libphonenumber's `buildNationalNumberForParsing`, as far as the viability test
/// needs it: `None` when the string starts with `+` (never at stake) or has no start.
fn national_number_for_parsing(input: &str) -> Option<&str> {
    let candidate = if let Some(context_at) = input.find(RFC3966_PHONE_CONTEXT) {
        let context = &input[context_at + RFC3966_PHONE_CONTEXT.len()..];
        if context.starts_with('+') {
            return None;
        }
        let start = input
            .find(RFC3966_PREFIX)
            .map_or(0, |i| i + RFC3966_PREFIX.len());
        input.get(start..context_at)?
    } else {
        extract_possible_number(input)?
    };
    Some(match candidate.find(RFC3966_ISDN_SUBADDRESS) {
        Some(i) if i > 0 => &candidate[..i],
        _ => candidate,
    })
}

/// libphonenumber's `extractPossibleNumber`: from the first digit or plus sign, without
/// trailing characters that are neither letters, digits nor `#`, and cut before a second
/// number (`/x…`).
fn extract_possible_number(input: &str) -> Option<&str> {
    let start = input.find(|c: char| c == '+' || c == '\u{FF0B}' || is_digit(c))?;
    let rest = &input[start..];
    let end = rest
        .char_indices()
        .rev()
        .take_while(|&(_, c)| c == '_' || (c != '#' && !c.is_alphanumeric()))
        .last()
        .map_or(rest.len(), |(i, _)| i);
    let rest = &rest[..end];
    Some(second_number_start(rest).map_or(rest, |i| &rest[..i]))
}

/// Where `[\\/] *x` first matches.
fn second_number_start(s: &str) -> Option<usize> {
    s.char_indices()
        .filter(|&(_, c)| c == '\\' || c == '/')
        .find(|&(i, _)| s[i + 1..].trim_start_matches(' ').starts_with('x'))
        .map(|(i, _)| i)
}

/// A decimal digit of any script, as libphonenumber reads digits.
fn is_digit(c: char) -> bool {
    let mut buf = [0u8; 4];
    !PHONE_NUMBER_UTIL
        .normalize_digits_only(c.encode_utf8(&mut buf))
        .is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extracts_as_libphonenumber() {
        assert_eq!(extract_possible_number("Tel: +44 20 ..."), Some("+44 20"));
        assert_eq!(extract_possible_number(")tkU\u{a0}e25#8"), Some("25#8"));
        assert_eq!(
            extract_possible_number("530 583 6985 x302/x2303"),
            Some("530 583 6985 x302")
        );
        assert_eq!(extract_possible_number("abc"), None);
        assert_eq!(
            national_number_for_parsing("tel:25#8;phone-context=example.com"),
            Some("25#8")
        );
        assert_eq!(
            national_number_for_parsing("tel:25;phone-context=+44"),
            None
        );
    }

    #[test]
    fn two_digits_and_an_extension_are_not_a_number() {
        let input = "25#8";
        let port = PHONE_NUMBER_UTIL.parse(input, Some(rlibphonenumber::Region::IE));
        assert!(rejected_as_not_viable(input, &port));
        // Three digits are a (short, invalid) number for libphonenumber too.
        let input = "255#8";
        let port = PHONE_NUMBER_UTIL.parse(input, Some(rlibphonenumber::Region::IE));
        assert!(!rejected_as_not_viable(input, &port));
        // "x" is also punctuation, so libphonenumber's long alternative takes `25x8`.
        let input = "25x8";
        let port = PHONE_NUMBER_UTIL.parse(input, Some(rlibphonenumber::Region::IE));
        assert!(!rejected_as_not_viable(input, &port));
    }
}
