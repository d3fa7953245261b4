//! The embedded flow store: one SQLite file in WAL mode, a versioned schema migrated forward on
//! open, indexes for the incident questions (by pod and time, by verdict and time, by deciding
//! policy), retention by age and by size, parameterised queries and aggregates.
//!
//! A record is identified by its connection: (node, point, protocol, source address and port,
//! destination address and port, first seen). Writing a record again (the aggregator's periodic
//! update, the close) updates that row, so a connection is one row however long it lives.
//! [`Store::write`] commits a batch in one transaction; when it returns, the batch survives a
//! kill -9 of the process (WAL, `synchronous = NORMAL`: a committed transaction is in the WAL
//! before `write` returns; only an operating-system crash may lose the last ones).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;

use rusqlite::types::Value;
use rusqlite::{Connection, OptionalExtension, params_from_iter};

use crate::filter::{FilterError, Query};
use crate::record::{FlowEnd, FlowRecord, Labels, Name, Point, RuleRef, Verdict};

/// The schema version this build writes.
pub const SCHEMA_VERSION: i64 = 2;

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite said no.
    #[error("flow store {path}: {source}")]
    Sqlite {
        /// The store file.
        path: PathBuf,
        /// The error.
        source: rusqlite::Error,
    },
    /// The file's schema is newer than this build understands.
    #[error(
        "flow store {path}: schema version {found} is newer than {SCHEMA_VERSION}; upgrade septum"
    )]
    TooNew {
        /// The store file.
        path: PathBuf,
        /// The version found.
        found: i64,
    },
    /// The query was refused.
    #[error(transparent)]
    Filter(#[from] FilterError),
}

/// How much the store keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retention {
    /// Records last seen longer ago than this are removed (ms; `None`: no age bound).
    pub max_age_ms: Option<i64>,
    /// The file is kept under this many bytes (`None`: no size bound).
    pub max_bytes: Option<u64>,
}

impl Default for Retention {
    fn default() -> Self {
        Self {
            max_age_ms: Some(24 * 3600 * 1000),
            max_bytes: Some(1 << 30),
        }
    }
}

/// What a retention pass removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Records removed for their age.
    pub by_age: u64,
    /// Records removed to bring the file under its size bound.
    pub by_size: u64,
}

/// Schema 1: one wide row per flow, both ends and both rules spelled out in every row.
const V1: &str = r"
CREATE TABLE flows (
    id INTEGER PRIMARY KEY,
    node TEXT NOT NULL,
    point INTEGER NOT NULL,
    protocol INTEGER NOT NULL,
    first_ms INTEGER NOT NULL,
    last_ms INTEGER NOT NULL,
    src_ip BLOB, src_port INTEGER NOT NULL,
    src_ns TEXT NOT NULL, src_pod TEXT NOT NULL, src_workload TEXT NOT NULL,
    src_labels TEXT NOT NULL, src_identity INTEGER NOT NULL, src_service TEXT NOT NULL,
    dst_ip BLOB, dst_port INTEGER NOT NULL,
    dst_ns TEXT NOT NULL, dst_pod TEXT NOT NULL, dst_workload TEXT NOT NULL,
    dst_labels TEXT NOT NULL, dst_identity INTEGER NOT NULL, dst_service TEXT NOT NULL,
    verdict INTEGER NOT NULL,
    drop_reason INTEGER NOT NULL,
    eg_kind TEXT NOT NULL, eg_ns TEXT NOT NULL, eg_name TEXT NOT NULL, eg_tier TEXT NOT NULL,
    eg_rule INTEGER NOT NULL,
    in_kind TEXT NOT NULL, in_ns TEXT NOT NULL, in_name TEXT NOT NULL, in_tier TEXT NOT NULL,
    in_rule INTEGER NOT NULL,
    tcp_flags INTEGER NOT NULL,
    packets_fwd INTEGER NOT NULL, bytes_fwd INTEGER NOT NULL,
    packets_rev INTEGER NOT NULL, bytes_rev INTEGER NOT NULL,
    is_reply INTEGER NOT NULL,
    count INTEGER NOT NULL,
    UNIQUE (node, point, protocol, src_ip, src_port, dst_ip, dst_port, first_ms)
);
CREATE INDEX flows_last ON flows (last_ms);
CREATE INDEX flows_src_pod ON flows (src_ns, src_pod, last_ms);
CREATE INDEX flows_dst_pod ON flows (dst_ns, dst_pod, last_ms);
CREATE INDEX flows_verdict ON flows (verdict, last_ms);
CREATE INDEX flows_eg_policy ON flows (eg_ns, eg_name) WHERE eg_name != '';
CREATE INDEX flows_in_policy ON flows (in_ns, in_name) WHERE in_name != '';
";

