//! What a service lets through: number types per channel, regions per channel, the rate
//! limits on every key an attacker can vary, and the accounts-per-number cap.
//!
//! A policy is part of a service's configuration (`ServiceConfig::abuse`) and is
//! stored with it as JSON; every field has a default, so configurations stored before
//! a field existed keep working with that field's default.

use ringfence_phone::NumberType;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::counters::Rate;
use crate::verify::{Channel, ConfigError};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct AbusePolicy {
    pub number_types: NumberTypes,
    pub geo: GeoPolicy,
    pub limits: Limits,
    pub accounts: AccountsPolicy,
}

impl Default for AbusePolicy {
    /// Every region allowed (the default service of a fresh install, and services
    /// stored before geo permissions existed); see [`GeoPolicy`].
    fn default() -> Self {
        Self {
            number_types: NumberTypes::default(),
            geo: GeoPolicy::allow_all(),
            limits: Limits::default(),
            accounts: AccountsPolicy::default(),
        }
    }
}

/// Which number types may receive each channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct NumberTypes {
    #[schema(value_type = Vec<String>)]
    pub sms: Vec<NumberType>,
    #[schema(value_type = Vec<String>)]
    pub voice: Vec<NumberType>,
    #[schema(value_type = Vec<String>)]
    pub whatsapp: Vec<NumberType>,
}

impl Default for NumberTypes {
    /// Mobiles, and the numbers of regions where mobile and fixed ranges cannot be told
    /// apart (the NANP); voice also reaches fixed lines. VoIP, premium-rate, toll-free,
    /// shared-cost, pager, UAN, voicemail and personal numbers are refused.
    fn default() -> Self {
        use NumberType::*;
        Self {
            sms: vec![Mobile, FixedLineOrMobile],
            voice: vec![Mobile, FixedLineOrMobile, FixedLine],
            whatsapp: vec![Mobile, FixedLineOrMobile],
        }
    }
}

impl NumberTypes {
    /// Mobile numbers only, and only by SMS: what large platforms require at sign-up.
    pub fn strict() -> Self {
        Self {
            sms: vec![NumberType::Mobile],
            voice: Vec::new(),
            whatsapp: Vec::new(),
        }
    }

    pub fn allows(&self, channel: Channel, t: NumberType) -> bool {
        self.for_channel(channel).contains(&t)
    }

    fn for_channel(&self, channel: Channel) -> &[NumberType] {
        match channel {
            Channel::Sms => &self.sms,
            Channel::Voice => &self.voice,
            Channel::Whatsapp => &self.whatsapp,
        }
    }
}

/// Regions a channel may reach, in the shape of Firebase's SMS region policy: an
/// allow-list and nothing else, or everything but a deny-list. Regions are ISO 3166-1
/// alpha-2 codes as libphonenumber assigns them; numbers of no region (such as
/// `+800` international freephone) have the region `001`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum GeoRule {
    AllowlistOnly { allowed_regions: Vec<String> },
    AllowByDefault { disallowed_regions: Vec<String> },
}

impl GeoRule {
    pub fn allows(&self, region: &str) -> bool {
        match self {
            Self::AllowlistOnly { allowed_regions } => allowed_regions.iter().any(|r| r == region),
            Self::AllowByDefault { disallowed_regions } => {
                !disallowed_regions.iter().any(|r| r == region)
            }
        }
    }

    fn allows_everything(&self) -> bool {
        matches!(self, Self::AllowByDefault { disallowed_regions } if disallowed_regions.is_empty())
    }

    fn regions(&self) -> &[String] {
        match self {
            Self::AllowlistOnly { allowed_regions } => allowed_regions,
            Self::AllowByDefault { disallowed_regions } => disallowed_regions,
        }
    }
}

/// One [`GeoRule`] per channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GeoPolicy {
    pub sms: GeoRule,
    pub voice: GeoRule,
    pub whatsapp: GeoRule,
}

impl Default for GeoPolicy {
    fn default() -> Self {
        Self::allow_all()
    }
}

impl GeoPolicy {
    /// Every region on every channel.
    pub fn allow_all() -> Self {
        let all = GeoRule::AllowByDefault {
            disallowed_regions: Vec::new(),
        };
        Self {
            sms: all.clone(),
            voice: all.clone(),
            whatsapp: all,
        }
    }

    /// Only `regions`, on every channel.
    pub fn allowlist(regions: Vec<String>) -> Self {
        let rule = GeoRule::AllowlistOnly {
            allowed_regions: regions,
        };
        Self {
            sms: rule.clone(),
            voice: rule.clone(),
            whatsapp: rule,
        }
    }

