//! The flow pipeline: ring buffer -> enrich -> aggregate -> store, live subscribers and
//! exporters.
//!
//! - One task reads the kernel's ring buffer, enriches each event ([`Enricher`]) and feeds the
//!   [`Aggregator`]. Every [`FLUSH`] it refreshes open connections' counters from conntrack (a
//!   bounded number per tick, round robin) and flushes what changed as one [`Batch`] with
//!   sequence numbers.
//! - A batch goes to the store's writer thread and to every live subscriber (a broadcast). The
//!   writer hands it on to every exporter once its transaction has ended, so an export never
//!   holds a record that a kill took from the store before its commit. Every consumer is
//!   behind a bounded queue. Nothing waits for a slow consumer: a full
//!   queue loses the batch *for that consumer*, and the loss is counted where it happened
//!   ([`Stats`]), reported by `ServerStatus` and exported as metrics. Never silent.
//! - The kernel's own loss (ring buffer full) is its `events_lost` counter.
//!
//! The writer commits each batch in one transaction (WAL, so a kill -9 loses nothing
//! committed) and applies retention every [`PRUNE_EVERY`].

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use septum_datapath::{EventReader, Observer};
use septum_datapath_common::{
    CT_F_CLOSING, Counter, CtEntry, CtKey, FAMILY_IPV4, FAMILY_IPV6, FlowEvent,
};
use septum_flowlog::aggregate::{Aggregator, ConnKey, Counters, Settings as AggSettings};
use septum_flowlog::export::JsonLines;
use septum_flowlog::{FlowRecord, Point, Retention, Store, Verdict};
use tokio::sync::broadcast;

use super::enrich::Enricher;

/// How often changed records are flushed to the store, subscribers and exporters.
pub const FLUSH: Duration = Duration::from_millis(200);
/// How often open connections' counters are read from conntrack.
const COUNTER_REFRESH: Duration = Duration::from_secs(1);
/// Most connections whose counters are read per refresh (two map lookups each).
const COUNTER_BATCH: usize = 8192;
/// A connection conntrack no longer holds ends, unless it is younger than this (the event can
/// arrive before the entry is visible to the reader).
const CT_GRACE_MS: i64 = 2000;
/// Retention pass and store size refresh.
const PRUNE_EVERY: Duration = Duration::from_secs(10);
/// Batches queued for the store writer (about FLUSH x this of backlog).
const STORE_QUEUE: usize = 256;
/// Most records the writer commits in one transaction when batches queue up.
const COALESCE_RECORDS: usize = 50_000;
/// Batches a live subscriber may fall behind.
const LIVE_QUEUE: usize = 1024;
/// Batches queued for an exporter.
const EXPORT_QUEUE: usize = 256;

/// The pipeline's settings.
#[derive(Clone, Debug)]
pub struct FlowSettings {
    /// The SQLite store.
    pub store: PathBuf,
    /// What the store keeps.
    pub retention: Retention,
    /// A JSON-lines export: path, rotation size, rotated files kept.
    pub jsonl: Option<(PathBuf, u64, u32)>,
    /// An OTLP logs endpoint (`http://host:4317`).
    pub otlp: Option<String>,
    /// Aggregation.
    pub aggregation: AggSettings,
}

/// One flush: records with consecutive sequence numbers from `first_seq`.
#[derive(Debug)]
pub struct Batch {
    /// Sequence number of the first record.
    pub first_seq: u64,
    /// The records (new, updated and ended ones).
    pub records: Vec<FlowRecord>,
}

