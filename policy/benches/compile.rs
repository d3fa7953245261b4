//! `cargo bench -p septum-policy --bench compile [-- [--quick] PODSxPOLICIES ...]`: full compile time,
//! entries emitted and peak heap for a grid of synthetic clusters (1k/10k/100k pods x
//! 100/1k/10k policies), then single changes through the incremental engine (pod relabels, pod
//! add/delete, policy add/update/delete), beside the baseline a controller without it would pay
//! for the same change: a full recompile plus a diff of the two states. A counting global
//! allocator measures the heap.
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
use septum_policy::{Change, Cluster, Engine, InMemoryAllocations, StateDiff};

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
        workload: None,
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

/// Median of `rounds` runs of `f` (each run gets its round number), and the diff size of the last.
fn median(rounds: usize, mut f: impl FnMut(usize) -> (Duration, usize)) -> (Duration, usize) {
    let mut times = Vec::with_capacity(rounds);
    let mut ops = 0;
    for round in 0..rounds {
        let (t, n) = f(round);
        times.push(t);
        ops = n;
    }
    times.sort();
    (times[times.len() / 2], ops)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn report(what: &str, (t, ops): (Duration, usize)) {
    println!(
        "  {what:<34} median {:>9.3} ms ({ops} map operations)",
        ms(t)
    );
}

/// Applies `change` incrementally, timed.
fn timed_apply(e: &mut Engine<InMemoryAllocations>, change: &Change) -> (Duration, usize) {
    let t = Instant::now();
    let d = e.apply(change);
    (t.elapsed(), d.len())
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
        ms(compile),
        st.policy.len(),
        st.ipcache.len(),
        e.identities().len(),
        st.entry_count(),
        mib(peak)
    );
    let namespaces = (pods / 100).max(1);
    let key = ObjectKey::new("ns0", "p3");
    // A pod moving between two existing identities (app3 <-> app4), back and forth.
    report(
        "pod relabel (existing identity)",
        median(11, |round| {
            let mut p = e.cluster().pods[&key].clone();
            let app = if round % 2 == 0 { 4 } else { 3 };
            p.labels.insert("app".into(), format!("app{app}"));
            timed_apply(&mut e, &Change::UpsertPod(p))
        }),
    );
    // A pod taking labels nobody has (a new identity is allocated and indexed).
    report(
        "pod relabel (new identity)",
        median(11, |round| {
            let mut p = e.cluster().pods[&key].clone();
            p.labels.insert("canary".into(), format!("c{round}"));
            timed_apply(&mut e, &Change::UpsertPod(p))
        }),
    );
    // A new replica of an existing app (new IP, existing identity), then its deletion.
    let mut added = Vec::new();
    report(
        "pod add (existing identity)",
        median(11, |round| {
            let mut p = pod(0, 5, 5);
            p.name = format!("bench-pod-{round}");
            p.ips = vec![format!("10.250.0.{round}").parse().expect("ip")];
            added.push(p.key());
            timed_apply(&mut e, &Change::UpsertPod(p))
        }),
    );
    report(
        "pod delete",
        median(11, |round| {
            timed_apply(&mut e, &Change::DeletePod(added[round].clone()))
        }),
    );
    report(
        "policy add",
        median(11, |round| {
            let mut np = policy(policies + round, namespaces);
            np.name = format!("bench-add-{round}");
            timed_apply(&mut e, &Change::UpsertNetworkPolicy(np))
        }),
    );
    report(
        "policy update (new port)",
        median(11, |round| {
            let mut np = policy(policies + round, namespaces);
            np.name = format!("bench-add-{round}");
            if let Some(NetworkPolicyPort { port, .. }) = np.ingress[0].ports.first_mut() {
                *port = Some(PortRef::Number(9000 + round as u16));
            }
            timed_apply(&mut e, &Change::UpsertNetworkPolicy(np))
        }),
    );
    report(
        "policy delete",
        median(11, |round| {
            let np = policy(policies + round, namespaces);
            timed_apply(
                &mut e,
                &Change::DeleteNetworkPolicy(ObjectKey::new(
                    np.namespace,
                    format!("bench-add-{round}"),
                )),
            )
        }),
    );
    {
        // Baseline: what a controller without the incremental engine does for the same policy
        // add: recompile the whole model and diff the two states.
        let before = e.state().clone();
        let mut cluster = e.cluster().clone();
        let mut np = policy(policies, namespaces);
        np.name = "bench-baseline".into();
        cluster.apply(&Change::UpsertNetworkPolicy(np));
        let t = Instant::now();
        let (after, _) = septum_policy::compile(&cluster, e.store().clone());
        let d = StateDiff::between(&before, &after);
        let took = t.elapsed();
        report("baseline: policy add by full recompile", (took, d.len()));
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // `cargo bench` passes `--bench`; everything else starting with `-` is ours.
    let quick = args.iter().any(|a| a == "--quick");
    let cells: Vec<(usize, usize)> = args
        .iter()
        .filter_map(|a| {
            let (p, q) = a.split_once('x')?;
            Some((p.parse().ok()?, q.parse().ok()?))
        })
        .collect();
    let grid: Vec<(usize, usize)> = if !cells.is_empty() {
        cells
    } else if quick {
        vec![(1_000, 100), (10_000, 1_000)]
    } else {
        let mut g = Vec::new();
        for pods in [1_000, 10_000, 100_000] {
            for policies in [100, 1_000, 10_000] {
                g.push((pods, policies));
            }
        }
        g
    };
    println!(
        "septum-policy compile benchmark (release build; medians of 11 incremental changes; the baseline is a full recompile + diff of the same change, in the same run)"
    );
    for (pods, policies) in grid {
        run(pods, policies);
    }
}