    pub fn rule(&self, channel: Channel) -> &GeoRule {
        match channel {
            Channel::Sms => &self.sms,
            Channel::Voice => &self.voice,
            Channel::Whatsapp => &self.whatsapp,
        }
    }

    /// True when some channel reaches every region (worth a warning: pumping fraud goes
    /// where a platform never had users).
    pub fn open_anywhere(&self) -> bool {
        [&self.sms, &self.voice, &self.whatsapp]
            .iter()
            .any(|r| r.allows_everything())
    }
}

/// A rate as configured: `limit` per `period_seconds`, the whole limit available as a
/// burst (GCRA). `null` in place of a rate switches that limit off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RateSpec {
    pub limit: u32,
    pub period_seconds: u32,
}

impl RateSpec {
    pub const fn new(limit: u32, period_seconds: u32) -> Self {
        Self {
            limit,
            period_seconds,
        }
    }

    pub fn rate(self) -> Rate {
        Rate::new(self.limit, i64::from(self.period_seconds) * 1000)
    }
}

const MINUTE: u32 = 60;
const HOUR: u32 = 3600;
const DAY: u32 = 24 * HOUR;

/// Sends per key, and wrong codes per number. The defaults lean on login.gov's (25
/// codes per IP per 5 minutes, 10 wrong codes) and stay above what one person's
/// sign-up needs (a verification's 5 sends).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Per number (its blind index): 10 an hour (twice a verification's sends).
    pub sends_per_number: Option<RateSpec>,
    /// Per client IP, IPv6 grouped by /64: 20 per 5 minutes.
    pub sends_per_ip: Option<RateSpec>,
    /// Per `account_ref`: 10 an hour.
    pub sends_per_account: Option<RateSpec>,
    /// Per `device_id`: 10 an hour.
    pub sends_per_device: Option<RateSpec>,
    /// Per number prefix (the number without its last 4 digits, a block of 10,000
    /// numbers): 100 an hour.
    pub sends_per_prefix: Option<RateSpec>,
    /// Per country calling code: 5,000 an hour.
    pub sends_per_country: Option<RateSpec>,
    /// The whole service: 50,000 an hour.
    pub sends_per_service: Option<RateSpec>,
    /// Wrong codes per number across all its verifications: 10 a day.
    pub wrong_codes_per_number: Option<RateSpec>,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            sends_per_number: Some(RateSpec::new(10, HOUR)),
            sends_per_ip: Some(RateSpec::new(20, 5 * MINUTE)),
            sends_per_account: Some(RateSpec::new(10, HOUR)),
            sends_per_device: Some(RateSpec::new(10, HOUR)),
            sends_per_prefix: Some(RateSpec::new(100, HOUR)),
            sends_per_country: Some(RateSpec::new(5_000, HOUR)),
            sends_per_service: Some(RateSpec::new(50_000, HOUR)),
            wrong_codes_per_number: Some(RateSpec::new(10, DAY)),
        }
    }
}

impl Limits {
    /// No limits at all (for load tests and trusted back-office callers).
    pub fn none() -> Self {
        Self {
            sends_per_number: None,
            sends_per_ip: None,
            sends_per_account: None,
            sends_per_device: None,
            sends_per_prefix: None,
            sends_per_country: None,
            sends_per_service: None,
            wrong_codes_per_number: None,
        }
    }

    fn all(&self) -> [(&'static str, Option<RateSpec>); 8] {
        [
            ("abuse.limits.sends_per_number", self.sends_per_number),
            ("abuse.limits.sends_per_ip", self.sends_per_ip),
            ("abuse.limits.sends_per_account", self.sends_per_account),
            ("abuse.limits.sends_per_device", self.sends_per_device),
            ("abuse.limits.sends_per_prefix", self.sends_per_prefix),
            ("abuse.limits.sends_per_country", self.sends_per_country),
            ("abuse.limits.sends_per_service", self.sends_per_service),
            (
                "abuse.limits.wrong_codes_per_number",
                self.wrong_codes_per_number,
            ),
        ]
    }
}

/// How many accounts one number may be bound to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct AccountsPolicy {
    /// Bindings of one number (live or ended) within the window: 3.
    pub max_accounts_per_number: u32,
    /// 90 days.
    pub window_days: u32,
    /// Recycled numbers: a new holder who verifies takes the number over, and earlier
    /// bindings are marked superseded.
    pub one_verified_holder: bool,
}

impl Default for AccountsPolicy {
    fn default() -> Self {
        Self {
            max_accounts_per_number: 3,
            window_days: 90,
            one_verified_holder: false,
        }
    }
}

