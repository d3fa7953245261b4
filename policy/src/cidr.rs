//! IP prefixes (CIDRs) as written in `ipBlock` and `networks` peers: parsing, containment and the
//! conversion to the datapath's LPM key halves.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use septum_datapath_common::{FAMILY_IPV4, FAMILY_IPV6, IpCacheKey, IpPrefixData};

/// A CIDR that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid CIDR {input:?}: {reason}")]
pub struct InvalidCidr {
    /// What was given.
    pub input: String,
    /// Why it was rejected.
    pub reason: &'static str,
}

/// An IP prefix. The address is always masked to the prefix length, so equal prefixes compare
/// equal. Ordered IPv4 first, then by address, then by length.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cidr {
    addr: IpAddr,
    len: u8,
}

impl Cidr {
    /// The prefix of `len` bits containing `addr` (host bits are cleared).
    pub fn new(addr: IpAddr, len: u8) -> Result<Self, InvalidCidr> {
        let max = max_len(addr);
        if len > max {
            return Err(InvalidCidr {
                input: format!("{addr}/{len}"),
                reason: "prefix length longer than the address",
            });
        }
        Ok(Self {
            addr: mask(addr, len),
            len,
        })
    }

    /// The host prefix (/32 or /128) of one address.
    pub fn host(addr: IpAddr) -> Self {
        Self {
            addr,
            len: max_len(addr),
        }
    }

    /// The network address.
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length in bits.
    pub fn len(&self) -> u8 {
        self.len
    }

    /// Whether this is a zero-length prefix (`0.0.0.0/0` or `::/0`).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether the prefix is IPv4.
    pub fn is_ipv4(&self) -> bool {
        self.addr.is_ipv4()
    }

    /// The datapath family code.
    pub fn family(&self) -> u8 {
        if self.is_ipv4() {
            FAMILY_IPV4
        } else {
            FAMILY_IPV6
        }
    }

    /// Whether `ip` is inside this prefix (never across families).
    pub fn contains_ip(&self, ip: IpAddr) -> bool {
        ip.is_ipv4() == self.is_ipv4() && mask(ip, self.len) == self.addr
    }

    /// Whether `other` is entirely inside this prefix (a prefix contains itself).
    pub fn contains(&self, other: &Cidr) -> bool {
        other.len >= self.len && self.contains_ip(other.addr)
    }

    /// The datapath LPM key of this prefix (family, then the masked address).
    pub fn lpm_key(&self) -> IpCacheKey {
        IpCacheKey::new(
            IpPrefixData::prefix_len(self.len),
            IpPrefixData::new(self.family(), addr_bytes(self.addr)),
        )
    }

    /// The prefix an ipcache key stands for (`None` for a key no prefix has: an unknown family
    /// or more address bits than the family holds).
    pub fn from_lpm_key(key: &IpCacheKey) -> Option<Self> {
        let d = key.data();
        let bits = u8::try_from(key.prefix_len().checked_sub(32)?).ok()?;
        let addr = match d.family[3] {
            FAMILY_IPV4 if d.family[..3] == [0; 3] => {
                IpAddr::from([d.addr[0], d.addr[1], d.addr[2], d.addr[3]])
            }
            FAMILY_IPV6 if d.family[..3] == [0; 3] => IpAddr::from(d.addr),
            _ => return None,
        };
        Self::new(addr, bits).ok()
    }
}

/// Parses an IP address as the API server reads its legacy IP and CIDR fields (`podIP`,
/// `clusterIP`, `ipBlock.cidr`, ...; k8s.io/utils/net `ParseIPSloppy`): besides the canonical
/// forms, IPv4 octets may carry leading zeros and are read as decimal (`010.0.0.1` is
/// 10.0.0.1, not octal). A cluster stores such objects, so septum must read them the same way.
pub fn parse_ip_sloppy(s: &str) -> Option<IpAddr> {
    if let Ok(ip) = s.parse() {
        return Some(ip);
    }
    let mut octets = [0u8; 4];
    let mut parts = s.split('.');
    for o in &mut octets {
        let part = parts.next()?;
        if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let digits = part.trim_start_matches('0');
        *o = if digits.is_empty() {
            0
        } else if digits.len() > 3 {
            return None;
        } else {
            digits.parse().ok()?
        };
    }
    if parts.next().is_some() {
        return None;
    }
    Some(IpAddr::V4(Ipv4Addr::from(octets)))
}

