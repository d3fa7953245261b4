//! septum's gRPC APIs: the `.proto` files under `proto/` and the Rust code prost and tonic
//! generate from them.
//!
//! One Rust module per protobuf package, named after it: `septum.agent.v1` is
//! [`agent::v1`]. Packages join the same way without moving anything (`septum.flow.v1` for
//! flow queries is `flow::v1`, `septum.nodestate.v1` for the controller-to-agent stream is
//! `nodestate::v1`): add the `.proto` file under `proto/septum/<area>/<version>/`, list it
//! in `tests/generated.rs`, regenerate, and add the module here.
//!
//! The generated code is committed under `src/gen/` (one file per package, named by prost after
//! the package) so that building septum needs no `protoc`. A test regenerates it into a temporary
//! directory and fails when the committed copy drifted from the `.proto` files; regenerate with
//! `SEPTUM_UPDATE_PROTO=1 cargo test -p septum-proto --test generated`.
//!
//! This crate depends on nothing else in septum: it holds wire types only (and [`unix`], the one
//! way a client reaches the agent's socket). Each consumer converts
//! them into its own types with `TryFrom` at its edge, so a malformed message fails there, closed.

/// The node agent's local APIs.
pub mod agent {
    /// Version 1 of package `septum.agent.v1`: the endpoint registry the CNI plugin calls
    /// ([`v1::endpoint_registry_client`], [`v1::endpoint_registry_server`]).
    pub mod v1 {
        include!("gen/septum.agent.v1.rs");
    }
}

/// Flow queries.
pub mod flow {
    /// Version 1 of package `septum.flow.v1`: flow records, filters and aggregates
    /// ([`v1::flow_service_client`], [`v1::flow_service_server`]).
    pub mod v1 {
        include!("gen/septum.flow.v1.rs");
    }
}

/// The controller-to-agent node-state stream.
pub mod nodestate {
    /// Version 1 of package `septum.nodestate.v1`: snapshots, revisioned deltas and acks
    /// ([`v1::node_state_service_client`], [`v1::node_state_service_server`]).
    pub mod v1 {
        include!("gen/septum.nodestate.v1.rs");
    }
}

pub mod unix;

/// Paths of every `.proto` file of this crate, relative to [`PROTO_ROOT`], in generation order.
pub const PROTO_FILES: &[&str] = &[
    "septum/agent/v1/registry.proto",
    "septum/flow/v1/flow.proto",
    "septum/nodestate/v1/nodestate.proto",
];

/// The include root of the `.proto` files, relative to this crate's directory.
pub const PROTO_ROOT: &str = "proto";
