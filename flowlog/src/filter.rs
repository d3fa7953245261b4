//! Flow filters in the spirit of `hubble observe`: a query has include filters (a flow matches
//! when any include matches, or there are none) and exclude filters (a flow matching any exclude
//! is left out). Within one filter every field set must match (AND); within one field any of its
//! values may (OR).
//!
//! Every value is validated here (names as the API server validates them, addresses, prefixes,
//! bounded sizes) and reaches SQL only as a bound parameter: [`Filter::to_sql`] emits column
//! names and `?` placeholders, never text from the filter.

use std::net::IpAddr;

use rusqlite::types::Value;

use crate::record::{FlowEnd, FlowRecord, RuleRef, Verdict};

/// Why a filter was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FilterError {
    /// A field's value is not valid.
    #[error("{field}: {message}")]
    Invalid {
        /// The filter field (the CLI flag without dashes).
        field: &'static str,
        /// What is wrong.
        message: String,
    },
}

fn invalid(field: &'static str, message: impl Into<String>) -> FilterError {
    FilterError::Invalid {
        field,
        message: message.into(),
    }
}

/// The most values one field may hold.
pub const MAX_VALUES: usize = 256;
/// The most filters one query may hold (includes plus excludes).
pub const MAX_FILTERS: usize = 64;

/// An address prefix, stored as the range of 16-byte keys it covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Prefix {
    /// First address (host bits cleared).
    pub addr: IpAddr,
    /// Prefix length.
    pub len: u8,
}

impl Prefix {
    /// Parses `ADDR` (a host prefix) or `ADDR/LEN`.
    pub fn parse(field: &'static str, s: &str) -> Result<Self, FilterError> {
        let (a, l) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let addr: IpAddr = a
            .parse()
            .map_err(|_| invalid(field, format!("{s:?} is not an IP address or prefix")))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len =
            match l {
                None => max,
                Some(l) => l.parse::<u8>().ok().filter(|n| *n <= max).ok_or_else(|| {
                    invalid(field, format!("{s:?}: prefix length must be 0..={max}"))
                })?,
            };
        Ok(Self {
            addr: mask(addr, len),
            len,
        })
    }

    /// The lowest and highest stored keys inside the prefix.
    pub fn range(&self) -> ([u8; 16], [u8; 16]) {
        let lo = ip_key(self.addr);
        let host_bits = if self.addr.is_ipv4() {
            32 - u32::from(self.len)
        } else {
            128 - u32::from(self.len)
        };
        let n = u128::from_be_bytes(lo);
        let hi = if host_bits >= 128 {
            u128::MAX
        } else {
            n | ((1u128 << host_bits) - 1)
        };
        (lo, hi.to_be_bytes())
    }
}

fn mask(addr: IpAddr, len: u8) -> IpAddr {
    match addr {
        IpAddr::V4(v4) => {
            let m = if len == 0 { 0 } else { u32::MAX << (32 - len) };
            IpAddr::from((u32::from(v4) & m).to_be_bytes())
        }
        IpAddr::V6(v6) => {
            let m = if len == 0 {
                0
            } else {
                u128::MAX << (128 - len)
            };
            IpAddr::from((u128::from(v6) & m).to_be_bytes())
        }
    }
}

/// The 16-byte key an address is stored as (IPv4 as an IPv4-mapped IPv6 address, so both
/// families sort in one index and a prefix is one range).
pub fn ip_key(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// A namespace/name pair (`NS/NAME`, or `NAME` in any namespace).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Named {
    /// Namespace (`None`: any).
    pub namespace: Option<String>,
    /// Name.
    pub name: String,
}

/// A DNS-1123 label (namespaces) or subdomain (pod and policy names), as the API server checks.
fn dns_name(field: &'static str, s: &str, max: usize, dots: bool) -> Result<(), FilterError> {
    let ok_char =
        |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || (dots && c == '.');
    if s.is_empty() || s.len() > max {
        return Err(invalid(
            field,
            format!("{s:?}: must be 1..={max} characters"),
        ));
    }
    if !s.chars().all(ok_char)
        || !s.starts_with(|c: char| c.is_ascii_alphanumeric())
        || !s.ends_with(|c: char| c.is_ascii_alphanumeric())
    {
        return Err(invalid(
            field,
            format!(
                "{s:?}: must be lower-case alphanumerics and '-'{}, starting and ending alphanumeric",
                if dots { " or '.'" } else { "" }
            ),
        ));
    }
    Ok(())
}

