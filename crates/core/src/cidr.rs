//! Address ranges in CIDR notation (`10.0.0.0/8`, `2001:db8::/32`), as `service.trusted_proxies`
//! lists them.
//!
//! Parsing is strict: a range with bits set past its prefix (`10.0.0.1/8`) is refused rather
//! than silently widened or narrowed, since a typo in a list of trusted peers decides whose
//! `X-Forwarded-For` an app believes.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// An IPv4 or IPv6 network: an address and a prefix length.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    /// The network address (no bits set past the prefix).
    addr: IpAddr,
    /// Bits of `addr` that count: at most 32 (IPv4) or 128 (IPv6).
    prefix: u8,
}

/// Why a string is not a [`Cidr`]; the message says what to write instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct CidrError(String);

impl Cidr {
    /// The network `addr/prefix`, or `None` if the prefix is too long for the address family
    /// or `addr` has bits set past it.
    pub fn new(addr: IpAddr, prefix: u8) -> Option<Cidr> {
        let cidr = Cidr { addr, prefix };
        (prefix <= cidr.max_prefix() && cidr.masked(addr) == Some(addr)).then_some(cidr)
    }

    /// The network address.
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    fn max_prefix(&self) -> u8 {
        match self.addr {
            IpAddr::V4(_) => 32,
            IpAddr::V6(_) => 128,
        }
    }

    /// `ip` with the bits past the prefix cleared, if it is of this network's family.
    fn masked(&self, ip: IpAddr) -> Option<IpAddr> {
        match (self.addr, ip) {
            (IpAddr::V4(_), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                Some(IpAddr::V4(Ipv4Addr::from(u32::from(ip) & mask)))
            }
            (IpAddr::V6(_), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                Some(IpAddr::V6(Ipv6Addr::from(u128::from(ip) & mask)))
            }
            _ => None,
        }
    }

    /// Whether `ip` is in the network. An IPv4-mapped IPv6 address (`::ffff:10.0.0.1`, what a
    /// dual-stack socket reports for an IPv4 peer) counts as the IPv4 address it maps.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.masked(ip.to_canonical()) == Some(self.addr)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl fmt::Debug for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

const EXAMPLE: &str = "write an address and a prefix length, e.g. \"10.0.0.0/8\", \
                       \"2001:db8::/32\", or a single address such as \"192.0.2.7\"";

impl FromStr for Cidr {
    type Err = CidrError;

    /// `addr/prefix`, or a bare address for that one address (`/32`, `/128`).
    fn from_str(s: &str) -> Result<Cidr, CidrError> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| CidrError(format!("{s:?} is not an IP address range; {EXAMPLE}")))?;
        let max = match addr {
            IpAddr::V4(_) => 32,
            IpAddr::V6(_) => 128,
        };
        let prefix = match prefix {
            None => max,
            // Digits only: `u8::from_str` would take a sign.
            Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => {
                match p.parse::<u8>() {
                    Ok(n) if n <= max => n,
                    _ => {
                        return Err(CidrError(format!(
                            "{s:?} has a prefix length over {max}; use 0 to {max} for an \
                             IPv{} address",
                            if max == 32 { 4 } else { 6 }
                        )))
                    }
                }
            }
            Some(_) => {
                return Err(CidrError(format!(
                    "{s:?} has an invalid prefix length; {EXAMPLE}"
                )))
            }
        };
        let network = Cidr { addr, prefix };
        let masked = network.masked(addr).unwrap_or(addr);
        if masked != addr {
            return Err(CidrError(format!(
                "{s:?} has bits set past its /{prefix} prefix; write the network as \
                 \"{masked}/{prefix}\" (or \"{addr}\" for that one address)"
            )));
        }
        Ok(network)
    }
}

impl Serialize for Cidr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.trim().parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn parses_networks_and_single_addresses() {
        let net: Cidr = "10.0.0.0/8".parse().unwrap();
        assert_eq!((net.addr(), net.prefix()), (ip("10.0.0.0"), 8));
        assert_eq!(net.to_string(), "10.0.0.0/8");
        let one: Cidr = "192.0.2.7".parse().unwrap();
        assert_eq!(one.to_string(), "192.0.2.7/32");
        let v6: Cidr = "2001:db8::/32".parse().unwrap();
        assert_eq!(v6.to_string(), "2001:db8::/32");
        assert_eq!("::1".parse::<Cidr>().unwrap().to_string(), "::1/128");
        assert_eq!("0.0.0.0/0".parse::<Cidr>().unwrap().prefix(), 0);
        assert_eq!("::/0".parse::<Cidr>().unwrap().prefix(), 0);
    }

    #[test]
    fn refuses_what_is_not_a_network_and_says_what_to_write() {
        for (bad, says) in [
            ("10.0.0.1/8", "write the network as \"10.0.0.0/8\""),
            ("2001:db8::1/32", "\"2001:db8::/32\""),
            ("10.0.0.0/33", "over 32"),
            ("::/129", "over 128"),
            ("10.0.0.0/", "invalid prefix length"),
            ("10.0.0.0/+8", "invalid prefix length"),
            ("10.0.0.0/8/8", "invalid prefix length"),
            ("10.0.0/8", "not an IP address range"),
            ("localhost", "not an IP address range"),
            ("", "not an IP address range"),
        ] {
            let err = bad.parse::<Cidr>().unwrap_err().to_string();
            assert!(err.contains(says), "{bad:?}: {err}");
        }
    }

    #[test]
    fn contains_by_prefix_and_family() {
        let net: Cidr = "10.1.0.0/16".parse().unwrap();
        assert!(net.contains(ip("10.1.0.0")));
        assert!(net.contains(ip("10.1.255.255")));
        assert!(!net.contains(ip("10.2.0.0")));
        // A dual-stack socket's view of an IPv4 peer.
        assert!(net.contains(ip("::ffff:10.1.2.3")));
        assert!(!net.contains(ip("::1")));
        let v6: Cidr = "fd00::/8".parse().unwrap();
        assert!(v6.contains(ip("fd12:3456::1")));
        assert!(!v6.contains(ip("fe80::1")));
        assert!(!v6.contains(ip("10.1.2.3")));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(ip("203.0.113.9")));
        assert!(!all.contains(ip("2001:db8::1")));
        let one: Cidr = "127.0.0.1".parse().unwrap();
        assert!(one.contains(ip("127.0.0.1")));
        assert!(!one.contains(ip("127.0.0.2")));
    }
}