/// What the pipeline did and lost. Every loss is counted where it happened.
#[derive(Debug, Default)]
pub struct Stats {
    /// Events read from the ring buffer.
    pub events: AtomicU64,
    /// Events whose codes this build does not know (dropped, counted).
    pub malformed_events: AtomicU64,
    /// Records flushed by the aggregator.
    pub records: AtomicU64,
    /// Records committed to the store.
    pub written: AtomicU64,
    /// Records the store never got because its queue was full.
    pub store_queue_full: AtomicU64,
    /// Records the store refused (write errors, a busy database past its timeout).
    pub store_errors: AtomicU64,
    /// Records live subscribers missed because they fell behind.
    pub subscriber_lagged: AtomicU64,
    /// Records the JSON-lines exporter missed (queue full or write errors).
    pub jsonl_lost: AtomicU64,
    /// Records the OTLP exporter dropped or failed to deliver.
    pub otlp_lost: AtomicU64,
    /// Records exported over OTLP.
    pub otlp_exported: AtomicU64,
    /// Records ended early because the aggregator was full.
    pub evicted: AtomicU64,
    /// Open records.
    pub open: AtomicU64,
    /// The kernel's `events_lost` counter (ring buffer full), cumulative since the maps were
    /// created.
    pub ring_lost: AtomicU64,
    /// The kernel's `events_sent` counter.
    pub ring_sent: AtomicU64,
    /// Stored records, as of the last retention pass.
    pub stored: AtomicU64,
    /// Store file size, as of the last retention pass.
    pub store_bytes: AtomicU64,
    /// Records removed by retention.
    pub pruned: AtomicU64,
    /// Events by verdict (index: the verdict code).
    pub verdicts: [AtomicU64; 4],
    /// Drop events by drop-reason code.
    pub reasons: [AtomicU64; 16],
    /// Drop events by the deciding rule's cookie (0: none).
    pub drops_by_cookie: Mutex<HashMap<u32, u64>>,
}

/// The shared half of the pipeline: what the gRPC service and the metrics read.
#[derive(Debug)]
pub struct FlowHub {
    /// This node.
    pub node: String,
    /// Counters.
    pub stats: Stats,
    /// The store.
    pub store_path: PathBuf,
    /// Its retention.
    pub retention: Retention,
    live: broadcast::Sender<Arc<Batch>>,
    next_seq: AtomicU64,
    readers: Mutex<Vec<Store>>,
    enricher: Arc<RwLock<Arc<Enricher>>>,
}

/// A live subscription (see [`FlowHub::subscribe`]).
#[derive(Debug)]
pub struct Subscription {
    rx: broadcast::Receiver<Arc<Batch>>,
    next_seq: u64,
}

