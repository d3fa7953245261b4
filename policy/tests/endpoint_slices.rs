//! Services whose backends come from EndpointSlices managed by hand (a Service without a
//! selector, the way an external database or a legacy VM is put behind a ClusterIP): a
//! FlowPolicy Service peer reaches the addresses those slices name, at each slice's own port
//! for the Service port the rule names (not the Service port, not its targetPort); slices the
//! EndpointSlice controller derives from selectors are ignored; slices arriving, moving and
//! leaving are applied incrementally exactly as a full recompile; explain to such a Service
//! walks every slice endpoint. Every verdict is checked against the naive evaluator on every
//! flow of the world, and the naive evaluator's answers on the flows that matter are pinned.

mod common;

use proptest::prelude::*;
use septum_datapath_common::{ACTION_ALLOW, ACTION_DENY};
use septum_policy::allocation::InMemoryAllocations;
use septum_policy::compile::Engine;
use septum_policy::explain::{ExplainQuery, FlowEnd, explain};
use septum_policy::model::*;
use septum_policy::selector::{LabelSelector, Labels};

use common::naive::{self, End};
use common::world::{slice_world, steps};

fn labels(kv: &[(&str, &str)]) -> Labels {
    kv.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn pod(name: &str, app: &str, ip: &str) -> Pod {
    Pod {
        namespace: "a".into(),
        name: name.into(),
        labels: labels(&[("app", app)]),
        ips: vec![ip.parse().expect("ip")],
        node: Some("n1".into()),
        service_account: "default".into(),
        ..Pod::default()
    }
}

fn slice(name: &str, service: &str, manager: &str, addresses: &[&str]) -> EndpointSlice {
    EndpointSlice {
        namespace: "a".into(),
        name: name.into(),
        service: Some(service.into()),
        managed_by: Some(manager.into()),
        addresses: addresses.iter().map(|a| a.parse().expect("ip")).collect(),
        ports: vec![
            EndpointPort {
                name: "web".into(),
                port: Some(9090),
                protocol: Protocol::Tcp,
            },
            EndpointPort {
                name: "svc-dns".into(),
                port: Some(53),
                protocol: Protocol::Udp,
            },
        ],
    }
}

/// Client and db pods; Service `legacy` without a selector (web 80/TCP with a targetPort the
/// slices override, svc-dns 53/UDP); client may reach legacy's `web` port; db admits legacy's
/// backends.
fn world() -> Cluster {
    let mut c = Cluster::default();
    c.nodes.insert(
        "n1".into(),
        Node {
            name: "n1".into(),
            ips: vec!["10.1.0.1".parse().expect("ip")],
        },
    );
    for p in [
        pod("client", "client", "10.0.0.2"),
        pod("db", "db", "10.0.1.3"),
    ] {
        c.pods.insert(p.key(), p);
    }
    let legacy = Service {
        namespace: "a".into(),
        name: "legacy".into(),
        selector: None,
        ports: vec![
            ServicePort {
                name: Some("web".into()),
                port: 80,
                protocol: Protocol::Tcp,
                target_port: Some(PortRef::Number(8080)),
            },
            ServicePort {
                name: Some("svc-dns".into()),
                port: 53,
                protocol: Protocol::Udp,
                target_port: None,
            },
        ],
        cluster_ips: vec!["10.96.0.20".parse().expect("ip")],
    };
    c.services.insert(legacy.key(), legacy);
    let select = |app: &str| LabelSelector {
        match_labels: labels(&[("app", app)]),
        match_expressions: Vec::new(),
    };
    let to_legacy = FlowPolicy {
        namespace: "a".into(),
        name: "to-legacy".into(),
        mode: FlowMode::Enforce,
        subject: FlowSubject::Pods(select("client")),
        ingress: None,
        egress: Some(vec![FlowRule {
            peers: vec![FlowPeer::Service {
                namespace: None,
                name: "legacy".into(),
            }],
            ports: vec![FlowPort {
                protocol: None,
                port: Some(PortRef::Name("web".into())),
                end_port: None,
            }],
        }]),
    };
    let from_legacy = FlowPolicy {
        namespace: "a".into(),
        name: "from-legacy".into(),
        mode: FlowMode::Enforce,
        subject: FlowSubject::Pods(select("db")),
        ingress: Some(vec![FlowRule {
            peers: vec![FlowPeer::Service {
                namespace: None,
                name: "legacy".into(),
            }],
            ports: Vec::new(),
        }]),
        egress: None,
    };
    for p in [to_legacy, from_legacy] {
        c.flow_policies.insert(p.key(), p);
    }
    c
}

fn client() -> End {
    End::Pod(
        ObjectKey::new("a", "client"),
        "10.0.0.2".parse().expect("ip"),
    )
}

fn db() -> End {
    End::Pod(ObjectKey::new("a", "db"), "10.0.1.3".parse().expect("ip"))
}

fn outside(ip: &str) -> End {
    End::External(ip.parse().expect("ip"))
}

/// The naive egress action of `src -> dst` (TCP unless `udp`).
fn egress(c: &Cluster, src: &End, dst: &End, port: u16, udp: bool) -> u8 {
    let proto = if udp { 17 } else { 6 };
    naive::flow(c, src, dst, proto, port)
        .0
        .expect("a pod source")
        .0
}

fn ingress(c: &Cluster, src: &End, dst: &End, port: u16) -> u8 {
    naive::flow(c, src, dst, 6, port)
        .1
        .expect("a pod destination")
        .0
}

fn check(engine: &Engine<InMemoryAllocations>) {
    if let Err(e) = common::check_world(engine.cluster(), engine.state(), engine.store()) {
        panic!("{e}\nstate:\n{}", engine.state());
    }
}

#[test]
fn a_service_peer_reaches_the_addresses_of_its_manual_slices_at_their_ports() {
    let mut c = world();
    for s in [
        slice("legacy-1", "legacy", "staff", &["8.8.8.8", "10.0.1.3"]),
        // Derived from a selector by Kubernetes: the engine takes such backends from the
        // selector (here there is none), never from the slice.
        slice(
            "legacy-x",
            "legacy",
            ENDPOINTSLICE_CONTROLLER,
            &["10.0.1.77"],
        ),
    ] {
        c.endpoint_slices.insert(s.key(), s);
    }
    let engine = Engine::new(c.clone(), InMemoryAllocations::new());
    check(&engine);
    // Toward the Service: its `web` port means the slices' `web` port, 9090.
    assert_eq!(
        egress(&c, &client(), &outside("8.8.8.8"), 9090, false),
        ACTION_ALLOW
    );
    assert_eq!(egress(&c, &client(), &db(), 9090, false), ACTION_ALLOW);
    for port in [80, 8080] {
        assert_eq!(
            egress(&c, &client(), &outside("8.8.8.8"), port, false),
            ACTION_DENY,
            "port {port} is not the backends' port"
        );
    }
    assert_eq!(
        egress(&c, &client(), &outside("8.8.8.8"), 53, true),
        ACTION_DENY,
        "the rule names only `web`"
    );
    assert_eq!(
        egress(&c, &client(), &outside("10.0.1.77"), 9090, false),
        ACTION_DENY,
        "a derived slice adds nothing"
    );
    // From the Service: its backends are sources db admits.
    assert_eq!(ingress(&c, &outside("8.8.8.8"), &db(), 5432), ACTION_ALLOW);
    assert_eq!(ingress(&c, &client(), &db(), 5432), ACTION_DENY);

    // Explain walks every endpoint the slices name, at the slice port.
    let query = ExplainQuery {
        from: FlowEnd::Pod(ObjectKey::new("a", "client")),
        to: FlowEnd::Service(ObjectKey::new("a", "legacy")),
        port: PortRef::Name("web".into()),
        protocol: Protocol::Tcp,
    };
    let got: Vec<(String, u16, String)> = explain(&engine, &query)
        .expect("explained")
        .into_iter()
        .map(|e| (e.dst_ip.to_string(), e.port, e.verdict))
        .collect();
    assert_eq!(
        got,
        [
            ("8.8.8.8".to_string(), 9090, "allow".to_string()),
            ("10.0.1.3".to_string(), 9090, "deny".to_string()),
        ],
        "db's ingress admits only legacy's backends, which client is not"
    );
}

#[test]
fn service_backends_are_the_selected_pods_then_the_manual_slices_addresses() {
    let mut c = world();
    // `front` selects db and has manual slices too; `legacy` has only slices.
    let front = Service {
        namespace: "a".into(),
        name: "front".into(),
        selector: Some(labels(&[("app", "db")])),
        ports: vec![ServicePort {
            name: Some("web".into()),
            port: 80,
            protocol: Protocol::Tcp,
            target_port: Some(PortRef::Number(8080)),
        }],
        cluster_ips: vec!["10.96.0.21".parse().expect("ip")],
    };
    c.services.insert(front.key(), front.clone());
    let mut no_web = slice("legacy-2", "legacy", "staff", &["192.168.1.1"]);
    no_web.ports.retain(|p| p.name != "web");
    for s in [
        // Names db's address too: a slice's address is an address, not the pod.
        slice("front-1", "front", "staff", &["8.8.8.8", "10.0.1.3"]),
        slice("front-2", "front", "staff", &["8.8.8.8"]),
        slice("front-x", "front", ENDPOINTSLICE_CONTROLLER, &["10.0.1.77"]),
        slice("legacy-1", "legacy", "staff", &["8.8.8.8"]),
        no_web,
    ] {
        c.endpoint_slices.insert(s.key(), s);
    }
    let db = &c.pods[&ObjectKey::new("a", "db")];
    let address = |ip: &str, port| ServiceBackend::Address {
        ip: ip.parse().expect("ip"),
        port,
    };
    assert_eq!(
        c.service_backends(&front, &front.ports[0])
            .collect::<Vec<_>>(),
        [
            ServiceBackend::Pod {
                pod: db,
                port: 8080
            },
            address("8.8.8.8", 9090),
            address("10.0.1.3", 9090),
        ],
        "the selected pod at its targetPort, then each slice address once at the slice port"
    );
    let legacy = &c.services[&ObjectKey::new("a", "legacy")];
    let backends = |port: usize| {
        c.service_backends(legacy, &legacy.ports[port])
            .collect::<Vec<_>>()
    };
    assert_eq!(backends(0), [address("8.8.8.8", 9090)]);
    assert_eq!(
        backends(1),
        [address("8.8.8.8", 53), address("192.168.1.1", 53)],
        "a slice without the web port still serves svc-dns"
    );
}

#[test]
fn explain_to_a_port_no_slice_has_names_the_slices() {
    let mut c = world();
    let mut s = slice("legacy-1", "legacy", "staff", &["8.8.8.8"]);
    s.ports.retain(|p| p.name != "web");
    c.endpoint_slices.insert(s.key(), s);
    let mut engine = Engine::new(c, InMemoryAllocations::new());
    let query = ExplainQuery {
        from: FlowEnd::Pod(ObjectKey::new("a", "client")),
        to: FlowEnd::Service(ObjectKey::new("a", "legacy")),
        port: PortRef::Name("web".into()),
        protocol: Protocol::Tcp,
    };
    let err = explain(&engine, &query).expect_err("no endpoint for web");
    assert_eq!(
        err.to_string(),
        "service a/legacy port 80/TCP has no endpoints: none of its EndpointSlices (legacy-1) \
         has a port with this port's name and protocol, so the flow has no destination"
    );
    // A slice with the port, but only addresses the IPv4 client cannot reach.
    engine.apply(&Change::UpsertEndpointSlice(slice(
        "legacy-6",
        "legacy",
        "staff",
        &["2001:db8::6"],
    )));
    let err = explain(&engine, &query).expect_err("no IPv4 endpoint for web");
    assert_eq!(
        err.to_string(),
        "service a/legacy port 80/TCP has no endpoints: its EndpointSlices with a port for it \
         (legacy-6) name no address of the source's IP family, so the flow has no destination"
    );
}

#[test]
fn slices_arriving_moving_and_leaving_apply_incrementally() {
    let mut engine = Engine::new(world(), InMemoryAllocations::new());
    let steps = [
        Change::UpsertEndpointSlice(slice("legacy-1", "legacy", "staff", &["8.8.8.8"])),
        Change::UpsertEndpointSlice(slice("legacy-2", "legacy", "staff", &["10.0.1.77"])),
        // Its addresses change.
        Change::UpsertEndpointSlice(slice("legacy-1", "legacy", "staff", &["192.168.1.1"])),
        // Its label moves it to another Service: legacy loses those backends.
        Change::UpsertEndpointSlice(slice("legacy-2", "other", "staff", &["10.0.1.77"])),
        // Taken over by the EndpointSlice controller: ignored from now on.
        Change::UpsertEndpointSlice(slice(
            "legacy-1",
            "legacy",
            ENDPOINTSLICE_CONTROLLER,
            &["192.168.1.1"],
        )),
        Change::DeleteEndpointSlice(ObjectKey::new("a", "legacy-1")),
        Change::DeleteEndpointSlice(ObjectKey::new("a", "absent")),
    ];
    let reach = |e: &Engine<InMemoryAllocations>, ip: &str| {
        egress(e.cluster(), &client(), &outside(ip), 9090, false) == ACTION_ALLOW
    };
    let expected = [
        (true, false, false),
        (true, true, false),
        (false, true, true),
        (false, false, true),
        (false, false, false),
        (false, false, false),
        (false, false, false),
    ];
    for (i, (ch, want)) in steps.iter().zip(expected).enumerate() {
        let before = engine.state().clone();
        let diff = engine.apply(ch);
        let full = engine.full_recompile();
        assert!(
            engine.state() == &full,
            "step {i}: incremental differs from full after {ch:?}"
        );
        let mut replay = before;
        diff.apply_to(&mut replay);
        assert!(&replay == engine.state(), "step {i}: old state + diff");
        check(&engine);
        let got = (
            reach(&engine, "8.8.8.8"),
            reach(&engine, "10.0.1.77"),
            reach(&engine, "192.168.1.1"),
        );
        assert_eq!(
            got, want,
            "step {i}: client reaches (8.8.8.8, 10.0.1.77, 192.168.1.1) after {ch:?}"
        );
    }
}

#[test]
fn a_service_without_backends_is_reported_and_a_subject_needs_a_selector() {
    let mut c = world();
    let problems = |c: &Cluster| -> Vec<String> {
        septum_policy::validate::validate_cluster(c)
            .into_iter()
            .map(|d| format!("{}: {}", d.field, d.message))
            .collect()
    };
    assert!(
        problems(&c).iter().any(|m| m.contains(
            "Service a/legacy has no selector and no EndpointSlice names endpoints for it"
        )),
        "{:?}",
        problems(&c)
    );
    let s = slice("legacy-1", "legacy", "staff", &["8.8.8.8"]);
    c.endpoint_slices.insert(s.key(), s);
    assert!(
        !problems(&c).iter().any(|m| m.contains("legacy")),
        "{:?}",
        problems(&c)
    );
    // A slice without the rule's port.
    let mut s = slice("legacy-1", "legacy", "staff", &["8.8.8.8"]);
    s.ports.retain(|p| p.name != "web");
    c.endpoint_slices.insert(s.key(), s);
    assert!(
        problems(&c).iter().any(|m| m
            == "spec.egress[0].ports[0].port: no EndpointSlice of Service a/legacy has a port for its port web"),
        "{:?}",
        problems(&c)
    );
    // A selector-less Service as subject: a subject is pods.
    let mut fp = c.flow_policies[&ObjectKey::new("a", "to-legacy")].clone();
    fp.subject = FlowSubject::Service("legacy".into());
    c.flow_policies.insert(fp.key(), fp);
    assert!(
        problems(&c).iter().any(|m| m.starts_with(
            "spec.subject.service: Service a/legacy has no selector, so the policy applies to no pod"
        )),
        "{:?}",
        problems(&c)
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(common::proptest_cases()))]

    /// On worlds where FlowPolicies name a Service with manual slices: the compiled entries
    /// agree with the naive evaluator on every flow, and changes (slices among them) applied
    /// incrementally equal the full recompile.
    #[test]
    fn slice_worlds_agree_with_the_naive_evaluator_and_apply_incrementally(
        c in slice_world(),
        steps in steps(),
    ) {
        let mut engine = Engine::new(c, InMemoryAllocations::new());
        if let Err(e) = common::check_world(engine.cluster(), engine.state(), engine.store()) {
            prop_assert!(false, "{e}\nstate:\n{}", engine.state());
        }
        for (i, step) in steps.iter().enumerate() {
            let ch = step.resolve(engine.cluster(), i);
            engine.apply(&ch);
            let full = engine.full_recompile();
            prop_assert!(engine.state() == &full, "step {i}: incremental differs after {ch:?}");
        }
        if let Err(e) = common::check_world(engine.cluster(), engine.state(), engine.store()) {
            prop_assert!(false, "after {} changes: {e}", steps.len());
        }
    }
}
