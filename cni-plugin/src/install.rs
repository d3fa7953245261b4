//! Installing septum-cni on a node, and removing it again: the binary in the CNI bin dir, and
//! septum-cni as the last plugin of the network configuration the runtime uses.
//!
//! **Which file.** The runtime's own rule, from containerd's go-cni (`loadFromConfDir`) over
//! libcni's `ConfFiles`: every directory entry that is not a directory and whose extension (Go's
//! `filepath.Ext`: from the last dot, so `.x.conflist` counts) is `.conf`, `.conflist` or `.json`,
//! sorted by bytes; the first is the node's network. A `.conflist` is a list; a `.conf` or `.json`
//! is one plugin, which the runtime "upconverts" to a list of one (`ConfListFromConf`: `name` and
//! `cniVersion` lifted, the whole object as the only plugin). [`config_files`] lists them in that
//! order.
//!
//! **A single-plugin file** cannot hold a chain, so it is converted: `10-mynet.conf` becomes
//! `10-mynet.conflist` (the same stem, so it still sorts first) with the original object verbatim
//! as the first plugin and septum-cni second, and the original is renamed to
//! `10-mynet.conf.septum-backup`, whose extension no runtime reads. The list is written before the
//! rename: until the rename, `10-mynet.conf` still sorts first and the runtime keeps using it, so
//! there is no moment without a network. A conversion is refused when a file would sort between
//! the two names, or when `10-mynet.conflist` already exists and is not septum's conversion.
//! Uninstall renames the backup back (the original bytes and mode) and removes the conversion.
//!
//! **A list** is edited as text: septum-cni's entry is spliced in after the last plugin and every
//! other byte stays where it was (key order, spacing, a missing final newline). An existing
//! septum-cni entry is kept (its other options too), its `agentSocket` set, and moved last; extra
//! copies are dropped. When nothing changes the file is not written at all, so runtimes watching
//! the directory with inotify are not poked. Writes go to a temporary file in the same directory
//! (`.<name>.septum-tmp`, an extension no runtime reads), fsynced and renamed over the original
//! with its mode and owner. Uninstall removes the entry the same way, which gives back the
//! original bytes.
//!
//! **Checked before anything is written**: the file is JSON, a list has a non-empty `plugins` of
//! objects with a `type`, and septum-cni's entry, with the `name` and `cniVersion` libcni will
//! inject, passes the plugin's own parser ([`crate::config::parse`]), so the chain can call it: a
//! `cniVersion` septum-cni does not speak (below 0.3.0 there is no chaining) is refused with the
//! file named. With a `cniVersions` list the newest entry is checked, since a newer runtime may
//! pick it.
//!
//! **Flannel and Calico rewrite their list** whenever their pods restart (Flannel's `install-cni`
//! init container copies `cni-conf.json`; Calico's writes `10-calico.conflist`), dropping
//! septum-cni's entry. Install is idempotent so that the agent can run it on every start: that
//! re-run is what restores the entry. Between such a rewrite and the agent's next start, pods
//! get no septum-cni; a watch on the directory is the way to close that gap.
//!
//! Not handled: libcni 1.3's plugins from `<dir>/<network name>/*.conf` (containerd 1.6 and 1.7
//! do not read them); such plugins would run after septum-cni.

mod edit;
mod files;

use std::{
    fmt, fs, io,
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
};

use crate::{config::ConfigError, version::supported_list};

use edit::{Edit, converted, has_entry, is_conversion, with_entry, without_entries};
pub use files::config_files;
use files::{
    Keep, go_ext, install_binary, io_error, is_list, read_text, sync_dir, write_atomically,
};

