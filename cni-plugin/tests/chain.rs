//! septum-cni in a real CNI chain, run the way libcni runs one: Debian's `bridge` plugin (with
//! `host-local` IPAM) first, its result injected as `prevResult` into septum-cni's configuration,
//! DEL in reverse order, and the repeated DELs without netns or prevResult that containerd sends.
//!
//! Everything happens inside private network namespaces: a "node" namespace in which the plugins
//! run (standing in for the host, so the machine's own network is never touched) and a pod
//! namespace, both removed on drop, also when a test fails. IPAM state lives in a temporary
//! `dataDir`. The agent is [`common::AgentDouble`], a test double: the real agent does not exist
//! yet. Needs root (netns, veth) and Debian's containernetworking-plugins in /usr/lib/cni.

mod common;

use std::path::{Path, PathBuf};

use common::{AgentDouble, NetNs, PLUGIN, Run, exec, unique_tag};
use serde_json::{Value, json};

const CNI_PATH: &str = "/usr/lib/cni";
const NETWORK: &str = "septum-chain";

/// One pod attached to a bridge network in its own node namespace.
struct Chain {
    tag: String,
    bridge: String,
    container_id: String,
    /// Dropped before the node: its veth end goes with it.
    pod: NetNs,
    node: NetNs,
    socket: PathBuf,
    queue: PathBuf,
    ipam_dir: PathBuf,
    /// Dropped last: the socket, queue and IPAM state live here.
    _dir: tempfile::TempDir,
}

impl Chain {
    fn new() -> Self {
        assert!(
            // /proc/self belongs to the effective user.
            std::os::unix::fs::MetadataExt::uid(
                &std::fs::metadata("/proc/self").expect("stat /proc/self")
            ) == 0,
            "the CNI chain tests need root (network namespaces, veth pairs)"
        );
        assert!(
            Path::new(CNI_PATH).join("bridge").exists(),
            "{CNI_PATH}/bridge is missing: install Debian's containernetworking-plugins"
        );
        let tag = unique_tag();
        let node = NetNs::new(&format!("scn-{tag}"));
        let pod = NetNs::new(&format!("scp-{tag}"));
        let dir = tempfile::tempdir().expect("tempdir");
        Chain {
            bridge: format!("scb{tag}"),
            container_id: format!("ctr{tag}"),
            socket: dir.path().join("agent.sock"),
            queue: dir.path().join("del-queue"),
            ipam_dir: dir.path().join("ipam"),
            tag,
            pod,
            node,
            _dir: dir,
        }
    }

    fn bridge_conf(&self, prev_result: Option<&Value>) -> Value {
        let mut conf = json!({
            "cniVersion": "1.0.0",
            "name": NETWORK,
            "type": "bridge",
            "bridge": self.bridge,
            "isGateway": true,
            "ipMasq": false,
            "ipam": {
                "type": "host-local",
                "ranges": [[{"subnet": "10.251.7.0/24"}], [{"subnet": "fd00:251:7::/64"}]],
                "dataDir": self.ipam_dir,
            },
        });
        if let Some(prev) = prev_result {
            conf["prevResult"] = prev.clone();
        }
        conf
    }

    /// septum-cni's configuration with libcni's insertions (`cniVersion`, `name`, `prevResult`).
    fn septum_conf(&self, version: &str, prev_result: Option<&Value>) -> Value {
        let mut conf = json!({
            "cniVersion": version,
            "name": NETWORK,
            "type": "septum-cni",
            "agentSocket": self.socket,
            "delQueueDir": self.queue,
            "addTimeout": "5s",
            "agentTimeout": "2s",
        });
        if let Some(prev) = prev_result {
            conf["prevResult"] = prev.clone();
        }
        conf
    }

    fn args(&self) -> String {
        format!(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-{0};K8S_POD_INFRA_CONTAINER_ID={1};K8S_POD_UID=uid-{0}",
            self.tag, self.container_id
        )
    }

    /// Runs a plugin in the node namespace as the runtime would, for this pod.
    fn invoke(&self, program: &str, command: &str, netns: &str, conf: &Value) -> Run {
        let stdin = serde_json::to_vec(conf).expect("encode config");
        self.invoke_raw(program, command, netns, &stdin)
    }

