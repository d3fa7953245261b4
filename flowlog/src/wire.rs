//! The flow API's wire types (`septum.flow.v1`) and this crate's types, converted at the edge:
//! records and aggregates both ways, and requests into validated [`Query`]s. A malformed request
//! fails here with a [`FilterError`] naming the field (as the CLI flag, without dashes), before
//! anything reaches the store.

use std::net::IpAddr;
use std::sync::Arc;

use septum_proto::flow::v1 as pb;

use crate::filter::{FilterError, FlowFilter, LabelMatch, MAX_VALUES, Named, Prefix, Query};
use crate::record::{FlowEnd, FlowRecord, Point, RuleRef, Verdict};
use crate::store::{Denied, Edge, Talker};

/// Records a `GetFlows` returns when the request names no number.
pub const DEFAULT_NUMBER: u32 = 1000;
/// The most records one `GetFlows` returns from the store.
pub const MAX_NUMBER: u32 = 100_000;
/// Pairs a `TopTalkers` returns when the request names no number.
pub const DEFAULT_TOP: u32 = 10;
/// The most pairs one `TopTalkers` returns.
pub const MAX_TOP: u32 = 1000;

fn invalid(field: &'static str, message: impl Into<String>) -> FilterError {
    FilterError::Invalid {
        field,
        message: message.into(),
    }
}

/// The stable name of a drop-reason code (`policy-deny`), or the number for an unknown one.
pub fn drop_reason_name(code: u8) -> String {
    septum_datapath_common::DropReason::from_u8(code)
        .map_or_else(|| code.to_string(), |r| r.as_str().to_string())
}

/// A drop reason by name or code.
pub fn parse_drop_reason(field: &'static str, s: &str) -> Result<u8, FilterError> {
    if let Ok(n) = s.parse::<u8>() {
        return Ok(n);
    }
    (0..=u8::MAX)
        .find(|c| septum_datapath_common::DropReason::from_u8(*c).is_some_and(|r| r.as_str() == s))
        .ok_or_else(|| {
            invalid(
                field,
                format!(
                    "{s:?} is not a drop reason (policy-deny, policy-default-deny, \
                     endpoint-not-ready, unknown-endpoint, fragment-unknown, malformed, or a code)"
                ),
            )
        })
}

/// The name of an IP protocol number (`tcp`), or the number.
pub fn protocol_name(p: u8) -> String {
    match p {
        1 => "icmp".into(),
        6 => "tcp".into(),
        17 => "udp".into(),
        58 => "icmpv6".into(),
        132 => "sctp".into(),
        n => n.to_string(),
    }
}

/// An IP protocol by name or number.
pub fn parse_protocol(field: &'static str, s: &str) -> Result<u8, FilterError> {
    match s.to_ascii_lowercase().as_str() {
        "icmp" => Ok(1),
        "tcp" => Ok(6),
        "udp" => Ok(17),
        "icmpv6" | "ipv6-icmp" => Ok(58),
        "sctp" => Ok(132),
        n => n.parse::<u8>().map_err(|_| {
            invalid(
                field,
                format!("{s:?} is not a protocol (tcp, udp, sctp, icmp, icmpv6 or a number)"),
            )
        }),
    }
}

/// A node name: a DNS-1123 subdomain, as the API server checks Node names.
pub fn parse_node(field: &'static str, s: &str) -> Result<String, FilterError> {
    let ok = !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|part| {
            !part.is_empty()
                && part
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                && !part.starts_with('-')
                && !part.ends_with('-')
        });
    if ok {
        Ok(s.to_string())
    } else {
        Err(invalid(
            field,
            format!("{s:?} is not a node name (a DNS-1123 subdomain of at most 253 characters)"),
        ))
    }
}

fn each<T>(
    field: &'static str,
    values: &[String],
    parse: impl Fn(&'static str, &str) -> Result<T, FilterError>,
) -> Result<Vec<T>, FilterError> {
    if values.len() > MAX_VALUES {
        return Err(invalid(
            field,
            format!("{} values; at most {MAX_VALUES}", values.len()),
        ));
    }
    values.iter().map(|v| parse(field, v.trim())).collect()
}

fn ports(field: &'static str, values: &[u32]) -> Result<Vec<u16>, FilterError> {
    if values.len() > MAX_VALUES {
        return Err(invalid(
            field,
            format!("{} values; at most {MAX_VALUES}", values.len()),
        ));
    }
    values
        .iter()
        .map(|p| {
            u16::try_from(*p).map_err(|_| invalid(field, format!("{p} is not a port (0..=65535)")))
        })
        .collect()
}

fn labels(field: &'static str, values: &[String]) -> Result<Vec<LabelMatch>, FilterError> {
    let terms: Vec<String> = values
        .iter()
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_string)
        .collect();
    each(field, &terms, LabelMatch::parse)
}

