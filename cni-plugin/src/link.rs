//! Finding the pod's host-side veth through the kernel: the container interface (`CNI_IFNAME`
//! inside `CNI_NETNS`) names its peer's ifindex (`IFLA_LINK`); the link with that index in the
//! plugin's own namespace must be a veth whose peer is the container interface.
//!
//! The namespace is entered only by a short-lived thread that opens a netlink socket there and
//! returns it (a socket stays bound to the namespace it was created in), so the process's main
//! thread never changes namespace. `CNI_NETNS` is opened as a path: containerd passes
//! `/var/run/netns/cni-UUID` through CRI and `/proc/PID/ns/net` through `ctr run --cni`.
//! Netlink is spoken directly (netlink-packet-route over a blocking netlink-sys socket): two
//! RTM_GETLINK requests do not justify an async netlink stack.

use std::{
    fs::File,
    io,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use netlink_packet_core::{NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload};
use netlink_packet_route::{
    RouteNetlinkMessage,
    link::{InfoKind, LinkAttribute, LinkInfo, LinkMessage},
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};
use nix::sched::{CloneFlags, setns};

/// The host-side veth of a pod and the container interface it pairs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostVeth {
    /// The host-side ifindex (in the plugin's namespace).
    pub host_ifindex: u32,
    /// The host-side name.
    pub host_name: String,
    /// The container interface's ifindex (inside `CNI_NETNS`).
    pub container_ifindex: u32,
    /// The container interface's hardware address (empty if it has none).
    pub container_mac: Vec<u8>,
}

/// Why the host-side veth could not be found.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// `CNI_NETNS` cannot be opened.
    #[error("cannot open CNI_NETNS {path:?}")]
    OpenNetns {
        /// The path.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// `CNI_NETNS` is not a network namespace (setns refused it).
    #[error("cannot enter CNI_NETNS {path:?}: not a network namespace?")]
    EnterNetns {
        /// The path.
        path: PathBuf,
        /// Why.
        #[source]
        source: nix::Error,
    },
    /// `CNI_NETNS` is the plugin's own namespace: the pod would be the host.
    #[error("CNI_NETNS {0:?} is the plugin's own network namespace")]
    OwnNetns(PathBuf),
    /// A netlink request failed.
    #[error("netlink {what} failed")]
    Netlink {
        /// The request.
        what: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// `CNI_IFNAME` does not exist in `CNI_NETNS`.
    #[error(
        "interface {ifname:?} does not exist in {netns:?}; is septum-cni chained after the plugin that creates it?"
    )]
    NoContainerInterface {
        /// `CNI_IFNAME`.
        ifname: String,
        /// `CNI_NETNS`.
        netns: PathBuf,
    },
    /// `CNI_IFNAME` is not one end of a veth pair.
    #[error(
        "interface {ifname:?} is a {kind} link, not a veth; septum-cni needs a veth pair (bridge, ptp)"
    )]
    NotVeth {
        /// `CNI_IFNAME`.
        ifname: String,
        /// The kind the kernel reports.
        kind: String,
    },
    /// No link in the host namespace has the peer's ifindex.
    #[error(
        "the peer of {ifname:?} has ifindex {ifindex}, but no such link exists in the plugin's network namespace"
    )]
    NoPeer {
        /// `CNI_IFNAME`.
        ifname: String,
        /// The peer ifindex from IFLA_LINK.
        ifindex: u32,
    },
    /// The host link with that index does not pair with the container interface (an ifindex of
    /// another namespace).
    #[error(
        "host link {name:?} (ifindex {ifindex}) is not the veth peer of {ifname:?} (its peer ifindex is {peer:?}, want {want})"
    )]
    NotPeer {
        /// `CNI_IFNAME`.
        ifname: String,
        /// The host link's name.
        name: String,
        /// The host link's index.
        ifindex: u32,
        /// The host link's own IFLA_LINK.
        peer: Option<u32>,
        /// The container interface's index.
        want: u32,
    },
}

impl LinkError {
    /// True when the fault is `CNI_NETNS` itself (reported as an invalid environment variable).
    pub fn is_bad_netns(&self) -> bool {
        matches!(
            self,
            LinkError::OpenNetns { .. } | LinkError::EnterNetns { .. } | LinkError::OwnNetns(_)
        )
    }
}

/// What septum-cni needs to know of one link.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Link {
    index: u32,
    name: String,
    /// IFLA_LINK: for a veth, the peer's ifindex (in the peer's namespace).
    peer: Option<u32>,
    mac: Vec<u8>,
    kind: Option<String>,
}

impl Link {
    fn from_message(msg: LinkMessage) -> Self {
        let mut link = Link {
            index: msg.header.index,
            name: String::new(),
            peer: None,
            mac: Vec::new(),
            kind: None,
        };
        for attr in msg.attributes {
            match attr {
                LinkAttribute::IfName(n) => link.name = n,
                LinkAttribute::Link(p) => link.peer = Some(p),
                LinkAttribute::Address(a) => link.mac = a,
                LinkAttribute::LinkInfo(infos) => {
                    for info in infos {
                        if let LinkInfo::Kind(kind) = info {
                            link.kind = Some(kind_name(&kind));
                        }
                    }
                }
                _ => {}
            }
        }
        link
    }

    fn is_veth(&self) -> bool {
        self.kind.as_deref() == Some("veth")
    }
}

