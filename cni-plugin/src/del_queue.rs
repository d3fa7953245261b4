//! The on-disk queue of DELs that could not reach the agent.
//!
//! DEL must succeed while the agent is down (the runtime would otherwise retry forever and the
//! pod could not be torn down), but the agent must still learn that the endpoint is gone. So a DEL
//! the agent did not acknowledge is written here, and replayed before the next call any plugin
//! invocation makes to the agent. The agent should replay the queue itself on start, before it
//! serves the registry, so that endpoints are not kept alive until the next CNI call.
//!
//! # Format (version 1)
//!
//! The directory (`delQueueDir`, default `/var/lib/septum/cni-del-queue`) is created with mode
//! 0700 and holds:
//!
//! - one file per queued DEL, named `<network>@<containerId>@<ifname>.json` (network names and
//!   container ids never contain `@`, so the name is unambiguous; when it would exceed 255 bytes
//!   it is `h<16 hex digits of FNV-1a 64 of that name>.json`). A later DEL of the same attachment
//!   replaces the earlier file. The content is authoritative, not the name. Mode 0600. Content:
//!
//!   ```json
//!   {
//!     "version": 1,
//!     "network": "k8s-pod-network",
//!     "containerId": "4f2a...",
//!     "ifname": "eth0",
//!     "netns": "/var/run/netns/cni-1234",
//!     "pod": {"namespace": "shop", "name": "web-0", "uid": "8d1c..."},
//!     "queuedAtUnixMs": 1767225600000
//!   }
//!   ```
//!
//!   `netns` may be empty and `pod` absent; unknown keys must be ignored by readers.
//! - `.lock`: taken with `flock(LOCK_EX)` by whoever replays the queue, for the whole replay, so
//!   that a queued DEL is sent before a later ADD of the same attachment by another invocation.
//! - `.tmp-<pid>-<name>`: a file being written. Files are written to a temporary name, synced,
//!   and renamed into place, so a reader sees whole files or nothing. Names starting with `.` are
//!   never replayed; temporary files older than a minute are removed by the replayer.
//!
//! # Replay
//!
//! Under the lock, oldest `queuedAtUnixMs` first: send `Del` with `queued_at_unix_ms` set, and
//! remove the file only after the agent acknowledged it, and only if it is still the same file (a
//! newer DEL of the attachment may have replaced it meanwhile). A transient failure stops the
//! replay and keeps the rest; a file that does not parse, or that the agent refuses outright, is
//! removed with a message on stderr, since retrying could never succeed.

use std::{
    fs::{self, File, OpenOptions},
    io::{self, Write},
    os::{
        fd::AsRawFd,
        unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt},
    },
    path::{Path, PathBuf},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};

/// The format version written into every queue file.
pub const FORMAT_VERSION: u32 = 1;

/// Temporary files older than this are leftovers of a crashed writer.
const STALE_TMP: Duration = Duration::from_secs(60);

/// One queued DEL, as stored on disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct QueuedDel {
    /// [`FORMAT_VERSION`].
    pub version: u32,
    /// The CNI network name.
    pub network: String,
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `CNI_IFNAME`.
    pub ifname: String,
    /// `CNI_NETNS`; empty when the runtime passed none.
    #[serde(default)]
    pub netns: String,
    /// The pod from `CNI_ARGS`, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<QueuedPod>,
    /// When the DEL was queued, in milliseconds since the Unix epoch.
    pub queued_at_unix_ms: u64,
}

/// The pod of a queued DEL.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueuedPod {
    /// `K8S_POD_NAMESPACE`.
    #[serde(default)]
    pub namespace: String,
    /// `K8S_POD_NAME`.
    #[serde(default)]
    pub name: String,
    /// `K8S_POD_UID`.
    #[serde(default)]
    pub uid: String,
}

/// A queue operation failed.
#[derive(Debug, thiserror::Error)]
#[error("DEL queue {op} {path:?}")]
pub struct QueueError {
    /// What was being done.
    pub op: &'static str,
    /// On which file or directory.
    pub path: PathBuf,
    /// Why it failed.
    #[source]
    pub source: io::Error,
}

