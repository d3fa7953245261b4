//! `septum lab bench`: the figures of issue 8, measured on a real lab, each beside a baseline
//! from the same run.
//!
//! - `lab up` of 9 pods (3 namespaces x 3 pods, one TCP port each, a Service each);
//! - a 9x9 probe matrix with denied cells, beside one probe timeout (its floor);
//! - policy edit -> enforced in standalone mode over N edits that flip one cell: from the file
//!   write to the agent reporting that version enforced, and to the probe flipping;
//! - CNI ADD: the whole chain and septum-cni's share of it, beside bridge + host-local alone.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

use crate::connect::{self, ProbeResult, Protocol};
use crate::control::{Lab, Programs};
use crate::ns::NetNs;
use crate::probe::{self, ProbeSpec, Via};
use crate::state::LabDir;

fn manifest() -> String {
    let mut m = String::new();
    for ns in ["x", "y", "z"] {
        m.push_str(&format!(
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}, labels: {{ns: {ns}}}}}\n---\n"
        ));
        for pod in ["a", "b", "c"] {
            m.push_str(&format!(
                "apiVersion: v1\nkind: Pod\nmetadata: {{name: {pod}, namespace: {ns}, labels: {{pod: {pod}}}}}\nspec:\n  containers: [{{name: c, image: x, ports: [{{name: serve-80-tcp, containerPort: 80}}]}}]\n---\n\
                 apiVersion: v1\nkind: Service\nmetadata: {{name: s-{pod}, namespace: {ns}}}\nspec:\n  selector: {{pod: {pod}}}\n  ports: [{{port: 80}}]\n---\n"
            ));
        }
    }
    m
}

const DENY_A: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: bench, namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: a}}\n  policyTypes: [Ingress]\n";

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn summary(mut v: Vec<Duration>) -> String {
    v.sort();
    format!(
        "p50 {:>8.2} ms  p99 {:>8.2} ms  (n={})",
        percentile(&v, 0.5).as_secs_f64() * 1e3,
        percentile(&v, 0.99).as_secs_f64() * 1e3,
        v.len()
    )
}

fn status_enforced(status: &Path, file: &Path, digest: &str) -> bool {
    std::fs::read(status)
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .is_some_and(|st| {
            st["files"][file.display().to_string()]["enforced"].as_str() == Some(digest)
        })
}

