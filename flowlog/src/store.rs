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

use std::net::{IpAddr, Ipv6Addr};
use std::path::{Path, PathBuf};

use rusqlite::types::Value;
use rusqlite::{Connection, OptionalExtension, params_from_iter};

use crate::filter::{FilterError, Query, ip_key};
use crate::record::{FlowEnd, FlowRecord, Point, RuleRef, Verdict};

/// The schema version this build writes.
pub const SCHEMA_VERSION: i64 = 1;

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

/// The migrations, in order: migration `i` takes the schema from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[r"
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
"];

const COLUMNS: &str = "node, point, protocol, first_ms, last_ms, \
    src_ip, src_port, src_ns, src_pod, src_workload, src_labels, src_identity, src_service, \
    dst_ip, dst_port, dst_ns, dst_pod, dst_workload, dst_labels, dst_identity, dst_service, \
    verdict, drop_reason, eg_kind, eg_ns, eg_name, eg_tier, eg_rule, \
    in_kind, in_ns, in_name, in_tier, in_rule, \
    tcp_flags, packets_fwd, bytes_fwd, packets_rev, bytes_rev, is_reply, count";

/// The flow store.
#[derive(Debug)]
pub struct Store {
    conn: Connection,
    path: PathBuf,
    retention: Retention,
}

fn ip_of(v: Option<Vec<u8>>) -> Option<IpAddr> {
    let b: [u8; 16] = v?.try_into().ok()?;
    let v6 = Ipv6Addr::from(b);
    Some(match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    })
}

fn end_params(e: &FlowEnd, out: &mut Vec<Value>) {
    out.push(e.ip.map_or(Value::Null, |ip| Value::Blob(ip_key(ip).to_vec())));
    out.push(Value::Integer(i64::from(e.port)));
    out.push(Value::Text(e.namespace.clone()));
    out.push(Value::Text(e.pod.clone()));
    out.push(Value::Text(e.workload.clone()));
    out.push(Value::Text(
        serde_json::to_string(&e.labels).unwrap_or_else(|_| "{}".into()),
    ));
    out.push(Value::Integer(i64::from(e.identity)));
    out.push(Value::Text(e.service.clone()));
}

fn rule_params(r: &Option<RuleRef>, out: &mut Vec<Value>) {
    let d = RuleRef::default();
    let r = r.as_ref().unwrap_or(&d);
    out.push(Value::Text(r.kind.clone()));
    out.push(Value::Text(r.namespace.clone()));
    out.push(Value::Text(r.name.clone()));
    out.push(Value::Text(r.tier.clone()));
    out.push(Value::Integer(i64::from(r.rule_index)));
}

/// Counters are u64 in the record and i64 in SQLite; saturate rather than wrap.
fn int(n: u64) -> Value {
    Value::Integer(i64::try_from(n).unwrap_or(i64::MAX))
}

fn record_params(r: &FlowRecord) -> Vec<Value> {
    let mut v = vec![
        Value::Text(r.node.clone()),
        Value::Integer(i64::from(r.point.code())),
        Value::Integer(i64::from(r.protocol)),
        Value::Integer(r.first_seen_ms),
        Value::Integer(r.last_seen_ms),
    ];
    end_params(&r.src, &mut v);
    end_params(&r.dst, &mut v);
    v.push(Value::Integer(i64::from(r.verdict.code())));
    v.push(Value::Integer(i64::from(r.drop_reason)));
    rule_params(&r.egress_rule, &mut v);
    rule_params(&r.ingress_rule, &mut v);
    v.push(Value::Integer(i64::from(r.tcp_flags)));
    v.push(int(r.packets_forward));
    v.push(int(r.bytes_forward));
    v.push(int(r.packets_reverse));
    v.push(int(r.bytes_reverse));
    v.push(Value::Integer(i64::from(r.is_reply)));
    v.push(int(r.count));
    v
}

fn read_end(row: &rusqlite::Row<'_>, base: usize) -> rusqlite::Result<FlowEnd> {
    let labels: String = row.get(base + 5)?;
    Ok(FlowEnd {
        ip: ip_of(row.get(base)?),
        port: row.get::<_, i64>(base + 1)? as u16,
        namespace: row.get(base + 2)?,
        pod: row.get(base + 3)?,
        workload: row.get(base + 4)?,
        labels: serde_json::from_str(&labels).unwrap_or_default(),
        identity: row.get::<_, i64>(base + 6)? as u32,
        service: row.get(base + 7)?,
    })
}

fn read_rule(row: &rusqlite::Row<'_>, base: usize) -> rusqlite::Result<Option<RuleRef>> {
    let r = RuleRef {
        kind: row.get(base)?,
        namespace: row.get(base + 1)?,
        name: row.get(base + 2)?,
        tier: row.get(base + 3)?,
        rule_index: row.get::<_, i64>(base + 4)? as i32,
    };
    Ok((!r.kind.is_empty()).then_some(r))
}

