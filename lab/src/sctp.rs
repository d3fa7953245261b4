//! SCTP from user space, over raw sockets: this kernel has no SCTP, so the lab is the SCTP stack.
//!
//! This module owns three things that must agree on one wire format:
//! - the packet codec ([`Packet`], [`Chunk`]): the common header with its CRC32c checksum and the
//!   chunks an association's setup and teardown need (RFC 9260). Decoding is total: a truncated
//!   or garbage packet is a [`DecodeError`], never a panic.
//! - the client handshake ([`handshake`]) behind [`crate::connect::probe`]: INIT, INIT-ACK,
//!   COOKIE-ECHO, COOKIE-ACK, then ABORT to tear the association down at once.
//! - the server side ([`Responder`]) behind [`crate::serve`]: what a real stack would answer,
//!   computed from one received packet (the socket loop lives in `serve`).
//!
//! A raw SCTP socket sees every SCTP packet of its network namespace, including packets meant
//! for other probes and for the responder. Each side therefore filters by peer address, ports
//! and verification tag, and the responder stays silent about packets that could belong to a
//! local client's association (anything but INIT sent to a port it does not serve).
//!
//! Because a raw socket exists for the protocol, the kernel does not answer SCTP packets with
//! ICMP protocol unreachable while a probe or responder runs; with no responder in a namespace
//! it does, and a probe reports that as refused.

use std::collections::{BTreeSet, HashMap};
use std::io::{self, IoSliceMut, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use nix::sys::socket::{ControlMessageOwned, MsgFlags, SockaddrStorage, recvmsg};
use socket2::{Domain, SockAddr, Socket, Type};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

/// IP protocol number of SCTP.
pub const IPPROTO_SCTP: i32 = libc::IPPROTO_SCTP;

/// Chunk type numbers (RFC 9260 §3.2) of the chunks this module reads or writes.
pub mod chunk_type {
    /// Payload data.
    pub const DATA: u8 = 0;
    /// Initiation.
    pub const INIT: u8 = 1;
    /// Initiation acknowledgement, carrying the State Cookie.
    pub const INIT_ACK: u8 = 2;
    /// Heartbeat request.
    pub const HEARTBEAT: u8 = 4;
    /// Heartbeat acknowledgement.
    pub const HEARTBEAT_ACK: u8 = 5;
    /// Abort.
    pub const ABORT: u8 = 6;
    /// Shutdown.
    pub const SHUTDOWN: u8 = 7;
    /// Shutdown acknowledgement.
    pub const SHUTDOWN_ACK: u8 = 8;
    /// Operation error.
    pub const ERROR: u8 = 9;
    /// State Cookie echo.
    pub const COOKIE_ECHO: u8 = 10;
    /// State Cookie acknowledgement.
    pub const COOKIE_ACK: u8 = 11;
    /// Shutdown complete.
    pub const SHUTDOWN_COMPLETE: u8 = 14;
}

/// Length of the SCTP common header (ports, verification tag, checksum).
pub const COMMON_HEADER_LEN: usize = 12;
const CHUNK_HEADER_LEN: usize = 4;
/// Fixed part of an INIT or INIT-ACK chunk value: tag, a_rwnd, streams, initial TSN.
const INIT_FIXED_LEN: usize = 16;
const PARAMETER_STATE_COOKIE: u16 = 7;
/// The T bit of ABORT and SHUTDOWN COMPLETE: the verification tag is reflected.
const FLAG_T: u8 = 0x01;

/// Why bytes are not an SCTP packet (or not an IPv4 datagram carrying one).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Shorter than the common header.
    #[error("SCTP packet of {length} bytes is shorter than the 12-byte common header")]
    ShortPacket { length: usize },
    /// The CRC32c in the header does not match the packet.
    #[error("SCTP checksum {received:#010x} does not match the computed {computed:#010x}")]
    Checksum { received: u32, computed: u32 },
    /// The packet holds no chunk.
    #[error("SCTP packet carries no chunk")]
    NoChunks,
    /// Fewer than four bytes left where a chunk header should start.
    #[error("SCTP chunk header at offset {offset} is truncated")]
    ChunkHeaderTruncated { offset: usize },
    /// A chunk length below the header size or beyond the packet's end.
    #[error("SCTP chunk type {chunk_type} has length {length} but {available} bytes remain")]
    ChunkLength {
        chunk_type: u8,
        length: usize,
        available: usize,
    },
    /// A chunk value too short for its type's fixed fields.
    #[error("SCTP chunk type {chunk_type} value of {length} bytes is shorter than {minimum}")]
    ChunkValueShort {
        chunk_type: u8,
        length: usize,
        minimum: usize,
    },
    /// A parameter inside INIT or INIT-ACK that overruns its chunk.
    #[error(
        "SCTP chunk type {chunk_type}: parameter type {parameter_type} has length {length} \
         but {available} bytes remain"
    )]
    ParameterLength {
        chunk_type: u8,
        parameter_type: u16,
        length: usize,
        available: usize,
    },
    /// INIT or INIT-ACK with Initiate Tag 0, which RFC 9260 §3.3.2 forbids.
    #[error("SCTP chunk type {chunk_type} has Initiate Tag 0")]
    ZeroInitiateTag { chunk_type: u8 },
    /// INIT-ACK without its mandatory State Cookie parameter.
    #[error("SCTP INIT-ACK carries no State Cookie parameter")]
    MissingStateCookie,
    /// The IPv4 datagram is malformed or does not carry SCTP.
    #[error("IPv4 datagram rejected: {reason}")]
    Ipv4 { reason: Ipv4Rejection },
}