/// Schema 2: ends (namespace, pod, workload, labels, identity, Service) and deciding rules are
/// interned in their own small tables and a flow row refers to them by number; addresses are
/// 4 bytes for IPv4 (16 for IPv6, empty when unknown); the connection key leads with the
/// first-seen time, so new rows append to its index instead of landing all over it.
const V1_TO_V2: &str = r"
CREATE TABLE endpoints (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ns TEXT NOT NULL, pod TEXT NOT NULL, workload TEXT NOT NULL, labels TEXT NOT NULL,
    identity INTEGER NOT NULL, service TEXT NOT NULL,
    UNIQUE (ns, pod, workload, labels, identity, service)
);
CREATE INDEX endpoints_pod ON endpoints (pod);
CREATE INDEX endpoints_service ON endpoints (service) WHERE service != '';
CREATE TABLE rules (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL, ns TEXT NOT NULL, name TEXT NOT NULL, tier TEXT NOT NULL,
    rule_index INTEGER NOT NULL,
    UNIQUE (kind, ns, name, tier, rule_index)
);
INSERT INTO rules (id, kind, ns, name, tier, rule_index) VALUES (0, '', '', '', '', 0);
INSERT OR IGNORE INTO endpoints (ns, pod, workload, labels, identity, service)
    SELECT src_ns, src_pod, src_workload, src_labels, src_identity, src_service FROM flows
    UNION SELECT dst_ns, dst_pod, dst_workload, dst_labels, dst_identity, dst_service FROM flows;
INSERT OR IGNORE INTO rules (kind, ns, name, tier, rule_index)
    SELECT eg_kind, eg_ns, eg_name, eg_tier, eg_rule FROM flows WHERE eg_kind != ''
    UNION SELECT in_kind, in_ns, in_name, in_tier, in_rule FROM flows WHERE in_kind != '';
CREATE TABLE flows_v2 (
    id INTEGER PRIMARY KEY,
    first_ms INTEGER NOT NULL,
    last_ms INTEGER NOT NULL,
    node TEXT NOT NULL,
    point INTEGER NOT NULL,
    protocol INTEGER NOT NULL,
    src_ip BLOB NOT NULL, src_port INTEGER NOT NULL, src_ep INTEGER NOT NULL,
    dst_ip BLOB NOT NULL, dst_port INTEGER NOT NULL, dst_ep INTEGER NOT NULL,
    verdict INTEGER NOT NULL,
    drop_reason INTEGER NOT NULL,
    eg_rule INTEGER NOT NULL,
    in_rule INTEGER NOT NULL,
    tcp_flags INTEGER NOT NULL,
    packets_fwd INTEGER NOT NULL, bytes_fwd INTEGER NOT NULL,
    packets_rev INTEGER NOT NULL, bytes_rev INTEGER NOT NULL,
    is_reply INTEGER NOT NULL,
    count INTEGER NOT NULL,
    UNIQUE (first_ms, src_port, dst_port, protocol, point, src_ip, dst_ip, node)
);
INSERT INTO flows_v2 SELECT f.id, f.first_ms, f.last_ms, f.node, f.point, f.protocol,
    CASE WHEN f.src_ip IS NULL THEN x''
         WHEN substr(f.src_ip, 1, 12) = x'00000000000000000000ffff' THEN substr(f.src_ip, 13)
         ELSE f.src_ip END,
    f.src_port,
    (SELECT e.id FROM endpoints e WHERE e.ns = f.src_ns AND e.pod = f.src_pod
        AND e.workload = f.src_workload AND e.labels = f.src_labels
        AND e.identity = f.src_identity AND e.service = f.src_service),
    CASE WHEN f.dst_ip IS NULL THEN x''
         WHEN substr(f.dst_ip, 1, 12) = x'00000000000000000000ffff' THEN substr(f.dst_ip, 13)
         ELSE f.dst_ip END,
    f.dst_port,
    (SELECT e.id FROM endpoints e WHERE e.ns = f.dst_ns AND e.pod = f.dst_pod
        AND e.workload = f.dst_workload AND e.labels = f.dst_labels
        AND e.identity = f.dst_identity AND e.service = f.dst_service),
    f.verdict, f.drop_reason,
    coalesce((SELECT r.id FROM rules r WHERE f.eg_kind != '' AND r.kind = f.eg_kind
        AND r.ns = f.eg_ns AND r.name = f.eg_name AND r.tier = f.eg_tier
        AND r.rule_index = f.eg_rule), 0),
    coalesce((SELECT r.id FROM rules r WHERE f.in_kind != '' AND r.kind = f.in_kind
        AND r.ns = f.in_ns AND r.name = f.in_name AND r.tier = f.in_tier
        AND r.rule_index = f.in_rule), 0),
    f.tcp_flags, f.packets_fwd, f.bytes_fwd, f.packets_rev, f.bytes_rev, f.is_reply, f.count
    FROM flows f;
DROP TABLE flows;
ALTER TABLE flows_v2 RENAME TO flows;
CREATE INDEX flows_last ON flows (last_ms);
CREATE INDEX flows_src_ep ON flows (src_ep, last_ms);
CREATE INDEX flows_dst_ep ON flows (dst_ep, last_ms);
CREATE INDEX flows_verdict ON flows (verdict, last_ms);
CREATE INDEX flows_eg_rule ON flows (eg_rule) WHERE eg_rule != 0;
CREATE INDEX flows_in_rule ON flows (in_rule) WHERE in_rule != 0;
";

/// The migrations, in order: migration `i` takes the schema from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[V1, V1_TO_V2];

/// A flow row joined with its ends and rules (`f`, `s`, `d`, `e`, `i`), in [`read_record`]'s
/// column order.
const COLUMNS: &str = "f.node, f.point, f.protocol, f.first_ms, f.last_ms, \
    f.src_ip, f.src_port, s.ns, s.pod, s.workload, s.labels, s.identity, s.service, \
    f.dst_ip, f.dst_port, d.ns, d.pod, d.workload, d.labels, d.identity, d.service, \
    f.verdict, f.drop_reason, e.kind, e.ns, e.name, e.tier, e.rule_index, \
    i.kind, i.ns, i.name, i.tier, i.rule_index, \
    f.tcp_flags, f.packets_fwd, f.bytes_fwd, f.packets_rev, f.bytes_rev, f.is_reply, f.count";

