//! septum's own CustomResourceDefinitions and the Kubernetes objects policy reads, as Rust types:
//!
//! - [`flow_policy`]: `FlowPolicy` (septum.dev/v1alpha1), ours, with its schema and CEL rules,
//!   its conversion into the policy model and status conditions;
//! - [`cluster_network_policy`]: the upstream `ClusterNetworkPolicy`
//!   (policy.networking.k8s.io/v1alpha2) types we read (upstream installs its CRD, not us);
//! - [`identity_allocation`]: `IdentityAllocation` (septum.dev/v1alpha1, cluster-scoped), ours:
//!   the identity numbers (and Service ids, rule cookies) the controller persists;
//! - [`manifest`]: loading multi-document YAML (Namespaces, Pods, Nodes, Services,
//!   NetworkPolicies, FlowPolicies, ClusterNetworkPolicies) into a [`septum_policy::Cluster`],
//!   with an error naming file, document, object and field for every problem;
//! - [`lint`]: the checks the API server makes that the types and conversions do not (names,
//!   label keys and values, port names, unique Service ports, CIDRs with host bits set);
//! - [`generate`]: the CRD YAML printed into `manifests/crds` (drift-checked by a test);
//! - [`files`]: reading manifest files and directories from disk (the one place that does I/O).
//!
//! Only types, pure conversions and file reading live here: no client.

#![forbid(unsafe_code)]

pub mod cluster_network_policy;
pub mod files;
pub mod flow_policy;
pub mod generate;
pub mod identity_allocation;
pub mod lint;
pub mod manifest;

pub use cluster_network_policy::ClusterNetworkPolicy;
pub use flow_policy::FlowPolicy;
pub use identity_allocation::IdentityAllocation;