/// Validates a namespace name.
pub fn namespace(field: &'static str, s: &str) -> Result<String, FilterError> {
    dns_name(field, s, 63, false)?;
    Ok(s.to_string())
}

impl Named {
    /// Parses `NS/NAME` or `NAME`.
    pub fn parse(field: &'static str, s: &str) -> Result<Self, FilterError> {
        let (ns, name) = match s.split_once('/') {
            Some((ns, name)) => (Some(namespace(field, ns)?), name),
            None => (None, s),
        };
        dns_name(field, name, 253, true)?;
        Ok(Self {
            namespace: ns,
            name: name.to_string(),
        })
    }
}

/// One `key=value` (or bare `key`: the label exists) of a label filter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LabelMatch {
    /// Label key.
    pub key: String,
    /// Value (`None`: any value).
    pub value: Option<String>,
}

impl LabelMatch {
    /// Parses `key=value` or `key`, with the API server's label syntax.
    pub fn parse(field: &'static str, s: &str) -> Result<Self, FilterError> {
        let (k, v) = match s.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (s, None),
        };
        let (prefix, name) = match k.rsplit_once('/') {
            Some((p, n)) => (Some(p), n),
            None => (None, k),
        };
        if let Some(p) = prefix {
            dns_name(field, p, 253, true)?;
        }
        let name_ok = |n: &str, max: usize, empty_ok: bool| {
            (empty_ok && n.is_empty())
                || (n.len() <= max
                    && !n.is_empty()
                    && n.chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
                    && n.starts_with(|c: char| c.is_ascii_alphanumeric())
                    && n.ends_with(|c: char| c.is_ascii_alphanumeric()))
        };
        if !name_ok(name, 63, false) {
            return Err(invalid(field, format!("{s:?}: {k:?} is not a label key")));
        }
        if let Some(v) = v
            && !name_ok(v, 63, true)
        {
            return Err(invalid(field, format!("{s:?}: {v:?} is not a label value")));
        }
        Ok(Self {
            key: k.to_string(),
            value: v.map(str::to_string),
        })
    }
}

/// One filter: every non-empty field must match.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FlowFilter {
    /// Source pod.
    pub from_pod: Vec<Named>,
    /// Destination pod.
    pub to_pod: Vec<Named>,
    /// Source or destination pod.
    pub pod: Vec<Named>,
    /// Source namespace.
    pub from_namespace: Vec<String>,
    /// Destination namespace.
    pub to_namespace: Vec<String>,
    /// Source or destination namespace.
    pub namespace: Vec<String>,
    /// Source address prefix.
    pub from_ip: Vec<Prefix>,
    /// Destination address prefix.
    pub to_ip: Vec<Prefix>,
    /// Source or destination address prefix.
    pub ip: Vec<Prefix>,
    /// Source pod labels (all of them).
    pub from_label: Vec<LabelMatch>,
    /// Destination pod labels (all of them).
    pub to_label: Vec<LabelMatch>,
    /// Destination Service.
    pub to_service: Vec<Named>,
    /// Source or destination port.
    pub port: Vec<u16>,
    /// Destination port.
    pub to_port: Vec<u16>,
    /// IP protocol numbers.
    pub protocol: Vec<u8>,
    /// Verdicts.
    pub verdict: Vec<Verdict>,
    /// Drop-reason codes.
    pub drop_reason: Vec<u8>,
    /// Deciding policy on either side (`NS/NAME`, or `NAME` of a cluster-scoped policy).
    pub policy: Vec<Named>,
    /// Observing node.
    pub node: Vec<String>,
}

/// A query's filters and bounds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Query {
    /// Any of these (none: every flow).
    pub include: Vec<FlowFilter>,
    /// None of these.
    pub exclude: Vec<FlowFilter>,
    /// Last seen at or after (ms since the epoch).
    pub since_ms: Option<i64>,
    /// Last seen before (ms since the epoch).
    pub until_ms: Option<i64>,
    /// At most this many records.
    pub limit: Option<u32>,
    /// The oldest `limit` records instead of the newest.
    pub first: bool,
}

