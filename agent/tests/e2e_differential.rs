//! End-to-end differential, as root: random cluster models (the policy crate's proptest world:
//! namespaces, pods on two nodes, Services, NetworkPolicies, FlowPolicies, ClusterNetworkPolicies)
//! go through the agent's whole path (the node model with this node's endpoints, `compile`,
//! `node_state`, `map_contents`, a minimal diff written into the real maps of a loaded datapath),
//! and packets between every pair of flow ends run through the real eBPF programs with
//! BPF_PROG_TEST_RUN. The kernel's verdict must equal the policy crate's naive evaluator, which
//! is written from the specifications and shares nothing with the compiler. Worlds are proptest
//! values, so a failure shrinks to a minimal cluster.
//!
//! What the kernel must do, per program, for a new flow (TCP SYN, UDP, SCTP INIT-less packets,
//! ICMP echo requests), with the naive verdicts `egress` (the source pod's side) and `ingress`
//! (the destination pod's side):
//! - `from_pod` on a pod of this node (the packet leaves the pod): dropped iff egress is deny,
//!   or, to another pod of this node (decided whole at the source), ingress is deny;
//! - `to_pod` on a pod of this node: passed when the source is this node; otherwise dropped iff
//!   ingress is deny or the source is a pod (of any node) whose egress is deny (egress is
//!   enforced again at the destination, which is what keeps it after a Service's DNAT).
//!   Audit verdicts pass.

#[path = "../../policy/tests/common/mod.rs"]
mod common;

use std::cell::Cell;
use std::net::IpAddr;
use std::sync::Mutex;

use common::naive::{self, End};
use proptest::prelude::*;
use proptest::test_runner::{TestCaseError, TestRunner};
use septum_agent::reconcile::{MapContents, map_contents, node_model};
use septum_agent::registry::{AttachmentKey, Endpoint, Registry};
use septum_datapath::{Datapath, DatapathOptions};
use septum_datapath_common::{ACTION_DENY, proto};
use septum_policy::model::Cluster;
use septum_tests::packet::Flow;
use septum_tests::reference::Reference as _;

/// The node the agent runs on; the world's other node is remote.
const NODE: &str = "n1";
/// The interface test runs are attributed to (the loopback device always exists).
const LO: u32 = 1;
/// First fake host ifindex of the registered endpoints (never a real device's).
const IFINDEX_BASE: u32 = 10_000;
const TC_ACT_OK: i32 = 0;
const TC_ACT_SHOT: i32 = 2;
/// Destination ports probed (every protocol but ICMP).
const PORTS: [u16; 6] = [53, 80, 443, 8080, 9090, 9091];

static DATAPATH: Mutex<Option<Datapath>> = Mutex::new(None);

/// Every non-host-network pod of `NODE` registered as an endpoint, as the CNI plugin would.
fn registry(c: &Cluster) -> Registry {
    let mut r = Registry::default();
    let local = c
        .pods
        .values()
        .filter(|p| p.node.as_deref() == Some(NODE) && !p.host_network);
    for (i, p) in local.enumerate() {
        let id = i as u32 + 1;
        r.endpoints.insert(
            id,
            Endpoint {
                id,
                attachment: AttachmentKey {
                    network: "e2e".into(),
                    container_id: format!("sandbox-{id}"),
                    ifname: "eth0".into(),
                },
                pod: Some(p.key()),
                pod_uid: String::new(),
                netns: String::new(),
                host_ifindex: IFINDEX_BASE + id,
                host_ifname: format!("veth{id}"),
                ips: p.ips.clone(),
                created_unix_ms: 0,
            },
        );
    }
    r
}

fn denies(v: &Option<naive::Verdict>) -> bool {
    v.as_ref().is_some_and(|v| v.0 == ACTION_DENY)
}

/// The protocols of one family, with the ports each is probed on.
fn probes(v6: bool) -> Vec<(u8, u16)> {
    let mut out = Vec::new();
    for p in [proto::TCP, proto::UDP, proto::SCTP] {
        out.extend(PORTS.iter().map(|port| (p, *port)));
    }
    out.push((if v6 { proto::ICMPV6 } else { proto::ICMP }, 0));
    out
}

struct Run<'a> {
    dp: &'a mut Datapath,
    maps: &'a MapContents,
    world: &'a Cluster,
    /// Source ports are never reused within one subject, so no run meets another's conntrack.
    next_sport: u16,
    packets: usize,
}

impl Run<'_> {
    fn packet(&mut self, src: IpAddr, dst: IpAddr, protocol: u8, port: u16) -> Flow {
        self.next_sport = if self.next_sport >= 60_000 {
            20_000
        } else {
            self.next_sport + 1
        };
        Flow::tcp(src, dst, self.next_sport, port).with_protocol(protocol)
    }

    /// One test run of `program` for `flow` with `ifindex`'s endpoint; `want` the verdict.
    fn expect(
        &mut self,
        program: &'static str,
        flow: &Flow,
        want: i32,
        why: &str,
    ) -> Result<(), TestCaseError> {
        let got = self
            .dp
            .test_run(program, &flow.build(), LO, 1)
            .map_err(|e| TestCaseError::fail(format!("test run: {e}")))?
            .0;
        self.packets += 1;
        prop_assert_eq!(
            got,
            want,
            "{} {:?}: {}\nworld: {:#?}\nmaps: {:#?}",
            program,
            flow,
            why,
            self.world,
            self.maps
        );
        Ok(())
    }
}

