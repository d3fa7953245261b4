//! One flow record <-> one OTLP `LogRecord`, and the resource and scope they travel in.

use std::collections::{BTreeMap, HashMap};
use std::net::AddrParseError;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::{
    AnyValue, InstrumentationScope, KeyValue, KeyValueList,
};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs, SeverityNumber};
use opentelemetry_proto::tonic::resource::v1::Resource;

use super::keys::{self, EndKeys, RuleKeys};
use crate::record::{FlowEnd, FlowRecord, Point, RuleRef, Verdict};
use crate::wire::{parse_protocol, protocol_name};

/// The instrumentation scope flow log records are sent under.
pub const SCOPE_NAME: &str = "septum.flows";
/// The resource's `service.name`.
pub const SERVICE_NAME: &str = "septum";

const NANOS_PER_MILLI: u64 = 1_000_000;

/// A log record that is not a flow record this module wrote.
#[derive(Debug, thiserror::Error)]
pub enum InvalidLogRecord {
    /// A required attribute is absent.
    #[error("flow log record has no attribute {key:?}")]
    Missing {
        /// The attribute.
        key: String,
    },
    /// An attribute (or a label) appears twice.
    #[error("flow log record has attribute {key:?} more than once")]
    Duplicate {
        /// The attribute.
        key: String,
    },
    /// An attribute holds another type than its key calls for.
    #[error("flow log record attribute {key:?} is not {expected}: {value:?}")]
    WrongType {
        /// The attribute.
        key: String,
        /// The type it should have.
        expected: &'static str,
        /// What it holds.
        value: Option<Value>,
    },
    /// An int attribute is outside its field's range.
    #[error("flow log record attribute {key:?} = {value} is out of range")]
    OutOfRange {
        /// The attribute.
        key: String,
        /// Its value.
        value: i64,
    },
    /// An address attribute is not an IP address.
    #[error("flow log record attribute {key:?} = {value:?} is not an IP address")]
    Address {
        /// The attribute.
        key: String,
        /// Its value.
        value: String,
        /// Why it does not parse.
        #[source]
        source: AddrParseError,
    },
    /// A string attribute is not one of the values its key allows.
    #[error("flow log record attribute {key:?} = {value:?} is not one of {expected}")]
    UnknownValue {
        /// The attribute.
        key: String,
        /// Its value.
        value: String,
        /// What it may be.
        expected: &'static str,
    },
}

fn string(s: &str) -> AnyValue {
    AnyValue {
        value: Some(Value::StringValue(s.to_owned())),
    }
}

fn int(i: i64) -> AnyValue {
    AnyValue {
        value: Some(Value::IntValue(i)),
    }
}

/// An unsigned counter, bit for bit (see [`keys`]).
fn uint(u: u64) -> AnyValue {
    int(u as i64)
}

fn key_value(key: &str, value: AnyValue) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(value),
    }
}

/// Attributes in the order they are written, skipping empty strings.
#[derive(Default)]
struct Attributes(Vec<KeyValue>);

impl Attributes {
    fn put(&mut self, key: &str, value: AnyValue) {
        self.0.push(key_value(key, value));
    }

    fn put_nonempty(&mut self, key: &str, value: &str) {
        if !value.is_empty() {
            self.put(key, string(value));
        }
    }

    fn put_end(&mut self, k: &EndKeys, end: &FlowEnd) {
        if let Some(ip) = end.ip {
            self.put(k.address, string(&ip.to_string()));
        }
        self.put(k.port, int(end.port.into()));
        self.put_nonempty(k.namespace, &end.namespace);
        self.put_nonempty(k.pod, &end.pod);
        self.put_nonempty(k.workload, &end.workload);
        if !end.labels.is_empty() {
            let values = end
                .labels
                .iter()
                .map(|(k, v)| key_value(k, string(v)))
                .collect();
            let list = AnyValue {
                value: Some(Value::KvlistValue(KeyValueList { values })),
            };
            self.put(k.labels, list);
        }
        self.put_nonempty(k.service, &end.service);
        self.put(k.identity, int(end.identity.into()));
    }

    fn put_rule(&mut self, k: &RuleKeys, rule: Option<&RuleRef>) {
        let Some(rule) = rule else { return };
        // The kind is written even when empty: it marks the rule as present.
        self.put(k.kind, string(&rule.kind));
        self.put_nonempty(k.namespace, &rule.namespace);
        self.put(k.name, string(&rule.name));
        self.put_nonempty(k.tier, &rule.tier);
        self.put(k.rule_index, int(rule.rule_index.into()));
    }
}

