//! The case data of the upstream Kubernetes e2e NetworkPolicy suite ("Netpol", in
//! kubernetes/test/e2e/network/netpol/network_policy.go), translated case by case into the
//! x/y/z, a/b/c world: the policies created, the changes made between probes, and the expected
//! truth tables built with upstream's reachability operations. Shared, through `#[path]`, by the
//! engine checks (`crd/tests/upstream_e2e.rs`) and the lab run (`cli/tests/lab_upstream_e2e.rs`);
//! it holds data only, so each of them reads it its own way.
//!
//! Pod IPs in the YAML are the engine world's (10.0.<namespace 1..3>.<pod 1..3>, e.g. 10.0.2.2
//! is y/b); a runner with other addresses substitutes its own.
#![allow(dead_code)]

use std::fmt::Write as _;

use std::collections::BTreeMap;

/// The pods of the model, in upstream order.
pub const PODS: [&str; 9] = [
    "x/a", "x/b", "x/c", "y/a", "y/b", "y/c", "z/a", "z/b", "z/c",
];

/// A `Peer` of upstream's reachability.go: (namespace, pod), "" matching anything.
pub type Peer = (&'static str, &'static str);

/// The upstream reachability operations, applied in order to an all-connected table.
#[derive(Clone, Copy, Debug)]
pub enum Op {
    /// `reachability.ExpectPeer(&Peer{..}, &Peer{..}, connected)`.
    Peer(Peer, Peer, bool),
    /// `reachability.ExpectAllIngress(pod, connected)`: every pod to `pod`.
    AllIngress(&'static str, bool),
    /// `reachability.ExpectAllEgress(pod, connected)`: `pod` to every pod.
    AllEgress(&'static str, bool),
    /// `reachability.Expect(from, to, connected)`.
    Expect(&'static str, &'static str, bool),
}

use Op::{AllEgress, AllIngress, Expect, Peer as ExpectPeer};

/// `ANY`: `&Peer{}`.
pub const ANY: Peer = ("", "");

/// One `ValidateOrFail(k8s, &TestCase{ToPort, Protocol, Reachability})`.
pub struct Probe {
    pub port: &'static str,
    pub proto: &'static str,
    pub expect: &'static [Op],
}

/// A change made between probes, as upstream makes it.
pub enum Mutation {
    /// `CreatePolicy` / `UpdatePolicy`: one NetworkPolicy (created, or replaced by name).
    Policy(&'static str),
    /// `k8s.cleanNetworkPolicies`: every NetworkPolicy of the test namespaces is deleted.
    DeleteAllPolicies,
    /// `AddNamespaceLabel(ns, key, value)`: merged into the namespace's labels.
    NamespaceLabel(&'static str, &'static str, &'static str),
    /// `AddPodLabels(ns, pod, labels)`: merged into the pod's labels.
    PodLabels(&'static str, &'static [(&'static str, &'static str)]),
}

/// A change (or none, for the first step) followed by probes.
pub struct Step {
    pub change: Option<Mutation>,
    pub probes: &'static [Probe],
}

pub struct Case {
    pub name: &'static str,
    /// Policies existing before the first probe.
    pub yaml: &'static str,
    pub steps: &'static [Step],
}

/// The first step of a case: no change, just probes.
pub const fn probes(probes: &'static [Probe]) -> Step {
    Step {
        change: None,
        probes,
    }
}

pub const fn after(change: Mutation, probes: &'static [Probe]) -> Step {
    Step {
        change: Some(change),
        probes,
    }
}

pub const fn tcp(port: &'static str, expect: &'static [Op]) -> Probe {
    Probe {
        port,
        proto: "TCP",
        expect,
    }
}

pub const ALL_CONNECTED: &[Op] = &[];

pub const CASES: &[Case] = &[
    // ---------------------------------------------------------------------------------------
    // Netpol / NetworkPolicy between server and client
    // ---------------------------------------------------------------------------------------
    Case {
        name: "should support a 'default-deny-ingress' policy",
        yaml: r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-ingress, namespace: x}
spec:
  podSelector: {}
  policyTypes: [Ingress]
  ingress: []
",
        steps: &[probes(&[tcp("80", &[ExpectPeer(ANY, ("x", ""), false)])])],
    },
    Case {
        name: "should support a 'default-deny-all' policy",
        yaml: r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-all, namespace: x}
spec:
  podSelector: {}
  policyTypes: [Ingress, Egress]
  ingress: []
  egress: []
",
        steps: &[probes(&[tcp(
            "80",
            &[
                ExpectPeer(ANY, ("x", ""), false),
                ExpectPeer(("x", ""), ANY, false),
            ],
        )])],
    },
    Case {
        name: "should enforce policy to allow traffic from pods within server namespace based on PodSelector",
        yaml: r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: x-a-allows-x-b, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Ingress]
  ingress:
  - from:
    - podSelector: {matchLabels: {pod: b}}
",
        steps: &[probes(&[tcp(
            "80",
            &[AllIngress("x/a", false), Expect("x/b", "x/a", true)],
        )])],
    },
    Case {
        name: "should enforce policy to allow ingress traffic for a target",
        yaml: r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-all, namespace: x}
spec:
  podSelector: {}
  policyTypes: [Ingress]
  ingress: []
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-all-to-a, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Ingress]
  ingress:
  - from:
    - podSelector: {}
      namespaceSelector: {}
",
        steps: &[probes(&[tcp(
            "80",
            &[
                AllIngress("x/a", true),
                AllIngress("x/b", false),
                AllIngress("x/c", false),
            ],
        )])],
    },
    Case {
        name: "should enforce policy to allow ingress traffic from pods in all namespaces",
        yaml: r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-from-another-ns, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Ingress]
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {}}
",
        steps: &[probes(&[tcp("80", ALL_CONNECTED)])],
    },
    Case {
        name: "should enforce policy to allow traffic only from a different namespace, based on NamespaceSelector",
        yaml: r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-client-a-via-ns-selector, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Ingress]
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: 'y'}}
",
        steps: &[probes(&[tcp(
            "80",
            &[
                ExpectPeer(("x", ""), ("x", "a"), false),
                ExpectPeer(("z", ""), ("x", "a"), false),
            ],
        )])],
    },
    Case {
        name: "should enforce policy based on PodSelector with MatchExpressions",
        yaml: r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: x-a-allows-x-b, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Ingress]
  ingress:
  - from:
    - podSelector:
        matchExpressions: [{key: pod, operator: In, values: [b]}]
