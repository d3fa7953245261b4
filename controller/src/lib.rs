//! septum's cluster controller (kube-rs): it watches the API server, feeds septum's policy
//! engine exactly as standalone mode feeds it from YAML, and computes each node's slice of the
//! compiled state as revisioned snapshots and deltas.
//!
//! - [`feed`]: API objects into the model (same conversions and checks as standalone mode);
//!   watch events, relists after 410 Gone included, into [`septum_policy::Change`]s.
//! - [`compiler`]: the feed, the engine, the node states and the FlowPolicy verdicts (pure).
//! - [`node_state`]: per-node state and the delta between two revisions of it (pure).
//! - [`identities`]: identity numbers persisted in the cluster-scoped `IdentityAllocation`.
//! - [`status`]: FlowPolicy `Accepted` condition and its reconcile + error policy.
//! - [`context`]: the [`Context`], the watchers and the loop.
//! - [`metrics`]: Prometheus metrics.
//!
//! - [`stream`]: the node-state gRPC stream (mutual TLS, snapshot + revisioned deltas, resume,
//!   acks) and what has been published to it.
//! - [`leader`]: leader election on a coordination Lease.
//! - [`relay`]: the flow relay (`FlowService` for the cluster, fanned out to every agent).

#![forbid(unsafe_code)]

pub mod compiler;
pub mod context;
pub mod feed;
pub mod identities;
pub mod leader;
pub mod local;
pub mod metrics;
pub mod node_state;
pub mod relay;
pub mod status;
pub mod stream;

pub use context::{Context, Controller, Error};
