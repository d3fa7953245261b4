//! Servers on a pod's ports: what answers the lab's probes inside a pod's network namespace.
//!
//! This module owns the server sockets and their loops:
//! - TCP: accept, write the greeting line `septum\n`, then echo until the peer closes.
//! - UDP: echo every datagram back, from the address it was sent to.
//! - SCTP: one raw socket per address family for all SCTP ports, answered by
//!   [`crate::sctp::Responder`] (this kernel has no SCTP; the responder is the stack).
//!
//! Every port is bound on `0.0.0.0` and, where the namespace allows it, on `[::]` (an IPv6
//! failure is ignored). Sockets are created by [`Server::bind`] on the calling thread, so the
//! caller enters the pod's network namespace before starting the runtime that binds them.

use std::collections::BTreeSet;
use std::io::{self, IoSlice, IoSliceMut};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use nix::sys::socket::{
    ControlMessage, ControlMessageOwned, MsgFlags, SockaddrStorage, recvmsg, sendmsg, setsockopt,
    sockopt,
};
use socket2::{Domain, Socket, Type};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncWriteExt, Interest};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::JoinSet;

use crate::connect::Protocol;
use crate::sctp::{self, Packet, Responder};

/// The line a TCP server writes to every connection.
pub const TCP_GREETING: &[u8] = b"septum\n";
/// Pause after a failed accept or receive, so a persistent error does not spin.
const ERROR_PAUSE: Duration = Duration::from_millis(10);
const DATAGRAM_BUFFER_LEN: usize = 65536;
const LISTEN_BACKLOG: i32 = 1024;

/// One port to serve (a containerPort).
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct ServePort {
    /// Port number, 1 to 65535.
    pub port: u16,
    /// Transport protocol.
    pub protocol: Protocol,
}

/// Why serving could not start. Carried inside the [`io::Error`] that [`serve`] and
/// [`Server::bind`] return (reach it with [`io::Error::get_ref`]).
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Port 0 is not a port a pod can serve.
    #[error("{protocol} port 0 cannot be served")]
    ZeroPort { protocol: Protocol },
    /// Binding or listening failed.
    #[error("cannot bind {protocol} port {port}")]
    Bind {
        port: u16,
        protocol: Protocol,
        #[source]
        source: io::Error,
    },
    /// The raw IPv4 SCTP socket could not be opened (it needs CAP_NET_RAW).
    #[error("cannot open the raw socket serving SCTP ports {ports:?}")]
    SctpSocket {
        ports: Vec<u16>,
        #[source]
        source: io::Error,
    },
}

impl From<ServeError> for io::Error {
    fn from(error: ServeError) -> Self {
        let kind = match &error {
            ServeError::ZeroPort { .. } => io::ErrorKind::InvalidInput,
            ServeError::Bind { source, .. } | ServeError::SctpSocket { source, .. } => {
                source.kind()
            }
        };
        io::Error::new(kind, error)
    }
}

/// Bound server sockets for a set of ports, ready to [`run`](Server::run).
#[derive(Debug)]
pub struct Server {
    tcp: Vec<TcpListener>,
    udp: Vec<UdpSocket>,
    sctp: Vec<AsyncFd<Socket>>,
    responder: Option<Responder>,
}

/// Binds every port of `ports` and serves them forever.
///
/// Call it on a runtime whose threads are in the pod's network namespace. Returns only when
/// binding fails (the error names port and protocol) or a server task dies.
pub async fn serve(ports: Vec<ServePort>) -> io::Result<()> {
    Server::bind(&ports).await?.run().await
}

