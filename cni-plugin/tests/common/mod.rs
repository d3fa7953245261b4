//! Shared pieces of septum-cni's integration tests: running the built binary the way a runtime
//! does, network namespaces that clean up after themselves, and a test double of the agent.
//!
//! [`AgentDouble`] is a test double: the real septum agent does not exist yet. It serves the
//! real `septum.agent.v1.EndpointRegistry` service on a unix socket, records every request, and
//! answers like a well-behaved agent would (Add -> INIT_DENY endpoint, Check compares with the
//! recorded Add, Gc removes what is not listed, Status answers `ready`).

#![allow(dead_code)] // each test binary uses its own subset

use std::{
    io::Write,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, Ordering},
        mpsc,
    },
    thread::JoinHandle,
    time::Duration,
};

use septum_proto::agent::v1::{
    self as pb,
    endpoint_registry_server::{EndpointRegistry, EndpointRegistryServer},
};
use serde_json::Value;
use tokio::sync::oneshot;

/// The plugin binary under test.
pub const PLUGIN: &str = env!("CARGO_BIN_EXE_septum-cni");

/// One finished plugin (or other CNI binary) run.
#[derive(Debug)]
pub struct Run {
    /// Exit status success.
    pub success: bool,
    /// Stdout as text.
    pub stdout: String,
    /// Stderr as text.
    pub stderr: String,
}

impl Run {
    /// Stdout parsed as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {self:?}"))
    }

    /// Asserts success and returns self.
    pub fn ok(self) -> Self {
        assert!(self.success, "expected success: {self:?}");
        self
    }

    /// Asserts a CNI error result with `code` (and no crash); returns its `msg`.
    pub fn error(&self, code: u64) -> String {
        assert!(!self.success, "expected failure with code {code}: {self:?}");
        assert!(
            !self.stderr.contains("panicked"),
            "the plugin panicked: {self:?}"
        );
        let v = self.json();
        assert_eq!(v["code"].as_u64(), Some(code), "wrong code: {self:?}");
        assert!(
            v["cniVersion"].as_str().is_some_and(|s| !s.is_empty()),
            "error without cniVersion: {self:?}"
        );
        let msg = v["msg"].as_str().unwrap_or_default().to_string();
        assert!(!msg.is_empty(), "error without msg: {self:?}");
        msg
    }
}