fn verdicts(field: &'static str, values: &[i32]) -> Result<Vec<Verdict>, FilterError> {
    if values.len() > MAX_VALUES {
        return Err(invalid(
            field,
            format!("{} values; at most {MAX_VALUES}", values.len()),
        ));
    }
    values
        .iter()
        .map(|v| match pb::Verdict::try_from(*v) {
            Ok(pb::Verdict::Forwarded) => Ok(Verdict::Forwarded),
            Ok(pb::Verdict::Dropped) => Ok(Verdict::Dropped),
            Ok(pb::Verdict::Audit) => Ok(Verdict::Audit),
            _ => Err(invalid(field, format!("{v} is not a verdict"))),
        })
        .collect()
}

impl TryFrom<&pb::FlowFilter> for FlowFilter {
    type Error = FilterError;

    fn try_from(f: &pb::FlowFilter) -> Result<Self, FilterError> {
        Ok(Self {
            from_pod: each("from-pod", &f.source_pod, Named::parse)?,
            to_pod: each("to-pod", &f.destination_pod, Named::parse)?,
            pod: each("pod", &f.pod, Named::parse)?,
            from_namespace: each(
                "from-namespace",
                &f.source_namespace,
                crate::filter::namespace,
            )?,
            to_namespace: each(
                "to-namespace",
                &f.destination_namespace,
                crate::filter::namespace,
            )?,
            namespace: each("namespace", &f.namespace, crate::filter::namespace)?,
            from_ip: each("from-ip", &f.source_ip, Prefix::parse)?,
            to_ip: each("to-ip", &f.destination_ip, Prefix::parse)?,
            ip: each("ip", &f.ip, Prefix::parse)?,
            from_label: labels("from-label", &f.source_label)?,
            to_label: labels("to-label", &f.destination_label)?,
            to_service: each("to-service", &f.destination_service, |field, s| {
                let n = Named::parse(field, s)?;
                if n.namespace.is_none() {
                    // Service names are DNS labels; Named accepts subdomains.
                    crate::filter::namespace(field, &n.name)?;
                }
                Ok(n)
            })?,
            port: ports("port", &f.port)?,
            to_port: ports("to-port", &f.destination_port)?,
            protocol: each("protocol", &f.protocol, parse_protocol)?,
            verdict: verdicts("verdict", &f.verdict)?,
            drop_reason: each("drop-reason", &f.drop_reason, parse_drop_reason)?,
            policy: each("policy", &f.policy, Named::parse)?,
            node: each("node", &f.node, parse_node)?,
        })
    }
}

/// The store query a wire query asks for; `number` and `first` bound the result.
pub fn query(
    q: Option<&pb::Query>,
    number: Option<u32>,
    first: bool,
) -> Result<Query, FilterError> {
    let empty = pb::Query::default();
    let q = q.unwrap_or(&empty);
    let time = |field: &'static str, ms: i64| -> Result<Option<i64>, FilterError> {
        match ms {
            0 => Ok(None),
            n if n < 0 => Err(invalid(field, format!("{n}: must not be negative"))),
            n => Ok(Some(n)),
        }
    };
    let out = Query {
        include: q
            .include
            .iter()
            .map(FlowFilter::try_from)
            .collect::<Result<_, _>>()?,
        exclude: q
            .exclude
            .iter()
            .map(FlowFilter::try_from)
            .collect::<Result<_, _>>()?,
        since_ms: time("since", q.since_unix_ms)?,
        until_ms: time("until", q.until_unix_ms)?,
        limit: number,
        first,
    };
    if let (Some(s), Some(u)) = (out.since_ms, out.until_ms)
        && s > u
    {
        return Err(invalid("until", "must not be before since"));
    }
    out.check()?;
    Ok(out)
}

/// The number of records a `GetFlows` asks for, bounded.
pub fn flows_number(n: u32) -> Result<u32, FilterError> {
    match n {
        0 => Ok(DEFAULT_NUMBER),
        n if n > MAX_NUMBER => Err(invalid("last", format!("{n}: at most {MAX_NUMBER}"))),
        n => Ok(n),
    }
}

/// The number of pairs a `TopTalkers` asks for, bounded.
pub fn top_number(n: u32) -> Result<u32, FilterError> {
    match n {
        0 => Ok(DEFAULT_TOP),
        n if n > MAX_TOP => Err(invalid("number", format!("{n}: at most {MAX_TOP}"))),
        n => Ok(n),
    }
}