fn check(world: &Cluster) -> Result<usize, TestCaseError> {
    let mut guard = DATAPATH.lock().unwrap_or_else(|p| p.into_inner());
    let dp = guard.get_or_insert_with(|| {
        Datapath::load(&DatapathOptions::unpinned()).expect("load the datapath")
    });
    // The agent's path, from the datastore's objects to the kernel.
    let reg = registry(world);
    let node_ips = world.nodes[NODE].ips.clone();
    let model = node_model(world, &reg, NODE, &node_ips);
    let (state, _) = septum_policy::compile(&model, septum_policy::InMemoryAllocations::new());
    let slice = septum_policy::node::node_state(&model, &state, NODE);
    let maps = map_contents(&slice, &reg);
    maps.sync_to(dp)
        .map_err(|e| TestCaseError::fail(format!("write maps: {e}")))?;
    let written = MapContents::read(dp).map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(&written, &maps, "the kernel holds what the agent wrote");

    let ends = common::ends(&model);
    let mut run = Run {
        dp,
        maps: &maps,
        world: &model,
        next_sport: 20_000,
        packets: 0,
    };
    for ep in reg.endpoints.values() {
        let key = ep.pod.as_ref().expect("registered with a pod");
        // Test runs see the subject's endpoint on the loopback device.
        let info = maps.endpoints[&ep.host_ifindex];
        run.dp
            .endpoints
            .insert(LO, info)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        run.dp
            .conntrack
            .flush()
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        for me in ep.ips.iter().map(|ip| End::Pod(key.clone(), *ip)) {
            for other in &ends {
                if other.ip().is_ipv4() != me.ip().is_ipv4() || other.ip() == me.ip() {
                    continue;
                }
                for (protocol, port) in probes(me.ip().is_ipv6()) {
                    // Leaving the pod: its egress, and a pod of this node's ingress.
                    let (eg, ing) = naive::flow(&model, &me, other, protocol, port);
                    let f = run.packet(me.ip(), other.ip(), protocol, port);
                    let local = maps.local_destination(&f).is_some();
                    let want = if denies(&eg) || (local && denies(&ing)) {
                        TC_ACT_SHOT
                    } else {
                        TC_ACT_OK
                    };
                    run.expect(
                        "from_pod",
                        &f,
                        want,
                        &format!("naive egress {eg:?} (ingress {ing:?})"),
                    )?;
                    // Arriving at the pod: its ingress, and a pod source's egress.
                    let (eg, ing) = naive::flow(&model, other, &me, protocol, port);
                    let from_here = matches!(other, End::Node(n, _) if n == NODE);
                    let want = if !from_here && (denies(&ing) || denies(&eg)) {
                        TC_ACT_SHOT
                    } else {
                        TC_ACT_OK
                    };
                    let f = run.packet(other.ip(), me.ip(), protocol, port);
                    run.expect(
                        "to_pod",
                        &f,
                        want,
                        &format!("naive ingress {ing:?}, source egress {eg:?}"),
                    )?;
                }
            }
            // To a Service VIP the decision waits for the DNAT'd packet at the backend, whose
            // `to_pod` enforces this pod's egress (checked above with the pod source).
            for svc in model.services.values() {
                for (vip, sp) in svc
                    .cluster_ips
                    .iter()
                    .flat_map(|ip| svc.ports.iter().map(move |p| (ip, p)))
                {
                    if vip.is_ipv4() != me.ip().is_ipv4() {
                        continue;
                    }
                    let f = run.packet(me.ip(), *vip, sp.protocol.number(), sp.port);
                    run.expect("from_pod", &f, TC_ACT_OK, "a Service VIP is deferred")?;
                }
            }
        }
    }
    Ok(run.packets)
}

#[test]
fn kernel_verdicts_of_compiled_worlds_equal_the_naive_evaluator() {
    let config = ProptestConfig {
        cases: common::proptest_cases().min(96),
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    let mut runner = TestRunner::new(config);
    let packets = Cell::new(0usize);
    let worlds = Cell::new(0usize);
    let result = runner.run(&common::world::world(), |w| {
        let n = check(&w)?;
        packets.set(packets.get() + n);
        worlds.set(worlds.get() + 1);
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    eprintln!(
        "{} packets through the kernel over {} runs of random worlds",
        packets.get(),
        worlds.get()
    );
    assert!(
        packets.get() >= 1000,
        "too few packets ({}) to call this a differential",
        packets.get()
    );
}
