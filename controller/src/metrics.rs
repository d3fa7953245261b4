//! The controller's Prometheus metrics: counters and gauges in the text exposition format,
//! served on `--metrics-addr` at any path (GET). A handful of atomics: no registry needed.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A monotonically increasing count.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds one.
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// The value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down.
#[derive(Debug, Default)]
pub struct Gauge(AtomicU64);

impl Gauge {
    /// Sets the value.
    pub fn set(&self, v: u64) {
        self.0.store(v, Ordering::Relaxed);
    }

    /// Adds one.
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    /// Subtracts one (not below zero).
    pub fn dec(&self) {
        let _ = self
            .0
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| v.checked_sub(1));
    }

    /// The value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Every metric of the controller.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Watch events received (all kinds).
    pub watch_events: Counter,
    /// Watch errors (each followed by a backoff and a retry or relist).
    pub watch_errors: Counter,
    /// Model changes applied to the engine.
    pub changes: Counter,
    /// Node deltas produced.
    pub node_deltas: Counter,
    /// FlowPolicy status patches written.
    pub status_patches: Counter,
    /// FlowPolicy status patches that failed.
    pub status_patch_errors: Counter,
    /// Identity allocation writes.
    pub identity_writes: Counter,
    /// Identity allocation writes that failed.
    pub identity_write_errors: Counter,
    /// Node-state updates sent to agents (snapshots and deltas).
    pub stream_updates: Counter,
    /// Their encoded size.
    pub stream_update_bytes: Counter,
    /// Acks received from agents.
    pub stream_acks: Counter,
    /// Streams refused (no or bad client certificate, wrong node, no hello).
    pub stream_refused: Counter,
    /// 1 once every kind has been listed and the engine built.
    pub synced: Gauge,
    /// Agents connected to the node-state stream.
    pub agents_connected: Gauge,
    /// Nodes with a state.
    pub nodes: Gauge,
    /// Allocated numbers (identities, Service ids, cookies).
    pub allocations: Gauge,
}

impl Metrics {
    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let counters: [(&str, &str, &Counter); 12] = [
            (
                "septum_controller_watch_events_total",
                "Watch events received.",
                &self.watch_events,
            ),
            (
                "septum_controller_watch_errors_total",
                "Watch errors (retried with backoff).",
                &self.watch_errors,
            ),
            (
                "septum_controller_changes_total",
                "Model changes applied to the policy engine.",
                &self.changes,
            ),
            (
                "septum_controller_node_deltas_total",
                "Per-node state deltas produced.",
                &self.node_deltas,
            ),
            (
                "septum_controller_status_patches_total",
                "FlowPolicy status patches written.",
                &self.status_patches,
            ),
            (
                "septum_controller_status_patch_errors_total",
                "FlowPolicy status patches that failed.",
                &self.status_patch_errors,
            ),
            (
                "septum_controller_identity_writes_total",
                "Identity allocation writes.",
                &self.identity_writes,
            ),
            (
                "septum_controller_identity_write_errors_total",
                "Identity allocation writes that failed.",
                &self.identity_write_errors,
            ),
            (
                "septum_controller_stream_updates_total",
                "Node-state updates sent to agents.",
                &self.stream_updates,
            ),
            (
                "septum_controller_stream_update_bytes_total",
                "Encoded bytes of the node-state updates sent.",
                &self.stream_update_bytes,
            ),
            (
                "septum_controller_stream_acks_total",
                "Revision acks received from agents.",
                &self.stream_acks,
            ),
            (
                "septum_controller_stream_refused_total",
                "Node-state streams refused (certificate, node name, protocol).",
                &self.stream_refused,
            ),
        ];
        for (name, help, c) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                c.get()
            );
        }
        let gauges: [(&str, &str, &Gauge); 4] = [
            (
                "septum_controller_synced",
                "1 once every kind is listed and compiled.",
                &self.synced,
            ),
            (
                "septum_controller_nodes",
                "Nodes with a computed state.",
                &self.nodes,
            ),
            (
                "septum_controller_allocations",
                "Allocated identity numbers, Service ids and cookies.",
                &self.allocations,
            ),
            (
                "septum_controller_agents_connected",
                "Agents connected to the node-state stream.",
                &self.agents_connected,
            ),
        ];
        for (name, help, g) in gauges {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {}",
                g.get()
            );
        }
        out
    }
}

/// Serves the metrics on `listener` until the task is dropped (HTTP/1.1, one response per
/// connection).
pub async fn serve(listener: TcpListener, metrics: std::sync::Arc<Metrics>) {
    loop {
        let Ok((mut conn, _)) = listener.accept().await else {
            continue;
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            // The request itself does not matter: every path answers the metrics.
            let _ = conn.read(&mut buf).await;
            let body = metrics.render();
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = conn.write_all(head.as_bytes()).await;
            let _ = conn.write_all(body.as_bytes()).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_metric_with_its_type() {
        let m = Metrics::default();
        m.changes.add(3);
        m.synced.set(1);
        let text = m.render();
        assert!(text.contains(
            "# TYPE septum_controller_changes_total counter\nseptum_controller_changes_total 3\n"
        ));
        assert!(text.contains("septum_controller_synced 1\n"));
        assert_eq!(text.matches("# TYPE").count(), 16);
    }
}
