//! Shared support: the upstream e2e-style world (namespaces x, y, z; pods a, b, c in each,
//! serving TCP/UDP/SCTP on 80 and 81 with named ports) and flow checks through `explain`, which
//! reports both the semantic decision and the compiled datapath reading.
#![allow(dead_code)]

use septum_crd::manifest::Manifests;
use septum_policy::explain::{ExplainQuery, FlowEnd, explain};
use septum_policy::model::{ObjectKey, PortRef, Protocol};
use septum_policy::{Engine, InMemoryAllocations};

/// The e2e world as YAML; pod IPs 10.0.<ns>.<pod>, fd00::<ns><pod> for dual stack.
pub fn world_yaml() -> String {
    let mut y = String::new();
    y.push_str("apiVersion: v1\nkind: Node\nmetadata: {name: node-1}\nstatus: {addresses: [{type: InternalIP, address: 192.168.0.1}]}\n");
    for (ni, ns) in ["x", "y", "z"].iter().enumerate() {
        y.push_str(&format!(
            "---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}, labels: {{ns: {ns}}}}}\n"
        ));
        for (pi, pod) in ["a", "b", "c"].iter().enumerate() {
            y.push_str(&format!(
                "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {pod}, namespace: {ns}, labels: {{pod: {pod}}}}}\nspec:\n  nodeName: node-1\n  containers:\n  - name: c\n    image: agnhost\n    ports:\n    - {{name: serve-80-tcp, containerPort: 80, protocol: TCP}}\n    - {{name: serve-81-tcp, containerPort: 81, protocol: TCP}}\n    - {{name: serve-80-udp, containerPort: 80, protocol: UDP}}\n    - {{name: serve-81-udp, containerPort: 81, protocol: UDP}}\n    - {{name: serve-80-sctp, containerPort: 80, protocol: SCTP}}\nstatus: {{podIPs: [{{ip: 10.0.{n}.{p}}}, {{ip: 'fd00::{n}{p}'}}]}}\n",
                n = ni + 1,
                p = pi + 1
            ));
        }
    }
    y
}

/// Loads the world plus extra documents; panics with every loading problem.
pub fn engine(extra: &str) -> Engine<InMemoryAllocations> {
    let mut m = Manifests::new();
    m.load_str("world.yaml", &world_yaml());
    m.load_str("case.yaml", extra);
    assert!(
        m.diagnostics.is_empty(),
        "manifests do not load: {:#?}",
        m.diagnostics
    );
    Engine::new(m.cluster, InMemoryAllocations::new())
}

fn end(s: &str) -> FlowEnd {
    if let Ok(ip) = s.parse() {
        return FlowEnd::Ip(ip);
    }
    match s.split('/').collect::<Vec<_>>().as_slice() {
        ["service", ns, n] => FlowEnd::Service(ObjectKey::new(*ns, *n)),
        [ns, n] => FlowEnd::Pod(ObjectKey::new(*ns, *n)),
        _ => panic!("bad flow end {s:?}"),
    }
}

/// `from -> to port/proto`, expected `allow`, `deny` or `audit`.
pub fn check(
    e: &Engine<InMemoryAllocations>,
    case: &str,
    from: &str,
    to: &str,
    port: &str,
    proto: &str,
    want: &str,
) {
    let q = ExplainQuery {
        from: end(from),
        to: end(to),
        port: match port.parse::<u16>() {
            Ok(n) => PortRef::Number(n),
            Err(_) => PortRef::Name(port.to_string()),
        },
        protocol: Protocol::parse(proto).unwrap_or_else(|| panic!("bad protocol {proto}")),
    };
    let flows =
        explain(e, &q).unwrap_or_else(|err| panic!("{case}: cannot explain {from} -> {to}: {err}"));
    for f in flows {
        let got = if f.audit { "audit" } else { f.verdict.as_str() };
        assert_eq!(
            got, want,
            "{case}: {from} -> {} {proto}/{port}: got {got}, want {want}\negress: {:#?}\ningress: {:#?}",
            f.to, f.egress, f.ingress
        );
        for side in [&f.egress, &f.ingress] {
            let host = septum_policy::rules::COOKIE_HOST;
            if side.cookie == host || side.datapath.1 == host {
                assert_eq!(side.datapath.0, side.action, "{case}: host flow disagrees");
                continue;
            }
            assert_eq!(
                (side.datapath.0.as_str(), side.datapath.1),
                (side.action.as_str(), side.cookie),
                "{case}: {from} -> {}: compiled entries disagree with the semantics on the {} side",
                f.to,
                side.direction
            );
        }
    }
}