fn err(field: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        field,
        reason: reason.into(),
    }
}

fn valid_region(r: &str) -> bool {
    r == "001" || (r.len() == 2 && r.bytes().all(|b| b.is_ascii_uppercase()))
}

impl AbusePolicy {
    /// The strict preset: mobile numbers only, SMS only.
    pub fn strict(geo: GeoPolicy) -> Self {
        Self {
            number_types: NumberTypes::strict(),
            geo,
            ..Self::default()
        }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        for rule in [&self.geo.sms, &self.geo.voice, &self.geo.whatsapp] {
            if rule.regions().len() > 300 || !rule.regions().iter().all(|r| valid_region(r)) {
                return Err(err(
                    "abuse.geo",
                    "regions are ISO 3166-1 alpha-2 codes in capitals (or 001), at most 300",
                ));
            }
        }
        for (name, spec) in self.limits.all() {
            if let Some(s) = spec {
                if s.limit == 0 || s.period_seconds == 0 || s.period_seconds > 366 * DAY {
                    return Err(err(
                        name,
                        "a limit of at least 1 per 1 second to 366 days (null switches it off)",
                    ));
                }
            }
        }
        let a = &self.accounts;
        if a.max_accounts_per_number == 0 || a.max_accounts_per_number > 1000 {
            return Err(err(
                "abuse.accounts.max_accounts_per_number",
                "must be between 1 and 1000",
            ));
        }
        if a.window_days == 0 || a.window_days > 3650 {
            return Err(err(
                "abuse.accounts.window_days",
                "must be between 1 and 3650",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_number_types_refuse_costly_and_virtual_numbers() {
        let t = NumberTypes::default();
        for bad in [
            NumberType::Voip,
            NumberType::PremiumRate,
            NumberType::TollFree,
            NumberType::SharedCost,
            NumberType::Pager,
            NumberType::Uan,
            NumberType::Voicemail,
            NumberType::PersonalNumber,
        ] {
            for ch in [Channel::Sms, Channel::Voice, Channel::Whatsapp] {
                assert!(!t.allows(ch, bad), "{bad:?} on {ch:?}");
            }
        }
        assert!(t.allows(Channel::Sms, NumberType::Mobile));
        assert!(t.allows(Channel::Sms, NumberType::FixedLineOrMobile));
        assert!(!t.allows(Channel::Sms, NumberType::FixedLine));
        assert!(t.allows(Channel::Voice, NumberType::FixedLine));
        let strict = NumberTypes::strict();
        assert!(!strict.allows(Channel::Sms, NumberType::FixedLineOrMobile));
        assert!(!strict.allows(Channel::Voice, NumberType::Mobile));
    }

    #[test]
    fn geo_rules_in_both_shapes() {
        let only = GeoRule::AllowlistOnly {
            allowed_regions: vec!["GB".into()],
        };
        assert!(only.allows("GB") && !only.allows("FR"));
        let deny = GeoRule::AllowByDefault {
            disallowed_regions: vec!["CU".into()],
        };
        assert!(deny.allows("GB") && !deny.allows("CU"));
        assert!(GeoPolicy::allow_all().open_anywhere());
        assert!(!GeoPolicy::allowlist(vec!["GB".into()]).open_anywhere());
    }

    #[test]
    fn stored_configurations_without_a_policy_read_as_the_defaults() {
        let p: AbusePolicy = serde_json::from_str("{}").unwrap();
        assert_eq!(p, AbusePolicy::default());
        let p: AbusePolicy = serde_json::from_str(r#"{"limits": {"sends_per_ip": null}}"#).unwrap();
        assert_eq!(p.limits.sends_per_ip, None);
        assert_eq!(
            p.limits.sends_per_number,
            Limits::default().sends_per_number
        );
        assert!(serde_json::from_str::<AbusePolicy>(r#"{"nope": 1}"#).is_err());
    }

    #[test]
    fn validation_names_the_field() {
        let p = AbusePolicy {
            geo: GeoPolicy::allowlist(vec!["gb".into()]),
            ..AbusePolicy::default()
        };
        assert_eq!(p.validate().unwrap_err().field, "abuse.geo");
        let mut p = AbusePolicy::default();
        p.limits.sends_per_number = Some(RateSpec::new(0, 60));
        assert_eq!(
            p.validate().unwrap_err().field,
            "abuse.limits.sends_per_number"
        );
        let mut p = AbusePolicy::default();
        p.accounts.max_accounts_per_number = 0;
        assert!(p.validate().is_err());
        assert!(AbusePolicy::default().validate().is_ok());
    }
}