impl Server {
    /// Binds every port of `ports` (duplicates are served once) on `0.0.0.0` and `[::]`.
    ///
    /// Must be awaited inside a tokio runtime; the sockets belong to the calling thread's
    /// network namespace. When it returns, probes can connect.
    pub async fn bind(ports: &[ServePort]) -> io::Result<Self> {
        let ports: BTreeSet<ServePort> = ports.iter().copied().collect();
        let mut server = Self {
            tcp: Vec::new(),
            udp: Vec::new(),
            sctp: Vec::new(),
            responder: None,
        };
        let mut sctp_ports = Vec::new();
        for &ServePort { port, protocol } in &ports {
            if port == 0 {
                return Err(ServeError::ZeroPort { protocol }.into());
            }
            let bind_error = |source| ServeError::Bind {
                port,
                protocol,
                source,
            };
            let v4 = SocketAddr::from((Ipv4Addr::UNSPECIFIED, port));
            let v6 = SocketAddr::from((Ipv6Addr::UNSPECIFIED, port));
            match protocol {
                Protocol::Tcp => {
                    server.tcp.push(tcp_listener(v4).map_err(bind_error)?);
                    server
                        .tcp
                        .extend(ipv6_optional(protocol, port, tcp_listener(v6)));
                }
                Protocol::Udp => {
                    server.udp.push(udp_socket(v4).map_err(bind_error)?);
                    server
                        .udp
                        .extend(ipv6_optional(protocol, port, udp_socket(v6)));
                }
                Protocol::Sctp => sctp_ports.push(port),
            }
        }
        if !sctp_ports.is_empty() {
            let v4 = sctp_socket(Ipv4Addr::UNSPECIFIED.into()).map_err(|source| {
                ServeError::SctpSocket {
                    ports: sctp_ports.clone(),
                    source,
                }
            })?;
            server.sctp.push(v4);
            let v6 = sctp_socket(Ipv6Addr::UNSPECIFIED.into());
            server
                .sctp
                .extend(ipv6_optional(Protocol::Sctp, sctp_ports[0], v6));
            server.responder = Some(Responder::new(sctp_ports));
        }
        tracing::info!(ports = ?ports, "serving");
        Ok(server)
    }

    /// Serves forever: returns only if a server task dies (they end only by panicking). With
    /// nothing to serve it waits forever too, like a pod without ports.
    pub async fn run(self) -> io::Result<()> {
        let mut tasks = JoinSet::new();
        for listener in self.tcp {
            tasks.spawn(serve_tcp(listener));
        }
        for socket in self.udp {
            tasks.spawn(echo_udp(socket));
        }
        if let Some(responder) = self.responder {
            let responder = Arc::new(Mutex::new(responder));
            for socket in self.sctp {
                tasks.spawn(respond_sctp(socket, Arc::clone(&responder)));
            }
        }
        match tasks.join_next().await {
            None => std::future::pending().await,
            Some(Ok(())) => Err(io::Error::other("a server task ended")),
            Some(Err(error)) => Err(io::Error::other(error)),
        }
    }
}

/// An IPv6 socket if it could be had; a namespace without IPv6 is no error.
fn ipv6_optional<T>(protocol: Protocol, port: u16, socket: io::Result<T>) -> Option<T> {
    socket
        .inspect_err(|error| tracing::debug!(%protocol, port, %error, "not serving on IPv6"))
        .ok()
}

fn new_socket(address: SocketAddr, kind: Type, protocol: socket2::Protocol) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(address), kind, Some(protocol))?;
    if address.is_ipv6() {
        // Separate from the IPv4 socket on the same port.
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    Ok(socket)
}

fn tcp_listener(address: SocketAddr) -> io::Result<TcpListener> {
    let socket = new_socket(address, Type::STREAM, socket2::Protocol::TCP)?;
    socket.set_reuse_address(true)?;
    socket.bind(&address.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    TcpListener::from_std(socket.into())
}

fn udp_socket(address: SocketAddr) -> io::Result<UdpSocket> {
    let socket = new_socket(address, Type::DGRAM, socket2::Protocol::UDP)?;
    // Learn each datagram's destination address, to answer from it.
    if address.is_ipv6() {
        setsockopt(&socket, sockopt::Ipv6RecvPacketInfo, &true)?;
    } else {
        setsockopt(&socket, sockopt::Ipv4PacketInfo, &true)?;
    }
    socket.bind(&address.into())?;
    UdpSocket::from_std(socket.into())
}

fn sctp_socket(family: IpAddr) -> io::Result<AsyncFd<Socket>> {
    let socket = sctp::open_raw_socket(family)?;
    // IPv4 raw sockets deliver the IP header, which names the destination; IPv6 ones do not.
    if family.is_ipv6() {
        setsockopt(&socket, sockopt::Ipv6RecvPacketInfo, &true)?;
    }
    sctp::register(socket)
}

async fn serve_tcp(listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(greet(stream));
            }
            Err(error) => {
                tracing::warn!(%error, "TCP accept failed");
                tokio::time::sleep(ERROR_PAUSE).await;
            }
        }
    }
}