fn qerr<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> QueueError + 'a {
    move |source| QueueError {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// A queued DEL read back from disk, with the identity of its file.
#[derive(Debug)]
pub struct PendingDel {
    /// The file.
    pub path: PathBuf,
    /// Its inode, to tell whether it was replaced before removing it.
    ino: u64,
    /// Its content; `Err` when it does not parse.
    pub del: Result<QueuedDel, serde_json::Error>,
}

/// The exclusive replay lock; released when dropped (closing the file releases the flock).
#[derive(Debug)]
pub struct QueueLock {
    _file: File,
}

/// The queue directory.
#[derive(Debug, Clone)]
pub struct DelQueue {
    dir: PathBuf,
}

/// Milliseconds since the Unix epoch, now.
pub fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The queue file name of an attachment (see the module docs).
pub fn file_name(network: &str, container_id: &str, ifname: &str) -> String {
    let name = format!("{network}@{container_id}@{ifname}.json");
    if name.len() <= 255 {
        return name;
    }
    // FNV-1a 64: stable across Rust releases, unlike the std hasher.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("h{hash:016x}.json")
}

impl DelQueue {
    /// The queue in `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Writes `del` atomically; returns the file's path.
    pub fn enqueue(&self, del: &QueuedDel) -> Result<PathBuf, QueueError> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .map_err(qerr("create", &self.dir))?;
        let name = file_name(&del.network, &del.container_id, &del.ifname);
        let path = self.dir.join(&name);
        let tmp = self.dir.join(format!(".tmp-{}-{name}", std::process::id()));
        let body = serde_json::to_vec_pretty(del).map_err(|e| QueueError {
            op: "encode",
            path: path.clone(),
            source: io::Error::other(e),
        })?;
        let write = || -> io::Result<()> {
            let mut f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(&body)?;
            f.sync_all()?;
            fs::rename(&tmp, &path)?;
            // The rename is durable only once the directory is synced.
            File::open(&self.dir)?.sync_all()
        };
        write().map_err(|e| {
            let _ = fs::remove_file(&tmp);
            QueueError {
                op: "write",
                path: path.clone(),
                source: e,
            }
        })?;
        Ok(path)
    }

    /// Takes the replay lock, waiting up to `wait`. `Ok(None)` when the queue directory does not
    /// exist (nothing was ever queued) or the lock stayed busy.
    pub fn lock(&self, wait: Duration) -> Result<Option<QueueLock>, QueueError> {
        if !self.dir.is_dir() {
            return Ok(None);
        }
        let path = self.dir.join(".lock");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(qerr("open", &path))?;
        let deadline = Instant::now() + wait;
        loop {
            // SAFETY: flock on a descriptor we own; it touches no memory.
            let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
            if rc == 0 {
                return Ok(Some(QueueLock { _file: file }));
            }
            let err = io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::EWOULDBLOCK) {
                return Err(QueueError {
                    op: "lock",
                    path,
                    source: err,
                });
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The queued DELs, oldest first (unparseable files first of all, so they are cleared),
    /// at most `limit` of them. Removes stale temporary files on the way.
    pub fn pending(&self, limit: usize) -> Result<Vec<PendingDel>, QueueError> {
        let entries = match fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(qerr("list", &self.dir)(e)),
        };
        let mut pending = Vec::new();
        for entry in entries {
            let entry = entry.map_err(qerr("list", &self.dir))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let path = entry.path();
            if name.starts_with(".tmp-") {
                let stale = entry
                    .metadata()
                    .ok()
                    .and_then(|m| m.modified().ok())
                    .and_then(|t| t.elapsed().ok())
                    .is_some_and(|age| age > STALE_TMP);
                if stale {
                    let _ = fs::remove_file(&path);
                }
                continue;
            }
            if name.starts_with('.') || !name.ends_with(".json") {
                continue;
            }
            // Read through one handle so that content and inode belong to the same file.
            let read = || -> io::Result<(u64, Vec<u8>)> {
                let mut f = File::open(&path)?;
                let ino = f.metadata()?.ino();
                let mut body = Vec::new();
                io::Read::read_to_end(&mut io::Read::take(&mut f, 64 * 1024), &mut body)?;
                Ok((ino, body))
            };
            match read() {
                Ok((ino, body)) => pending.push(PendingDel {
                    path,
                    ino,
                    del: serde_json::from_slice(&body),
                }),
                // Replayed and removed by someone else between listing and reading.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(qerr("read", &path)(e)),
            }
        }
        pending.sort_by_key(|p| match &p.del {
            Ok(d) => (1, d.queued_at_unix_ms),
            Err(_) => (0, 0),
        });
        pending.truncate(limit);
        Ok(pending)
    }

    /// Removes a replayed file, unless it was replaced by a newer DEL since it was read.
    pub fn remove(&self, pending: &PendingDel) -> Result<(), QueueError> {
        match fs::symlink_metadata(&pending.path) {
            Ok(m) if m.ino() == pending.ino => match fs::remove_file(&pending.path) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(qerr("remove", &pending.path)(e)),
            },
            Ok(_) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(qerr("stat", &pending.path)(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn del(container: &str, at: u64) -> QueuedDel {
        QueuedDel {
            version: FORMAT_VERSION,
            network: "net".into(),
            container_id: container.into(),
            ifname: "eth0".into(),
            netns: String::new(),
            pod: Some(QueuedPod {
                namespace: "ns".into(),
                name: "p".into(),
                uid: String::new(),
            }),
            queued_at_unix_ms: at,
        }
    }

    #[test]
    fn enqueue_pending_remove_round_trip() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let q = DelQueue::new(tmp.path().join("q"));
        assert!(q.pending(10).expect("empty queue").is_empty());
        assert!(q.lock(Duration::ZERO).expect("lock").is_none());
        q.enqueue(&del("b", 2)).expect("enqueue");
        q.enqueue(&del("a", 1)).expect("enqueue");
        fs::write(q.dir().join("junk.json"), b"{not json").expect("write junk");
        let _lock = q.lock(Duration::ZERO).expect("lock").expect("lock free");
        let pending = q.pending(10).expect("pending");
        assert_eq!(pending.len(), 3);
        assert!(pending[0].del.is_err(), "unparseable first");
        assert_eq!(pending[1].del.as_ref().unwrap().container_id, "a");
        assert_eq!(pending[2].del.as_ref().unwrap().container_id, "b");
        for p in &pending {
            q.remove(p).expect("remove");
        }
        assert!(q.pending(10).expect("pending").is_empty());
        let left: Vec<_> = fs::read_dir(q.dir())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, vec![std::ffi::OsString::from(".lock")]);
    }

    #[test]
    fn a_replaced_file_is_not_removed() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let q = DelQueue::new(tmp.path());
        q.enqueue(&del("a", 1)).expect("enqueue");
        let pending = q.pending(10).expect("pending");
        q.enqueue(&del("a", 2)).expect("enqueue newer");
        q.remove(&pending[0]).expect("remove");
        let again = q.pending(10).expect("pending");
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].del.as_ref().unwrap().queued_at_unix_ms, 2);
    }

    #[test]
    fn long_names_are_hashed_and_stable() {
        let long = "c".repeat(300);
        let a = file_name("net", &long, "eth0");
        assert_eq!(a, file_name("net", &long, "eth0"));
        assert!(a.starts_with('h') && a.len() == 22, "{a}");
        assert_eq!(file_name("n", "c", "eth0"), "n@c@eth0.json");
    }

    #[test]
    fn the_lock_is_exclusive() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let q = DelQueue::new(tmp.path());
        let held = q.lock(Duration::ZERO).expect("lock").expect("free");
        assert!(q.lock(Duration::from_millis(20)).expect("lock").is_none());
        drop(held);
        assert!(q.lock(Duration::ZERO).expect("lock").is_some());
    }
}