",
        steps: &[probes(&[tcp(
            "80",
            &[AllIngress("x/a", false), Expect("x/b", "x/a", true)],
        )])],
    },
    Case {
        name: "should enforce policy based on NamespaceSelector with MatchExpressions",
        yaml: r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-ns-y-match-selector, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Ingress]
  ingress:
  - from:
    - namespaceSelector:
        matchExpressions: [{key: kubernetes.io/metadata.name, operator: In, values: ['y']}]
",
        steps: &[probes(&[tcp(
            "80",
            &[
                ExpectPeer(("x", ""), ("x", "a"), false),
                ExpectPeer(("z", ""), ("x", "a"), false),
            ],
        )])],
    },
    Case {
        name: "should enforce policy based on PodSelector or NamespaceSelector",
        yaml: r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-ns-y-match-selector, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Ingress]
  ingress:
  - from:
    - namespaceSelector:
        matchExpressions: [{key: kubernetes.io/metadata.name, operator: NotIn, values: [x]}]
    - podSelector: {matchLabels: {pod: b}}
",
        steps: &[probes(&[tcp(
            "80",
            &[Expect("x/a", "x/a", false), Expect("x/c", "x/a", false)],
        )])],
    },
    Case {
        name: "should enforce policy based on PodSelector and NamespaceSelector",
        yaml: r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-ns-y-podselector-and-nsselector, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Ingress]
  ingress:
  - from:
    - namespaceSelector:
        matchExpressions: [{key: kubernetes.io/metadata.name, operator: NotIn, values: [x]}]
      podSelector: {matchLabels: {pod: b}}
",
        steps: &[probes(&[tcp(
            "80",
            &[
                AllIngress("x/a", false),
                Expect("y/b", "x/a", true),
                Expect("z/b", "x/a", true),
            ],
        )])],
    },
    Case {
        name: "should enforce policy based on Multiple PodSelectors and NamespaceSelectors",
        yaml: r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-ns-y-z-pod-b-c, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Ingress]
  ingress:
  - from:
    - namespaceSelector:
        matchExpressions: [{key: kubernetes.io/metadata.name, operator: NotIn, values: [x]}]
      podSelector:
        matchExpressions: [{key: pod, operator: In, values: [b, c]}]
