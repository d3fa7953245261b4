//! The agent against the real datapath, as root: each test runs in a private network namespace
//! with a real veth pair, its own pin root under /sys/fs/bpf and a temporary state directory
//! and datastore. Add/Del/Check/Gc as the CNI plugin calls them, init-deny until the pod's
//! policy is known, and a restart that loses nothing and writes nothing.

use std::path::{Path, PathBuf};

use septum_agent::reconcile::MapContents;
use septum_agent::{Agent, AgentConfig};
use septum_datapath::{AttachMode, ifindex_of};
use septum_proto::agent::v1 as pb;
use septum_tests::netns::NetNs;

const POD: &str = "apiVersion: v1\nkind: Pod\nmetadata: {name: web, namespace: shop, labels: {app: web}}\nspec:\n  containers: [{name: c, image: x, ports: [{name: http, containerPort: 80}]}]\n";
const NS: &str = "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n";
const DENY: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny, namespace: shop}\nspec:\n  podSelector: {}\n  policyTypes: [Ingress]\n";

/// A test world: namespace with veth pairs, pin root, state dir, datastore. Cleans up on drop.
struct World {
    ns: NetNs,
    pins: PathBuf,
    dir: tempfile::TempDir,
}

impl World {
    fn new(tag: &str, veths: usize) -> Self {
        let name = format!("sat-{tag}-{}", std::process::id() % 100_000);
        let ns = NetNs::new(&name).expect("creating a network namespace");
        for i in 0..veths {
            ns.ip(&[
                "link",
                "add",
                &format!("hv{i}"),
                "type",
                "veth",
                "peer",
                "name",
                &format!("pv{i}"),
            ])
            .expect("creating a veth pair");
            ns.ip(&["link", "set", &format!("hv{i}"), "up"]).unwrap();
        }
        let w = Self {
            ns,
            pins: PathBuf::from(format!("/sys/fs/bpf/{name}")),
            dir: tempfile::tempdir().unwrap(),
        };
        std::fs::create_dir_all(w.datastore()).unwrap();
        w
    }

    fn datastore(&self) -> PathBuf {
        self.dir.path().join("datastore")
    }

    fn write(&self, file: &str, text: &str) {
        std::fs::write(self.datastore().join(file), text).unwrap();
    }

    fn config(&self) -> AgentConfig {
        AgentConfig {
            manifests: vec![self.datastore()],
            controller: None,
            controller_ca: None,
            controller_tls_cert: None,
            controller_tls_key: None,
            controller_server_name: None,
            node_name: "node-1".into(),
            state_dir: self.dir.path().join("state"),
            socket: self.dir.path().join("agent.sock"),
            pin_root: self.pins.clone(),
            attach_mode: AttachMode::detect(),
            health_addr: String::new(),
            migrate: false,
            flow_store: None,
            flow_retention: "24h".into(),
            flow_store_max_bytes: 1 << 30,
            flow_jsonl: None,
            flow_jsonl_max_bytes: 100 << 20,
            flow_jsonl_keep: 5,
            flow_otlp: None,
            flows_addr: None,
            flows_tls_cert: None,
            flows_tls_key: None,
            flows_tls_client_ca: None,
            flows_advertise: None,
            cni_conf_dir: None,
            cni_bin_dir: "/opt/cni/bin".into(),
            cni_plugin_binary: None,
        }
    }

    /// Runs `f` with a fresh agent inside the namespace.
    fn with_agent<R: Send>(&self, f: impl FnOnce(&mut Agent) -> R + Send) -> R {
        let cfg = self.config();
        self.ns.run(move || {
            let mut agent = Agent::start(cfg).expect("starting the agent");
            f(&mut agent)
        })
    }
}

impl Drop for World {
    fn drop(&mut self) {
        let _ = septum_datapath::remove_pins(&self.pins);
        let _ = std::fs::remove_dir_all(&self.pins);
    }
}

fn add_request(container: &str, host: &str, pod: Option<(&str, &str)>, ip: &str) -> pb::AddRequest {
    pb::AddRequest {
        attachment: Some(pb::Attachment {
            container_id: container.into(),
            ifname: "eth0".into(),
        }),
        network: "net".into(),
        netns: "/run/netns/x".into(),
        pod: pod.map(|(ns, name)| pb::PodRef {
            namespace: ns.into(),
            name: name.into(),
            uid: String::new(),
        }),
        host_interface: Some(pb::HostInterface {
            ifindex: ifindex_of(host).expect("host veth"),
            name: host.into(),
        }),
        container_interface: Some(pb::ContainerInterface {
            ifindex: 2,
            mac: vec![],
        }),
        ips: vec![ip.into()],
        timeout_ms: 5000,
    }
}

fn check_request(container: &str, ip: &str) -> pb::CheckRequest {
    pb::CheckRequest {
        attachment: Some(pb::Attachment {
            container_id: container.into(),
            ifname: "eth0".into(),
        }),
        network: "net".into(),
        host_interface: None,
        ips: vec![ip.into()],
    }
}

fn del_request(container: &str) -> pb::DelRequest {
    pb::DelRequest {
        attachment: Some(pb::Attachment {
            container_id: container.into(),
            ifname: "eth0".into(),
        }),
        network: "net".into(),
        ..Default::default()
    }
}

