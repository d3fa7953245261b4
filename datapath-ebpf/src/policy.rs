//! Policy: who the packet's ends are (the endpoint behind the interface, the peers' identities
//! from the ipcache, Service VIPs), the policy lookups of one direction (highest precedence wins,
//! deny beats audit beats allow) and how a new flow's decisions combine into its verdict.

use aya_ebpf::maps::lpm_trie::Key;
use septum_datapath_common::{
    ACTION_ALLOW, ACTION_AUDIT, ACTION_DENY, CT_F_AUDIT, CtKey, DIRECTION_EGRESS, DropReason,
    EVENT_F_DENIED_BY_EGRESS, EVENT_F_DENIED_BY_INGRESS, EndpointInfo, IDENTITY_WORLD,
    IPCACHE_KIND_WORLD, IpCacheEntry, MODE_AUDIT, POLICY_PREFIX_FULL, PRECEDENCE_DEFAULT_DENY,
    PolicyKeyData, ServiceKey, Verdict,
};

use crate::{
    maps::{ENDPOINTS, IPCACHE, LOCAL_ADDRS, POLICY, SERVICES},
    mem::{AddrKey, AddrLpmKey, End, put},
};

/// The endpoint (pod) behind host-side interface `ifindex`, if septum knows one.
#[inline(always)]
pub(crate) fn endpoint(ifindex: u32) -> Option<&'static EndpointInfo> {
    // SAFETY: map values stay valid for the program's run. A reference, not a copy: a copied
    // Option lets LLVM read the (uninitialised) payload of None, which the verifier rejects.
    unsafe { ENDPOINTS.get(&ifindex) }
}

/// The host ifindex of the endpoint of this node that owns address `end` of `key`, if one does.
#[inline(always)]
pub(crate) fn local_endpoint(key: &CtKey, end: End) -> Option<u32> {
    let k = AddrKey::new(key, end);
    // SAFETY: plain data copied out at once.
    unsafe { LOCAL_ADDRS.get(k.as_key()) }.copied()
}

/// What septum knows of address `end` of `key`: its identity and kind, or "world" when nothing.
#[inline(always)]
pub(crate) fn ipcache(key: &CtKey, end: End) -> IpCacheEntry {
    let k = AddrLpmKey::new(key, end);
    match IPCACHE.get(k.as_key()) {
        Some(e) => *e,
        None => IpCacheEntry {
            identity: IDENTITY_WORLD,
            cidr_identity: 0,
            kind: IPCACHE_KIND_WORLD,
            _pad: [0; 3],
        },
    }
}

/// Whether the packet (`key`) is addressed to a Service VIP.
#[inline(always)]
pub(crate) fn to_service(key: &CtKey) -> bool {
    let svc = ServiceKey {
        addr: key.daddr,
        port: key.dport.to_be_bytes(),
        protocol: key.protocol,
        family: key.family,
    };
    // SAFETY: plain data.
    unsafe { SERVICES.get(&svc) }.is_some()
}

/// The outcome of evaluating one direction of policy.
#[derive(Clone, Copy)]
pub(crate) struct Decision {
    action: u8,
    precedence: u16,
    cookie: u32,
    matched: bool,
}

const NOT_POLICED: Decision = Decision {
    action: ACTION_ALLOW,
    precedence: 0,
    cookie: 0,
    matched: false,
};

#[inline(always)]
fn lookup_one(best: &mut Decision, subject: u32, direction: u8, peer: u32, pkt: &CtKey, port: u16) {
    let key = Key::new(
        POLICY_PREFIX_FULL,
        PolicyKeyData::new(subject, direction, peer, pkt.protocol, port),
    );
    if let Some(e) = POLICY.get(&key) {
        let better = !best.matched
            || septum_datapath_common::lpm::outranks(
                e.precedence,
                e.action,
                best.precedence,
                best.action,
            );
        if better {
            *best = Decision {
                action: e.action,
                precedence: e.precedence,
                cookie: e.cookie,
                matched: true,
            };
        }
    }
}