",
        steps: &[probes(&[tcp(
            "80",
            &[
                ExpectPeer(("x", ""), ("x", "a"), false),
                Expect("y/a", "x/a", false),
                Expect("z/a", "x/a", false),
            ],
        )])],
    },
    Case {
        name: "should enforce policy based on any PodSelectors",
        yaml: r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-ns-x-pod-b-c, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Ingress]
  ingress:
  - from:
    - podSelector: {matchLabels: {pod: b}}
    - podSelector: {matchLabels: {pod: c}}
",
        steps: &[probes(&[tcp(
            "80",
            &[
                AllIngress("x/a", false),
                Expect("x/b", "x/a", true),
                Expect("x/c", "x/a", true),
            ],
        )])],
    },
    Case {
        name: "should enforce policy to allow traffic only from a pod in a different namespace based on PodSelector and NamespaceSelector",
        yaml: r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-ns-y-pod-a-via-namespace-pod-selector, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Ingress]
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: 'y'}}
      podSelector: {matchLabels: {pod: a}}
",
        steps: &[probes(&[tcp(
            "80",
            &[AllIngress("x/a", false), Expect("y/a", "x/a", true)],
        )])],
    },
    Case {
        name: "should enforce policy based on Ports",
        yaml: r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-client-a-via-ns-selector, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Ingress]
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: 'y'}}
    ports:
    - {port: 81, protocol: TCP}
",
        steps: &[probes(&[tcp("81", ALLOW_Y_TO_XA)])],
    },
    Case {
        name: "should enforce multiple, stacked policies with overlapping podSelectors",
        yaml: r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-client-a-via-ns-selector, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Ingress]
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: 'y'}}
    ports:
    - {port: 81, protocol: TCP}
",
        steps: &[
            probes(&[
                tcp("81", ALLOW_Y_TO_XA),
                tcp("80", &[AllIngress("x/a", false)]),
            ]),
            after(
                Mutation::Policy(
                    r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-client-a-via-ns-selector-80, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Ingress]
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: 'y'}}
    ports:
    - {port: 80, protocol: TCP}
",
                ),
                &[tcp("80", ALLOW_Y_TO_XA)],
            ),
        ],
    },
    Case {
        name: "should support allow-all policy",
        yaml: r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-all, namespace: x}
spec:
  podSelector: {matchLabels: {}}
  policyTypes: [Ingress]
  ingress:
  - {}
",
        steps: &[probes(&[
            tcp("80", ALL_CONNECTED),
            tcp("81", ALL_CONNECTED),
        ])],
    },
    Case {
        name: "should allow ingress access on one named port",
        yaml: r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-all, namespace: x}
spec:
  podSelector: {matchLabels: {}}
  policyTypes: [Ingress]
  ingress:
  - ports:
    - port: serve-81-tcp
",
        steps: &[probes(&[
            tcp("81", ALL_CONNECTED),
            tcp("80", &[ExpectPeer(ANY, ("x", ""), false)]),
        ])],
    },
    Case {
        name: "should allow ingress access from namespace on one named port",
        yaml: r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-client-a-via-ns-selector-80, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Ingress]
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: 'y'}}
    ports:
    - {port: serve-80-tcp, protocol: TCP}
",
        steps: &[probes(&[
            tcp(
                "80",
                &[
                    ExpectPeer(("x", ""), ("x", "a"), false),
                    ExpectPeer(("z", ""), ("x", "a"), false),
                ],
            ),
            tcp("81", &[AllIngress("x/a", false)]),
        ])],
    },
    Case {
        name: "should allow egress access on one named port",
        yaml: r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-egress, namespace: x}
spec:
  podSelector: {matchLabels: {}}
  policyTypes: [Egress]
  egress:
  - ports:
    - port: serve-80-tcp
",
        steps: &[probes(&[
            tcp("80", ALL_CONNECTED),
            tcp("81", &[ExpectPeer(("x", ""), ANY, false)]),
        ])],
    },
    Case {
        name: "should enforce updated policy",
        yaml: r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-all-mutate-to-deny-all, namespace: x}