    /// [`Chain::invoke`] with the configuration as bytes.
    fn invoke_raw(&self, program: &str, command: &str, netns: &str, stdin: &[u8]) -> Run {
        let args = self.args();
        let env = [
            ("CNI_COMMAND", command),
            ("CNI_CONTAINERID", self.container_id.as_str()),
            ("CNI_NETNS", netns),
            ("CNI_IFNAME", "eth0"),
            ("CNI_ARGS", args.as_str()),
            ("CNI_PATH", CNI_PATH),
        ];
        exec(Some(&self.node.name), program, &env, stdin)
    }

    fn bridge(&self, command: &str, netns: &str, prev: Option<&Value>) -> Run {
        let program = format!("{CNI_PATH}/bridge");
        self.invoke(&program, command, netns, &self.bridge_conf(prev))
    }

    fn septum(&self, command: &str, netns: &str, conf: &Value) -> Run {
        self.invoke(PLUGIN, command, netns, conf)
    }

    /// `ip -j -n NS link show dev NAME` as JSON; `None` when the link does not exist.
    fn link(&self, ns: &NetNs, name: &str) -> Option<Value> {
        let out = std::process::Command::new("ip")
            .args(["-j", "-n", &ns.name, "link", "show", "dev", name])
            .output()
            .expect("run ip");
        if !out.status.success() {
            return None;
        }
        let v: Value = serde_json::from_slice(&out.stdout).expect("ip -j output");
        v.get(0).cloned()
    }

    fn queued_files(&self) -> Vec<String> {
        match std::fs::read_dir(&self.queue) {
            Err(_) => Vec::new(),
            Ok(entries) => entries
                .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
                .filter(|n| !n.starts_with('.'))
                .collect(),
        }
    }
}

/// The parts of the bridge result an independent reader would take: host veth name, container
/// MAC, and the pod's addresses without prefix.
fn expected_from_result(result: &Value, bridge: &str) -> (String, String, Vec<String>) {
    let ifaces = result["interfaces"].as_array().expect("interfaces");
    let host = ifaces
        .iter()
        .find(|i| i.get("sandbox").is_none() && i["name"] != bridge)
        .expect("a host veth in the bridge result");
    let container = ifaces
        .iter()
        .find(|i| i["name"] == "eth0")
        .expect("eth0 in the bridge result");
    let mut ips: Vec<String> = result["ips"]
        .as_array()
        .expect("ips")
        .iter()
        .map(|ip| {
            let a = ip["address"].as_str().expect("address");
            a.split('/').next().expect("address part").to_string()
        })
        .collect();
    ips.sort_by_key(|s| s.parse::<std::net::IpAddr>().expect("an IP"));
    (
        host["name"].as_str().expect("name").to_string(),
        container["mac"].as_str().expect("mac").to_string(),
        ips,
    )
}