/// The joins [`COLUMNS`] reads through, after `flows f` (or a subquery named `f`).
const JOINS: &str = "JOIN endpoints s ON s.id = f.src_ep JOIN endpoints d ON d.id = f.dst_ep \
    JOIN rules e ON e.id = f.eg_rule JOIN rules i ON i.id = f.in_rule";

const UPSERT: &str = "INSERT INTO flows (first_ms, last_ms, node, point, protocol, \
    src_ip, src_port, src_ep, dst_ip, dst_port, dst_ep, verdict, drop_reason, eg_rule, in_rule, \
    tcp_flags, packets_fwd, bytes_fwd, packets_rev, bytes_rev, is_reply, count) \
    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) \
    ON CONFLICT (first_ms, src_port, dst_port, protocol, point, src_ip, dst_ip, node) DO UPDATE SET \
    last_ms = max(last_ms, excluded.last_ms), verdict = excluded.verdict, \
    drop_reason = excluded.drop_reason, tcp_flags = tcp_flags | excluded.tcp_flags, \
    packets_fwd = excluded.packets_fwd, bytes_fwd = excluded.bytes_fwd, \
    packets_rev = excluded.packets_rev, bytes_rev = excluded.bytes_rev, count = excluded.count";

/// The SQLite page cache of a store connection (KiB).
const CACHE_KIB: i64 = 32 * 1024;
/// WAL pages before an automatic checkpoint (a larger WAL rewrites hot index pages less often).
const WAL_CHECKPOINT_PAGES: i64 = 8192;

/// The flow store.
#[derive(Debug)]
pub struct Store {
    conn: Connection,
    path: PathBuf,
    retention: Retention,
    endpoints: Intern<EndMeta>,
    rules: HashMap<RuleRef, i64>,
}

/// How an address is stored: 4 bytes for IPv4 (and IPv4-mapped IPv6), 16 for IPv6, none when
/// unknown. [`crate::filter`] builds its prefix ranges to match.
#[derive(Clone, Copy)]
struct StoredIp {
    bytes: [u8; 16],
    len: usize,
}

impl StoredIp {
    fn of(ip: Option<IpAddr>) -> Self {
        let mut bytes = [0u8; 16];
        let len = match ip.map(canonical) {
            Some(IpAddr::V4(v4)) => {
                bytes[..4].copy_from_slice(&v4.octets());
                4
            }
            Some(IpAddr::V6(v6)) => {
                bytes = v6.octets();
                16
            }
            None => 0,
        };
        Self { bytes, len }
    }

    fn as_slice(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

/// IPv4-mapped IPv6 addresses are stored, and read back, as IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn ip_of(v: &[u8]) -> Option<IpAddr> {
    match v.len() {
        4 => Some(IpAddr::from(<[u8; 4]>::try_from(v).ok()?)),
        16 => Some(canonical(IpAddr::V6(Ipv6Addr::from(
            <[u8; 16]>::try_from(v).ok()?,
        )))),
        _ => None,
    }
}

/// What `endpoints` holds of a flow end (everything but its address and port).
#[derive(Clone, Debug, PartialEq, Eq)]
struct EndMeta {
    namespace: Name,
    pod: Name,
    workload: Name,
    labels: Labels,
    identity: u32,
    service: Name,
}

impl EndMeta {
    fn of(e: &FlowEnd) -> Self {
        Self {
            namespace: e.namespace.clone(),
            pod: e.pod.clone(),
            workload: e.workload.clone(),
            labels: e.labels.clone(),
            identity: e.identity,
            service: e.service.clone(),
        }
    }

