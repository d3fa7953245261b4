//! A small libcni: running a network configuration list's plugins the way
//! containernetworking/cni's libcni does. Each plugin gets the list's `name` and `cniVersion`
//! and, from the second on, the previous plugin's result as `prevResult`; the final ADD result
//! is cached on disk (`results/<network>-<container>-<ifname>`); DEL runs the plugins in reverse
//! order with the cached result as `prevResult` (none when the cache is gone), then drops the
//! cache. Plugins run with exactly the `CNI_*` variables and `PATH`, inside a chosen network
//! namespace (the lab's node), with a deadline.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};

use crate::ns::NetNs;

/// How long one plugin may run.
const PLUGIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Errors of a plugin chain.
#[derive(Debug, thiserror::Error)]
pub enum CniError {
    /// The plugin answered with a CNI error result.
    #[error("plugin {plugin} {command}: error {code}: {msg}{}", if details.is_empty() { String::new() } else { format!(" ({details})") })]
    Plugin {
        /// Plugin type.
        plugin: String,
        /// CNI_COMMAND.
        command: &'static str,
        /// Error code.
        code: u64,
        /// Message.
        msg: String,
        /// Details.
        details: String,
    },
    /// It could not be run, timed out or printed no valid result.
    #[error("plugin {plugin} {command}: {message}")]
    Exec {
        /// Plugin type.
        plugin: String,
        /// CNI_COMMAND.
        command: &'static str,
        /// What went wrong.
        message: String,
    },
    /// The configuration list is not one.
    #[error("network configuration list: {0}")]
    Config(String),
}

/// The runtime's side of one attachment.
#[derive(Clone, Debug)]
pub struct RuntimeConf {
    /// CNI_CONTAINERID.
    pub container_id: String,
    /// CNI_NETNS.
    pub netns: PathBuf,
    /// CNI_IFNAME.
    pub ifname: String,
    /// CNI_ARGS pairs.
    pub args: Vec<(String, String)>,
}

/// Runs plugin chains.
#[derive(Clone, Debug)]
pub struct CniRunner {
    path: Vec<PathBuf>,
    cache: PathBuf,
    exec_in: Option<NetNs>,
}

impl CniRunner {
    /// Plugins from `path`, results cached under `cache`, executed inside `exec_in`.
    pub fn new(path: Vec<PathBuf>, cache: PathBuf, exec_in: Option<NetNs>) -> Self {
        Self {
            path,
            cache,
            exec_in,
        }
    }

    fn cache_file(&self, network: &str, rt: &RuntimeConf) -> PathBuf {
        self.cache
            .join("results")
            .join(format!("{network}-{}-{}", rt.container_id, rt.ifname))
    }

    /// ADD: the chain's final result.
    pub fn add(&self, list: &Value, rt: &RuntimeConf) -> Result<Value, CniError> {
        self.add_timed(list, rt).map(|(v, _)| v)
    }

    /// ADD, with how long each plugin took (for benchmarks).
    pub fn add_timed(
        &self,
        list: &Value,
        rt: &RuntimeConf,
    ) -> Result<(Value, Vec<(String, Duration)>), CniError> {
        let (name, version, plugins) = parse_list(list)?;
        let mut prev: Option<Value> = None;
        let mut times = Vec::new();
        for p in plugins {
            let conf = build_conf(p, name, version, prev.as_ref());
            let started = std::time::Instant::now();
            prev = Some(self.exec(&conf, "ADD", rt)?);
            times.push((
                conf["type"].as_str().unwrap_or("?").to_string(),
                started.elapsed(),
            ));
        }
        let result = prev.unwrap_or_else(|| json!({"cniVersion": version}));
        let file = self.cache_file(name, rt);
        let cached = json!({
            "kind": "cniCacheV1",
            "containerId": rt.container_id,
            "ifName": rt.ifname,
            "networkName": name,
            "config": list,
            "result": result,
        });
        let write = || -> std::io::Result<()> {
            std::fs::create_dir_all(file.parent().unwrap_or(Path::new("/")))?;
            std::fs::write(
                &file,
                serde_json::to_vec(&cached).map_err(std::io::Error::other)?,
            )
        };
        write().map_err(|e| CniError::Exec {
            plugin: "libcni".into(),
            command: "ADD",
            message: format!("caching the result in {}: {e}", file.display()),
        })?;
        Ok((result, times))
    }