#[test]
fn chained_after_bridge_add_check_gc_del() {
    let chain = Chain::new();
    let netns = chain.pod.path();

    let result = chain.bridge("ADD", &netns, None).ok().json();
    let (host_name, mac, ips) = expected_from_result(&result, &chain.bridge);
    let host_link = chain
        .link(&chain.node, &host_name)
        .expect("host veth exists");
    let host_ifindex = host_link["ifindex"].as_u64().expect("ifindex") as u32;
    let eth0 = chain.link(&chain.pod, "eth0").expect("eth0 exists");
    assert_eq!(
        eth0["link_index"].as_u64(),
        Some(u64::from(host_ifindex)),
        "the kernel pairs eth0 with {host_name}"
    );
    let add_conf = chain.septum_conf("1.0.0", Some(&result));

    // Fail closed: no agent, no pod.
    let run = chain.septum("ADD", &netns, &add_conf);
    let msg = run.error(11);
    assert!(msg.contains("agent"), "{msg}");

    let agent = AgentDouble::start(&chain.socket);
    let run = chain.septum("ADD", &netns, &add_conf).ok();
    // prevResult passes through: the same JSON, byte for byte as it was given.
    assert_eq!(
        run.stdout.trim_end(),
        serde_json::to_string(&result).unwrap()
    );
    assert_eq!(run.json(), result);

    let rec = agent.recorded();
    assert_eq!(rec.adds.len(), 1, "{rec:?}");
    let add = &rec.adds[0];
    let att = add.attachment.as_ref().expect("attachment");
    assert_eq!(att.container_id, chain.container_id);
    assert_eq!(att.ifname, "eth0");
    assert_eq!(add.network, NETWORK);
    assert_eq!(add.netns, netns);
    let pod = add.pod.as_ref().expect("pod");
    assert_eq!(pod.namespace, "shop");
    assert_eq!(pod.name, format!("web-{}", chain.tag));
    assert_eq!(pod.uid, format!("uid-{}", chain.tag));
    let host = add.host_interface.as_ref().expect("host interface");
    assert_eq!(host.ifindex, host_ifindex);
    assert_eq!(host.name, host_name);
    let container = add
        .container_interface
        .as_ref()
        .expect("container interface");
    assert_eq!(container.ifindex, eth0["ifindex"].as_u64().unwrap() as u32);
    assert_eq!(
        septum_cni::prev_result::format_mac(&container.mac),
        mac.to_lowercase()
    );
    assert_eq!(add.ips, ips);
    assert_eq!(ips.len(), 2, "one IPv4 and one IPv6 address");
    assert_eq!(add.timeout_ms, 5000);

    // Byte for byte: odd spacing, key order and keys septum-cni has never heard of survive.
    let bridge_text = serde_json::to_string(&result).unwrap();
    let odd = format!(
        "{{ \"zz-vendor\" : {{\"b\":[1, 2.50,null],\"a\":\"\\u00e9\"}},{}",
        &bridge_text[1..]
    );
    let mut conf_text = serde_json::to_string(&chain.septum_conf("1.0.0", None)).unwrap();
    conf_text.pop();
    conf_text.push_str(&format!(",\"prevResult\":{odd}}}"));
    let run = chain
        .invoke_raw(PLUGIN, "ADD", &netns, conf_text.as_bytes())
        .ok();
    assert_eq!(run.stdout.trim_end(), odd);
    assert_eq!(agent.recorded().adds.len(), 2);

    // prevResult that disagrees with the kernel is refused before the agent hears of it.
    let mut wrong_host = result.clone();
    for i in wrong_host["interfaces"].as_array_mut().unwrap() {
        if i["name"] == host_name.as_str() {
            i["name"] = json!("vethbogus");
        }
    }
    let msg = chain
        .septum(
            "ADD",
            &netns,
            &chain.septum_conf("1.0.0", Some(&wrong_host)),
        )
        .error(101);
    assert!(msg.contains(&host_name), "{msg}");
    let mut wrong_sandbox = result.clone();
    for i in wrong_sandbox["interfaces"].as_array_mut().unwrap() {
        if i["name"] == "eth0" {
            i["sandbox"] = json!("/run/netns/elsewhere");
        }
    }
    chain
        .septum(
            "ADD",
            &netns,
            &chain.septum_conf("1.0.0", Some(&wrong_sandbox)),
        )
        .error(101);
    // The plugin's own namespace is never a pod's.
    let msg = chain.septum("ADD", &chain.node.path(), &add_conf).error(4);
    assert!(msg.contains("own network namespace"), "{msg}");
    assert_eq!(
        agent.recorded().adds.len(),
        2,
        "only the two good ADDs reached the agent"
    );

    // CHECK with the cached result: the agent compares the same host veth.
    chain.septum("CHECK", &netns, &add_conf).ok();
    let check = agent.recorded().checks[0].clone();
    assert_eq!(check.host_interface.map(|h| h.ifindex), Some(host_ifindex));
    assert_eq!(check.ips, ips);

    // GC (spec 1.1.0): our attachment is valid and stays; listing nothing removes it.
    let valid = json!([{"containerID": chain.container_id, "ifname": "eth0"}]);
    let mut gc = chain.septum_conf("1.1.0", None);
    gc["cni.dev/valid-attachments"] = valid;
    chain.septum("GC", "", &gc).ok();
    chain.septum("CHECK", &netns, &add_conf).ok();
    gc["cni.dev/valid-attachments"] = json!([]);
    chain.septum("GC", "", &gc).ok();
    let rec = agent.recorded();
    assert_eq!(rec.gcs.len(), 2);
    assert_eq!(rec.gcs[0].network, NETWORK);
    assert_eq!(rec.gcs[0].valid_attachments.len(), 1);
    let msg = chain.septum("CHECK", &netns, &add_conf).error(103);
    assert!(msg.contains("no such endpoint"), "{msg}");
    chain.septum("ADD", &netns, &add_conf).ok();

    // STATUS follows the agent's readiness.
    let status = chain.septum_conf("1.1.0", None);
    chain.septum("STATUS", "", &status).ok();
    agent.set_ready(false);
    let msg = chain.septum("STATUS", "", &status).error(50);
    assert!(msg.contains("datapath not loaded"), "{msg}");
    agent.set_ready(true);

    // DEL in reverse order: septum-cni, then bridge; both with the cached result.
    chain.septum("DEL", &netns, &add_conf).ok();
    chain.bridge("DEL", &netns, Some(&result)).ok();
    let rec = agent.recorded();
    let del = rec.dels.last().expect("a Del");
    assert_eq!(
        del.attachment.as_ref().map(|a| a.container_id.as_str()),
        Some(chain.container_id.as_str())
    );
    assert_eq!(del.netns, netns);
    assert_eq!(del.queued_at_unix_ms, 0);
    assert_eq!(del.pod.as_ref().map(|p| p.namespace.as_str()), Some("shop"));
    assert!(
        chain.link(&chain.node, &host_name).is_none(),
        "bridge DEL removed the veth"
    );
    let reservations: Vec<_> = std::fs::read_dir(chain.ipam_dir.join(NETWORK))
        .map(|d| {
            d.map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
                .filter(|n| n.contains('.') || n.contains(':'))
                .filter(|n| !n.starts_with("last_reserved_ip") && n != "lock")
                .collect()
        })
        .unwrap_or_default();
    assert!(
        reservations.is_empty(),
        "IPAM released everything: {reservations:?}"
    );

    // containerd's later DELs: no netns, no prevResult. Both plugins must succeed.
    for _ in 0..2 {
        chain
            .septum("DEL", "", &chain.septum_conf("1.0.0", None))
            .ok();
        chain.bridge("DEL", "", None).ok();
    }
    let rec = agent.recorded();
    assert_eq!(rec.dels.len(), 3);
    assert!(rec.dels[1..].iter().all(|d| d.netns.is_empty()));
    assert!(
        chain.queued_files().is_empty(),
        "{:?}",
        chain.queued_files()
    );
}

