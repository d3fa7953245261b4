//! Per-connection aggregation: observations (a new flow, a drop, a conntrack counter update, a
//! close) become flow records, one per connection, written when they change.
//!
//! - A new flow opens a record. Counter updates (read from conntrack) refresh its packets, bytes
//!   and last-seen time; a close or `idle_ms` without an update ends it.
//! - Drops of the same (node, point, protocol, source address, destination address and port,
//!   deciding rules) within `fold_ms` of the first fold into one record with a count and
//!   first/last time: a client retrying a refused port (new source port each time) is one line.
//! - [`Aggregator::flush`] returns every record that changed since the last flush (new, updated,
//!   ended) and forgets the ended ones; records are written again under the same identity
//!   (connection and first-seen time), so the store updates them in place.
//!
//! The aggregator holds at most `max_open` records; past that, the least recently seen sixteenth is
//! ended early (and counted in [`Aggregator::evicted`]), so memory stays bounded whatever the traffic.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use crate::record::{FlowEnd, FlowRecord, Name, Point, RuleRef, Verdict};

/// What the pipeline saw, enriched.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observation {
    /// When, ms since the epoch.
    pub time_ms: i64,
    /// Observing node.
    pub node: Name,
    /// Observation point.
    pub point: Point,
    /// IP protocol number.
    pub protocol: u8,
    /// Source.
    pub src: FlowEnd,
    /// Destination.
    pub dst: FlowEnd,
    /// Verdict of the new flow or drop.
    pub verdict: Verdict,
    /// Drop reason code (0 for a passed flow).
    pub drop_reason: u8,
    /// Deciding egress rule.
    pub egress_rule: Option<Arc<RuleRef>>,
    /// Deciding ingress rule.
    pub ingress_rule: Option<Arc<RuleRef>>,
    /// TCP flags of the packet.
    pub tcp_flags: u8,
    /// Packet length.
    pub bytes: u64,
    /// The packet was reply traffic of a connection opened the other way.
    pub is_reply: bool,
}

/// A connection's identity: where it was seen and its 5-tuple.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnKey {
    /// Observing node.
    pub node: Name,
    /// Point.
    pub point: Point,
    /// Protocol.
    pub protocol: u8,
    /// Source address.
    pub src: Option<IpAddr>,
    /// Source port.
    pub sport: u16,
    /// Destination address.
    pub dst: Option<IpAddr>,
    /// Destination port.
    pub dport: u16,
}

impl ConnKey {
    /// The key of an observation.
    pub fn of(o: &Observation) -> Self {
        Self {
            node: o.node.clone(),
            point: o.point,
            protocol: o.protocol,
            src: o.src.ip,
            sport: o.src.port,
            dst: o.dst.ip,
            dport: o.dst.port,
        }
    }
}

/// The key drops fold under (the source port left out).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct DropKey {
    conn: ConnKey,
    egress: Option<Arc<RuleRef>>,
    ingress: Option<Arc<RuleRef>>,
}

impl DropKey {
    fn of(o: &Observation) -> Self {
        let mut conn = ConnKey::of(o);
        conn.sport = 0;
        Self {
            conn,
            egress: o.egress_rule.clone(),
            ingress: o.ingress_rule.clone(),
        }
    }
}

/// Counters of one connection read from conntrack.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Packets source -> destination.
    pub packets_forward: u64,
    /// Bytes source -> destination.
    pub bytes_forward: u64,
    /// Packets back.
    pub packets_reverse: u64,
    /// Bytes back.
    pub bytes_reverse: u64,
    /// Last packet either way, ms since the epoch.
    pub last_seen_ms: i64,
    /// A FIN or RST was seen.
    pub closing: bool,
}

#[derive(Debug)]
struct Open {
    record: FlowRecord,
    dirty: bool,
}

