//! Longest-prefix look-up in the tables that `build.rs` compiles from libphonenumber's
//! carrier and time-zone files.
//!
//! A table is a sorted slice of keys (a prefix's digits shifted left by five bits, plus
//! its length, so `1` and `01` differ) and a parallel slice of value indices. Looking a
//! number up tries its longest prefix first and stops at the first key found, exactly as
//! libphonenumber's prefix mappers do. The build script computes keys the same way.

include!(concat!(env!("OUT_DIR"), "/prefix_tables.rs"));

/// Carrier prefixes; values index [`CARRIER_NAMES`], `u16::MAX` meaning "no English name".
pub(crate) const CARRIERS: PrefixTable = PrefixTable {
    keys: &CARRIER_KEYS,
    values: &CARRIER_VALUES,
    max_len: CARRIER_MAX_LEN,
};

/// Time-zone prefixes; values index [`TIME_ZONE_SETS`].
pub(crate) const TIME_ZONES: PrefixTable = PrefixTable {
    keys: &TIME_ZONE_KEYS,
    values: &TIME_ZONE_VALUES,
    max_len: TIME_ZONE_MAX_LEN,
};

/// The English carrier name of a [`CARRIERS`] value.
pub(crate) fn carrier_name(value: u16) -> Option<&'static str> {
    CARRIER_NAMES.get(usize::from(value)).copied()
}

/// The time-zone list of a [`TIME_ZONES`] value.
pub(crate) fn time_zone_set(value: u16) -> &'static [&'static str] {
    TIME_ZONE_SETS[usize::from(value)]
}

/// A compiled prefix table.
pub(crate) struct PrefixTable {
    pub(crate) keys: &'static [u64],
    pub(crate) values: &'static [u16],
    pub(crate) max_len: usize,
}

impl PrefixTable {
    /// The value index of the longest prefix of `digits` (ASCII digits only) in the
    /// table, trying every length from the longest down to 1.
    pub(crate) fn longest_match(&self, digits: &str) -> Option<u16> {
        let digits = digits.as_bytes();
        let longest = self.max_len.min(digits.len());
        (1..=longest).rev().find_map(|len| self.get(&digits[..len]))
    }

    /// The value index of exactly this prefix.
    pub(crate) fn get(&self, prefix: &[u8]) -> Option<u16> {
        let key = key(prefix)?;
        self.keys
            .binary_search(&key)
            .ok()
            .map(|index| self.values[index])
    }
}

/// The key of a digit prefix, `None` if it holds anything but ASCII digits or is too
/// long for a `u64`.
fn key(prefix: &[u8]) -> Option<u64> {
    if prefix.is_empty() || prefix.len() > 18 {
        return None;
    }
    let mut value: u64 = 0;
    for &b in prefix {
        if !b.is_ascii_digit() {
            return None;
        }
        value = value * 10 + u64::from(b - b'0');
    }
    Some((value << 5) | prefix.len() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    static KEYS: [u64; 3] = [(1 << 5) | 1, (1 << 5) | 2, (44 << 5) | 2];
    static VALUES: [u16; 3] = [7, 8, 9];
    const TABLE: PrefixTable = PrefixTable {
        keys: &KEYS,
        values: &VALUES,
        max_len: 2,
    };

    #[test]
    fn longest_prefix_wins_and_leading_zeros_count() {
        assert_eq!(TABLE.longest_match("4412"), Some(9));
        assert_eq!(TABLE.longest_match("1999"), Some(7));
        assert_eq!(TABLE.longest_match("0199"), Some(8));
        assert_eq!(TABLE.longest_match("4"), None);
        assert_eq!(TABLE.longest_match(""), None);
    }
}