/// A WHERE clause and its parameters.
#[derive(Debug, Default)]
pub struct Sql {
    /// `WHERE ...` (empty when nothing filters).
    pub clause: String,
    /// Bound parameters, in placeholder order.
    pub params: Vec<Value>,
}

fn any_of<T>(
    out: &mut Vec<String>,
    params: &mut Vec<Value>,
    values: &[T],
    mut one: impl FnMut(&T, &mut Vec<Value>) -> String,
) {
    if values.is_empty() {
        return;
    }
    let parts: Vec<String> = values.iter().map(|v| one(v, params)).collect();
    out.push(format!("({})", parts.join(" OR ")));
}

/// A condition on one end's interned fields (namespace, pod, labels, Service): the end's row
/// number is among those matching. Never NULL, so a `NOT` of it is the complement.
fn end_where(side: &'static str, cond: &str) -> String {
    format!("{side}_ep IN (SELECT id FROM endpoints WHERE {cond})")
}

fn named(side: &'static str, n: &Named, params: &mut Vec<Value>) -> String {
    params.push(Value::Text(n.name.clone()));
    match &n.namespace {
        Some(ns) => {
            params.push(Value::Text(ns.clone()));
            end_where(side, "pod = ? AND ns = ?")
        }
        None => end_where(side, "pod = ?"),
    }
}

fn prefix(side: &'static str, p: &Prefix, params: &mut Vec<Value>) -> String {
    // Addresses are stored as 4 bytes (IPv4) or 16 (IPv6), empty when unknown: one range
    // per family the prefix covers. An unknown address matches no prefix, also under NOT.
    let mut parts = Vec::new();
    let (lo, hi) = p.range();
    let (lo, hi) = (u128::from_be_bytes(lo), u128::from_be_bytes(hi));
    let (v4lo, v4hi) = (0xffff_0000_0000u128, 0xffff_ffff_ffffu128);
    if lo <= v4hi && hi >= v4lo {
        params.push(Value::Blob((lo.max(v4lo) as u32).to_be_bytes().to_vec()));
        params.push(Value::Blob((hi.min(v4hi) as u32).to_be_bytes().to_vec()));
        parts.push(format!(
            "(length({side}_ip) = 4 AND {side}_ip BETWEEN ? AND ?)"
        ));
    }
    if p.addr.is_ipv6() {
        params.push(Value::Blob(lo.to_be_bytes().to_vec()));
        params.push(Value::Blob(hi.to_be_bytes().to_vec()));
        parts.push(format!(
            "(length({side}_ip) = 16 AND {side}_ip BETWEEN ? AND ?)"
        ));
    }
    if parts.is_empty() {
        return "0".into();
    }
    format!("({})", parts.join(" OR "))
}

fn label(side: &'static str, l: &LabelMatch, params: &mut Vec<Value>) -> String {
    // A JSON path to the key, bound as a parameter: `$."key"` (label keys hold no quotes).
    params.push(Value::Text(format!("$.\"{}\"", l.key)));
    match &l.value {
        Some(v) => {
            params.push(Value::Text(v.clone()));
            end_where(side, "json_extract(labels, ?) = ?")
        }
        None => end_where(side, "json_type(labels, ?) IS NOT NULL"),
    }
}

fn policy(n: &Named, params: &mut Vec<Value>) -> String {
    let mut side = |s: &str| {
        params.push(Value::Text(n.name.clone()));
        let cond = match &n.namespace {
            Some(ns) => {
                params.push(Value::Text(ns.clone()));
                "name = ? AND ns = ?"
            }
            None => "name = ? AND ns = ''",
        };
        format!("{s}_rule IN (SELECT id FROM rules WHERE id != 0 AND {cond})")
    };
    let eg = side("eg");
    let ing = side("in");
    format!("({eg} OR {ing})")
}