/// The 16-byte form of an address used by the datapath (IPv4 in the first 4 bytes).
pub fn addr_bytes(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => {
            let mut b = [0u8; 16];
            b[..4].copy_from_slice(&v4.octets());
            b
        }
        IpAddr::V6(v6) => v6.octets(),
    }
}

fn max_len(ip: IpAddr) -> u8 {
    if ip.is_ipv4() { 32 } else { 128 }
}

fn mask(ip: IpAddr, len: u8) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let bits = u32::from(v4);
            let m = if len == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(len))
            };
            IpAddr::V4(Ipv4Addr::from(bits & m))
        }
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            let m = if len == 0 {
                0
            } else {
                u128::MAX << (128 - u32::from(len))
            };
            IpAddr::V6(Ipv6Addr::from(bits & m))
        }
    }
}

impl FromStr for Cidr {
    type Err = InvalidCidr;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason| InvalidCidr {
            input: s.to_string(),
            reason,
        };
        let (addr, len) = s
            .split_once('/')
            .ok_or_else(|| err("missing /prefix-length"))?;
        let addr = parse_ip_sloppy(addr).ok_or_else(|| err("not an IP address"))?;
        // Decimal digits only, as the API server reads them (`/+8` is refused; `/08` is 8).
        if len.is_empty() || !len.bytes().all(|b| b.is_ascii_digit()) {
            return Err(err("prefix length is not a number"));
        }
        let digits = len.trim_start_matches('0');
        let len: u8 = if digits.is_empty() {
            0
        } else {
            digits
                .parse()
                .map_err(|_| err("prefix length longer than the address"))?
        };
        Cidr::new(addr, len).map_err(|_| err("prefix length longer than the address"))
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(s: &str) -> Cidr {
        s.parse()
            .unwrap_or_else(|e| panic!("test CIDR {s} must parse: {e}"))
    }

    #[test]
    fn parses_and_masks() {
        assert_eq!(c("10.1.2.3/8").to_string(), "10.0.0.0/8");
        assert_eq!(c("2001:db8::1/32").to_string(), "2001:db8::/32");
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("10.0.0.0".parse::<Cidr>().is_err());
        assert!("banana/8".parse::<Cidr>().is_err());
    }

    #[test]
    fn reads_what_the_api_servers_legacy_fields_accept() {
        // Leading zeros are decimal (ParseCIDRSloppy), in octets and in the prefix length.
        assert_eq!(c("010.001.002.000/08").to_string(), "10.0.0.0/8");
        assert_eq!(c("0.0.0.0/00").to_string(), "0.0.0.0/0");
        assert_eq!(
            parse_ip_sloppy("192.168.001.010"),
            Some("192.168.1.10".parse().expect("ip"))
        );
        assert_eq!(
            parse_ip_sloppy("0000010.0.0.1"),
            Some("10.0.0.1".parse().expect("ip"))
        );
        // Refused there too: signs, empty parts, octets over 255, a fifth octet.
        for bad in [
            "10.0.0.0/+8",
            "10.0.0.0/-0",
            "10.0.0.0/",
            "10.0.0.0/ 8",
            "10.0.0.0/999",
        ] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
        for bad in [
            "256.0.0.1",
            "1.2.3",
            "1.2.3.4.5",
            "1..2.3",
            "+1.2.3.4",
            "1.2.3.0x1",
        ] {
            assert_eq!(parse_ip_sloppy(bad), None, "{bad}");
        }
    }

    #[test]
    fn containment() {
        assert!(c("10.0.0.0/8").contains(&c("10.1.0.0/16")));
        assert!(!c("10.1.0.0/16").contains(&c("10.0.0.0/8")));
        assert!(c("0.0.0.0/0").contains_ip("1.2.3.4".parse().expect("ip")));
        assert!(!c("0.0.0.0/0").contains_ip("::1".parse().expect("ip")));
        assert!(c("::/0").contains(&c("2001:db8::/32")));
    }
}
