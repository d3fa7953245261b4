//! `cargo bench -p septum-policy --bench compile [-- PODSxPOLICIES ...]`: full compile time,
//! entries emitted and peak heap for a grid of synthetic clusters, then one pod relabel and one
//! policy add through the incremental engine. A counting global allocator measures the heap.
//!
//! Synthetic cluster: 100 pods per namespace, 10 apps of 10 replicas per namespace (so identities
//! = pods / 10); each policy selects one app and allows ingress from another app of its
//! namespace on a port, from a team's namespaces on a named port, and every fourth one also
//! isolates egress to an app, to kube-dns-like pods and to a CIDR with a carve-out.

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use septum_policy::model::*;
use septum_policy::selector::LabelSelector;
use septum_policy::{Change, Cluster, Engine, InMemoryAllocations};

struct Counting;
static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: delegates to the system allocator; only adds counters.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let p = unsafe { System.alloc(l) };
        if !p.is_null() {
            let now = CURRENT.fetch_add(l.size(), Ordering::Relaxed) + l.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(p, l) };
        CURRENT.fetch_sub(l.size(), Ordering::Relaxed);
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn labels(pairs: &[(&str, String)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

fn pod(ns: usize, i: usize, app: usize) -> Pod {
    let n = ns * 100 + i;
    Pod {
        namespace: format!("ns{ns}"),
        name: format!("p{i}"),
        labels: labels(&[
            ("app", format!("app{app}")),
            ("pod-template-hash", format!("h{}", i % 3)),
        ]),
        ips: vec![
            format!("10.{}.{}.{}", 64 + n / 65536, (n / 256) % 256, n % 256)
                .parse()
                .expect("ip"),
        ],
        ports: vec![ContainerPort {
            name: Some("http".into()),
            port: 8080,
            protocol: Protocol::Tcp,
        }],
        node: Some(format!("node{}", ns % 10)),
        host_network: false,
        service_account: "default".into(),
    }
}

fn policy(j: usize, namespaces: usize) -> NetworkPolicy {
    let ns = j % namespaces;
    let app = (j / namespaces) % 10;
    let sel = |a: usize| {
        Some(LabelSelector::from_labels([(
            "app",
            format!("app{a}").as_str(),
        )]))
    };
    let mut np = NetworkPolicy {
        namespace: format!("ns{ns}"),
        name: format!("np{j}"),
        pod_selector: LabelSelector::from_labels([("app", format!("app{app}").as_str())]),
        policy_types: None,
        ingress: vec![
            NetworkPolicyRule {
                peers: vec![NetworkPolicyPeer::Pods {
                    pod_selector: sel((app + 1) % 10),
                    namespace_selector: None,
                }],
                ports: vec![NetworkPolicyPort {
                    protocol: None,
                    port: Some(PortRef::Number(8000 + (j % 50) as u16)),
                    end_port: None,
                }],
            },
            NetworkPolicyRule {
                peers: vec![NetworkPolicyPeer::Pods {
                    pod_selector: None,
                    namespace_selector: Some(LabelSelector::from_labels([(
                        "team",
                        format!("t{}", j % 7).as_str(),
                    )])),
                }],
                ports: vec![NetworkPolicyPort {
                    protocol: None,
                    port: Some(PortRef::Name("http".into())),
                    end_port: None,
                }],
            },
        ],
        egress: Vec::new(),
    };
    if j.is_multiple_of(4) {
        np.egress = vec![
            NetworkPolicyRule {
                peers: vec![NetworkPolicyPeer::Pods {
                    pod_selector: sel((app + 2) % 10),
                    namespace_selector: None,
                }],
                ports: Vec::new(),
            },
            NetworkPolicyRule {
                peers: vec![NetworkPolicyPeer::IpBlock {
                    cidr: "172.16.0.0/12".parse().expect("cidr"),
                    except: vec!["172.16.5.0/24".parse().expect("cidr")],
                }],
                ports: vec![NetworkPolicyPort {
                    protocol: None,
                    port: Some(PortRef::Number(5000)),
                    end_port: Some(5999),
                }],
            },
        ];
    }
    np
}

fn cluster(pods: usize, policies: usize) -> Cluster {
    let namespaces = (pods / 100).max(1);
    let mut c = Cluster::default();
    for ns in 0..namespaces {
        c.namespaces.insert(
            format!("ns{ns}"),
            Namespace {
                name: format!("ns{ns}"),
                labels: labels(&[("team", format!("t{}", ns % 7))]),
            },
        );
        for i in 0..100.min(pods) {
            let p = pod(ns, i, i % 10);
            c.pods.insert(p.key(), p);
        }
    }
    for j in 0..policies {
        let p = policy(j, namespaces);
        c.network_policies.insert(p.key(), p);
    }
    c
}

fn mib(b: usize) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

fn run(pods: usize, policies: usize) {
    let c = cluster(pods, policies);
    let base = CURRENT.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let t = Instant::now();
    let mut e = Engine::new(c, InMemoryAllocations::new());
    let compile = t.elapsed();
    let peak = PEAK.load(Ordering::Relaxed) - base;
    let st = e.state();
    println!(
        "full compile {pods:>6} pods x {policies:>5} policies: {:>9.1} ms, {:>8} policy entries, {:>6} ipcache, {:>6} identities, {:>8} total entries, peak heap {:>8.1} MiB",
        compile.as_secs_f64() * 1e3,
        st.policy.len(),
        st.ipcache.len(),
        e.identities().len(),
        st.entry_count(),
        mib(peak)
    );
    // One pod relabel (app3 -> app4), then back, several times; report the median.
    let key = ObjectKey::new("ns0", "p3");
    let mut times: Vec<Duration> = Vec::new();
    let mut ops = 0;
    for round in 0..11 {
        let mut p = e.cluster().pods[&key].clone();
        p.labels.insert(
            "app".into(),
            format!("app{}", if round % 2 == 0 { 4 } else { 3 }),
        );
        let t = Instant::now();
        let d = e.apply(&Change::UpsertPod(p));
        times.push(t.elapsed());
        ops = d.len();
    }
    times.sort();
    println!(
        "  one pod relabel -> diff: median {:>8.3} ms ({ops} map operations)",
        times[times.len() / 2].as_secs_f64() * 1e3
    );
    let namespaces = (pods / 100).max(1);
    let mut times: Vec<Duration> = Vec::new();
    for k in 0..11 {
        let mut np = policy(policies + k, namespaces);
        np.name = format!("bench-add-{k}");
        let t = Instant::now();
        let d = e.apply(&Change::UpsertNetworkPolicy(np));
        times.push(t.elapsed());
        ops = d.len();
    }
    times.sort();
    println!(
        "  one policy add  -> diff: median {:>8.3} ms ({ops} map operations)",
        times[times.len() / 2].as_secs_f64() * 1e3
    );
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let grid: Vec<(usize, usize)> = if args.is_empty() {
        vec![
            (1_000, 100),
            (1_000, 1_000),
            (10_000, 100),
            (10_000, 1_000),
            (10_000, 10_000),
            (100_000, 1_000),
        ]
    } else {
        args.iter()
            .filter_map(|a| {
                let (p, q) = a.split_once('x')?;
                Some((p.parse().ok()?, q.parse().ok()?))
            })
            .collect()
    };
    for (pods, policies) in grid {
        run(pods, policies);
    }
}
