//! Snapshot tests: the compiled state (identities, ipcache, endpoints, policy entries, services,
//! cookie table) of a few readable scenarios, committed under tests/snapshots. Regenerate with
//! `SEPTUM_UPDATE_SNAPSHOTS=1 cargo test -p septum-crd --test snapshots` and review the diff.

use std::path::PathBuf;

use septum_crd::manifest::Manifests;
use septum_policy::{InMemoryAllocations, compile};

const WORLD: &str = "apiVersion: v1\nkind: Namespace\nmetadata: {name: web, labels: {tier: web}}\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: db, labels: {tier: db}}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: front, namespace: web, labels: {app: front}}\nspec: {nodeName: n1, containers: [{name: c, image: i, ports: [{name: http, containerPort: 8080}]}]}\nstatus: {podIP: 10.0.1.1}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: pg, namespace: db, labels: {app: pg}}\nspec: {nodeName: n1, containers: [{name: c, image: i, ports: [{name: pg, containerPort: 5432}]}]}\nstatus: {podIP: 10.0.2.1}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: pg, namespace: db}\nspec: {selector: {app: pg}, clusterIP: 10.96.0.5, ports: [{name: pg, port: 5432, targetPort: pg}]}\n";

const SCENARIOS: &[(&str, &str)] = &[
    (
        "namespace-isolation",
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: db-from-web, namespace: db}\nspec:\n  podSelector: {}\n  ingress: [{from: [{namespaceSelector: {matchLabels: {tier: web}}}], ports: [{port: pg}]}]\n",
    ),
    (
        "ipblock-except-and-ranges",
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: egress, namespace: web}\nspec:\n  podSelector: {}\n  policyTypes: [Egress]\n  egress:\n  - to: [{ipBlock: {cidr: 10.0.0.0/8, except: [10.0.2.0/24]}}]\n    ports: [{port: 1000, endPort: 1100}, {protocol: UDP, port: 53}]\n",
    ),
    (
        "admin-pass-baseline-audit",
        "apiVersion: policy.networking.k8s.io/v1alpha2\nkind: ClusterNetworkPolicy\nmetadata: {name: admin}\nspec:\n  tier: Admin\n  priority: 1\n  subject: {namespaces: {matchLabels: {tier: db}}}\n  ingress:\n  - {name: web-pass, action: Pass, from: [{namespaces: {matchLabels: {tier: web}}}]}\n  - {name: rest-deny, action: Deny, from: [{namespaces: {}}]}\n---\napiVersion: policy.networking.k8s.io/v1alpha2\nkind: ClusterNetworkPolicy\nmetadata: {name: baseline}\nspec:\n  tier: Baseline\n  priority: 1\n  subject: {namespaces: {}}\n  egress: [{action: Deny, to: [{networks: [0.0.0.0/0]}], protocols: [{tcp: {destinationPort: {number: 25}}}]}]\n---\napiVersion: septum.dev/v1alpha1\nkind: FlowPolicy\nmetadata: {name: pg-clients, namespace: db}\nspec:\n  mode: Audit\n  subject: {service: pg}\n  ingress: [{from: [{podSelector: {matchLabels: {app: front}}, namespaceSelector: {}}], ports: [{port: pg}]}]\n",
    ),
];

#[test]
fn compiled_state_snapshots() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/snapshots");
    let update = std::env::var_os("SEPTUM_UPDATE_SNAPSHOTS").is_some();
    for (name, yaml) in SCENARIOS {
        let mut m = Manifests::new();
        m.load_str("world.yaml", WORLD);
        m.load_str(name, yaml);
        assert!(m.diagnostics.is_empty(), "{name}: {:#?}", m.diagnostics);
        let (state, _) = compile(&m.cluster, InMemoryAllocations::new());
        let text = state.to_string();
        let (again, _) = compile(&m.cluster, InMemoryAllocations::new());
        assert_eq!(
            again.to_string(),
            text,
            "{name}: compile is not deterministic"
        );
        let path = dir.join(format!("{name}.txt"));
        if update {
            std::fs::write(&path, &text)
                .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
            continue;
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "read {}: {e} (SEPTUM_UPDATE_SNAPSHOTS=1 generates it)",
                path.display()
            )
        });
        assert!(
            committed == text,
            "{name}: compiled output changed; review and regenerate with SEPTUM_UPDATE_SNAPSHOTS=1\n--- new ---\n{text}"
        );
    }
}