impl Open {
    fn new(o: Observation) -> Self {
        Self {
            record: FlowRecord {
                first_seen_ms: o.time_ms,
                last_seen_ms: o.time_ms,
                node: o.node,
                point: o.point,
                protocol: o.protocol,
                src: o.src,
                dst: o.dst,
                verdict: o.verdict,
                drop_reason: o.drop_reason,
                egress_rule: o.egress_rule,
                ingress_rule: o.ingress_rule,
                tcp_flags: o.tcp_flags,
                packets_forward: 1,
                bytes_forward: o.bytes,
                packets_reverse: 0,
                bytes_reverse: 0,
                is_reply: o.is_reply,
                count: 1,
            },
            dirty: true,
        }
    }
}

/// Aggregation settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settings {
    /// Drops within this long of the first fold into one record.
    pub fold_ms: i64,
    /// A connection with no update for this long is ended.
    pub idle_ms: i64,
    /// Most open records.
    pub max_open: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            fold_ms: 10_000,
            idle_ms: 120_000,
            max_open: 262_144,
        }
    }
}

/// The aggregator.
#[derive(Debug, Default)]
pub struct Aggregator {
    settings: Settings,
    conns: HashMap<ConnKey, Open>,
    drops: HashMap<DropKey, Open>,
    /// Records that ended since the last flush (written once more, then forgotten).
    ended: Vec<FlowRecord>,
    evicted: u64,
}

impl Aggregator {
    /// An empty aggregator.
    pub fn new(settings: Settings) -> Self {
        Self {
            settings,
            ..Self::default()
        }
    }

    /// Records ended early because `max_open` was reached.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    /// Open records (connections plus drop folds).
    pub fn open(&self) -> usize {
        self.conns.len() + self.drops.len()
    }

    /// The open connections (not the drop folds), whose counters [`Aggregator::update`]
    /// refreshes, in an order that is stable while no connection opens or ends.
    pub fn connections(&self) -> impl Iterator<Item = &ConnKey> {
        self.conns.keys()
    }

    /// When an open connection's record began (ms since the epoch).
    pub fn first_seen(&self, key: &ConnKey) -> Option<i64> {
        self.conns.get(key).map(|o| o.record.first_seen_ms)
    }

    /// Takes one observation.
    pub fn observe(&mut self, o: Observation) {
        if o.verdict == Verdict::Dropped {
            let key = DropKey::of(&o);
            let fold_ms = self.settings.fold_ms;
            if let Some(open) = self.drops.get_mut(&key) {
                if o.time_ms - open.record.first_seen_ms < fold_ms {
                    let r = &mut open.record;
                    r.count += 1;
                    r.last_seen_ms = r.last_seen_ms.max(o.time_ms);
                    r.packets_forward += 1;
                    r.bytes_forward += o.bytes;
                    r.tcp_flags |= o.tcp_flags;
                    open.dirty = true;
                    return;
                }
                // Past the fold window: that fold ends, a new one starts.
                if let Some(old) = self.drops.remove(&key) {
                    self.ended.push(old.record);
                }
            }
            self.make_room();
            self.drops.insert(key, Open::new(o));
        } else {
            let key = ConnKey::of(&o);
            if let Some(open) = self.conns.get_mut(&key) {
                // Seen again (a pickup or a re-evaluation): refresh the decision.
                let r = &mut open.record;
                r.last_seen_ms = r.last_seen_ms.max(o.time_ms);
                r.verdict = o.verdict;
                r.drop_reason = o.drop_reason;
                r.egress_rule = o.egress_rule;
                r.ingress_rule = o.ingress_rule;
                r.tcp_flags |= o.tcp_flags;
                open.dirty = true;
                return;
            }
            self.make_room();
            self.conns.insert(key, Open::new(o));
        }
    }