/// Why an IPv4 datagram read from a raw socket is not usable.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Ipv4Rejection {
    /// Shorter than the minimal 20-byte header.
    #[error("{length} bytes is shorter than an IPv4 header")]
    Short { length: usize },
    /// The version nibble is not 4.
    #[error("IP version {version} is not 4")]
    Version { version: u8 },
    /// The header length field is below 5 words or beyond the datagram.
    #[error("header length {header_length} does not fit a {length}-byte datagram")]
    HeaderLength { header_length: usize, length: usize },
    /// The total length field is below the header or beyond the datagram.
    #[error("total length {total_length} does not fit a {length}-byte datagram")]
    TotalLength { total_length: usize, length: usize },
    /// Not protocol 132.
    #[error("protocol {protocol} is not SCTP")]
    Protocol { protocol: u8 },
    /// A fragment (the kernel hands raw sockets reassembled datagrams, so this is garbage).
    #[error("datagram is a fragment")]
    Fragment,
}

/// Why a [`Packet`] cannot be encoded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// A chunk or parameter longer than its 16-bit length field can say.
    #[error("SCTP chunk type {chunk_type} would be {length} bytes, more than 65535")]
    ChunkTooLong { chunk_type: u8, length: usize },
}

/// The fixed fields shared by INIT and INIT-ACK (RFC 9260 §3.3.2, §3.3.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InitChunk {
    /// The tag the peer must put in every packet it sends to the chunk's sender; never 0.
    pub initiate_tag: u32,
    /// Advertised receiver window credit (a_rwnd).
    pub advertised_receiver_window: u32,
    /// Number of outbound streams the sender wants (OS).
    pub outbound_streams: u16,
    /// Maximum number of inbound streams the sender allows (MIS).
    pub inbound_streams: u16,
    /// First TSN the sender will use.
    pub initial_tsn: u32,
}

/// One SCTP chunk. Chunks this module has no use for are kept as [`Chunk::Other`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Chunk {
    /// INIT; optional parameters are checked for shape and dropped.
    Init(InitChunk),
    /// INIT-ACK with its State Cookie; other parameters are dropped.
    InitAck {
        init: InitChunk,
        state_cookie: Vec<u8>,
    },
    /// COOKIE-ECHO, returning the State Cookie from INIT-ACK.
    CookieEcho { cookie: Vec<u8> },
    /// COOKIE-ACK: the association is established.
    CookieAck,
    /// ABORT; `tag_reflected` is the T bit. Error causes are kept unparsed.
    Abort {
        tag_reflected: bool,
        error_causes: Vec<u8>,
    },
    /// SHUTDOWN.
    Shutdown { cumulative_tsn_ack: u32 },
    /// SHUTDOWN-ACK.
    ShutdownAck,
    /// SHUTDOWN COMPLETE; `tag_reflected` is the T bit.
    ShutdownComplete { tag_reflected: bool },
    /// HEARTBEAT with its opaque Heartbeat Info parameter.
    Heartbeat { info: Vec<u8> },
    /// HEARTBEAT-ACK, echoing the Heartbeat Info.
    HeartbeatAck { info: Vec<u8> },
    /// Any other chunk, unparsed.
    Other {
        chunk_type: u8,
        flags: u8,
        value: Vec<u8>,
    },
}

/// One SCTP packet: the common header and its chunks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Packet {
    /// Sender's port.
    pub source_port: u16,
    /// Receiver's port.
    pub destination_port: u16,
    /// Verification tag: the receiver's tag, 0 for INIT, or reflected when a T bit says so.
    pub verification_tag: u32,
    /// At least one chunk.
    pub chunks: Vec<Chunk>,
}

fn be_u16(bytes: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes(*bytes.get(at..)?.first_chunk()?))
}

fn be_u32(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(*bytes.get(at..)?.first_chunk()?))
}

/// The CRC32c of `packet` with its checksum field taken as zero (RFC 9260 Appendix A).
///
/// `packet` must hold at least the common header; shorter input yields the CRC of what is there.
pub fn checksum(packet: &[u8]) -> u32 {
    let (before, after) = packet.split_at(packet.len().min(8));
    let rest = after.get(4..).unwrap_or_default();
    let crc = crc32c::crc32c_append(crc32c::crc32c(before), &[0; 4]);
    crc32c::crc32c_append(crc, rest)
}

impl Packet {
    /// Decodes a packet starting at the SCTP common header, verifying its checksum.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let Some((header, mut rest)) = bytes.split_first_chunk::<COMMON_HEADER_LEN>() else {
            return Err(DecodeError::ShortPacket {
                length: bytes.len(),
            });
        };
        // The checksum travels in little-endian byte order, as Linux and every stack writes it.
        let received = u32::from_le_bytes([header[8], header[9], header[10], header[11]]);
        let computed = checksum(bytes);
        if received != computed {
            return Err(DecodeError::Checksum { received, computed });
        }
        let mut chunks = Vec::new();
        let mut offset = COMMON_HEADER_LEN;
        while !rest.is_empty() {
            let Some(chunk_header) = rest.first_chunk::<CHUNK_HEADER_LEN>() else {
                return Err(DecodeError::ChunkHeaderTruncated { offset });
            };
            let [chunk_type, flags, length_high, length_low] = *chunk_header;
            let length = usize::from(u16::from_be_bytes([length_high, length_low]));
            let value = match rest.get(..length) {
                Some(chunk) if length >= CHUNK_HEADER_LEN => &chunk[CHUNK_HEADER_LEN..],
                _ => {
                    return Err(DecodeError::ChunkLength {
                        chunk_type,
                        length,
                        available: rest.len(),
                    });
                }
            };
            chunks.push(Chunk::decode(chunk_type, flags, value)?);
            // The last chunk's padding may be missing; padding bytes are ignored (§3.2).
            let padded = length.next_multiple_of(4).min(rest.len());
            rest = &rest[padded..];
            offset += padded;
        }
        if chunks.is_empty() {
            return Err(DecodeError::NoChunks);
        }
        Ok(Self {
            source_port: u16::from_be_bytes([header[0], header[1]]),
            destination_port: u16::from_be_bytes([header[2], header[3]]),
            verification_tag: u32::from_be_bytes([header[4], header[5], header[6], header[7]]),
            chunks,
        })
    }

    /// Encodes the packet with its checksum filled in.
    pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        let mut out = Vec::with_capacity(64);
        out.extend_from_slice(&self.source_port.to_be_bytes());
        out.extend_from_slice(&self.destination_port.to_be_bytes());
        out.extend_from_slice(&self.verification_tag.to_be_bytes());
        out.extend_from_slice(&[0; 4]);
        for chunk in &self.chunks {
            chunk.encode_into(&mut out)?;
        }
        let crc = checksum(&out);
        out[8..12].copy_from_slice(&crc.to_le_bytes());
        Ok(out)
    }
}