fn read_record(row: &rusqlite::Row<'_>) -> rusqlite::Result<FlowRecord> {
    let u = |i: usize| -> rusqlite::Result<u64> { Ok(row.get::<_, i64>(i)?.max(0) as u64) };
    Ok(FlowRecord {
        node: row.get(0)?,
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
        conn.execute_batch(
            "PRAGMA auto_vacuum = INCREMENTAL; PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;",
        )
        .map_err(e)?;
        if let Ok(x) = std::env::var("XP") {
            conn.execute_batch(&x).map_err(e)?;
        }
        let mut store = Self {
            conn,
            path: path.to_path_buf(),
            retention,
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
        let path = self.path.clone();
        let e = |source| StoreError::Sqlite {
            path: path.clone(),
            source,
        };
        let placeholders = vec!["?"; 40].join(", ");
        let sql = format!(
            "INSERT INTO flows ({COLUMNS}) VALUES ({placeholders}) \
             ON CONFLICT (node, point, protocol, src_ip, src_port, dst_ip, dst_port, first_ms) DO UPDATE SET \
             last_ms = max(last_ms, excluded.last_ms), verdict = excluded.verdict, \
             drop_reason = excluded.drop_reason, tcp_flags = tcp_flags | excluded.tcp_flags, \
             packets_fwd = excluded.packets_fwd, bytes_fwd = excluded.bytes_fwd, \
             packets_rev = excluded.packets_rev, bytes_rev = excluded.bytes_rev, \
             count = excluded.count"
        );
        let tx = self.conn.transaction().map_err(e)?;
        {
            let mut stmt = tx.prepare_cached(&sql).map_err(e)?;
            for r in records {
                stmt.execute(params_from_iter(record_params(r)))
                    .map_err(e)?;
            }
        }
        tx.commit().map_err(e)?;
        Ok(records.len())
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
        let text = format!(
            "SELECT {COLUMNS} FROM flows {} ORDER BY last_ms {order}, id {order} {limit}",
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
    /// oldest records until the database is under its size bound, and returns freed pages to
    /// the file system.
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
        self.vacuum()?;
        Ok(out)
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
        let mut params = sql.params;
        params.push(Value::Integer(i64::from(n)));
        let end = |s: &str| {
            format!(
                "CASE WHEN {s}_pod != '' THEN {s}_ns || '/' || {s}_pod ELSE coalesce(hex({s}_ip), '') END"
            )
        };
        let text = format!(
            "SELECT {} AS f, {} AS t, count(*), sum(bytes_fwd + bytes_rev) AS b FROM flows {} \
             GROUP BY f, t ORDER BY b DESC, f, t LIMIT ?",
            end("src"),
            end("dst"),
            sql.clause
        );
        let mut stmt = self.conn.prepare(&text).map_err(self.err())?;
        let rows = stmt
            .query_map(params_from_iter(params), |r| {
                Ok(Talker {
                    from: hex_to_ip(r.get(0)?),
                    to: hex_to_ip(r.get(1)?),
                    flows: r.get::<_, i64>(2)? as u64,
                    bytes: r.get::<_, i64>(3)? as u64,
                })
            })
            .map_err(self.err())?;
        rows.collect::<Result<Vec<_>, _>>().map_err(self.err())
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
               WHEN in_rule = -1 OR eg_rule = -1 THEN 'default deny ' || \
                 CASE WHEN in_rule = -1 THEN in_kind || ' ' || in_ns || '/' || in_name ELSE eg_kind || ' ' || eg_ns || '/' || eg_name END \
               WHEN in_name != '' THEN in_kind || ' ' || in_ns || '/' || in_name \
               WHEN eg_name != '' THEN eg_kind || ' ' || eg_ns || '/' || eg_name \
               ELSE '(no policy)' END AS p, count(*), sum(count) \
             FROM flows {clause} GROUP BY p ORDER BY count(*) DESC, p"
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
        let from = "CASE WHEN src_workload != '' AND src_ns != '' THEN src_ns || '/' || src_workload \
                    WHEN src_workload != '' THEN src_workload \
                    WHEN src_pod != '' THEN src_ns || '/' || src_pod ELSE coalesce(hex(src_ip), '') END";
        let to = "CASE WHEN dst_service != '' THEN dst_service \
                  WHEN dst_workload != '' AND dst_ns != '' THEN dst_ns || '/' || dst_workload \
                  WHEN dst_workload != '' THEN dst_workload \
                  WHEN dst_pod != '' THEN dst_ns || '/' || dst_pod ELSE coalesce(hex(dst_ip), '') END";
        let text = format!(
            "SELECT {from} AS f, {to} AS t, dst_port, protocol, \
               sum(verdict = 1), sum(verdict = 2), sum(verdict = 3), sum(bytes_fwd + bytes_rev) \
             FROM flows {} AND is_reply = 0 \
               AND NOT (point = 1 AND verdict != 2 AND dst_pod != '') \
             GROUP BY f, t, dst_port, protocol ORDER BY f, t, dst_port, protocol",
            if sql.clause.is_empty() {
                "WHERE 1".to_string()
            } else {
                sql.clause
            }
        );
        let mut stmt = self.conn.prepare(&text).map_err(self.err())?;
        let rows = stmt
            .query_map(params_from_iter(sql.params), |r| {
                Ok(Edge {
                    from: hex_to_ip(r.get(0)?),
                    to: hex_to_ip(r.get(1)?),
                    port: r.get::<_, i64>(2)? as u16,
                    protocol: r.get::<_, i64>(3)? as u8,
                    forwarded: r.get::<_, i64>(4)? as u64,
                    dropped: r.get::<_, i64>(5)? as u64,
                    audit: r.get::<_, i64>(6)? as u64,
                    bytes: r.get::<_, i64>(7)? as u64,
                })
            })
            .map_err(self.err())?;
        rows.collect::<Result<Vec<_>, _>>().map_err(self.err())
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

/// Aggregates render ends outside the cluster as the hex of their stored key; turn it back
/// into an address (anything else is returned as it is).
fn hex_to_ip(s: String) -> String {
    if s.len() != 32 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return s;
    }
    let mut b = [0u8; 16];
    for (i, chunk) in s.as_bytes().chunks(2).enumerate() {
        let hex = std::str::from_utf8(chunk).unwrap_or("00");
        b[i] = u8::from_str_radix(hex, 16).unwrap_or(0);
    }
    ip_of(Some(b.to_vec())).map_or(s, |ip| ip.to_string())
}