fn now_unix_nano() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// The log record of one flow: its time is the last-seen time, its severity `INFO` for
/// forwarded flows and `WARN` for dropped and audited ones, its body one line for a person
/// (`forwarded tcp default/client:40000 -> default/web:80`), and its attributes every field of
/// the record under the names in [`keys`].
pub fn to_log_record(record: &FlowRecord) -> LogRecord {
    let mut a = Attributes::default();
    let transport = protocol_name(record.protocol);
    a.put(keys::TRANSPORT, string(&transport));
    match record.family() {
        4 => a.put(keys::NETWORK_TYPE, string("ipv4")),
        6 => a.put(keys::NETWORK_TYPE, string("ipv6")),
        _ => {}
    }
    a.put_end(&keys::SOURCE, &record.src);
    a.put_end(&keys::DESTINATION, &record.dst);
    a.put(keys::VERDICT, string(record.verdict.as_str()));
    a.put(keys::DROP_REASON, int(record.drop_reason.into()));
    a.put_rule(&keys::EGRESS_RULE, record.egress_rule.as_deref());
    a.put_rule(&keys::INGRESS_RULE, record.ingress_rule.as_deref());
    a.put(keys::TCP_FLAGS, int(record.tcp_flags.into()));
    a.put(keys::PACKETS_FORWARD, uint(record.packets_forward));
    a.put(keys::BYTES_FORWARD, uint(record.bytes_forward));
    a.put(keys::PACKETS_REVERSE, uint(record.packets_reverse));
    a.put(keys::BYTES_REVERSE, uint(record.bytes_reverse));
    a.put(
        keys::IS_REPLY,
        AnyValue {
            value: Some(Value::BoolValue(record.is_reply)),
        },
    );
    a.put(keys::COUNT, uint(record.count));
    a.put(keys::FIRST_SEEN_MS, int(record.first_seen_ms));
    let time_unix_nano = u64::try_from(record.last_seen_ms)
        .ok()
        .and_then(|ms| ms.checked_mul(NANOS_PER_MILLI));
    if time_unix_nano.is_none() {
        a.put(keys::LAST_SEEN_MS, int(record.last_seen_ms));
    }
    a.put_nonempty(keys::NODE, &record.node);
    a.put(keys::POINT, string(record.point.as_str()));

    let severity = match record.verdict {
        Verdict::Forwarded => SeverityNumber::Info,
        Verdict::Dropped | Verdict::Audit => SeverityNumber::Warn,
    };
    let body = format!(
        "{} {transport} {} -> {}",
        record.verdict, record.src, record.dst
    );
    LogRecord {
        time_unix_nano: time_unix_nano.unwrap_or(0),
        observed_time_unix_nano: now_unix_nano(),
        severity_number: severity as i32,
        severity_text: if severity == SeverityNumber::Info {
            "INFO"
        } else {
            "WARN"
        }
        .to_owned(),
        body: Some(string(&body)),
        attributes: a.0,
        event_name: keys::EVENT_NAME.to_owned(),
        ..LogRecord::default()
    }
}

/// A log record's attributes by key, for reading fields back.
struct Fields<'a>(HashMap<&'a str, Option<&'a Value>>);

impl<'a> Fields<'a> {
    fn new(attributes: &'a [KeyValue]) -> Result<Self, InvalidLogRecord> {
        let mut map = HashMap::with_capacity(attributes.len());
        for kv in attributes {
            let value = kv.value.as_ref().and_then(|v| v.value.as_ref());
            if map.insert(kv.key.as_str(), value).is_some() {
                return Err(InvalidLogRecord::Duplicate {
                    key: kv.key.clone(),
                });
            }
        }
        Ok(Self(map))
    }

    fn has(&self, key: &str) -> bool {
        self.0.contains_key(key)
    }