impl FlowFilter {
    /// Whether no field is set (matches every flow).
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    fn check(&self) -> Result<(), FilterError> {
        let lens = [
            ("from-pod", self.from_pod.len()),
            ("to-pod", self.to_pod.len()),
            ("pod", self.pod.len()),
            ("from-namespace", self.from_namespace.len()),
            ("to-namespace", self.to_namespace.len()),
            ("namespace", self.namespace.len()),
            ("from-ip", self.from_ip.len()),
            ("to-ip", self.to_ip.len()),
            ("ip", self.ip.len()),
            ("from-label", self.from_label.len()),
            ("to-label", self.to_label.len()),
            ("to-service", self.to_service.len()),
            ("port", self.port.len()),
            ("to-port", self.to_port.len()),
            ("protocol", self.protocol.len()),
            ("verdict", self.verdict.len()),
            ("drop-reason", self.drop_reason.len()),
            ("policy", self.policy.len()),
            ("node", self.node.len()),
        ];
        for (field, n) in lens {
            if n > MAX_VALUES {
                return Err(invalid(field, format!("{n} values; at most {MAX_VALUES}")));
            }
        }
        Ok(())
    }

    /// The filter as one SQL condition (`1` when empty).
    fn condition(&self, params: &mut Vec<Value>) -> String {
        let mut c = Vec::new();
        any_of(&mut c, params, &self.from_pod, |n, p| named("src", n, p));
        any_of(&mut c, params, &self.to_pod, |n, p| named("dst", n, p));
        any_of(&mut c, params, &self.pod, |n, p| {
            let a = named("src", n, p);
            let b = named("dst", n, p);
            format!("{a} OR {b}")
        });
        any_of(&mut c, params, &self.from_namespace, |ns, p| {
            p.push(Value::Text(ns.clone()));
            end_where("src", "ns = ?")
        });
        any_of(&mut c, params, &self.to_namespace, |ns, p| {
            p.push(Value::Text(ns.clone()));
            end_where("dst", "ns = ?")
        });
        any_of(&mut c, params, &self.namespace, |ns, p| {
            p.push(Value::Text(ns.clone()));
            p.push(Value::Text(ns.clone()));
            format!(
                "{} OR {}",
                end_where("src", "ns = ?"),
                end_where("dst", "ns = ?")
            )
        });
        any_of(&mut c, params, &self.from_ip, |x, p| prefix("src", x, p));
        any_of(&mut c, params, &self.to_ip, |x, p| prefix("dst", x, p));
        any_of(&mut c, params, &self.ip, |x, p| {
            let a = prefix("src", x, p);
            let b = prefix("dst", x, p);
            format!("{a} OR {b}")
        });
        // Labels: every one must match (AND), unlike the other fields.
        for l in &self.from_label {
            c.push(label("src", l, params));
        }
        for l in &self.to_label {
            c.push(label("dst", l, params));
        }
        any_of(&mut c, params, &self.to_service, |n, p| {
            match &n.namespace {
                Some(ns) => {
                    p.push(Value::Text(format!("{ns}/{}", n.name)));
                    end_where("dst", "service = ?")
                }
                None => {
                    p.push(Value::Text(format!("%/{}", n.name.replace(['%', '_'], ""))));
                    end_where("dst", "service LIKE ?")
                }
            }
        });
        any_of(&mut c, params, &self.port, |n, p| {
            p.push(Value::Integer(i64::from(*n)));
            p.push(Value::Integer(i64::from(*n)));
            "src_port = ? OR dst_port = ?".into()
        });
        any_of(&mut c, params, &self.to_port, |n, p| {
            p.push(Value::Integer(i64::from(*n)));
            "dst_port = ?".into()
        });
        any_of(&mut c, params, &self.protocol, |n, p| {
            p.push(Value::Integer(i64::from(*n)));
            "protocol = ?".into()
        });
        any_of(&mut c, params, &self.verdict, |v, p| {
            p.push(Value::Integer(i64::from(v.code())));
            "verdict = ?".into()
        });
        any_of(&mut c, params, &self.drop_reason, |n, p| {
            p.push(Value::Integer(i64::from(*n)));
            "drop_reason = ?".into()
        });
        any_of(&mut c, params, &self.policy, policy);
        any_of(&mut c, params, &self.node, |n, p| {
            p.push(Value::Text(n.clone()));
            "node = ?".into()
        });
        if c.is_empty() {
            "1".into()
        } else {
            c.join(" AND ")
        }
    }
}

