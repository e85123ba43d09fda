//! Verify services: named configurations of the verification lifecycle (code length,
//! lifetime, limits, channels, message templates, WebOTP and Android SMS Retriever
//! lines, test numbers).
//!
//! A `ServiceConfig` can only exist valid: every constructor and patch goes through
//! `validate`, whose errors name the offending field. Test numbers are kept as a blind
//! index and a masked form, never as the number itself.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::Channel;

pub const DEFAULT_TEMPLATE: &str = "Your {service} verification code is: {code}";

/// A test number answers to a fixed code and never sends a message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TestNumber {
    /// Hex of the number's blind index.
    pub blind_index: String,
    /// Masked form, for display.
    pub masked: String,
    pub code: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    pub name: String,
    pub friendly_name: String,
    pub code_length: u8,
    pub ttl_seconds: u32,
    pub max_check_attempts: u32,
    pub max_sends: u32,
    pub resend_cooldown_seconds: u32,
    pub lockout_seconds: u32,
    pub channels: Vec<Channel>,
    pub default_locale: String,
    pub templates: BTreeMap<String, String>,
    pub webotp_domain: Option<String>,
    pub android_app_hash: Option<String>,
    pub test_numbers: Vec<TestNumber>,
    /// Number types, regions, rate limits and the accounts cap (anti-abuse).
    #[serde(default)]
    pub abuse: crate::abuse::AbusePolicy,
}

/// A change to a service; absent fields stay as they are. `Some(None)` clears an
/// optional field.
#[derive(Debug, Clone, Default)]
pub struct ServicePatch {
    pub name: Option<String>,
    pub friendly_name: Option<String>,
    pub code_length: Option<u8>,
    pub ttl_seconds: Option<u32>,
    pub max_check_attempts: Option<u32>,
    pub max_sends: Option<u32>,
    pub resend_cooldown_seconds: Option<u32>,
    pub lockout_seconds: Option<u32>,
    pub channels: Option<Vec<Channel>>,
    pub default_locale: Option<String>,
    pub templates: Option<BTreeMap<String, String>>,
    pub webotp_domain: Option<Option<String>>,
    pub android_app_hash: Option<Option<String>>,
    pub test_numbers: Option<Vec<TestNumber>>,
    pub abuse: Option<crate::abuse::AbusePolicy>,
}

/// A configuration value out of range; `field` is the API field name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct ConfigError {
    pub field: &'static str,
    pub reason: String,
}

fn err(field: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        field,
        reason: reason.into(),
    }
}

