//! septum through containerd's CRI, the way a kubelet drives a node: RunPodSandbox makes
//! containerd run the CNI chain (Debian's `bridge` + `host-local`, then `septum-cni`), the agent
//! registers the pod and enforces its NetworkPolicy on real traffic, and StopPodSandbox +
//! RemovePodSandbox make containerd send its DELs, after which nothing is left: no endpoint, no
//! veth, no link pin, no IPAM reservation, no queued DEL.
//!
//! Everything is private and removed by [`CriNode`]'s drop, also when the test fails: a node
//! network namespace of its own (so the host's network is untouched) holding containerd (Debian's
//! 1.6, with root, state, sockets and runc's state under `/run/septum-test-cri-<pid>/`), the
//! agent in standalone mode (its pins under `/sys/fs/bpf/septum-test-cri-<pid>`), the CNI
//! configuration and plugins, the sandboxes' cgroups (`/septum-test-cri-<pid>` in every
//! hierarchy) and a pause image built from Debian's `busybox-static` (no registry is reachable).
//!
//! Needs root and the packages `bash scripts/setup.sh` installs (containerd, runc,
//! busybox-static, containernetworking-plugins), and the `septum` and `septum-cni` binaries
//! (`cargo build -p septum-cli -p septum-cni`). A missing prerequisite fails the test: CI runs
//! it as root.

use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

use septum_lab::ns::NetNs;
use septum_tests::cri::{self, RuntimeClient, v1};

/// The pods' Kubernetes namespace (the CRI metadata's and the manifests').
const NAMESPACE: &str = "septum-cri";
/// The CNI network name.
const NETWORK: &str = "septum-cri";
/// The pods' subnet (inside the private node namespace).
const SUBNET: &str = "10.233.0.0/24";
/// The port the policy allows, and one it does not.
const ALLOWED_PORT: u16 = 80;
const DENIED_PORT: u16 = 81;
/// The pause image's name in containerd.
const PAUSE_IMAGE: &str = "septum.test/pause:busybox";
/// What the pause image runs: it only has to hold the sandbox's namespaces.
const PAUSE_ARGS: [&str; 2] = ["/bin/sleep", "2147483647"];
const CNI_DIR: &str = "/usr/lib/cni";
/// Where containerd 1.6's shims create their sockets (`s/<hash>`), fixed in the shim.
const SHIM_RUN_DIR: &str = "/run/containerd";
/// How long a denied connection is given before it counts as dropped.
const DENIED_TIMEOUT: Duration = Duration::from_secs(2);
/// How long setup steps (containerd, the agent, enforcement) may take.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// The programs the test runs, each checked up front.
#[derive(Debug)]
struct Programs {
    septum: PathBuf,
    septum_cni: PathBuf,
}

impl Programs {
    fn discover() -> Self {
        assert!(
            // /proc/self belongs to the effective user.
            std::os::unix::fs::MetadataExt::uid(
                &std::fs::metadata("/proc/self").expect("stat /proc/self")
            ) == 0,
            "the CRI test needs root (network namespaces, containerd, bpffs)"
        );
        for program in [
            "containerd",
            "containerd-shim-runc-v2",
            "ctr",
            "runc",
            "ip",
            "tar",
        ] {
            assert!(
                which(program).is_some(),
                "`{program}` is not installed: run `bash scripts/setup.sh` (it installs \
                 containerd, runc, busybox-static and containernetworking-plugins)"
            );
        }
        for plugin in ["bridge", "host-local", "loopback"] {
            assert!(
                Path::new(CNI_DIR).join(plugin).exists(),
                "{CNI_DIR}/{plugin} is missing: install Debian's containernetworking-plugins \
                 (`bash scripts/setup.sh`)"
            );
        }
        assert!(
            Path::new("/bin/busybox").exists(),
            "/bin/busybox is missing: install Debian's busybox-static (`bash scripts/setup.sh`)"
        );
        // target/debug/deps/cri-HASH -> target/debug
        let exe = std::env::current_exe().expect("the test binary's path");
        let bin_dir = exe
            .parent()
            .and_then(Path::parent)
            .unwrap_or_else(|| panic!("{} has no grandparent directory", exe.display()))
            .to_path_buf();
        let programs = Self {
            septum: bin_dir.join("septum"),
            septum_cni: bin_dir.join("septum-cni"),
        };
        for p in [&programs.septum, &programs.septum_cni] {
            assert!(
                p.exists(),
                "{} is missing: build it with `cargo build -p septum-cli -p septum-cni` \
                 (or run `cargo test --workspace`), then run this test again",
                p.display()
            );
        }
        programs
    }
}

fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|d| d.join(program))
        .find(|p| p.exists())
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Runs `cmd` to completion; panics with its output when it fails.
fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Makes `cmd`'s process die with the test (SIGKILL when the spawning thread exits), so a
/// killed test run does not leave containerd or the agent behind.
fn die_with_parent(cmd: &mut Command) {
    // SAFETY: prctl(2) is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

fn pid_alive(pid: u32) -> bool {
    // A zombie is not alive for our purposes.
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        !s.rsplit(')')
            .next()
            .is_some_and(|r| r.trim_start().starts_with('Z'))
    })
}

