//! Standalone mode's datastore: a directory (or several) of ordinary Kubernetes YAML.
//!
//! Every load reads each `.yaml`/`.yml` file on its own. A file that loads without errors
//! becomes that file's *last good version*; a file with errors is reported (file, document,
//! object, field) and its last good version stays in force, or nothing of it when it never
//! loaded. So a typo in one file neither opens nor closes anything, and edits to other files
//! still apply. A file that disappears takes its objects with it (deleting is deliberate). When
//! the combination of the versions in force has errors of its own (the same object in two
//! files), the whole load is refused and the previous model stays in force.
//!
//! [`Loaded::files`] says, per file, the digest of the version in force, so a caller that wrote
//! a file can tell when the agent enforces exactly that version.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;
use sha2::{Digest, Sha256};

use septum_crd::files::{collect_files, read_limited};
use septum_crd::manifest::{Diagnostic, Manifests};
use septum_policy::model::Cluster;

/// The sha256 of a file's bytes, hex.
pub fn digest(bytes: &[u8]) -> String {
    let d = Sha256::digest(bytes);
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// One file's state after a load.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FileStatus {
    /// Digest of the version in force (`None`: nothing of this file is in force).
    pub enforced: Option<String>,
    /// Digest of the bytes on disk now.
    pub current: String,
    /// The current version's errors and warnings, rendered.
    pub diagnostics: Vec<String>,
}

/// The result of a load.
#[derive(Clone, Debug)]
pub struct Loaded {
    /// The model from the versions in force.
    pub cluster: Cluster,
    /// Per file.
    pub files: BTreeMap<String, FileStatus>,
    /// Problems that are no file's (unreadable paths).
    pub diagnostics: Vec<String>,
}

/// Why a load was refused as a whole.
#[derive(Clone, Debug)]
pub struct Refused {
    /// The problems of the combination.
    pub diagnostics: Vec<String>,
    /// Per file, as far as files were read.
    pub files: BTreeMap<String, FileStatus>,
}

#[derive(Clone, Debug)]
struct Version {
    digest: String,
    bytes: Arc<Vec<u8>>,
}

/// The datastore and the last good version of each file.
#[derive(Debug)]
pub struct Datastore {
    roots: Vec<PathBuf>,
    last_good: BTreeMap<PathBuf, Version>,
    /// Where last good versions are kept across restarts (a file broken while the agent was
    /// away still has its last good version in force after the restart).
    cache: Option<PathBuf>,
}

/// The cache's index: datastore path -> cached file name.
const CACHE_INDEX: &str = "index.json";

fn render(ds: &[Diagnostic]) -> Vec<String> {
    ds.iter().map(ToString::to_string).collect()
}

impl Datastore {
    /// A datastore over `roots` (directories or files).
    pub fn new(roots: Vec<PathBuf>) -> Self {
        Self {
            roots,
            last_good: BTreeMap::new(),
            cache: None,
        }
    }

    /// The same, keeping last good versions in `cache` (read now, written on every change).
    pub fn with_cache(roots: Vec<PathBuf>, cache: PathBuf) -> Self {
        let mut last_good = BTreeMap::new();
        let index: BTreeMap<PathBuf, String> = std::fs::read(cache.join(CACHE_INDEX))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        for (path, name) in index {
            if let Ok(bytes) = std::fs::read(cache.join(&name)) {
                let v = Version {
                    digest: digest(&bytes),
                    bytes: Arc::new(bytes),
                };
                last_good.insert(path, v);
            }
        }
        Self {
            roots,
            last_good,
            cache: Some(cache),
        }
    }