impl InitChunk {
    fn decode(chunk_type: u8, value: &[u8]) -> Result<(Self, &[u8]), DecodeError> {
        let short = DecodeError::ChunkValueShort {
            chunk_type,
            length: value.len(),
            minimum: INIT_FIXED_LEN,
        };
        let (Some(fixed), Some(parameters)) = (value.get(..INIT_FIXED_LEN), value.get(16..)) else {
            return Err(short);
        };
        let field32 = |at| be_u32(fixed, at).unwrap_or_default();
        let field16 = |at| be_u16(fixed, at).unwrap_or_default();
        let init = Self {
            initiate_tag: field32(0),
            advertised_receiver_window: field32(4),
            outbound_streams: field16(8),
            inbound_streams: field16(10),
            initial_tsn: field32(12),
        };
        if init.initiate_tag == 0 {
            return Err(DecodeError::ZeroInitiateTag { chunk_type });
        }
        Ok((init, parameters))
    }

    fn encode_into(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.initiate_tag.to_be_bytes());
        out.extend_from_slice(&self.advertised_receiver_window.to_be_bytes());
        out.extend_from_slice(&self.outbound_streams.to_be_bytes());
        out.extend_from_slice(&self.inbound_streams.to_be_bytes());
        out.extend_from_slice(&self.initial_tsn.to_be_bytes());
    }
}

/// Walks the TLV parameters of an INIT or INIT-ACK, returning the State Cookie if present.
fn find_state_cookie(chunk_type: u8, mut parameters: &[u8]) -> Result<Option<&[u8]>, DecodeError> {
    let mut cookie = None;
    while !parameters.is_empty() {
        let (Some(parameter_type), Some(length)) = (be_u16(parameters, 0), be_u16(parameters, 2))
        else {
            return Err(DecodeError::ParameterLength {
                chunk_type,
                parameter_type: be_u16(parameters, 0).unwrap_or_default(),
                length: parameters.len(),
                available: parameters.len(),
            });
        };
        let length = usize::from(length);
        let value = match parameters.get(..length) {
            Some(parameter) if length >= 4 => &parameter[4..],
            _ => {
                return Err(DecodeError::ParameterLength {
                    chunk_type,
                    parameter_type,
                    length,
                    available: parameters.len(),
                });
            }
        };
        if parameter_type == PARAMETER_STATE_COOKIE && cookie.is_none() {
            cookie = Some(value);
        }
        let padded = length.next_multiple_of(4).min(parameters.len());
        parameters = &parameters[padded..];
    }
    Ok(cookie)
}

impl Chunk {
    fn decode(chunk_type: u8, flags: u8, value: &[u8]) -> Result<Self, DecodeError> {
        let tag_reflected = flags & FLAG_T != 0;
        Ok(match chunk_type {
            chunk_type::INIT => {
                let (init, parameters) = InitChunk::decode(chunk_type, value)?;
                find_state_cookie(chunk_type, parameters)?;
                Self::Init(init)
            }
            chunk_type::INIT_ACK => {
                let (init, parameters) = InitChunk::decode(chunk_type, value)?;
                let state_cookie = find_state_cookie(chunk_type, parameters)?
                    .ok_or(DecodeError::MissingStateCookie)?;
                Self::InitAck {
                    init,
                    state_cookie: state_cookie.to_vec(),
                }
            }
            chunk_type::COOKIE_ECHO => Self::CookieEcho {
                cookie: value.to_vec(),
            },
            chunk_type::COOKIE_ACK => Self::CookieAck,
            chunk_type::ABORT => Self::Abort {
                tag_reflected,
                error_causes: value.to_vec(),
            },
            chunk_type::SHUTDOWN => Self::Shutdown {
                cumulative_tsn_ack: be_u32(value, 0).ok_or(DecodeError::ChunkValueShort {
                    chunk_type,
                    length: value.len(),
                    minimum: 4,
                })?,
            },
            chunk_type::SHUTDOWN_ACK => Self::ShutdownAck,
            chunk_type::SHUTDOWN_COMPLETE => Self::ShutdownComplete { tag_reflected },
            chunk_type::HEARTBEAT => Self::Heartbeat {
                info: value.to_vec(),
            },
            chunk_type::HEARTBEAT_ACK => Self::HeartbeatAck {
                info: value.to_vec(),
            },
            _ => Self::Other {
                chunk_type,
                flags,
                value: value.to_vec(),
            },
        })
    }

