//! The lab's own record of what it created (`lab.json` in the lab directory): the node
//! namespace, every pod's namespace, container id, addresses, ports and server process, every
//! Service's ClusterIPs and ports, and the agent's process. It is written before each thing is
//! created, so `lab down` can remove everything even after a crash or a killed `up`.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use serde::{Deserialize, Serialize};

use crate::connect::Protocol;

/// Where the lab keeps its files unless `SEPTUM_LAB_DIR` says otherwise.
pub const DEFAULT_LAB_DIR: &str = "/run/septum-lab";
/// The lab's bpffs pin root (separate from a real agent's `/sys/fs/bpf/septum`).
pub const DEFAULT_PIN_ROOT: &str = "/sys/fs/bpf/septum-lab";

/// A container port of a lab pod.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortRecord {
    /// Port name, if any.
    pub name: Option<String>,
    /// Number.
    pub port: u16,
    /// Protocol.
    pub protocol: Protocol,
}

/// One lab pod.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodRecord {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Its network namespace's name.
    pub netns: String,
    /// The CNI container id.
    pub container_id: String,
    /// Addresses from the CNI result.
    pub ips: Vec<IpAddr>,
    /// Labels (as last applied).
    pub labels: BTreeMap<String, String>,
    /// Container ports.
    pub ports: Vec<PortRecord>,
    /// The server process.
    pub server_pid: Option<u32>,
    /// Whether CNI ADD completed.
    pub attached: bool,
    /// The lab node it runs on (multi-node labs only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

/// A Service port.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServicePortRecord {
    /// Name.
    pub name: Option<String>,
    /// Port on the ClusterIP.
    pub port: u16,
    /// targetPort as given (number or name), as text.
    pub target_port: String,
    /// Protocol.
    pub protocol: Protocol,
}

/// One Service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceRecord {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// ClusterIPs.
    pub cluster_ips: Vec<IpAddr>,
    /// Ports.
    pub ports: Vec<ServicePortRecord>,
}

/// One node of a multi-node lab (`lab up --nodes N`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// The Kubernetes node name (its agent's certificate Common Name).
    pub name: String,
    /// Its network namespace.
    pub netns: String,
    /// Its pods' subnet.
    pub pod_subnet: String,
    /// Its address on the link between the nodes.
    pub link_ip: std::net::Ipv4Addr,
    /// Its agent process.
    pub agent_pid: Option<u32>,
}

/// Everything the lab created.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabState {
    /// The node network namespace.
    pub node_netns: String,
    /// The agent process.
    pub agent_pid: Option<u32>,
    /// Pods by `namespace/name`.
    pub pods: BTreeMap<String, PodRecord>,
    /// Services by `namespace/name`.
    pub services: BTreeMap<String, ServiceRecord>,
    /// Whether `up` finished.
    pub up: bool,
    /// Multi-node labs: the nodes (empty for the single-node lab, whose node is
    /// [`LabState::node_netns`] with a standalone agent).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<NodeRecord>,
    /// Multi-node labs: the controller process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub controller_pid: Option<u32>,
}

/// The lab directory and its files.
#[derive(Clone, Debug)]
pub struct LabDir {
    root: PathBuf,
}

impl LabDir {
    /// The lab directory (from `SEPTUM_LAB_DIR`, else [`DEFAULT_LAB_DIR`]).
    pub fn from_env() -> Self {
        let root = std::env::var_os("SEPTUM_LAB_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_LAB_DIR));
        Self { root }
    }

    /// A lab directory at `root`.
    pub fn at(root: &Path) -> Self {
        Self {
            root: root.to_path_buf(),
        }
    }

    /// The directory.
    pub fn root(&self) -> &Path {
        &self.root
    }
    /// `lab.json`.
    pub fn state_file(&self) -> PathBuf {
        self.root.join("lab.json")
    }
    /// The agent's datastore.
    pub fn datastore(&self) -> PathBuf {
        self.root.join("datastore")
    }
    /// The agent's state directory.
    pub fn agent_state(&self) -> PathBuf {
        self.root.join("agent")
    }
    /// The agent's socket.
    pub fn agent_socket(&self) -> PathBuf {
        self.root.join("run").join("agent.sock")
    }
    /// The agent's log.
    pub fn agent_log(&self) -> PathBuf {
        self.root.join("agent.log")
    }
    /// A node's directory in a multi-node lab: its agent's state, socket and log, its CNI
    /// files.
    pub fn node_dir(&self, node: &str) -> PathBuf {
        self.root.join("nodes").join(node)
    }
    /// A node's pin root in a multi-node lab.
    pub fn node_pin_root(&self, node: &str) -> PathBuf {
        self.pin_root().join(node)
    }
    /// The lab's throwaway PKI (multi-node labs).
    pub fn pki(&self) -> PathBuf {
        self.root.join("pki")
    }
    /// The local controller's request socket (multi-node labs).
    pub fn controller_socket(&self) -> PathBuf {
        self.root.join("run").join("controller.sock")
    }
    /// The local controller's log.
    pub fn controller_log(&self) -> PathBuf {
        self.root.join("controller.log")
    }
    /// CNI cache, IPAM data and DEL queue.
    pub fn cni(&self) -> PathBuf {
        self.root.join("cni")
    }
    /// Server logs.
    pub fn logs(&self) -> PathBuf {
        self.root.join("logs")
    }
    /// The pin root.
    pub fn pin_root(&self) -> PathBuf {
        std::env::var_os("SEPTUM_LAB_PIN_ROOT")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_PIN_ROOT))
    }
    /// Prefix of every network namespace of this lab.
    pub fn netns_prefix(&self) -> String {
        std::env::var("SEPTUM_LAB_NETNS_PREFIX").unwrap_or_else(|_| "septum-lab-".to_string())
    }

    /// The recorded state, if a lab is (or was partly) up.
    pub fn load(&self) -> Result<Option<LabState>> {
        match std::fs::read(self.state_file()) {
            Ok(b) => Ok(Some(serde_json::from_slice(&b).with_context(|| {
                format!("{} is corrupt", self.state_file().display())
            })?)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", self.state_file().display())),
        }
    }

    /// Records the state (atomically).
    pub fn save(&self, s: &LabState) -> Result<()> {
        std::fs::create_dir_all(&self.root)?;
        let tmp = self.root.join(".lab.json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(s)?)?;
        std::fs::rename(&tmp, self.state_file())?;
        Ok(())
    }
}
