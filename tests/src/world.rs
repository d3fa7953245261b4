//! Building map contents by hand: endpoints, identities, rules with port ranges, isolation.
//! (The policy compiler produces the same shapes from Kubernetes objects.)

use std::net::IpAddr;

use septum_datapath_common::{
    ACTION_DENY, EndpointInfo, IPCACHE_KIND_POD, IpCacheEntry, IpPrefixData, LpmKey, MODE_ENFORCE,
    POLICY_PREFIX_ANY_PORT, POLICY_PREFIX_ANY_PROTO, PRECEDENCE_DEFAULT_DENY, PolicyEntry,
    PolicyKeyData, STATE_READY, ServiceEntry, ServiceKey,
};

use crate::reference::{MapContents, addr16};

/// Splits `lo..=hi` into aligned power-of-two blocks: (first port, prefix bits of the port).
pub fn port_range_prefixes(lo: u16, hi: u16) -> Vec<(u16, u32)> {
    let mut out = Vec::new();
    let (mut lo, hi) = (lo as u32, hi as u32);
    while lo <= hi {
        let mut size = if lo == 0 {
            1 << 16
        } else {
            1u32 << lo.trailing_zeros()
        };
        while lo + size - 1 > hi {
            size >>= 1;
        }
        out.push((lo as u16, 16 - size.trailing_zeros()));
        lo += size;
    }
    out
}

/// One policy rule as the datapath sees it.
#[derive(Clone, Copy, Debug)]
pub struct Rule {
    pub subject: u32,
    pub direction: u8,
    pub peer: u32,
    /// `None`: every protocol (and port).
    pub protocol: Option<u8>,
    /// `None`: every port of the protocol.
    pub ports: Option<(u16, u16)>,
    pub action: u8,
    pub precedence: u16,
    pub cookie: u32,
}

/// Builders of map contents by hand (a trait because `MapContents` is the datapath's type).
pub trait Build {
    /// Adds an ipcache entry for `ip/bits`.
    fn add_ip(&mut self, ip: IpAddr, bits: u8, entry: IpCacheEntry);
    /// A ready, enforcing endpoint on `ifindex` with `identity` at `ips`.
    fn add_pod(&mut self, ifindex: u32, endpoint_id: u32, identity: u32, ips: &[IpAddr], flags: u8);
    /// The entries of one rule (a port range becomes aligned blocks).
    fn add_rule(&mut self, r: &Rule);
    /// Isolates `subject` in `direction`: the default deny entry.
    fn isolate(&mut self, subject: u32, direction: u8, cookie: u32);
    /// Marks `vip:port/protocol` as a Service VIP.
    fn add_service(&mut self, vip: IpAddr, port: u16, protocol: u8, service_id: u32);
}

impl Build for MapContents {
    fn add_ip(&mut self, ip: IpAddr, bits: u8, entry: IpCacheEntry) {
        let (family, addr) = addr16(ip);
        self.ipcache.insert(
            LpmKey::new(
                IpPrefixData::prefix_len(bits),
                IpPrefixData::new(family, addr),
            ),
            entry,
        );
    }

    fn add_pod(
        &mut self,
        ifindex: u32,
        endpoint_id: u32,
        identity: u32,
        ips: &[IpAddr],
        flags: u8,
    ) {
        self.endpoints.insert(
            ifindex,
            EndpointInfo {
                endpoint_id,
                identity,
                flags,
                mode: MODE_ENFORCE,
                state: STATE_READY,
                _pad: 0,
            },
        );
        for ip in ips {
            self.add_ip(
                *ip,
                if ip.is_ipv4() { 32 } else { 128 },
                IpCacheEntry {
                    identity,
                    cidr_identity: 0,
                    kind: IPCACHE_KIND_POD,
                    _pad: [0; 3],
                },
            );
        }
    }

    fn add_rule(&mut self, r: &Rule) {
        let entry = PolicyEntry {
            action: r.action,
            _pad: 0,
            precedence: r.precedence,
            cookie: r.cookie,
        };
        match (r.protocol, r.ports) {
            (None, _) => {
                self.policy.insert(
                    LpmKey::new(
                        POLICY_PREFIX_ANY_PROTO,
                        PolicyKeyData::new(r.subject, r.direction, r.peer, 0, 0),
                    ),
                    entry,
                );
            }
            (Some(p), None) => {
                self.policy.insert(
                    LpmKey::new(
                        POLICY_PREFIX_ANY_PORT,
                        PolicyKeyData::new(r.subject, r.direction, r.peer, p, 0),
                    ),
                    entry,
                );
            }
            (Some(p), Some((lo, hi))) => {
                for (port, bits) in port_range_prefixes(lo, hi) {
                    self.policy.insert(
                        LpmKey::new(
                            POLICY_PREFIX_ANY_PORT + bits,
                            PolicyKeyData::new(r.subject, r.direction, r.peer, p, port),
                        ),
                        entry,
                    );
                }
            }
        }
    }

    fn isolate(&mut self, subject: u32, direction: u8, cookie: u32) {
        self.add_rule(&Rule {
            subject,
            direction,
            peer: septum_datapath_common::IDENTITY_ANY,
            protocol: None,
            ports: None,
            action: ACTION_DENY,
            precedence: PRECEDENCE_DEFAULT_DENY,
            cookie,
        });
    }

    fn add_service(&mut self, vip: IpAddr, port: u16, protocol: u8, service_id: u32) {
        let (family, addr) = addr16(vip);
        self.services.insert(
            ServiceKey {
                addr,
                port: port.to_be_bytes(),
                protocol,
                family,
            },
            ServiceEntry { service_id },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::port_range_prefixes;

    #[test]
    fn ranges_split_into_aligned_blocks() {
        assert_eq!(port_range_prefixes(80, 80), vec![(80, 16)]);
        assert_eq!(port_range_prefixes(0, 65535), vec![(0, 0)]);
        assert_eq!(port_range_prefixes(8080, 8083), vec![(8080, 14)]);
        assert_eq!(port_range_prefixes(1000, 1003), vec![(1000, 14)]);
        assert_eq!(port_range_prefixes(5, 9), vec![(5, 16), (6, 15), (8, 15)]);
        // Every port in the range is covered exactly once, nothing outside.
        for (lo, hi) in [(1u16, 1000u16), (30000, 32767), (65530, 65535)] {
            let blocks = port_range_prefixes(lo, hi);
            for port in lo.saturating_sub(3)..=hi.saturating_add(3) {
                let n = blocks
                    .iter()
                    .filter(|(start, bits)| {
                        let size = 1u32 << (16 - bits);
                        (*start as u32..*start as u32 + size).contains(&(port as u32))
                    })
                    .count();
                assert_eq!(
                    n,
                    usize::from((lo..=hi).contains(&port)),
                    "port {port} in {lo}-{hi}"
                );
            }
        }
    }
}