    /// The chunk's type number on the wire.
    pub fn chunk_type(&self) -> u8 {
        match self {
            Self::Init(_) => chunk_type::INIT,
            Self::InitAck { .. } => chunk_type::INIT_ACK,
            Self::CookieEcho { .. } => chunk_type::COOKIE_ECHO,
            Self::CookieAck => chunk_type::COOKIE_ACK,
            Self::Abort { .. } => chunk_type::ABORT,
            Self::Shutdown { .. } => chunk_type::SHUTDOWN,
            Self::ShutdownAck => chunk_type::SHUTDOWN_ACK,
            Self::ShutdownComplete { .. } => chunk_type::SHUTDOWN_COMPLETE,
            Self::Heartbeat { .. } => chunk_type::HEARTBEAT,
            Self::HeartbeatAck { .. } => chunk_type::HEARTBEAT_ACK,
            Self::Other { chunk_type, .. } => *chunk_type,
        }
    }

    fn encode_into(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        let start = out.len();
        let flags = match self {
            Self::Abort { tag_reflected, .. } | Self::ShutdownComplete { tag_reflected } => {
                FLAG_T * u8::from(*tag_reflected)
            }
            Self::Other { flags, .. } => *flags,
            _ => 0,
        };
        out.extend_from_slice(&[self.chunk_type(), flags, 0, 0]);
        match self {
            Self::Init(init) => init.encode_into(out),
            Self::InitAck { init, state_cookie } => {
                init.encode_into(out);
                let length = 4 + state_cookie.len();
                let length = u16::try_from(length).map_err(|_| EncodeError::ChunkTooLong {
                    chunk_type: chunk_type::INIT_ACK,
                    length,
                })?;
                out.extend_from_slice(&PARAMETER_STATE_COOKIE.to_be_bytes());
                out.extend_from_slice(&length.to_be_bytes());
                out.extend_from_slice(state_cookie);
                out.resize(out.len().next_multiple_of(4), 0);
            }
            Self::CookieEcho { cookie: bytes }
            | Self::Abort {
                error_causes: bytes,
                ..
            }
            | Self::Heartbeat { info: bytes }
            | Self::HeartbeatAck { info: bytes }
            | Self::Other { value: bytes, .. } => out.extend_from_slice(bytes),
            Self::Shutdown { cumulative_tsn_ack } => {
                out.extend_from_slice(&cumulative_tsn_ack.to_be_bytes())
            }
            Self::CookieAck | Self::ShutdownAck | Self::ShutdownComplete { .. } => {}
        }
        let length = out.len() - start;
        let length_field = u16::try_from(length).map_err(|_| EncodeError::ChunkTooLong {
            chunk_type: self.chunk_type(),
            length,
        })?;
        out[start + 2..start + 4].copy_from_slice(&length_field.to_be_bytes());
        out.resize(out.len().next_multiple_of(4), 0);
        Ok(())
    }
}

/// An IPv4 datagram as read from a raw socket: addresses and the SCTP bytes it carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipv4Envelope<'a> {
    /// Sender's address.
    pub source: Ipv4Addr,
    /// Address the datagram was sent to.
    pub destination: Ipv4Addr,
    /// The SCTP packet (the bytes after the IP header, up to the total length).
    pub payload: &'a [u8],
}

/// Strips the IPv4 header that raw IPv4 sockets deliver in front of every datagram.
pub fn strip_ipv4_header(datagram: &[u8]) -> Result<Ipv4Envelope<'_>, DecodeError> {
    let reject = |reason| DecodeError::Ipv4 { reason };
    let length = datagram.len();
    let Some(header) = datagram.first_chunk::<20>() else {
        return Err(reject(Ipv4Rejection::Short { length }));
    };
    let version = header[0] >> 4;
    if version != 4 {
        return Err(reject(Ipv4Rejection::Version { version }));
    }
    let header_length = usize::from(header[0] & 0x0f) * 4;
    if header_length < 20 || header_length > length {
        return Err(reject(Ipv4Rejection::HeaderLength {
            header_length,
            length,
        }));
    }
    let total_length = usize::from(u16::from_be_bytes([header[2], header[3]]));
    if total_length < header_length || total_length > length {
        return Err(reject(Ipv4Rejection::TotalLength {
            total_length,
            length,
        }));
    }
    // More-fragments bit or a fragment offset.
    if u16::from_be_bytes([header[6], header[7]]) & 0x3fff != 0 {
        return Err(reject(Ipv4Rejection::Fragment));
    }
    let protocol = header[9];
    if i32::from(protocol) != IPPROTO_SCTP {
        return Err(reject(Ipv4Rejection::Protocol { protocol }));
    }
    Ok(Ipv4Envelope {
        source: Ipv4Addr::new(header[12], header[13], header[14], header[15]),
        destination: Ipv4Addr::new(header[16], header[17], header[18], header[19]),
        payload: &datagram[header_length..total_length],
    })
}

/// Opens a non-blocking raw SCTP socket of the address family of `address`.
///
/// The socket belongs to the network namespace of the calling thread.
pub fn open_raw_socket(address: IpAddr) -> io::Result<Socket> {
    let domain = match address {
        IpAddr::V4(_) => Domain::IPV4,
        IpAddr::V6(_) => Domain::IPV6,
    };
    let socket = Socket::new(
        domain,
        Type::RAW,
        Some(socket2::Protocol::from(IPPROTO_SCTP)),
    )?;
    socket.set_nonblocking(true)?;
    Ok(socket)
}