spec:
  podSelector: {matchLabels: {}}
  policyTypes: [Ingress]
  ingress:
  - {}
",
        steps: &[
            probes(&[tcp("81", ALL_CONNECTED)]),
            after(
                Mutation::Policy(
                    r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-all-mutate-to-deny-all, namespace: x}
spec:
  podSelector: {matchLabels: {}}
  policyTypes: [Ingress]
  ingress: []
",
                ),
                &[tcp("81", &[ExpectPeer(ANY, ("x", ""), false)])],
            ),
        ],
    },
    Case {
        name: "should allow ingress access from updated namespace",
        yaml: r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-client-a-via-ns-selector, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Ingress]
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {ns2: updated}}
",
        steps: &[
            probes(&[tcp("80", &[AllIngress("x/a", false)])]),
            after(
                Mutation::NamespaceLabel("y", "ns2", "updated"),
                &[tcp(
                    "80",
                    &[AllIngress("x/a", false), ExpectPeer(("y", ""), ANY, true)],
                )],
            ),
        ],
    },
    Case {
        name: "should allow ingress access from updated pod",
        yaml: r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-client-a-via-pod-selector, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Ingress]
  ingress:
  - from:
    - podSelector: {matchLabels: {pod: b, pod2: updated}}
",
        steps: &[
            probes(&[tcp("80", &[AllIngress("x/a", false)])]),
            after(
                Mutation::PodLabels("x/b", &[("pod", "b"), ("pod2", "updated")]),
                &[tcp(
                    "80",
                    &[AllIngress("x/a", false), Expect("x/b", "x/a", true)],
                )],
            ),
        ],
    },
    Case {
        name: "should deny ingress from pods on other namespaces",
        yaml: r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-empty-policy, namespace: x}
spec:
  podSelector: {}
  policyTypes: [Ingress]
  ingress:
  - from:
    - podSelector: {matchLabels: {}}
",
        steps: &[probes(&[tcp(
            "80",
            &[
                ExpectPeer(("y", ""), ("x", ""), false),
                ExpectPeer(("z", ""), ("x", ""), false),
            ],
        )])],
    },
    Case {
        name: "should deny ingress access to updated pod",
        yaml: r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-ingress-via-label-selector, namespace: x}
spec:
  podSelector: {matchLabels: {target: isolated}}
  policyTypes: [Ingress]
  ingress: []
",
        steps: &[
            probes(&[tcp("80", ALL_CONNECTED)]),
            after(
                Mutation::PodLabels("x/a", &[("target", "isolated")]),
                &[tcp("80", &[AllIngress("x/a", false)])],
            ),
        ],
    },
    Case {
        name: "should deny egress from pods based on PodSelector",
        yaml: r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-egress-pod-a, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Egress]
  egress: []
",
        steps: &[probes(&[tcp("80", &[AllEgress("x/a", false)])])],
    },
    Case {
        name: "should deny egress from all pods in a namespace",
        yaml: r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-egress-ns-x, namespace: x}
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress: []
",
        steps: &[probes(&[tcp("80", &[ExpectPeer(("x", ""), ANY, false)])])],
    },
    Case {
        name: "should work with Ingress, Egress specified together",
        yaml: r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-client-a-via-pod-selector, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Egress, Ingress]
  ingress:
  - from:
    - podSelector: {matchLabels: {pod: b}}
  egress:
  - ports:
    - port: 80
",
        steps: &[probes(&[
            tcp(
                "80",
                &[AllIngress("x/a", false), Expect("x/b", "x/a", true)],
            ),
            tcp(
                "81",
                &[
                    AllIngress("x/a", false),
                    AllEgress("x/a", false),
                    Expect("x/b", "x/a", true),
                ],
            ),
        ])],
    },
    Case {
        name: "should support denying of egress traffic on the client side (even if the server explicitly allows this traffic)",
        yaml: r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-to-ns-y-pod-a, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Egress]
  egress:
  - to:
    - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: 'y'}}
      podSelector: {matchLabels: {pod: a}}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-from-xa-on-ya-match-selector, namespace: 'y'}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Ingress]
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: x}}
      podSelector: {matchLabels: {pod: a}}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-from-xa-on-yb-match-selector, namespace: 'y'}
spec:
  podSelector: {matchLabels: {pod: b}}
  policyTypes: [Ingress]
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: x}}
      podSelector: {matchLabels: {pod: a}}
