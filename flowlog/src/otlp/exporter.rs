//! The OTLP/gRPC logs exporter: a bounded queue in front of a Tokio task that batches flow
//! records into `ExportLogsServiceRequest`s and sends them to a collector.
//!
//! The caller never waits: [`OtlpExporter::send`] enqueues or, when the queue is full, counts
//! the records as dropped. A collector that refuses or cannot be reached costs the batch in
//! flight, counted as failed; the exporter reconnects on the next batch. Every record is
//! accounted for in exactly one of [`exported`](OtlpExporter::exported),
//! [`dropped`](OtlpExporter::dropped), [`failed`](OtlpExporter::failed) or still queued.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::logs::v1::logs_service_client::LogsServiceClient;
use opentelemetry_proto::tonic::resource::v1::Resource;
use tokio::sync::mpsc;
use tonic::transport::{Channel, Endpoint};

use super::log_record::{export_request, resource};
use crate::record::FlowRecord;

/// How the exporter batches and bounds its work.
#[derive(Clone, Debug)]
pub struct ExporterSettings {
    /// The exporting node (the resource's `host.name` / `k8s.node.name`).
    pub node: String,
    /// Records waiting to be sent, at most; more are dropped and counted.
    pub queue_records: usize,
    /// Records in one export request, at most.
    pub max_batch: usize,
    /// Deadline of one export call (connect included).
    pub timeout: Duration,
}

impl Default for ExporterSettings {
    fn default() -> Self {
        Self {
            node: String::new(),
            queue_records: 65_536,
            max_batch: 2_048,
            timeout: Duration::from_secs(10),
        }
    }
}

/// An endpoint the exporter cannot use.
#[derive(Debug, thiserror::Error)]
pub enum ExporterError {
    /// Not an `http://` or `https://` URI.
    #[error("OTLP endpoint {endpoint:?} is not an http:// or https:// URI")]
    Scheme {
        /// What was given.
        endpoint: String,
    },
    /// Not a URI tonic can connect to.
    #[error("OTLP endpoint {endpoint:?}: {source}")]
    Endpoint {
        /// What was given.
        endpoint: String,
        /// Why it is refused.
        #[source]
        source: tonic::transport::Error,
    },
    /// Not called from within a Tokio runtime.
    #[error("the OTLP exporter needs a Tokio runtime")]
    NoRuntime,
}

#[derive(Debug, Default)]
struct Counters {
    queued: AtomicU64,
    exported: AtomicU64,
    dropped: AtomicU64,
    failed: AtomicU64,
    requests: AtomicU64,
}

/// Sends flow records to an OTLP/gRPC logs collector without blocking the caller.
#[derive(Debug)]
pub struct OtlpExporter {
    queue: mpsc::Sender<Vec<FlowRecord>>,
    counters: Arc<Counters>,
    limit: u64,
}

impl OtlpExporter {
    /// Starts the exporter's task on the current Tokio runtime. The connection is made lazily
    /// (a collector that is down at start is retried with every batch).
    pub fn start(endpoint: String, settings: ExporterSettings) -> Result<Self, ExporterError> {
        if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
            return Err(ExporterError::Scheme { endpoint });
        }
        let runtime =
            tokio::runtime::Handle::try_current().map_err(|_| ExporterError::NoRuntime)?;
        let channel = Endpoint::from_shared(endpoint.clone())
            .map_err(|source| ExporterError::Endpoint {
                endpoint: endpoint.clone(),
                source,
            })?
            .connect_timeout(settings.timeout)
            .timeout(settings.timeout)
            .connect_lazy();
        let counters = Arc::new(Counters::default());
        // The channel is bounded in records by `queued`; its own bound only caps the number of
        // small batches.
        let (queue, rx) = mpsc::channel(4_096);
        runtime.spawn(run(
            LogsServiceClient::new(channel),
            rx,
            resource(&settings.node),
            settings.max_batch.max(1),
            counters.clone(),
        ));
        Ok(Self {
            queue,
            counters,
            limit: settings.queue_records.max(1) as u64,
        })
    }

    /// Queues `records` for export; drops (and counts) them when the queue is full or the
    /// exporter has stopped.
    pub fn send(&self, records: &[FlowRecord]) {
        if records.is_empty() {
            return;
        }
        let n = records.len() as u64;
        let c = &self.counters;
        if c.queued.fetch_add(n, Relaxed) + n > self.limit {
            c.queued.fetch_sub(n, Relaxed);
            c.dropped.fetch_add(n, Relaxed);
            return;
        }
        if self.queue.try_send(records.to_vec()).is_err() {
            c.queued.fetch_sub(n, Relaxed);
            c.dropped.fetch_add(n, Relaxed);
        }
    }

    /// Records the collector accepted.
    pub fn exported(&self) -> u64 {
        self.counters.exported.load(Relaxed)
    }

    /// Records dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.counters.dropped.load(Relaxed)
    }

    /// Records lost with an export call that failed (collector unreachable or refusing).
    pub fn failed(&self) -> u64 {
        self.counters.failed.load(Relaxed)
    }

    /// Records queued and not yet sent.
    pub fn queued(&self) -> u64 {
        self.counters.queued.load(Relaxed)
    }

    /// Export calls made (successful or not).
    pub fn requests(&self) -> u64 {
        self.counters.requests.load(Relaxed)
    }
}

async fn run(
    mut client: LogsServiceClient<Channel>,
    mut rx: mpsc::Receiver<Vec<FlowRecord>>,
    resource: Resource,
    max_batch: usize,
    counters: Arc<Counters>,
) {
    let mut batch: Vec<FlowRecord> = Vec::with_capacity(max_batch);
    loop {
        if batch.is_empty() {
            match rx.recv().await {
                Some(records) => batch.extend(records),
                None => return,
            }
        }
        // Take whatever else is already queued, up to a batch.
        while batch.len() < max_batch {
            match rx.try_recv() {
                Ok(records) => batch.extend(records),
                Err(_) => break,
            }
        }
        let take = batch.len().min(max_batch);
        let rest = batch.split_off(take);
        let n = batch.len() as u64;
        counters.queued.fetch_sub(n, Relaxed);
        counters.requests.fetch_add(1, Relaxed);
        let request = export_request(&resource, &batch);
        match client.export(request).await {
            Ok(response) => {
                // A partial success names how many the collector rejected.
                let rejected = response
                    .into_inner()
                    .partial_success
                    .map_or(0, |p| p.rejected_log_records.max(0) as u64)
                    .min(n);
                counters.exported.fetch_add(n - rejected, Relaxed);
                counters.failed.fetch_add(rejected, Relaxed);
            }
            Err(_) => {
                counters.failed.fetch_add(n, Relaxed);
            }
        }
        batch = rest;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_must_be_http_uris() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _guard = rt.enter();
        let err =
            OtlpExporter::start("collector:4317".into(), ExporterSettings::default()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "OTLP endpoint \"collector:4317\" is not an http:// or https:// URI"
        );
        assert!(
            OtlpExporter::start("http://bad host:1".into(), ExporterSettings::default()).is_err()
        );
    }

    #[test]
    fn outside_a_runtime_is_a_clear_error() {
        let err = OtlpExporter::start("http://127.0.0.1:4317".into(), ExporterSettings::default())
            .unwrap_err();
        assert!(matches!(err, ExporterError::NoRuntime));
    }
}