fn link_pins(pins: &Path) -> usize {
    std::fs::read_dir(pins.join("v1/links"))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[test]
fn add_attaches_in_init_deny_until_the_pod_is_known_then_ready() {
    let w = World::new("add", 2);
    w.write("ns.yaml", NS);
    w.write("pod.yaml", POD);
    let pins = w.pins.clone();
    w.with_agent(|a| {
        // A pod the datastore knows: ready at once, with an identity.
        let r = a
            .add(add_request("c1", "hv0", Some(("shop", "web")), "10.9.0.2"))
            .unwrap();
        assert_eq!(r.state, pb::EndpointState::Ready as i32, "{r:?}");
        assert_ne!(r.identity, 0);
        // Same attachment again: the same endpoint.
        let again = a
            .add(add_request("c1", "hv0", Some(("shop", "web")), "10.9.0.2"))
            .unwrap();
        assert_eq!(again.endpoint_id, r.endpoint_id);
        // A pod the datastore does not know: attached, init-deny.
        let ghost = a
            .add(add_request(
                "c2",
                "hv1",
                Some(("shop", "ghost")),
                "10.9.0.3",
            ))
            .unwrap();
        assert_eq!(ghost.state, pb::EndpointState::InitDeny as i32);
        assert_ne!(ghost.endpoint_id, r.endpoint_id);
        assert!(link_pins(&pins) >= 2 || a.config().attach_mode == AttachMode::Netlink);

        let check = a.check(check_request("c1", "10.9.0.2")).unwrap();
        assert!(check.ok, "{check:?}");
        let bad = a.check(check_request("c1", "10.9.0.99")).unwrap();
        assert!(!bad.ok && bad.reason.contains("addresses"), "{bad:?}");

        // The wrong ifindex for a name is refused, and nothing is attached.
        let mut wrong = add_request("c3", "hv1", None, "10.9.0.4");
        wrong.host_interface.as_mut().unwrap().ifindex += 1000;
        let e = a.add(wrong).unwrap_err();
        assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
        // Hostile input gets a clear error.
        let mut junk = add_request("c4", "hv1", None, "not-an-ip");
        junk.attachment = None;
        assert_eq!(
            a.add(junk).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );

        let st = a.status();
        assert_eq!(st.endpoints.len(), 2);
        assert!(st.synced);
    });
}

#[test]
fn del_is_idempotent_and_a_stale_queued_del_is_ignored() {
    let w = World::new("del", 1);
    w.write("pod.yaml", POD);
    w.with_agent(|a| {
        a.add(add_request("c1", "hv0", Some(("shop", "web")), "10.9.0.2"))
            .unwrap();
        let ifindex = ifindex_of("hv0").unwrap();
        // A DEL queued before this registration (its predecessor's) removes nothing.
        let mut stale = del_request("c1");
        stale.queued_at_unix_ms = 1;
        assert!(!a.del(stale).unwrap().found);
        assert!(a.del(del_request("c1")).unwrap().found);
        assert!(
            !a.del(del_request("c1")).unwrap().found,
            "a second DEL is not an error"
        );
        assert!(a.status().endpoints.is_empty());
        let maps = read_maps_of(a);
        assert!(
            !maps.endpoints.contains_key(&ifindex),
            "endpoint entry left behind"
        );
    });
    assert_eq!(link_pins(&w.pins), 0, "link pins left behind");
}

fn read_maps_of(a: &Agent) -> septum_agent::reconcile::MapContents {
    // The agent exposes its datapath read-only through the status; read the pinned maps by
    // loading a second handle on the same pins.
    let dp = septum_datapath::Datapath::load(&septum_datapath::DatapathOptions {
        pin_root: Some(a.config().pin_root.clone()),
        ..septum_datapath::DatapathOptions::default()
    })
    .expect("adopting the pins");
    MapContents::read(&dp).unwrap()
}

#[test]
fn gc_removes_what_is_not_valid() {
    let w = World::new("gc", 2);
    w.with_agent(|a| {
        a.add(add_request("keep", "hv0", None, "10.9.0.2")).unwrap();
        a.add(add_request("drop", "hv1", None, "10.9.0.3")).unwrap();
        let r = a
            .gc(pb::GcRequest {
                network: "net".into(),
                valid_attachments: vec![pb::Attachment {
                    container_id: "keep".into(),
                    ifname: "eth0".into(),
                }],
            })
            .unwrap();
        assert_eq!(r.removed.len(), 1);
        assert_eq!(r.removed[0].container_id, "drop");
        assert_eq!(a.status().endpoints.len(), 1);
    });
}

#[test]
fn a_restart_keeps_endpoints_and_numbers_and_rewrites_nothing() {
    let w = World::new("restart", 1);
    w.write("ns.yaml", NS);
    w.write("pod.yaml", POD);
    w.write("deny.yaml", DENY);
    let (first, before) = w.with_agent(|a| {
        let r = a
            .add(add_request("c1", "hv0", Some(("shop", "web")), "10.9.0.2"))
            .unwrap();
        (r, read_maps_of(a))
    });
    assert!(!before.policy.is_empty());
    // The agent is gone; the kernel still holds everything.
    let (second, after, report) = w.with_agent(|a| {
        let r = a
            .add(add_request("c1", "hv0", Some(("shop", "web")), "10.9.0.2"))
            .unwrap();
        (r, read_maps_of(a), a.status().last_sync)
    });
    assert_eq!(second.endpoint_id, first.endpoint_id);
    assert_eq!(
        second.identity, first.identity,
        "identity renumbered on restart"
    );
    assert_eq!(after, before, "the restart changed the maps");
    let report = report.expect("a sync report");
    assert_eq!(report.writes.deleted, 0, "{report:?}");

    // Restart with a broken datastore: nothing is pruned or rewritten.
    w.write("deny.yaml", &DENY.replace("Ingress", "Sideways"));
    w.write("pod.yaml", "kind: [");
    let kept = w.with_agent(|a| {
        let st = a.status();
        assert!(st.files.values().any(|f| !f.diagnostics.is_empty()));
        read_maps_of(a)
    });
    // Their last good versions, kept in the state directory, stay in force: nothing changed.
    assert_eq!(
        kept, before,
        "a typo made at restart time changed enforcement"
    );
}
