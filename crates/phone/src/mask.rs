//! The masked form of a phone number, the only form ringfence shows in logs, errors and
//! screens: `+44 •••• ••3456`.
//!
//! Rule: write the number in libphonenumber's international format, keep the country
//! calling code and the grouping, and replace every digit of the national significant
//! number by `•` except the last `min(4, len / 2)`. So at least half of the national
//! number is always hidden, and never more than four digits are shown.

/// The character that stands for a hidden digit.
pub const MASK_CHAR: char = '•';

/// How many trailing digits of a national significant number of `len` digits stay
/// visible.
pub const fn visible_digits(len: usize) -> usize {
    let half = len / 2;
    if half < 4 {
        half
    } else {
        4
    }
}

/// Masks `international` (`+44 7911 123456`), whose first `cc_len` digits are the
/// country calling code and the rest the national significant number `nsn`.
pub(crate) fn mask_international(international: &str, cc_len: usize, nsn: &str) -> String {
    let hidden = nsn.len() - visible_digits(nsn.len());
    let digits = international.bytes().filter(u8::is_ascii_digit).count();
    let mut out = String::with_capacity(international.len() + 2 * nsn.len());
    if digits != cc_len + nsn.len() || !international.starts_with('+') {
        // Not the shape we expect: fall back to "+CC" and the masked digits alone.
        return fallback(international, cc_len, nsn, hidden);
    }
    let mut seen = 0;
    for c in international.chars() {
        if c.is_ascii_digit() {
            seen += 1;
            if seen > cc_len && seen <= cc_len + hidden {
                out.push(MASK_CHAR);
                continue;
            }
        }
        out.push(c);
    }
    out
}

fn fallback(international: &str, cc_len: usize, nsn: &str, hidden: usize) -> String {
    let mut out = String::from("+");
    out.extend(
        international
            .chars()
            .filter(char::is_ascii_digit)
            .take(cc_len),
    );
    out.push(' ');
    out.extend(std::iter::repeat_n(MASK_CHAR, hidden));
    out.push_str(&nsn[hidden..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_country_code_grouping_and_last_digits() {
        assert_eq!(
            mask_international("+44 7911 123456", 2, "7911123456"),
            "+44 •••• ••3456"
        );
        assert_eq!(
            mask_international("+1 202-555-0173", 1, "2025550173"),
            "+1 •••-•••-0173"
        );
    }

    #[test]
    fn short_numbers_show_at_most_half() {
        assert_eq!(visible_digits(4), 2);
        assert_eq!(visible_digits(5), 2);
        assert_eq!(visible_digits(7), 3);
        assert_eq!(visible_digits(8), 4);
        assert_eq!(visible_digits(12), 4);
        assert_eq!(mask_international("+683 7290", 3, "7290"), "+683 ••90");
    }

    #[test]
    fn unexpected_shape_falls_back_to_plain_mask() {
        assert_eq!(
            mask_international("+44 79", 2, "7911123456"),
            "+44 ••••••3456"
        );
    }
}
