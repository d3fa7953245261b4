//! Data-driven NetworkPolicy semantics: every classic trap and the upstream e2e NetworkPolicy
//! scenarios (in the x/y/z, a/b/c world of the upstream suite), plus ClusterNetworkPolicy tiers
//! and FlowPolicy. Each case is policies + expected verdicts; every check also confirms that the
//! compiled datapath entries give the same decision and cookie as the semantics.

mod common;

use common::{check, engine};

struct Case {
    name: &'static str,
    yaml: &'static str,
    /// (from, to, port, protocol, expected)
    flows: &'static [(
        &'static str,
        &'static str,
        &'static str,
        &'static str,
        &'static str,
    )],
}

const CASES: &[Case] = &[
    Case {
        name: "no policy: everything allowed",
        yaml: "",
        flows: &[
            ("x/a", "y/b", "80", "TCP", "allow"),
            ("x/a", "8.8.8.8", "53", "UDP", "allow"),
        ],
    },
    Case {
        name: "e2e: default-deny-ingress isolates the namespace's pods, not others",
        yaml: "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny, namespace: x}\nspec: {podSelector: {}}\n",
        flows: &[
            ("y/a", "x/a", "80", "TCP", "deny"),
            ("x/b", "x/a", "80", "TCP", "deny"),
            ("x/a", "y/a", "80", "TCP", "allow"),
            ("y/a", "z/a", "81", "UDP", "allow"),
        ],
    },
    Case {
        name: "e2e: allow-all ingress (one empty rule) allows everything",
        yaml: "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: all, namespace: x}\nspec: {podSelector: {}, ingress: [{}]}\n",
        flows: &[
            ("y/a", "x/a", "80", "TCP", "allow"),
            ("8.8.8.8", "x/b", "81", "SCTP", "allow"),
        ],
    },
    Case {
        name: "e2e: default-deny-egress; policyTypes is needed for egress isolation",
        yaml: "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny-egress, namespace: x}\nspec: {podSelector: {}, policyTypes: [Egress]}\n",
        flows: &[
            ("x/a", "y/a", "80", "TCP", "deny"),
            ("x/a", "x/b", "80", "TCP", "deny"),
            ("y/a", "x/a", "80", "TCP", "allow"),
        ],
    },
    Case {
        name: "trap: egress rules without policyTypes still isolate egress (inferred)",
        yaml: "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: e, namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: a}}\n  egress: [{to: [{podSelector: {matchLabels: {pod: b}}}]}]\n",
        flows: &[
            ("x/a", "x/b", "80", "TCP", "allow"),
            ("x/a", "x/c", "80", "TCP", "deny"),
            ("y/a", "x/a", "80", "TCP", "deny"),
        ],
    },
    Case {
        name: "trap: policyTypes [Egress] ignores ingress rules and leaves ingress open",
        yaml: "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: e, namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: a}}\n  policyTypes: [Egress]\n  ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}]}]\n",
        flows: &[
            ("y/c", "x/a", "80", "TCP", "allow"),
            ("x/a", "x/b", "80", "TCP", "deny"),
        ],
    },
    Case {
        name: "e2e: allow from the same namespace only (podSelector {} in from)",
        yaml: "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: same-ns, namespace: x}\nspec: {podSelector: {}, ingress: [{from: [{podSelector: {}}]}]}\n",
        flows: &[
            ("x/b", "x/a", "80", "TCP", "allow"),
            ("y/b", "x/a", "80", "TCP", "deny"),
            ("8.8.8.8", "x/a", "80", "TCP", "deny"),
        ],
    },
    Case {
        name: "trap: namespaceSelector AND podSelector in one peer",
        yaml: "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: and, namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: a}}\n  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}, podSelector: {matchLabels: {pod: b}}}]}]\n",
        flows: &[
            ("y/b", "x/a", "80", "TCP", "allow"),
            ("y/c", "x/a", "80", "TCP", "deny"),
            ("x/b", "x/a", "80", "TCP", "deny"),
            ("z/b", "x/a", "80", "TCP", "deny"),
        ],
    },
    Case {
        name: "trap: namespaceSelector OR podSelector across two peers",
        yaml: "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: or, namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: a}}\n  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}}, {podSelector: {matchLabels: {pod: b}}}]}]\n",
        flows: &[
            ("y/c", "x/a", "80", "TCP", "allow"),
            ("x/b", "x/a", "80", "TCP", "allow"),
            ("z/b", "x/a", "80", "TCP", "deny"),
            ("x/c", "x/a", "80", "TCP", "deny"),
        ],
    },
    Case {
        name: "e2e: namespaceSelector {} allows every pod of every namespace but not outside addresses",
        yaml: "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: all-ns, namespace: x}\nspec: {podSelector: {}, ingress: [{from: [{namespaceSelector: {}}]}]}\n",
        flows: &[
            ("z/c", "x/a", "80", "TCP", "allow"),
            ("8.8.8.8", "x/a", "80", "TCP", "deny"),
        ],
    },
    Case {
        name: "trap: implicit kubernetes.io/metadata.name namespace label",
        yaml: "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: by-name, namespace: x}\nspec:\n  podSelector: {}\n  ingress: [{from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: z}}}]}]\n",
        flows: &[
            ("z/a", "x/a", "80", "TCP", "allow"),
            ("y/a", "x/a", "80", "TCP", "deny"),
        ],
    },
    Case {
        name: "trap: matchExpressions NotIn matches a missing key; DoesNotExist",
        yaml: "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: exprs, namespace: x}\nspec:\n  podSelector: {}\n  ingress: [{from: [{namespaceSelector: {matchExpressions: [{key: ns, operator: NotIn, values: [y]}, {key: missing, operator: DoesNotExist}]}}]}]\n",
        flows: &[
            ("z/a", "x/a", "80", "TCP", "allow"),
            ("x/b", "x/a", "80", "TCP", "allow"),
            ("y/a", "x/a", "80", "TCP", "deny"),
        ],
    },
    Case {
        name: "e2e: named port on ingress resolved on the destination pod",
        yaml: "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: named, namespace: x}\nspec: {podSelector: {}, ingress: [{ports: [{port: serve-80-tcp}]}]}\n",
        flows: &[
            ("y/a", "x/a", "80", "TCP", "allow"),
            ("y/a", "x/a", "81", "TCP", "deny"),
            ("y/a", "x/a", "serve-80-tcp", "TCP", "allow"),
        ],
    },
    Case {
        name: "trap: named port with the wrong protocol matches nothing",
        yaml: "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: named-udp, namespace: x}\nspec: {podSelector: {}, ingress: [{ports: [{port: serve-80-tcp, protocol: UDP}]}]}\n",
        flows: &[
            ("y/a", "x/a", "80", "TCP", "deny"),
            ("y/a", "x/a", "80", "UDP", "deny"),
        ],
    },
    Case {
        name: "e2e: named port on egress resolved on the destination pod",
        yaml: "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: named-egress, namespace: x}\nspec: {podSelector: {}, policyTypes: [Egress], egress: [{ports: [{port: serve-81-udp, protocol: UDP}]}]}\n",
        flows: &[
            ("x/a", "y/b", "81", "UDP", "allow"),
            ("x/a", "y/b", "80", "UDP", "deny"),
            ("x/a", "8.8.8.8", "81", "UDP", "deny"),
        ],
    },
    Case {
        name: "trap: missing protocol means TCP",
        yaml: "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p80, namespace: x}\nspec: {podSelector: {}, ingress: [{ports: [{port: 80}]}]}\n",
        flows: &[
            ("y/a", "x/a", "80", "TCP", "allow"),
            ("y/a", "x/a", "80", "UDP", "deny"),
            ("y/a", "x/a", "80", "SCTP", "deny"),
        ],
    },
    Case {
        name: "trap: a UDP-only (or SCTP-only) rule still isolates TCP",
        yaml: "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: udp, namespace: x}\nspec: {podSelector: {}, ingress: [{ports: [{protocol: UDP, port: 81}, {protocol: SCTP}]}]}\n",
        flows: &[
            ("y/a", "x/a", "81", "UDP", "allow"),
            ("y/a", "x/a", "81", "TCP", "deny"),
            ("y/a", "x/a", "80", "SCTP", "allow"),
        ],
    },
    Case {
        name: "e2e: endPort range",
        yaml: "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: range, namespace: x}\nspec: {podSelector: {}, ingress: [{ports: [{port: 81, endPort: 90}]}]}\n",
        flows: &[
            ("y/a", "x/a", "80", "TCP", "deny"),
            ("y/a", "x/a", "81", "TCP", "allow"),
            ("y/a", "x/a", "90", "TCP", "allow"),
            ("y/a", "x/a", "91", "TCP", "deny"),
        ],
    },
    Case {
        name: "trap: empty ports vs empty peers vs missing rules",
        yaml: "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: only-ports, namespace: x}\nspec: {podSelector: {matchLabels: {pod: a}}, ingress: [{ports: [{port: 81}]}]}\n---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: only-peers, namespace: x}\nspec: {podSelector: {matchLabels: {pod: b}}, ingress: [{from: [{podSelector: {matchLabels: {pod: c}}}]}]}\n",
        flows: &[
            ("8.8.8.8", "x/a", "81", "TCP", "allow"),
            ("y/c", "x/a", "80", "TCP", "deny"),
            ("x/c", "x/b", "80", "UDP", "allow"),
            ("x/c", "x/b", "12345", "SCTP", "allow"),
            ("x/a", "x/b", "80", "TCP", "deny"),
        ],
    },
    Case {
        name: "e2e: policies are additive",
        yaml: "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: one, namespace: x}\nspec: {podSelector: {matchLabels: {pod: a}}, ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}}]}]}\n---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: two, namespace: x}\nspec: {podSelector: {matchLabels: {pod: a}}, ingress: [{from: [{namespaceSelector: {matchLabels: {ns: z}}}]}]}\n",
        flows: &[
            ("y/a", "x/a", "80", "TCP", "allow"),
            ("z/a", "x/a", "80", "TCP", "allow"),
            ("x/b", "x/a", "80", "TCP", "deny"),
        ],
    },
    Case {
        name: "trap: both sides must allow",
        yaml: "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: egress-deny, namespace: y}\nspec: {podSelector: {}, policyTypes: [Egress]}\n---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: ingress-allow, namespace: x}\nspec: {podSelector: {}, ingress: [{}]}\n",
        flows: &[
            ("y/a", "x/a", "80", "TCP", "deny"),
            ("z/a", "x/a", "80", "TCP", "allow"),
        ],
    },
    Case {
        name: "e2e: ipBlock with except matches pod IPs",
        yaml: "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: block, namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: a}}\n  policyTypes: [Egress]\n  egress: [{to: [{ipBlock: {cidr: 10.0.0.0/16, except: [10.0.2.0/24, 10.0.3.3/32]}}]}]\n",
        flows: &[
            ("x/a", "x/b", "80", "TCP", "allow"),
            ("x/a", "y/b", "80", "TCP", "deny"),
            ("x/a", "z/b", "80", "TCP", "allow"),
            ("x/a", "z/c", "80", "TCP", "deny"),
            ("x/a", "10.0.9.9", "80", "TCP", "allow"),
            ("x/a", "8.8.8.8", "80", "TCP", "deny"),
        ],
    },
    Case {
        name: "e2e: ipBlock for ingress from outside, IPv6",
        yaml: "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: v6, namespace: x}\nspec:\n  podSelector: {}\n  ingress: [{from: [{ipBlock: {cidr: 'fd00::/64', except: ['fd00::21/128']}}]}]\n",
        flows: &[
            ("fd00::99", "x/a", "80", "TCP", "allow"),
            ("fd00::21", "x/a", "80", "TCP", "deny"),
            ("2001:db8::1", "x/a", "80", "TCP", "deny"),
            ("8.8.8.8", "x/a", "80", "TCP", "deny"),
        ],
    },
    Case {
        name: "trap: the node may always reach its pods; other sources may not",
        yaml: "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny, namespace: x}\nspec: {podSelector: {}}\n",
        flows: &[
            ("192.168.0.1", "x/a", "80", "TCP", "allow"),
            ("192.168.0.2", "x/a", "80", "TCP", "deny"),
        ],
    },
    Case {
        name: "tiers: Admin Deny beats a NetworkPolicy allow; Admin Accept beats a default deny",
        yaml: "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: all, namespace: x}\nspec: {podSelector: {matchLabels: {pod: a}}, ingress: [{}]}\n---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: none, namespace: x}\nspec: {podSelector: {matchLabels: {pod: b}}}\n---\napiVersion: policy.networking.k8s.io/v1alpha2\nkind: ClusterNetworkPolicy\nmetadata: {name: admin}\nspec:\n  tier: Admin\n  priority: 5\n  subject: {namespaces: {matchLabels: {ns: x}}}\n  ingress:\n  - {action: Deny, from: [{namespaces: {matchLabels: {ns: y}}}]}\n  - {action: Accept, from: [{namespaces: {matchLabels: {ns: z}}}]}\n",
        flows: &[
            ("y/a", "x/a", "80", "TCP", "deny"),
            ("z/a", "x/b", "80", "TCP", "allow"),
            ("x/c", "x/b", "80", "TCP", "deny"),
            ("x/c", "x/a", "80", "TCP", "allow"),
        ],
    },
    Case {
        name: "tiers: Admin Pass hands the decision to NetworkPolicy, skipping later Admin rules",
        yaml: "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: allow-y, namespace: x}\nspec: {podSelector: {}, ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}}]}]}\n---\napiVersion: policy.networking.k8s.io/v1alpha2\nkind: ClusterNetworkPolicy\nmetadata: {name: pass-first}\nspec:\n  tier: Admin\n  priority: 1\n  subject: {namespaces: {}}\n  ingress: [{action: Pass, from: [{pods: {namespaceSelector: {}, podSelector: {matchLabels: {pod: a}}}}]}]\n---\napiVersion: policy.networking.k8s.io/v1alpha2\nkind: ClusterNetworkPolicy\nmetadata: {name: deny-later}\nspec:\n  tier: Admin\n  priority: 2\n  subject: {namespaces: {}}\n  ingress: [{action: Deny, from: [{namespaces: {}}]}]\n",
        flows: &[
            ("y/a", "x/b", "80", "TCP", "allow"),
            ("y/b", "x/b", "80", "TCP", "deny"),
            ("z/a", "x/b", "80", "TCP", "deny"),
            ("z/a", "y/b", "80", "TCP", "allow"),
        ],
    },
    Case {
        name: "tiers: Baseline applies only where no NetworkPolicy isolates; priority orders rules",
        yaml: "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: allow-all, namespace: x}\nspec: {podSelector: {matchLabels: {pod: a}}, ingress: [{}]}\n---\napiVersion: policy.networking.k8s.io/v1alpha2\nkind: ClusterNetworkPolicy\nmetadata: {name: baseline-deny}\nspec:\n  tier: Baseline\n  priority: 10\n  subject: {namespaces: {}}\n  ingress: [{action: Deny, from: [{namespaces: {}}]}]\n---\napiVersion: policy.networking.k8s.io/v1alpha2\nkind: ClusterNetworkPolicy\nmetadata: {name: baseline-allow-dns}\nspec:\n  tier: Baseline\n  priority: 1\n  subject: {namespaces: {}}\n  ingress: [{action: Accept, from: [{namespaces: {}}], protocols: [{udp: {destinationPort: {number: 80}}}]}]\n",
        flows: &[
            ("y/a", "x/a", "80", "TCP", "allow"),
            ("y/a", "x/b", "80", "TCP", "deny"),
            ("y/a", "x/b", "80", "UDP", "allow"),
            ("8.8.8.8", "x/b", "80", "TCP", "allow"),
        ],
    },
    Case {
        name: "tiers: Admin networks match pod IPs; named ports; ranges",
        yaml: "apiVersion: policy.networking.k8s.io/v1alpha2\nkind: ClusterNetworkPolicy\nmetadata: {name: nets}\nspec:\n  tier: Admin\n  priority: 0\n  subject: {pods: {namespaceSelector: {matchLabels: {ns: x}}, podSelector: {matchLabels: {pod: a}}}}\n  egress:\n  - {action: Deny, to: [{networks: [10.0.2.0/24]}], protocols: [{destinationNamedPort: serve-81-tcp}, {tcp: {destinationPort: {range: {start: 1000, end: 2000}}}}]}\n",
        flows: &[
            ("x/a", "y/a", "81", "TCP", "deny"),
            ("x/a", "y/a", "80", "TCP", "allow"),
            ("x/a", "10.0.2.200", "1500", "TCP", "deny"),
            ("x/a", "10.0.2.200", "81", "TCP", "allow"),
            ("x/a", "z/a", "81", "TCP", "allow"),
        ],
    },
    Case {
        name: "FlowPolicy: service to service on a Service port name, mapped to targetPort",
        yaml: "apiVersion: v1\nkind: Service\nmetadata: {name: svc-a, namespace: x}\nspec: {selector: {pod: a}, clusterIP: 10.96.0.1, ports: [{name: web, port: 8080, targetPort: serve-80-tcp}]}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: svc-b, namespace: y}\nspec: {selector: {pod: b}, clusterIP: 10.96.0.2, ports: [{name: web, port: 80}]}\n---\napiVersion: septum.dev/v1alpha1\nkind: FlowPolicy\nmetadata: {name: b-to-a, namespace: x}\nspec:\n  subject: {service: svc-a}\n  ingress: [{from: [{service: {name: svc-b, namespace: y}}], ports: [{port: web}]}]\n",
        flows: &[
            ("y/b", "service/x/svc-a", "web", "TCP", "allow"),
            ("y/b", "x/a", "80", "TCP", "allow"),
            ("y/b", "x/a", "81", "TCP", "deny"),
            ("y/c", "x/a", "80", "TCP", "deny"),
            ("y/c", "x/b", "80", "TCP", "allow"),
        ],
    },
    Case {
        name: "FlowPolicy Audit: would-be denies pass as audit; audit never opens an enforced deny",
        yaml: "apiVersion: septum.dev/v1alpha1\nkind: FlowPolicy\nmetadata: {name: audit, namespace: x}\nspec:\n  mode: Audit\n  subject: {podSelector: {}}\n  ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}]}]\n---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny-c, namespace: x}\nspec: {podSelector: {matchLabels: {pod: c}}}\n",
        flows: &[
            ("x/b", "x/a", "80", "TCP", "allow"),
            ("y/a", "x/a", "80", "TCP", "audit"),
            ("x/b", "x/c", "80", "TCP", "deny"),
        ],
    },
    Case {
        name: "FlowPolicy: service account subject and peers, egress by CIDR",
        yaml: "apiVersion: septum.dev/v1alpha1\nkind: FlowPolicy\nmetadata: {name: sa, namespace: x}\nspec:\n  subject: {serviceAccount: default}\n  egress:\n  - to: [{serviceAccount: {name: default, namespace: z}}]\n    ports: [{port: 80, protocol: UDP}]\n  - to: [{cidr: {cidr: 8.8.8.0/24}}]\n    ports: [{port: 53, protocol: UDP}]\n",
        flows: &[
            ("x/a", "z/c", "80", "UDP", "allow"),
            ("x/a", "z/c", "80", "TCP", "deny"),
            ("x/a", "8.8.8.8", "53", "UDP", "allow"),
            ("x/a", "y/c", "80", "UDP", "deny"),
        ],
    },
];