    /// When full, ends the least recently seen sixteenth of the open records (at least one),
    /// so that under sustained overload eviction costs O(1) per record amortised rather than
    /// a scan per new record.
    fn make_room(&mut self) {
        let max = self.settings.max_open.max(1);
        if self.open() < max {
            return;
        }
        let k = (max / 16).max(1).min(self.open());
        let mut seen: Vec<i64> = self
            .conns
            .values()
            .chain(self.drops.values())
            .map(|o| o.record.last_seen_ms)
            .collect();
        let (_, cutoff, _) = seen.select_nth_unstable(k - 1);
        let cutoff = *cutoff;
        // Everything older than the cutoff goes, then ties at it until k have gone; the
        // records move out (no copies).
        let mut ties = k - seen.iter().filter(|t| **t < cutoff).count();
        let mut go = |o: &mut Open| {
            let t = o.record.last_seen_ms;
            t < cutoff
                || (t == cutoff && ties > 0 && {
                    ties -= 1;
                    true
                })
        };
        let before = self.ended.len();
        let conns = self.conns.extract_if(|_, o| go(o)).map(|(_, o)| o.record);
        self.ended.extend(conns);
        let drops = self.drops.extract_if(|_, o| go(o)).map(|(_, o)| o.record);
        self.ended.extend(drops);
        self.evicted += (self.ended.len() - before) as u64;
    }

    /// Conntrack's counters for a connection (both directions of its entry).
    pub fn update(&mut self, key: &ConnKey, c: Counters) {
        let Some(open) = self.conns.get_mut(key) else {
            return;
        };
        let r = &mut open.record;
        let counts = (
            c.packets_forward,
            c.bytes_forward,
            c.packets_reverse,
            c.bytes_reverse,
        );
        let changed = counts
            != (
                r.packets_forward,
                r.bytes_forward,
                r.packets_reverse,
                r.bytes_reverse,
            )
            || c.last_seen_ms > r.last_seen_ms;
        (
            r.packets_forward,
            r.bytes_forward,
            r.packets_reverse,
            r.bytes_reverse,
        ) = counts;
        r.last_seen_ms = r.last_seen_ms.max(c.last_seen_ms);
        open.dirty |= changed;
        if c.closing {
            self.close(key);
        }
    }

    /// The connection ended (a close, or conntrack no longer holds it).
    pub fn close(&mut self, key: &ConnKey) {
        if let Some(o) = self.conns.remove(key) {
            self.ended.push(o.record);
        }
    }

