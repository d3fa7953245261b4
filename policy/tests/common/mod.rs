#![allow(
    clippy::collapsible_if,
    clippy::explicit_auto_deref,
    clippy::too_many_arguments
)]
//! Shared test support: an independent naive evaluator, a reader of compiled state that follows
//! the datapath's lookups through per-node slices, and proptest strategies for worlds and
//! changes.
#![allow(dead_code)]

pub mod naive;
pub mod service_world;
pub mod world;

use std::net::IpAddr;

use septum_datapath_common::{ACTION_ALLOW, IDENTITY_WORLD, PolicyEntry};
use septum_policy::allocation::AllocationStore;
use septum_policy::lpm;
use septum_policy::model::*;
use septum_policy::node::node_state;
use septum_policy::state::ClusterState;

use naive::End;

/// Cases per property: 256, or `PROPTEST_CASES` when set (a deeper search before a release).
pub fn proptest_cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256)
}

/// (action, cookie) of one side as the datapath would decide it, from the node slice where the
/// check runs. `None`: that end is not a pod endpoint.
pub fn compiled_side(
    c: &Cluster,
    state: &ClusterState,
    slices: &std::collections::BTreeMap<String, septum_policy::node::NodeState>,
    subject_end: &End,
    peer_end: &End,
    ingress: bool,
    proto: u8,
    port: u16,
) -> Option<(u8, u32)> {
    let End::Pod(k, _) = subject_end else {
        return None;
    };
    let pod = c.pods.get(k)?;
    if pod.host_network {
        return None;
    }
    let ep = state
        .endpoints
        .get(k)
        .unwrap_or_else(|| panic!("endpoint {k} missing"));
    let node = pod.node.clone().unwrap_or_default();
    let slice = slices
        .get(&node)
        .unwrap_or_else(|| panic!("no slice for node {node}"));
    let peer_ip = peer_end.ip();
    let (pid, pcidr) = lookup_ip(&slice.ipcache, peer_ip);
    let dir = if ingress {
        septum_datapath_common::Direction::Ingress
    } else {
        septum_datapath_common::Direction::Egress
    };
    let flag = if ingress {
        septum_datapath_common::ENDPOINT_F_INGRESS_POLICY
    } else {
        septum_datapath_common::ENDPOINT_F_EGRESS_POLICY
    };
    let e: Option<PolicyEntry> = if ep.flags & flag == 0 {
        None
    } else {
        let pcidr = (pcidr != 0).then_some(pcidr.into());
        lpm::policy_decision(
            &slice.policy,
            ep.identity,
            dir,
            pid.into(),
            pcidr,
            proto,
            port,
        )
    };
    Some(e.map_or((ACTION_ALLOW, 0), |e| (e.action, e.cookie)))
}

fn lookup_ip(
    ipcache: &std::collections::BTreeMap<
        septum_policy::cidr::Cidr,
        septum_datapath_common::IpCacheEntry,
    >,
    ip: IpAddr,
) -> (u32, u32) {
    lpm::ipcache_lookup(ipcache, ip).map_or((IDENTITY_WORLD, 0), |e| (e.identity, e.cidr_identity))
}

/// Every flow end of a world: each pod address, each node address, some outside addresses.
pub fn ends(c: &Cluster) -> Vec<End> {
    let mut out = Vec::new();
    for p in c.pods.values() {
        if p.host_network {
            continue;
        }
        for ip in &p.ips {
            out.push(End::Pod(p.key(), *ip));
        }
    }
    for n in c.nodes.values() {
        for ip in &n.ips {
            out.push(End::Node(n.name.clone(), *ip));
        }
    }
    for ip in [
        "8.8.8.8",
        "192.168.1.1",
        "10.0.1.77",
        "2001:db8::1",
        "fd00::99",
    ] {
        out.push(End::External(ip.parse().expect("test ip")));
    }
    out
}

