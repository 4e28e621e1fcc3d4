//! Source allowlists: the networks a rule accepts traffic from ("If you must
//! expose a database, use strong passwords and allowlists"). Empty means
//! anywhere.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::error::ValidationError;

/// An IPv4 or IPv6 network: `10.0.0.0/8`, `2001:db8::/32`; a bare address is
/// one host (`/32`, `/128`). Host bits must be zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn parse(value: &str) -> Result<Self, ValidationError> {
        let err = |why: String| ValidationError::new(Sources::FIELD, why);
        let (addr, prefix) = match value.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (value, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| {
            err(format!(
                "{value:?} is not an IPv4 or IPv6 network like 10.0.0.0/8 or 2001:db8::/32"
            ))
        })?;
        let max = max_prefix(addr);
        let prefix = match prefix {
            None => max,
            Some(text) => text
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max && !text.starts_with('+'))
                .ok_or_else(|| {
                    err(format!(
                        "{value:?}: the prefix length must be between 0 and {max}"
                    ))
                })?,
        };
        let network = masked(addr, prefix);
        if network != addr {
            return Err(err(format!(
                "{value:?} has host bits set: the network is {network}/{prefix}"
            )));
        }
        Ok(Self { addr, prefix })
    }

    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    pub fn is_ipv4(&self) -> bool {
        self.addr.is_ipv4()
    }

    /// One address, as a network of its own (`/32`, `/128`).
    pub fn host(addr: IpAddr) -> Self {
        Self {
            addr,
            prefix: max_prefix(addr),
        }
    }

    /// The network's last address (its first is [`Cidr::addr`]).
    pub fn last_addr(&self) -> IpAddr {
        match self.addr {
            IpAddr::V4(v4) => {
                let mask = mask_v4(self.prefix);
                IpAddr::V4(Ipv4Addr::from(u32::from(v4) | !mask))
            }
            IpAddr::V6(v6) => {
                let mask = mask_v6(self.prefix);
                IpAddr::V6(Ipv6Addr::from(u128::from(v6) | !mask))
            }
        }
    }

    /// Whether every address of `other` is in this network.
    pub fn contains(&self, other: &Cidr) -> bool {
        self.addr.is_ipv4() == other.addr.is_ipv4()
            && self.prefix <= other.prefix
            && masked(other.addr, self.prefix) == self.addr
    }
}

fn max_prefix(addr: IpAddr) -> u8 {
    if addr.is_ipv4() {
        32
    } else {
        128
    }
}

fn masked(addr: IpAddr, prefix: u8) -> IpAddr {
    match addr {
        IpAddr::V4(v4) => IpAddr::V4(Ipv4Addr::from(u32::from(v4) & mask_v4(prefix))),
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask_v6(prefix))),
    }
}

/// The network bits of a prefix length.
fn mask_v4(prefix: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)
}

fn mask_v6(prefix: u8) -> u128 {
    u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0)
}

/// Always with its prefix length: `192.0.2.7/32`.
impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// A rule's allowlist: at most 64 networks, no duplicates, in order (IPv4
/// before IPv6, then by address). Empty: anywhere.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Sources(Vec<Cidr>);

impl Sources {
    pub const FIELD: &'static str = "sources";
    pub const MAX: usize = 64;

    /// Parses `values`, naming a bad entry `<field>[i]`.
    pub fn parse<S: AsRef<str>>(field: &str, values: &[S]) -> Result<Self, ValidationError> {
        if values.len() > Self::MAX {
            return Err(ValidationError::new(
                field.to_owned(),
                format!("at most {} networks, got {}", Self::MAX, values.len()),
            ));
        }
        let mut networks: Vec<Cidr> = Vec::with_capacity(values.len());
        for (i, value) in values.iter().enumerate() {
            let at = || format!("{field}[{i}]");
            let cidr = Cidr::parse(value.as_ref()).map_err(|e| e.at(at()))?;
            if let Some(first) = networks.iter().position(|n| *n == cidr) {
                return Err(ValidationError::new(
                    at(),
                    format!("{cidr} is listed twice (also {field}[{first}])"),
                ));
            }
            networks.push(cidr);
        }
        networks.sort();
        Ok(Self(networks))
    }