/// septum-cni's `type` in a configuration list.
pub const PLUGIN_TYPE: &str = "septum-cni";
/// The binary's name in the CNI bin dir (runtimes find a plugin by its `type`).
pub const BINARY_NAME: &str = "septum-cni";
/// Where runtimes look for network configurations by default.
pub const DEFAULT_CONF_DIR: &str = "/etc/cni/net.d";
/// Where runtimes look for plugin binaries by default.
pub const DEFAULT_BIN_DIR: &str = "/opt/cni/bin";
/// The extensions runtimes read, as Go's `filepath.Ext` spells them.
pub const CONFIG_EXTENSIONS: [&str; 3] = [".conf", ".conflist", ".json"];
/// Appended to a converted single-plugin file's name to keep it for uninstall.
pub const BACKUP_SUFFIX: &str = ".septum-backup";
/// Appended to a temporary file's name (after a leading dot) while it is written.
const TEMP_SUFFIX: &str = ".septum-tmp";

/// The node's CNI directories.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeDirs {
    /// Network configurations (`/etc/cni/net.d`).
    pub conf_dir: PathBuf,
    /// Plugin binaries (`/opt/cni/bin`).
    pub bin_dir: PathBuf,
}

/// What septum-cni's entry in the list says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeptumEntry {
    /// `agentSocket`: the agent's endpoint-registry socket.
    pub agent_socket: PathBuf,
}

/// What a configuration file lacks or gets wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    /// Not UTF-8 (JSON is).
    #[error("the file is not UTF-8")]
    NotUtf8,
    /// Valid JSON, but not an object.
    #[error("the configuration is not a JSON object")]
    NotObject,
    /// `name` absent or not a string.
    #[error("`name` is missing or not a string")]
    Name,
    /// `cniVersion` is not a string.
    #[error("`cniVersion` is not a string")]
    VersionType,
    /// `cniVersions` is not a list of strings.
    #[error("`cniVersions` is not a list of strings")]
    VersionsType,
    /// A `.conflist` without `plugins`.
    #[error("the configuration list has no `plugins`")]
    NoPlugins,
    /// `plugins` is not a list.
    #[error("`plugins` is not a list")]
    PluginsType,
    /// `plugins` is empty.
    #[error("`plugins` is empty")]
    EmptyPlugins,
    /// A plugin that is not an object.
    #[error("plugins[{0}] is not an object")]
    PluginNotObject(usize),
    /// A plugin without a string `type`.
    #[error("plugins[{0}] has no `type`")]
    PluginType(usize),
    /// A single-plugin file without `type` (perhaps a list under the wrong extension).
    #[error("the single-plugin configuration has no `type` (a list needs the .conflist extension)")]
    NoType,
}

/// Why a single-plugin file cannot be converted in place.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConversionConflict {
    /// The list's name is taken by a file that is not septum's conversion.
    #[error("{} already exists and is not septum's conversion of it", conflist.display())]
    Exists {
        /// The name the list would get.
        conflist: PathBuf,
    },
    /// Another file would become the first configuration once the original is renamed.
    #[error("{} sorts before {} and would become the node's network", earlier.display(), conflist.display())]
    WouldReorder {
        /// The name the list would get.
        conflist: PathBuf,
        /// The file that sorts between.
        earlier: PathBuf,
    },
}

/// Why install or uninstall stopped. Nothing is written before the configuration is checked.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// The conf dir has no configuration: the network plugin has not written one yet.
    #[error(
        "no CNI network configuration (*.conflist, *.conf or *.json) in {}",
        dir.display()
    )]
    NoConfig {
        /// The conf dir.
        dir: PathBuf,
    },
    /// A file system operation failed.
    #[error("cannot {op} {}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// To what.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The first configuration is not JSON.
    #[error("{} is not valid JSON", path.display())]
    NotJson {
        /// The file.
        path: PathBuf,
        /// Where and why.
        #[source]
        source: serde_json::Error,
    },
    /// The first configuration is JSON but not a usable network configuration.
    #[error("{}: {problem}", path.display())]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        problem: Malformed,
    },
    /// A `cniVersion` septum-cni cannot chain after.
    #[error(
        "{}: septum-cni cannot chain after {}; it supports {}",
        path.display(),
        describe_version(found),
        supported_list()
    )]
    Version {
        /// The file.
        path: PathBuf,
        /// The version found (the newest of `cniVersions`, when given).
        found: Option<String>,
    },
    /// septum-cni's entry, as the runtime would pass it, fails the plugin's own parser.
    #[error("{}: septum-cni would refuse its entry", path.display())]
    Refused {
        /// The file.
        path: PathBuf,
        /// The plugin's verdict.
        #[source]
        source: ConfigError,
    },
    /// The agent socket cannot be written into JSON.
    #[error("agent socket {} is not UTF-8", socket.display())]
    SocketNotUtf8 {
        /// The socket.
        socket: PathBuf,
    },
    /// A single-plugin file that cannot be converted.
    #[error("cannot convert {} to a configuration list", conf.display())]
    Conversion {
        /// The single-plugin file.
        conf: PathBuf,
        /// Why not.
        #[source]
        conflict: ConversionConflict,
    },
    /// The first configuration is a symbolic link: replacing it with a file would cut whatever
    /// manages the link's target off from the live configuration.
    #[error(
        "{} is a symbolic link; septum edits only regular files (point --cni-conf-dir at the target's directory)",
        path.display()
    )]
    Symlink {
        /// The link.
        path: PathBuf,
    },
}