#[test]
fn semantics_cases() {
    for case in CASES {
        let e = engine(case.yaml);
        for (from, to, port, proto, want) in case.flows {
            check(&e, case.name, from, to, port, proto, want);
        }
    }
}

#[test]
fn label_changes_are_re_evaluated() {
    use septum_policy::model::Change;
    let mut e = engine(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: web-only, namespace: x}\nspec:\n  podSelector: {}\n  ingress: [{from: [{podSelector: {matchLabels: {role: web}}}]}]\n",
    );
    check(&e, "before relabel", "x/b", "x/a", "80", "TCP", "deny");
    let mut pod = e.cluster().pods[&septum_policy::model::ObjectKey::new("x", "b")].clone();
    pod.labels.insert("role".into(), "web".into());
    let diff = e.apply(&Change::UpsertPod(pod));
    assert!(!diff.is_empty(), "relabel must change the compiled state");
    assert_eq!(
        e.state(),
        &e.full_recompile(),
        "incremental relabel equals a full recompile"
    );
    check(&e, "after pod relabel", "x/b", "x/a", "80", "TCP", "allow");
    let mut ns = e.cluster().namespaces["y"].clone();
    ns.labels.insert("trusted".into(), "yes".into());
    let np = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: trusted, namespace: x}\nspec:\n  podSelector: {}\n  ingress: [{from: [{namespaceSelector: {matchLabels: {trusted: 'yes'}}}]}]\n";
    let mut m = septum_crd::manifest::Manifests::new();
    m.load_str("np.yaml", np);
    let policy = m
        .cluster
        .network_policies
        .values()
        .next()
        .expect("policy")
        .clone();
    e.apply(&Change::UpsertNetworkPolicy(policy));
    check(
        &e,
        "before namespace relabel",
        "y/a",
        "x/a",
        "80",
        "TCP",
        "deny",
    );
    e.apply(&Change::UpsertNamespace(ns));
    check(
        &e,
        "after namespace relabel",
        "y/a",
        "x/a",
        "80",
        "TCP",
        "allow",
    );
}
