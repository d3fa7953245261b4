//! septum's flow log: the [`record::FlowRecord`] a responder reads, per-connection
//! [`aggregate`]ion, [`filter`]s in the spirit of
//! `hubble observe`, and the embedded SQLite [`store::Store`] with retention and the aggregates
//! incident response asks for (top talkers, denied flows by policy, service-map edges).
//!
//! The agent's pipeline (ring buffer -> enrich -> aggregate -> store, subscribers, exporters)
//! builds on this crate; the store and queries are usable and tested on their own.

pub mod aggregate;
pub mod export;
pub mod filter;
pub mod map;
pub mod otlp;
pub mod record;
pub mod store;
pub mod time;
pub mod wire;

pub use filter::{FilterError, FlowFilter, Query};
pub use record::{FlowEnd, FlowRecord, Labels, Name, Point, RuleRef, Verdict};
pub use store::{Retention, Store, StoreError};
