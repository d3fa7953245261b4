//! septum's policy engine: a pure library (no I/O) shared by the controller, the standalone
//! agent and the CLI.
//!
//! - [`model`]: the cluster as policy sees it ([`model::Cluster`], [`model::Change`]).
//! - [`selector`], [`cidr`], [`ports`]: label selectors, prefixes, (protocol, port) functions.
//! - [`rules`]: normalization of NetworkPolicy, FlowPolicy and ClusterNetworkPolicy into rules
//!   with cookies, settling the Kubernetes defaults and traps.
//! - [`identity`]: what makes pods one security identity.
//! - [`allocation`]: the numbers (identities, Service ids, rule cookies), their ranges, the keys
//!   they are allocated for and the [`allocation::AllocationStore`] that keeps them.
//! - [`compile`](mod@compile): [`compile::compile`] (model -> [`state::ClusterState`]) and
//!   [`compile::Engine::apply`] (one change -> minimal [`state::StateDiff`]).
//! - [`state`]: the compiled form in `septum-datapath-common` shapes, diffs, per-node slices.
//! - [`lpm`]: the datapath's reading of that state (reference for tests).
//! - [`explain`]: which rules decided a flow, tier by tier, on both sides.
//! - [`diagnostic`]: the one diagnostic type of every layer (file, document, object, field).
//! - [`names`]: the API server's name rules (DNS labels, label keys and values, port names).
//! - [`validate`]: problems a schema cannot catch, naming object and field.
//! - `k8s` (feature `k8s`): conversions from k8s-openapi objects.
//!
//! Evaluation order (per side of a flow; a flow passes only if egress and ingress both allow):
//! ClusterNetworkPolicy Admin (priority, then rule order; Accept/Deny decide, Pass skips to the
//! next tier) -> NetworkPolicy and FlowPolicy (if any selects the pod for the direction, the flow
//! is allowed only if some rule allows it; Audit-mode FlowPolicies report what they would deny)
//! -> ClusterNetworkPolicy Baseline -> allowed. The node may always reach its own pods.
//!
//! Known simplifications: volatile labels (see [`identity::VOLATILE_LABELS`]) are not part of
//! identities, so selectors on them are not honoured; ClusterNetworkPolicy `nodes` and
//! `domainNames` peers are not supported (rejected when loading); namespace and node changes
//! recompile everything (still a minimal diff).

#![forbid(unsafe_code)]

pub mod allocation;
pub mod cidr;
pub mod compile;
pub mod diagnostic;
pub mod explain;
pub mod identity;
#[cfg(feature = "k8s")]
pub mod k8s;
pub mod lpm;
pub mod model;
pub mod names;
pub mod node;
pub mod ports;
pub mod rules;
pub mod selector;
pub mod state;
pub mod validate;
#[cfg(feature = "wire")]
pub mod wire;

pub use allocation::{AllocationStore, InMemoryAllocations};
pub use compile::{Engine, compile};
pub use model::{Change, Cluster};
pub use state::{ClusterState, StateDiff};