/// SIGTERM (SIGKILL at once when `kill`), SIGKILL after `grace`.
fn stop_pid(pid: u32, kill: bool, grace: Duration) {
    let Ok(p) = i32::try_from(pid) else { return };
    if p <= 1 {
        return;
    }
    let sig = if kill { libc::SIGKILL } else { libc::SIGTERM };
    // SAFETY: kill(2) has no memory effects.
    unsafe { libc::kill(p, sig) };
    let deadline = Instant::now() + grace;
    while pid_alive(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    if pid_alive(pid) {
        // SAFETY: as above.
        unsafe { libc::kill(p, libc::SIGKILL) };
    }
}

fn stop_child(child: &mut Child, grace: Duration) {
    if matches!(child.try_wait(), Ok(None)) {
        stop_pid(child.id(), false, grace);
    }
    let _ = child.wait();
}

/// Live processes whose command line mentions `needle` (containerd's shims name its socket).
fn processes_mentioning(needle: &Path) -> Vec<u32> {
    let needle = needle.as_os_str().as_encoded_bytes();
    let me = std::process::id();
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if pid == me || !pid_alive(pid) {
            continue;
        }
        if std::fs::read(format!("/proc/{pid}/cmdline"))
            .is_ok_and(|c| c.windows(needle.len()).any(|w| w == needle))
        {
            out.push(pid);
        }
    }
    out
}

/// Mount points at or below `dir`, deepest (latest) first.
fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut out: Vec<PathBuf> = text
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|m| PathBuf::from(m.replace("\\040", " ")))
        .filter(|m| m.starts_with(dir))
        .collect();
    out.reverse();
    out
}

/// The last lines of a log file, for failure messages.
fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A sandbox the test created, with what cleanup needs if CRI cannot remove it.
#[derive(Clone, Debug)]
struct Sandbox {
    name: String,
    id: String,
    ip: IpAddr,
    /// Its network namespace's name under /run/netns (containerd's `cni-<uuid>`).
    netns: String,
    /// The pause process.
    pid: u32,
}

/// The private node: directories, namespaces, containerd and the agent. Dropping it removes all
/// of it (see [`CriNode::teardown`]).
#[derive(Debug)]
struct CriNode {
    tag: String,
    dir: PathBuf,
    node: NetNs,
    containerd_files: cri::ContainerdLayout,
    pin_root: PathBuf,
    bridge: String,
    containerd: Option<Child>,
    agent: Option<Child>,
    /// Sandboxes not yet removed through CRI.
    sandboxes: Vec<Sandbox>,
    /// Every sandbox's netns name, removed or not (teardown checks they are gone).
    netns_seen: Vec<String>,
    /// Whether /run/containerd existed before: containerd 1.6's shims put their sockets in
    /// `/run/containerd/s/` whatever the configuration says, and leave the directory behind.
    shim_dir_existed: bool,
    torn_down: bool,
}