/// A duration such as `90s`, `15m`, `1h30m`, `7d` or `500ms`, in milliseconds. A bare number
/// is seconds; `0` is zero.
pub fn parse_duration(field: &'static str, s: &str) -> Result<i64, FilterError> {
    let err = || {
        invalid(
            field,
            format!("{s:?} is not a duration (such as 90s, 15m, 1h30m, 7d)"),
        )
    };
    let s = s.trim();
    if s.is_empty() || s.len() > 32 {
        return Err(err());
    }
    if let Ok(n) = s.parse::<i64>() {
        return n.checked_mul(1000).filter(|v| *v >= 0).ok_or_else(err);
    }
    let mut total: i64 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(err());
        }
        let n: i64 = rest[..digits].parse().map_err(|_| err())?;
        rest = &rest[digits..];
        let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let unit = match &rest[..unit_len] {
            "ms" => 1,
            "s" => 1000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "w" => 7 * 86_400_000,
            _ => return Err(err()),
        };
        rest = &rest[unit_len..];
        total = n
            .checked_mul(unit)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(err)?;
    }
    Ok(total)
}

fn end_to_wire(e: &FlowEnd) -> pb::Endpoint {
    pb::Endpoint {
        ip: e.ip.map(|ip| ip.to_string()).unwrap_or_default(),
        port: u32::from(e.port),
        namespace: e.namespace.to_string(),
        pod: e.pod.to_string(),
        workload: e.workload.to_string(),
        labels: e
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        identity: e.identity,
        service: e.service.to_string(),
    }
}

fn rule_to_wire(r: &RuleRef) -> pb::Rule {
    pb::Rule {
        kind: r.kind.clone(),
        namespace: r.namespace.clone(),
        name: r.name.clone(),
        tier: r.tier.clone(),
        rule_index: r.rule_index,
    }
}

impl From<&FlowRecord> for pb::Flow {
    fn from(r: &FlowRecord) -> Self {
        Self {
            first_seen_unix_ms: r.first_seen_ms,
            last_seen_unix_ms: r.last_seen_ms,
            node: r.node.to_string(),
            point: match r.point {
                Point::FromPod => pb::ObservationPoint::FromPod,
                Point::ToPod => pb::ObservationPoint::ToPod,
            } as i32,
            ip_family: u32::from(r.family()),
            protocol: u32::from(r.protocol),
            source: Some(end_to_wire(&r.src)),
            destination: Some(end_to_wire(&r.dst)),
            verdict: match r.verdict {
                Verdict::Forwarded => pb::Verdict::Forwarded,
                Verdict::Dropped => pb::Verdict::Dropped,
                Verdict::Audit => pb::Verdict::Audit,
            } as i32,
            drop_reason: u32::from(r.drop_reason),
            drop_reason_name: if r.drop_reason == 0 {
                String::new()
            } else {
                drop_reason_name(r.drop_reason)
            },
            egress_rule: r.egress_rule.as_deref().map(rule_to_wire),
            ingress_rule: r.ingress_rule.as_deref().map(rule_to_wire),
            tcp_flags: u32::from(r.tcp_flags),
            packets_forward: r.packets_forward,
            bytes_forward: r.bytes_forward,
            packets_reverse: r.packets_reverse,
            bytes_reverse: r.bytes_reverse,
            is_reply: r.is_reply,
            count: r.count,
        }
    }
}

/// A wire record the server sent that this client cannot read.
#[derive(Debug, thiserror::Error)]
#[error("malformed flow from the server: {0}")]
pub struct MalformedFlow(String);

fn end_from_wire(e: Option<&pb::Endpoint>) -> Result<FlowEnd, MalformedFlow> {
    let Some(e) = e else {
        return Ok(FlowEnd::default());
    };
    Ok(FlowEnd {
        ip: if e.ip.is_empty() {
            None
        } else {
            Some(
                e.ip.parse::<IpAddr>()
                    .map_err(|_| MalformedFlow(format!("address {:?}", e.ip)))?,
            )
        },
        port: u16::try_from(e.port).map_err(|_| MalformedFlow(format!("port {}", e.port)))?,
        namespace: e.namespace.as_str().into(),
        pod: e.pod.as_str().into(),
        workload: e.workload.as_str().into(),
        labels: e
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        identity: e.identity,
        service: e.service.as_str().into(),
    })
}

