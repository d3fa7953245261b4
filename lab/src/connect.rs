//! One probe connection from a pod to an address and port, and what came of it.
//!
//! This module owns the probe vocabulary ([`Protocol`], [`ProbeResult`], [`ProbeOutcome`]) and
//! the mapping from what the network did to a result, the way the Kubernetes NetworkPolicy e2e
//! truth tables read it: a firewall drops denied packets silently, so denied is
//! [`ProbeResult::Timeout`]; a host that answers "nobody here" (TCP RST, ICMP port unreachable,
//! SCTP ABORT) is [`ProbeResult::Refused`]; ICMP host or network unreachable is an
//! [`ProbeResult::Error`].
//!
//! [`probe`] creates its sockets on the calling thread, so awaiting it on a current-thread
//! runtime driven by a thread that entered a pod's network namespace probes from that pod.
//! It never hands work to other threads.

use std::fmt;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::str::FromStr;
use std::time::Duration;

use nix::sys::socket::MsgFlags;
use tokio::io::{AsyncReadExt, Interest};
use tokio::net::{TcpSocket, UdpSocket};
use tokio::time::Instant;

use crate::sctp::{self, HandshakeOutcome};

/// A transport protocol as Kubernetes spells it in ports and policies.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
    /// SCTP.
    Sctp,
}

impl Protocol {
    /// Every protocol, in order.
    pub const ALL: [Self; 3] = [Self::Tcp, Self::Udp, Self::Sctp];

    /// The Kubernetes spelling: `TCP`, `UDP` or `SCTP`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "TCP",
            Self::Udp => "UDP",
            Self::Sctp => "SCTP",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A protocol name that is not TCP, UDP or SCTP.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown protocol {value:?}: expected TCP, UDP or SCTP")]
pub struct ParseProtocolError {
    /// The rejected text.
    pub value: String,
}

impl FromStr for Protocol {
    type Err = ParseProtocolError;

    /// Parses `TCP`, `UDP` or `SCTP`, in any letter case.
    fn from_str(value: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|protocol| protocol.as_str().eq_ignore_ascii_case(value))
            .ok_or_else(|| ParseProtocolError {
                value: value.to_owned(),
            })
    }
}

/// What a probe found.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProbeResult {
    /// A server answered: TCP connected, a UDP reply, an SCTP association set up.
    Connected,
    /// No answer before the deadline (what a firewall's silent drop looks like).
    Timeout,
    /// The host answered that nothing serves the port: TCP RST, ICMP port (or protocol)
    /// unreachable, SCTP ABORT.
    Refused,
    /// Anything else: ICMP host or network unreachable, no route, a local socket failure.
    Error,
}

impl ProbeResult {
    /// Lowercase name, as serialized.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Connected => "connected",
            Self::Timeout => "timeout",
            Self::Refused => "refused",
            Self::Error => "error",
        }
    }
}

impl fmt::Display for ProbeResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A probe's result and, where there is one, a human-readable detail: the error for
/// [`ProbeResult::Error`], what answered for [`ProbeResult::Refused`], the deadline for
/// [`ProbeResult::Timeout`], and the server's greeting line for a TCP
/// [`ProbeResult::Connected`] when it came quickly.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ProbeOutcome {
    /// What the probe found.
    pub result: ProbeResult,
    /// Why, in words; `None` when the result says it all.
    pub detail: Option<String>,
}

impl ProbeOutcome {
    fn new(result: ProbeResult, detail: impl Into<String>) -> Self {
        Self {
            result,
            detail: Some(detail.into()),
        }
    }

    fn connected(greeting: Option<String>) -> Self {
        Self {
            result: ProbeResult::Connected,
            detail: greeting,
        }
    }

    fn timeout(timeout: Duration) -> Self {
        Self::new(
            ProbeResult::Timeout,
            format!("no answer within {timeout:?}"),
        )
    }
}

impl fmt::Display for ProbeOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.detail {
            Some(detail) => write!(f, "{} ({detail})", self.result),
            None => write!(f, "{}", self.result),
        }
    }
}

/// How long a connected TCP probe waits for the server's greeting line (at most the deadline).
const GREETING_WAIT: Duration = Duration::from_millis(200);
/// How often a UDP probe repeats its request (UDP is lossy).
const UDP_RETRANSMIT_INTERVAL: Duration = Duration::from_millis(200);
/// What a UDP probe sends; the lab's servers echo it.
const UDP_REQUEST: &[u8] = b"septum probe\n";

/// Probes `addr` over `protocol`, giving up after `timeout`.
///
/// Sockets are created on the calling thread, in its network namespace. SCTP runs the
/// user-space handshake of [`crate::sctp::handshake`] over a raw socket, for IPv4 and IPv6.
pub async fn probe(addr: SocketAddr, protocol: Protocol, timeout: Duration) -> ProbeOutcome {
    match protocol {
        Protocol::Tcp => probe_tcp(addr, timeout).await,
        Protocol::Udp => probe_udp(addr, timeout).await,
        Protocol::Sctp => probe_sctp(addr, timeout).await,
    }
}

