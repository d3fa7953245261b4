//! Prometheus metrics in the text exposition format (version 0.0.4), served at `/metrics`:
//! flows and drops by verdict, reason and policy, pipeline losses by where they happened, the
//! store's size and retention, the datapath's counters and map fill levels.

use std::fmt::Write as _;
use std::sync::atomic::Ordering::Relaxed;

use septum_datapath_common::{Counter, DropReason};
use septum_flowlog::Verdict;

use super::pipeline::FlowHub;

/// What the agent itself contributes (read under its lock).
#[derive(Clone, Debug, Default)]
pub struct AgentMetrics {
    /// The kernel's counters, summed over CPUs.
    pub counters: Vec<(Counter, u64)>,
    /// Per map: name, entries written by this agent, capacity.
    pub maps: Vec<(&'static str, u64, u64)>,
    /// Endpoints on this node.
    pub endpoints: u64,
    /// Sync generation.
    pub generation: u64,
    /// Whether the first full sync is done.
    pub synced: bool,
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

struct Out(String);

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}");
        let _ = writeln!(self.0, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: u64) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                let _ = write!(self.0, "{k}=\"{}\"", escape(v));
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {value}");
    }
}

/// The metrics page.
pub fn render(hub: Option<&FlowHub>, agent: &AgentMetrics) -> String {
    let mut o = Out(String::new());
    o.family(
        "septum_agent_synced",
        "gauge",
        "1 once the first full sync enforces a good model.",
    );
    o.sample("septum_agent_synced", &[], u64::from(agent.synced));
    o.family(
        "septum_agent_sync_generation",
        "counter",
        "Syncs since the agent started.",
    );
    o.sample("septum_agent_sync_generation", &[], agent.generation);
    o.family("septum_endpoints", "gauge", "Pod endpoints on this node.");
    o.sample("septum_endpoints", &[], agent.endpoints);

    o.family(
        "septum_datapath_events_total",
        "counter",
        "The datapath's per-CPU counters, summed (packets, conntrack hits, new flows, verdicts, events sent and lost).",
    );
    for (c, v) in &agent.counters {
        let name = Counter::ALL
            .iter()
            .find(|(k, _)| k == c)
            .map_or("unknown", |(_, n)| n);
        o.sample("septum_datapath_events_total", &[("counter", name)], *v);
    }
    o.family(
        "septum_map_entries",
        "gauge",
        "Entries the agent wrote into each pinned map.",
    );
    for (m, n, _) in &agent.maps {
        o.sample("septum_map_entries", &[("map", m)], *n);
    }
    o.family(
        "septum_map_capacity",
        "gauge",
        "Maximum entries of each pinned map.",
    );
    for (m, _, cap) in &agent.maps {
        o.sample("septum_map_capacity", &[("map", m)], *cap);
    }

    let Some(hub) = hub else { return o.0 };
    let s = &hub.stats;
    o.family(
        "septum_flow_events_total",
        "counter",
        "Flow events read from the ring buffer, by verdict.",
    );
    for v in [Verdict::Forwarded, Verdict::Dropped, Verdict::Audit] {
        o.sample(
            "septum_flow_events_total",
            &[("verdict", v.as_str())],
            s.verdicts[usize::from(v.code())].load(Relaxed),
        );
    }
    o.family(
        "septum_flow_drops_total",
        "counter",
        "Drop events by the datapath's drop reason.",
    );
    for code in 1..16u8 {
        if let Some(r) = DropReason::from_u8(code) {
            o.sample(
                "septum_flow_drops_total",
                &[("reason", r.as_str())],
                s.reasons[usize::from(code)].load(Relaxed),
            );
        }
    }
    o.family(
        "septum_flow_drops_by_policy_total",
        "counter",
        "Drop events by the deciding policy (kind, namespace, name; `none` when no rule decided).",
    );
    let by_cookie: Vec<(u32, u64)> = s
        .drops_by_cookie
        .lock()
        .map(|m| m.iter().map(|(k, v)| (*k, *v)).collect())
        .unwrap_or_default();
    let enricher = hub.enricher();
    let mut by_policy: std::collections::BTreeMap<(String, String, String), u64> =
        Default::default();
    for (cookie, n) in by_cookie {
        let key = match enricher.rule(cookie) {
            Some(r) => (r.kind.clone(), r.namespace.clone(), r.name.clone()),
            None => ("none".into(), String::new(), String::new()),
        };
        *by_policy.entry(key).or_default() += n;
    }
    for ((kind, ns, name), n) in &by_policy {
        o.sample(
            "septum_flow_drops_by_policy_total",
            &[("kind", kind), ("namespace", ns), ("name", name)],
            *n,
        );
    }
    o.family(
        "septum_flow_records_total",
        "counter",
        "Flow records flushed by the aggregator (new, updated and ended connections).",
    );
    o.sample("septum_flow_records_total", &[], s.records.load(Relaxed));
    o.family(
        "septum_flow_records_written_total",
        "counter",
        "Flow records committed to the store.",
    );
    o.sample(
        "septum_flow_records_written_total",
        &[],
        s.written.load(Relaxed),
    );
    o.family(
        "septum_flow_lost_total",
        "counter",
        "Flow events or records lost, by where: ring_full (kernel ring buffer), queue_full (store queue), store_error, subscriber_lagged, exporter_*, malformed_event.",
    );
    for (source, n) in hub.losses() {
        o.sample("septum_flow_lost_total", &[("source", source)], n);
    }
    o.family(
        "septum_flow_exported_total",
        "counter",
        "Flow records delivered to an exporter.",
    );
    o.sample(
        "septum_flow_exported_total",
        &[("exporter", "otlp")],
        s.otlp_exported.load(Relaxed),
    );
    o.family(
        "septum_flow_open_records",
        "gauge",
        "Connections and drop folds the aggregator holds open.",
    );
    o.sample("septum_flow_open_records", &[], s.open.load(Relaxed));
    o.family(
        "septum_flow_evicted_total",
        "counter",
        "Records ended early because the aggregator was full (written, not lost).",
    );
    o.sample("septum_flow_evicted_total", &[], s.evicted.load(Relaxed));
    o.family(
        "septum_flow_store_records",
        "gauge",
        "Records in the store (as of the last retention pass).",
    );
    o.sample("septum_flow_store_records", &[], s.stored.load(Relaxed));
    o.family(
        "septum_flow_store_bytes",
        "gauge",
        "Store file size (as of the last retention pass).",
    );
    o.sample("septum_flow_store_bytes", &[], s.store_bytes.load(Relaxed));
    o.family(
        "septum_flow_store_pruned_total",
        "counter",
        "Records removed by retention.",
    );
    o.sample(
        "septum_flow_store_pruned_total",
        &[],
        s.pruned.load(Relaxed),
    );
    o.family(
        "septum_flow_retention_max_age_seconds",
        "gauge",
        "Retention: records older than this are removed (0: no age bound).",
    );
    o.sample(
        "septum_flow_retention_max_age_seconds",
        &[],
        hub.retention
            .max_age_ms
            .map_or(0, |ms| u64::try_from(ms / 1000).unwrap_or(0)),
    );
    o.family(
        "septum_flow_retention_max_bytes",
        "gauge",
        "Retention: the store is kept under this size (0: no size bound).",
    );
    o.sample(
        "septum_flow_retention_max_bytes",
        &[],
        hub.retention.max_bytes.unwrap_or(0),
    );
    o.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped_and_every_sample_has_a_family() {
        let m = AgentMetrics {
            counters: vec![(Counter::Dropped, 7)],
            maps: vec![("policy", 3, 1 << 20)],
            ..AgentMetrics::default()
        };
        let page = render(None, &m);
        assert!(page.contains("septum_datapath_events_total{counter=\"dropped\"} 7"));
        assert!(page.contains("septum_map_capacity{map=\"policy\"} 1048576"));
        let mut o = Out(String::new());
        o.sample("x", &[("a", "q\"u\\o\nte")], 1);
        assert_eq!(o.0, "x{a=\"q\\\"u\\\\o\\nte\"} 1\n");
        // Every sample's name was declared by a TYPE line before it.
        let mut declared = std::collections::HashSet::new();
        for line in page.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                declared.insert(rest.split(' ').next().unwrap().to_string());
            } else if !line.starts_with('#') {
                let name = line.split(['{', ' ']).next().unwrap();
                assert!(declared.contains(name), "{name} has no TYPE line");
            }
        }
    }
}