/// Runs the benchmark in its own lab directory (removed afterwards).
pub fn run(programs: Programs, edits: usize, adds: usize) -> Result<()> {
    let dir = LabDir::from_env();
    if dir.load()?.is_some() {
        bail!("a lab is up; the benchmark needs its own (`septum lab down` first)");
    }
    let work = tempfile_dir()?;
    let manifest_path = work.join("bench.yaml");
    std::fs::write(&manifest_path, manifest())?;
    let result = (|| -> Result<()> {
        let started = Instant::now();
        let lab = Lab::up(
            dir.clone(),
            programs.clone(),
            std::slice::from_ref(&manifest_path),
        )?;
        println!(
            "lab up, 9 pods + 9 Services         {:>8.2} ms",
            started.elapsed().as_secs_f64() * 1e3
        );

        // The matrix with denied cells: x/a isolated.
        let store = dir.datastore();
        let policy = store.join("bench-edit.yaml");
        std::fs::write(&policy, DENY_A)?;
        let status = dir.agent_state().join(septum_agent::state_dir::STATUS_FILE);
        let digest = septum_agent::datastore::digest(DENY_A.as_bytes());
        let t = Instant::now();
        while !status_enforced(&status, &policy, &digest) {
            if t.elapsed() > Duration::from_secs(10) {
                bail!("the policy was never enforced");
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        let timeout = Duration::from_millis(500);
        for via in [Via::Pod, Via::Service] {
            let spec = ProbeSpec {
                port: 80,
                protocol: Protocol::Tcp,
                via,
                from: None,
                to: None,
                timeout,
            };
            let t = Instant::now();
            let cells = probe::run(&lab, &spec)?;
            let denied = cells
                .iter()
                .filter(|c| c.result == ProbeResult::Timeout)
                .count();
            println!(
                "probe 9x9 via {:<7} ({denied} denied)   {:>8.2} ms   baseline: one probe timeout {:>6.0} ms",
                format!("{via:?}").to_lowercase(),
                t.elapsed().as_secs_f64() * 1e3,
                timeout.as_secs_f64() * 1e3
            );
        }

        // Edits: allow-all <-> deny, from y/b to x/a:80.
        let from = NetNs::open(&lab.state().pods["y/b"].netns)?;
        let target: std::net::SocketAddr = (lab.state().pods["x/a"].ips[0], 80).into();
        let allow = format!("{DENY_A}  ingress: [{{}}]\n");
        let (mut to_status, mut to_probe) = (Vec::new(), Vec::new());
        for i in 0..edits {
            let (text, want_connected) = if i % 2 == 0 {
                (allow.as_str(), true)
            } else {
                (DENY_A, false)
            };
            let digest = septum_agent::datastore::digest(text.as_bytes());
            let tmp = store.join(".bench-edit.tmp");
            std::fs::write(&tmp, text)?;
            let written = Instant::now();
            std::fs::rename(&tmp, &policy)?;
            let t_status = from.run(|| -> Result<Duration> {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                let mut seen_status = None;
                loop {
                    if seen_status.is_none() && status_enforced(&status, &policy, &digest) {
                        seen_status = Some(written.elapsed());
                    }
                    let o = rt.block_on(connect::probe(
                        target,
                        Protocol::Tcp,
                        Duration::from_millis(5),
                    ));
                    if (o.result == ProbeResult::Connected) == want_connected {
                        to_probe.push(written.elapsed());
                        // The status file may trail the maps by the write itself.
                        while seen_status.is_none() {
                            if status_enforced(&status, &policy, &digest) {
                                seen_status = Some(written.elapsed());
                            }
                        }
                        return Ok(seen_status.unwrap_or_default());
                    }
                    if written.elapsed() > Duration::from_secs(10) {
                        bail!("edit {i} was not enforced within 10 s");
                    }
                }
            })??;
            to_status.push(t_status);
        }
        println!(
            "edit -> agent reports enforced       {}",
            summary(to_status)
        );
        println!(
            "edit -> probe flips                  {}   (probe granularity ~5 ms when denied)",
            summary(to_probe)
        );

        // CNI ADD/DEL of extra pods: the whole chain, septum-cni's share, and the chain without it.
        let conflist = lab.conflist();
        let mut bare = conflist.clone();
        if let Some(p) = bare["plugins"].as_array_mut() {
            p.truncate(1);
        }
        bare["name"] = serde_json::json!("septum-lab-bare");
        let runner = lab.cni()?;
        let (mut chain, mut septum, mut baseline) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..adds {
            for (list, with_septum) in [(&conflist, true), (&bare, false)] {
                let name = format!("{}bench-{i}-{}", dir.netns_prefix(), u8::from(with_septum));
                let ns = NetNs::create(&name)?;
                let rt = crate::cni::RuntimeConf {
                    container_id: format!("bench-{i}-{}", u8::from(with_septum)),
                    netns: ns.path().to_path_buf(),
                    ifname: "eth0".into(),
                    args: vec![
                        ("IgnoreUnknown".into(), "1".into()),
                        ("K8S_POD_NAMESPACE".into(), "x".into()),
                        ("K8S_POD_NAME".into(), format!("bench-{i}")),
                    ],
                };
                let t = Instant::now();
                let (_, times) = runner.add_timed(list, &rt)?;
                let total = t.elapsed();
                if with_septum {
                    chain.push(total);
                    septum.extend(
                        times
                            .iter()
                            .filter(|(p, _)| p == "septum-cni")
                            .map(|(_, d)| *d),
                    );
                } else {
                    baseline.push(total);
                }
                runner.del(list, &rt)?;
                NetNs::delete(&name)?;
            }
        }
        println!("CNI ADD, bridge+host-local+septum-cni {}", summary(chain));
        println!("CNI ADD, septum-cni alone            {}", summary(septum));
        println!("CNI ADD, baseline bridge+host-local  {}", summary(baseline));
        Ok(())
    })();
    let _ = crate::control::down(&dir, &programs);
    let _ = std::fs::remove_dir_all(&work);
    result
}

fn tempfile_dir() -> Result<PathBuf> {
    let d = std::env::temp_dir().join(format!("septum-lab-bench-{}", std::process::id()));
    std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
    Ok(d)
}
