//! Network-namespace topologies for tests and the demo: a "node" namespace standing in for the
//! host (routing between pods, nftables DNAT for Services) and pod namespaces wired to it with
//! veth pairs. Everything is created under unique names and removed on drop, also when a test
//! panics, so the machine's own network is never touched.

use std::{
    fs::File,
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    process::{Command, Output},
    sync::atomic::{AtomicU32, Ordering},
};

use nix::sched::{CloneFlags, setns};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A unique short tag for names (interface names are limited to 15 bytes).
pub fn unique_tag() -> String {
    format!(
        "{:x}{:x}",
        std::process::id() % 0xffff,
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

fn run(cmd: &mut Command) -> io::Result<Output> {
    let out = cmd.output()?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "{:?} failed: {}",
            cmd,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(out)
}

/// Runs `ip ARGS...`.
pub fn ip(args: &[&str]) -> io::Result<Output> {
    run(Command::new("ip").args(args))
}

/// A named network namespace, deleted on drop.
#[derive(Debug)]
pub struct NetNs {
    pub name: String,
}

impl NetNs {
    pub fn new(name: &str) -> io::Result<Self> {
        ip(&["netns", "add", name])?;
        let ns = Self {
            name: name.to_string(),
        };
        ns.ip(&["link", "set", "lo", "up"])?;
        // No duplicate address detection: addresses (link-local ones too) are usable at once,
        // instead of a second or more of IPv6 silence after every link comes up.
        ns.exec(
            "sysctl",
            &[
                "-qw",
                "net.ipv6.conf.all.accept_dad=0",
                "net.ipv6.conf.default.accept_dad=0",
            ],
        )?;
        Ok(ns)
    }

    /// Runs `ip -n NAME ARGS...`.
    pub fn ip(&self, args: &[&str]) -> io::Result<Output> {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        ip(&full)
    }

    /// Adds a veth pair `name`/`peer` in the namespace, `name` at ifindex `ifindex` and up (the
    /// peer stays down): an interface BPF_PROG_TEST_RUN can name as a packet's ingress.
    pub fn add_veth(&self, name: &str, peer: &str, ifindex: u32) -> io::Result<()> {
        self.ip(&[
            "link",
            "add",
            name,
            "index",
            &ifindex.to_string(),
            "type",
            "veth",
            "peer",
            "name",
            peer,
        ])?;
        self.ip(&["link", "set", name, "up"])?;
        Ok(())
    }

    /// Runs a command inside the namespace.
    pub fn exec(&self, program: &str, args: &[&str]) -> io::Result<Output> {
        run(Command::new("ip")
            .args(["netns", "exec", &self.name, program])
            .args(args))
    }

    /// Runs `f` on a thread that has entered this namespace.
    pub fn run<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        let path = format!("/run/netns/{}", self.name);
        std::thread::scope(|s| {
            s.spawn(|| {
                let file = File::open(&path).unwrap_or_else(|e| panic!("cannot open {path}: {e}"));
                setns(&file, CloneFlags::CLONE_NEWNET)
                    .unwrap_or_else(|e| panic!("setns {path}: {e}"));
                f()
            })
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }

    /// Spawns a thread in this namespace that outlives the call.
    pub fn spawn<R: Send + 'static>(
        &self,
        f: impl FnOnce() -> R + Send + 'static,
    ) -> std::thread::JoinHandle<R> {
        let path = format!("/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let file = File::open(&path).unwrap_or_else(|e| panic!("cannot open {path}: {e}"));
            setns(&file, CloneFlags::CLONE_NEWNET).unwrap_or_else(|e| panic!("setns {path}: {e}"));
            f()
        })
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.name]);
    }
}

/// A pod: its namespace, addresses and the host-side veth in the node namespace.
#[derive(Debug)]
pub struct Pod {
    pub ns: NetNs,
    pub host_if: String,
    pub host_ifindex: u32,
    pub ip4: Ipv4Addr,
    pub ip6: Ipv6Addr,
    /// The node's address on this pod's link (the pod's gateway).
    pub gw4: Ipv4Addr,
    pub gw6: Ipv6Addr,
}

impl Pod {
    pub fn ip(&self, v6: bool) -> IpAddr {
        if v6 {
            IpAddr::V6(self.ip6)
        } else {
            IpAddr::V4(self.ip4)
        }
    }
}

/// A node namespace with pods.
#[derive(Debug)]
pub struct Topology {
    pub tag: String,
    pub pods: Vec<Pod>,
    /// Dropped last: deleting it removes the host-side veths.
    pub node: NetNs,
}