impl Named {
    fn matches_pod(&self, end: &FlowEnd) -> bool {
        end.pod == self.name
            && self
                .namespace
                .as_ref()
                .is_none_or(|ns| end.namespace == *ns)
    }

    fn matches_rule(&self, rule: Option<&RuleRef>) -> bool {
        rule.is_some_and(|r| {
            r.name == self.name && r.namespace == self.namespace.as_deref().unwrap_or("")
        })
    }

    fn matches_service(&self, service: &str) -> bool {
        match &self.namespace {
            Some(ns) => {
                service
                    .strip_prefix(ns.as_str())
                    .and_then(|rest| rest.strip_prefix('/'))
                    == Some(self.name.as_str())
            }
            // SQL's LIKE '%/name' (case-insensitive for ASCII, as SQLite's LIKE is).
            None => {
                let tail = format!("/{}", self.name);
                service.len() >= tail.len()
                    && service.is_char_boundary(service.len() - tail.len())
                    && service[service.len() - tail.len()..].eq_ignore_ascii_case(&tail)
            }
        }
    }
}

impl Prefix {
    /// Whether `ip` lies inside the prefix (an unknown address lies in none).
    pub fn contains(&self, ip: Option<IpAddr>) -> bool {
        let Some(ip) = ip else { return false };
        let (lo, hi) = self.range();
        let k = ip_key(ip);
        lo <= k && k <= hi
    }
}

impl LabelMatch {
    fn matches(&self, end: &FlowEnd) -> bool {
        match (&self.value, end.labels.get(&self.key)) {
            (Some(want), Some(have)) => want == have,
            (None, Some(_)) => true,
            (_, None) => false,
        }
    }
}

fn any<T>(values: &[T], f: impl Fn(&T) -> bool) -> bool {
    values.is_empty() || values.iter().any(f)
}

impl FlowFilter {
    /// Whether `r` matches this filter: the same answer the store's SQL gives, for live
    /// subscribers that never touch the store.
    pub fn matches(&self, r: &FlowRecord) -> bool {
        any(&self.from_pod, |n| n.matches_pod(&r.src))
            && any(&self.to_pod, |n| n.matches_pod(&r.dst))
            && any(&self.pod, |n| {
                n.matches_pod(&r.src) || n.matches_pod(&r.dst)
            })
            && any(&self.from_namespace, |ns| r.src.namespace == *ns)
            && any(&self.to_namespace, |ns| r.dst.namespace == *ns)
            && any(&self.namespace, |ns| {
                r.src.namespace == *ns || r.dst.namespace == *ns
            })
            && any(&self.from_ip, |p| p.contains(r.src.ip))
            && any(&self.to_ip, |p| p.contains(r.dst.ip))
            && any(&self.ip, |p| p.contains(r.src.ip) || p.contains(r.dst.ip))
            && self.from_label.iter().all(|l| l.matches(&r.src))
            && self.to_label.iter().all(|l| l.matches(&r.dst))
            && any(&self.to_service, |n| n.matches_service(&r.dst.service))
            && any(&self.port, |p| r.src.port == *p || r.dst.port == *p)
            && any(&self.to_port, |p| r.dst.port == *p)
            && any(&self.protocol, |p| r.protocol == *p)
            && any(&self.verdict, |v| r.verdict == *v)
            && any(&self.drop_reason, |d| r.drop_reason == *d)
            && any(&self.policy, |n| {
                n.matches_rule(r.egress_rule.as_deref())
                    || n.matches_rule(r.ingress_rule.as_deref())
            })
            && any(&self.node, |n| r.node == *n)
    }
}

impl Query {
    /// Whether `r` passes the query's time bounds and filters (its limit aside): the same answer
    /// as [`Query::to_sql`] run by the store.
    pub fn matches(&self, r: &FlowRecord) -> bool {
        self.since_ms.is_none_or(|s| r.last_seen_ms >= s)
            && self.until_ms.is_none_or(|u| r.last_seen_ms < u)
            && (self.include.is_empty() || self.include.iter().any(|f| f.matches(r)))
            && !self.exclude.iter().any(|f| f.matches(r))
    }