    fn is(&self, e: &FlowEnd) -> bool {
        self.identity == e.identity
            && self.pod == e.pod
            && self.namespace == e.namespace
            && self.workload == e.workload
            && self.service == e.service
            && self.labels == e.labels
    }
}

/// The endpoint cache's hash: FNV-1a over the fields that tell ends apart most cheaply
/// (the bucket compares every field). In memory only, never stored.
fn fnv(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in p.iter().chain(&[0xff]) {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

fn end_hash(e: &FlowEnd) -> u64 {
    fnv(&[
        &e.identity.to_le_bytes(),
        e.namespace.as_bytes(),
        e.pod.as_bytes(),
        e.service.as_bytes(),
    ])
}

/// Row numbers of interned ends this connection has written or read, by hash: looked up with a
/// flow end's own fields, so a lookup builds no key (rules, which are their own key, use a map).
#[derive(Debug)]
struct Intern<T> {
    ids: HashMap<u64, Vec<(T, i64)>>,
}

impl<T> Default for Intern<T> {
    fn default() -> Self {
        Self {
            ids: HashMap::new(),
        }
    }
}

impl<T> Intern<T> {
    fn get(&self, hash: u64, is: impl Fn(&T) -> bool) -> Option<i64> {
        self.ids
            .get(&hash)?
            .iter()
            .find(|(t, _)| is(t))
            .map(|(_, id)| *id)
    }

    fn insert(&mut self, hash: u64, t: T, id: i64) {
        self.ids.entry(hash).or_default().push((t, id));
    }

    fn merge(&mut self, other: Self) {
        for (h, v) in other.ids {
            self.ids.entry(h).or_default().extend(v);
        }
    }

    fn clear(&mut self) {
        self.ids.clear();
    }
}

impl rusqlite::ToSql for Name {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        Ok(rusqlite::types::ToSqlOutput::Borrowed(
            rusqlite::types::ValueRef::Text(self.as_bytes()),
        ))
    }
}

/// Counters are u64 in the record and i64 in SQLite; saturate rather than wrap.
fn int(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn read_end(row: &rusqlite::Row<'_>, base: usize) -> rusqlite::Result<FlowEnd> {
    let labels: String = row.get(base + 5)?;
    let ip: Vec<u8> = row.get(base)?;
    Ok(FlowEnd {
        ip: ip_of(&ip),
        port: row.get::<_, i64>(base + 1)? as u16,
        namespace: row.get::<_, String>(base + 2)?.into(),
        pod: row.get::<_, String>(base + 3)?.into(),
        workload: row.get::<_, String>(base + 4)?.into(),
        labels: serde_json::from_str::<std::collections::BTreeMap<String, String>>(&labels)
            .unwrap_or_default()
            .into(),
        identity: row.get::<_, i64>(base + 6)? as u32,
        service: row.get::<_, String>(base + 7)?.into(),
    })
}
fn read_rule(row: &rusqlite::Row<'_>, base: usize) -> rusqlite::Result<Option<Arc<RuleRef>>> {
    let r = RuleRef {
        kind: row.get(base)?,
        namespace: row.get(base + 1)?,
        name: row.get(base + 2)?,
        tier: row.get(base + 3)?,
        rule_index: row.get::<_, i64>(base + 4)? as i32,
    };
    Ok((!r.kind.is_empty()).then(|| Arc::new(r)))
}

fn read_record(row: &rusqlite::Row<'_>) -> rusqlite::Result<FlowRecord> {
    let u = |i: usize| -> rusqlite::Result<u64> { Ok(row.get::<_, i64>(i)?.max(0) as u64) };
    Ok(FlowRecord {
        node: row.get::<_, String>(0)?.into(),
        point: Point::from_code(row.get::<_, i64>(1)? as u8).unwrap_or(Point::FromPod),
        protocol: row.get::<_, i64>(2)? as u8,
        first_seen_ms: row.get(3)?,
        last_seen_ms: row.get(4)?,
        src: read_end(row, 5)?,
        dst: read_end(row, 13)?,
        verdict: Verdict::from_code(row.get::<_, i64>(21)? as u8).unwrap_or(Verdict::Dropped),
        drop_reason: row.get::<_, i64>(22)? as u8,
        egress_rule: read_rule(row, 23)?,
        ingress_rule: read_rule(row, 28)?,
        tcp_flags: row.get::<_, i64>(33)? as u8,
        packets_forward: u(34)?,
        bytes_forward: u(35)?,
        packets_reverse: u(36)?,
        bytes_reverse: u(37)?,
        is_reply: row.get::<_, i64>(38)? != 0,
        count: u(39)?,
    })
}

/// One row of [`Store::top_talkers`].
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Talker {
    /// `namespace/pod`, or the address for an end outside the cluster.
    pub from: String,
    /// As `from`.
    pub to: String,
    /// Flows.
    pub flows: u64,
    /// Bytes both ways.
    pub bytes: u64,
}

/// One edge of the service map.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Edge {
    /// Source workload (`namespace/Kind/name`, or the address outside the cluster).
    pub from: String,
    /// Destination workload (as `from`), or the Service when the flow was addressed to one.
    pub to: String,
    /// Destination port.
    pub port: u16,
    /// IP protocol number.
    pub protocol: u8,
    /// Forwarded flows.
    pub forwarded: u64,
    /// Dropped flows (folded drop events count once per record).
    pub dropped: u64,
    /// Audited flows.
    pub audit: u64,
    /// Bytes both ways.
    pub bytes: u64,
}

/// One row of [`Store::denied_by_policy`].
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Denied {
    /// The deciding rule's `kind namespace/name` (or `default deny` when isolation decided).
    pub policy: String,
    /// Dropped records.
    pub flows: u64,
    /// Drop events folded into them.
    pub events: u64,
}

impl Store {
    /// Opens (creating or migrating) the store at `path`.
    pub fn open(path: &Path, retention: Retention) -> Result<Self, StoreError> {
        let e = |source| StoreError::Sqlite {
            path: path.to_path_buf(),
            source,
        };
        let conn = Connection::open(path).map_err(e)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(e)?;
        // auto_vacuum must be chosen before the first table exists; it lets retention return
        // space to the file system.
        conn.execute_batch(&format!(
            "PRAGMA auto_vacuum = INCREMENTAL; PRAGMA journal_mode = WAL; \
             PRAGMA synchronous = NORMAL; PRAGMA cache_size = -{CACHE_KIB}; \
             PRAGMA wal_autocheckpoint = {WAL_CHECKPOINT_PAGES};"
        ))
        .map_err(e)?;
        let mut store = Self {
            conn,
            path: path.to_path_buf(),
            retention,
            endpoints: Intern::default(),
            rules: HashMap::new(),
        };
        store.migrate()?;
        Ok(store)
    }

    fn err(&self) -> impl Fn(rusqlite::Error) -> StoreError + '_ {
        |source| StoreError::Sqlite {
            path: self.path.clone(),
            source,
        }
    }

    /// The schema version of the file.
    pub fn schema_version(&self) -> Result<i64, StoreError> {
        self.conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(self.err())
    }

    fn migrate(&mut self) -> Result<(), StoreError> {
        let found = self.schema_version()?;
        if found > SCHEMA_VERSION {
            return Err(StoreError::TooNew {
                path: self.path.clone(),
                found,
            });
        }
        let path = self.path.clone();
        let e = |source| StoreError::Sqlite {
            path: path.clone(),
            source,
        };
        for (i, m) in MIGRATIONS.iter().enumerate().skip(found as usize) {
            let tx = self.conn.transaction().map_err(e)?;
            tx.execute_batch(m).map_err(e)?;
            tx.execute_batch(&format!("PRAGMA user_version = {}", i + 1))
                .map_err(e)?;
            tx.commit().map_err(e)?;
        }
        Ok(())
    }

    /// Writes a batch of records (new ones inserted, known connections updated) in one
    /// transaction; returns how many were written. Once it returns, they are committed.
    pub fn write(&mut self, records: &[FlowRecord]) -> Result<usize, StoreError> {
        self.write_all(records)
    }

    /// As [`Store::write`], for records from several batches: one transaction for all.
    pub fn write_all<'a>(
        &mut self,
        records: impl IntoIterator<Item = &'a FlowRecord>,
    ) -> Result<usize, StoreError> {
        let path = self.path.clone();
        let e = |source| StoreError::Sqlite {
            path: path.clone(),
            source,
        };
        // Ends and rules interned by this transaction become known only once it commits.
        let mut new_ends: Intern<EndMeta> = Intern::default();
        let mut new_rules: HashMap<RuleRef, i64> = HashMap::new();
        let mut n = 0;
        let tx = self.conn.transaction().map_err(e)?;
        {
            let mut upsert = tx.prepare_cached(UPSERT).map_err(e)?;
            let mut end_id = |end: &FlowEnd| -> rusqlite::Result<i64> {
                let h = end_hash(end);
                if let Some(id) = self
                    .endpoints
                    .get(h, |m| m.is(end))
                    .or_else(|| new_ends.get(h, |m| m.is(end)))
                {
                    return Ok(id);
                }
                let labels = serde_json::to_string(&end.labels).unwrap_or_else(|_| "{}".into());
                let id = tx
                    .prepare_cached(
                        "INSERT INTO endpoints (ns, pod, workload, labels, identity, service) \
                         VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO UPDATE SET ns = excluded.ns \
                         RETURNING id",
                    )?
                    .query_row(
                        rusqlite::params![
                            end.namespace,
                            end.pod,
                            end.workload,
                            labels,
                            end.identity,
                            end.service
                        ],
                        |r| r.get(0),
                    )?;
                new_ends.insert(h, EndMeta::of(end), id);
                Ok(id)
            };
            let mut rule_id = |rule: &Option<Arc<RuleRef>>| -> rusqlite::Result<i64> {
                let Some(rule) = rule else { return Ok(0) };
                let rule: &RuleRef = rule;
                if let Some(id) = self.rules.get(rule).or_else(|| new_rules.get(rule)) {
                    return Ok(*id);
                }
                let id = tx
                    .prepare_cached(
                        "INSERT INTO rules (kind, ns, name, tier, rule_index) VALUES (?, ?, ?, ?, ?) \
                         ON CONFLICT DO UPDATE SET kind = excluded.kind RETURNING id",
                    )?
                    .query_row(
                        rusqlite::params![
                            rule.kind,
                            rule.namespace,
                            rule.name,
                            rule.tier,
                            rule.rule_index
                        ],
                        |r| r.get(0),
                    )?;
                new_rules.insert(rule.clone(), id);
                Ok(id)
            };
            for r in records {
                let src_ep = end_id(&r.src).map_err(e)?;
                let dst_ep = end_id(&r.dst).map_err(e)?;
                let eg = rule_id(&r.egress_rule).map_err(e)?;
                let ing = rule_id(&r.ingress_rule).map_err(e)?;
                let (sip, dip) = (StoredIp::of(r.src.ip), StoredIp::of(r.dst.ip));
                upsert
                    .execute(rusqlite::params![
                        r.first_seen_ms,
                        r.last_seen_ms,
                        r.node,
                        r.point.code(),
                        r.protocol,
                        sip.as_slice(),
                        r.src.port,
                        src_ep,
                        dip.as_slice(),
                        r.dst.port,
                        dst_ep,
                        r.verdict.code(),
                        r.drop_reason,
                        eg,
                        ing,
                        r.tcp_flags,
                        int(r.packets_forward),
                        int(r.bytes_forward),
                        int(r.packets_reverse),
                        int(r.bytes_reverse),
                        r.is_reply,
                        int(r.count),
                    ])
                    .map_err(e)?;
                n += 1;
            }
        }
        tx.commit().map_err(e)?;
        self.endpoints.merge(new_ends);
        self.rules.extend(new_rules);
        Ok(n)
    }

