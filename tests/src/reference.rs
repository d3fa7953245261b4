//! The reference evaluation of a packet against the datapath's map contents, written from the
//! contract in `septum-datapath-common` rather than from the eBPF code: the endpoint and Service
//! checks, the decision on each side and the mid-stream pickup rules, with every map read through
//! the contract's one reader (`septum_datapath_common::lpm`). The differential tests check the
//! real program against it.
//!
//! A new flow from a pod to a pod of this node (its address a local pod's in the ipcache and
//! among the local addresses, its endpoint ready; not a Service VIP, not mid-stream TCP) is
//! decided at `from_pod` as both points together would: the source's egress as `from_pod`
//! decides it, then the destination's ingress as its `to_pod` would, in the destination's mode.

use std::net::IpAddr;

use septum_datapath::{Datapath, DatapathError};
use septum_datapath_common::lpm::{decide, longest_match};
use septum_datapath_common::{
    ACTION_DENY, DIRECTION_EGRESS, DIRECTION_INGRESS, ENDPOINT_F_EGRESS_POLICY,
    ENDPOINT_F_INGRESS_POLICY, EndpointInfo, FAMILY_IPV4, FAMILY_IPV6, IDENTITY_HOST,
    IDENTITY_WORLD, IPCACHE_KIND_LOCAL_POD, IPCACHE_KIND_WORLD, IpCacheEntry, IpPrefixData,
    MODE_AUDIT, POINT_FROM_POD, STATE_READY, ServiceKey, is_pod_kind, proto,
};

use crate::packet::{ACK, Flow, SYN};

/// TC verdicts as the programs return them.
pub const TC_ACT_OK: i32 = 0;
pub const TC_ACT_SHOT: i32 = 2;

/// The desired contents of the policy maps: the datapath's own type.
pub use septum_datapath::MapContents;

/// 16-byte form of an address, as the maps store it.
pub fn addr16(ip: IpAddr) -> (u8, [u8; 16]) {
    match ip {
        IpAddr::V4(v4) => {
            let mut a = [0u8; 16];
            a[..4].copy_from_slice(&v4.octets());
            (FAMILY_IPV4, a)
        }
        IpAddr::V6(v6) => (FAMILY_IPV6, v6.octets()),
    }
}

/// The reference reading of map contents (the trait exists because `MapContents` is the
/// datapath's type).
pub trait Reference {
    /// Writes the contents into the datapath's maps (replacing whatever they held).
    fn write_to(&self, dp: &mut Datapath) -> Result<(), DatapathError>;
    /// The ipcache's answer for `ip`: longest matching prefix, world if none.
    fn ipcache_lookup(&self, ip: IpAddr) -> IpCacheEntry;
    /// The decision for `subject` in `direction` towards `peer` on (`protocol`, `port`):
    /// `Some(action)` if any entry matched, `None` if the direction is not policed.
    fn decide(
        &self,
        subject: u32,
        direction: u8,
        peer: &IpCacheEntry,
        protocol: u8,
        port: u16,
    ) -> Option<u8>;
    /// The TC verdict the program must return for `flow`, seen at `point` on `ifindex`, when
    /// no conntrack state exists.
    fn expected_verdict(&self, point: u8, ifindex: u32, flow: &Flow) -> i32;
    /// The endpoint of this node a new flow from `from_pod` is addressed to, when the datapath
    /// decides the flow whole there (a pod address, not a Service VIP, the endpoint ready, not
    /// mid-stream TCP).
    fn local_destination(&self, flow: &Flow) -> Option<EndpointInfo>;
    /// A compact, one-line-per-entry rendering for failure messages.
    fn describe(&self) -> String;
}

impl Reference for MapContents {
    fn write_to(&self, dp: &mut Datapath) -> Result<(), DatapathError> {
        self.sync_to(dp).map(|_| ())
    }

    fn ipcache_lookup(&self, ip: IpAddr) -> IpCacheEntry {
        let (family, addr) = addr16(ip);
        longest_match(IpPrefixData::new(family, addr), |k| {
            self.ipcache.get(k).copied()
        })
        .map_or(
            IpCacheEntry {
                identity: IDENTITY_WORLD,
                cidr_identity: 0,
                kind: IPCACHE_KIND_WORLD,
                _pad: [0; 3],
            },
            |(_, e)| e,
        )
    }

    fn decide(
        &self,
        subject: u32,
        direction: u8,
        peer: &IpCacheEntry,
        protocol: u8,
        port: u16,
    ) -> Option<u8> {
        decide(subject, direction, peer, protocol, port, |k| {
            self.policy.get(k).copied()
        })
        .map(|e| e.action)
    }

