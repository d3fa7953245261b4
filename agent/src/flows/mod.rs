//! Flow logs on the node: the pipeline from the kernel's ring buffer to the store, live
//! subscribers and exporters ([`pipeline`]), the enrichment tables it reads ([`enrich`]), the
//! gRPC `FlowService` ([`service`]) and the Prometheus metrics ([`metrics`]).

pub mod enrich;
pub mod metrics;
pub mod pipeline;
pub mod service;

use std::sync::atomic::Ordering::Relaxed;

use septum_flowlog::FlowRecord;

pub use enrich::Enricher;
pub use pipeline::{FlowHub, FlowSettings};

/// The OTLP logs exporter behind the pipeline's non-blocking interface.
#[derive(Debug)]
pub struct OtlpSink {
    exporter: septum_flowlog::otlp::OtlpExporter,
}

impl OtlpSink {
    fn start(endpoint: &str, hub: &FlowHub) -> anyhow::Result<Self> {
        let exporter = septum_flowlog::otlp::OtlpExporter::start(
            endpoint.to_string(),
            septum_flowlog::otlp::ExporterSettings {
                node: hub.node.clone(),
                ..septum_flowlog::otlp::ExporterSettings::default()
            },
        )
        .map_err(|e| anyhow::anyhow!("--flow-otlp {endpoint:?}: {e}"))?;
        Ok(Self { exporter })
    }

    fn send(&self, records: &[FlowRecord]) {
        self.exporter.send(records);
    }

    fn refresh_stats(&self, stats: &pipeline::Stats) {
        stats.otlp_exported.store(self.exporter.exported(), Relaxed);
        stats
            .otlp_lost
            .store(self.exporter.dropped() + self.exporter.failed(), Relaxed);
    }
}