    /// The records matching `q`, newest first (oldest first with `q.first`).
    pub fn query(&self, q: &Query) -> Result<Vec<FlowRecord>, StoreError> {
        let sql = q.to_sql()?;
        let order = if q.first { "ASC" } else { "DESC" };
        let mut params = sql.params;
        let limit = match q.limit {
            Some(n) => {
                params.push(Value::Integer(i64::from(n)));
                "LIMIT ?"
            }
            None => "",
        };
        // The filter and the order are planned on `flows` alone; the joins only name what
        // was selected.
        let text = format!(
            "SELECT {COLUMNS} FROM (SELECT * FROM flows {} ORDER BY last_ms {order}, id {order} {limit}) f \
             {JOINS} ORDER BY f.last_ms {order}, f.id {order}",
            sql.clause
        );
        let mut stmt = self.conn.prepare(&text).map_err(self.err())?;
        let rows = stmt
            .query_map(params_from_iter(params), read_record)
            .map_err(self.err())?;
        rows.collect::<Result<Vec<_>, _>>().map_err(self.err())
    }

    /// Number of records.
    pub fn len(&self) -> Result<u64, StoreError> {
        self.conn
            .query_row("SELECT count(*) FROM flows", [], |r| r.get::<_, i64>(0))
            .map(|n| n as u64)
            .map_err(self.err())
    }