    /// Anywhere: no allowlist.
    pub fn anywhere() -> Self {
        Self::default()
    }

    pub fn is_anywhere(&self) -> bool {
        self.0.is_empty()
    }

    pub fn networks(&self) -> &[Cidr] {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_parse_canonically_and_refuse_host_bits() {
        let ok = |s: &str| Cidr::parse(s).unwrap().to_string();
        assert_eq!(ok("10.0.0.0/8"), "10.0.0.0/8");
        assert_eq!(ok("192.0.2.7"), "192.0.2.7/32");
        assert_eq!(ok("0.0.0.0/0"), "0.0.0.0/0");
        assert_eq!(ok("2001:db8::/32"), "2001:db8::/32");
        assert_eq!(ok("2001:DB8::1"), "2001:db8::1/128");
        let bad = |s: &str| Cidr::parse(s).unwrap_err().message;
        assert!(bad("10.0.0.1/8").contains("host bits set: the network is 10.0.0.0/8"));
        assert!(bad("10.0.0.0/33").contains("between 0 and 32"));
        assert!(bad("2001:db8::/129").contains("between 0 and 128"));
        assert!(bad("10.0.0.0/+8").contains("prefix length"));
        assert!(bad("example.com").contains("not an IPv4 or IPv6 network"));
        assert!(bad("").contains("not an IPv4 or IPv6 network"));
    }

    #[test]
    fn a_network_ends_at_its_last_address() {
        let last = |s: &str| Cidr::parse(s).unwrap().last_addr().to_string();
        assert_eq!(last("10.0.0.0/8"), "10.255.255.255");
        assert_eq!(last("192.0.2.7"), "192.0.2.7");
        assert_eq!(last("0.0.0.0/0"), "255.255.255.255");
        assert_eq!(
            last("2001:db8::/32"),
            "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff"
        );
        assert_eq!(last("2001:db8::1"), "2001:db8::1");
        assert_eq!(last("::/0"), "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff");
    }

    #[test]
    fn an_allowlist_names_its_bad_entry_and_refuses_duplicates_not_overlaps() {
        let list =
            Sources::parse("sources", &["2001:db8::/32", "10.0.0.0/8", "10.1.0.0/16"]).unwrap();
        let shown: Vec<String> = list.networks().iter().map(ToString::to_string).collect();
        assert_eq!(shown, ["10.0.0.0/8", "10.1.0.0/16", "2001:db8::/32"]);
        let err =
            Sources::parse("sources", &["10.0.0.0/8", "192.0.2.0/24", "10.0.0.1/8"]).unwrap_err();
        assert_eq!(err.field, "sources[2]");
        let err =
            Sources::parse("sources", &["192.0.2.7", "10.0.0.0/8", "192.0.2.7/32"]).unwrap_err();
        assert_eq!(err.field, "sources[2]");
        assert!(
            err.message.contains("listed twice (also sources[0])"),
            "{err}"
        );
        let many: Vec<String> = (0..65).map(|i| format!("10.0.{i}.0/24")).collect();
        assert_eq!(
            Sources::parse("sources", &many).unwrap_err().field,
            "sources"
        );
        assert!(Sources::parse::<&str>("sources", &[])
            .unwrap()
            .is_anywhere());
    }

    #[test]
    fn containment_is_by_family_and_prefix() {
        let net = |s: &str| Cidr::parse(s).unwrap();
        assert!(net("10.0.0.0/8").contains(&net("10.1.0.0/16")));
        assert!(net("10.0.0.0/8").contains(&net("10.0.0.0/8")));
        assert!(!net("10.1.0.0/16").contains(&net("10.0.0.0/8")));
        assert!(!net("10.0.0.0/8").contains(&net("11.0.0.0/16")));
        assert!(net("0.0.0.0/0").contains(&net("192.0.2.7")));
        assert!(!net("::/0").contains(&net("192.0.2.7")));
        assert!(net("2001:db8::/32").contains(&net("2001:db8:1::/48")));
    }
}