/// The instant `timeout` from now; a timeout too long to represent waits a year instead.
pub(crate) fn deadline_after(timeout: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(timeout)
        .unwrap_or_else(|| now + Duration::from_secs(365 * 24 * 3600))
}

/// `error` with its sources, one after another.
fn describe(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The outcome a socket error means, for TCP and UDP.
fn socket_error(action: &str, error: &io::Error) -> ProbeOutcome {
    match error.raw_os_error() {
        Some(libc::ECONNREFUSED) => {
            ProbeOutcome::new(ProbeResult::Refused, format!("{action}: {error}"))
        }
        _ => ProbeOutcome::new(ProbeResult::Error, format!("{action}: {error}")),
    }
}

async fn probe_tcp(addr: SocketAddr, timeout: Duration) -> ProbeOutcome {
    let deadline = deadline_after(timeout);
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4(),
        SocketAddr::V6(_) => TcpSocket::new_v6(),
    };
    let socket = match socket {
        Ok(socket) => socket,
        Err(error) => return socket_error("cannot open a TCP socket", &error),
    };
    let mut stream = match tokio::time::timeout_at(deadline, socket.connect(addr)).await {
        Err(_) => return ProbeOutcome::timeout(timeout),
        Ok(Err(error)) => return socket_error("connect", &error),
        Ok(Ok(stream)) => stream,
    };
    // Connected is decided; the greeting only tells which server answered.
    let greeting_deadline = (Instant::now() + GREETING_WAIT).min(deadline);
    let mut greeting = [0; 128];
    let greeting =
        match tokio::time::timeout_at(greeting_deadline, stream.read(&mut greeting)).await {
            Ok(Ok(length)) if length > 0 => {
                let text = String::from_utf8_lossy(&greeting[..length]);
                text.lines().next().map(str::to_owned)
            }
            _ => None,
        };
    ProbeOutcome::connected(greeting)
}

async fn probe_udp(addr: SocketAddr, timeout: Duration) -> ProbeOutcome {
    let deadline = deadline_after(timeout);
    let local: SocketAddr = match addr {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    // A std socket first: binding a SocketAddr this way happens here and now, on this thread.
    let socket = std::net::UdpSocket::bind(local)
        .and_then(|socket| {
            socket.set_nonblocking(true)?;
            sctp::report_soft_icmp_errors(&socket, addr.ip())?;
            Ok(socket)
        })
        .and_then(UdpSocket::from_std);
    let socket = match socket {
        Ok(socket) => socket,
        Err(error) => return socket_error("cannot open a UDP socket", &error),
    };
    // Connected, so ICMP errors for the peer are reported on this socket.
    if let Err(error) = socket.connect(addr).await {
        return socket_error("connect", &error);
    }
    let mut reply = [0; 1500];
    while Instant::now() < deadline {
        if let Err(error) = socket.send(UDP_REQUEST).await {
            return socket_error("send", &error);
        }
        let retransmit_at = (Instant::now() + UDP_RETRANSMIT_INTERVAL).min(deadline);
        // ERROR too: an ICMP error wakes the socket with EPOLLERR only, no EPOLLIN.
        // The closure calls recv(2) itself: tokio's try_recv would insist on READABLE.
        let received = socket.async_io(Interest::READABLE | Interest::ERROR, || {
            nix::sys::socket::recv(socket.as_raw_fd(), &mut reply, MsgFlags::empty())
                .map_err(io::Error::from)
        });
        match tokio::time::timeout_at(retransmit_at, received).await {
            Err(_) => continue,
            Ok(Ok(_)) => return ProbeOutcome::connected(None),
            Ok(Err(error)) => return socket_error("receive", &error),
        }
    }
    ProbeOutcome::timeout(timeout)
}

async fn probe_sctp(addr: SocketAddr, timeout: Duration) -> ProbeOutcome {
    match sctp::handshake(addr, timeout).await {
        Ok(HandshakeOutcome::Established) => ProbeOutcome::connected(None),
        Ok(HandshakeOutcome::Aborted) => {
            ProbeOutcome::new(ProbeResult::Refused, "the peer answered INIT with ABORT")
        }
        Ok(HandshakeOutcome::NoAnswer) => ProbeOutcome::timeout(timeout),
        Err(error) => {
            // ICMP port or protocol unreachable, or ICMPv6 parameter problem (unrecognized
            // next header): the host is there and has no SCTP responder.
            let (result, meaning) = match error.io_error().and_then(io::Error::raw_os_error) {
                Some(libc::ECONNREFUSED) => (ProbeResult::Refused, "ICMP port unreachable"),
                Some(libc::ENOPROTOOPT) => (
                    ProbeResult::Refused,
                    "ICMP protocol unreachable, no SCTP responder",
                ),
                Some(libc::EPROTO) if addr.is_ipv6() => (
                    ProbeResult::Refused,
                    "ICMPv6 parameter problem, no SCTP responder",
                ),
                _ => (ProbeResult::Error, ""),
            };
            let detail = describe(&error);
            let detail = if meaning.is_empty() {
                detail
            } else {
                format!("{meaning} ({detail})")
            };
            ProbeOutcome::new(result, detail)
        }
    }
}