impl Subscription {
    /// The next batch and how many records were missed before it; `None` when the pipeline
    /// stopped.
    pub async fn recv(&mut self) -> Option<(u64, Arc<Batch>)> {
        loop {
            match self.rx.recv().await {
                Ok(b) => {
                    let lost = b.first_seq.saturating_sub(self.next_seq);
                    self.next_seq = b.first_seq + b.records.len() as u64;
                    return Some((lost, b));
                }
                // Counted from the sequence numbers of the next batch received.
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}

impl FlowHub {
    /// A hub for `node`'s store, reading enrichment tables from `enricher`.
    pub fn new(
        node: &str,
        store_path: PathBuf,
        retention: Retention,
        enricher: Arc<RwLock<Arc<Enricher>>>,
    ) -> Self {
        let (live, _) = broadcast::channel(LIVE_QUEUE);
        Self {
            node: node.to_string(),
            stats: Stats::default(),
            store_path,
            retention,
            live,
            next_seq: AtomicU64::new(0),
            readers: Mutex::new(Vec::new()),
            enricher,
        }
    }

    /// Subscribes to every batch flushed from now on.
    pub fn subscribe(&self) -> Subscription {
        let rx = self.live.subscribe();
        Subscription {
            rx,
            next_seq: self.next_seq.load(Relaxed),
        }
    }

    /// Records a subscriber missed (counted once, by the subscriber that missed them).
    pub fn count_lagged(&self, n: u64) {
        self.stats.subscriber_lagged.fetch_add(n, Relaxed);
    }

    /// The enrichment tables in force.
    pub fn enricher(&self) -> Arc<Enricher> {
        self.enricher
            .read()
            .map(|g| g.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    /// Runs `f` on a read connection to the store (pooled; opened on demand). Blocking: call
    /// it from a blocking thread.
    pub fn with_reader<T>(
        &self,
        f: impl FnOnce(&Store) -> Result<T, septum_flowlog::StoreError>,
    ) -> Result<T, septum_flowlog::StoreError> {
        let pooled = self.readers.lock().ok().and_then(|mut p| p.pop());
        let store = match pooled {
            Some(s) => s,
            None => Store::open(&self.store_path, self.retention)?,
        };
        let out = f(&store);
        if let Ok(mut p) = self.readers.lock()
            && p.len() < 4
        {
            p.push(store);
        }
        out
    }

    /// Every loss, by where it happened (the names of the `source` label and of
    /// `ServerStatus`'s losses).
    pub fn losses(&self) -> Vec<(&'static str, u64)> {
        let s = &self.stats;
        let v = |a: &AtomicU64| a.load(Relaxed);
        vec![
            ("ring_full", v(&s.ring_lost)),
            ("malformed_event", v(&s.malformed_events)),
            ("queue_full", v(&s.store_queue_full)),
            ("store_error", v(&s.store_errors)),
            ("subscriber_lagged", v(&s.subscriber_lagged)),
            ("exporter_jsonl", v(&s.jsonl_lost)),
            ("exporter_otlp", v(&s.otlp_lost)),
        ]
    }

    fn publish(&self, records: Vec<FlowRecord>) -> Arc<Batch> {
        let n = records.len() as u64;
        let first_seq = self.next_seq.fetch_add(n, Relaxed);
        let batch = Arc::new(Batch { first_seq, records });
        // No receivers is not a loss: nobody is following.
        let _ = self.live.send(batch.clone());
        batch
    }
}

/// `CLOCK_MONOTONIC` in ns: the clock of `bpf_ktime_get_ns` (and of the events a test or a
/// benchmark feeds to [`Ingest`]).
pub fn mono_ns() -> u64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `t` is a valid timespec to write into; CLOCK_MONOTONIC always exists.
    if unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut t) } != 0 {
        return 0;
    }
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

/// Converts kernel timestamps to wall time.
#[derive(Clone, Copy, Debug)]
struct Clock {
    wall_ms: i64,
    mono_ns: u64,
}

impl Clock {
    fn now() -> Self {
        Self {
            wall_ms: septum_flowlog::time::now_ms(),
            mono_ns: mono_ns(),
        }
    }

    fn wall(&self, ktime_ns: u64) -> i64 {
        if ktime_ns >= self.mono_ns {
            self.wall_ms + ((ktime_ns - self.mono_ns) / 1_000_000) as i64
        } else {
            self.wall_ms - ((self.mono_ns - ktime_ns) / 1_000_000) as i64
        }
    }
}

/// The conntrack key of a connection as seen at its point.
fn ct_key(k: &ConnKey) -> Option<CtKey> {
    let bytes = |ip: std::net::IpAddr| match ip {
        std::net::IpAddr::V4(v4) => {
            let mut b = [0u8; 16];
            b[..4].copy_from_slice(&v4.octets());
            (FAMILY_IPV4, b)
        }
        std::net::IpAddr::V6(v6) => (FAMILY_IPV6, v6.octets()),
    };
    let (family, saddr) = bytes(k.src?);
    let (_, daddr) = bytes(k.dst?);
    Some(CtKey {
        saddr,
        daddr,
        sport: k.sport,
        dport: k.dport,
        protocol: k.protocol,
        family,
        point: match k.point {
            Point::FromPod => septum_datapath_common::POINT_FROM_POD,
            Point::ToPod => septum_datapath_common::POINT_TO_POD,
        },
        _pad: 0,
    })
}

/// A bounded queue to a consumer thread; a full queue loses the batch for that consumer and
/// counts its records.
struct Sink {
    tx: SyncSender<Arc<Batch>>,
}

impl Sink {
    fn send(&self, batch: &Arc<Batch>, lost: &AtomicU64) {
        match self.tx.try_send(batch.clone()) {
            Ok(()) => {}
            Err(TrySendError::Full(b) | TrySendError::Disconnected(b)) => {
                lost.fetch_add(b.records.len() as u64, Relaxed);
            }
        }
    }
}

/// The exporters, fed by the store writer: a batch is handed on only once its transaction has
/// ended (committed, or counted in `store_errors`), so what is exported is a subset of what is
/// stored; a crash before a commit takes the batch from both. A batch the store's full queue
/// refuses (counted in `store_queue_full`) is not exported either.
struct Exporters {
    jsonl: Option<Sink>,
    otlp: Option<Arc<super::OtlpSink>>,
}

impl Exporters {
    fn send(&self, batches: &[Arc<Batch>], stats: &Stats) {
        for batch in batches {
            if let Some(j) = &self.jsonl {
                j.send(batch, &stats.jsonl_lost);
            }
            if let Some(o) = &self.otlp {
                o.send(&batch.records);
            }
        }
    }
}

fn store_writer(hub: Arc<FlowHub>, exporters: Exporters, rx: Receiver<Arc<Batch>>) {
    let mut store = loop {
        match Store::open(&hub.store_path, hub.retention) {
            Ok(s) => break s,
            Err(e) => {
                tracing::error!(error = %e, "cannot open the flow store; retrying");
                // Records queued meanwhile are counted as lost when the queue fills.
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    };
    let mut last_prune: Option<Instant> = None;
    loop {
        match rx.recv_timeout(PRUNE_EVERY) {
            Ok(first) => {
                // Whatever queued behind it joins the same transaction: under load, fewer and
                // larger commits (each index page a commit touches is written once per commit).
                let mut batches = vec![first];
                let mut n = batches[0].records.len();
                while n < COALESCE_RECORDS {
                    match rx.try_recv() {
                        Ok(b) => {
                            n += b.records.len();
                            batches.push(b);
                        }
                        Err(_) => break,
                    }
                }
                match store.write_all(batches.iter().flat_map(|b| b.records.iter())) {
                    Ok(n) => {
                        hub.stats.written.fetch_add(n as u64, Relaxed);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, records = n, "flow store write failed");
                        hub.stats.store_errors.fetch_add(n as u64, Relaxed);
                    }
                }
                exporters.send(&batches, &hub.stats);
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        if last_prune.is_none_or(|t| t.elapsed() >= PRUNE_EVERY) {
            last_prune = Some(Instant::now());
            match store.prune(septum_flowlog::time::now_ms()) {
                Ok(p) => {
                    hub.stats.pruned.fetch_add(p.by_age + p.by_size, Relaxed);
                }
                Err(e) => tracing::warn!(error = %e, "flow store retention failed"),
            }
            if let Ok(n) = store.len() {
                hub.stats.stored.store(n, Relaxed);
            }
            if let Ok(n) = store.size_bytes() {
                hub.stats.store_bytes.store(n, Relaxed);
            }
        }
    }
}

fn jsonl_writer(hub: Arc<FlowHub>, mut out: JsonLines, rx: Receiver<Arc<Batch>>) {
    while let Ok(batch) = rx.recv() {
        if let Err(e) = out.write(&batch.records) {
            tracing::warn!(error = %e, "JSON-lines export failed");
            hub.stats
                .jsonl_lost
                .fetch_add(batch.records.len() as u64, Relaxed);
        }
    }
}

fn spawn_sink(
    name: &str,
    run: impl FnOnce(Receiver<Arc<Batch>>) + Send + 'static,
    capacity: usize,
) -> std::io::Result<(Sink, JoinHandle<()>)> {
    let (tx, rx) = sync_channel(capacity);
    let thread = std::thread::Builder::new()
        .name(format!("flows-{name}"))
        .spawn(move || run(rx))?;
    Ok((Sink { tx }, thread))
}

/// The pipeline's own state, on its task.
struct Pipeline {
    hub: Arc<FlowHub>,
    /// The kernel's maps, for conntrack counters (none when fed without a datapath).
    observer: Option<Observer>,
    agg: Aggregator,
    /// To the store writer, which hands each batch on to the exporters after its commit.
    store: Sink,
    /// The OTLP exporter (the store writer feeds it), for its own counters.
    otlp: Option<Arc<super::OtlpSink>>,
    cursor: usize,
    last_refresh: Instant,
}

impl Pipeline {
    fn take(&mut self, events: &[FlowEvent], enricher: &Enricher) {
        let clock = Clock::now();
        let stats = &self.hub.stats;
        stats.events.fetch_add(events.len() as u64, Relaxed);
        for ev in events {
            let Some(o) = enricher.observe(ev, clock.wall(ev.timestamp_ns)) else {
                stats.malformed_events.fetch_add(1, Relaxed);
                continue;
            };
            stats.verdicts[usize::from(o.verdict.code()) & 3].fetch_add(1, Relaxed);
            if o.verdict == Verdict::Dropped {
                stats.reasons[usize::from(o.drop_reason) & 15].fetch_add(1, Relaxed);
                let cookie = if ev.flags & septum_datapath_common::EVENT_F_DENIED_BY_EGRESS != 0 {
                    ev.egress_cookie
                } else {
                    ev.ingress_cookie
                };
                if let Ok(mut m) = stats.drops_by_cookie.lock() {
                    *m.entry(cookie).or_default() += 1;
                }
            }
            self.agg.observe(o);
        }
    }

    /// Reads conntrack's counters for up to [`COUNTER_BATCH`] open connections.
    fn refresh_counters(&mut self) {
        let Some(observer) = &self.observer else {
            return;
        };
        let clock = Clock::now();
        let keys: Vec<ConnKey> = self.agg.connections().cloned().collect();
        if keys.is_empty() {
            return;
        }
        if self.cursor >= keys.len() {
            self.cursor = 0;
        }
        let end = (self.cursor + COUNTER_BATCH).min(keys.len());
        for key in &keys[self.cursor..end] {
            let Some(ct) = ct_key(key) else { continue };
            let fwd = observer.conntrack.get(&ct);
            // The other direction's entry: at the other point, or at the same one for a
            // node-local flow (which its forward entry's flags say).
            let rev = observer
                .conntrack
                .get(&ct.reply_key(fwd.map_or(0, |f| f.flags)));
            match (fwd, rev) {
                (None, None) => {
                    let young = self
                        .agg
                        .first_seen(key)
                        .is_some_and(|t| clock.wall_ms - t < CT_GRACE_MS);
                    if !young {
                        self.agg.close(key);
                    }
                }
                (f, r) => {
                    let f = f.unwrap_or_default();
                    let r = r.unwrap_or_default();
                    let last = f.last_seen_ns.max(r.last_seen_ns);
                    let closing = |e: &CtEntry| e.flags & CT_F_CLOSING != 0;
                    self.agg.update(
                        key,
                        Counters {
                            packets_forward: f.packets,
                            bytes_forward: f.bytes,
                            packets_reverse: r.packets,
                            bytes_reverse: r.bytes,
                            last_seen_ms: clock.wall(last),
                            closing: closing(&f) && closing(&r),
                        },
                    );
                }
            }
        }
        self.cursor = end;
    }

    fn flush(&mut self) {
        if self.last_refresh.elapsed() >= COUNTER_REFRESH {
            self.last_refresh = Instant::now();
            self.refresh_counters();
            if let Some(Ok(c)) = self.observer.as_ref().map(Observer::counters) {
                for (counter, v) in c {
                    match counter {
                        Counter::EventsLost => self.hub.stats.ring_lost.store(v, Relaxed),
                        Counter::EventsSent => self.hub.stats.ring_sent.store(v, Relaxed),
                        _ => {}
                    }
                }
            }
        }
        let records = self.agg.flush(septum_flowlog::time::now_ms());
        let stats = &self.hub.stats;
        stats.open.store(self.agg.open() as u64, Relaxed);
        stats.evicted.store(self.agg.evicted(), Relaxed);
        if records.is_empty() {
            return;
        }
        stats.records.fetch_add(records.len() as u64, Relaxed);
        let batch = self.hub.publish(records);
        self.store.send(&batch, &stats.store_queue_full);
    }
}

/// The pipeline fed by its caller rather than a ring buffer: the same enrichment,
/// aggregation, queues, store writer and exporters as [`run`], for benchmarks and tests.
pub struct Ingest {
    pipeline: Pipeline,
    store_thread: JoinHandle<()>,
}

impl std::fmt::Debug for Ingest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ingest")
            .field("open", &self.pipeline.agg.open())
            .finish_non_exhaustive()
    }
}

impl Ingest {
    /// Starts the store writer and the exporters `settings` name; `observer` reads conntrack's
    /// counters (none: connections stay open until idle or evicted).
    pub fn start(
        hub: Arc<FlowHub>,
        settings: &FlowSettings,
        observer: Option<Observer>,
    ) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        let jsonl = match &settings.jsonl {
            Some((path, max, keep)) => {
                let out = JsonLines::open(path, *max, *keep)
                    .with_context(|| format!("opening the JSON-lines export {}", path.display()))?;
                let h = hub.clone();
                Some(spawn_sink("jsonl", move |rx| jsonl_writer(h, out, rx), EXPORT_QUEUE)?.0)
            }
            None => None,
        };
        let otlp = match &settings.otlp {
            Some(endpoint) => Some(Arc::new(super::OtlpSink::start(endpoint, &hub)?)),
            None => None,
        };
        let exporters = Exporters {
            jsonl,
            otlp: otlp.clone(),
        };
        let h = hub.clone();
        let (store, store_thread) = spawn_sink(
            "store",
            move |rx| store_writer(h, exporters, rx),
            STORE_QUEUE,
        )?;
        Ok(Self {
            pipeline: Pipeline {
                hub,
                observer,
                agg: Aggregator::new(settings.aggregation),
                store,
                otlp,
                cursor: 0,
                last_refresh: Instant::now(),
            },
            store_thread,
        })
    }

    /// Enriches and aggregates a batch of events, as read from the ring buffer.
    pub fn take(&mut self, events: &[FlowEvent]) {
        let enricher = self.pipeline.hub.enricher();
        self.pipeline.take(events, &enricher);
    }

    /// Flushes what changed to the store, subscribers and exporters (the pipeline does this
    /// every [`FLUSH`]).
    pub fn flush(&mut self) {
        self.pipeline.flush();
    }

    /// Flushes, then waits until the store writer has committed everything queued.
    pub fn finish(self) {
        let Self {
            mut pipeline,
            store_thread,
        } = self;
        pipeline.flush();
        drop(pipeline);
        let _ = store_thread.join();
    }
}

/// Starts the pipeline's threads and runs its task until the ring buffer fails. Records
/// still open when it ends are flushed first.
pub async fn run(
    hub: Arc<FlowHub>,
    events: EventReader,
    observer: Observer,
    settings: FlowSettings,
) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let mut reader = events.into_async().context("registering the ring buffer")?;
    let Ingest {
        pipeline: mut p, ..
    } = Ingest::start(hub.clone(), &settings, Some(observer))?;
    tracing::info!(store = %hub.store_path.display(), "flow pipeline running");
    let mut tick = tokio::time::interval(FLUSH);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            batch = reader.next_batch() => {
                match batch {
                    Ok(events) => {
                        let enricher = hub.enricher();
                        p.take(&events, &enricher);
                    }
                    Err(e) => {
                        p.flush();
                        return Err(e).context("reading the ring buffer");
                    }
                }
            }
            _ = tick.tick() => {
                if let Some(o) = &p.otlp {
                    o.refresh_stats(&hub.stats);
                }
                p.flush();
            }
        }
    }
}