    /// DEL: every plugin in reverse order, with the cached result when there is one.
    pub fn del(&self, list: &Value, rt: &RuntimeConf) -> Result<(), CniError> {
        let (name, version, plugins) = parse_list(list)?;
        let file = self.cache_file(name, rt);
        let cached: Option<Value> = std::fs::read(&file)
            .ok()
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            .map(|v| v["result"].clone())
            .filter(|r| !r.is_null());
        for p in plugins.iter().rev() {
            let conf = build_conf(p, name, version, cached.as_ref());
            self.exec(&conf, "DEL", rt)?;
        }
        let _ = std::fs::remove_file(&file);
        Ok(())
    }

    fn exec(
        &self,
        conf: &Value,
        command: &'static str,
        rt: &RuntimeConf,
    ) -> Result<Value, CniError> {
        let plugin = conf["type"].as_str().unwrap_or_default().to_string();
        let exec_err = |message: String| CniError::Exec {
            plugin: plugin.clone(),
            command,
            message,
        };
        let bin = self
            .path
            .iter()
            .map(|d| d.join(&plugin))
            .find(|p| p.is_file())
            .ok_or_else(|| exec_err(format!("not found in {:?}", self.path)))?;
        let mut cmd = match &self.exec_in {
            Some(ns) => ns.command(&bin),
            None => std::process::Command::new(&bin),
        };
        let cni_path = std::env::join_paths(&self.path).unwrap_or_default();
        let args: Vec<String> = rt.args.iter().map(|(k, v)| format!("{k}={v}")).collect();
        cmd.env_clear()
            .env(
                "PATH",
                std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into()),
            )
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", &rt.container_id)
            .env("CNI_NETNS", &rt.netns)
            .env("CNI_IFNAME", &rt.ifname)
            .env("CNI_ARGS", args.join(";"))
            .env("CNI_PATH", cni_path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .map_err(|e| exec_err(format!("cannot run {}: {e}", bin.display())))?;
        if let Some(mut stdin) = child.stdin.take() {
            let _ = stdin.write_all(conf.to_string().as_bytes());
        }
        let pid = child.id();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(child.wait_with_output());
        });
        let out = match rx.recv_timeout(PLUGIN_TIMEOUT) {
            Ok(r) => r.map_err(|e| exec_err(e.to_string()))?,
            Err(_) => {
                // SAFETY: kill(2) on the plugin we started.
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
                return Err(exec_err(format!("no answer within {PLUGIN_TIMEOUT:?}")));
            }
        };
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            let v: Value = serde_json::from_str(&stdout).unwrap_or(Value::Null);
            if let Some(code) = v["code"].as_u64() {
                return Err(CniError::Plugin {
                    plugin,
                    command,
                    code,
                    msg: v["msg"].as_str().unwrap_or_default().to_string(),
                    details: v["details"].as_str().unwrap_or_default().to_string(),
                });
            }
            return Err(exec_err(format!(
                "failed ({}) without an error result: {stdout} {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        if command != "ADD" {
            return Ok(Value::Null);
        }
        serde_json::from_str(&stdout)
            .map_err(|e| exec_err(format!("result is not JSON ({e}): {stdout}")))
    }
}

fn parse_list(list: &Value) -> Result<(&str, &str, &Vec<Value>), CniError> {
    let name = list["name"]
        .as_str()
        .ok_or_else(|| CniError::Config("no name".into()))?;
    let version = list["cniVersion"]
        .as_str()
        .ok_or_else(|| CniError::Config("no cniVersion".into()))?;
    let plugins = list["plugins"]
        .as_array()
        .ok_or_else(|| CniError::Config("no plugins".into()))?;
    Ok((name, version, plugins))
}

/// libcni's buildOneConfig: the plugin's own config plus name, cniVersion and prevResult.
fn build_conf(plugin: &Value, name: &str, version: &str, prev: Option<&Value>) -> Value {
    let mut c = plugin.clone();
    c["name"] = json!(name);
    c["cniVersion"] = json!(version);
    if let Some(p) = prev {
        c["prevResult"] = p.clone();
    }
    c
}

/// The lab's network: Debian's bridge (gateway on the bridge, hairpin for Service traffic back
/// to the same pod) with host-local addresses from `subnet`, then `chained` plugins.
pub fn lab_conflist(
    network: &str,
    bridge: &str,
    subnet: &str,
    ipam_dir: &Path,
    chained: Vec<Value>,
) -> Value {
    let mut plugins = vec![json!({
        "type": "bridge",
        "bridge": bridge,
        "isGateway": true,
        "ipMasq": false,
        "hairpinMode": true,
        "ipam": {
            "type": "host-local",
            "ranges": [[{"subnet": subnet}]],
            "routes": [{"dst": "0.0.0.0/0"}],
            "dataDir": ipam_dir,
        },
    })];
    plugins.extend(chained);
    json!({"cniVersion": "1.0.0", "name": network, "plugins": plugins})
}
