//! Shared pieces of septum's integration tests, benchmark and demo: synthetic packets, a
//! reference evaluation of the datapath's maps, and network-namespace topologies.

pub mod cri;
pub mod fixture;
pub mod kernel;
pub mod netns;
pub mod packet;
pub mod reference;
pub mod traffic;
pub mod world;
