//! The lab's objects: the Kubernetes objects of the manifests a user gives to `lab up`, `apply`
//! and `delete`, one per document, and the datastore directory the lab's agent enforces (one
//! file per object, so an update or a delete touches exactly one file).
//!
//! Manifests are validated with septum's own loader before anything is written, so a mistake is
//! reported with the user's file, document and field, and nothing changes.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use serde::Deserialize as _;
use serde_json::Value;

/// Kinds that have no namespace.
const CLUSTER_SCOPED: [&str; 3] = ["Namespace", "ClusterNetworkPolicy", "Node"];

/// One object of a manifest.
#[derive(Clone, Debug, PartialEq)]
pub struct Object {
    /// `kind`.
    pub kind: String,
    /// Namespace (empty for cluster-scoped kinds).
    pub namespace: String,
    /// `metadata.name`.
    pub name: String,
    /// The whole object.
    pub value: Value,
}

impl Object {
    /// `Kind namespace/name` or `Kind name`.
    pub fn label(&self) -> String {
        if self.namespace.is_empty() {
            format!("{} {}", self.kind, self.name)
        } else {
            format!("{} {}/{}", self.kind, self.namespace, self.name)
        }
    }

    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// The datastore file name of this object.
    pub fn file_name(&self) -> String {
        let clean = |s: &str| -> String {
            s.chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                        c
                    } else {
                        '_'
                    }
                })
                .collect()
        };
        if self.namespace.is_empty() {
            format!(
                "{}.{}.yaml",
                self.kind.to_ascii_lowercase(),
                clean(&self.name)
            )
        } else {
            format!(
                "{}.{}.{}.yaml",
                self.kind.to_ascii_lowercase(),
                clean(&self.namespace),
                clean(&self.name)
            )
        }
    }

    /// The bytes written to the datastore (JSON, which is YAML).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = serde_json::to_vec_pretty(&self.value).unwrap_or_default();
        b.push(b'\n');
        b
    }
}

/// Validates the manifests with septum's loader; fails listing every error.
pub fn validate(paths: &[PathBuf]) -> Result<()> {
    let m = septum_crd::files::load(paths);
    let mut problems: Vec<String> = m
        .diagnostics
        .iter()
        .filter(|d| d.is_error())
        .map(ToString::to_string)
        .collect();
    problems.extend(
        m.semantic_problems()
            .iter()
            .filter(|d| d.is_error())
            .map(ToString::to_string),
    );
    if !problems.is_empty() {
        bail!(
            "the manifests have errors; nothing was changed:\n  {}",
            problems.join("\n  ")
        );
    }
    Ok(())
}

/// The objects of the manifests under `paths`, in order (validate first).
pub fn read(paths: &[PathBuf]) -> Result<Vec<Object>> {
    let (files, problems) = septum_crd::files::collect_files(paths);
    if let Some(p) = problems.iter().find(|p| p.is_error()) {
        bail!("{p}");
    }
    let mut out = Vec::new();
    for f in files {
        let bytes = septum_crd::files::read_limited(&f)
            .map_err(|e| anyhow::anyhow!("{}: {e}", f.display()))?;
        let text = String::from_utf8_lossy(&bytes);
        for doc in serde_norway::Deserializer::from_str(&text) {
            let v = Value::deserialize(doc).with_context(|| format!("{}", f.display()))?;
            if v.is_null() {
                continue;
            }
            let kind = v["kind"].as_str().unwrap_or_default().to_string();
            let name = v["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let namespace = if CLUSTER_SCOPED.contains(&kind.as_str()) {
                String::new()
            } else {
                v["metadata"]["namespace"]
                    .as_str()
                    .unwrap_or("default")
                    .to_string()
            };
            if kind.is_empty() || name.is_empty() {
                bail!("{}: a document without kind or metadata.name", f.display());
            }
            let mut value = v;
            if !namespace.is_empty() {
                value["metadata"]["namespace"] = Value::String(namespace.clone());
            }
            out.push(Object {
                kind,
                namespace,
                name,
                value,
            });
        }
    }
    Ok(out)
}

/// The datastore directory: one file per object, written atomically.
#[derive(Clone, Debug)]
pub struct Datastore {
    dir: PathBuf,
}

impl Datastore {
    /// The datastore at `dir` (created).
    pub fn open(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Self {
            dir: dir.to_path_buf(),
        })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The path of an object's file.
    pub fn path_of(&self, o: &Object) -> PathBuf {
        self.dir.join(o.file_name())
    }

    /// Writes an object (temporary file + rename, so the agent never reads half of it);
    /// returns its path and the digest of its bytes.
    pub fn write(&self, o: &Object) -> Result<(PathBuf, String)> {
        let path = self.path_of(o);
        let tmp = self.dir.join(format!(".{}.tmp", o.file_name()));
        let bytes = o.to_bytes();
        let mut f =
            std::fs::File::create(&tmp).with_context(|| format!("writing {}", tmp.display()))?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, &path).with_context(|| format!("renaming to {}", path.display()))?;
        Ok((path, septum_agent::datastore::digest(&bytes)))
    }

    /// Removes an object's file; whether it existed.
    pub fn remove(&self, o: &Object) -> Result<bool> {
        match std::fs::remove_file(self.path_of(o)) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e).with_context(|| format!("removing {}", o.file_name())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_get_namespaces_and_stable_file_names() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("m.yaml");
        std::fs::write(
            &f,
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: shop\n---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: web\nspec:\n  containers: [{name: c, image: x}]\n---\n",
        )
        .unwrap();
        let objs = read(&[f]).unwrap();
        assert_eq!(objs.len(), 2);
        assert_eq!(objs[0].file_name(), "namespace.shop.yaml");
        assert_eq!(objs[1].namespace, "default");
        assert_eq!(objs[1].file_name(), "pod.default.web.yaml");
        assert_eq!(objs[1].value["metadata"]["namespace"], "default");
    }
}