/// Writes the greeting, then echoes what the peer sends until it closes (or stays silent for a
/// minute), so a connection can stay established across a test (an agent restart).
async fn greet(mut stream: TcpStream) {
    use tokio::io::AsyncReadExt as _;
    // A peer that went away is no concern of the server's.
    let written = tokio::time::timeout(Duration::from_secs(1), stream.write_all(TCP_GREETING));
    if !matches!(written.await, Ok(Ok(()))) {
        return;
    }
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(Duration::from_secs(60), stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => {
                if stream.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
            _ => break,
        }
    }
    let _ = stream.shutdown().await;
}

/// A datagram received with its sender and the local address it was sent to.
#[derive(Clone, Copy, Debug)]
struct Received {
    length: usize,
    peer: SocketAddr,
    local: Option<LocalAddress>,
}

/// The address a datagram arrived at, and the interface (needed to answer from link-local).
#[derive(Clone, Copy, Debug)]
struct LocalAddress {
    address: IpAddr,
    interface: u32,
}

fn to_socket_addr(address: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = address.as_sockaddr_in() {
        return Some(SocketAddr::V4((*v4).into()));
    }
    address
        .as_sockaddr_in6()
        .map(|v6| SocketAddr::V6((*v6).into()))
}

/// recvmsg(2) with the packet-info control message, if the socket asked for one.
fn receive_with_destination(fd: RawFd, buffer: &mut [u8]) -> io::Result<Received> {
    let mut iov = [IoSliceMut::new(buffer)];
    let mut control = nix::cmsg_space!(libc::in_pktinfo, libc::in6_pktinfo);
    let message = recvmsg::<SockaddrStorage>(fd, &mut iov, Some(&mut control), MsgFlags::empty())?;
    let peer = message
        .address
        .as_ref()
        .and_then(to_socket_addr)
        .ok_or_else(|| io::Error::other("datagram without a sender address"))?;
    let mut local = None;
    // A truncated control buffer only loses the destination; the reply then uses routing's.
    if let Ok(messages) = message.cmsgs() {
        for control in messages {
            match control {
                ControlMessageOwned::Ipv4PacketInfo(info) => {
                    local = Some(LocalAddress {
                        address: Ipv4Addr::from(u32::from_be(info.ipi_addr.s_addr)).into(),
                        interface: u32::try_from(info.ipi_ifindex).unwrap_or(0),
                    });
                }
                ControlMessageOwned::Ipv6PacketInfo(info) => {
                    local = Some(LocalAddress {
                        address: Ipv6Addr::from(info.ipi6_addr.s6_addr).into(),
                        interface: info.ipi6_ifindex,
                    });
                }
                _ => {}
            }
        }
    }
    Ok(Received {
        length: message.bytes,
        peer,
        local,
    })
}

/// Whether `address` is one a unicast reply can come from.
fn is_unicast(address: IpAddr) -> bool {
    match address {
        IpAddr::V4(v4) => !v4.is_multicast() && !v4.is_broadcast() && !v4.is_unspecified(),
        IpAddr::V6(v6) => !v6.is_multicast() && !v6.is_unspecified(),
    }
}

