//! septum's lab: Kubernetes manifests become network-namespace pods on this host.
//!
//! Pieces, each owning one concern:
//! - [`ns`]: named network namespaces (`/run/netns/NAME`) and running code or commands in them.
//! - [`cni`]: running a CNI plugin chain with libcni's semantics (prevResult injection,
//!   cached results, DEL in reverse order).
//! - [`proxy`]: Service ClusterIPs as nftables DNAT rules, the way kube-proxy's nftables mode
//!   writes them.
//! - [`sctp`]: the SCTP handshake from user space over raw sockets (this kernel has no SCTP).
//! - [`serve`]: servers on every containerPort of a pod (TCP, UDP, SCTP).
//! - [`connect`]: one probe connection (TCP, UDP, SCTP) and its result.
//! - [`objects`]: the manifests' objects and the agent's datastore directory.
//! - [`state`]: the lab's record of what it created; [`control`]: up, apply, delete, status,
//!   down; [`probe`]: the reachability matrix.
//! - [`cluster`]: the multi-node lab (two node namespaces joined by a link, agents in cluster
//!   mode, the local controller); [`pki`]: its throwaway certificates.

#[cfg(feature = "control")]
pub mod bench;
#[cfg(feature = "control")]
pub mod cluster;
pub mod cni;
pub mod connect;
#[cfg(feature = "control")]
pub mod control;
pub mod ns;
#[cfg(feature = "control")]
pub mod objects;
#[cfg(feature = "control")]
pub mod pki;
#[cfg(feature = "control")]
pub mod probe;
pub mod proxy;
pub mod sctp;
pub mod serve;
#[cfg(feature = "control")]
pub mod state;
