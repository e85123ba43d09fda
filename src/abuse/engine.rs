//! Deciding one send, and metering wrong codes.

use std::net::IpAddr;
use std::sync::Arc;

use ringfence_phone::{StoredE164, E164};
use serde::Serialize;
use utoipa::ToSchema;

use super::lists::Lists;
use super::policy::{AbusePolicy, RateSpec};
use super::pumping::{self, Prefix, PumpingDetector, PumpingPolicy};
use crate::clock::Millis;
use crate::counters::{Counters, CountersError, GcraDecision, Rate};
use crate::crypto::{BlindIndex, BlindIndexer};
use crate::verify::Channel;

/// What happens to a send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Allow,
    Block,
    /// Answer as if sent; send nothing (traffic judged fraudulent learns nothing).
    ShadowBlock,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Block => "block",
            Self::ShadowBlock => "shadow_block",
        }
    }
}

/// Why a send was not allowed: stable codes, in the API and in stored decisions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// The number's type may not receive this channel (e.g. VoIP, premium rate).
    NumberTypeNotAllowed,
    /// The number's region is not allowed for this channel.
    RegionNotAllowed,
    /// A rate limit on one of the request's keys was reached.
    RateLimited,
    /// The number is on the operator's ban list.
    NumberBanned,
    /// The number's prefix is on the ban list.
    PrefixBanned,
    /// The client's IP is in a banned network.
    IpBanned,
    /// The SMS-pumping detector closed the number's prefix: its conversion collapsed.
    PrefixConversionCollapse,
    /// The day's spend on the number's country reached its budget.
    CountryBudgetExceeded,
    /// The day's spend on all countries reached the global budget.
    GlobalBudgetExceeded,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NumberTypeNotAllowed => "number_type_not_allowed",
            Self::RegionNotAllowed => "region_not_allowed",
            Self::RateLimited => "rate_limited",
            Self::NumberBanned => "number_banned",
            Self::PrefixBanned => "prefix_banned",
            Self::IpBanned => "ip_banned",
            Self::PrefixConversionCollapse => "prefix_conversion_collapse",
            Self::CountryBudgetExceeded => "country_budget_exceeded",
            Self::GlobalBudgetExceeded => "global_budget_exceeded",
        }
    }
}

/// One fact that weighed in a decision. Values are never personal data: a number
/// type, a region, the name of a limit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct Factor {
    pub name: &'static str,
    pub value: String,
}

/// The state of the limit that decided (or came closest to deciding) a request, for
/// the `RateLimit`, `RateLimit-Policy` and `Retry-After` headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitState {
    /// The limit's name, e.g. `sends_per_ip`.
    pub name: &'static str,
    pub spec: RateSpec,
    pub remaining: u32,
    pub reset_after_ms: i64,
    pub retry_after_ms: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Decision {
    pub action: Action,
    pub reasons: Vec<Reason>,
    pub factors: Vec<Factor>,
    /// For the response headers; not stored.
    #[serde(skip)]
    pub limit: Option<LimitState>,
    /// What this decision caused (a prefix closed, a budget reached), for the caller to
    /// log and count.
    #[serde(skip)]
    pub events: Vec<pumping::Event>,
    /// The number's prefix as the pumping detector groups numbers, once it was judged:
    /// what the caller stores with the verification and passes to
    /// [`Engine::record_send`].
    #[serde(skip)]
    #[schema(ignore)]
    pub prefix: Option<Prefix>,
}

impl Decision {
    fn block(reason: Reason, factors: Vec<Factor>, limit: Option<LimitState>) -> Self {
        Self {
            action: Action::Block,
            reasons: vec![reason],
            factors,
            limit,
            events: Vec::new(),
            prefix: None,
        }
    }
}

/// What the engine knows about one start.
pub struct SendContext<'a> {
    pub service_id: &'a str,
    pub number: &'a E164,
    pub blind_index: &'a BlindIndex,
    pub channel: Channel,
    pub ip: Option<IpAddr>,
    pub account_ref: Option<&'a str>,
    pub device_id: Option<&'a str>,
}