fn kind_name(kind: &InfoKind) -> String {
    match kind {
        InfoKind::Veth => "veth".to_string(),
        other => other.to_string(),
    }
}

/// A blocking rtnetlink socket, bound to the namespace it was created in.
struct RouteSocket(Socket);

/// Receive buffer: one RTM_NEWLINK with every attribute of a busy link stays well below this.
const RECV_BUFFER: usize = 64 * 1024;

impl RouteSocket {
    fn new() -> io::Result<Self> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        Ok(RouteSocket(socket))
    }

    /// RTM_GETLINK for one link; `None` when it does not exist.
    fn get_link(&self, index: u32, name: Option<&str>) -> io::Result<Option<Link>> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        if let Some(name) = name {
            msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        }
        let mut packet = NetlinkMessage::new(
            NetlinkHeader::default(),
            NetlinkPayload::from(RouteNetlinkMessage::GetLink(msg)),
        );
        packet.header.flags = NLM_F_REQUEST;
        packet.header.sequence_number = 1;
        packet.finalize();
        let mut buf = vec![0; packet.buffer_len()];
        packet.serialize(&mut buf);
        self.0.send(&buf, 0)?;

        let mut recv = vec![0u8; RECV_BUFFER];
        let n = self.0.recv(&mut &mut recv[..], 0)?;
        if n > recv.len() {
            return Err(io::Error::other(format!(
                "netlink reply of {n} bytes exceeds the {RECV_BUFFER}-byte buffer"
            )));
        }
        let reply = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&recv[..n])
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
        match reply.payload {
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(link)) => {
                Ok(Some(Link::from_message(link)))
            }
            NetlinkPayload::Error(err) => match err.code {
                Some(code) if -code.get() == libc::ENODEV => Ok(None),
                Some(code) => Err(io::Error::from_raw_os_error(-code.get())),
                None => Err(io::Error::other(
                    "netlink acknowledged instead of answering",
                )),
            },
            other => Err(io::Error::other(format!(
                "unexpected netlink reply {:?}",
                other.message_type()
            ))),
        }
    }
}

/// Opens a netlink socket inside the namespace at `path`, from a thread of its own.
fn socket_in_netns(path: &Path) -> Result<RouteSocket, LinkError> {
    let file = File::open(path).map_err(|source| LinkError::OpenNetns {
        path: path.to_path_buf(),
        source,
    })?;
    let ours =
        std::fs::metadata("/proc/thread-self/ns/net").map_err(|source| LinkError::OpenNetns {
            path: "/proc/thread-self/ns/net".into(),
            source,
        })?;
    let theirs = file.metadata().map_err(|source| LinkError::OpenNetns {
        path: path.to_path_buf(),
        source,
    })?;
    if (ours.dev(), ours.ino()) == (theirs.dev(), theirs.ino()) {
        return Err(LinkError::OwnNetns(path.to_path_buf()));
    }
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                setns(&file, CloneFlags::CLONE_NEWNET).map_err(|source| LinkError::EnterNetns {
                    path: path.to_path_buf(),
                    source,
                })?;
                RouteSocket::new().map_err(|source| LinkError::Netlink {
                    what: format!("socket in {}", path.display()),
                    source,
                })
            })
            .join()
            .unwrap_or_else(|_| {
                Err(LinkError::Netlink {
                    what: format!("socket in {}", path.display()),
                    source: io::Error::other("the namespace thread panicked"),
                })
            })
    })
}

/// Finds the host-side veth paired with `ifname` inside the namespace at `netns`.
pub fn find_host_veth(netns: &Path, ifname: &str) -> Result<HostVeth, LinkError> {
    let inside = socket_in_netns(netns)?;
    let container = inside
        .get_link(0, Some(ifname))
        .map_err(|source| LinkError::Netlink {
            what: format!("RTM_GETLINK {ifname} in {}", netns.display()),
            source,
        })?
        .ok_or_else(|| LinkError::NoContainerInterface {
            ifname: ifname.to_string(),
            netns: netns.to_path_buf(),
        })?;
    let peer_index = match (container.is_veth(), container.peer) {
        (true, Some(peer)) if peer != 0 => peer,
        _ => {
            return Err(LinkError::NotVeth {
                ifname: ifname.to_string(),
                kind: container.kind.unwrap_or_else(|| "kind-less".into()),
            });
        }
    };
    drop(inside);

    let host_socket = RouteSocket::new().map_err(|source| LinkError::Netlink {
        what: "socket in the plugin's namespace".into(),
        source,
    })?;
    let host = host_socket
        .get_link(peer_index, None)
        .map_err(|source| LinkError::Netlink {
            what: format!("RTM_GETLINK ifindex {peer_index}"),
            source,
        })?
        .ok_or_else(|| LinkError::NoPeer {
            ifname: ifname.to_string(),
            ifindex: peer_index,
        })?;
    if !host.is_veth() || host.peer != Some(container.index) {
        return Err(LinkError::NotPeer {
            ifname: ifname.to_string(),
            name: host.name,
            ifindex: host.index,
            peer: host.peer,
            want: container.index,
        });
    }
    Ok(HostVeth {
        host_ifindex: host.index,
        host_name: host.name,
        container_ifindex: container.index,
        container_mac: container.mac,
    })
}
