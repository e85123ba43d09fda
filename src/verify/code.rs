//! One-time codes: uniform decimal digits from the operating system's CSPRNG.
//!
//! Each digit is drawn with `gen_range(0..10)`, which rejects out-of-range samples
//! instead of reducing modulo 10, so every code of the configured length is equally
//! likely (no modulo bias). A 6-digit code has log2(10^6) ≈ 19.9 bits of entropy.

use rand::rngs::OsRng;
use rand::Rng;
use zeroize::Zeroize;

/// A code as typed by a person: 4 to 10 ASCII digits. Never printed by `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct OtpCode(String);

pub const MIN_LEN: usize = 4;
pub const MAX_LEN: usize = 10;

impl OtpCode {
    /// A new random code of `len` digits (`len` within 4..=10).
    pub fn generate(len: u8) -> Self {
        let len = usize::from(len).clamp(MIN_LEN, MAX_LEN);
        let mut rng = OsRng;
        Self(
            (0..len)
                .map(|_| char::from(b'0' + rng.gen_range(0..10u8)))
                .collect(),
        )
    }

    /// Accepts what a person may type: digits only, 4 to 10 of them.
    pub fn parse(s: &str) -> Option<Self> {
        let ok = (MIN_LEN..=MAX_LEN).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_digit());
        ok.then(|| Self(s.to_owned()))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl Drop for OtpCode {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl std::fmt::Debug for OtpCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OtpCode(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_codes_have_the_length_and_only_digits() {
        for len in 4..=10u8 {
            let c = OtpCode::generate(len);
            assert_eq!(c.expose().len(), usize::from(len));
            assert!(c.expose().bytes().all(|b| b.is_ascii_digit()));
        }
    }

    #[test]
    fn digits_are_uniform() {
        // 60,000 digits: each of 10 values expected 6,000 times. A chi-square statistic
        // above 27.88 (9 degrees of freedom, p = 0.001) would mean a biased generator.
        let mut counts = [0u32; 10];
        for _ in 0..10_000 {
            for b in OtpCode::generate(6).expose().bytes() {
                counts[usize::from(b - b'0')] += 1;
            }
        }
        let expected = 6_000.0;
        let chi2: f64 = counts
            .iter()
            .map(|&c| (f64::from(c) - expected).powi(2) / expected)
            .sum();
        assert!(chi2 < 27.88, "chi2 = {chi2}, counts = {counts:?}");
    }

    #[test]
    fn parse_accepts_only_plain_digit_codes() {
        assert!(OtpCode::parse("123456").is_some());
        assert!(OtpCode::parse("123").is_none());
        assert!(OtpCode::parse("12345678901").is_none());
        assert!(OtpCode::parse("12 456").is_none());
        assert!(OtpCode::parse("١٢٣٤٥٦").is_none());
        assert_eq!(
            format!("{:?}", OtpCode::parse("123456").unwrap()),
            "OtpCode(<redacted>)"
        );
    }
}