fn describe_version(found: &Option<String>) -> String {
    match found {
        Some(v) => format!("cniVersion {v:?}"),
        None => "a configuration without cniVersion (read as 0.1.0)".to_string(),
    }
}

/// One thing install or uninstall did (or found already done).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// The binary was written.
    BinaryInstalled(PathBuf),
    /// The binary was already there with the same bytes and mode.
    BinaryUnchanged(PathBuf),
    /// The binary was removed.
    BinaryRemoved(PathBuf),
    /// septum-cni was appended to the list.
    EntryAdded(PathBuf),
    /// An existing septum-cni entry was updated or moved last (duplicates dropped).
    EntryUpdated(PathBuf),
    /// The list already ends with the right entry; the file was not written.
    EntryUnchanged(PathBuf),
    /// septum-cni's entries were removed from the list.
    EntryRemoved(PathBuf),
    /// A single-plugin file was converted to a list ending with septum-cni.
    Converted {
        /// The original, now renamed to `backup`.
        conf: PathBuf,
        /// The new list.
        conflist: PathBuf,
        /// Where the original is kept.
        backup: PathBuf,
    },
    /// A converted file was put back.
    Restored {
        /// The backup it came from.
        backup: PathBuf,
        /// The original name.
        conf: PathBuf,
    },
    /// A backup was dropped because its original name holds a newer file.
    BackupRemoved {
        /// The backup.
        backup: PathBuf,
        /// The newer file.
        conf: PathBuf,
    },
    /// septum's conversion of a single-plugin file was removed.
    ConversionRemoved(PathBuf),
}

impl Change {
    /// False for the "already so" kinds.
    pub fn is_change(&self) -> bool {
        !matches!(self, Change::BinaryUnchanged(_) | Change::EntryUnchanged(_))
    }
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Change::BinaryInstalled(p) => write!(f, "installed {}", p.display()),
            Change::BinaryUnchanged(p) => write!(f, "{} is up to date", p.display()),
            Change::BinaryRemoved(p) => write!(f, "removed {}", p.display()),
            Change::EntryAdded(p) => {
                write!(f, "added septum-cni as the last plugin of {}", p.display())
            }
            Change::EntryUpdated(p) => write!(
                f,
                "updated septum-cni in {} (one entry, the last plugin)",
                p.display()
            ),
            Change::EntryUnchanged(p) => write!(
                f,
                "{} already ends with septum-cni; not rewritten",
                p.display()
            ),
            Change::EntryRemoved(p) => write!(f, "removed septum-cni from {}", p.display()),
            Change::Converted {
                conf,
                conflist,
                backup,
            } => write!(
                f,
                "converted {} to {} ending with septum-cni; the original is kept as {}",
                conf.display(),
                conflist.display(),
                backup.display()
            ),
            Change::Restored { backup, conf } => {
                write!(f, "restored {} from {}", conf.display(), backup.display())
            }
            Change::BackupRemoved { backup, conf } => write!(
                f,
                "removed {} ({} was rewritten since the conversion and stays)",
                backup.display(),
                conf.display()
            ),
            Change::ConversionRemoved(p) => {
                write!(f, "removed {} (septum's conversion)", p.display())
            }
        }
    }
}