    /// Checks the query's sizes.
    pub fn check(&self) -> Result<(), FilterError> {
        if self.include.len() + self.exclude.len() > MAX_FILTERS {
            return Err(invalid(
                "filters",
                format!(
                    "{} filters; at most {MAX_FILTERS}",
                    self.include.len() + self.exclude.len()
                ),
            ));
        }
        for f in self.include.iter().chain(&self.exclude) {
            f.check()?;
        }
        if let (Some(s), Some(u)) = (self.since_ms, self.until_ms)
            && s > u
        {
            return Err(invalid("since", "since is after until"));
        }
        Ok(())
    }

    /// The WHERE clause and its parameters.
    pub fn to_sql(&self) -> Result<Sql, FilterError> {
        self.check()?;
        let mut params = Vec::new();
        let mut c = Vec::new();
        if let Some(s) = self.since_ms {
            params.push(Value::Integer(s));
            c.push("last_ms >= ?".to_string());
        }
        if let Some(u) = self.until_ms {
            params.push(Value::Integer(u));
            c.push("last_ms < ?".to_string());
        }
        let includes: Vec<String> = self
            .include
            .iter()
            .map(|f| format!("({})", f.condition(&mut params)))
            .collect();
        if !includes.is_empty() {
            c.push(format!("({})", includes.join(" OR ")));
        }
        for f in &self.exclude {
            c.push(format!("NOT ({})", f.condition(&mut params)));
        }
        Ok(Sql {
            clause: if c.is_empty() {
                String::new()
            } else {
                format!("WHERE {}", c.join(" AND "))
            },
            params,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_cover_their_range() {
        let p = Prefix::parse("ip", "10.1.2.3/16").unwrap();
        assert_eq!(p.addr, "10.1.0.0".parse::<IpAddr>().unwrap());
        let (lo, hi) = p.range();
        assert_eq!(lo, ip_key("10.1.0.0".parse().unwrap()));
        assert_eq!(hi, ip_key("10.1.255.255".parse().unwrap()));
        let all = Prefix::parse("ip", "::/0").unwrap().range();
        assert_eq!(all, ([0; 16], [0xff; 16]));
        assert!(Prefix::parse("ip", "10.0.0.0/33").is_err());
        assert!(Prefix::parse("ip", "10.0.0.0/-1").is_err());
        assert!(Prefix::parse("ip", "'; DROP TABLE flows; --").is_err());
    }

    #[test]
    fn names_and_labels_are_validated_as_the_api_server_does() {
        assert!(Named::parse("from-pod", "shop/web-0").is_ok());
        assert!(Named::parse("from-pod", "web.example").is_ok());
        for bad in [
            "",
            "Shop/web",
            "shop/",
            "/web",
            "a'b",
            "x\" OR 1=1 --",
            &"a".repeat(300),
        ] {
            assert!(Named::parse("from-pod", bad).is_err(), "{bad:?}");
        }
        assert!(LabelMatch::parse("from-label", "app=web").is_ok());
        assert!(LabelMatch::parse("from-label", "example.com/tier=").is_ok());
        assert!(LabelMatch::parse("from-label", "app").is_ok());
        for bad in ["a\"b=c", "app=we b", "=x", "app=\"", "$.x=1"] {
            assert!(LabelMatch::parse("from-label", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn sql_carries_no_value_text() {
        let q = Query {
            include: vec![FlowFilter {
                from_pod: vec![Named::parse("from-pod", "shop/web").unwrap()],
                to_label: vec![LabelMatch::parse("to-label", "app=db").unwrap()],
                ..FlowFilter::default()
            }],
            exclude: vec![FlowFilter {
                verdict: vec![Verdict::Forwarded],
                ..FlowFilter::default()
            }],
            since_ms: Some(5),
            ..Query::default()
        };
        let sql = q.to_sql().unwrap();
        assert!(!sql.clause.contains("web") && !sql.clause.contains("shop"));
        assert_eq!(sql.clause.matches('?').count(), sql.params.len());
        let too_many = Query {
            include: vec![FlowFilter {
                port: vec![1; MAX_VALUES + 1],
                ..FlowFilter::default()
            }],
            ..Query::default()
        };
        assert!(too_many.to_sql().is_err());
    }
}
