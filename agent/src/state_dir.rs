//! The agent's state directory: the endpoint registry and the allocated numbers (identities,
//! Service ids, rule cookies), each one JSON file written atomically (temporary file, fsync,
//! rename, fsync of the directory), so a crash leaves the old or the new version, never half.
//!
//! Numbers are persisted because they are what the pinned maps hold: an agent that restarted and
//! renumbered identities would have to rewrite every entry, and until it did, the kernel would
//! enforce the old numbers against the new meanings. The persisted form is a mirror of
//! [`AllocationKey`] in plain strings, converted with `TryFrom` at this edge; an entry that does
//! not convert is reported and skipped (its number is then allocated afresh), it never stops the
//! agent.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use septum_datapath_common::Identity;
use septum_policy::InMemoryAllocations;
use septum_policy::allocation::{AllocationKey, PolicyKind, RuleId, Section};
use septum_policy::cidr::Cidr;
use septum_policy::identity::IdentityKey;
use septum_policy::model::{ObjectKey, Protocol};

use crate::registry::Registry;

/// Errors of the state directory.
#[derive(Debug, thiserror::Error)]
pub enum StateDirError {
    /// A file could not be read or written.
    #[error("state file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A file is not what this agent writes.
    #[error("state file {path} is corrupt: {source}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
}

/// The state directory.
#[derive(Clone, Debug)]
pub struct StateDir {
    root: PathBuf,
}

const REGISTRY_FILE: &str = "endpoints.json";
const ALLOCATIONS_FILE: &str = "allocations.json";
/// Where the agent reports what it enforces (read by `septum lab` and operators).
pub const STATUS_FILE: &str = "status.json";

impl StateDir {
    /// Opens (creating, mode 0700) the directory.
    pub fn open(root: &Path) -> Result<Self, StateDirError> {
        use std::os::unix::fs::DirBuilderExt;
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(root)
            .map_err(|source| StateDirError::Io {
                path: root.to_path_buf(),
                source,
            })?;
        Ok(Self {
            root: root.to_path_buf(),
        })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.root
    }

    /// The endpoint registry (empty when never written).
    pub fn load_registry(&self) -> Result<Registry, StateDirError> {
        Ok(self.read(REGISTRY_FILE)?.unwrap_or_default())
    }

    /// Persists the endpoint registry.
    pub fn save_registry(&self, r: &Registry) -> Result<(), StateDirError> {
        self.write(REGISTRY_FILE, r)
    }

    /// The allocated numbers (empty when never written) and the entries that did not convert.
    pub fn load_allocations(&self) -> Result<(InMemoryAllocations, Vec<String>), StateDirError> {
        let stored: Vec<StoredAllocation> = self.read(ALLOCATIONS_FILE)?.unwrap_or_default();
        let mut bad = Vec::new();
        let mut entries = Vec::with_capacity(stored.len());
        for s in stored {
            let number = s.number;
            match AllocationKey::try_from(s.key) {
                Ok(k) => entries.push((k, number)),
                Err(e) => bad.push(format!("number {number}: {e}")),
            }
        }
        Ok((InMemoryAllocations::from_entries(entries), bad))
    }

    /// Persists the allocated numbers.
    pub fn save_allocations(&self, a: &InMemoryAllocations) -> Result<(), StateDirError> {
        let stored: Vec<StoredAllocation> = a
            .entries()
            .map(|(k, number)| StoredAllocation {
                key: StoredKey::from(k),
                number,
            })
            .collect();
        self.write(ALLOCATIONS_FILE, &stored)
    }

    /// Writes the status report (atomically, but not synced to disk: it is a report, rewritten
    /// on every sync, and a crash loses nothing the agent needs).
    pub fn save_status(&self, status: &impl Serialize) -> Result<(), StateDirError> {
        self.write_with(STATUS_FILE, status, false)
    }

    /// Reads a file of raw bytes kept by another module (`None`: not there).
    pub fn load_bytes(&self, name: &str) -> Result<Option<Vec<u8>>, StateDirError> {
        let path = self.root.join(name);
        match fs::read(&path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(StateDirError::Io { path, source }),
        }
    }