impl Topology {
    /// A node namespace and `n` pods, pod i at 10.200.i.2/24 and fd00:200:i::2/64.
    pub fn new(n: usize) -> io::Result<Self> {
        let tag = unique_tag();
        let node = NetNs::new(&format!("spn-{tag}"))?;
        node.exec("sysctl", &["-qw", "net.ipv4.ip_forward=1"])?;
        node.exec("sysctl", &["-qw", "net.ipv6.conf.all.forwarding=1"])?;
        let mut topo = Self {
            tag: tag.clone(),
            pods: Vec::new(),
            node,
        };
        for i in 0..n {
            let ns = NetNs::new(&format!("spp{i}-{tag}"))?;
            let host_if = format!("sph{i}");
            topo.node.ip(&[
                "link", "add", &host_if, "type", "veth", "peer", "name", "eth0", "netns", &ns.name,
            ])?;
            let (gw4, ip4) = (
                Ipv4Addr::new(10, 200, i as u8, 1),
                Ipv4Addr::new(10, 200, i as u8, 2),
            );
            let gw6: Ipv6Addr = format!("fd00:200:{i}::1")
                .parse()
                .map_err(io::Error::other)?;
            let ip6: Ipv6Addr = format!("fd00:200:{i}::2")
                .parse()
                .map_err(io::Error::other)?;
            topo.node
                .ip(&["addr", "add", &format!("{gw4}/24"), "dev", &host_if])?;
            topo.node.ip(&[
                "addr",
                "add",
                &format!("{gw6}/64"),
                "dev",
                &host_if,
                "nodad",
            ])?;
            topo.node.ip(&["link", "set", &host_if, "up"])?;
            ns.ip(&["addr", "add", &format!("{ip4}/24"), "dev", "eth0"])?;
            ns.ip(&["addr", "add", &format!("{ip6}/64"), "dev", "eth0", "nodad"])?;
            ns.ip(&["link", "set", "eth0", "up"])?;
            ns.ip(&["route", "add", "default", "via", &gw4.to_string()])?;
            ns.ip(&["-6", "route", "add", "default", "via", &gw6.to_string()])?;
            let host_ifindex = topo.node.run(|| septum_datapath::ifindex_of(&host_if))?;
            topo.pods.push(Pod {
                ns,
                host_if,
                host_ifindex,
                ip4,
                ip6,
                gw4,
                gw6,
            });
        }
        Ok(topo)
    }

    /// Re-describes a topology built by another process (node namespace name and pod namespace
    /// names, in order), for a second loader process. Dropping it deletes the namespaces, so
    /// callers that do not own them must `mem::forget` it.
    pub fn adopt(node: &str, pod_namespaces: Vec<String>) -> io::Result<Self> {
        let node = NetNs {
            name: node.to_string(),
        };
        let mut pods = Vec::new();
        for (i, name) in pod_namespaces.into_iter().enumerate() {
            let host_if = format!("sph{i}");
            let host_ifindex = node.run(|| septum_datapath::ifindex_of(&host_if))?;
            pods.push(Pod {
                ns: NetNs { name },
                host_if,
                host_ifindex,
                ip4: Ipv4Addr::new(10, 200, i as u8, 2),
                ip6: format!("fd00:200:{i}::2")
                    .parse()
                    .map_err(io::Error::other)?,
                gw4: Ipv4Addr::new(10, 200, i as u8, 1),
                gw6: format!("fd00:200:{i}::1")
                    .parse()
                    .map_err(io::Error::other)?,
            });
        }
        Ok(Self {
            tag: String::new(),
            pods,
            node,
        })
    }

    /// Installs a kube-proxy-style (nftables mode) DNAT rule in the node namespace:
    /// `vip:port/proto` -> `backend:target_port`.
    pub fn add_service(
        &self,
        vip: Ipv4Addr,
        port: u16,
        protocol: &str,
        backend: Ipv4Addr,
        target_port: u16,
    ) -> io::Result<()> {
        let rules = format!(
            "table ip septum_svc {{\n  chain prerouting {{\n    type nat hook prerouting priority dstnat; policy accept;\n    ip daddr {vip} {protocol} dport {port} dnat to {backend}:{target_port}\n  }}\n}}\n"
        );
        let path = std::env::temp_dir().join(format!("septum-nft-{}.nft", self.tag));
        std::fs::write(&path, rules)?;
        let res = self.node.exec("nft", &["-f", &path.to_string_lossy()]);
        let _ = std::fs::remove_file(&path);
        res.map(|_| ())
    }
}