    fn get(&self, key: &str) -> Result<Option<&'a Value>, InvalidLogRecord> {
        match self.0.get(key) {
            Some(value) => Ok(*value),
            None => Err(InvalidLogRecord::Missing {
                key: key.to_owned(),
            }),
        }
    }

    fn wrong(key: &str, expected: &'static str, value: Option<&Value>) -> InvalidLogRecord {
        InvalidLogRecord::WrongType {
            key: key.to_owned(),
            expected,
            value: value.cloned(),
        }
    }

    fn string(&self, key: &str) -> Result<&'a str, InvalidLogRecord> {
        match self.get(key)? {
            Some(Value::StringValue(s)) => Ok(s),
            other => Err(Self::wrong(key, "a string", other)),
        }
    }

    /// A string that is written only when non-empty.
    fn string_or_empty(&self, key: &str) -> Result<String, InvalidLogRecord> {
        if self.has(key) {
            self.string(key).map(str::to_owned)
        } else {
            Ok(String::new())
        }
    }

    fn int(&self, key: &str) -> Result<i64, InvalidLogRecord> {
        match self.get(key)? {
            Some(Value::IntValue(i)) => Ok(*i),
            other => Err(Self::wrong(key, "an int", other)),
        }
    }

    /// An int that must fit the field's type.
    fn int_as<T: TryFrom<i64>>(&self, key: &str) -> Result<T, InvalidLogRecord> {
        let value = self.int(key)?;
        T::try_from(value).map_err(|_| InvalidLogRecord::OutOfRange {
            key: key.to_owned(),
            value,
        })
    }

    /// An unsigned counter, bit for bit (see [`keys`]).
    fn uint(&self, key: &str) -> Result<u64, InvalidLogRecord> {
        self.int(key).map(|i| i as u64)
    }

    fn bool(&self, key: &str) -> Result<bool, InvalidLogRecord> {
        match self.get(key)? {
            Some(Value::BoolValue(b)) => Ok(*b),
            other => Err(Self::wrong(key, "a bool", other)),
        }
    }

    fn labels(&self, key: &str) -> Result<BTreeMap<String, String>, InvalidLogRecord> {
        let mut labels = BTreeMap::new();
        if !self.has(key) {
            return Ok(labels);
        }
        let list = match self.get(key)? {
            Some(Value::KvlistValue(list)) => list,
            other => return Err(Self::wrong(key, "a key-value list", other)),
        };
        for kv in &list.values {
            let label_key = || format!("{key}[{:?}]", kv.key);
            let value = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(Value::StringValue(s)) => s.clone(),
                other => return Err(Self::wrong(&label_key(), "a string", other)),
            };
            if labels.insert(kv.key.clone(), value).is_some() {
                return Err(InvalidLogRecord::Duplicate { key: label_key() });
            }
        }
        Ok(labels)
    }

    fn end(&self, k: &EndKeys) -> Result<FlowEnd, InvalidLogRecord> {
        let ip = if self.has(k.address) {
            let text = self.string(k.address)?;
            Some(text.parse().map_err(|source| InvalidLogRecord::Address {
                key: k.address.to_owned(),
                value: text.to_owned(),
                source,
            })?)
        } else {
            None
        };
        Ok(FlowEnd {
            ip,
            port: self.int_as(k.port)?,
            namespace: self.string_or_empty(k.namespace)?.into(),
            pod: self.string_or_empty(k.pod)?.into(),
            workload: self.string_or_empty(k.workload)?.into(),
            labels: self.labels(k.labels)?.into(),
            identity: self.int_as(k.identity)?,
            service: self.string_or_empty(k.service)?.into(),
        })
    }

    fn rule(&self, k: &RuleKeys) -> Result<Option<Arc<RuleRef>>, InvalidLogRecord> {
        if !self.has(k.kind) {
            return Ok(None);
        }
        Ok(Some(Arc::new(RuleRef {
            kind: self.string(k.kind)?.to_owned(),
            namespace: self.string_or_empty(k.namespace)?,
            name: self.string(k.name)?.to_owned(),
            tier: self.string_or_empty(k.tier)?,
            rule_index: self.int_as(k.rule_index)?,
        })))
    }

    fn protocol(&self) -> Result<u8, InvalidLogRecord> {
        let name = self.string(keys::TRANSPORT)?;
        parse_protocol(keys::TRANSPORT, name).map_err(|_| InvalidLogRecord::UnknownValue {
            key: keys::TRANSPORT.to_owned(),
            value: name.to_owned(),
            expected: "icmp, tcp, udp, icmpv6, sctp or a protocol number",
        })
    }

    fn verdict(&self) -> Result<Verdict, InvalidLogRecord> {
        let name = self.string(keys::VERDICT)?;
        [Verdict::Forwarded, Verdict::Dropped, Verdict::Audit]
            .into_iter()
            .find(|v| v.as_str() == name)
            .ok_or_else(|| InvalidLogRecord::UnknownValue {
                key: keys::VERDICT.to_owned(),
                value: name.to_owned(),
                expected: "forwarded, dropped or audit",
            })
    }

    fn point(&self) -> Result<Point, InvalidLogRecord> {
        let name = self.string(keys::POINT)?;
        [Point::FromPod, Point::ToPod]
            .into_iter()
            .find(|p| p.as_str() == name)
            .ok_or_else(|| InvalidLogRecord::UnknownValue {
                key: keys::POINT.to_owned(),
                value: name.to_owned(),
                expected: "from-pod or to-pod",
            })
    }
}