/// Everything one install or uninstall did, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// The steps.
    pub changes: Vec<Change>,
}

impl Report {
    /// True when anything on disk changed.
    pub fn changed(&self) -> bool {
        self.changes.iter().any(Change::is_change)
    }
}

/// Installs septum-cni: checks the node's first network configuration, copies `plugin_binary`
/// into the bin dir (skipped when identical), then appends `entry` to the configuration (or
/// converts a single-plugin file). Idempotent.
pub fn install(
    dirs: &NodeDirs,
    plugin_binary: &Path,
    entry: &SeptumEntry,
) -> Result<Report, InstallError> {
    let files = config_files(&dirs.conf_dir)?;
    let first = files.first().ok_or_else(|| InstallError::NoConfig {
        dir: dirs.conf_dir.clone(),
    })?;
    let meta = fs::symlink_metadata(first).map_err(|e| io_error("stat", first, e))?;
    if meta.file_type().is_symlink() {
        return Err(InstallError::Symlink {
            path: first.clone(),
        });
    }
    let text = read_text(first)?;
    let plan = if is_list(first) {
        match with_entry(first, &text, entry)? {
            Edit::Unchanged => Plan::Unchanged(first.clone()),
            Edit::Added(text) => Plan::Rewrite {
                path: first.clone(),
                text,
                added: true,
            },
            Edit::Updated(text) => Plan::Rewrite {
                path: first.clone(),
                text,
                added: false,
            },
        }
    } else {
        plan_conversion(first, &text, &files, entry)?
    };
    // The binary goes first: a list naming septum-cni before the binary exists fails every ADD.
    let mut report = Report::default();
    report
        .changes
        .push(install_binary(plugin_binary, &dirs.bin_dir)?);
    report.changes.push(apply(plan, &meta)?);
    Ok(report)
}

/// Removes what [`install`] added: restores converted single-plugin files, removes septum's
/// conversions and septum-cni's entries from every list in the conf dir, and removes the binary.
/// Lists that cannot be parsed are left alone: they cannot hold an entry septum can find.
/// Idempotent; a second run reports nothing.
pub fn uninstall(dirs: &NodeDirs) -> Result<Report, InstallError> {
    let mut report = Report::default();
    restore_backups(&dirs.conf_dir, &mut report)?;
    let files = config_files(&dirs.conf_dir)?;
    for conf in files.iter().filter(|p| !is_list(p)) {
        let conflist = conflist_name(conf);
        if !files.contains(&conflist) {
            continue;
        }
        let (Ok(conf_text), Ok(list_text)) = (read_text(conf), read_text(&conflist)) else {
            continue;
        };
        if is_conversion(&list_text, &conf_text) {
            fs::remove_file(&conflist).map_err(|e| io_error("remove", &conflist, e))?;
            sync_dir(&dirs.conf_dir)?;
            report.changes.push(Change::ConversionRemoved(conflist));
        }
    }
    for path in config_files(&dirs.conf_dir)?.iter().filter(|p| is_list(p)) {
        let Ok(text) = read_text(path) else { continue };
        if let Some(new) = without_entries(&text) {
            let meta = fs::metadata(path).map_err(|e| io_error("stat", path, e))?;
            write_atomically(path, new.as_bytes(), &Keep::from(&meta))?;
            report.changes.push(Change::EntryRemoved(path.clone()));
        }
    }
    let binary = dirs.bin_dir.join(BINARY_NAME);
    match fs::remove_file(&binary) {
        Ok(()) => report.changes.push(Change::BinaryRemoved(binary)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_error("remove", &binary, e)),
    }
    Ok(report)
}

