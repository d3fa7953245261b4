//! Fuzz-ish robustness test: deterministic mutations of the valid CLI example manifests (byte
//! flips, truncations, line deletions and duplications, values replaced by hostile ones) go
//! through loading, validation, compilation and `explain`; none of it may panic, and every
//! problem must name a file.

use std::cell::Cell;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Once;

use septum_crd::manifest::Manifests;
use septum_policy::explain::{ExplainQuery, FlowEnd, explain};
use septum_policy::model::{ObjectKey, PortRef, Protocol};
use septum_policy::{Engine, InMemoryAllocations};

const SHOP: &str = include_str!("../../cli/tests/data/shop.yaml");

thread_local! {
    static QUIET: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f`, catching a panic without printing it (set SEPTUM_FUZZ_VERBOSE to print them); the
/// panic's message is returned.
fn catch_quietly<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !QUIET.with(Cell::get) || std::env::var_os("SEPTUM_FUZZ_VERBOSE").is_some() {
                default(info);
            }
        }));
    });
    QUIET.with(|q| q.set(true));
    let r = catch_unwind(AssertUnwindSafe(f));
    QUIET.with(|q| q.set(false));
    r.map_err(|e| {
        e.downcast_ref::<String>()
            .cloned()
            .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default()
    })
}

/// xorshift64*: deterministic and dependency-free.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

/// Values that tend to break things, substituted for scalars.
const HOSTILE: &[&str] = &[
    "0",
    "-1",
    "70000",
    "65535",
    "99999999999999999999",
    "1.5",
    "\"\"",
    "null",
    "~",
    "[]",
    "{}",
    "[80, 81]",
    "{a: b}",
    "true",
    "\"80\"",
    "\"-80\"",
    "0.0.0.0/0",
    "::/0",
    "10.0.0.1/8",
    "10.0.0.0/33",
    "2001:db8::/129",
    "\"bad key!\"",
    "*nope",
    "&anchor x",
    "!!binary aGVsbG8=",
    "\"\\u0000\"",
    "\u{feff}x",
    "Exists",
    "In",
    "Pass",
    "Baseline",
    "SCTP",
    "ICMP",
    "\t",
    "'",
    "|",
    ">-",
];

fn mutate(rng: &mut Rng, base: &[u8]) -> Vec<u8> {
    let mut b = base.to_vec();
    let rounds = 1 + rng.below(4);
    for _ in 0..rounds {
        if b.is_empty() {
            break;
        }
        match rng.below(8) {
            // Flip one bit.
            0 => {
                let i = rng.below(b.len());
                b[i] ^= 1 << rng.below(8);
            }
            // Replace one byte with a random one.
            1 => {
                let i = rng.below(b.len());
                b[i] = (rng.next() & 0xff) as u8;
            }
            // Truncate.
            2 => {
                let n = rng.below(b.len());
                b.truncate(n);
            }
            // Delete a line.
            3 | 4 => {
                let lines: Vec<&[u8]> = b.split(|c| *c == b'\n').collect();
                let skip = rng.below(lines.len());
                b = lines
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| *i != skip)
                    .map(|(_, l)| l.to_vec())
                    .collect::<Vec<_>>()
                    .join(&b'\n');
            }
            // Duplicate a line.
            5 => {
                let lines: Vec<&[u8]> = b.split(|c| *c == b'\n').collect();
                let dup = rng.below(lines.len());
                let mut out: Vec<Vec<u8>> = Vec::new();
                for (i, l) in lines.iter().enumerate() {
                    out.push(l.to_vec());
                    if i == dup {
                        out.push(l.to_vec());
                    }
                }
                b = out.join(&b'\n');
            }
            // Replace the value after a `: ` or `[`/`{`/`,` with a hostile one.
            _ => {
                let starts: Vec<usize> = b
                    .windows(2)
                    .enumerate()
                    .filter(|(_, w)| w == b": " || w == b"[{" || w == b", ")
                    .map(|(i, _)| i + 2)
                    .collect();
                if starts.is_empty() {
                    continue;
                }
                let s = starts[rng.below(starts.len())];
                let e = b[s..]
                    .iter()
                    .position(|c| matches!(c, b',' | b'}' | b']' | b'\n'))
                    .map_or(b.len(), |p| s + p);
                let v = HOSTILE[rng.below(HOSTILE.len())].as_bytes();
                b.splice(s..e, v.iter().copied());
            }
        }
    }
    b
}

fn queries() -> Vec<ExplainQuery> {
    let pod = |s: &str| FlowEnd::Pod(ObjectKey::new("shop", s));
    vec![
        ExplainQuery {
            from: pod("frontend-1"),
            to: FlowEnd::Service(ObjectKey::new("shop", "backend")),
            port: PortRef::Name("http".into()),
            protocol: Protocol::Tcp,
        },
        ExplainQuery {
            from: FlowEnd::Pod(ObjectKey::new("monitoring", "prometheus")),
            to: pod("backend-1"),
            port: PortRef::Name("metrics".into()),
            protocol: Protocol::Tcp,
        },
        ExplainQuery {
            from: pod("frontend-1"),
            to: FlowEnd::Ip("169.254.169.254".parse().expect("ip")),
            port: PortRef::Number(80),
            protocol: Protocol::Udp,
        },
    ]
}

/// Everything an outside file reaches: load, validate, compile, explain. Returns whether any
/// problem was found.
fn exercise(text: &[u8]) -> bool {
    let mut m = Manifests::new();
    m.load_bytes("fuzz.yaml", text);
    for e in &m.diagnostics {
        assert!(
            e.origin.as_ref().is_some_and(|o| !o.file.is_empty()),
            "problem without a file: {e:?}"
        );
        assert!(!e.message.is_empty(), "problem without a message: {e:?}");
    }
    let problems = !m.diagnostics.is_empty() || !m.semantic_problems().is_empty();
    let engine = Engine::new(m.cluster, InMemoryAllocations::new());
    for q in queries() {
        let _ = explain(&engine, &q);
    }
    problems
}

#[test]
fn mutated_manifests_never_panic() {
    let iterations: u64 = std::env::var("SEPTUM_FUZZ_ITERATIONS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3000);
    // The unmutated file must be clean, or the mutations test nothing.
    let mut m = Manifests::new();
    m.load_str("shop.yaml", SHOP);
    assert!(m.diagnostics.is_empty(), "{:#?}", m.diagnostics);
    assert!(m.semantic_problems().is_empty());

    let mut failures = Vec::new();
    let mut with_problems = 0u64;
    for seed in 0..iterations {
        let mut rng = Rng::new(seed);
        let input = mutate(&mut rng, SHOP.as_bytes());
        match catch_quietly(|| exercise(&input)) {
            Ok(problems) => with_problems += u64::from(problems),
            Err(msg) => {
                failures.push(format!(
                    "seed {seed}: {msg}\n--- input ---\n{}",
                    String::from_utf8_lossy(&input)
                ));
            }
        }
    }
    // The mutations must actually break things most of the time, or they test little.
    assert!(
        with_problems * 2 > iterations,
        "only {with_problems} of {iterations} mutations were found faulty"
    );
    assert!(
        failures.is_empty(),
        "{} of {iterations} mutations panicked; first:\n{}",
        failures.len(),
        failures[0]
    );
}

/// Policies with one field set to each hostile value, on top of the valid world: every
/// combination loads (or is rejected) and compiles without panicking.
#[test]
fn hostile_field_values_never_panic() {
    const TEMPLATES: &[&str] = &[
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: t, namespace: shop}\nspec:\n  podSelector: {}\n  ingress: [{ports: [{port: @}]}]\n",
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: t, namespace: shop}\nspec:\n  podSelector: {}\n  ingress: [{ports: [{port: 1, endPort: @}]}]\n",
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: t, namespace: shop}\nspec:\n  podSelector: {}\n  ingress: [{ports: [{port: @, endPort: 65535}]}]\n",
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: t, namespace: shop}\nspec:\n  podSelector: {}\n  egress: [{to: [{ipBlock: {cidr: @}}]}]\n",
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: t, namespace: shop}\nspec:\n  podSelector: {}\n  egress: [{to: [{ipBlock: {cidr: 0.0.0.0/0, except: [@]}}]}]\n",
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: t, namespace: shop}\nspec:\n  podSelector: {matchExpressions: [{key: app, operator: @, values: [backend]}]}\n  policyTypes: [@]\n",
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: t, namespace: shop}\nspec:\n  podSelector: {matchLabels: @}\n  ingress: [{from: [{namespaceSelector: @}]}]\n",
        "apiVersion: septum.dev/v1alpha1\nkind: FlowPolicy\nmetadata: {name: t, namespace: shop}\nspec:\n  subject: {service: backend}\n  ingress: [{from: [{service: {name: frontend}}], ports: [{port: @}]}]\n",
        "apiVersion: septum.dev/v1alpha1\nkind: FlowPolicy\nmetadata: {name: t, namespace: shop}\nspec:\n  subject: {podSelector: {}}\n  egress: [{to: [{cidr: {cidr: @}}], ports: [{port: 10, endPort: @}]}]\n",
        "apiVersion: septum.dev/v1alpha1\nkind: FlowPolicy\nmetadata: {name: t, namespace: shop}\nspec:\n  mode: @\n  subject: {serviceAccount: @}\n  egress: [{to: [{service: {name: backend, namespace: @}}], ports: [{port: @, protocol: @}]}]\n",
        "apiVersion: policy.networking.k8s.io/v1alpha2\nkind: ClusterNetworkPolicy\nmetadata: {name: t}\nspec:\n  tier: Admin\n  priority: @\n  subject: {namespaces: {}}\n  egress: [{action: Deny, to: [{networks: [@]}], protocols: [{tcp: {destinationPort: {range: {start: @, end: 65535}}}}]}]\n",
        "apiVersion: policy.networking.k8s.io/v1alpha2\nkind: ClusterNetworkPolicy\nmetadata: {name: t}\nspec:\n  tier: @\n  priority: 3\n  subject: {pods: {namespaceSelector: {}, podSelector: @}}\n  ingress: [{action: @, from: [{namespaces: {}}], protocols: [{destinationNamedPort: @}, {udp: {destinationPort: {number: @}}}]}]\n",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: extra, namespace: shop, labels: {app: backend}}\nspec: {hostNetwork: @, nodeName: node-1, containers: [{name: c, ports: [{name: api, containerPort: @, protocol: @}]}]}\nstatus: {podIPs: [{ip: @}]}\n",
        "apiVersion: v1\nkind: Service\nmetadata: {name: extra, namespace: shop}\nspec: {selector: {app: backend}, clusterIP: @, ports: [{name: http, port: @, targetPort: @}]}\n",
    ];
    const VALUES: &[&str] = &[
        "1",
        "65535",
        "0",
        "-1",
        "65536",
        "2147483648",
        "api",
        "http",
        "\"\"",
        "null",
        "[]",
        "{}",
        "{a: b}",
        "0.0.0.0/0",
        "::/0",
        "10.244.1.20/32",
        "10.244.0.0/16",
        "169.254.169.254/32",
        "fd00::/8",
        "10.0.0.1",
        "::",
        "255.255.255.255",
        "true",
        "In",
        "Exists",
        "Ingress",
        "Egress",
        "Admin",
        "Baseline",
        "Pass",
        "Deny",
        "Audit",
        "UDP",
        "SCTP",
        "1000",
        "1001",
    ];
    let mut failures = Vec::new();
    for t in TEMPLATES {
        for v in VALUES {
            let doc = t.replace('@', v);
            let input = format!("{SHOP}---\n{doc}");
            if let Err(msg) = catch_quietly(|| exercise(input.as_bytes())) {
                failures.push(format!("{msg}\n--- document ---\n{doc}"));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} documents panicked; first:\n{}",
        failures.len(),
        failures[0]
    );
}