fn rule_from_wire(r: &pb::Rule) -> RuleRef {
    RuleRef {
        kind: r.kind.clone(),
        namespace: r.namespace.clone(),
        name: r.name.clone(),
        tier: r.tier.clone(),
        rule_index: r.rule_index,
    }
}

impl TryFrom<&pb::Flow> for FlowRecord {
    type Error = MalformedFlow;

    fn try_from(f: &pb::Flow) -> Result<Self, MalformedFlow> {
        let small =
            |what: &str, v: u32| u8::try_from(v).map_err(|_| MalformedFlow(format!("{what} {v}")));
        Ok(Self {
            first_seen_ms: f.first_seen_unix_ms,
            last_seen_ms: f.last_seen_unix_ms,
            node: f.node.as_str().into(),
            point: match pb::ObservationPoint::try_from(f.point) {
                Ok(pb::ObservationPoint::FromPod) => Point::FromPod,
                Ok(pb::ObservationPoint::ToPod) => Point::ToPod,
                _ => return Err(MalformedFlow(format!("observation point {}", f.point))),
            },
            protocol: small("protocol", f.protocol)?,
            src: end_from_wire(f.source.as_ref())?,
            dst: end_from_wire(f.destination.as_ref())?,
            verdict: match pb::Verdict::try_from(f.verdict) {
                Ok(pb::Verdict::Forwarded) => Verdict::Forwarded,
                Ok(pb::Verdict::Dropped) => Verdict::Dropped,
                Ok(pb::Verdict::Audit) => Verdict::Audit,
                _ => return Err(MalformedFlow(format!("verdict {}", f.verdict))),
            },
            drop_reason: small("drop reason", f.drop_reason)?,
            egress_rule: f.egress_rule.as_ref().map(rule_from_wire).map(Arc::new),
            ingress_rule: f.ingress_rule.as_ref().map(rule_from_wire).map(Arc::new),
            tcp_flags: small("tcp flags", f.tcp_flags)?,
            packets_forward: f.packets_forward,
            bytes_forward: f.bytes_forward,
            packets_reverse: f.packets_reverse,
            bytes_reverse: f.bytes_reverse,
            is_reply: f.is_reply,
            count: f.count,
        })
    }
}

impl From<&Talker> for pb::Talker {
    fn from(t: &Talker) -> Self {
        Self {
            source: t.from.clone(),
            destination: t.to.clone(),
            flows: t.flows,
            bytes: t.bytes,
        }
    }
}

impl From<&pb::Talker> for Talker {
    fn from(t: &pb::Talker) -> Self {
        Self {
            from: t.source.clone(),
            to: t.destination.clone(),
            flows: t.flows,
            bytes: t.bytes,
        }
    }
}

impl From<&Edge> for pb::Edge {
    fn from(e: &Edge) -> Self {
        Self {
            source: e.from.clone(),
            destination: e.to.clone(),
            port: u32::from(e.port),
            protocol: u32::from(e.protocol),
            forwarded: e.forwarded,
            dropped: e.dropped,
            audit: e.audit,
            bytes: e.bytes,
        }
    }
}

impl TryFrom<&pb::Edge> for Edge {
    type Error = MalformedFlow;

    fn try_from(e: &pb::Edge) -> Result<Self, MalformedFlow> {
        Ok(Self {
            from: e.source.clone(),
            to: e.destination.clone(),
            port: u16::try_from(e.port).map_err(|_| MalformedFlow(format!("port {}", e.port)))?,
            protocol: u8::try_from(e.protocol)
                .map_err(|_| MalformedFlow(format!("protocol {}", e.protocol)))?,
            forwarded: e.forwarded,
            dropped: e.dropped,
            audit: e.audit,
            bytes: e.bytes,
        })
    }
}

impl From<&Denied> for pb::DeniedPolicy {
    fn from(d: &Denied) -> Self {
        Self {
            policy: d.policy.clone(),
            flows: d.flows,
            events: d.events,
        }
    }
}