    /// Writes the last good versions to the cache (best effort: a failure costs only the
    /// protection across a restart, and is logged).
    fn save_cache(&self) {
        let Some(cache) = &self.cache else { return };
        let result = (|| -> std::io::Result<()> {
            std::fs::create_dir_all(cache)?;
            let mut index = BTreeMap::new();
            for (path, v) in &self.last_good {
                let name = format!("{}.yaml", &v.digest[..32]);
                let file = cache.join(&name);
                if !file.exists() {
                    let tmp = cache.join(format!(".{name}.tmp"));
                    std::fs::write(&tmp, v.bytes.as_slice())?;
                    std::fs::rename(&tmp, &file)?;
                }
                index.insert(path.clone(), name);
            }
            let tmp = cache.join(".index.tmp");
            std::fs::write(
                &tmp,
                serde_json::to_vec(&index).map_err(std::io::Error::other)?,
            )?;
            std::fs::rename(&tmp, cache.join(CACHE_INDEX))?;
            let keep: Vec<String> = index.into_values().collect();
            for e in std::fs::read_dir(cache)?.flatten() {
                let n = e.file_name().to_string_lossy().into_owned();
                if n.ends_with(".yaml") && !keep.contains(&n) {
                    let _ = std::fs::remove_file(e.path());
                }
            }
            Ok(())
        })();
        if let Err(e) = result {
            tracing::warn!(cache = %cache.display(), error = %e, "cannot keep last good versions");
        }
    }

    /// The roots.
    pub fn roots(&self) -> &[PathBuf] {
        &self.roots
    }

    /// Reads everything again (see the module docs).
    pub fn load(&mut self) -> Result<Loaded, Refused> {
        let (paths, path_problems) = collect_files(&self.roots);
        let mut files = BTreeMap::new();
        let mut in_force: Vec<(PathBuf, Version)> = Vec::new();
        let mut present = Vec::new();
        for path in paths {
            present.push(path.clone());
            let name = path.display().to_string();
            let bytes = match read_limited(&path) {
                Ok(b) => b,
                Err(message) => {
                    // Unreadable now (e.g. removed between listing and reading): keep the last
                    // good version, report it.
                    let last = self.last_good.get(&path).cloned();
                    files.insert(
                        name,
                        FileStatus {
                            enforced: last.as_ref().map(|v| v.digest.clone()),
                            current: String::new(),
                            diagnostics: vec![format!("error: {}: {message}", path.display())],
                        },
                    );
                    if let Some(v) = last {
                        in_force.push((path, v));
                    }
                    continue;
                }
            };
            let current = digest(&bytes);
            let mut alone = Manifests::new();
            alone.load_bytes(&name, &bytes);
            let diagnostics = render(&alone.diagnostics);
            let version = if alone.has_errors() {
                self.last_good.get(&path).cloned()
            } else {
                let v = Version {
                    digest: current.clone(),
                    bytes: Arc::new(bytes),
                };
                self.last_good.insert(path.clone(), v.clone());
                Some(v)
            };
            files.insert(
                name,
                FileStatus {
                    enforced: version.as_ref().map(|v| v.digest.clone()),
                    current,
                    diagnostics,
                },
            );
            if let Some(v) = version {
                in_force.push((path, v));
            }
        }
        self.last_good.retain(|p, _| present.contains(p));
        self.save_cache();

        let mut all = Manifests::new();
        for (path, v) in &in_force {
            all.load_bytes(&path.display().to_string(), &v.bytes);
        }
        if all.has_errors() {
            return Err(Refused {
                diagnostics: render(&all.diagnostics),
                files,
            });
        }
        let mut diagnostics = render(&path_problems);
        diagnostics.extend(render(&all.semantic_problems()));
        Ok(Loaded {
            cluster: all.cluster,
            files,
            diagnostics,
        })
    }
}

/// Whether a changed path can matter to a datastore rooted at `roots` (editor swap files and
/// temporary files of atomic writes do not).
pub fn is_relevant(path: &Path) -> bool {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    if name.starts_with('.') || name.ends_with('~') {
        return false;
    }
    // A directory event (created, removed, renamed) can add or remove files.
    path.extension().is_none_or(|e| e == "yaml" || e == "yml")
}