impl CriNode {
    /// Creates the node namespace and directories; nothing runs yet.
    fn new() -> Self {
        let pid = std::process::id();
        let tag = format!("septum-test-cri-{pid}");
        let dir = PathBuf::from(format!("/run/{tag}"));
        let node_name = format!("septum-cri-{pid}-node");
        // Leftovers of an earlier run with this pid would make the checks below lie.
        assert!(
            !dir.exists() && NetNs::open(&node_name).is_err(),
            "{} or network namespace {node_name} exists already (an earlier run's \
             leftovers?); remove them first",
            dir.display()
        );
        std::fs::create_dir_all(&dir).expect("create the private directory");
        let node = match NetNs::create(&node_name) {
            Ok(ns) => ns,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                panic!("creating the node network namespace: {e}");
            }
        };
        let guard = Self {
            pin_root: PathBuf::from(format!("/sys/fs/bpf/{tag}")),
            bridge: format!("scri{:x}", pid & 0xff_ffff),
            containerd_files: cri::ContainerdLayout::new(&dir),
            tag,
            dir,
            node,
            containerd: None,
            agent: None,
            sandboxes: Vec::new(),
            netns_seen: Vec::new(),
            shim_dir_existed: Path::new(SHIM_RUN_DIR).exists(),
            torn_down: false,
        };
        guard.node.set_loopback_up().expect("set lo up in the node");
        guard
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }
    fn socket(&self) -> PathBuf {
        self.containerd_files.socket()
    }
    fn containerd_log_path(&self) -> PathBuf {
        self.containerd_files.config_dir().join("containerd.log")
    }
    fn agent_socket(&self) -> PathBuf {
        self.path("agent/agent.sock")
    }
    fn agent_state(&self) -> PathBuf {
        self.path("agent/state")
    }
    fn manifest(&self) -> PathBuf {
        self.path("manifests/objects.yaml")
    }
    fn ipam_dir(&self) -> PathBuf {
        self.path("cni/ipam")
    }
    fn del_queue(&self) -> PathBuf {
        self.path("cni/del-queue")
    }
    fn cgroup_parent(&self) -> String {
        format!("/{}", self.tag)
    }
    fn links_pin_dir(&self) -> PathBuf {
        self.pin_root
            .join(format!("v{}", septum_datapath_common::LAYOUT_VERSION))
            .join("links")
    }

    /// The Namespace, the two Pods and the policy: the server admits the client on TCP 80 only.
    fn write_manifests(&self) -> String {
        let text = format!(
            "apiVersion: v1
kind: Namespace
metadata: {{name: {NAMESPACE}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: client, namespace: {NAMESPACE}, labels: {{app: client}}}}
spec:
  containers: [{{name: client, image: client, ports: [{{name: http, containerPort: 8080}}]}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: server, namespace: {NAMESPACE}, labels: {{app: server}}}}
spec:
  containers:
  - name: server
    image: server
    ports: [{{name: http, containerPort: {ALLOWED_PORT}}}, {{name: alt, containerPort: {DENIED_PORT}}}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: server-admits-client-http, namespace: {NAMESPACE}}}
spec:
  podSelector: {{matchLabels: {{app: server}}}}
  policyTypes: [Ingress]
  ingress:
  - from: [{{podSelector: {{matchLabels: {{app: client}}}}}}]
    ports: [{{protocol: TCP, port: {ALLOWED_PORT}}}]
"
        );
        let path = self.manifest();
        std::fs::create_dir_all(path.parent().expect("manifests dir")).expect("mkdir manifests");
        std::fs::write(&path, &text).expect("write the manifests");
        sha256_hex(text.as_bytes())
    }

    /// The CNI plugins in one directory (containerd 1.6 takes a single `bin_dir`) and the
    /// conflist: bridge + host-local, then septum-cni.
    fn write_cni(&self, programs: &Programs) {
        let bin = self.containerd_files.cni_bin_dir();
        let conf = self.containerd_files.cni_conf_dir();
        std::fs::create_dir_all(&bin).expect("mkdir cni/bin");
        std::fs::create_dir_all(&conf).expect("mkdir cni/net.d");
        for e in std::fs::read_dir(CNI_DIR)
            .expect("read /usr/lib/cni")
            .flatten()
        {
            std::os::unix::fs::symlink(e.path(), bin.join(e.file_name()))
                .expect("link a CNI plugin");
        }
        std::os::unix::fs::symlink(&programs.septum_cni, bin.join("septum-cni"))
            .expect("link septum-cni");
        let list = json!({
            "cniVersion": "1.0.0",
            "name": NETWORK,
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": self.bridge,
                    "isGateway": true,
                    "ipMasq": false,
                    "hairpinMode": true,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": SUBNET}]],
                        "routes": [{"dst": "0.0.0.0/0"}],
                        "dataDir": self.ipam_dir(),
                    },
                },
                {
                    "type": "septum-cni",
                    "agentSocket": self.agent_socket(),
                    "delQueueDir": self.del_queue(),
                    "addTimeout": "10s",
                    "agentTimeout": "5s",
                },
            ],
        });
        std::fs::write(
            conf.join("10-septum-cri.conflist"),
            serde_json::to_vec_pretty(&list).expect("encode the conflist"),
        )
        .expect("write the conflist");
    }

    /// The pause image (busybox-static, a docker-archive) and containerd's `config.toml`.
    fn write_containerd_files(&self) -> (PathBuf, PathBuf) {
        let archive = cri::write_pause_archive(
            &self.path("image"),
            Path::new("/bin/busybox"),
            PAUSE_IMAGE,
            &PAUSE_ARGS,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let config = self.containerd_files.config_dir().join("config.toml");
        std::fs::create_dir_all(self.containerd_files.config_dir()).expect("mkdir containerd");
        std::fs::write(&config, self.containerd_files.config_toml(PAUSE_IMAGE))
            .expect("write config.toml");
        (archive, config)
    }

    /// Starts the agent in the node namespace and waits until it enforces the manifests.
    fn start_agent(&mut self, programs: &Programs, manifest_digest: &str) {
        std::fs::create_dir_all(self.path("agent")).expect("mkdir agent");
        let log_path = self.path("agent/agent.log");
        let log = std::fs::File::create(&log_path).expect("create agent.log");
        let mut cmd = self.node.command(&programs.septum);
        cmd.arg("agent")
            .arg("--manifests")
            .arg(self.manifest().parent().expect("manifests dir"))
            .arg("--node-name")
            .arg("cri-node")
            .arg("--state-dir")
            .arg(self.agent_state())
            .arg("--socket")
            .arg(self.agent_socket())
            .arg("--pin-root")
            .arg(&self.pin_root)
            .arg("--health-addr")
            .arg("")
            .env(
                "RUST_LOG",
                std::env::var("SEPTUM_CRI_AGENT_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log);
        die_with_parent(&mut cmd);
        self.agent = Some(cmd.spawn().expect("start `septum agent`"));
        let manifest = self.manifest().display().to_string();
        // The status file can report the first sync before the socket is bound: wait for both.
        let socket = self.agent_socket();
        self.wait_agent("the agent to listen and enforce the manifests", |st| {
            socket.exists()
                && st["synced"] == true
                && st["files"][&manifest]["enforced"] == manifest_digest
        });
    }

    fn agent_status(&self) -> Option<Value> {
        let bytes = std::fs::read(self.agent_state().join("status.json")).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Waits until the agent's status satisfies `ok`; panics with its log otherwise.
    fn wait_agent(&mut self, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(st) = self.agent_status()
                && ok(&st)
            {
                return st;
            }
            let exited = self
                .agent
                .as_mut()
                .is_none_or(|c| !matches!(c.try_wait(), Ok(None)));
            if exited || Instant::now() > deadline {
                panic!(
                    "waiting for {what}: {}; last status: {}\nagent log:\n{}",
                    if exited {
                        "the agent exited"
                    } else {
                        "timed out"
                    },
                    self.agent_status().unwrap_or(Value::Null),
                    tail(&self.path("agent/agent.log"), 30)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts containerd in the node namespace and waits for its socket.
    fn start_containerd(&mut self, config: &Path) {
        let log_path = self.containerd_log_path();
        let log = std::fs::File::create(&log_path).expect("create containerd.log");
        let mut cmd = self.node.command("containerd");
        cmd.arg("--config")
            .arg(config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log);
        die_with_parent(&mut cmd);
        self.containerd = Some(cmd.spawn().expect("start containerd"));
        let deadline = Instant::now() + READY_TIMEOUT;
        while !self.socket().exists() {
            let exited = self
                .containerd
                .as_mut()
                .is_none_or(|c| !matches!(c.try_wait(), Ok(None)));
            if exited || Instant::now() > deadline {
                panic!(
                    "containerd did not start ({}); its log:\n{}",
                    if exited { "it exited" } else { "timed out" },
                    tail(&log_path, 30)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn containerd_log(&self) -> String {
        tail(&self.containerd_log_path(), 40)
    }

    fn import_image(&self, archive: &Path) {
        run(Command::new("ctr")
            .arg("--address")
            .arg(self.socket())
            .args(["-n", "k8s.io", "images", "import"])
            .arg(archive));
    }

    /// Host-side veths in the node namespace.
    fn host_veths(&self) -> Vec<String> {
        let out = run(Command::new("ip").args([
            "-n",
            self.node.name(),
            "-j",
            "link",
            "show",
            "type",
            "veth",
        ]));
        let links: Value = serde_json::from_str(if out.trim().is_empty() { "[]" } else { &out })
            .unwrap_or_else(|e| panic!("`ip -j link` printed no JSON ({e}): {out}"));
        links
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|l| l["ifname"].as_str().map(str::to_string))
            .collect()
    }

    fn link_pins(&self) -> Vec<String> {
        list_dir(&self.links_pin_dir())
    }

    /// host-local's reservations (one file per address; `last_reserved_ip.*` and `lock` are
    /// bookkeeping).
    fn ipam_reservations(&self) -> Vec<String> {
        list_dir(&self.ipam_dir().join(NETWORK))
            .into_iter()
            .filter(|n| !n.starts_with("last_reserved_ip") && n != "lock")
            .collect()
    }

    fn queued_dels(&self) -> Vec<String> {
        list_dir(&self.del_queue())
    }

    /// Removes everything the node created; what could not be removed, or was found left over.
    /// Idempotent.
    fn teardown(&mut self) -> Vec<String> {
        if self.torn_down {
            return Vec::new();
        }
        self.torn_down = true;
        let mut problems = Vec::new();

        // Sandboxes a failed test left: through CRI first, so the CNI DELs still run.
        if !self.sandboxes.is_empty()
            && self
                .containerd
                .as_mut()
                .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
        {
            let ids: Vec<String> = self.sandboxes.iter().map(|s| s.id.clone()).collect();
            let socket = self.socket();
            let removed = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .ok()?;
                rt.block_on(async {
                    let mut client = cri::runtime_client(&socket).await.ok()?;
                    let mut removed = Vec::new();
                    for id in ids {
                        let stop = v1::StopPodSandboxRequest {
                            pod_sandbox_id: id.clone(),
                        };
                        let rm = v1::RemovePodSandboxRequest {
                            pod_sandbox_id: id.clone(),
                        };
                        let ok = tokio::time::timeout(Duration::from_secs(10), async {
                            client.stop_pod_sandbox(stop).await.is_ok()
                                && client.remove_pod_sandbox(rm).await.is_ok()
                        })
                        .await
                        .unwrap_or(false);
                        if ok {
                            removed.push(id);
                        }
                    }
                    Some(removed)
                })
            })
            .join()
            .ok()
            .flatten()
            .unwrap_or_default();
            self.sandboxes.retain(|s| !removed.contains(&s.id));
        }

        if let Some(mut c) = self.containerd.take() {
            stop_child(&mut c, Duration::from_secs(5));
        }
        // After containerd: a DEL it sends on its way out still finds the agent.
        if let Some(mut a) = self.agent.take() {
            stop_child(&mut a, Duration::from_secs(5));
        }
        // containerd's shims outlive it; they name its socket on their command line.
        for pid in processes_mentioning(&self.dir) {
            problems.push(format!("killed leftover process {pid}"));
            stop_pid(pid, true, Duration::from_secs(2));
        }
        for s in std::mem::take(&mut self.sandboxes) {
            let pause = format!("{}\0{}\0", PAUSE_ARGS[0], PAUSE_ARGS[1]);
            if std::fs::read(format!("/proc/{}/cmdline", s.pid))
                .is_ok_and(|c| c == pause.as_bytes())
            {
                stop_pid(s.pid, true, Duration::from_secs(2));
            }
            problems.push(format!(
                "sandbox {} ({}) was not removed through CRI",
                s.name, s.id
            ));
        }
        for m in mounts_under(&self.dir) {
            if let Err(e) = nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH) {
                problems.push(format!("unmounting {}: {e}", m.display()));
            }
        }
        for name in &self.netns_seen {
            match NetNs::delete(name) {
                Ok(false) => {}
                Ok(true) => problems.push(format!("sandbox netns {name} was left behind")),
                Err(e) => problems.push(format!("removing sandbox netns {name}: {e}")),
            }
        }
        if let Err(e) = NetNs::delete(self.node.name()) {
            problems.push(format!("removing the node netns: {e}"));
        }
        if let Err(e) = remove_tree(&self.pin_root) {
            problems.push(format!("removing {}: {e}", self.pin_root.display()));
        }
        // runc's cgroups (cgroupfs driver): `<hierarchy>/<tag>/<sandbox id>`.
        for hierarchy in list_dir(Path::new("/sys/fs/cgroup")) {
            let parent = Path::new("/sys/fs/cgroup").join(hierarchy).join(&self.tag);
            if !parent.exists() {
                continue;
            }
            for child in list_dir(&parent) {
                let child = parent.join(child);
                if child.is_dir() {
                    problems.push(format!("cgroup {} was left behind", child.display()));
                    let _ = std::fs::remove_dir(&child);
                }
            }
            if let Err(e) = std::fs::remove_dir(&parent) {
                problems.push(format!("removing cgroup {}: {e}", parent.display()));
            }
        }
        if let Err(e) = remove_tree(&self.dir) {
            problems.push(format!("removing {}: {e}", self.dir.display()));
        }
        if !self.shim_dir_existed {
            // Only empty directories go: a shim's socket in there is reported by leftovers().
            let run = Path::new(SHIM_RUN_DIR);
            let _ = std::fs::remove_dir(run.join("s"));
            let _ = std::fs::remove_dir(run);
        }
        problems
    }

    /// What of this node still exists (after [`CriNode::teardown`]).
    fn leftovers(&self) -> Vec<String> {
        let mut out = Vec::new();
        for p in [&self.dir, &self.pin_root] {
            if p.exists() {
                out.push(p.display().to_string());
            }
        }
        for name in self
            .netns_seen
            .iter()
            .chain([&self.node.name().to_string()])
        {
            if NetNs::open(name).is_ok() {
                out.push(format!("netns {name}"));
            }
        }
        for pid in processes_mentioning(&self.dir) {
            out.push(format!("process {pid}"));
        }
        if !self.shim_dir_existed && Path::new(SHIM_RUN_DIR).exists() {
            out.push(format!(
                "{SHIM_RUN_DIR} (shim sockets: {:?})",
                list_dir(&Path::new(SHIM_RUN_DIR).join("s"))
            ));
        }
        for m in mounts_under(&self.dir) {
            out.push(format!("mount {}", m.display()));
        }
        for hierarchy in list_dir(Path::new("/sys/fs/cgroup")) {
            let p = Path::new("/sys/fs/cgroup").join(hierarchy).join(&self.tag);
            if p.exists() {
                out.push(p.display().to_string());
            }
        }
        out
    }
}

impl Drop for CriNode {
    fn drop(&mut self) {
        for p in self.teardown() {
            eprintln!("cri test cleanup: {p}");
        }
    }
}

fn list_dir(dir: &Path) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

fn remove_tree(p: &Path) -> std::io::Result<()> {
    match std::fs::remove_dir_all(p) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// TCP servers on both ports inside a pod's network namespace, each answering one line per
/// connection and counting them.
#[derive(Debug)]
struct Servers {
    stop: Arc<AtomicBool>,
    accepted: Arc<BTreeMap<u16, AtomicU32>>,
    thread: Option<JoinHandle<()>>,
}

impl Servers {
    fn start(ns: &NetNs, ports: &[u16]) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let accepted: Arc<BTreeMap<u16, AtomicU32>> =
            Arc::new(ports.iter().map(|p| (*p, AtomicU32::new(0))).collect());
        let (ready_tx, ready_rx) = mpsc::channel();
        let ports = ports.to_vec();
        let (stop2, accepted2) = (stop.clone(), accepted.clone());
        let thread = ns
            .spawn_thread("cri-servers".into(), move || {
                let bound: std::io::Result<Vec<(u16, TcpListener)>> = ports
                    .iter()
                    .map(|&port| {
                        let l = TcpListener::bind((Ipv4Addr::UNSPECIFIED, port))?;
                        l.set_nonblocking(true)?;
                        Ok((port, l))
                    })
                    .collect();
                let listeners = match bound {
                    Ok(l) => {
                        let _ = ready_tx.send(Ok(()));
                        l
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                while !stop2.load(Ordering::Relaxed) {
                    for (port, l) in &listeners {
                        if let Ok((mut s, _)) = l.accept() {
                            accepted2[port].fetch_add(1, Ordering::Relaxed);
                            let _ = s.set_nonblocking(false);
                            let _ = s.write_all(format!("septum-cri {port}\n").as_bytes());
                        }
                    }
                    std::thread::sleep(Duration::from_millis(2));
                }
            })
            .expect("spawn the server thread");
        ready_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("the server thread answers")
            .expect("bind the servers");
        Self {
            stop,
            accepted,
            thread: Some(thread),
        }
    }

    fn accepted(&self, port: u16) -> u32 {
        self.accepted[&port].load(Ordering::Relaxed)
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One TCP connection from inside `ns`: the server's greeting, or why there was none.
fn connect_from(ns: &NetNs, addr: SocketAddr, timeout: Duration) -> std::io::Result<String> {
    ns.run(|| {
        let mut s = TcpStream::connect_timeout(&addr, timeout)?;
        s.set_read_timeout(Some(timeout))?;
        let mut line = String::new();
        s.read_to_string(&mut line)?;
        Ok(line)
    })
    .unwrap_or_else(|e| panic!("entering {}: {e}", ns.name()))
}

fn sandbox_config(name: &str, cgroup_parent: &str) -> v1::PodSandboxConfig {
    v1::PodSandboxConfig {
        metadata: Some(v1::PodSandboxMetadata {
            name: name.into(),
            uid: format!("septum-cri-{}-{name}", std::process::id()),
            namespace: NAMESPACE.into(),
            attempt: 0,
        }),
        hostname: name.into(),
        labels: [("app".to_string(), name.to_string())].into(),
        linux: Some(v1::LinuxPodSandboxConfig {
            cgroup_parent: cgroup_parent.into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// RunPodSandbox, then the facts PodSandboxStatus gives: address, netns, pause pid.
async fn run_sandbox(client: &mut RuntimeClient, node: &mut CriNode, name: &str) -> Sandbox {
    let config = sandbox_config(name, &node.cgroup_parent());
    let id = match client
        .run_pod_sandbox(v1::RunPodSandboxRequest {
            config: Some(config),
            runtime_handler: String::new(),
        })
        .await
    {
        Ok(r) => r.into_inner().pod_sandbox_id,
        Err(e) => panic!(
            "RunPodSandbox {name}: {e}\ncontainerd log:\n{}\nagent log:\n{}",
            node.containerd_log(),
            tail(&node.path("agent/agent.log"), 20)
        ),
    };
    let status = client
        .pod_sandbox_status(v1::PodSandboxStatusRequest {
            pod_sandbox_id: id.clone(),
            verbose: true,
        })
        .await
        .unwrap_or_else(|e| panic!("PodSandboxStatus {name}: {e}"))
        .into_inner();
    let st = status.status.expect("PodSandboxStatus has a status");
    assert_eq!(
        st.state,
        v1::PodSandboxState::SandboxReady as i32,
        "sandbox {name} is not ready: {st:?}"
    );
    let ip: IpAddr = st
        .network
        .as_ref()
        .map(|n| n.ip.as_str())
        .unwrap_or_default()
        .parse()
        .unwrap_or_else(|e| panic!("sandbox {name} has no address ({e}): {:?}", st.network));
    let info: Value = serde_json::from_str(
        status
            .info
            .get("info")
            .unwrap_or_else(|| panic!("verbose status of {name} has no info: {:?}", status.info)),
    )
    .expect("the verbose info is JSON");
    let netns_path = info["runtimeSpec"]["linux"]["namespaces"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|n| n["type"] == "network")
        .and_then(|n| n["path"].as_str())
        .unwrap_or_else(|| panic!("the runtime spec of {name} names no network namespace"))
        .to_string();
    // containerd 1.6 mounts sandbox namespaces as /var/run/netns/cni-<uuid>.
    let netns = Path::new(&netns_path)
        .strip_prefix("/var/run/netns")
        .or_else(|_| Path::new(&netns_path).strip_prefix("/run/netns"))
        .unwrap_or_else(|_| panic!("netns {netns_path} of {name} is not under /run/netns"))
        .to_string_lossy()
        .into_owned();
    let pid = info["pid"]
        .as_u64()
        .and_then(|p| u32::try_from(p).ok())
        .unwrap_or_else(|| panic!("the verbose info of {name} has no pid: {info}"));
    let sandbox = Sandbox {
        name: name.into(),
        id,
        ip,
        netns,
        pid,
    };
    node.netns_seen.push(sandbox.netns.clone());
    node.sandboxes.push(sandbox.clone());
    sandbox
}

async fn remove_sandbox(client: &mut RuntimeClient, node: &mut CriNode, sandbox: &Sandbox) {
    let name = &sandbox.name;
    // StopPodSandbox fails when a CNI DEL fails, so success means the DELs succeeded.
    if let Err(e) = client
        .stop_pod_sandbox(v1::StopPodSandboxRequest {
            pod_sandbox_id: sandbox.id.clone(),
        })
        .await
    {
        panic!(
            "StopPodSandbox {name}: {e}\ncontainerd log:\n{}",
            node.containerd_log()
        );
    }
    if let Err(e) = client
        .remove_pod_sandbox(v1::RemovePodSandboxRequest {
            pod_sandbox_id: sandbox.id.clone(),
        })
        .await
    {
        panic!(
            "RemovePodSandbox {name}: {e}\ncontainerd log:\n{}",
            node.containerd_log()
        );
    }
    node.sandboxes.retain(|s| s.id != sandbox.id);
}

/// containerd's CRI is up with its network configuration loaded.
async fn wait_cri_ready(client: &mut RuntimeClient, node: &CriNode) {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        let last = match client.status(v1::StatusRequest { verbose: false }).await {
            Ok(r) => {
                let conditions = r.into_inner().status.map(|s| s.conditions);
                let ready = |t: &str| {
                    conditions
                        .iter()
                        .flatten()
                        .any(|c| c.r#type == t && c.status)
                };
                if ready("RuntimeReady") && ready("NetworkReady") {
                    return;
                }
                format!("{conditions:?}")
            }
            Err(e) => e.to_string(),
        };
        assert!(
            Instant::now() < deadline,
            "containerd's CRI did not become ready: {last}\ncontainerd log:\n{}",
            node.containerd_log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The image is known to the CRI image service (it learns of imports through events).
async fn wait_image(socket: &Path) {
    let channel = cri::connect(socket)
        .await
        .unwrap_or_else(|e| panic!("{e}: {:?}", std::error::Error::source(&e)));
    let mut images = v1::image_service_client::ImageServiceClient::new(channel);
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        let r = images
            .image_status(v1::ImageStatusRequest {
                image: Some(v1::ImageSpec {
                    image: PAUSE_IMAGE.into(),
                    ..Default::default()
                }),
                verbose: false,
            })
            .await;
        if r.as_ref().is_ok_and(|r| r.get_ref().image.is_some()) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the CRI image service does not know {PAUSE_IMAGE}: {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The agent's endpoints as (pod, ips, state).
fn endpoints_of(status: &Value) -> Vec<(String, Vec<IpAddr>, String)> {
    let mut out: Vec<_> = status["endpoints"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            (
                e["pod"].as_str().unwrap_or_default().to_string(),
                e["ips"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|ip| ip.as_str()?.parse().ok())
                    .collect(),
                e["state"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    out.sort();
    out
}

/// The endpoint registry the agent persists (`endpoints.json`): pod names of its endpoints.
fn registered_pods(node: &CriNode) -> Vec<String> {
    let path = node.agent_state().join("endpoints.json");
    let registry: Value = std::fs::read(&path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_else(|| panic!("{} is missing or not JSON", path.display()));
    let mut pods: Vec<String> = registry["endpoints"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(_, e)| {
            format!(
                "{}/{}",
                e["pod"]["namespace"].as_str().unwrap_or("?"),
                e["pod"]["name"].as_str().unwrap_or("?")
            )
        })
        .collect();
    pods.sort();
    pods
}

#[test]
fn cri_sandboxes_are_enforced_and_leave_nothing_behind() {
    let started = Instant::now();
    let programs = Programs::discover();
    let mut node = CriNode::new();
    let digest = node.write_manifests();
    node.write_cni(&programs);
    let (archive, config) = node.write_containerd_files();
    node.start_agent(&programs, &digest);
    node.start_containerd(&config);
    node.import_image(&archive);

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let socket = node.socket();
    let mut client = rt
        .block_on(cri::runtime_client(&socket))
        .unwrap_or_else(|e| panic!("{e}: {:?}", std::error::Error::source(&e)));
    let version = rt
        .block_on(client.version(v1::VersionRequest {
            version: "v1".into(),
        }))
        .expect("CRI Version")
        .into_inner();
    eprintln!(
        "CRI runtime: {} {} (API {})",
        version.runtime_name, version.runtime_version, version.runtime_api_version
    );
    rt.block_on(wait_cri_ready(&mut client, &node));
    rt.block_on(wait_image(&socket));

    // RunPodSandbox -> CNI ADD through bridge, host-local and septum-cni.
    let server = rt.block_on(run_sandbox(&mut client, &mut node, "server"));
    let client_pod = rt.block_on(run_sandbox(&mut client, &mut node, "client"));
    eprintln!("sandboxes up: server {server:?}, client {client_pod:?}");
    assert_ne!(server.netns, client_pod.netns);

    // The agent registered both, under the names from the CRI metadata, with the CRI's
    // addresses, and enforces them (ready: their pods' identities are in the maps).
    let want = {
        let mut w = vec![
            (
                format!("{NAMESPACE}/client"),
                vec![client_pod.ip],
                "ready".to_string(),
            ),
            (
                format!("{NAMESPACE}/server"),
                vec![server.ip],
                "ready".to_string(),
            ),
        ];
        w.sort();
        w
    };
    let status = node.wait_agent("both endpoints ready", |st| endpoints_of(st) == want);
    assert_eq!(endpoints_of(&status), want);
    assert_eq!(
        registered_pods(&node),
        vec![format!("{NAMESPACE}/client"), format!("{NAMESPACE}/server")],
        "endpoints.json holds both pods"
    );
    // What the removal must take away is there now.
    assert_eq!(node.host_veths().len(), 2, "one host veth per sandbox");
    assert_eq!(
        node.ipam_reservations().len(),
        2,
        "host-local reserved one address per sandbox: {:?}",
        node.ipam_reservations()
    );
    // The agent attaches in its default mode (auto): TCX links, pinned, from kernel 6.6; clsact
    // filters, which have no link to pin, below it.
    if septum_tests::kernel::at_least(6, 6, "TCX links (the link-pin check)") {
        assert!(
            !node.link_pins().is_empty(),
            "the agent pinned no TCX links under {}",
            node.links_pin_dir().display()
        );
    }

    // Real traffic between the sandboxes' namespaces.
    let server_ns = NetNs::open(&server.netns).expect("the server's netns");
    let client_ns = NetNs::open(&client_pod.netns).expect("the client's netns");
    let servers = Servers::start(&server_ns, &[ALLOWED_PORT, DENIED_PORT]);
    // Control: the denied port's server answers (over loopback, which septum does not police).
    let local = connect_from(
        &server_ns,
        SocketAddr::new(Ipv4Addr::LOCALHOST.into(), DENIED_PORT),
        Duration::from_secs(2),
    )
    .expect("the server answers on its own loopback");
    assert_eq!(local, format!("septum-cri {DENIED_PORT}\n"));
    let before_denied = servers.accepted(DENIED_PORT);

    let allowed = connect_from(
        &client_ns,
        SocketAddr::new(server.ip, ALLOWED_PORT),
        Duration::from_secs(5),
    );
    assert_eq!(
        allowed.as_deref().map_err(|e| e.kind()),
        Ok(format!("septum-cri {ALLOWED_PORT}\n").as_str()),
        "client -> server:{ALLOWED_PORT} is allowed by the policy: {allowed:?}"
    );
    assert_eq!(servers.accepted(ALLOWED_PORT), 1);

    let denied = connect_from(
        &client_ns,
        SocketAddr::new(server.ip, DENIED_PORT),
        DENIED_TIMEOUT,
    );
    assert!(
        matches!(&denied, Err(e) if e.kind() == std::io::ErrorKind::TimedOut),
        "client -> server:{DENIED_PORT} must time out (a silent drop), got {denied:?}"
    );
    assert_eq!(
        servers.accepted(DENIED_PORT),
        before_denied,
        "no denied connection reached the server"
    );
    drop(servers);

    // StopPodSandbox + RemovePodSandbox -> containerd's DELs.
    rt.block_on(remove_sandbox(&mut client, &mut node, &client_pod));
    rt.block_on(remove_sandbox(&mut client, &mut node, &server));
    let listed = rt
        .block_on(client.list_pod_sandbox(v1::ListPodSandboxRequest { filter: None }))
        .expect("ListPodSandbox")
        .into_inner()
        .items;
    assert!(
        listed.is_empty(),
        "sandboxes left in containerd: {listed:?}"
    );
    drop(client);
    drop(rt);

    let status = node.wait_agent("no endpoints left", |st| endpoints_of(st).is_empty());
    assert!(endpoints_of(&status).is_empty());
    assert!(
        registered_pods(&node).is_empty(),
        "endpoints.json still holds {:?}",
        registered_pods(&node)
    );
    assert!(
        node.host_veths().is_empty(),
        "host veths left: {:?}",
        node.host_veths()
    );
    assert!(
        node.link_pins().is_empty(),
        "link pins left: {:?}",
        node.link_pins()
    );
    assert!(
        node.ipam_reservations().is_empty(),
        "IPAM reservations left: {:?}",
        node.ipam_reservations()
    );
    assert!(
        node.queued_dels().is_empty(),
        "DELs queued for the agent: {:?}",
        node.queued_dels()
    );
    for s in [&client_pod, &server] {
        assert!(
            NetNs::open(&s.netns).is_err(),
            "containerd left the netns {} of {}",
            s.netns,
            s.name
        );
        assert!(!pid_alive(s.pid), "the pause process of {} lives", s.name);
    }

    let problems = node.teardown();
    assert!(problems.is_empty(), "teardown: {problems:?}");
    let leftovers = node.leftovers();
    assert!(leftovers.is_empty(), "left behind: {leftovers:?}");
    eprintln!("cri test took {:?}", started.elapsed());
}