    /// Whether the store holds no record.
    pub fn is_empty(&self) -> Result<bool, StoreError> {
        Ok(self.len()? == 0)
    }

    /// Bytes the database occupies (pages in use, the WAL aside).
    pub fn size_bytes(&self) -> Result<u64, StoreError> {
        let pages: i64 = self
            .conn
            .query_row("PRAGMA page_count", [], |r| r.get(0))
            .map_err(self.err())?;
        let free: i64 = self
            .conn
            .query_row("PRAGMA freelist_count", [], |r| r.get(0))
            .map_err(self.err())?;
        let size: i64 = self
            .conn
            .query_row("PRAGMA page_size", [], |r| r.get(0))
            .map_err(self.err())?;
        Ok(((pages - free).max(0) * size) as u64)
    }

    /// Applies retention at time `now_ms`: removes records older than the age bound, then the
    /// oldest records until the database is under its size bound, then ends and rules no
    /// record refers to any more, and returns freed pages to the file system.
    pub fn prune(&mut self, now_ms: i64) -> Result<Pruned, StoreError> {
        let mut out = Pruned::default();
        if let Some(age) = self.retention.max_age_ms {
            out.by_age = self
                .conn
                .execute(
                    "DELETE FROM flows WHERE last_ms < ?",
                    [now_ms.saturating_sub(age)],
                )
                .map_err(self.err())? as u64;
        }
        if let Some(max) = self.retention.max_bytes {
            while self.size_bytes()? > max {
                let n = self.len()?;
                if n == 0 {
                    break;
                }
                // The oldest tenth (at least one record) per round.
                let batch = (n / 10).max(1);
                out.by_size += self
                    .conn
                    .execute(
                        "DELETE FROM flows WHERE id IN (SELECT id FROM flows ORDER BY last_ms, id LIMIT ?)",
                        [batch as i64],
                    )
                    .map_err(self.err())? as u64;
                self.vacuum()?;
            }
        }
        if out.by_age + out.by_size > 0 {
            self.forget_orphans()?;
        }
        self.vacuum()?;
        Ok(out)
    }

    /// Removes interned ends and rules no record refers to (their numbers are never reused:
    /// the tables are AUTOINCREMENT).
    fn forget_orphans(&mut self) -> Result<(), StoreError> {
        self.conn
            .execute_batch(
                "DELETE FROM endpoints WHERE NOT EXISTS (SELECT 1 FROM flows WHERE src_ep = endpoints.id) \
                   AND NOT EXISTS (SELECT 1 FROM flows WHERE dst_ep = endpoints.id); \
                 DELETE FROM rules WHERE id != 0 \
                   AND NOT EXISTS (SELECT 1 FROM flows WHERE eg_rule = rules.id AND eg_rule != 0) \
                   AND NOT EXISTS (SELECT 1 FROM flows WHERE in_rule = rules.id AND in_rule != 0);",
            )
            .map_err(self.err())?;
        self.endpoints.clear();
        self.rules.clear();
        Ok(())
    }