    /// Writes a file of raw bytes atomically and durably.
    pub fn save_bytes(&self, name: &str, bytes: &[u8]) -> Result<(), StateDirError> {
        self.write_bytes(name, bytes, true)
    }

    fn read<T: DeserializeOwned>(&self, name: &str) -> Result<Option<T>, StateDirError> {
        let path = self.root.join(name);
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|source| StateDirError::Corrupt { path, source }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(StateDirError::Io { path, source }),
        }
    }

    fn write(&self, name: &str, value: &impl Serialize) -> Result<(), StateDirError> {
        self.write_with(name, value, true)
    }

    fn write_with(
        &self,
        name: &str,
        value: &impl Serialize,
        durable: bool,
    ) -> Result<(), StateDirError> {
        let bytes = serde_json::to_vec_pretty(value).map_err(|e| StateDirError::Io {
            path: self.root.join(name),
            source: io::Error::other(e),
        })?;
        self.write_bytes(name, &bytes, durable)
    }

    fn write_bytes(&self, name: &str, bytes: &[u8], durable: bool) -> Result<(), StateDirError> {
        let path = self.root.join(name);
        let tmp = self.root.join(format!(".{name}.tmp"));
        let io_err = |source| StateDirError::Io {
            path: path.clone(),
            source,
        };
        let mut f = fs::File::create(&tmp).map_err(io_err)?;
        f.write_all(bytes).map_err(io_err)?;
        if durable {
            f.sync_all().map_err(io_err)?;
        }
        drop(f);
        fs::rename(&tmp, &path).map_err(io_err)?;
        if !durable {
            return Ok(());
        }
        fs::File::open(&self.root)
            .and_then(|d| d.sync_all())
            .map_err(io_err)
    }
}

/// One persisted number.
#[derive(Debug, Serialize, Deserialize)]
struct StoredAllocation {
    key: StoredKey,
    number: u32,
}

/// [`AllocationKey`] in plain strings.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
enum StoredKey {
    Identity {
        namespace: String,
        labels: std::collections::BTreeMap<String, String>,
        service_account: String,
        /// (name, protocol, port).
        named_ports: Vec<(String, String, u16)>,
    },
    Cidr {
        cidr: String,
    },
    PodInCidr {
        identity: u32,
        cidr: String,
    },
    Service {
        namespace: String,
        name: String,
    },
    Rule {
        policy_kind: String,
        namespace: String,
        name: String,
        section: String,
        index: u32,
    },
}

impl From<&AllocationKey> for StoredKey {
    fn from(k: &AllocationKey) -> Self {
        match k {
            AllocationKey::Identity(i) => Self::Identity {
                namespace: i.namespace.clone(),
                labels: i.labels.clone(),
                service_account: i.service_account.clone(),
                named_ports: i
                    .named_ports
                    .iter()
                    .map(|(n, p, port)| (n.clone(), p.as_str().to_string(), *port))
                    .collect(),
            },
            AllocationKey::Cidr(c) => Self::Cidr {
                cidr: c.to_string(),
            },
            AllocationKey::PodInCidr { identity, cidr } => Self::PodInCidr {
                identity: identity.get(),
                cidr: cidr.to_string(),
            },
            AllocationKey::Service(s) => Self::Service {
                namespace: s.namespace.clone(),
                name: s.name.clone(),
            },
            AllocationKey::Rule(r) => Self::Rule {
                policy_kind: r.kind.as_str().to_string(),
                namespace: r.object.namespace.clone(),
                name: r.object.name.clone(),
                section: r.section.as_str().to_string(),
                index: r.index,
            },
        }
    }
}

/// Why a persisted key did not convert.
#[derive(Debug, thiserror::Error)]
#[error("unreadable {what} {value:?}")]
pub struct InvalidStoredKey {
    what: &'static str,
    value: String,
}

impl TryFrom<StoredKey> for AllocationKey {
    type Error = InvalidStoredKey;