/// Asks the kernel to report every ICMP error for a connected datagram or raw socket.
///
/// Without it only "hard" errors (port and protocol unreachable) surface; host and network
/// unreachable, which is what a failed neighbour resolution produces, count as "soft" and
/// would leave a probe waiting for its timeout.
pub fn report_soft_icmp_errors(socket: &impl std::os::fd::AsFd, peer: IpAddr) -> io::Result<()> {
    use nix::sys::socket::{setsockopt, sockopt};
    match peer {
        IpAddr::V4(_) => setsockopt(socket, sockopt::Ipv4RecvErr, &true)?,
        IpAddr::V6(_) => setsockopt(socket, sockopt::Ipv6RecvErr, &true)?,
    }
    Ok(())
}

/// Registers `socket` with the current tokio runtime's reactor (it must run inside one).
pub(crate) fn register(socket: Socket) -> io::Result<AsyncFd<Socket>> {
    // SAFETY: `Socket` owns its file descriptor, and the `AsyncFd` takes ownership of it, so
    // nothing can close or replace the descriptor while it is registered.
    Ok(unsafe { AsyncFd::register(socket) }?)
}

/// A nonzero random tag (tags and TSNs should be random, RFC 9260 §5.3.1).
fn nonzero_tag() -> u32 {
    loop {
        let tag = rand::random::<u32>();
        if tag != 0 {
            return tag;
        }
    }
}

/// How a client handshake ended without a socket error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HandshakeOutcome {
    /// INIT-ACK and COOKIE-ACK came back; the association was set up (and then aborted).
    Established,
    /// The peer answered with ABORT (a port nobody serves).
    Aborted,
    /// Nothing matching came back before the deadline.
    NoAnswer,
}

/// A socket failure during a client handshake. ICMP errors for the peer surface here
/// (the raw socket is connected, so the kernel reports them).
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The raw socket could not be opened or connected.
    #[error("cannot open a raw SCTP socket towards {peer}")]
    Open {
        peer: IpAddr,
        #[source]
        source: io::Error,
    },
    /// Sending INIT, COOKIE-ECHO or ABORT failed.
    #[error("cannot send SCTP to {peer}")]
    Send {
        peer: IpAddr,
        #[source]
        source: io::Error,
    },
    /// Receiving failed (typically an ICMP error the kernel reported).
    #[error("cannot receive SCTP from {peer}")]
    Receive {
        peer: IpAddr,
        #[source]
        source: io::Error,
    },
    /// An own packet could not be encoded (cannot happen for the fixed packets a client sends,
    /// but a cookie from the peer is echoed back and could be too long).
    #[error("cannot encode an SCTP packet for {peer}")]
    Encode {
        peer: IpAddr,
        #[source]
        source: EncodeError,
    },
}

impl HandshakeError {
    /// The underlying socket error, if the failure was one.
    pub fn io_error(&self) -> Option<&io::Error> {
        match self {
            Self::Open { source, .. }
            | Self::Send { source, .. }
            | Self::Receive { source, .. } => Some(source),
            Self::Encode { .. } => None,
        }
    }
}

/// How often a client repeats INIT or COOKIE-ECHO while it waits (packets can be lost).
pub const RETRANSMIT_INTERVAL: Duration = Duration::from_millis(200);
/// Ephemeral source ports a client picks from (Linux's default local port range).
const CLIENT_PORTS: std::ops::RangeInclusive<u16> = 32768..=60999;
const CLIENT_STREAMS: u16 = 10;
const RECEIVE_BUFFER_LEN: usize = 65536;

/// A connected raw SCTP socket registered with the tokio reactor, for one handshake's ports.
struct ClientSocket {
    fd: AsyncFd<Socket>,
    peer: SocketAddr,
    local_port: u16,
}

/// What a raw socket's error queue held (IP_RECVERR queues every ICMP error it reports).
enum QueuedErrors {
    /// Nothing queued: the error at hand is a local one, this handshake's.
    Empty,
    /// Only errors about other sockets' packets to the same host.
    Others,
    /// An error about one of this handshake's packets.
    Own(io::Error),
}

/// Most error-queue entries read at once; the queue is bounded by the receive buffer anyway.
const MAX_QUEUED_ERRORS: usize = 64;

impl ClientSocket {
    fn open(peer: SocketAddr, local_port: u16) -> io::Result<Self> {
        let socket = open_raw_socket(peer.ip())?;
        // Connecting filters received packets by source address and makes the kernel report
        // ICMP errors for the peer on this socket. The port of a raw socket address is unused.
        socket.connect(&SockAddr::from(SocketAddr::new(peer.ip(), 0)))?;
        report_soft_icmp_errors(&socket, peer.ip())?;
        Ok(Self {
            fd: register(socket)?,
            peer,
            local_port,
        })
    }

    /// Reads the error queue. Every raw SCTP socket connected to a host hears of every ICMP
    /// error from it, and the socket error the kernel reports is whichever came last; the
    /// queued copy of the offending packet's SCTP header tells whose packet it was.
    fn take_queued_errors(&self) -> QueuedErrors {
        let fd = self.fd.as_raw_fd();
        let mut verdict = QueuedErrors::Empty;
        for _ in 0..MAX_QUEUED_ERRORS {
            let mut offending = [0u8; 8];
            let mut iov = [IoSliceMut::new(&mut offending)];
            let mut control = nix::cmsg_space!(libc::sock_extended_err, libc::sockaddr_in6);
            let Ok(message) = recvmsg::<SockaddrStorage>(
                fd,
                &mut iov,
                Some(&mut control),
                MsgFlags::MSG_ERRQUEUE,
            ) else {
                break;
            };
            let length = message.bytes;
            let errno = message.cmsgs().ok().and_then(|mut messages| {
                messages.find_map(|message| match message {
                    ControlMessageOwned::Ipv4RecvErr(error, _)
                    | ControlMessageOwned::Ipv6RecvErr(error, _) => {
                        i32::try_from(error.ee_errno).ok()
                    }
                    _ => None,
                })
            });
            let offending = offending.get(..length).unwrap_or_default();
            let ours = be_u16(offending, 0) == Some(self.local_port)
                && be_u16(offending, 2) == Some(self.peer.port());
            verdict = match (verdict, ours, errno) {
                (QueuedErrors::Own(error), _, _) => QueuedErrors::Own(error),
                (_, true, Some(errno)) => QueuedErrors::Own(io::Error::from_raw_os_error(errno)),
                _ => QueuedErrors::Others,
            };
        }
        verdict
    }