#[test]
fn del_while_the_agent_is_down_is_queued_and_replayed() {
    let chain = Chain::new();
    let netns = chain.pod.path();
    let result = chain.bridge("ADD", &netns, None).ok().json();
    let conf = chain.septum_conf("1.0.0", Some(&result));
    {
        let agent = AgentDouble::start(&chain.socket);
        chain.septum("ADD", &netns, &conf).ok();
        assert_eq!(agent.recorded().adds.len(), 1);
    } // the agent goes down

    // DEL succeeds without the agent, and the pod can be torn down.
    let run = chain.septum("DEL", &netns, &conf).ok();
    assert!(run.stderr.contains("queued"), "{run:?}");
    chain.bridge("DEL", &netns, Some(&result)).ok();
    let files = chain.queued_files();
    assert_eq!(
        files,
        vec![format!("{NETWORK}@{}@eth0.json", chain.container_id)]
    );

    // The next invocation that reaches the agent replays the queue first, then empties it.
    let agent = AgentDouble::start(&chain.socket);
    chain
        .septum("STATUS", "", &chain.septum_conf("1.1.0", None))
        .ok();
    let rec = agent.recorded();
    assert_eq!(rec.dels.len(), 1, "{rec:?}");
    let replayed = &rec.dels[0];
    assert_eq!(
        replayed
            .attachment
            .as_ref()
            .map(|a| a.container_id.as_str()),
        Some(chain.container_id.as_str())
    );
    assert_eq!(replayed.network, NETWORK);
    assert_eq!(replayed.netns, netns);
    assert_eq!(
        replayed.pod.as_ref().map(|p| p.name.clone()),
        Some(format!("web-{}", chain.tag))
    );
    assert!(replayed.queued_at_unix_ms > 0, "marked as replayed");
    assert_eq!(rec.statuses, 1);
    assert!(
        chain.queued_files().is_empty(),
        "{:?}",
        chain.queued_files()
    );

    // Nothing is replayed twice.
    chain
        .septum("STATUS", "", &chain.septum_conf("1.1.0", None))
        .ok();
    assert_eq!(agent.recorded().dels.len(), 1);
}