",
        steps: &[probes(&[tcp(
            "80",
            &[
                ExpectPeer(("x", "a"), ANY, false),
                ExpectPeer(ANY, ("y", "a"), false),
                ExpectPeer(("x", "a"), ("y", "a"), true),
                ExpectPeer(ANY, ("y", "b"), false),
            ],
        )])],
    },
    Case {
        name: "should enforce egress policy allowing traffic to a server in a different namespace based on PodSelector and NamespaceSelector",
        yaml: r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-to-ns-y-pod-a, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Egress]
  egress:
  - to:
    - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: 'y'}}
      podSelector: {matchLabels: {pod: a}}
",
        steps: &[probes(&[tcp(
            "80",
            &[AllEgress("x/a", false), Expect("x/a", "y/a", true)],
        )])],
    },
    Case {
        name: "should enforce ingress policy allowing any port traffic to a server on a specific protocol",
        yaml: r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-ingress-by-proto, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Ingress]
  ingress:
  - ports:
    - protocol: TCP
",
        steps: &[probes(&[
            tcp("80", ALL_CONNECTED),
            Probe {
                port: "80",
                proto: "UDP",
                expect: &[ExpectPeer(ANY, ("x", "a"), false)],
            },
        ])],
    },
    Case {
        name: "should enforce multiple ingress policies with ingress allow-all policy taking precedence",
        yaml: r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-ingress-port-80, namespace: x}
spec:
  podSelector: {matchLabels: {}}
  policyTypes: [Ingress]
  ingress:
  - ports:
    - port: 80
",
        steps: &[
            probes(&[tcp("81", &[ExpectPeer(ANY, ("x", ""), false)])]),
            after(
                Mutation::Policy(
                    r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-ingress, namespace: x}
spec:
  podSelector: {matchLabels: {}}
  policyTypes: [Ingress]
  ingress:
  - {}
",
                ),
                &[tcp("81", ALL_CONNECTED)],
            ),
        ],
    },
    Case {
        name: "should enforce multiple egress policies with egress allow-all policy taking precedence",
        yaml: r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-egress-port-80, namespace: x}
spec:
  podSelector: {matchLabels: {}}
  policyTypes: [Egress]
  egress:
  - ports:
    - port: 80
",
        steps: &[
            probes(&[tcp("81", &[ExpectPeer(("x", ""), ANY, false)])]),
            after(
                Mutation::Policy(
                    r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-egress, namespace: x}
spec:
  podSelector: {matchLabels: {}}
  policyTypes: [Egress]
  egress:
  - {}
",
                ),
                &[tcp("81", ALL_CONNECTED)],
            ),
        ],
    },
    Case {
        name: "should stop enforcing policies after they are deleted",
        yaml: r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-all, namespace: x}
spec:
  podSelector: {}
  policyTypes: [Ingress, Egress]
  ingress: []
  egress: []
",
        steps: &[
            probes(&[tcp(
                "80",
                &[
                    ExpectPeer(("x", ""), ANY, false),
                    ExpectPeer(ANY, ("x", ""), false),
                ],
            )]),
            after(Mutation::DeleteAllPolicies, &[tcp("80", ALL_CONNECTED)]),
        ],
    },
    Case {
        name: "should allow egress access to server in CIDR block",
        // y/b's status.podIP is 10.0.2.2; host mask /32.
        yaml: r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-client-a-via-cidr-egress-rule, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Egress]
  egress:
  - to:
    - ipBlock: {cidr: 10.0.2.2/32}
",
        steps: &[probes(&[tcp(
            "80",
            &[AllEgress("x/a", false), Expect("x/a", "y/b", true)],
        )])],
    },
    Case {
        name: "should enforce except clause while egress access to server in CIDR block",
        // makeLargeCIDRForIP(10.0.1.2) is the /4 holding x/b (0.0.0.0/4); except x/b's /32.
        yaml: r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-client-a-via-cidr-egress-rule, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Egress]
  egress:
  - to:
    - ipBlock: {cidr: 0.0.0.0/4, except: [10.0.1.2/32]}
