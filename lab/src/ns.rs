//! Named network namespaces compatible with iproute2 (`/run/netns/NAME`: a bind mount of a
//! namespace created by `unshare`), and running code or commands inside them. No `ip` command:
//! the lab is production code.

use std::ffi::OsStr;
use std::fs::File;
use std::os::fd::AsFd as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, setns, unshare};

/// Where named namespaces live.
pub const NETNS_DIR: &str = "/run/netns";

/// Errors of namespace handling.
#[derive(Debug, thiserror::Error)]
pub enum NetNsError {
    /// A system call failed.
    #[error("network namespace {name}: {what}: {source}")]
    Sys {
        /// The namespace.
        name: String,
        /// What was being done.
        what: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// It exists already.
    #[error("network namespace {0} already exists")]
    Exists(String),
    /// It does not exist.
    #[error("network namespace {0} does not exist")]
    Missing(String),
}

/// A named network namespace. Dropping it does not delete it: the lab outlives its processes.
#[derive(Clone, Debug)]
pub struct NetNs {
    name: String,
    path: PathBuf,
}

fn sys<'a>(name: &'a str, what: &'static str) -> impl FnOnce(std::io::Error) -> NetNsError + 'a {
    move |source| NetNsError::Sys {
        name: name.to_string(),
        what,
        source,
    }
}

fn errno(e: nix::errno::Errno) -> std::io::Error {
    std::io::Error::from_raw_os_error(e as i32)
}

impl NetNs {
    /// Creates `name` (an error if it exists).
    pub fn create(name: &str) -> Result<Self, NetNsError> {
        std::fs::create_dir_all(NETNS_DIR).map_err(sys(name, "creating /run/netns"))?;
        let path = Path::new(NETNS_DIR).join(name);
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(NetNsError::Exists(name.to_string()));
            }
            Err(e) => return Err(sys(name, "creating the mount point")(e)),
        }
        let target = path.clone();
        // A dedicated thread: unshare changes the calling thread's namespace for good.
        let r = std::thread::spawn(move || -> Result<(), std::io::Error> {
            unshare(CloneFlags::CLONE_NEWNET).map_err(errno)?;
            mount(
                Some("/proc/thread-self/ns/net"),
                &target,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(errno)
        })
        .join()
        .unwrap_or_else(|_| Err(std::io::Error::other("namespace thread panicked")));
        if let Err(e) = r {
            let _ = std::fs::remove_file(&path);
            return Err(sys(name, "creating")(e));
        }
        Ok(Self {
            name: name.to_string(),
            path,
        })
    }

    /// An existing namespace.
    pub fn open(name: &str) -> Result<Self, NetNsError> {
        let path = Path::new(NETNS_DIR).join(name);
        if !path.exists() {
            return Err(NetNsError::Missing(name.to_string()));
        }
        Ok(Self {
            name: name.to_string(),
            path,
        })
    }

    /// Deletes `name`; whether it existed. Idempotent.
    pub fn delete(name: &str) -> Result<bool, NetNsError> {
        let path = Path::new(NETNS_DIR).join(name);
        if !path.exists() {
            return Ok(false);
        }
        match umount2(&path, MntFlags::MNT_DETACH) {
            Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
            Err(e) => return Err(sys(name, "unmounting")(errno(e))),
        }
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
            Err(e) => Err(sys(name, "removing")(e)),
        }
    }

    /// Names of existing namespaces starting with `prefix`.
    pub fn list_with_prefix(prefix: &str) -> Vec<String> {
        let mut out: Vec<String> = std::fs::read_dir(NETNS_DIR)
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.starts_with(prefix))
                    .collect()
            })
            .unwrap_or_default();
        out.sort();
        out
    }

    /// The name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/NAME`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn enter(&self) -> Result<(), NetNsError> {
        let f = File::open(&self.path).map_err(sys(&self.name, "opening"))?;
        setns(f.as_fd(), CloneFlags::CLONE_NEWNET)
            .map_err(|e| sys(&self.name, "entering")(errno(e)))
    }

    /// Runs `f` on a thread inside the namespace.
    pub fn run<R: Send>(&self, f: impl FnOnce() -> R + Send) -> Result<R, NetNsError> {
        std::thread::scope(|s| {
            s.spawn(|| {
                self.enter()?;
                Ok(f())
            })
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }

    /// Spawns a named thread inside the namespace.
    pub fn spawn_thread<R: Send + 'static>(
        &self,
        name: String,
        f: impl FnOnce() -> R + Send + 'static,
    ) -> Result<std::thread::JoinHandle<R>, NetNsError> {
        let file = File::open(&self.path).map_err(sys(&self.name, "opening"))?;
        let ns = self.name.clone();
        std::thread::Builder::new()
            .name(name)
            .spawn(move || {
                if let Err(e) = setns(file.as_fd(), CloneFlags::CLONE_NEWNET) {
                    panic!("entering network namespace {ns}: {e}");
                }
                f()
            })
            .map_err(sys(&self.name, "spawning a thread"))
    }

    /// A command that runs inside the namespace.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        use std::os::unix::process::CommandExt;
        let mut cmd = Command::new(program);
        match File::open(&self.path) {
            Ok(file) => {
                // SAFETY: only setns(2), async-signal-safe, runs between fork and exec; the file
                // lives in the closure, so its descriptor is open in the child.
                unsafe {
                    cmd.pre_exec(move || {
                        nix::sched::setns(file.as_fd(), CloneFlags::CLONE_NEWNET)
                            .map_err(|e| std::io::Error::from_raw_os_error(e as i32))
                    });
                }
            }
            Err(e) => {
                let msg = format!("network namespace {}: {e}", self.name);
                // SAFETY: returning an error is async-signal-safe; the message was built before.
                unsafe {
                    cmd.pre_exec(move || Err(std::io::Error::other(msg.clone())));
                }
            }
        }
        cmd
    }

    /// Sets the loopback interface up.
    pub fn set_loopback_up(&self) -> Result<(), NetNsError> {
        self.run(|| -> std::io::Result<()> {
            // SAFETY: plain socket/ioctl calls on a zeroed ifreq naming "lo"; the socket is
            // closed before returning.
            unsafe {
                let s = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
                if s < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let mut req: libc::ifreq = std::mem::zeroed();
                for (i, b) in b"lo\0".iter().enumerate() {
                    req.ifr_name[i] = *b as libc::c_char;
                }
                let mut r = libc::ioctl(s, libc::SIOCGIFFLAGS, &mut req);
                if r == 0 {
                    req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
                    r = libc::ioctl(s, libc::SIOCSIFFLAGS, &req);
                }
                let err = std::io::Error::last_os_error();
                libc::close(s);
                if r < 0 { Err(err) } else { Ok(()) }
            }
        })?
        .map_err(sys(&self.name, "setting lo up"))
    }

    /// Writes `/proc/sys/KEY` inside the namespace (e.g. `net/ipv4/ip_forward`).
    pub fn write_sysctl(&self, key: &str, value: &str) -> Result<(), NetNsError> {
        let path = Path::new("/proc/sys").join(key);
        self.run(|| std::fs::write(&path, value))?
            .map_err(sys(&self.name, "writing a sysctl"))
    }
}