impl From<&pb::DeniedPolicy> for Denied {
    fn from(d: &pb::DeniedPolicy) -> Self {
        Self {
            policy: d.policy.clone(),
            flows: d.flows,
            events: d.events,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> FlowRecord {
        FlowRecord {
            first_seen_ms: 1_700_000_000_000,
            last_seen_ms: 1_700_000_000_500,
            node: "node-a".into(),
            point: Point::ToPod,
            protocol: 6,
            src: FlowEnd {
                ip: Some("10.0.0.1".parse().unwrap()),
                port: 40000,
                namespace: "default".into(),
                pod: "client".into(),
                workload: "Deployment/client".into(),
                labels: [("app".to_string(), "client".to_string())].into(),
                identity: 300,
                service: crate::Name::EMPTY,
            },
            dst: FlowEnd {
                ip: Some("fd00::2".parse().unwrap()),
                port: 80,
                service: "default/web".into(),
                ..FlowEnd::default()
            },
            verdict: Verdict::Dropped,
            drop_reason: 2,
            egress_rule: None,
            ingress_rule: Some(Arc::new(RuleRef {
                kind: "NetworkPolicy".into(),
                namespace: "default".into(),
                name: "web".into(),
                tier: String::new(),
                rule_index: -1,
            })),
            tcp_flags: 2,
            packets_forward: 3,
            bytes_forward: 180,
            packets_reverse: 0,
            bytes_reverse: 0,
            is_reply: false,
            count: 3,
        }
    }

    #[test]
    fn a_record_survives_the_wire() {
        let r = record();
        let w = pb::Flow::from(&r);
        assert_eq!(w.drop_reason_name, "policy-default-deny");
        assert_eq!(FlowRecord::try_from(&w).unwrap(), r);
    }

    #[test]
    fn a_malformed_wire_record_is_an_error_not_a_panic() {
        let mut w = pb::Flow::from(&record());
        w.protocol = 300;
        assert!(FlowRecord::try_from(&w).is_err());
        let mut w = pb::Flow::from(&record());
        w.source.as_mut().unwrap().ip = "not-an-ip".into();
        assert!(FlowRecord::try_from(&w).is_err());
        let mut w = pb::Flow::from(&record());
        w.verdict = 42;
        assert!(FlowRecord::try_from(&w).is_err());
    }

    #[test]
    fn filters_are_validated_with_the_flag_name() {
        let f = pb::FlowFilter {
            source_pod: vec!["default/client".into()],
            destination_label: vec!["app=web,tier=fe".into()],
            protocol: vec!["TCP".into(), "132".into()],
            drop_reason: vec!["policy-deny".into()],
            verdict: vec![pb::Verdict::Dropped as i32],
            ..pb::FlowFilter::default()
        };
        let ff = FlowFilter::try_from(&f).unwrap();
        assert_eq!(ff.to_label.len(), 2);
        assert_eq!(ff.protocol, vec![6, 132]);
        assert_eq!(ff.drop_reason, vec![1]);

        let bad = |f: pb::FlowFilter| FlowFilter::try_from(&f).unwrap_err().to_string();
        assert!(
            bad(pb::FlowFilter {
                source_pod: vec!["x' OR 1=1 --".into()],
                ..Default::default()
            })
            .starts_with("from-pod:")
        );
        assert!(
            bad(pb::FlowFilter {
                destination_port: vec![70000],
                ..Default::default()
            })
            .starts_with("to-port:")
        );
        assert!(
            bad(pb::FlowFilter {
                verdict: vec![9],
                ..Default::default()
            })
            .starts_with("verdict:")
        );
        assert!(
            bad(pb::FlowFilter {
                node: vec!["Node_A".into()],
                ..Default::default()
            })
            .starts_with("node:")
        );
        assert!(
            bad(pb::FlowFilter {
                pod: vec!["a".repeat(1 << 20)],
                ..Default::default()
            })
            .starts_with("pod:")
        );
        assert!(
            bad(pb::FlowFilter {
                port: vec![1; MAX_VALUES + 1],
                ..Default::default()
            })
            .starts_with("port:")
        );
    }

    #[test]
    fn durations_parse_like_people_write_them() {
        assert_eq!(parse_duration("since", "90s").unwrap(), 90_000);
        assert_eq!(parse_duration("since", "1h30m").unwrap(), 5_400_000);
        assert_eq!(parse_duration("since", "7d").unwrap(), 604_800_000);
        assert_eq!(parse_duration("since", "250ms").unwrap(), 250);
        assert_eq!(parse_duration("since", "5").unwrap(), 5000);
        for bad in ["", "h", "1y", "-5", "1h-", "99999999999999999999h", "1.5h"] {
            assert!(parse_duration("since", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn query_bounds_are_checked() {
        let q = pb::Query {
            since_unix_ms: 10,
            until_unix_ms: 5,
            ..Default::default()
        };
        assert!(query(Some(&q), None, false).is_err());
        let q = pb::Query {
            include: vec![pb::FlowFilter::default(); 100],
            ..Default::default()
        };
        assert!(query(Some(&q), None, false).is_err());
        assert_eq!(flows_number(0).unwrap(), DEFAULT_NUMBER);
        assert!(flows_number(MAX_NUMBER + 1).is_err());
        assert!(top_number(MAX_TOP + 1).is_err());
    }
}