",
        steps: &[probes(&[tcp("80", &[Expect("x/a", "x/b", false)])])],
    },
    Case {
        name: "should ensure an IP overlapping both IPBlock.CIDR and IPBlock.Except is allowed",
        yaml: r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-client-a-via-cidr-egress-rule, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Egress]
  egress:
  - to:
    - ipBlock: {cidr: 0.0.0.0/4, except: [10.0.1.2/32]}
",
        steps: &[
            probes(&[tcp("80", &[Expect("x/a", "x/b", false)])]),
            // Upstream calls UpdatePolicy with the same name: the policy is replaced.
            after(
                Mutation::Policy(
                    r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-client-a-via-cidr-egress-rule, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Egress]
  egress:
  - to:
    - ipBlock: {cidr: 10.0.1.2/32}
",
                ),
                &[tcp(
                    "80",
                    &[AllEgress("x/a", false), Expect("x/a", "x/b", true)],
                )],
            ),
        ],
    },
    Case {
        name: "should enforce policies to check ingress and egress policies can be controlled independently based on PodSelector",
        yaml: r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-egress-for-target, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Egress]
  egress:
  - {}
",
        steps: &[
            probes(&[tcp("80", ALL_CONNECTED)]),
            after(
                Mutation::Policy(
                    r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-ingress-via-label-selector, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Ingress]
  ingress: []
",
                ),
                &[tcp("80", &[AllIngress("x/a", false)])],
            ),
        ],
    },
    Case {
        name: "should not mistakenly treat 'protocol: SCTP' as 'protocol: TCP', even if the plugin doesn't support SCTP",
        yaml: r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-ingress, namespace: x}
spec:
  podSelector: {}
  policyTypes: [Ingress]
  ingress: []
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-only-sctp-ingress-on-port-81, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Ingress]
  ingress:
  - ports:
    - {port: 81, protocol: SCTP}
",
        steps: &[probes(&[tcp("81", &[ExpectPeer(ANY, ("x", ""), false)])])],
    },
    Case {
        name: "should properly isolate pods that are selected by a policy allowing SCTP, even if the plugin doesn't support SCTP",
        yaml: r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-only-sctp-ingress-on-port-80, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Ingress]
  ingress:
  - ports:
    - {port: 80, protocol: SCTP}
",
        steps: &[probes(&[tcp("81", &[AllIngress("x/a", false)])])],
    },
    Case {
        name: "should not allow access by TCP when a policy specifies only UDP",
        yaml: r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-only-udp-ingress-on-port-81, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Ingress]
  ingress:
  - ports:
    - {port: 81, protocol: UDP}
",
        steps: &[probes(&[tcp("81", &[AllIngress("x/a", false)])])],
    },
    Case {
        name: "should enforce policy to allow traffic based on NamespaceSelector with MatchLabels using default ns label",
        yaml: r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-client-a-via-ns-selector-for-immutable-ns-label, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Ingress]
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: 'y'}}
",
        steps: &[probes(&[tcp(
            "80",
            &[
                ExpectPeer(("x", ""), ("x", "a"), false),
                ExpectPeer(("z", ""), ("x", "a"), false),
            ],
        )])],
    },
    Case {
        name: "should enforce policy based on NamespaceSelector with MatchExpressions using default ns label",
        yaml: r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-ns-y-match-selector-for-immutable-ns-label, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Egress]
  egress:
  - to:
    - namespaceSelector:
        matchExpressions: [{key: kubernetes.io/metadata.name, operator: NotIn, values: ['y']}]
",
        steps: &[probes(&[tcp(
            "80",
            &[ExpectPeer(("x", "a"), ("y", ""), false)],
        )])],
    },
    // ---------------------------------------------------------------------------------------
    // Netpol [LinuxOnly] / NetworkPolicy between server and client using UDP
    // ---------------------------------------------------------------------------------------
    Case {
        name: "using UDP: should support a 'default-deny-ingress' policy",
        yaml: r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-all, namespace: x}
spec:
  podSelector: {}
  policyTypes: [Ingress]
  ingress: []
",
        steps: &[probes(&[Probe {
            port: "80",
            proto: "UDP",
            expect: &[ExpectPeer(ANY, ("x", ""), false)],
        }])],
    },
    Case {
        name: "using UDP: should enforce policy based on Ports",
        yaml: r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-ingress-on-port-81-ns-x, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Ingress]
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: 'y'}}
    ports:
    - {port: 81, protocol: UDP}