/// sendmsg(2) to `peer`, from `local` when it is a unicast address of the same family.
fn send_from(
    fd: RawFd,
    bytes: &[u8],
    peer: SocketAddr,
    local: Option<LocalAddress>,
) -> io::Result<usize> {
    let iov = [IoSlice::new(bytes)];
    let destination = SockaddrStorage::from(peer);
    let flags = MsgFlags::empty();
    let local = local.filter(|local| is_unicast(local.address));
    let sent = match (local.map(|local| (local.address, local.interface)), peer) {
        (Some((IpAddr::V4(source), _)), SocketAddr::V4(_)) => {
            let info = libc::in_pktinfo {
                // Routing picks the interface; the address alone fixes the source.
                ipi_ifindex: 0,
                ipi_spec_dst: libc::in_addr {
                    s_addr: u32::from(source).to_be(),
                },
                ipi_addr: libc::in_addr { s_addr: 0 },
            };
            let control = [ControlMessage::Ipv4PacketInfo(&info)];
            sendmsg(fd, &iov, &control, flags, Some(&destination))
        }
        (Some((IpAddr::V6(source), interface)), SocketAddr::V6(_)) => {
            let info = libc::in6_pktinfo {
                ipi6_addr: libc::in6_addr {
                    s6_addr: source.octets(),
                },
                // A link-local source needs its interface; others are left to routing.
                ipi6_ifindex: if source.is_unicast_link_local() {
                    interface
                } else {
                    0
                },
            };
            let control = [ControlMessage::Ipv6PacketInfo(&info)];
            sendmsg(fd, &iov, &control, flags, Some(&destination))
        }
        _ => sendmsg(fd, &iov, &[], flags, Some(&destination)),
    };
    Ok(sent?)
}

async fn echo_udp(socket: UdpSocket) {
    let mut buffer = vec![0; DATAGRAM_BUFFER_LEN];
    let fd = socket.as_raw_fd();
    loop {
        let received = socket
            .async_io(Interest::READABLE, || {
                receive_with_destination(fd, &mut buffer)
            })
            .await;
        let received = match received {
            Ok(received) => received,
            Err(error) => {
                tracing::warn!(%error, "UDP receive failed");
                tokio::time::sleep(ERROR_PAUSE).await;
                continue;
            }
        };
        let Some(payload) = buffer.get(..received.length) else {
            continue;
        };
        // A reply that cannot be sent is a lost datagram; the probe repeats its request.
        let _ = socket
            .async_io(Interest::WRITABLE, || {
                send_from(fd, payload, received.peer, received.local)
            })
            .await;
    }
}

async fn respond_sctp(socket: AsyncFd<Socket>, responder: Arc<Mutex<Responder>>) {
    let mut buffer = vec![0; DATAGRAM_BUFFER_LEN];
    let fd = socket.as_raw_fd();
    loop {
        let received = socket
            .async_io(Interest::READABLE, |_| {
                receive_with_destination(fd, &mut buffer)
            })
            .await;
        let received = match received {
            Ok(received) => received,
            Err(error) => {
                tracing::warn!(%error, "SCTP receive failed");
                tokio::time::sleep(ERROR_PAUSE).await;
                continue;
            }
        };
        let Some(datagram) = buffer.get(..received.length) else {
            continue;
        };
        let (local, bytes) = match received.peer {
            SocketAddr::V4(_) => match sctp::strip_ipv4_header(datagram) {
                Ok(envelope) => (
                    Some(LocalAddress {
                        address: envelope.destination.into(),
                        interface: 0,
                    }),
                    envelope.payload,
                ),
                Err(_) => continue,
            },
            SocketAddr::V6(_) => (received.local, datagram),
        };
        // SCTP is unicast only (RFC 9260 §8.4 item 1): nothing sent elsewhere is answered.
        if local.is_some_and(|local| !is_unicast(local.address)) {
            continue;
        }
        let Ok(packet) = Packet::decode(bytes) else {
            continue;
        };
        let reply = responder
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .respond(received.peer.ip(), &packet, Instant::now());
        let Some(Ok(reply)) = reply.map(|reply| reply.encode()) else {
            continue;
        };
        // As for UDP: an unsendable reply is a lost packet, and the peer retransmits.
        let _ = socket
            .async_io(Interest::WRITABLE, |_| {
                send_from(fd, &reply, received.peer, local)
            })
            .await;
    }
}