    /// Every record that changed since the last flush, ordered by first-seen time; ends idle
    /// connections and finished drop folds at `now_ms` first.
    pub fn flush(&mut self, now_ms: i64) -> Vec<FlowRecord> {
        let idle = self.settings.idle_ms;
        let fold = self.settings.fold_ms;
        let mut out = std::mem::take(&mut self.ended);
        self.conns.retain(|_, o| {
            let end = now_ms - o.record.last_seen_ms >= idle;
            if end || o.dirty {
                o.dirty = false;
                out.push(o.record.clone());
            }
            !end
        });
        self.drops.retain(|_, o| {
            let end = now_ms - o.record.first_seen_ms >= fold;
            if end || o.dirty {
                o.dirty = false;
                out.push(o.record.clone());
            }
            !end
        });
        out.sort_by_key(|r| (r.first_seen_ms, r.last_seen_ms));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(t: i64, sport: u16, verdict: Verdict) -> Observation {
        Observation {
            time_ms: t,
            node: "n1".into(),
            point: Point::ToPod,
            protocol: 6,
            src: FlowEnd {
                ip: Some("10.0.0.1".parse().unwrap()),
                port: sport,
                ..FlowEnd::default()
            },
            dst: FlowEnd {
                ip: Some("10.0.0.2".parse().unwrap()),
                port: 80,
                ..FlowEnd::default()
            },
            verdict,
            drop_reason: if verdict == Verdict::Dropped { 1 } else { 0 },
            egress_rule: None,
            ingress_rule: None,
            tcp_flags: 0x02,
            bytes: 60,
            is_reply: false,
        }
    }

    #[test]
    fn a_connection_is_opened_updated_and_ended() {
        let mut a = Aggregator::new(Settings::default());
        let o = obs(1000, 40000, Verdict::Forwarded);
        let key = ConnKey::of(&o);
        a.observe(o);
        let first = a.flush(1000);
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].packets_forward, 1);
        assert!(a.flush(1001).is_empty(), "nothing changed");
        let c = Counters {
            packets_forward: 10,
            bytes_forward: 900,
            packets_reverse: 8,
            bytes_reverse: 7000,
            last_seen_ms: 5000,
            closing: false,
        };
        a.update(&key, c);
        let upd = a.flush(5000);
        assert_eq!(
            (upd.len(), upd[0].bytes_reverse, upd[0].last_seen_ms),
            (1, 7000, 5000)
        );
        assert_eq!(
            upd[0].first_seen_ms, 1000,
            "same identity, so the store updates it"
        );
        a.update(
            &key,
            Counters {
                closing: true,
                last_seen_ms: 6000,
                ..c
            },
        );
        assert_eq!(a.flush(6000).len(), 1);
        assert_eq!(a.open(), 0);
        assert!(a.flush(7000).is_empty());
    }

    #[test]
    fn repeated_drops_fold_with_a_count_and_a_new_window_starts_a_new_record() {
        let mut a = Aggregator::new(Settings {
            fold_ms: 10_000,
            ..Settings::default()
        });
        for i in 0..5 {
            a.observe(obs(1000 + i * 1000, 40000 + i as u16, Verdict::Dropped));
        }
        let r = a.flush(5500);
        assert_eq!(r.len(), 1);
        assert_eq!(
            (r[0].count, r[0].first_seen_ms, r[0].last_seen_ms),
            (5, 1000, 5000)
        );
        a.observe(obs(12_000, 41000, Verdict::Dropped));
        let r = a.flush(12_000);
        assert_eq!(r.len(), 2, "the old fold ends, a new one starts: {r:?}");
        assert_eq!((r[0].count, r[1].count), (5, 1));
    }

    #[test]
    fn idle_connections_end_and_memory_stays_bounded() {
        let mut a = Aggregator::new(Settings {
            idle_ms: 1000,
            max_open: 10,
            ..Settings::default()
        });
        for i in 0..100u16 {
            a.observe(obs(i64::from(i), 1000 + i, Verdict::Forwarded));
            assert!(a.open() <= 10);
        }
        assert_eq!(a.evicted(), 90);
        let all = a.flush(100);
        assert_eq!(
            all.len(),
            100,
            "every connection is written, evicted ones too"
        );
        assert_eq!(a.flush(5000).len(), 10, "the idle ones end");
        assert_eq!(a.open(), 0);
    }

    #[test]
    fn a_full_aggregator_ends_the_least_recently_seen_in_bulk() {
        let mut a = Aggregator::new(Settings {
            max_open: 160,
            ..Settings::default()
        });
        for i in 0..1000u16 {
            a.observe(obs(i64::from(i), 1000 + i, Verdict::Forwarded));
            assert!(a.open() <= 160);
        }
        // Each time it fills, the least recently seen sixteenth (10 records) goes at once.
        assert!(a.open() > 150, "{}", a.open());
        assert_eq!(a.evicted(), 1000 - a.open() as u64);
        let all = a.flush(1000);
        assert_eq!(
            all.len(),
            1000,
            "every connection is written, evicted ones too"
        );
        let kept: Vec<i64> = a.conns.values().map(|o| o.record.first_seen_ms).collect();
        let oldest_kept = kept.iter().min().copied().unwrap();
        assert_eq!(
            oldest_kept,
            1000 - a.open() as i64,
            "the newest are the ones kept"
        );
    }

    #[test]
    fn the_store_keeps_one_row_per_aggregated_connection() {
        let dir = tempfile::tempdir().unwrap();
        let mut s =
            crate::Store::open(&dir.path().join("f.db"), crate::Retention::default()).unwrap();
        let mut a = Aggregator::new(Settings::default());
        let o = obs(1000, 40000, Verdict::Forwarded);
        let key = ConnKey::of(&o);
        a.observe(o);
        s.write(&a.flush(1000)).unwrap();
        for t in 1..5 {
            a.update(
                &key,
                Counters {
                    packets_forward: t,
                    last_seen_ms: 1000 + t as i64,
                    ..Counters::default()
                },
            );
            s.write(&a.flush(1000 + t as i64)).unwrap();
        }
        let rows = s.query(&crate::Query::default()).unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].packets_forward, 4);
    }
}
