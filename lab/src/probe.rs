//! `lab probe`: every pod (or one) to every pod (or one), concurrently, through pod IPs or
//! Service ClusterIPs, and the result as the upstream e2e truth table or JSON.
//!
//! Each source pod gets one thread inside its network namespace with its own single-threaded
//! runtime; every probe from that pod runs concurrently on it, so a matrix with denied cells
//! takes about one probe timeout, not one per cell.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use serde::Serialize;

use septum_policy::model::{PortRef, Protocol as ModelProtocol, ServiceBackend, ServicePort};

use crate::connect::{self, ProbeResult, Protocol};
use crate::control::Lab;
use crate::ns::NetNs;

/// How a probe reaches its destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Via {
    /// The pod's own address.
    Pod,
    /// The ClusterIP of a Service that selects the pod and exposes the port.
    Service,
}

impl std::str::FromStr for Via {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "pod" => Ok(Self::Pod),
            "service" => Ok(Self::Service),
            _ => Err(format!("unknown --via {s:?} (expected service or pod)")),
        }
    }
}

/// What to probe.
#[derive(Clone, Debug)]
pub struct ProbeSpec {
    /// Port (on the pod, or on the Service).
    pub port: u16,
    /// Protocol.
    pub protocol: Protocol,
    /// Pod or Service.
    pub via: Via,
    /// Only from this pod (`ns/pod`).
    pub from: Option<String>,
    /// Only to this pod (`ns/pod`).
    pub to: Option<String>,
    /// Per probe.
    pub timeout: Duration,
}

/// One cell.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ProbeCell {
    /// `ns/pod`.
    pub from: String,
    /// `ns/pod`.
    pub to: String,
    /// Pod or Service.
    pub via: Via,
    /// The address connected to (empty when there was none to connect to).
    pub address: String,
    /// Port connected to.
    pub port: u16,
    /// Protocol.
    pub protocol: &'static str,
    /// The outcome.
    pub result: ProbeResult,
    /// The source's node (multi-node labs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from_node: Option<String>,
    /// The destination's node (multi-node labs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to_node: Option<String>,
    /// Why, for errors.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// The destination address of `to` for this probe: the pod IP, or the ClusterIP and port of a
/// Service selecting `to` that exposes `port`.
fn target(
    lab: &Lab,
    cluster: &septum_policy::Cluster,
    to: &str,
    spec: &ProbeSpec,
) -> Result<SocketAddr, String> {
    let rec = &lab.state().pods[to];
    let v4 = |ips: &[IpAddr]| {
        ips.iter()
            .copied()
            .find(IpAddr::is_ipv4)
            .or(ips.first().copied())
    };
    match spec.via {
        Via::Pod => v4(&rec.ips)
            .map(|ip| SocketAddr::new(ip, spec.port))
            .ok_or_else(|| format!("pod {to} has no address")),
        Via::Service => {
            let pod = cluster
                .pods
                .values()
                .find(|p| format!("{}/{}", p.namespace, p.name) == to)
                .ok_or_else(|| format!("pod {to} is not in the datastore"))?;
            let proto = match spec.protocol {
                Protocol::Tcp => ModelProtocol::Tcp,
                Protocol::Udp => ModelProtocol::Udp,
                Protocol::Sctp => ModelProtocol::Sctp,
            };
            let port = PortRef::Number(spec.port);
            for svc in cluster.services.values() {
                // The pod is a backend of the Service port through the selector, or because a
                // manual EndpointSlice of the Service names one of its addresses for it.
                let backend = |sp: &ServicePort| {
                    cluster.service_backends(svc, sp).any(|b| match b {
                        ServiceBackend::Pod { pod: p, .. } => p == pod,
                        ServiceBackend::Address { ip, .. } => pod.ips.contains(&ip),
                    })
                };
                if svc.ports_matching(&port, Some(proto)).any(backend)
                    && let Some(ip) = v4(&svc.cluster_ips)
                {
                    return Ok(SocketAddr::new(ip, spec.port));
                }
            }
            Err(format!(
                "no Service has {to} as a backend of {}/{}",
                spec.port,
                spec.protocol.as_str()
            ))
        }
    }
}