pub struct Engine {
    counters: Arc<dyn Counters>,
    pseudonyms: BlindIndexer,
    pumping: PumpingDetector,
}

/// The network an IP belongs to for rate limiting: an IPv4 address itself, an IPv6
/// address's /64 (one subscriber's allocation: an attacker holds all of it).
pub fn ip_group(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.octets().to_vec(),
            None => v6.octets()[..8].to_vec(),
        },
    }
}

impl Engine {
    pub fn new(
        counters: Arc<dyn Counters>,
        pseudonyms: BlindIndexer,
        pumping: PumpingPolicy,
    ) -> Self {
        Self {
            pumping: PumpingDetector::new(counters.clone(), pumping),
            counters,
            pseudonyms,
        }
    }

    /// The price of one message to `country_code` (the pumping detector's price table),
    /// in millionths of the currency unit.
    pub fn price_micros(&self, country_code: u16) -> u64 {
        self.pumping.policy().spend.price_micros(country_code)
    }

    /// The prefix for the pumping detector of the number with this country code and
    /// national significant number, if it has one.
    pub fn prefix(&self, country_code: u16, national_number: &str) -> Option<Prefix> {
        self.pumping
            .policy()
            .prefix_of(country_code, national_number)
            .ok()
    }

    /// Records a message that was queued (after the start committed) for a number of
    /// `prefix` (the decision's).
    pub async fn record_send(
        &self,
        prefix: &Prefix,
        now: Millis,
    ) -> Result<Vec<pumping::Event>, CountersError> {
        self.pumping.record_send(prefix, now).await
    }

    /// Records messages the provider accepted: `n` for numbers of `prefix`, for each
    /// `(prefix, n)`.
    pub async fn record_deliveries(
        &self,
        counts: &[(Prefix, u64)],
        now: Millis,
    ) -> Result<(), CountersError> {
        self.pumping.record_deliveries(counts, now).await
    }

    /// Records an approved verification of `number`.
    pub async fn record_approval(
        &self,
        number: &StoredE164,
        now: Millis,
    ) -> Result<(), CountersError> {
        match self.prefix(number.country_code(), number.national_significant_number()) {
            Some(p) => self.pumping.record_approval(&p, now).await,
            None => Ok(()),
        }
    }