    /// Whether `error`, returned by a send or receive, belongs to this handshake: then the
    /// error to report (the queued one, which names the cause), else `None`.
    fn own_error(&self, error: io::Error) -> Option<io::Error> {
        match self.take_queued_errors() {
            QueuedErrors::Empty => Some(error),
            QueuedErrors::Others => None,
            QueuedErrors::Own(queued) => Some(queued),
        }
    }

    async fn send(&self, packet: &Packet) -> Result<(), HandshakeError> {
        let peer = self.peer.ip();
        let bytes = packet
            .encode()
            .map_err(|source| HandshakeError::Encode { peer, source })?;
        // A send fails with a pending socket error, which may be another socket's ICMP error;
        // then the packet did not go out and is sent again.
        loop {
            let sent = self
                .fd
                .async_io(Interest::WRITABLE, |mut socket| socket.write(&bytes))
                .await;
            match sent {
                Ok(_) => return Ok(()),
                Err(error) => {
                    if let Some(source) = self.own_error(error) {
                        return Err(HandshakeError::Send { peer, source });
                    }
                }
            }
        }
    }

    /// Receives the next packet from the peer that decodes; garbage is skipped.
    async fn receive(&self, buffer: &mut [u8]) -> Result<Packet, HandshakeError> {
        loop {
            // ERROR too: an ICMP error wakes the socket with EPOLLERR only, no EPOLLIN.
            let received = self
                .fd
                .async_io(Interest::READABLE | Interest::ERROR, |mut socket| {
                    socket.read(buffer)
                })
                .await;
            let length = match received {
                Ok(length) => length,
                Err(error) => match self.own_error(error) {
                    Some(source) => {
                        return Err(HandshakeError::Receive {
                            peer: self.peer.ip(),
                            source,
                        });
                    }
                    None => continue,
                },
            };
            let Some(datagram) = buffer.get(..length) else {
                continue;
            };
            let sctp = match self.peer.ip() {
                IpAddr::V4(peer) => match strip_ipv4_header(datagram) {
                    Ok(envelope) if envelope.source == peer => envelope.payload,
                    _ => continue,
                },
                // Raw IPv6 sockets deliver the transport payload without the IP header.
                IpAddr::V6(_) => datagram,
            };
            if let Ok(packet) = Packet::decode(sctp) {
                return Ok(packet);
            }
        }
    }
}

/// Where a client is in the handshake (RFC 9260 §4 state names).
#[derive(Clone, Copy, Debug)]
enum ClientState {
    CookieWait,
    CookieEchoed { peer_tag: u32 },
}

/// Sets up one SCTP association with `peer` (address and port) and tears it down with ABORT.
///
/// INIT goes out from a random source port and is repeated every [`RETRANSMIT_INTERVAL`];
/// packets from the peer that do not carry this handshake's ports and verification tag are
/// ignored, so many handshakes may run at once in one network namespace. Must be awaited on a
/// thread in the network namespace to probe from (the socket is created by the calling thread).
pub async fn handshake(
    peer: SocketAddr,
    timeout: Duration,
) -> Result<HandshakeOutcome, HandshakeError> {
    let deadline = crate::connect::deadline_after(timeout);
    let local_port = rand::Rng::gen_range(&mut rand::thread_rng(), CLIENT_PORTS);
    let socket = ClientSocket::open(peer, local_port).map_err(|source| HandshakeError::Open {
        peer: peer.ip(),
        source,
    })?;
    let local_tag = nonzero_tag();
    let packet_to_peer = |verification_tag, chunk| Packet {
        source_port: local_port,
        destination_port: peer.port(),
        verification_tag,
        chunks: vec![chunk],
    };
    let mut state = ClientState::CookieWait;
    let mut request = packet_to_peer(
        0,
        Chunk::Init(InitChunk {
            initiate_tag: local_tag,
            advertised_receiver_window: 106_496,
            outbound_streams: CLIENT_STREAMS,
            inbound_streams: CLIENT_STREAMS,
            initial_tsn: rand::random(),
        }),
    );
    let mut buffer = vec![0; RECEIVE_BUFFER_LEN];
    while tokio::time::Instant::now() < deadline {
        socket.send(&request).await?;
        let retransmit_at = (tokio::time::Instant::now() + RETRANSMIT_INTERVAL).min(deadline);
        loop {
            let Ok(received) =
                tokio::time::timeout_at(retransmit_at, socket.receive(&mut buffer)).await
            else {
                break;
            };
            let packet = received?;
            if packet.source_port != peer.port() || packet.destination_port != local_port {
                continue;
            }
            let vtag = packet.verification_tag;
            let Some(chunk) = packet.chunks.first() else {
                continue;
            };
            match (state, chunk) {
                (ClientState::CookieWait, Chunk::InitAck { init, state_cookie })
                    if vtag == local_tag =>
                {
                    let peer_tag = init.initiate_tag;
                    state = ClientState::CookieEchoed { peer_tag };
                    request = packet_to_peer(
                        peer_tag,
                        Chunk::CookieEcho {
                            cookie: state_cookie.clone(),
                        },
                    );
                    break;
                }
                (ClientState::CookieEchoed { peer_tag }, Chunk::CookieAck) if vtag == local_tag => {
                    let abort = Chunk::Abort {
                        tag_reflected: false,
                        error_causes: Vec::new(),
                    };
                    socket.send(&packet_to_peer(peer_tag, abort)).await?;
                    return Ok(HandshakeOutcome::Established);
                }
                // §8.5.1 B: our own tag with T clear, or the peer's tag reflected with T set.
                (state, Chunk::Abort { tag_reflected, .. }) => {
                    let accepted = match (state, tag_reflected) {
                        (_, false) => vtag == local_tag,
                        (ClientState::CookieEchoed { peer_tag }, true) => vtag == peer_tag,
                        (ClientState::CookieWait, true) => false,
                    };
                    if accepted {
                        return Ok(HandshakeOutcome::Aborted);
                    }
                }
                _ => {}
            }
        }
    }
    Ok(HandshakeOutcome::NoAnswer)
}

