//! The file system side of installation: listing configurations in the runtime's order, and
//! writes that replace a file in one rename.

use std::{
    ffi::OsString,
    fs,
    io::{self, Write},
    os::unix::{
        ffi::OsStrExt,
        fs::{MetadataExt, OpenOptionsExt, PermissionsExt},
    },
    path::{Path, PathBuf},
};

use super::{BINARY_NAME, CONFIG_EXTENSIONS, Change, InstallError, Malformed, TEMP_SUFFIX};

/// The network configurations in `dir`, in the order the runtime reads them (the first is the
/// node's network). A missing directory has none, as for libcni.
pub fn config_files(dir: &Path) -> Result<Vec<PathBuf>, InstallError> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(io_error("read directory", dir, source)),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| io_error("read directory", dir, e))?;
        // Like Go's DirEntry.IsDir: the entry itself, not a symlink's target.
        let is_dir = entry
            .file_type()
            .map_err(|e| io_error("stat", &entry.path(), e))?
            .is_dir();
        let name = entry.file_name();
        if !is_dir && CONFIG_EXTENSIONS.contains(&go_ext(name.as_bytes())) {
            names.push(name);
        }
    }
    names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    Ok(names.into_iter().map(|n| dir.join(n)).collect())
}

/// Go's `filepath.Ext` as text: from the last dot of the name, or nothing.
pub(super) fn go_ext(name: &[u8]) -> &str {
    match name.iter().rposition(|&b| b == b'.') {
        Some(i) => std::str::from_utf8(&name[i..]).unwrap_or(""),
        None => "",
    }
}

pub(super) fn is_list(path: &Path) -> bool {
    go_ext(path.as_os_str().as_bytes()) == ".conflist"
}

pub(super) fn install_binary(source: &Path, bin_dir: &Path) -> Result<Change, InstallError> {
    let dest = bin_dir.join(BINARY_NAME);
    let bytes = fs::read(source).map_err(|e| io_error("read the plugin binary", source, e))?;
    let same = fs::symlink_metadata(&dest).is_ok_and(|m| {
        m.is_file()
            && m.mode() & 0o7777 == 0o755
            && m.len() == bytes.len() as u64
            && fs::read(&dest).is_ok_and(|d| d == bytes)
    });
    if same {
        return Ok(Change::BinaryUnchanged(dest));
    }
    let keep = Keep {
        mode: 0o755,
        owner: None,
    };
    write_atomically(&dest, &bytes, &keep)?;
    Ok(Change::BinaryInstalled(dest))
}

pub(super) fn read_text(path: &Path) -> Result<String, InstallError> {
    let bytes = fs::read(path).map_err(|e| io_error("read", path, e))?;
    String::from_utf8(bytes).map_err(|_| InstallError::Malformed {
        path: path.to_path_buf(),
        problem: Malformed::NotUtf8,
    })
}

pub(super) fn io_error(op: &'static str, path: &Path, source: io::Error) -> InstallError {
    InstallError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// The mode and owner a rewritten file keeps.
#[derive(Debug, Clone, Copy)]
pub(super) struct Keep {
    pub(super) mode: u32,
    pub(super) owner: Option<(u32, u32)>,
}

impl From<&fs::Metadata> for Keep {
    fn from(m: &fs::Metadata) -> Self {
        Keep {
            mode: m.mode() & 0o7777,
            owner: Some((m.uid(), m.gid())),
        }
    }
}

/// Replaces `path` with `contents` in one rename: a temporary file in the same directory,
/// written, given `keep`'s owner and mode, fsynced, renamed, then the directory fsynced.
pub(super) fn write_atomically(
    path: &Path,
    contents: &[u8],
    keep: &Keep,
) -> Result<(), InstallError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut name = OsString::from(".");
    name.push(path.file_name().unwrap_or_default());
    name.push(TEMP_SUFFIX);
    let temp = dir.join(name);
    match fs::remove_file(&temp) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_error("remove stale", &temp, e)),
    }
    let written = (|| -> Result<(), InstallError> {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(keep.mode)
            .open(&temp)
            .map_err(|e| io_error("create", &temp, e))?;
        if let Some((uid, gid)) = keep.owner {
            let m = file.metadata().map_err(|e| io_error("stat", &temp, e))?;
            if (m.uid(), m.gid()) != (uid, gid) {
                std::os::unix::fs::fchown(&file, Some(uid), Some(gid))
                    .map_err(|e| io_error("chown", &temp, e))?;
            }
        }
        // After chown, which clears set-id bits; and past the umask.
        file.set_permissions(fs::Permissions::from_mode(keep.mode))
            .map_err(|e| io_error("chmod", &temp, e))?;
        file.write_all(contents)
            .map_err(|e| io_error("write", &temp, e))?;
        file.sync_all().map_err(|e| io_error("fsync", &temp, e))?;
        fs::rename(&temp, path).map_err(|e| io_error("rename into place", path, e))
    })();
    if written.is_err() {
        let _ = fs::remove_file(&temp);
    }
    written?;
    sync_dir(dir)
}

pub(super) fn sync_dir(dir: &Path) -> Result<(), InstallError> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_error("fsync", dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_extensions() {
        assert_eq!(go_ext(b"10-a.conflist"), ".conflist");
        assert_eq!(go_ext(b".conflist"), ".conflist");
        assert_eq!(go_ext(b"a.conf.septum-backup"), ".septum-backup");
        assert_eq!(go_ext(b".a.conflist.septum-tmp"), ".septum-tmp");
        assert_eq!(go_ext(b"README"), "");
    }
}