/// The flow record a [`to_log_record`] log record carries: exactly the record it was made from.
/// The body, severity, observed time and `network.type` are for people and are not read back;
/// attributes this module does not write are ignored.
pub fn from_log_record(log: &LogRecord) -> Result<FlowRecord, InvalidLogRecord> {
    let f = Fields::new(&log.attributes)?;
    let last_seen_ms = if f.has(keys::LAST_SEEN_MS) {
        f.int(keys::LAST_SEEN_MS)?
    } else {
        // u64::MAX / 10^6 fits an i64.
        (log.time_unix_nano / NANOS_PER_MILLI) as i64
    };
    Ok(FlowRecord {
        first_seen_ms: f.int(keys::FIRST_SEEN_MS)?,
        last_seen_ms,
        node: f.string_or_empty(keys::NODE)?.into(),
        point: f.point()?,
        protocol: f.protocol()?,
        src: f.end(&keys::SOURCE)?,
        dst: f.end(&keys::DESTINATION)?,
        verdict: f.verdict()?,
        drop_reason: f.int_as(keys::DROP_REASON)?,
        egress_rule: f.rule(&keys::EGRESS_RULE)?,
        ingress_rule: f.rule(&keys::INGRESS_RULE)?,
        tcp_flags: f.int_as(keys::TCP_FLAGS)?,
        packets_forward: f.uint(keys::PACKETS_FORWARD)?,
        bytes_forward: f.uint(keys::BYTES_FORWARD)?,
        packets_reverse: f.uint(keys::PACKETS_REVERSE)?,
        bytes_reverse: f.uint(keys::BYTES_REVERSE)?,
        is_reply: f.bool(keys::IS_REPLY)?,
        count: f.uint(keys::COUNT)?,
    })
}

/// The resource flow logs are sent under: `service.name` = `septum`, the crate's
/// `service.version`, and the exporting node as `host.name` and `k8s.node.name` (omitted when
/// empty).
pub fn resource(node: &str) -> Resource {
    let mut a = Attributes::default();
    a.put("service.name", string(SERVICE_NAME));
    a.put("service.version", string(env!("CARGO_PKG_VERSION")));
    a.put_nonempty("host.name", node);
    a.put_nonempty("k8s.node.name", node);
    Resource {
        attributes: a.0,
        ..Resource::default()
    }
}

/// One export request: `records` as log records under `resource` and the [`SCOPE_NAME`] scope.
pub fn export_request(resource: &Resource, records: &[FlowRecord]) -> ExportLogsServiceRequest {
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(resource.clone()),
            scope_logs: vec![ScopeLogs {
                scope: Some(InstrumentationScope {
                    name: SCOPE_NAME.to_owned(),
                    version: env!("CARGO_PKG_VERSION").to_owned(),
                    ..InstrumentationScope::default()
                }),
                log_records: records.iter().map(to_log_record).collect(),
                ..ScopeLogs::default()
            }],
            ..ResourceLogs::default()
        }],
    }
}