/// Evaluates `subject`'s policy in `direction` towards a peer (identity and CIDR identity) on
/// `port`: three lookups, highest precedence wins, deny beats audit beats allow.
#[inline(always)]
pub(crate) fn evaluate(
    subject: u32,
    direction: u8,
    peer: &IpCacheEntry,
    pkt: &CtKey,
    port: u16,
) -> Decision {
    let mut best = NOT_POLICED;
    // The contract's three lookups, in its order (`septum_datapath_common::lpm::peer_lookups`).
    for p in septum_datapath_common::lpm::peer_lookups(peer)
        .into_iter()
        .flatten()
    {
        lookup_one(&mut best, subject, direction, p, pkt, port);
    }
    best
}

#[inline(always)]
fn deny_reason(d: &Decision) -> DropReason {
    if d.precedence == PRECEDENCE_DEFAULT_DENY {
        DropReason::PolicyDefaultDeny
    } else {
        DropReason::PolicyDeny
    }
}

/// Everything a new flow's verdict and event need.
pub(crate) struct FlowDecision {
    pub(crate) ifindex: u32,
    pub(crate) endpoint_id: u32,
    audit_mode: bool,
    pub(crate) src_identity: u32,
    pub(crate) dst_identity: u32,
    pub(crate) egress_cookie: u32,
    pub(crate) ingress_cookie: u32,
    pub(crate) verdict: Verdict,
    pub(crate) reason: DropReason,
    pub(crate) event_flags: u8,
    pub(crate) ct_flags: u16,
    /// A node-local flow's destination pod's host ifindex, 0 otherwise.
    pub(crate) local_ifindex: u32,
}

impl FlowDecision {
    #[inline(always)]
    pub(crate) fn init(&mut self, ifindex: u32, ep: Option<&EndpointInfo>) {
        let (endpoint_id, audit_mode) = match ep {
            Some(ep) => (ep.endpoint_id, ep.mode == MODE_AUDIT),
            None => (0, false),
        };
        // One store each (`put`): plain zero stores would be merged into a memset call.
        put(&mut self.ifindex, ifindex);
        put(&mut self.endpoint_id, endpoint_id);
        put(&mut self.audit_mode, audit_mode);
        put(&mut self.src_identity, 0);
        put(&mut self.dst_identity, 0);
        put(&mut self.egress_cookie, 0);
        put(&mut self.ingress_cookie, 0);
        put(&mut self.verdict, Verdict::Forwarded);
        put(&mut self.reason, DropReason::None);
        put(&mut self.event_flags, 0);
        put(&mut self.ct_flags, 0);
        put(&mut self.local_ifindex, 0);
    }

    /// Decisions applied from now on relax to audit as `ep`'s mode says (a node-local flow's
    /// ingress side is the destination's, in its mode).
    #[inline(always)]
    pub(crate) fn set_audit_mode(&mut self, ep: &EndpointInfo) {
        self.audit_mode = ep.mode == MODE_AUDIT;
    }

    #[inline(always)]
    fn drop(&mut self, reason: DropReason, event_flags: u8) {
        self.event_flags |= event_flags;
        if self.verdict == Verdict::Dropped {
            return;
        }
        self.reason = reason;
        if self.audit_mode {
            self.verdict = Verdict::Audit;
            self.ct_flags |= CT_F_AUDIT;
        } else {
            self.verdict = Verdict::Dropped;
        }
    }

    /// Drops regardless of audit mode: the endpoint is unknown or not ready, or the packet
    /// cannot be classified. Audit mode relaxes policy, never these.
    #[inline(always)]
    pub(crate) fn drop_hard(&mut self, reason: DropReason) {
        self.reason = reason;
        self.verdict = Verdict::Dropped;
    }

    /// Applies one direction's decision.
    #[inline(always)]
    pub(crate) fn apply(&mut self, d: &Decision, direction: u8) {
        let (cookie, flag) = if direction == DIRECTION_EGRESS {
            (&mut self.egress_cookie, EVENT_F_DENIED_BY_EGRESS)
        } else {
            (&mut self.ingress_cookie, EVENT_F_DENIED_BY_INGRESS)
        };
        *cookie = d.cookie;
        match d.action {
            ACTION_DENY => self.drop(deny_reason(d), flag),
            ACTION_AUDIT => {
                if self.verdict == Verdict::Forwarded {
                    self.verdict = Verdict::Audit;
                    self.reason = deny_reason(d);
                }
                self.event_flags |= flag;
                self.ct_flags |= CT_F_AUDIT;
            }
            _ => {}
        }
    }
}