",
        steps: &[probes(&[Probe {
            port: "81",
            proto: "UDP",
            expect: &[
                ExpectPeer(("x", ""), ("x", "a"), false),
                ExpectPeer(("z", ""), ("x", "a"), false),
            ],
        }])],
    },
    Case {
        name: "using UDP: should enforce policy to allow traffic only from a pod in a different namespace based on PodSelector and NamespaceSelector",
        yaml: r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-ns-y-pod-a-via-namespace-pod-selector, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Ingress]
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: 'y'}}
      podSelector: {matchLabels: {pod: a}}
",
        steps: &[probes(&[Probe {
            port: "80",
            proto: "UDP",
            expect: &[AllIngress("x/a", false), Expect("y/a", "x/a", true)],
        }])],
    },
    // ---------------------------------------------------------------------------------------
    // Netpol [Feature:SCTPConnectivity] / NetworkPolicy between server and client using SCTP
    // ---------------------------------------------------------------------------------------
    Case {
        name: "using SCTP: should support a 'default-deny-ingress' policy",
        yaml: r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-all, namespace: x}
spec:
  podSelector: {}
  policyTypes: [Ingress]
  ingress: []
",
        steps: &[probes(&[Probe {
            port: "80",
            proto: "SCTP",
            expect: &[ExpectPeer(ANY, ("x", ""), false)],
        }])],
    },
    Case {
        name: "using SCTP: should enforce policy based on Ports",
        yaml: r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-ingress-on-port-81-ns-x, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Ingress]
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: 'y'}}
    ports:
    - {port: 81, protocol: SCTP}
",
        steps: &[probes(&[Probe {
            port: "81",
            proto: "SCTP",
            expect: &[
                ExpectPeer(("x", ""), ("x", "a"), false),
                ExpectPeer(("z", ""), ("x", "a"), false),
            ],
        }])],
    },
    Case {
        name: "using SCTP: should enforce policy to allow traffic only from a pod in a different namespace based on PodSelector and NamespaceSelector",
        yaml: r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-ns-y-pod-a-via-namespace-pod-selector, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Ingress]
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: 'y'}}
      podSelector: {matchLabels: {pod: a}}
",
        steps: &[probes(&[Probe {
            port: "80",
            proto: "SCTP",
            expect: &[AllIngress("x/a", false), Expect("y/a", "x/a", true)],
        }])],
    },
    // ---------------------------------------------------------------------------------------
    // endPort. Not in upstream network_policy.go (see the module comment): the first two are
    // the tests of the closed upstream PR kubernetes#100291 (context "NetworkPolicy between
    // server and client using port range", ports 111-115); the others are septum additions.
    // ---------------------------------------------------------------------------------------
    Case {
        name: "[kubernetes#100291, unmerged] should enforce policy to allow ingress traffic using port range",
        yaml: r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-ingress-use-port-range, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Ingress]
  ingress:
  - ports:
    - {port: 111, endPort: 115}
",
        steps: &[probes(&[
            tcp("111", &[AllIngress("x/a", true)]),
            tcp("112", &[AllIngress("x/a", true)]),
            tcp("113", &[AllIngress("x/a", true)]),
            tcp("114", &[AllIngress("x/a", true)]),
            tcp("115", &[AllIngress("x/a", true)]),
            tcp("116", &[AllIngress("x/a", false)]),
        ])],
    },
    Case {
        name: "[kubernetes#100291, unmerged] should enforce policy to allow egress traffic using port range",
        yaml: r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-egress-use-port-range, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Egress]
  egress:
  - ports:
    - {port: 111, endPort: 115}
",
        steps: &[probes(&[
            tcp("111", &[AllEgress("x/a", true)]),
            tcp("112", &[AllEgress("x/a", true)]),
            tcp("113", &[AllEgress("x/a", true)]),
            tcp("114", &[AllEgress("x/a", true)]),
            tcp("115", &[AllEgress("x/a", true)]),
            tcp("116", &[AllEgress("x/a", false)]),
        ])],
    },
    Case {
        name: "[septum, not upstream] endPort range plus a single port, from a podSelector peer",
        yaml: r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-b-on-80-and-82-84, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Ingress]
  ingress:
  - from:
    - podSelector: {matchLabels: {pod: b}}
    ports:
    - {port: 80}
    - {port: 82, endPort: 84}