/// The flow records of an export request, in order: every log record under a [`SCOPE_NAME`]
/// scope (other scopes, which a collector may have merged in, are skipped).
pub fn records_from_request(
    request: &ExportLogsServiceRequest,
) -> Result<Vec<FlowRecord>, InvalidLogRecord> {
    request
        .resource_logs
        .iter()
        .flat_map(|r| &r.scope_logs)
        .filter(|s| s.scope.as_ref().is_some_and(|s| s.name == SCOPE_NAME))
        .flat_map(|s| &s.log_records)
        .map(from_log_record)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> FlowRecord {
        FlowRecord {
            first_seen_ms: 1_700_000_000_000,
            last_seen_ms: 1_700_000_000_500,
            node: "n1".into(),
            point: Point::FromPod,
            protocol: 6,
            src: FlowEnd {
                ip: Some("10.0.0.1".parse().unwrap()),
                port: 40000,
                namespace: "default".into(),
                pod: "client".into(),
                ..FlowEnd::default()
            },
            dst: FlowEnd {
                ip: Some("10.0.0.2".parse().unwrap()),
                port: 80,
                namespace: "default".into(),
                pod: "web".into(),
                ..FlowEnd::default()
            },
            verdict: Verdict::Forwarded,
            drop_reason: 0,
            egress_rule: None,
            ingress_rule: None,
            tcp_flags: 0x12,
            packets_forward: 3,
            bytes_forward: 180,
            packets_reverse: 2,
            bytes_reverse: 120,
            is_reply: false,
            count: 1,
        }
    }

    fn attribute<'a>(log: &'a LogRecord, key: &str) -> Option<&'a Value> {
        log.attributes
            .iter()
            .find(|kv| kv.key == key)
            .and_then(|kv| kv.value.as_ref()?.value.as_ref())
    }

    #[test]
    fn a_forwarded_flow_reads_as_a_line_for_a_person() {
        let log = to_log_record(&record());
        assert_eq!(
            log.body,
            Some(string(
                "forwarded tcp default/client:40000 -> default/web:80"
            ))
        );
        assert_eq!(log.severity_number, SeverityNumber::Info as i32);
        assert_eq!(log.time_unix_nano, 1_700_000_000_500 * NANOS_PER_MILLI);
        assert!(log.observed_time_unix_nano > 0);
        assert_eq!(
            attribute(&log, "source.address"),
            Some(&Value::StringValue("10.0.0.1".into()))
        );
        assert_eq!(
            attribute(&log, "network.type"),
            Some(&Value::StringValue("ipv4".into()))
        );
        assert_eq!(from_log_record(&log).unwrap(), record());
    }

    #[test]
    fn a_dropped_flow_outside_the_cluster_warns() {
        let mut r = record();
        r.verdict = Verdict::Dropped;
        r.protocol = 253;
        r.dst = FlowEnd {
            ip: Some("2001:db8::1".parse().unwrap()),
            port: 443,
            ..FlowEnd::default()
        };
        let log = to_log_record(&r);
        assert_eq!(log.severity_number, SeverityNumber::Warn as i32);
        assert_eq!(
            log.body,
            Some(string(
                "dropped 253 default/client:40000 -> [2001:db8::1]:443"
            ))
        );
        assert_eq!(from_log_record(&log).unwrap(), r);
    }

    #[test]
    fn hostile_attributes_are_named_in_the_error() {
        let log = to_log_record(&record());
        let mut missing = log.clone();
        missing.attributes.retain(|kv| kv.key != keys::VERDICT);
        assert!(matches!(
            from_log_record(&missing),
            Err(InvalidLogRecord::Missing { key }) if key == keys::VERDICT
        ));

        let mut twice = log.clone();
        twice.attributes.push(key_value(keys::COUNT, int(2)));
        assert!(matches!(
            from_log_record(&twice),
            Err(InvalidLogRecord::Duplicate { key }) if key == keys::COUNT
        ));

        let mut wide = log.clone();
        wide.attributes
            .iter_mut()
            .find(|kv| kv.key == keys::SOURCE.port)
            .unwrap()
            .value = Some(int(70_000));
        let err = from_log_record(&wide).unwrap_err();
        assert_eq!(
            err.to_string(),
            "flow log record attribute \"source.port\" = 70000 is out of range"
        );

        let mut bad_ip = log.clone();
        bad_ip
            .attributes
            .iter_mut()
            .find(|kv| kv.key == keys::DESTINATION.address)
            .unwrap()
            .value = Some(string("10.0.0.300"));
        assert!(matches!(
            from_log_record(&bad_ip),
            Err(InvalidLogRecord::Address { value, .. }) if value == "10.0.0.300"
        ));

        let mut typed = log;
        typed
            .attributes
            .iter_mut()
            .find(|kv| kv.key == keys::IS_REPLY)
            .unwrap()
            .value = Some(string("true"));
        assert!(matches!(
            from_log_record(&typed),
            Err(InvalidLogRecord::WrongType {
                expected: "a bool",
                ..
            })
        ));
    }

    #[test]
    fn resource_and_scope_name_the_service_and_node() {
        let request = export_request(&resource("node-a"), &[record()]);
        let rl = &request.resource_logs[0];
        let attrs = &rl.resource.as_ref().unwrap().attributes;
        let get = |k: &str| attrs.iter().find(|kv| kv.key == k).unwrap().value.clone();
        assert_eq!(get("service.name"), Some(string("septum")));
        assert_eq!(get("host.name"), Some(string("node-a")));
        assert_eq!(get("k8s.node.name"), Some(string("node-a")));
        assert_eq!(
            rl.scope_logs[0].scope.as_ref().unwrap().name,
            "septum.flows"
        );
        assert_eq!(records_from_request(&request).unwrap(), vec![record()]);
    }
}
