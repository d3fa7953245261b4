//! Enforcement on a [`Topology`]: map contents for its pods and node, a pinned datapath
//! attached to every pod's host-side veth in the node namespace, and pin cleanup on drop.

use std::{net::IpAddr, path::PathBuf};

use septum_datapath::{AttachMode, Datapath, DatapathError, DatapathOptions};
use septum_datapath_common::{IDENTITY_HOST, IPCACHE_KIND_HOST, IpCacheEntry};

use crate::{
    netns::Topology,
    reference::{MapContents, Reference as _},
    world::Build as _,
};

/// Removes a test's bpffs pin root on drop (detaching its pinned links).
#[derive(Debug)]
pub struct PinRoot(pub PathBuf);

impl PinRoot {
    pub fn new(tag: &str) -> Self {
        Self(PathBuf::from(format!("/sys/fs/bpf/septum-test-{tag}")))
    }
}

impl Drop for PinRoot {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Endpoints for every pod (pod i gets `identities[i]` and `flags[i]`), pod IPs in the
/// ipcache and as the endpoints' local addresses (as the agent writes them: a flow between two
/// of these pods is decided whole at its source's from_pod), and the node's addresses as the
/// host identity.
pub fn topology_maps(topo: &Topology, identities: &[u32], flags: &[u8]) -> MapContents {
    let mut maps = MapContents::default();
    for (i, pod) in topo.pods.iter().enumerate() {
        maps.add_pod(
            pod.host_ifindex,
            i as u32 + 1,
            identities[i],
            &[IpAddr::V4(pod.ip4), IpAddr::V6(pod.ip6)],
            flags[i],
        );
        maps.add_local_addr(IpAddr::V4(pod.ip4), pod.host_ifindex);
        maps.add_local_addr(IpAddr::V6(pod.ip6), pod.host_ifindex);
        for (gw, bits) in [(IpAddr::V4(pod.gw4), 32), (IpAddr::V6(pod.gw6), 128)] {
            maps.add_ip(
                gw,
                bits,
                IpCacheEntry {
                    identity: IDENTITY_HOST,
                    cidr_identity: 0,
                    kind: IPCACHE_KIND_HOST,
                    _pad: [0; 3],
                },
            );
        }
    }
    maps
}

/// Loads (or adopts) a pinned datapath under `pins`, writes `maps` and attaches to every pod
/// of `topo`, all inside the node namespace.
pub fn enforce(
    topo: &Topology,
    maps: &MapContents,
    mode: AttachMode,
    pins: &PinRoot,
) -> Result<Datapath, DatapathError> {
    topo.node.run(|| {
        let mut dp = Datapath::load(&DatapathOptions {
            pin_root: Some(pins.0.clone()),
            attach_mode: mode,
            ..DatapathOptions::default()
        })?;
        // Maps first, then programs: a pod is never attached without its policy.
        maps.write_to(&mut dp)?;
        for pod in &topo.pods {
            dp.attach(&pod.host_if)?;
        }
        Ok(dp)
    })
}