/// Runs `program` with exactly `env` (plus a PATH) and `stdin`, inside network namespace
/// `netns` when given (`ip netns exec`).
pub fn exec(netns: Option<&str>, program: &str, env: &[(&str, &str)], stdin: &[u8]) -> Run {
    let mut cmd = match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, program]);
            c
        }
        None => Command::new(program),
    };
    cmd.env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {program}: {e}"));
    let mut input = child.stdin.take().expect("piped stdin");
    let data = stdin.to_vec();
    // A plugin that refuses a huge input exits before reading it all: ignore the broken pipe.
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&data);
    });
    let out = child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("wait for {program}: {e}"));
    let _ = writer.join();
    Run {
        success: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Runs septum-cni outside any test namespace.
pub fn plugin(env: &[(&str, &str)], stdin: &[u8]) -> Run {
    exec(None, PLUGIN, env, stdin)
}

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A short unique tag for names (interface names are limited to 15 bytes).
pub fn unique_tag() -> String {
    format!(
        "{:x}{:x}",
        std::process::id() % 0xffff,
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Runs `ip ARGS...`, panicking with its stderr on failure.
pub fn ip(args: &[&str]) -> String {
    let out = Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run ip {args:?}: {e}"));
    assert!(
        out.status.success(),
        "ip {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A named network namespace, deleted on drop (also when the test panics).
#[derive(Debug)]
pub struct NetNs {
    /// Its name under /run/netns.
    pub name: String,
}

impl NetNs {
    /// Creates it, with loopback up and IPv6 duplicate address detection off (so addresses are
    /// usable at once and plugins do not wait for DAD).
    pub fn new(name: &str) -> Self {
        ip(&["netns", "add", name]);
        let ns = NetNs {
            name: name.to_string(),
        };
        ip(&["-n", name, "link", "set", "lo", "up"]);
        let out = Command::new("ip")
            .args(["netns", "exec", name, "sysctl", "-qw"])
            .args([
                "net.ipv6.conf.all.accept_dad=0",
                "net.ipv6.conf.default.accept_dad=0",
            ])
            .output()
            .expect("run sysctl");
        assert!(out.status.success(), "sysctl in {name}: {out:?}");
        ns
    }

    /// Its path, as a runtime passes it in CNI_NETNS.
    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// Everything the agent double was asked.
#[derive(Debug, Default, Clone)]
pub struct Recorded {
    /// Add requests, in order.
    pub adds: Vec<pb::AddRequest>,
    /// Del requests, in order.
    pub dels: Vec<pb::DelRequest>,
    /// Check requests, in order.
    pub checks: Vec<pb::CheckRequest>,
    /// Gc requests, in order.
    pub gcs: Vec<pb::GcRequest>,
    /// Number of Status requests.
    pub statuses: usize,
}

#[derive(Debug, Default)]
struct Registry {
    recorded: Recorded,
    /// Live endpoints: (network, attachment, host ifindex, endpoint id).
    live: Vec<(String, pb::Attachment, u32, u64)>,
    next_id: u64,
    ready: bool,
}

#[derive(Debug, Clone)]
struct Service(Arc<Mutex<Registry>>);

impl Service {
    fn lock(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[tonic::async_trait]
impl EndpointRegistry for Service {
    async fn add(
        &self,
        request: tonic::Request<pb::AddRequest>,
    ) -> Result<tonic::Response<pb::AddResponse>, tonic::Status> {
        let req = request.into_inner();
        let mut reg = self.lock();
        reg.recorded.adds.push(req.clone());
        let att = req
            .attachment
            .ok_or_else(|| tonic::Status::invalid_argument("attachment missing"))?;
        let host = req
            .host_interface
            .ok_or_else(|| tonic::Status::invalid_argument("host_interface missing"))?;
        reg.next_id += 1;
        let id = reg.next_id;
        reg.live.push((req.network, att, host.ifindex, id));
        Ok(tonic::Response::new(pb::AddResponse {
            endpoint_id: id,
            identity: 0,
            state: pb::EndpointState::InitDeny as i32,
        }))
    }

    async fn del(
        &self,
        request: tonic::Request<pb::DelRequest>,
    ) -> Result<tonic::Response<pb::DelResponse>, tonic::Status> {
        let req = request.into_inner();
        let mut reg = self.lock();
        reg.recorded.dels.push(req.clone());
        let before = reg.live.len();
        reg.live.retain(|(net, att, _, _)| {
            !(*net == req.network && Some(att) == req.attachment.as_ref())
        });
        Ok(tonic::Response::new(pb::DelResponse {
            found: reg.live.len() != before,
        }))
    }

    async fn check(
        &self,
        request: tonic::Request<pb::CheckRequest>,
    ) -> Result<tonic::Response<pb::CheckResponse>, tonic::Status> {
        let req = request.into_inner();
        let mut reg = self.lock();
        reg.recorded.checks.push(req.clone());
        let ifindex = req.host_interface.as_ref().map(|h| h.ifindex);
        let found = reg
            .live
            .iter()
            .find(|(net, att, _, _)| *net == req.network && Some(att) == req.attachment.as_ref());
        let (ok, reason) = match found {
            None => (false, "no such endpoint".to_string()),
            Some((_, _, idx, _)) if Some(*idx) != ifindex => (
                false,
                format!("endpoint is on ifindex {idx}, not {ifindex:?}"),
            ),
            Some(_) => (true, String::new()),
        };
        Ok(tonic::Response::new(pb::CheckResponse { ok, reason }))
    }

    async fn gc(
        &self,
        request: tonic::Request<pb::GcRequest>,
    ) -> Result<tonic::Response<pb::GcResponse>, tonic::Status> {
        let req = request.into_inner();
        let mut reg = self.lock();
        reg.recorded.gcs.push(req.clone());
        let mut removed = Vec::new();
        reg.live.retain(|(net, att, _, _)| {
            let keep = *net != req.network || req.valid_attachments.contains(att);
            if !keep {
                removed.push(att.clone());
            }
            keep
        });
        Ok(tonic::Response::new(pb::GcResponse { removed }))
    }

    async fn status(
        &self,
        _: tonic::Request<pb::StatusRequest>,
    ) -> Result<tonic::Response<pb::StatusResponse>, tonic::Status> {
        let mut reg = self.lock();
        reg.recorded.statuses += 1;
        let ready = reg.ready;
        Ok(tonic::Response::new(pb::StatusResponse {
            ready,
            message: if ready {
                "ready"
            } else {
                "datapath not loaded"
            }
            .into(),
        }))
    }
}

/// The agent test double, serving on a unix socket until dropped.
#[derive(Debug)]
pub struct AgentDouble {
    /// The socket path.
    pub socket: PathBuf,
    service: Service,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl AgentDouble {
    /// Starts serving on `socket` (replacing a stale socket file); returns once it listens.
    pub fn start(socket: &Path) -> Self {
        let _ = std::fs::remove_file(socket);
        let service = Service(Arc::new(Mutex::new(Registry {
            ready: true,
            ..Registry::default()
        })));
        let (shutdown, stop) = oneshot::channel::<()>();
        let (bound_tx, bound_rx) = mpsc::channel();
        let path = socket.to_path_buf();
        let svc = service.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("test runtime");
            rt.block_on(async move {
                let listener = match tokio::net::UnixListener::bind(&path) {
                    Ok(l) => l,
                    Err(e) => {
                        let _ = bound_tx.send(Err(e.to_string()));
                        return;
                    }
                };
                let _ = bound_tx.send(Ok(()));
                let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
                let _ = tonic::transport::Server::builder()
                    .add_service(EndpointRegistryServer::new(svc))
                    .serve_with_incoming_shutdown(incoming, async {
                        let _ = stop.await;
                    })
                    .await;
            });
        });
        match bound_rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(())) => {}
            other => panic!("agent double did not bind {}: {other:?}", socket.display()),
        }
        AgentDouble {
            socket: socket.to_path_buf(),
            service,
            shutdown: Some(shutdown),
            thread: Some(thread),
        }
    }

    /// A copy of everything recorded so far.
    pub fn recorded(&self) -> Recorded {
        self.service.lock().recorded.clone()
    }

    /// Makes Status answer `ready`.
    pub fn set_ready(&self, ready: bool) {
        self.service.lock().ready = ready;
    }
}

impl Drop for AgentDouble {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.socket);
    }
}