/// Runs the probes.
pub fn run(lab: &Lab, spec: &ProbeSpec) -> Result<Vec<ProbeCell>> {
    let pods: Vec<String> = lab.state().pods.keys().cloned().collect();
    for (flag, v) in [("--from", &spec.from), ("--to", &spec.to)] {
        if let Some(v) = v
            && !pods.contains(v)
        {
            bail!(
                "{flag} {v}: no such pod in the lab (pods: {})",
                pods.join(", ")
            );
        }
    }
    let froms: Vec<String> = pods
        .iter()
        .filter(|p| spec.from.as_ref().is_none_or(|f| f == *p))
        .cloned()
        .collect();
    let tos: Vec<String> = pods
        .iter()
        .filter(|p| spec.to.as_ref().is_none_or(|t| t == *p))
        .cloned()
        .collect();
    let cluster = lab.model();
    let mut handles = Vec::new();
    for from in &froms {
        let targets: Vec<(String, Result<SocketAddr, String>)> = tos
            .iter()
            .map(|to| (to.clone(), target(lab, &cluster, to, spec)))
            .collect();
        let ns = NetNs::open(&lab.state().pods[from].netns)?;
        let (protocol, timeout, via, port, from_c) = (
            spec.protocol,
            spec.timeout,
            spec.via,
            spec.port,
            from.clone(),
        );
        let h = ns.spawn_thread(format!("probe-{from}"), move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a current-thread runtime");
            rt.block_on(async move {
                let mut set = tokio::task::JoinSet::new();
                for (i, (to, addr)) in targets.into_iter().enumerate() {
                    set.spawn(async move {
                        let cell = match addr {
                            Ok(a) => {
                                let o = connect::probe(a, protocol, timeout).await;
                                (a.ip().to_string(), a.port(), o.result, o.detail)
                            }
                            Err(why) => (String::new(), port, ProbeResult::Error, Some(why)),
                        };
                        (i, to, cell)
                    });
                }
                let mut out = Vec::new();
                while let Some(r) = set.join_next().await {
                    if let Ok(x) = r {
                        out.push(x);
                    }
                }
                out.sort_by_key(|x| x.0);
                out.into_iter()
                    .map(|(_, to, (address, port, result, detail))| ProbeCell {
                        from: from_c.clone(),
                        to,
                        via,
                        address,
                        port,
                        protocol: protocol.as_str(),
                        result,
                        from_node: None,
                        to_node: None,
                        detail,
                    })
                    .collect::<Vec<_>>()
            })
        })?;
        handles.push(h);
    }
    let mut cells = Vec::new();
    for h in handles {
        cells.extend(
            h.join()
                .map_err(|_| anyhow::anyhow!("a probe thread panicked"))?,
        );
    }
    let node_of = |p: &str| lab.state().pods.get(p).and_then(|r| r.node.clone());
    for c in &mut cells {
        c.from_node = node_of(&c.from);
        c.to_node = node_of(&c.to);
    }
    Ok(cells)
}

/// The truth table: rows are sources, columns destinations; `.` connected, `X` timeout, `R`
/// refused, `E` error.
pub fn table(cells: &[ProbeCell]) -> String {
    let mut rows: BTreeMap<&str, BTreeMap<&str, &ProbeCell>> = BTreeMap::new();
    let mut cols: Vec<&str> = Vec::new();
    for c in cells {
        rows.entry(&c.from).or_default().insert(&c.to, c);
        if !cols.contains(&c.to.as_str()) {
            cols.push(&c.to);
        }
    }
    cols.sort();
    let mut out = String::from("-");
    for c in &cols {
        out.push('\t');
        out.push_str(c);
    }
    out.push('\n');
    for (from, row) in &rows {
        out.push_str(from);
        for c in &cols {
            out.push('\t');
            out.push_str(match row.get(c).map(|x| &x.result) {
                Some(ProbeResult::Connected) => ".",
                Some(ProbeResult::Timeout) => "X",
                Some(ProbeResult::Refused) => "R",
                Some(ProbeResult::Error) => "E",
                None => " ",
            });
        }
        out.push('\n');
    }
    out
}

/// Parses `--timeout` (`500ms`, `2s`, `1.5s`).
pub fn parse_duration(s: &str) -> Result<Duration> {
    let (num, unit) = if let Some(n) = s.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else {
        (s, 1.0)
    };
    let v: f64 = num
        .parse()
        .ok()
        .filter(|v: &f64| v.is_finite() && *v > 0.0 && *v <= 3600.0)
        .with_context(|| format!("--timeout {s:?}: expected a duration like 500ms or 2s"))?;
    Ok(Duration::from_secs_f64(v * unit))
}
