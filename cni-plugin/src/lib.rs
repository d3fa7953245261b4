//! septum-cni: septum's chained CNI plugin (CNI spec 1.0.0 and 1.1.0, and 0.3.0-0.4.0 for older
//! runtimes).
//!
//! It runs after the plugin that creates the pod's veth pair (Debian's `bridge`, `ptp`, ...) and
//! registers the pod with the node agent, which attaches septum's datapath to the host-side veth
//! before ADD returns: a pod is isolated from its first packet. The plugin itself stays thin: it
//! never loads BPF, holds no state except the DEL queue, and talks to the agent over the
//! `septum.agent.v1.EndpointRegistry` gRPC service on a unix socket.
//!
//! Modules, each owning one concern:
//! - [`env`](mod@env): the `CNI_*` environment; [`config`]: the network configuration on stdin;
//!   [`version`]: spec versions.
//! - [`prev_result`]: reading and cross-checking `prevResult`; [`link`]: finding the host veth
//!   through netlink inside and outside the pod's namespace.
//! - [`agent`]: the gRPC client; [`del_queue`]: DELs waiting for an unreachable agent.
//! - [`commands`]: ADD, DEL, CHECK, GC, STATUS; [`error`]: error codes and the error result.
//! - [`install`]: putting the binary and its entry in the node's network configuration (the
//!   agent's `install-cni` step), and taking them out again.
//!
//! [`run`] is the whole plugin as a function of its environment and stdin, so the binary is only
//! I/O around it.
//!
//! Installation: `septum-agent install-cni`, run as the agent's init step, copies this binary
//! into the CNI bin dir and appends `{"type": "septum-cni", "agentSocket": ...}` as the last
//! plugin of the configuration the runtime uses (the first `*.conflist`, `*.conf` or `*.json` in
//! byte order, as containerd's go-cni picks it; a single-plugin file is converted to a list and
//! kept as a backup). It changes nothing when the entry is already right, so it is safe on every
//! start, and every start is what puts the entry back after Flannel or Calico rewrite their list.
//! `septum-agent uninstall-cni` removes exactly septum's entry and binary. The rules, and why,
//! are in [`install`].

pub mod agent;
pub mod commands;
pub mod config;
pub mod del_queue;
pub mod env;
pub mod error;
pub mod install;
pub mod link;
pub mod prev_result;
pub mod version;

use std::{ffi::OsString, io::Read};

use serde::Serialize;

use crate::{
    config::MAX_CONFIG_BYTES,
    env::{Command, Invocation},
    error::{Error, ErrorResult},
    version::CniVersion,
};

/// What an invocation prints on stdout, and whether it succeeded (exit status 0).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The text for stdout (a result, an error result, or nothing).
    pub stdout: String,
    /// True for exit status 0.
    pub success: bool,
}

/// Reads stdin, but never more than one byte past [`MAX_CONFIG_BYTES`] (enough to tell that the
/// input is too large).
pub fn read_config(mut input: impl Read) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    input
        .by_ref()
        .take(MAX_CONFIG_BYTES as u64 + 1)
        .read_to_end(&mut buf)?;
    Ok(buf)
}

/// The VERSION result.
#[derive(Debug, Serialize)]
struct VersionResult {
    #[serde(rename = "cniVersion")]
    cni_version: &'static str,
    #[serde(rename = "supportedVersions")]
    supported_versions: Vec<&'static str>,
}

/// VERSION: never fails; answers in the input's version when it names one we support.
fn version_result(stdin: &[u8]) -> String {
    let result = VersionResult {
        cni_version: config::peek_version(stdin)
            .unwrap_or(CniVersion::LATEST)
            .as_str(),
        supported_versions: CniVersion::ALL.map(CniVersion::as_str).to_vec(),
    };
    serde_json::to_string(&result).unwrap_or_default()
}

/// Runs one invocation: `get_env` reads environment variables, `stdin` is what was read from
/// stdin (see [`read_config`]).
pub fn run(get_env: impl Fn(&str) -> Option<OsString>, stdin: std::io::Result<Vec<u8>>) -> Outcome {
    let version = stdin.as_deref().ok().and_then(config::peek_version);
    let fail = |err: Error| Outcome {
        stdout: ErrorResult::new(version, &err).to_json(),
        success: false,
    };
    let inv = match Invocation::from_env(get_env) {
        Ok(inv) => inv,
        Err(e) => return fail(e.into()),
    };
    let stdin = match stdin {
        Ok(s) => s,
        // VERSION reads no configuration; an unreadable stdin does not matter to it.
        Err(_) if inv.command == Command::Version => Vec::new(),
        Err(e) => return fail(Error::Stdin(e)),
    };
    if inv.command == Command::Version {
        return Outcome {
            stdout: version_result(&stdin),
            success: true,
        };
    }
    let conf = match config::parse(&stdin, inv.command) {
        Ok(c) => c,
        Err(e) => return fail(e.into()),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(Error::Internal(format!("cannot start the runtime: {e}"))),
    };
    match runtime.block_on(commands::dispatch(&inv, &conf)) {
        Ok(stdout) => Outcome {
            stdout: stdout.unwrap_or_default(),
            success: true,
        },
        Err(e) => fail(e),
    }
}