/// Checks every flow of the world against the naive evaluator; returns the first mismatch.
pub fn check_world(
    c: &Cluster,
    state: &ClusterState,
    store: &dyn AllocationStore,
) -> Result<usize, String> {
    check_world_on_ports(c, state, store, &[53, 79, 80, 443, 8080, 9090, 9091])
}

/// [`check_world`] on the given destination ports (TCP, UDP, SCTP and ICMP each).
pub fn check_world_on_ports(
    c: &Cluster,
    state: &ClusterState,
    store: &dyn AllocationStore,
    ports: &[u16],
) -> Result<usize, String> {
    let ends = ends(c);
    let mut checked = 0;
    let slices: std::collections::BTreeMap<String, septum_policy::node::NodeState> = c
        .nodes
        .keys()
        .map(|n| (n.clone(), node_state(c, state, n)))
        .collect();
    // Per destination node: slices as seen from there (remote sources' egress entries).
    let remote: std::collections::BTreeMap<
        String,
        std::collections::BTreeMap<String, septum_policy::node::NodeState>,
    > = c
        .nodes
        .keys()
        .map(|dn| {
            let view = remote_view(c, state, dn);
            (
                dn.clone(),
                c.nodes
                    .keys()
                    .map(|n| (n.clone(), node_state(c, &view, n)))
                    .collect(),
            )
        })
        .collect();
    for src in &ends {
        for dst in &ends {
            if src.ip().is_ipv4() != dst.ip().is_ipv4() {
                continue;
            }
            if !matches!(src, End::Pod(..)) && !matches!(dst, End::Pod(..)) {
                continue;
            }
            for proto in [6u8, 17, 132, 1] {
                for &port in ports {
                    let (eg, ing) = naive::flow(c, src, dst, proto, port);
                    let ceg = compiled_side(c, state, &slices, src, dst, false, proto, port);
                    let cing = compiled_side(c, state, &slices, dst, src, true, proto, port);
                    let neg = eg.clone().map(|v| (v.0, naive::cookie_of(store, &v)));
                    let ning = ing.clone().map(|v| (v.0, naive::cookie_of(store, &v)));
                    // From its own node a pod is always reachable; the compiled form reports the
                    // builtin cookie only when the pod's ingress is policed at all.
                    let host = septum_policy::rules::COOKIE_HOST.get();
                    let cing = match (ning, cing) {
                        (Some((a, c1)), Some((b, 0))) if c1 == host && a == b => Some((b, host)),
                        _ => cing,
                    };
                    if neg != ceg || ning != cing {
                        return Err(format!(
                            "flow {src:?} -> {dst:?} proto {proto} port {port}: naive egress {neg:?} ingress {ning:?} ({eg:?} / {ing:?}); compiled egress {ceg:?} ingress {cing:?}"
                        ));
                    }
                    // Egress is also checked at the destination's node (after DNAT).
                    if let (End::Pod(dk, _), Some(_)) = (dst, ceg) {
                        if let Some(dn) = c.pods.get(dk).and_then(|p| p.node.clone()) {
                            let sp = match src {
                                End::Pod(k, _) => c.pods.get(k),
                                _ => None,
                            };
                            if sp.and_then(|p| p.node.clone()) != Some(dn.clone()) {
                                let again = compiled_side(
                                    c,
                                    state,
                                    &remote[&dn],
                                    src,
                                    dst,
                                    false,
                                    proto,
                                    port,
                                );
                                if again != ceg {
                                    return Err(format!(
                                        "egress of {src:?} -> {dst:?} {proto}/{port} differs at the destination node {dn}: {again:?} vs {ceg:?}"
                                    ));
                                }
                            }
                        }
                    }
                    checked += 1;
                }
            }
        }
    }
    Ok(checked)
}

/// A state whose policy map is the destination node's slice, with the source pod placed on that
/// node for the lookup (to check that remote sources' egress entries reach it).
fn remote_view(c: &Cluster, state: &ClusterState, node: &str) -> ClusterState {
    let slice = node_state(c, state, node);
    let mut s = state.clone();
    s.policy = slice.policy;
    s
}