/// Streams a responder offers and accepts.
const RESPONDER_STREAMS: u16 = 10;
/// How long a State Cookie stays valid (RFC 9260 suggests 60 s).
const COOKIE_LIFETIME: Duration = Duration::from_secs(60);
/// Established associations the responder remembers (for SHUTDOWN); beyond this the stalest go.
const MAX_ASSOCIATIONS: usize = 4096;
const COOKIE_MAGIC: [u8; 4] = *b"SPTC";
const COOKIE_LEN: usize = 24;

/// The fields a responder puts in its State Cookie so it needs no state before COOKIE-ECHO.
///
/// Layout: magic, local tag, peer tag, local port, peer port, issue time (seconds since the
/// responder started), seal. The seal is a CRC32c over a per-responder random secret and the
/// fields: it rejects cookies the responder did not issue, but it is no cryptographic MAC (the
/// lab needs an honest peer's handshake, not protection from an attacker).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct StateCookie {
    local_tag: u32,
    peer_tag: u32,
    local_port: u16,
    peer_port: u16,
    issued_at: u32,
}

impl StateCookie {
    fn fields(&self) -> [u8; COOKIE_LEN - 4] {
        let mut fields = [0; COOKIE_LEN - 4];
        fields[0..4].copy_from_slice(&COOKIE_MAGIC);
        fields[4..8].copy_from_slice(&self.local_tag.to_be_bytes());
        fields[8..12].copy_from_slice(&self.peer_tag.to_be_bytes());
        fields[12..14].copy_from_slice(&self.local_port.to_be_bytes());
        fields[14..16].copy_from_slice(&self.peer_port.to_be_bytes());
        fields[16..20].copy_from_slice(&self.issued_at.to_be_bytes());
        fields
    }

    fn seal(fields: &[u8], secret: &[u8]) -> u32 {
        crc32c::crc32c_append(crc32c::crc32c(secret), fields)
    }

    fn encode(&self, secret: &[u8]) -> Vec<u8> {
        let fields = self.fields();
        let mut cookie = fields.to_vec();
        cookie.extend_from_slice(&Self::seal(&fields, secret).to_be_bytes());
        cookie
    }