    /// Returns every free page to the file system (the pragma frees one page per step).
    fn vacuum(&self) -> Result<(), StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached("PRAGMA incremental_vacuum")
            .map_err(self.err())?;
        let mut rows = stmt.query([]).map_err(self.err())?;
        while rows.next().map_err(self.err())?.is_some() {}
        Ok(())
    }

    /// The `n` pairs that exchanged the most bytes among the records matching `q`.
    pub fn top_talkers(&self, q: &Query, n: u32) -> Result<Vec<Talker>, StoreError> {
        let sql = q.to_sql()?;
        // One pass over the matching rows, summed in memory by (ends, addresses): SQLite would
        // sort every row for a GROUP BY, which is most of the cost at millions of rows. An end
        // is its pod when it has one, its address otherwise.
        let text = format!(
            "SELECT src_ep, src_ip, dst_ep, dst_ip, bytes_fwd + bytes_rev FROM flows {}",
            sql.clause
        );
        let mut groups: HashMap<(i64, IpKey, i64, IpKey), (u64, u64)> = HashMap::new();
        {
            let mut stmt = self.conn.prepare(&text).map_err(self.err())?;
            let mut rows = stmt
                .query(params_from_iter(sql.params))
                .map_err(self.err())?;
            while let Some(r) = rows.next().map_err(self.err())? {
                let (Some(se), Some(de)) = (
                    r.get::<_, Option<i64>>(0).map_err(self.err())?,
                    r.get::<_, Option<i64>>(2).map_err(self.err())?,
                ) else {
                    continue;
                };
                let key = (
                    se,
                    ip_key(r.get_ref(1).map_err(self.err())?),
                    de,
                    ip_key(r.get_ref(3).map_err(self.err())?),
                );
                let g = groups.entry(key).or_default();
                g.0 += 1;
                g.1 =
                    g.1.saturating_add(r.get::<_, i64>(4).map_err(self.err())?.max(0) as u64);
            }
        }
        let mut ends = EndNames::new(&self.conn, &self.path);
        let mut by_name: HashMap<(String, String), (u64, u64)> = HashMap::new();
        for ((se, sip, de, dip), (flows, bytes)) in groups {
            let (Some(s), Some(d)) = (ends.get(se)?, ends.get(de)?) else {
                continue;
            };
            let t = by_name.entry((s.pod_or(&sip), d.pod_or(&dip))).or_default();
            t.0 += flows;
            t.1 = t.1.saturating_add(bytes);
        }
        let mut out: Vec<_> = by_name.into_iter().collect();
        out.sort_by(|a, b| b.1.1.cmp(&a.1.1).then_with(|| a.0.cmp(&b.0)));
        out.truncate(n as usize);
        Ok(out
            .into_iter()
            .map(|((from, to), (flows, bytes))| Talker {
                from: hex_to_ip(from),
                to: hex_to_ip(to),
                flows,
                bytes,
            })
            .collect())
    }

    /// Dropped records by the policy that decided them (either side).
    pub fn denied_by_policy(&self, q: &Query) -> Result<Vec<Denied>, StoreError> {
        let sql = q.to_sql()?;
        let clause = if sql.clause.is_empty() {
            "WHERE verdict = 2".to_string()
        } else {
            format!("{} AND verdict = 2", sql.clause)
        };
        let text = format!(
            "SELECT CASE \
               WHEN i.rule_index = -1 AND i.kind != '' THEN 'default deny ' || i.kind || ' ' || i.ns || '/' || i.name \
               WHEN e.rule_index = -1 AND e.kind != '' THEN 'default deny ' || e.kind || ' ' || e.ns || '/' || e.name \
               WHEN i.name != '' THEN i.kind || ' ' || i.ns || '/' || i.name \
               WHEN e.name != '' THEN e.kind || ' ' || e.ns || '/' || e.name \
               ELSE '(no policy)' END AS p, sum(g.n), sum(g.c) \
             FROM (SELECT eg_rule, in_rule, count(*) AS n, sum(count) AS c FROM flows {clause} \
                   GROUP BY eg_rule, in_rule) g \
             JOIN rules e ON e.id = g.eg_rule JOIN rules i ON i.id = g.in_rule \
             GROUP BY p ORDER BY sum(g.n) DESC, p"
        );
        let mut stmt = self.conn.prepare(&text).map_err(self.err())?;
        let rows = stmt
            .query_map(params_from_iter(sql.params), |r| {
                Ok(Denied {
                    policy: r.get(0)?,
                    flows: r.get::<_, i64>(1)? as u64,
                    events: r.get::<_, i64>(2)? as u64,
                })
            })
            .map_err(self.err())?;
        rows.collect::<Result<Vec<_>, _>>().map_err(self.err())
    }

    /// Service-map edges (workload -> workload or Service, per destination port and protocol)
    /// with verdict counts and bytes, among the records matching `q`.
    ///
    /// A connection between two pods is observed twice, leaving the source and arriving at the
    /// destination; it counts once, with the outcome at the destination (a refusal at the
    /// source counts there, since the connection never arrived). Leaving a pod for a Service or
    /// an address outside the cluster, the source's observation is the edge.
    pub fn edges(&self, q: &Query) -> Result<Vec<Edge>, StoreError> {
        let sql = q.to_sql()?;
        // One pass over the matching rows, summed in memory (see `top_talkers`).
        let text = format!(
            "SELECT src_ep, src_ip, dst_ep, dst_ip, dst_port, protocol, verdict, point, \
               bytes_fwd + bytes_rev FROM flows {} is_reply = 0",
            if sql.clause.is_empty() {
                "WHERE".to_string()
            } else {
                format!("{} AND", sql.clause)
            }
        );
        type Key = (i64, IpKey, i64, IpKey, u16, u8);
        // Forwarded, dropped, audit, bytes.
        let mut groups: HashMap<Key, [u64; 4]> = HashMap::new();
        let mut ends = EndNames::new(&self.conn, &self.path);
        {
            let mut stmt = self.conn.prepare(&text).map_err(self.err())?;
            let mut rows = stmt
                .query(params_from_iter(sql.params))
                .map_err(self.err())?;
            while let Some(r) = rows.next().map_err(self.err())? {
                let (Some(se), Some(de)) = (
                    r.get::<_, Option<i64>>(0).map_err(self.err())?,
                    r.get::<_, Option<i64>>(2).map_err(self.err())?,
                ) else {
                    continue;
                };
                let verdict: i64 = r.get(6).map_err(self.err())?;
                let point: i64 = r.get(7).map_err(self.err())?;
                // A connection between two pods counts once, at its destination; leaving the
                // source it counts only when it was refused there.
                if point == 1 && verdict != 2 {
                    match ends.get(de)? {
                        Some(d) if !d.pod.is_empty() => continue,
                        None => continue,
                        Some(_) => {}
                    }
                }
                let key = (
                    se,
                    ip_key(r.get_ref(1).map_err(self.err())?),
                    de,
                    ip_key(r.get_ref(3).map_err(self.err())?),
                    r.get::<_, i64>(4).map_err(self.err())? as u16,
                    r.get::<_, i64>(5).map_err(self.err())? as u8,
                );
                let g = groups.entry(key).or_default();
                match verdict {
                    1 => g[0] += 1,
                    2 => g[1] += 1,
                    3 => g[2] += 1,
                    _ => {}
                }
                g[3] = g[3].saturating_add(r.get::<_, i64>(8).map_err(self.err())?.max(0) as u64);
            }
        }
        let mut by_name: HashMap<(String, String, u16, u8), [u64; 4]> = HashMap::new();
        for ((se, sip, de, dip, port, protocol), c) in groups {
            let (Some(s), Some(d)) = (ends.get(se)?, ends.get(de)?) else {
                continue;
            };
            let e = by_name
                .entry((s.workload_or(&sip), d.service_or(&dip), port, protocol))
                .or_default();
            for (a, b) in e.iter_mut().zip(c) {
                *a = a.saturating_add(b);
            }
        }
        let mut out: Vec<_> = by_name.into_iter().collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out
            .into_iter()
            .map(|((from, to, port, protocol), c)| Edge {
                from: hex_to_ip(from),
                to: hex_to_ip(to),
                port,
                protocol,
                forwarded: c[0],
                dropped: c[1],
                audit: c[2],
                bytes: c[3],
            })
            .collect())
    }

    /// The newest record's id, for followers (records are never renumbered).
    pub fn last_id(&self) -> Result<Option<i64>, StoreError> {
        self.conn
            .query_row("SELECT max(id) FROM flows", [], |r| r.get(0))
            .optional()
            .map(Option::flatten)
            .map_err(self.err())
    }
}