    /// Decides one send. The policy checks come first and cost nothing; then every rate
    /// limit is spent at once, all or nothing (the most specific refusing one answers).
    /// Errors only when the counters cannot be reached: the caller fails closed.
    pub async fn decide_send(
        &self,
        policy: &AbusePolicy,
        lists: &Lists,
        cx: &SendContext<'_>,
        now: Millis,
    ) -> Result<Decision, CountersError> {
        // The safe list bypasses every check (and counts nothing).
        if let Some(m) = lists.safe(cx.number, cx.blind_index, cx.ip) {
            return Ok(Decision {
                action: Action::Allow,
                reasons: Vec::new(),
                factors: vec![factor("safe_list", m.kind)],
                limit: None,
                events: Vec::new(),
                prefix: None,
            });
        }
        if let Some(m) = lists.banned(cx.number, cx.blind_index, cx.ip) {
            let reason = match m.kind {
                "number" => Reason::NumberBanned,
                "prefix" => Reason::PrefixBanned,
                _ => Reason::IpBanned,
            };
            return Ok(Decision::block(
                reason,
                vec![factor("ban_list", m.kind), factor("ban_reason", &m.reason)],
                None,
            ));
        }
        let number_type = cx.number.number_type();
        if !policy.number_types.allows(cx.channel, number_type) {
            return Ok(Decision::block(
                Reason::NumberTypeNotAllowed,
                vec![
                    factor("number_type", number_type.as_str()),
                    factor("channel", cx.channel.as_str()),
                ],
                None,
            ));
        }
        let region = cx.number.region().unwrap_or("001");
        if !policy.geo.rule(cx.channel).allows(region) {
            return Ok(Decision::block(
                Reason::RegionNotAllowed,
                vec![
                    factor("region", region),
                    factor("channel", cx.channel.as_str()),
                ],
                None,
            ));
        }
        let l = &policy.limits;
        let national = cx.number.national_significant_number();
        let prefix = &national[..national.len().saturating_sub(4)];
        let pseudonym = |domain: &str, value: &[u8]| self.pseudonyms.pseudonym(domain, value);
        // Keys the request does not carry (no IP given, no device) are `None`: skipped.
        let keys: [(&'static str, Option<RateSpec>, Option<String>); 7] = [
            (
                "sends_per_number",
                l.sends_per_number,
                Some(hex::encode(&cx.blind_index.0[..16])),
            ),
            (
                "sends_per_device",
                l.sends_per_device,
                cx.device_id.map(|d| pseudonym("device", d.as_bytes())),
            ),
            (
                "sends_per_account",
                l.sends_per_account,
                cx.account_ref.map(|a| pseudonym("account", a.as_bytes())),
            ),
            (
                "sends_per_ip",
                l.sends_per_ip,
                cx.ip.map(|ip| pseudonym("ip", &ip_group(ip))),
            ),
            (
                "sends_per_prefix",
                l.sends_per_prefix,
                Some(pseudonym(
                    "prefix",
                    [&cx.number.country_code().to_string(), ":", prefix]
                        .concat()
                        .as_bytes(),
                )),
            ),
            (
                "sends_per_country",
                l.sends_per_country,
                Some(cx.number.country_code().to_string()),
            ),
            (
                "sends_per_service",
                l.sends_per_service,
                Some("all".to_owned()),
            ),
        ];
        let limits: Vec<(&'static str, RateSpec, String)> = keys
            .into_iter()
            .filter_map(|(name, spec, key)| {
                let (spec, key) = (spec?, key?);
                Some((
                    name,
                    spec,
                    ["rl:", cx.service_id, ":", name, ":", &key].concat(),
                ))
            })
            .collect();
        let prefix = self.prefix(
            cx.number.country_code(),
            cx.number.national_significant_number(),
        );
        // Every limit is spent (all or nothing) and the prefix assessed at once: on
        // Redis one round trip for both, the limits in one script.
        let rates: Vec<(&str, Rate)> = limits
            .iter()
            .map(|(_, spec, key)| (key.as_str(), spec.rate()))
            .collect();
        let (spent, assessment) = tokio::join!(self.counters.gcra_all(&rates, now), async {
            match &prefix {
                Some(p) => self.pumping.assess(p, now).await.map(Some),
                None => Ok(None),
            }
        });
        let (spent, assessment) = (spent?, assessment?);
        let states = limits
            .iter()
            .zip(&spent)
            .map(|((name, spec, _), d)| LimitState {
                name,
                spec: *spec,
                remaining: d.remaining,
                reset_after_ms: d.reset_after_ms,
                retry_after_ms: d.retry_after_ms,
            });
        // Refused, nothing spent: refused traffic spends nobody's budget (an attacker
        // stopped by the limit of its IP does not use up the service's). The most
        // specific refusing limit answers.
        if let Some(i) = spent.iter().position(|d| !d.allowed) {
            let state = states.clone().nth(i).expect("a refusing limit");
            let mut decision = Decision::block(
                Reason::RateLimited,
                vec![factor("limit", state.name)],
                Some(state),
            );
            decision.events = assessment.map(|a| a.events).unwrap_or_default();
            return Ok(decision);
        }
        let tightest = states.min_by_key(|s| s.remaining);
        let mut decision = Decision {
            action: Action::Allow,
            reasons: Vec::new(),
            factors: Vec::new(),
            limit: tightest,
            events: Vec::new(),
            prefix,
        };
        // Traffic judged fraudulent is shadow-blocked: the answer looks sent, so a
        // pumper learns nothing from it.
        if let (Some(prefix), Some(assessment)) = (&decision.prefix, assessment) {
            decision.events = assessment.events;
            if let Some(closure) = assessment.verdict.closure() {
                let reason = match closure.reason {
                    pumping::Reason::PrefixConversionCollapse => Reason::PrefixConversionCollapse,
                    pumping::Reason::CountryBudgetExceeded => Reason::CountryBudgetExceeded,
                    pumping::Reason::GlobalBudgetExceeded => Reason::GlobalBudgetExceeded,
                };
                decision.factors.push(factor("prefix", &prefix.to_string()));
                // The figures behind the verdict, so that a closure explains itself.
                match &closure.figures {
                    pumping::Figures::Conversion(f) => {
                        for (name, value) in [
                            ("sends", f.sends.to_string()),
                            ("approvals", f.approvals.to_string()),
                            ("deliveries", f.deliveries.to_string()),
                            ("conversion", format!("{:.3}", f.conversion)),
                            ("baseline", format!("{:.3}", f.baseline)),
                        ] {
                            decision.factors.push(factor(name, &value));
                        }
                    }
                    pumping::Figures::Spend {
                        spent_micros,
                        budget_micros,
                    } => {
                        decision
                            .factors
                            .push(factor("spent_micros", &spent_micros.to_string()));
                        decision
                            .factors
                            .push(factor("budget_micros", &budget_micros.to_string()));
                    }
                }
                if assessment.verdict.allows() {
                    // Monitor mode: send, and say what would have happened.
                    decision
                        .factors
                        .push(factor("would_shadow_block", reason.as_str()));
                } else {
                    decision.action = Action::ShadowBlock;
                    decision.reasons.push(reason);
                }
            }
        }
        Ok(decision)
    }

    /// Reserves one wrong code of `subject`'s budget (per number, across all its
    /// verifications and re-sends) before a code is compared; [`Engine::refund_guess`]
    /// gives it back when the code was right. Reserving first makes the budget exact
    /// under any concurrency: a guess that finds the budget spent is never compared.
    /// `None` when the service has no such limit.
    pub async fn reserve_guess(
        &self,
        policy: &AbusePolicy,
        service_id: &str,
        subject: &BlindIndex,
        now: Millis,
    ) -> Result<Option<LimitState>, CountersError> {
        let Some(spec) = Self::guess_budget(policy) else {
            return Ok(None);
        };
        let key = guess_key(service_id, subject);
        let d = self.counters.gcra(&key, spec.rate(), now).await?;
        Ok(Some(Self::guess_state(spec, &d)))
    }

    /// The rate of `policy`'s guess budget, for a store that keeps the budget itself
    /// (see [`crate::store::CheckGate::budget`]); `None` when the service has none.
    pub fn guess_budget(policy: &AbusePolicy) -> Option<RateSpec> {
        policy.limits.wrong_codes_per_number
    }

    /// The guess budget's state as GCRA found it (`d`), for the answer's headers.
    pub fn guess_state(spec: RateSpec, d: &GcraDecision) -> LimitState {
        LimitState {
            name: "wrong_codes_per_number",
            spec,
            remaining: d.remaining,
            reset_after_ms: d.reset_after_ms,
            retry_after_ms: if d.allowed {
                None
            } else {
                d.retry_after_ms.or(Some(1000))
            },
        }
    }

    /// Gives back a reservation (`reserved`, as [`Engine::reserve_guess`] answered it)
    /// whose code was right, or was never compared.
    pub async fn refund_guess(
        &self,
        reserved: &LimitState,
        service_id: &str,
        subject: &BlindIndex,
        now: Millis,
    ) -> Result<(), CountersError> {
        self.counters
            .gcra_refund(
                &guess_key(service_id, subject),
                reserved.spec.rate(),
                1,
                now,
            )
            .await
    }
}

fn guess_key(service_id: &str, subject: &BlindIndex) -> String {
    format!(
        "rl:{service_id}:wrong_codes_per_number:{}",
        hex::encode(&subject.0[..16])
    )
}

fn factor(name: &'static str, value: &str) -> Factor {
    Factor {
        name,
        value: value.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_is_grouped_by_its_64_bit_network() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff:1:2:3".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(ip_group(a), ip_group(b));
        assert_ne!(ip_group(a), ip_group(c));
        let v4: IpAddr = "192.0.2.7".parse().unwrap();
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(ip_group(v4), ip_group(mapped));
        assert_ne!(ip_group(v4), ip_group("192.0.2.8".parse().unwrap()));
    }
}