    fn try_from(k: StoredKey) -> Result<Self, Self::Error> {
        let cidr = |s: String| {
            s.parse::<Cidr>().map_err(|_| InvalidStoredKey {
                what: "prefix",
                value: s,
            })
        };
        Ok(match k {
            StoredKey::Identity {
                namespace,
                labels,
                service_account,
                named_ports,
            } => {
                let mut ports = Vec::with_capacity(named_ports.len());
                for (n, p, port) in named_ports {
                    let protocol = Protocol::parse(&p).ok_or(InvalidStoredKey {
                        what: "protocol",
                        value: p,
                    })?;
                    ports.push((n, protocol, port));
                }
                AllocationKey::Identity(IdentityKey {
                    namespace,
                    labels,
                    service_account,
                    named_ports: ports,
                })
            }
            StoredKey::Cidr { cidr: c } => AllocationKey::Cidr(cidr(c)?),
            StoredKey::PodInCidr { identity, cidr: c } => AllocationKey::PodInCidr {
                identity: Identity::new(identity),
                cidr: cidr(c)?,
            },
            StoredKey::Service { namespace, name } => {
                AllocationKey::Service(ObjectKey::new(namespace, name))
            }
            StoredKey::Rule {
                policy_kind,
                namespace,
                name,
                section,
                index,
            } => AllocationKey::Rule(RuleId {
                kind: policy_kind
                    .parse::<PolicyKind>()
                    .map_err(|_| InvalidStoredKey {
                        what: "policy kind",
                        value: policy_kind,
                    })?,
                object: ObjectKey::new(namespace, name),
                section: section.parse::<Section>().map_err(|_| InvalidStoredKey {
                    what: "rule section",
                    value: section,
                })?,
                index,
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use septum_policy::AllocationStore;

    #[test]
    fn allocations_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let sd = StateDir::open(dir.path()).unwrap();
        let mut a = InMemoryAllocations::new();
        let keys = [
            AllocationKey::Identity(IdentityKey {
                namespace: "shop".into(),
                labels: [("app".to_string(), "web".to_string())].into(),
                service_account: "default".into(),
                named_ports: vec![("http".into(), Protocol::Tcp, 8080)],
            }),
            AllocationKey::Cidr("10.0.0.0/8".parse().unwrap()),
            AllocationKey::Service(ObjectKey::new("shop", "db")),
            AllocationKey::Rule(RuleId {
                kind: PolicyKind::FlowPolicy,
                object: ObjectKey::new("shop", "fp"),
                section: Section::Ingress,
                index: 2,
            }),
        ];
        let numbers: Vec<u32> = keys.iter().map(|k| a.allocate(k)).collect();
        sd.save_allocations(&a).unwrap();
        let (mut back, bad) = sd.load_allocations().unwrap();
        assert!(bad.is_empty(), "{bad:?}");
        assert_eq!(back, a);
        for (k, n) in keys.iter().zip(numbers) {
            assert_eq!(back.allocate(k), n, "{k:?} was renumbered");
        }
        // A new key does not reuse a number.
        let fresh = back.allocate(&AllocationKey::Service(ObjectKey::new("shop", "new")));
        assert_ne!(fresh, a.get(&keys[2]).unwrap());
    }

    #[test]
    fn corrupt_files_are_reported_not_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let sd = StateDir::open(dir.path()).unwrap();
        fs::write(dir.path().join(REGISTRY_FILE), b"{not json").unwrap();
        let err = sd.load_registry().unwrap_err();
        assert!(err.to_string().contains("corrupt"), "{err}");
        fs::write(
            dir.path().join(ALLOCATIONS_FILE),
            br#"[{"key":{"kind":"cidr","cidr":"nonsense"},"number":5},
                {"key":{"kind":"service","namespace":"a","name":"b"},"number":9}]"#,
        )
        .unwrap();
        let (a, bad) = sd.load_allocations().unwrap();
        assert_eq!(bad.len(), 1, "{bad:?}");
        assert_eq!(
            a.get(&AllocationKey::Service(ObjectKey::new("a", "b"))),
            Some(9)
        );
    }
}