    /// The TC verdict the program must return for `flow`, seen at `point` on `ifindex`, when
    /// no conntrack state exists.
    fn expected_verdict(&self, point: u8, ifindex: u32, flow: &Flow) -> i32 {
        let ep = self.endpoints.get(&ifindex);
        let (sport, dport) = ports(flow);
        let denied = |action: Option<u8>| action == Some(ACTION_DENY);
        let midstream = flow.protocol == proto::TCP && flow.tcp_flags & (SYN | ACK) == ACK;
        let audit = ep.is_some_and(|e| e.mode == MODE_AUDIT);
        if point == POINT_FROM_POD {
            let Some(ep) = ep else { return TC_ACT_SHOT };
            if ep.state != STATE_READY {
                return TC_ACT_SHOT;
            }
            let (family, daddr) = addr16(flow.dst);
            let svc = ServiceKey {
                addr: daddr,
                port: dport.to_be_bytes(),
                protocol: flow.protocol,
                family,
            };
            if self.services.contains_key(&svc) {
                return TC_ACT_OK;
            }
            let peer = self.ipcache_lookup(flow.dst);
            let egress = (ep.flags & ENDPOINT_F_EGRESS_POLICY != 0)
                .then(|| self.decide(ep.identity, DIRECTION_EGRESS, &peer, flow.protocol, dport))
                .flatten();
            if let Some(dst) = self.local_destination(flow) {
                if denied(egress) && !audit {
                    return TC_ACT_SHOT;
                }
                let src = self.ipcache_lookup(flow.src);
                if src.identity == IDENTITY_HOST {
                    return TC_ACT_OK;
                }
                let ingress = (dst.flags & ENDPOINT_F_INGRESS_POLICY != 0)
                    .then(|| {
                        self.decide(dst.identity, DIRECTION_INGRESS, &src, flow.protocol, dport)
                    })
                    .flatten();
                return if !denied(ingress) || dst.mode == MODE_AUDIT {
                    TC_ACT_OK
                } else {
                    TC_ACT_SHOT
                };
            }
            if !denied(egress) || audit {
                return TC_ACT_OK;
            }
            if midstream {
                let ingress = (ep.flags & ENDPOINT_F_INGRESS_POLICY != 0)
                    .then(|| {
                        self.decide(ep.identity, DIRECTION_INGRESS, &peer, flow.protocol, sport)
                    })
                    .flatten();
                if !denied(ingress) {
                    return TC_ACT_OK;
                }
            }
            TC_ACT_SHOT
        } else {
            let src = self.ipcache_lookup(flow.src);
            if src.identity == IDENTITY_HOST {
                return TC_ACT_OK;
            }
            let Some(ep) = ep else { return TC_ACT_SHOT };
            if ep.state != STATE_READY {
                return TC_ACT_SHOT;
            }
            let me = self.ipcache_lookup(flow.dst);
            let egress = is_pod_kind(src.kind)
                .then(|| self.decide(src.identity, DIRECTION_EGRESS, &me, flow.protocol, dport))
                .flatten();
            let ingress = (ep.flags & ENDPOINT_F_INGRESS_POLICY != 0)
                .then(|| self.decide(ep.identity, DIRECTION_INGRESS, &src, flow.protocol, dport))
                .flatten();
            if (!denied(egress) && !denied(ingress)) || audit {
                return TC_ACT_OK;
            }
            if midstream {
                let reverse = (ep.flags & ENDPOINT_F_EGRESS_POLICY != 0)
                    .then(|| self.decide(ep.identity, DIRECTION_EGRESS, &src, flow.protocol, sport))
                    .flatten();
                if !denied(reverse) {
                    return TC_ACT_OK;
                }
            }
            TC_ACT_SHOT
        }
    }

    fn local_destination(&self, flow: &Flow) -> Option<EndpointInfo> {
        let midstream = flow.protocol == proto::TCP && flow.tcp_flags & (SYN | ACK) == ACK;
        if midstream {
            return None;
        }
        if self.ipcache_lookup(flow.dst).kind != IPCACHE_KIND_LOCAL_POD {
            return None;
        }
        let (family, addr) = addr16(flow.dst);
        let svc = ServiceKey {
            addr,
            port: ports(flow).1.to_be_bytes(),
            protocol: flow.protocol,
            family,
        };
        if self.services.contains_key(&svc) {
            return None;
        }
        let ifindex = self.local_addrs.get(&IpPrefixData::new(family, addr))?;
        self.endpoints
            .get(ifindex)
            .filter(|e| e.state == STATE_READY)
            .copied()
    }

    fn describe(&self) -> String {
        use std::fmt::Write as _;
        let mut s = String::new();
        for (k, v) in &self.local_addrs {
            let _ = writeln!(s, "local {:?}/{:?} -> if{v}", k.family[3], &k.addr);
        }
        for (k, v) in &self.endpoints {
            let _ = writeln!(
                s,
                "endpoint if{k}: id {} flags {} mode {} state {}",
                v.identity, v.flags, v.mode, v.state
            );
        }
        for (k, v) in &self.ipcache {
            let (bits, d) = (k.prefix_len(), k.data());
            let addr: IpAddr = if d.family[3] == FAMILY_IPV4 {
                IpAddr::from([d.addr[0], d.addr[1], d.addr[2], d.addr[3]])
            } else {
                IpAddr::from(d.addr)
            };
            let _ = writeln!(
                s,
                "ipcache {addr}/{} -> id {} cidr {} kind {}",
                bits - 32,
                v.identity,
                v.cidr_identity,
                v.kind
            );
        }
        for (k, v) in &self.policy {
            let (bits, d) = (k.prefix_len(), k.data());
            let _ = writeln!(
                s,
                "policy subj {} dir {} peer {} proto {} port {}/{} -> action {} prec {} cookie {}",
                d.subject(),
                d.direction,
                d.peer(),
                d.protocol,
                d.port(),
                bits.saturating_sub(80),
                v.action,
                v.precedence,
                v.cookie
            );
        }
        for k in self.services.keys() {
            let _ = writeln!(
                s,
                "service {:?} port {} proto {}",
                &k.addr,
                u16::from_be_bytes(k.port),
                k.protocol
            );
        }
        s
    }
}

/// The (sport, dport) the datapath derives for a flow (ICMP echo ids as ports).
pub fn ports(flow: &Flow) -> (u16, u16) {
    match flow.protocol {
        proto::TCP | proto::UDP | proto::SCTP => (flow.sport, flow.dport),
        proto::ICMP | proto::ICMPV6 => match flow.icmp_type {
            8 | 128 => (flow.sport, 0),
            0 | 129 => (0, flow.dport),
            _ => (0, 0),
        },
        _ => (0, 0),
    }
}
