//! Reading manifest files and directories (every `.yaml`/`.yml`, sorted, recursively) into
//! [`septum_crd::manifest::Manifests`]. A path that cannot be read (missing, unreadable, not a
//! file) is a problem of that path, like a problem inside a file: the other paths are still
//! loaded and checked. Used by the CLI (`policy check`, `explain`) and by the agent's standalone
//! datastore, which loads file by file (see [`collect_files`] and [`read_limited`]).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use crate::manifest::{Diagnostic, Manifests, Origin};

fn problem(path: &Path, message: String) -> Diagnostic {
    Diagnostic::error("-", message)
        .of("-")
        .at(Origin::file(path.display().to_string()))
}

fn warning(path: &Path, message: String) -> Diagnostic {
    Diagnostic::warning("-", message)
        .of("-")
        .at(Origin::file(path.display().to_string()))
}

/// Collects the files under `path` (given paths are taken whatever their name; inside
/// directories only `.yaml`/`.yml`). `seen` holds canonical directories, so symlink loops end.
fn collect(
    path: &Path,
    given: bool,
    out: &mut Vec<PathBuf>,
    errors: &mut Vec<Diagnostic>,
    seen: &mut BTreeSet<PathBuf>,
) {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) => {
            errors.push(problem(path, format!("cannot read: {e}")));
            return;
        }
    };
    if meta.is_dir() {
        if let Ok(canonical) = std::fs::canonicalize(path)
            && !seen.insert(canonical)
        {
            return;
        }
        let entries = match std::fs::read_dir(path) {
            Ok(r) => r,
            Err(e) => {
                errors.push(problem(path, format!("cannot list directory: {e}")));
                return;
            }
        };
        let mut entries: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        entries.sort();
        let before = out.len();
        for e in entries {
            let is_yaml = e
                .extension()
                .and_then(|x| x.to_str())
                .is_some_and(|x| x == "yaml" || x == "yml");
            if e.is_dir() || is_yaml {
                collect(&e, false, out, errors, seen);
            }
        }
        if given && out.len() == before {
            errors.push(warning(
                path,
                "no .yaml or .yml files in this directory".into(),
            ));
        }
    } else if meta.is_file() || (given && is_pipe(&meta)) {
        out.push(path.to_path_buf());
    } else if given {
        errors.push(problem(
            path,
            "cannot read: not a regular file, a pipe or a directory".into(),
        ));
    }
}

#[cfg(unix)]
fn is_pipe(meta: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::FileTypeExt;
    meta.file_type().is_fifo()
}

#[cfg(not(unix))]
fn is_pipe(_: &std::fs::Metadata) -> bool {
    false
}

/// Files larger than this are refused rather than read into memory.
const MAX_FILE_BYTES: u64 = 256 << 20;

/// Reads a file, refusing one larger than 256 MiB; the error is the message of the problem.
pub fn read_limited(path: &Path) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let f = std::fs::File::open(path).map_err(|e| format!("cannot read: {e}"))?;
    let mut bytes = Vec::new();
    f.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read: {e}"))?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(format!(
            "cannot read: larger than {} MiB",
            MAX_FILE_BYTES >> 20
        ));
    }
    Ok(bytes)
}

/// The manifest files under `paths` (sorted within each directory; a file named twice, as in
/// `dir dir/a.yaml`, once), and the problems of paths that could not be read.
pub fn collect_files(paths: &[PathBuf]) -> (Vec<PathBuf>, Vec<Diagnostic>) {
    let mut files = Vec::new();
    let mut errors = Vec::new();
    let mut seen = BTreeSet::new();
    for p in paths {
        collect(p, true, &mut files, &mut errors, &mut seen);
    }
    let mut loaded = BTreeSet::new();
    files.retain(|f| std::fs::canonicalize(f).map_or(true, |c| loaded.insert(c)));
    (files, errors)
}

/// Loads every file under `paths`. Problems with the paths themselves are in the result's
/// diagnostics like every other problem.
pub fn load(paths: &[PathBuf]) -> Manifests {
    let (files, errors) = collect_files(paths);
    let mut m = Manifests::new();
    m.diagnostics = errors;
    for f in files {
        match read_limited(&f) {
            Ok(bytes) => {
                let before = (m.diagnostics.len(), m.origins.len());
                m.load_bytes(&f.display().to_string(), &bytes);
                if (m.diagnostics.len(), m.origins.len()) == before {
                    m.diagnostics
                        .push(warning(&f, "no Kubernetes objects in this file".into()));
                }
            }
            Err(e) => m.diagnostics.push(problem(&f, e)),
        }
    }
    m
}