    fn decode(cookie: &[u8], secret: &[u8]) -> Option<Self> {
        let cookie: &[u8; COOKIE_LEN] = cookie.try_into().ok()?;
        let (fields, seal) = cookie.split_at(COOKIE_LEN - 4);
        if fields.get(..4)? != COOKIE_MAGIC || be_u32(seal, 0)? != Self::seal(fields, secret) {
            return None;
        }
        Some(Self {
            local_tag: be_u32(fields, 4)?,
            peer_tag: be_u32(fields, 8)?,
            local_port: be_u16(fields, 12)?,
            peer_port: be_u16(fields, 14)?,
            issued_at: be_u32(fields, 16)?,
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct AssociationKey {
    peer: IpAddr,
    peer_port: u16,
    local_port: u16,
    local_tag: u32,
}

#[derive(Clone, Copy, Debug)]
struct Association {
    peer_tag: u32,
    established: Instant,
}

/// The server side of SCTP for a set of ports: given one received packet, the packet a real
/// stack would send back, if any.
///
/// - INIT to a served port: INIT-ACK with a State Cookie; no state is kept yet.
/// - INIT to any other port: ABORT with the INIT's Initiate Tag and the T bit clear, as RFC 9260
///   §8.4 item 3 requires for an INIT that cannot be processed (and as Linux does).
/// - COOKIE-ECHO with a cookie this responder issued: COOKIE-ACK; the association is remembered.
/// - In an association: SHUTDOWN gets SHUTDOWN-ACK, HEARTBEAT gets HEARTBEAT-ACK, ABORT and
///   SHUTDOWN COMPLETE end it. DATA is not acknowledged (probes send none).
/// - Out of the blue on a served port (§8.4): SHUTDOWN-ACK gets SHUTDOWN COMPLETE, most other
///   chunks get ABORT, both with the tag reflected.
/// - Anything else to an unserved port is ignored: it may belong to a probe of this namespace.
#[derive(Debug)]
pub struct Responder {
    served: BTreeSet<u16>,
    secret: [u8; 16],
    started: Instant,
    associations: HashMap<AssociationKey, Association>,
}

impl Responder {
    /// A responder serving `ports`.
    pub fn new(ports: impl IntoIterator<Item = u16>) -> Self {
        Self {
            served: ports.into_iter().collect(),
            secret: rand::random(),
            started: Instant::now(),
            associations: HashMap::new(),
        }
    }

    /// Whether `port` is served.
    pub fn serves(&self, port: u16) -> bool {
        self.served.contains(&port)
    }

    /// Number of established associations remembered.
    pub fn associations(&self) -> usize {
        self.associations.len()
    }

    /// The answer to `packet`, received from `peer` at `now`, if one is due.
    pub fn respond(&mut self, peer: IpAddr, packet: &Packet, now: Instant) -> Option<Packet> {
        let reply = |verification_tag, chunks| Packet {
            source_port: packet.destination_port,
            destination_port: packet.source_port,
            verification_tag,
            chunks,
        };
        let abort = |tag_reflected| Chunk::Abort {
            tag_reflected,
            error_causes: Vec::new(),
        };
        let vtag = packet.verification_tag;
        // §8.5.1 A: a packet with tag 0 must be a lone INIT; anything else is discarded.
        if vtag == 0 {
            let [Chunk::Init(init)] = packet.chunks.as_slice() else {
                return None;
            };
            if !self.serves(packet.destination_port)
                || init.outbound_streams == 0
                || init.inbound_streams == 0
            {
                return Some(reply(init.initiate_tag, vec![abort(false)]));
            }
            return Some(reply(
                init.initiate_tag,
                vec![self.init_ack(packet, init, now)],
            ));
        }
        if !self.serves(packet.destination_port) {
            return None;
        }
        if let Some(Chunk::CookieEcho { cookie }) = packet.chunks.first() {
            return self.cookie_echo(peer, packet, cookie, now);
        }
        if let Some(Chunk::Abort {
            tag_reflected: true,
            ..
        }) = packet.chunks.first()
        {
            // A reflected tag is the peer's own; find the association by that.
            self.associations.retain(|key, association| {
                !(key.peer == peer
                    && key.peer_port == packet.source_port
                    && key.local_port == packet.destination_port
                    && association.peer_tag == vtag)
            });
            return None;
        }
        let key = AssociationKey {
            peer,
            peer_port: packet.source_port,
            local_port: packet.destination_port,
            local_tag: vtag,
        };
        let Some(association) = self.associations.get(&key).copied() else {
            return match packet.chunks.first()? {
                Chunk::ShutdownAck => Some(reply(
                    vtag,
                    vec![Chunk::ShutdownComplete {
                        tag_reflected: true,
                    }],
                )),
                // §8.4: these are discarded out of the blue. INIT-ACK too, as Linux does for a
                // port it has no client on: it may be a local probe's that picked this port.
                Chunk::Abort { .. }
                | Chunk::ShutdownComplete { .. }
                | Chunk::CookieAck
                | Chunk::InitAck { .. }
                | Chunk::Init(_) => None,
                Chunk::Other { chunk_type, .. } if *chunk_type == chunk_type::ERROR => None,
                _ => Some(reply(vtag, vec![abort(true)])),
            };
        };
        let mut answers = Vec::new();
        for chunk in &packet.chunks {
            match chunk {
                Chunk::Abort { .. } | Chunk::ShutdownComplete { .. } => {
                    self.associations.remove(&key);
                    return None;
                }
                Chunk::Shutdown { .. } => answers.push(Chunk::ShutdownAck),
                Chunk::Heartbeat { info } => {
                    answers.push(Chunk::HeartbeatAck { info: info.clone() })
                }
                _ => {}
            }
        }
        (!answers.is_empty()).then(|| reply(association.peer_tag, answers))
    }

    fn init_ack(&self, packet: &Packet, init: &InitChunk, now: Instant) -> Chunk {
        let local_tag = nonzero_tag();
        let cookie = StateCookie {
            local_tag,
            peer_tag: init.initiate_tag,
            local_port: packet.destination_port,
            peer_port: packet.source_port,
            issued_at: self.seconds_since_start(now),
        };
        Chunk::InitAck {
            init: InitChunk {
                initiate_tag: local_tag,
                advertised_receiver_window: 106_496,
                outbound_streams: RESPONDER_STREAMS.min(init.inbound_streams),
                inbound_streams: RESPONDER_STREAMS,
                initial_tsn: rand::random(),
            },
            state_cookie: cookie.encode(&self.secret),
        }
    }

    fn cookie_echo(
        &mut self,
        peer: IpAddr,
        packet: &Packet,
        cookie: &[u8],
        now: Instant,
    ) -> Option<Packet> {
        let cookie = StateCookie::decode(cookie, &self.secret)?;
        let age = self
            .seconds_since_start(now)
            .checked_sub(cookie.issued_at)?;
        if u64::from(age) > COOKIE_LIFETIME.as_secs()
            || cookie.local_tag != packet.verification_tag
            || cookie.local_port != packet.destination_port
            || cookie.peer_port != packet.source_port
        {
            return None;
        }
        if self.associations.len() >= MAX_ASSOCIATIONS {
            self.forget_stalest();
        }
        let key = AssociationKey {
            peer,
            peer_port: cookie.peer_port,
            local_port: cookie.local_port,
            local_tag: cookie.local_tag,
        };
        // A repeated COOKIE-ECHO (our COOKIE-ACK was lost) is answered again.
        self.associations.entry(key).or_insert(Association {
            peer_tag: cookie.peer_tag,
            established: now,
        });
        Some(Packet {
            source_port: packet.destination_port,
            destination_port: packet.source_port,
            verification_tag: cookie.peer_tag,
            chunks: vec![Chunk::CookieAck],
        })
    }

    fn forget_stalest(&mut self) {
        if let Some(stalest) = self
            .associations
            .iter()
            .min_by_key(|(_, association)| association.established)
            .map(|(key, _)| *key)
        {
            self.associations.remove(&stalest);
        }
    }

    fn seconds_since_start(&self, now: Instant) -> u32 {
        let seconds = now.saturating_duration_since(self.started).as_secs();
        u32::try_from(seconds).unwrap_or(u32::MAX)
    }
}