impl ServiceConfig {
    /// The defaults: 6 digits, 10 minutes, 5 checks, 5 sends, 30 s between sends,
    /// 15 minutes of lockout after the last wrong code, SMS only, English template.
    pub fn default_named(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            friendly_name: name.to_owned(),
            code_length: 6,
            ttl_seconds: 600,
            max_check_attempts: 5,
            max_sends: 5,
            resend_cooldown_seconds: 30,
            lockout_seconds: 900,
            channels: vec![Channel::Sms],
            default_locale: "en".to_owned(),
            templates: BTreeMap::from([("en".to_owned(), DEFAULT_TEMPLATE.to_owned())]),
            webotp_domain: None,
            android_app_hash: None,
            test_numbers: Vec::new(),
            abuse: crate::abuse::AbusePolicy::default(),
        }
    }

    pub fn apply(&self, p: ServicePatch) -> Result<Self, ConfigError> {
        let mut c = self.clone();
        macro_rules! set {
            ($($f:ident),*) => { $( if let Some(v) = p.$f { c.$f = v; } )* };
        }
        set!(
            name,
            friendly_name,
            code_length,
            ttl_seconds,
            max_check_attempts,
            max_sends,
            resend_cooldown_seconds,
            lockout_seconds,
            channels,
            default_locale,
            templates,
            webotp_domain,
            android_app_hash,
            test_numbers,
            abuse
        );
        c.validate()?;
        Ok(c)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        self.abuse.validate()?;
        let name_ok = (1..=64).contains(&self.name.len())
            && self
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !name_ok {
            return Err(err(
                "name",
                "1 to 64 characters of a-z, A-Z, 0-9, '-' and '_'",
            ));
        }
        if self.friendly_name.is_empty()
            || self.friendly_name.chars().count() > 64
            || has_control(&self.friendly_name)
        {
            return Err(err("friendly_name", "1 to 64 printable characters"));
        }
        if !(4..=10).contains(&self.code_length) {
            return Err(err("code_length", "must be between 4 and 10"));
        }
        if !(60..=3600).contains(&self.ttl_seconds) {
            return Err(err("ttl_seconds", "must be between 60 and 3600"));
        }
        if !(1..=20).contains(&self.max_check_attempts) {
            return Err(err("max_check_attempts", "must be between 1 and 20"));
        }
        if !(1..=20).contains(&self.max_sends) {
            return Err(err("max_sends", "must be between 1 and 20"));
        }
        if self.resend_cooldown_seconds > 3600 {
            return Err(err("resend_cooldown_seconds", "must be at most 3600"));
        }
        if self.lockout_seconds > 86_400 {
            return Err(err("lockout_seconds", "must be at most 86400"));
        }
        if self.channels.is_empty() {
            return Err(err("channels", "at least one channel"));
        }
        if !valid_locale(&self.default_locale) {
            return Err(err("default_locale", "a language tag such as en or pt-BR"));
        }
        for (locale, t) in &self.templates {
            if !valid_locale(locale) {
                return Err(err(
                    "templates",
                    "keys are language tags such as en or pt-BR",
                ));
            }
            if !t.contains("{code}") || t.chars().count() > 480 || has_control_except_newline(t) {
                return Err(err(
                    "templates",
                    "each template contains {code}, at most 480 printable characters",
                ));
            }
        }
        if !self.templates.contains_key(&self.default_locale) {
            return Err(err("templates", "must hold a template for default_locale"));
        }
        if let Some(d) = &self.webotp_domain {
            let ok = (1..=253).contains(&d.len())
                && d.split('.').all(|l| {
                    !l.is_empty()
                        && l.len() <= 63
                        && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                });
            if !ok {
                return Err(err("webotp_domain", "a host name such as example.com"));
            }
        }
        if let Some(h) = &self.android_app_hash {
            if h.len() != 11
                || !h
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
            {
                return Err(err(
                    "android_app_hash",
                    "the 11-character app hash of the SMS Retriever API",
                ));
            }
        }
        if self.test_numbers.len() > 100 {
            return Err(err("test_numbers", "at most 100"));
        }
        for t in &self.test_numbers {
            if t.code.len() != usize::from(self.code_length)
                || !t.code.bytes().all(|b| b.is_ascii_digit())
            {
                return Err(err("test_numbers", "each code has code_length digits"));
            }
        }
        Ok(())
    }

    pub fn allows(&self, ch: Channel) -> bool {
        self.channels.contains(&ch)
    }

    /// The fixed code of a test number, given its blind index. Most services have no
    /// test numbers, so the index is hex-encoded only when there are some.
    pub fn test_code_for(&self, blind_index: &[u8]) -> Option<&str> {
        if self.test_numbers.is_empty() {
            return None;
        }
        let hex = hex::encode(blind_index);
        self.test_numbers
            .iter()
            .find(|t| t.blind_index == hex)
            .map(|t| t.code.as_str())
    }

    /// The template for a requested locale: exact tag, then its language, then the
    /// service's default.
    pub fn template_for(&self, locale: Option<&str>) -> (&str, &str) {
        if let Some(l) = locale {
            if let Some((k, t)) = self.templates.get_key_value(l) {
                return (k, t);
            }
            let lang = l.split(['-', '_']).next().unwrap_or(l);
            if let Some((k, t)) = self.templates.get_key_value(lang) {
                return (k, t);
            }
        }
        let t = self
            .templates
            .get(&self.default_locale)
            .map(String::as_str)
            .unwrap_or(DEFAULT_TEMPLATE);
        (&self.default_locale, t)
    }

    /// The message text for a code. WebOTP (`@domain #code`) must be the last line;
    /// the Android SMS Retriever hash goes on the line before it.
    pub fn render(&self, locale: Option<&str>, code: &str) -> String {
        let (_, t) = self.template_for(locale);
        let mut body = t
            .replace("{service}", &self.friendly_name)
            .replace("{minutes}", &(self.ttl_seconds / 60).to_string())
            .replace("{code}", code);
        if let Some(h) = &self.android_app_hash {
            body.push_str("\n\n");
            body.push_str(h);
        }
        if let Some(d) = &self.webotp_domain {
            body.push_str(if self.android_app_hash.is_some() {
                "\n"
            } else {
                "\n\n"
            });
            body.push_str(&format!("@{d} #{code}"));
        }
        body
    }
}

fn has_control(s: &str) -> bool {
    s.chars().any(char::is_control)
}

fn has_control_except_newline(s: &str) -> bool {
    s.chars().any(|c| c.is_control() && c != '\n')
}

/// A language tag: a 2–3 letter language, optionally `-` and a 2–8 character subtag.
pub fn valid_locale(s: &str) -> bool {
    let mut parts = s.split(['-', '_']);
    let lang = parts.next().unwrap_or("");
    let lang_ok = (2..=3).contains(&lang.len()) && lang.bytes().all(|b| b.is_ascii_alphabetic());
    lang_ok
        && parts.all(|p| (2..=8).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_alphanumeric()))
        && s.len() <= 20
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        ServiceConfig::default_named("default").validate().unwrap();
    }

    #[test]
    fn patch_validates_and_names_the_field() {
        let c = ServiceConfig::default_named("s");
        let e = c
            .apply(ServicePatch {
                code_length: Some(11),
                ..Default::default()
            })
            .unwrap_err();
        assert_eq!(e.field, "code_length");
        let e = c
            .apply(ServicePatch {
                templates: Some(BTreeMap::from([("en".into(), "no code".into())])),
                ..Default::default()
            })
            .unwrap_err();
        assert_eq!(e.field, "templates");
        let ok = c
            .apply(ServicePatch {
                max_sends: Some(3),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(ok.max_sends, 3);
    }

    #[test]
    fn renders_template_with_webotp_last() {
        let mut c = ServiceConfig::default_named("acme");
        c.friendly_name = "Acme".into();
        c.templates
            .insert("fr".into(), "Votre code {service} : {code}".into());
        c.webotp_domain = Some("acme.example".into());
        assert_eq!(
            c.render(Some("fr-CA"), "123456"),
            "Votre code Acme : 123456\n\n@acme.example #123456"
        );
        c.android_app_hash = Some("FA+9qCX9VSu".into());
        assert_eq!(
            c.render(Some("de"), "123456"),
            "Your Acme verification code is: 123456\n\nFA+9qCX9VSu\n@acme.example #123456"
        );
    }

    #[test]
    fn locales() {
        assert!(valid_locale("en"));
        assert!(valid_locale("pt-BR"));
        assert!(!valid_locale("e"));
        assert!(!valid_locale("en-"));
        assert!(!valid_locale("<script>"));
    }
}
