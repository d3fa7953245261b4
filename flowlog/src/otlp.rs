//! Flow records as OpenTelemetry logs (OTLP/gRPC), the shape collectors, Loki, Elasticsearch and
//! most SIEMs take in.
//!
//! Two rooms: [`to_log_record`] / [`from_log_record`] map one [`FlowRecord`](crate::FlowRecord)
//! to one OTLP `LogRecord` and back without loss (a receiver rebuilds the exact record), with the
//! attribute names in [`keys`]; [`OtlpExporter`] batches records on a bounded queue and sends
//! them to a collector from a Tokio task, never blocking the caller.
//!
//! The message types are the official `opentelemetry-proto` ones, re-exported as [`proto`] so a
//! receiver decodes with exactly the types the exporter encodes with.

mod exporter;
mod log_record;

pub use exporter::{ExporterError, ExporterSettings, OtlpExporter};
pub use log_record::{
    InvalidLogRecord, SCOPE_NAME, SERVICE_NAME, export_request, from_log_record,
    records_from_request, resource, to_log_record,
};

/// The OTLP message and service types (`opentelemetry-proto`'s tonic build).
pub use opentelemetry_proto::tonic as proto;

/// The attribute names of a flow log record: semantic-convention names where OpenTelemetry has
/// one (`source.address`, `network.transport`, `k8s.*` prefixed by the end), `septum.*` for the
/// rest. One spelling, used by the encoder, the decoder and anyone querying the logs.
///
/// Unsigned counters travel in OTLP's signed 64-bit ints bit for bit, so a value past `i64::MAX`
/// (never seen in practice) reads negative to a consumer but still decodes exactly.
pub mod keys {
    /// The attribute names of one end of a flow.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct EndKeys {
        /// IP address, as text; absent when unknown.
        pub address: &'static str,
        /// Port (the ICMP echo id for ICMP), an int.
        pub port: &'static str,
        /// Pod namespace; absent when empty.
        pub namespace: &'static str,
        /// Pod name; absent when empty.
        pub pod: &'static str,
        /// The pod's owner as `Kind/name`; absent when empty.
        pub workload: &'static str,
        /// Pod labels, a key-value list of strings; absent when there are none.
        pub labels: &'static str,
        /// The Service as `namespace/name`; absent when empty.
        pub service: &'static str,
        /// Security identity, an int.
        pub identity: &'static str,
    }

    /// The source end.
    pub const SOURCE: EndKeys = EndKeys {
        address: "source.address",
        port: "source.port",
        namespace: "source.k8s.namespace.name",
        pod: "source.k8s.pod.name",
        workload: "source.k8s.workload",
        labels: "source.k8s.pod.labels",
        service: "source.k8s.service",
        identity: "source.septum.identity",
    };

    /// The destination end.
    pub const DESTINATION: EndKeys = EndKeys {
        address: "destination.address",
        port: "destination.port",
        namespace: "destination.k8s.namespace.name",
        pod: "destination.k8s.pod.name",
        workload: "destination.k8s.workload",
        labels: "destination.k8s.pod.labels",
        service: "destination.k8s.service",
        identity: "destination.septum.identity",
    };

    /// The attribute names of one deciding rule. The rule is present exactly when its `kind`
    /// attribute is (even when the kind is empty).
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct RuleKeys {
        /// Policy kind, a string; always present with the rule.
        pub kind: &'static str,
        /// Policy namespace; absent when empty.
        pub namespace: &'static str,
        /// Policy name, a string; always present with the rule.
        pub name: &'static str,
        /// ClusterNetworkPolicy tier; absent when empty.
        pub tier: &'static str,
        /// Index of the rule in its section, an int.
        pub rule_index: &'static str,
    }

    /// The rule that decided the egress side (the source pod's policy).
    pub const EGRESS_RULE: RuleKeys = RuleKeys {
        kind: "septum.egress_rule.kind",
        namespace: "septum.egress_rule.namespace",
        name: "septum.egress_rule.name",
        tier: "septum.egress_rule.tier",
        rule_index: "septum.egress_rule.rule_index",
    };

    /// The rule that decided the ingress side (the destination pod's policy).
    pub const INGRESS_RULE: RuleKeys = RuleKeys {
        kind: "septum.ingress_rule.kind",
        namespace: "septum.ingress_rule.namespace",
        name: "septum.ingress_rule.name",
        tier: "septum.ingress_rule.tier",
        rule_index: "septum.ingress_rule.rule_index",
    };

    /// IP protocol: `icmp`, `tcp`, `udp`, `icmpv6`, `sctp`, or the protocol number as decimal.
    pub const TRANSPORT: &str = "network.transport";
    /// `ipv4` or `ipv6` when an address is known. Derived from the addresses, so a decoder
    /// ignores it.
    pub const NETWORK_TYPE: &str = "network.type";
    /// `forwarded`, `dropped` or `audit`.
    pub const VERDICT: &str = "septum.verdict";
    /// The datapath's stable drop-reason code (0: none), an int.
    pub const DROP_REASON: &str = "septum.drop_reason";
    /// TCP flags seen (OR of every packet's), an int.
    pub const TCP_FLAGS: &str = "septum.tcp_flags";
    /// Packets source -> destination, an int.
    pub const PACKETS_FORWARD: &str = "septum.packets.forward";
    /// Bytes source -> destination, an int.
    pub const BYTES_FORWARD: &str = "septum.bytes.forward";
    /// Packets destination -> source, an int.
    pub const PACKETS_REVERSE: &str = "septum.packets.reverse";
    /// Bytes destination -> source, an int.
    pub const BYTES_REVERSE: &str = "septum.bytes.reverse";
    /// The record describes reply traffic, a bool.
    pub const IS_REPLY: &str = "septum.is_reply";
    /// Events folded into the record, an int.
    pub const COUNT: &str = "septum.count";
    /// First seen, milliseconds since the Unix epoch, an int.
    pub const FIRST_SEEN_MS: &str = "septum.first_seen_ms";
    /// Last seen, milliseconds since the Unix epoch: only when `time_unix_nano` cannot hold it
    /// (before 1970 or after 2554); otherwise the record's time is the last-seen time.
    pub const LAST_SEEN_MS: &str = "septum.last_seen_ms";
    /// The node that observed the flow; absent when empty.
    pub const NODE: &str = "septum.node";
    /// Observation point: `from-pod` or `to-pod`.
    pub const POINT: &str = "septum.point";
    /// The log record's event name.
    pub const EVENT_NAME: &str = "septum.flow";
}