/// The names of stored ends, read once per end for an aggregate.
struct EndNames<'c> {
    conn: &'c Connection,
    path: &'c Path,
    cache: HashMap<i64, Option<Rc<EndName>>>,
}

/// What an aggregate names an end by.
#[derive(Debug)]
struct EndName {
    ns: String,
    pod: String,
    workload: String,
    service: String,
}

impl EndName {
    /// `namespace/pod`, or the address (as SQLite's `hex()`, see [`hex_to_ip`]).
    fn pod_or(&self, ip: &IpKey) -> String {
        if self.pod.is_empty() {
            hex_of_key(ip)
        } else {
            format!("{}/{}", self.ns, self.pod)
        }
    }

    /// The workload (`namespace/Kind/name`), else `namespace/pod`, else the address.
    fn workload_or(&self, ip: &IpKey) -> String {
        match (self.workload.is_empty(), self.ns.is_empty()) {
            (false, false) => format!("{}/{}", self.ns, self.workload),
            (false, true) => self.workload.clone(),
            _ => self.pod_or(ip),
        }
    }

    /// The Service the flow was addressed to, else as [`EndName::workload_or`].
    fn service_or(&self, ip: &IpKey) -> String {
        if self.service.is_empty() {
            self.workload_or(ip)
        } else {
            self.service.clone()
        }
    }
}

impl<'c> EndNames<'c> {
    fn new(conn: &'c Connection, path: &'c Path) -> Self {
        Self {
            conn,
            path,
            cache: HashMap::new(),
        }
    }

    /// The end numbered `id`; `None` when no such end is stored (its rows are left out, as a
    /// join would).
    fn get(&mut self, id: i64) -> Result<Option<Rc<EndName>>, StoreError> {
        if let Some(e) = self.cache.get(&id) {
            return Ok(e.clone());
        }
        let e = self
            .conn
            .prepare_cached("SELECT ns, pod, workload, service FROM endpoints WHERE id = ?")
            .and_then(|mut st| {
                st.query_row([id], |r| {
                    Ok(EndName {
                        ns: r.get(0)?,
                        pod: r.get(1)?,
                        workload: r.get(2)?,
                        service: r.get(3)?,
                    })
                })
                .optional()
            })
            .map_err(|source| StoreError::Sqlite {
                path: self.path.to_path_buf(),
                source,
            })?
            .map(Rc::new);
        self.cache.insert(id, e.clone());
        Ok(e)
    }
}

/// A stored address as a fixed-size map key (up to 16 bytes, then the length).
type IpKey = [u8; 17];

fn ip_key(v: rusqlite::types::ValueRef<'_>) -> IpKey {
    let mut k = [0u8; 17];
    if let rusqlite::types::ValueRef::Blob(b) = v {
        let n = b.len().min(16);
        k[..n].copy_from_slice(&b[..n]);
        k[16] = n as u8;
    }
    k
}

/// The address of an [`IpKey`], as SQLite's `hex()` prints the stored blob.
fn hex_of_key(k: &IpKey) -> String {
    hex_upper(&k[..usize::from(k[16]).min(16)])
}

fn hex_upper(b: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        let _ = write!(s, "{x:02X}");
    }
    s
}

/// Aggregates render ends outside the cluster as the hex of their stored address; turn it
/// back into an address (anything else is returned as it is).
fn hex_to_ip(s: String) -> String {
    if !(s.len() == 8 || s.len() == 32) || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return s;
    }
    let bytes: Option<Vec<u8>> = s
        .as_bytes()
        .chunks(2)
        .map(|c| {
            std::str::from_utf8(c)
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        })
        .collect();
    bytes.and_then(|b| ip_of(&b)).map_or(s, |ip| ip.to_string())
}