/// What install will do to the configuration, decided before anything is written.
#[derive(Debug)]
enum Plan {
    Unchanged(PathBuf),
    Rewrite {
        path: PathBuf,
        text: String,
        /// False when an existing entry was only updated.
        added: bool,
    },
    Convert {
        conf: PathBuf,
        conflist: PathBuf,
        text: String,
        /// The list's current bytes, when a previous run left it.
        existing: Option<Vec<u8>>,
    },
}

fn apply(plan: Plan, first: &fs::Metadata) -> Result<Change, InstallError> {
    match plan {
        Plan::Unchanged(path) => Ok(Change::EntryUnchanged(path)),
        Plan::Rewrite { path, text, added } => {
            write_atomically(&path, text.as_bytes(), &Keep::from(first))?;
            Ok(if added {
                Change::EntryAdded(path)
            } else {
                Change::EntryUpdated(path)
            })
        }
        Plan::Convert {
            conf,
            conflist,
            text,
            existing,
        } => {
            if existing.as_deref() != Some(text.as_bytes()) {
                write_atomically(&conflist, text.as_bytes(), &Keep::from(first))?;
            }
            let backup = backup_name(&conf);
            fs::rename(&conf, &backup).map_err(|e| io_error("rename", &conf, e))?;
            sync_dir(conf.parent().unwrap_or(Path::new(".")))?;
            Ok(Change::Converted {
                conf,
                conflist,
                backup,
            })
        }
    }
}

fn plan_conversion(
    conf: &Path,
    text: &str,
    files: &[PathBuf],
    entry: &SeptumEntry,
) -> Result<Plan, InstallError> {
    let conflist = conflist_name(conf);
    let conflict = |conflict| InstallError::Conversion {
        conf: conf.to_path_buf(),
        conflict,
    };
    if let Some(earlier) = files
        .iter()
        .find(|f| f.as_path() != conf && **f != conflist && f.as_os_str() < conflist.as_os_str())
    {
        return Err(conflict(ConversionConflict::WouldReorder {
            conflist,
            earlier: earlier.clone(),
        }));
    }
    let new = converted(conf, text, entry)?;
    let existing = match fs::read(&conflist) {
        Ok(bytes) => Some(bytes),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(io_error("read", &conflist, e)),
    };
    if let Some(bytes) = &existing {
        // Left by an install that stopped before renaming the original, or by one that ran
        // before the original was rewritten (the backup then exists).
        let ours = std::str::from_utf8(bytes).is_ok_and(|list| {
            has_entry(list) && (backup_name(conf).exists() || is_conversion(list, text))
        });
        if !ours {
            return Err(conflict(ConversionConflict::Exists { conflist }));
        }
    }
    Ok(Plan::Convert {
        conf: conf.to_path_buf(),
        conflist,
        text: new,
        existing,
    })
}

fn conflist_name(conf: &Path) -> PathBuf {
    conf.with_extension("conflist")
}

fn backup_name(conf: &Path) -> PathBuf {
    let mut name = conf.as_os_str().to_os_string();
    name.push(BACKUP_SUFFIX);
    PathBuf::from(name)
}

fn restore_backups(dir: &Path, report: &mut Report) -> Result<(), InstallError> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_error("read directory", dir, e)),
    };
    let mut backups = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| io_error("read directory", dir, e))?;
        let name = entry.file_name();
        let Some(original) = name.as_bytes().strip_suffix(BACKUP_SUFFIX.as_bytes()) else {
            continue;
        };
        if matches!(go_ext(original), ".conf" | ".json") {
            backups.push((
                entry.path(),
                dir.join(std::ffi::OsStr::from_bytes(original)),
            ));
        }
    }
    backups.sort();
    for (backup, conf) in backups {
        if conf.exists() {
            fs::remove_file(&backup).map_err(|e| io_error("remove", &backup, e))?;
            report.changes.push(Change::BackupRemoved { backup, conf });
        } else {
            fs::rename(&backup, &conf).map_err(|e| io_error("rename", &backup, e))?;
            report.changes.push(Change::Restored { backup, conf });
        }
        sync_dir(dir)?;
    }
    Ok(())
}