",
        steps: &[probes(&[
            tcp("80", B_ONLY_TO_XA),
            tcp("81", &[AllIngress("x/a", false)]),
            tcp("82", B_ONLY_TO_XA),
            tcp("83", B_ONLY_TO_XA),
            tcp("84", B_ONLY_TO_XA),
            tcp("85", &[AllIngress("x/a", false)]),
            // The range defaults to TCP.
            Probe {
                port: "83",
                proto: "UDP",
                expect: &[AllIngress("x/a", false)],
            },
        ])],
    },
    Case {
        name: "[septum, not upstream] endPort range alongside a named port, ingress",
        yaml: r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-named-and-range, namespace: x}
spec:
  podSelector: {}
  policyTypes: [Ingress]
  ingress:
  - ports:
    - port: serve-81-tcp
    - {port: 83, endPort: 85}
",
        steps: &[probes(&[
            tcp("80", &[ExpectPeer(ANY, ("x", ""), false)]),
            tcp("81", ALL_CONNECTED),
            tcp("serve-81-tcp", ALL_CONNECTED),
            tcp("82", &[ExpectPeer(ANY, ("x", ""), false)]),
            tcp("83", ALL_CONNECTED),
            tcp("85", ALL_CONNECTED),
            tcp("86", &[ExpectPeer(ANY, ("x", ""), false)]),
        ])],
    },
    Case {
        name: "[septum, not upstream] endPort range alongside a named UDP port, egress",
        yaml: r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: egress-named-and-range, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Egress]
  egress:
  - ports:
    - {port: serve-80-udp, protocol: UDP}
    - {port: 81, endPort: 90}
",
        steps: &[probes(&[
            tcp("80", &[AllEgress("x/a", false)]),
            tcp("81", ALL_CONNECTED),
            tcp("90", ALL_CONNECTED),
            tcp("91", &[AllEgress("x/a", false)]),
            Probe {
                port: "80",
                proto: "UDP",
                expect: ALL_CONNECTED,
            },
            Probe {
                port: "81",
                proto: "UDP",
                expect: &[AllEgress("x/a", false)],
            },
        ])],
    },
];

/// "Ports": namespace y may reach x/a; x and z may not.
pub const ALLOW_Y_TO_XA: &[Op] = &[
    ExpectPeer(("x", ""), ("x", "a"), false),
    ExpectPeer(("y", ""), ("x", "a"), true),
    ExpectPeer(("z", ""), ("x", "a"), false),
];

/// Only x/b may reach x/a.
pub const B_ONLY_TO_XA: &[Op] = &[AllIngress("x/a", false), Expect("x/b", "x/a", true)];

/// The expected truth table: `NewReachability(allPods, true)` then the operations.
pub fn expected(ops: &[Op]) -> BTreeMap<(&'static str, &'static str), bool> {
    let mut t: BTreeMap<_, _> = PODS
        .iter()
        .flat_map(|f| PODS.iter().map(move |to| ((*f, *to), true)))
        .collect();
    let matches = |p: Peer, pod: &str| {
        let (ns, name) = pod.split_once('/').expect("ns/pod");
        (p.0.is_empty() || p.0 == ns) && (p.1.is_empty() || p.1 == name)
    };
    for op in ops {
        for (&(from, to), v) in t.iter_mut() {
            let hit = match *op {
                Op::Peer(pf, pt, _) => matches(pf, from) && matches(pt, to),
                Op::AllIngress(p, _) => to == p,
                Op::AllEgress(p, _) => from == p,
                Op::Expect(f, t2, _) => from == f && to == t2,
            };
            if hit {
                *v = match *op {
                    Op::Peer(_, _, c) | Op::AllIngress(_, c) | Op::AllEgress(_, c) => c,
                    Op::Expect(_, _, c) => c,
                };
            }
        }
    }
    t
}

/// An upstream-style table: rows are sources, columns destinations.
pub fn table(title: &str, cell: impl Fn(&str, &str) -> char) -> String {
    let mut s = format!("{title}:\n-\t");
    for to in PODS {
        let _ = write!(s, "{to}\t");
    }
    s.push('\n');
    for from in PODS {
        let _ = write!(s, "{from}\t");
        for to in PODS {
            let _ = write!(s, "{}\t", cell(from, to));
        }
        s.push('\n');
    }
    s
}
