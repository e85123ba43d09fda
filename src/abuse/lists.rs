//! Operator lists: bans (numbers, number prefixes, IP networks), each with a reason and
//! an optional expiry, and the safe list whose entries bypass the anti-abuse checks.
//!
//! Numbers are listed by their blind index (an admin gives the number; only its keyed
//! hash is stored), prefixes as E.164 digits without `+` (`4470` covers +44 70…),
//! networks in CIDR notation (`192.0.2.0/24`, `2001:db8::/32`). The engine reads a
//! snapshot of the lists that applies at the time it was taken (cached for a couple of
//! seconds, like services).

use std::net::IpAddr;

use ringfence_phone::E164;

use crate::crypto::BlindIndex;
use crate::store::ListEntry;

/// Which list an entry is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListName {
    Ban,
    Safe,
}

impl ListName {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "ban" => Some(Self::Ban),
            "safe" => Some(Self::Safe),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ban => "ban",
            Self::Safe => "safe",
        }
    }
}

/// An IP network: an address and how many leading bits of it count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    addr: IpAddr,
    bits: u8,
}

impl IpNet {
    /// `192.0.2.0/24`, `2001:db8::/32`, or a single address.
    pub fn parse(s: &str) -> Option<Self> {
        let (addr, bits) = match s.split_once('/') {
            Some((a, b)) => (a.parse::<IpAddr>().ok()?, b.parse::<u8>().ok()?),
            None => {
                let a = s.parse::<IpAddr>().ok()?;
                (a, if a.is_ipv4() { 32 } else { 128 })
            }
        };
        let max = if addr.is_ipv4() { 32 } else { 128 };
        (bits <= max).then_some(Self { addr, bits })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => prefix_eq(&n.octets(), &a.octets(), self.bits),
            (IpAddr::V6(n), IpAddr::V6(a)) => prefix_eq(&n.octets(), &a.octets(), self.bits),
            _ => false,
        }
    }
}

fn prefix_eq(a: &[u8], b: &[u8], bits: u8) -> bool {
    let (full, rest) = (usize::from(bits / 8), bits % 8);
    if a[..full] != b[..full] {
        return false;
    }
    rest == 0 || {
        let mask = 0xffu8 << (8 - rest);
        a[full] & mask == b[full] & mask
    }
}

/// One list's entries, ready to match.
#[derive(Debug, Default, Clone)]
struct Entries {
    numbers: Vec<([u8; 32], String)>,
    prefixes: Vec<(String, String)>,
    nets: Vec<(IpNet, String)>,
}

/// Which entry matched, and why it is there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListMatch {
    /// `number`, `prefix` or `ip`.
    pub kind: &'static str,
    pub reason: String,
}

/// The lists as they apply now.
#[derive(Debug, Default, Clone)]
pub struct Lists {
    ban: Entries,
    safe: Entries,
}

impl Lists {
    /// Builds the snapshot from stored entries; malformed entries are skipped.
    pub fn from_entries(entries: &[ListEntry]) -> Self {
        let mut lists = Self::default();
        for e in entries {
            let target = match ListName::parse(&e.list) {
                Some(ListName::Ban) => &mut lists.ban,
                Some(ListName::Safe) => &mut lists.safe,
                None => continue,
            };
            let reason = e.reason.clone();
            match e.kind.as_str() {
                "number" => {
                    if let Some(bi) = hex::decode(&e.value)
                        .ok()
                        .and_then(|b| <[u8; 32]>::try_from(b).ok())
                    {
                        target.numbers.push((bi, reason));
                    }
                }
                "prefix" => target.prefixes.push((e.value.clone(), reason)),
                "ip" => {
                    if let Some(net) = IpNet::parse(&e.value) {
                        target.nets.push((net, reason));
                    }
                }
                _ => {}
            }
        }
        lists
    }

    pub fn banned(&self, number: &E164, bi: &BlindIndex, ip: Option<IpAddr>) -> Option<ListMatch> {
        self.ban.find(number, bi, ip)
    }

    pub fn safe(&self, number: &E164, bi: &BlindIndex, ip: Option<IpAddr>) -> Option<ListMatch> {
        self.safe.find(number, bi, ip)
    }
}

impl Entries {
    fn find(&self, number: &E164, bi: &BlindIndex, ip: Option<IpAddr>) -> Option<ListMatch> {
        let found = |kind, reason: &String| {
            Some(ListMatch {
                kind,
                reason: reason.clone(),
            })
        };
        if let Some((_, r)) = self.numbers.iter().find(|(b, _)| *b == bi.0) {
            return found("number", r);
        }
        let digits = &number.expose()[1..];
        if let Some((_, r)) = self
            .prefixes
            .iter()
            .find(|(p, _)| digits.starts_with(p.as_str()))
        {
            return found("prefix", r);
        }
        let ip = ip?;
        self.nets
            .iter()
            .find(|(n, _)| n.contains(ip))
            .and_then(|(_, r)| found("ip", r))
    }
}

/// A prefix as an admin may list it: 1 to 14 digits (a country code and leading digits),
/// with or without `+`.
pub fn normalise_prefix(s: &str) -> Option<String> {
    let d = s.strip_prefix('+').unwrap_or(s);
    (!d.is_empty() && d.len() <= 14 && d.bytes().all(|b| b.is_ascii_digit())).then(|| d.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_match_by_their_leading_bits() {
        let v4 = IpNet::parse("192.0.2.0/23").unwrap();
        assert!(v4.contains("192.0.3.200".parse().unwrap()));
        assert!(!v4.contains("192.0.4.1".parse().unwrap()));
        assert!(
            v4.contains("::ffff:192.0.2.9".parse().unwrap()),
            "IPv4-mapped"
        );
        let v6 = IpNet::parse("2001:db8:abcd::/48").unwrap();
        assert!(v6.contains("2001:db8:abcd:1::5".parse().unwrap()));
        assert!(!v6.contains("2001:db8:abce::5".parse().unwrap()));
        assert!(!v6.contains("192.0.2.1".parse().unwrap()));
        let one = IpNet::parse("198.51.100.7").unwrap();
        assert!(one.contains("198.51.100.7".parse().unwrap()));
        assert!(!one.contains("198.51.100.8".parse().unwrap()));
        assert!(IpNet::parse("10.0.0.0/33").is_none());
        assert!(IpNet::parse("nope/8").is_none());
        assert!(IpNet::parse("::/0")
            .unwrap()
            .contains("2001:db8::1".parse().unwrap()));
    }

    #[test]
    fn prefixes_are_digits_only() {
        assert_eq!(normalise_prefix("+4470").as_deref(), Some("4470"));
        assert_eq!(normalise_prefix("882").as_deref(), Some("882"));
        assert!(normalise_prefix("+").is_none());
        assert!(normalise_prefix("44-70").is_none());
        assert!(normalise_prefix("123456789012345").is_none());
    }
}
