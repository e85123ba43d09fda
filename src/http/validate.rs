//! Checks of free-form request values. Each error names the field and the rule, never
//! the value.

use std::net::IpAddr;

use super::ApiError;

fn bad(field: &str, rule: &str) -> ApiError {
    ApiError::InvalidField(format!("{field}: {rule}"))
}

/// An integrator's account reference: 1–128 characters of letters, digits and
/// `. _ : @ + -` (so e-mail addresses and UUIDs fit).
pub fn account_ref(s: &str) -> Result<String, ApiError> {
    let ok = (1..=128).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._:@+-".contains(&b));
    ok.then(|| s.to_owned()).ok_or_else(|| {
        bad(
            "account_ref",
            "1 to 128 characters of A-Z a-z 0-9 . _ : @ + -",
        )
    })
}

pub fn purpose(s: &str) -> Result<String, ApiError> {
    let ok = (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._:-".contains(&b));
    ok.then(|| s.to_owned())
        .ok_or_else(|| bad("purpose", "1 to 64 characters of a-z 0-9 . _ : -"))
}

pub fn locale(s: &str) -> Result<String, ApiError> {
    crate::verify::service::valid_locale(s)
        .then(|| s.to_owned())
        .ok_or_else(|| bad("locale", "a language tag such as en or pt-BR"))
}

pub fn ip(s: &str) -> Result<String, ApiError> {
    s.parse::<IpAddr>()
        .map(|ip| ip.to_string())
        .map_err(|_| bad("ip", "an IPv4 or IPv6 address"))
}

/// Printable text without control characters, at most `max` bytes.
pub fn text(field: &str, s: &str, max: usize) -> Result<String, ApiError> {
    let ok = s.len() <= max && !s.chars().any(char::is_control);
    ok.then(|| s.to_owned())
        .ok_or_else(|| bad(field, &format!("at most {max} bytes of printable text")))
}

/// An id or name used in a path or to pick a service.
pub fn reference(field: &str, s: &str, max: usize) -> Result<(), ApiError> {
    let ok = (1..=max).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    ok.then_some(())
        .ok_or_else(|| bad(field, "letters, digits, '-' and '_'"))
}

/// Verification ids look like `VE` and 32 hex digits; anything else cannot exist.
pub fn verification_id(s: &str) -> Result<(), ApiError> {
    let ok = s.len() == 34 && s.starts_with("VE") && s[2..].bytes().all(|b| b.is_ascii_hexdigit());
    ok.then_some(()).ok_or(ApiError::VerificationNotFound)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn account_refs() {
        assert!(account_ref("user-42").is_ok());
        assert!(account_ref("a.b+c@example.com").is_ok());
        assert!(account_ref("").is_err());
        assert!(account_ref("<script>").is_err());
        assert!(account_ref("x y").is_err());
        assert!(account_ref(&"a".repeat(129)).is_err());
    }

    #[test]
    fn other_fields() {
        assert!(purpose("signup").is_ok());
        assert!(purpose("Sign Up").is_err());
        assert_eq!(ip("2001:db8::1").unwrap(), "2001:db8::1");
        assert!(ip("999.1.1.1").is_err());
        assert!(text("user_agent", "Mozilla/5.0", 512).is_ok());
        assert!(text("user_agent", "a\u{0}b", 512).is_err());
        assert!(verification_id("VE0123456789abcdef0123456789abcdef").is_ok());
        assert!(verification_id("VE../../etc").is_err());
    }
}