/// Whether a watch event can change what a file holds. Opening and reading are not changes: the
/// agent's own reload reads every file, and reacting to those reads would reload forever.
pub fn is_change(kind: &notify::EventKind) -> bool {
    use notify::EventKind;
    use notify::event::{AccessKind, AccessMode};
    match kind {
        EventKind::Create(_) | EventKind::Modify(_) | EventKind::Remove(_) => true,
        // A file closed after writing: its final content.
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        // Unknown kinds (a rescan request, an overflowed queue): reload to be safe.
        EventKind::Any | EventKind::Other => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NS: &str = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: shop\n";
    const NP: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: deny\n  namespace: shop\nspec:\n  podSelector: {}\n";
    const NP_BROKEN: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: deny\n  namespace: shop\nspec:\n  podSelector: {}\n  policyTypes: [Sideways]\n";

    #[test]
    fn a_broken_file_keeps_its_last_good_version() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ns.yaml"), NS).unwrap();
        let np = dir.path().join("np.yaml");
        let mut ds = Datastore::new(vec![dir.path().to_path_buf()]);

        // Broken before it was ever good: nothing of it is in force.
        std::fs::write(&np, NP_BROKEN).unwrap();
        let l = ds.load().unwrap();
        assert!(l.cluster.network_policies.is_empty());
        let st = &l.files[&np.display().to_string()];
        assert_eq!(st.enforced, None);
        assert!(
            st.diagnostics.iter().any(|d| d.contains("policyTypes")),
            "{st:?}"
        );

        std::fs::write(&np, NP).unwrap();
        let l = ds.load().unwrap();
        assert_eq!(l.cluster.network_policies.len(), 1);
        let good = digest(NP.as_bytes());
        assert_eq!(
            l.files[&np.display().to_string()].enforced.as_ref(),
            Some(&good)
        );

        // Broken again: the good version stays.
        std::fs::write(&np, NP_BROKEN).unwrap();
        let l = ds.load().unwrap();
        assert_eq!(l.cluster.network_policies.len(), 1);
        let st = &l.files[&np.display().to_string()];
        assert_eq!(st.enforced.as_ref(), Some(&good));
        assert_eq!(st.current, digest(NP_BROKEN.as_bytes()));

        // Deleting the file removes its objects.
        std::fs::remove_file(&np).unwrap();
        let l = ds.load().unwrap();
        assert!(l.cluster.network_policies.is_empty());
        assert_eq!(l.cluster.namespaces.len(), 1);
    }

    #[test]
    fn the_same_object_in_two_files_refuses_the_load() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.yaml"), NP).unwrap();
        std::fs::write(dir.path().join("b.yaml"), NP).unwrap();
        let mut ds = Datastore::new(vec![dir.path().to_path_buf()]);
        let refused = ds.load().unwrap_err();
        assert!(!refused.diagnostics.is_empty());
    }

    #[test]
    fn reads_are_not_changes() {
        use notify::EventKind;
        use notify::event::{AccessKind, AccessMode, CreateKind, DataChange, ModifyKind};
        assert!(!is_change(&EventKind::Access(AccessKind::Open(
            AccessMode::Read
        ))));
        assert!(!is_change(&EventKind::Access(AccessKind::Close(
            AccessMode::Read
        ))));
        assert!(!is_change(&EventKind::Access(AccessKind::Read)));
        assert!(is_change(&EventKind::Access(AccessKind::Close(
            AccessMode::Write
        ))));
        assert!(is_change(&EventKind::Modify(ModifyKind::Data(
            DataChange::Content
        ))));
        assert!(is_change(&EventKind::Create(CreateKind::File)));
    }

    #[test]
    fn temporary_files_are_not_relevant() {
        assert!(is_relevant(Path::new("/d/a.yaml")));
        assert!(is_relevant(Path::new("/d/sub")));
        assert!(!is_relevant(Path::new("/d/.a.yaml.tmp")));
        assert!(!is_relevant(Path::new("/d/a.yaml~")));
        assert!(!is_relevant(Path::new("/d/a.txt")));
    }
}
