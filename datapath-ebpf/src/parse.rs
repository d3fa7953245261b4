//! Packet parsing: Ethernet, IPv4 (options skipped), IPv6 with its extension headers, the L4
//! ports and TCP flags (TCP, UDP, SCTP), ICMP/ICMPv6 echo ids and the flow quoted by an ICMP
//! error, and fragments (a first fragment's ports remembered for the later ones).

use core::mem::size_of;

use aya_ebpf::programs::TcContext;
use septum_datapath_common::{
    CtKey, DropReason, FAMILY_IPV4, FAMILY_IPV6, FragEntry, FragKey, proto,
};

use crate::{
    maps::FRAGMENTS,
    mem::{End, set_addr},
};

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const IPV6_HLEN: usize = 40;
pub(crate) const MAX_IPV6_EXT_HEADERS: usize = 6;

pub(crate) use septum_datapath_common::tcp_flags::{
    ACK as TCP_ACK, FIN as TCP_FIN, RST as TCP_RST, SYN as TCP_SYN,
};

/// A parsed packet: its flow tuple and what the verdict needs.
pub(crate) struct Packet {
    pub(crate) key: CtKey,
    pub(crate) tcp_flags: u8,
    /// This is an ICMP error quoting a flow; `inner` is that flow's tuple as it was sent.
    pub(crate) icmp_error: bool,
    pub(crate) inner: CtKey,
    pub(crate) len: u32,
}

pub(crate) enum Parsed {
    Packet,
    /// Pass without inspection (non-IP, neighbour discovery).
    PassThrough,
    /// Drop with this reason (the tuple, as far as it was parsed, is in the packet).
    Drop(DropReason),
}

#[inline(always)]
fn ptr_at<T>(ctx: &TcContext, offset: usize) -> Option<*const T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *const T)
}

/// Direct packet access, for constant offsets (the verifier tracks those bounds checks).
#[inline(always)]
fn load<T: Copy>(ctx: &TcContext, offset: usize) -> Option<T> {
    // SAFETY: ptr_at checked that the whole T lies within the packet.
    ptr_at::<T>(ctx, offset).map(|p| unsafe { p.read_unaligned() })
}

/// L4 headers: direct access at the two common offsets (IPv4 without options, IPv6 without
/// extension headers), which the verifier can check, else the helper.
#[inline(always)]
fn load_l4<T: Copy>(ctx: &TcContext, offset: usize) -> Option<T> {
    const V4: usize = ETH_HLEN + 20;
    const V6: usize = ETH_HLEN + IPV6_HLEN;
    let direct = if offset == V4 {
        load::<T>(ctx, V4)
    } else if offset == V6 {
        load::<T>(ctx, V6)
    } else {
        None
    };
    // The helper also reaches data outside the linear area.
    direct.or_else(|| load_at(ctx, offset))
}

/// `bpf_skb_load_bytes`, for variable offsets (behind IPv4 options or IPv6 extension headers):
/// LLVM folds direct-access bounds checks at variable offsets into forms the verifier rejects.
#[inline(always)]
fn load_at<T: Copy>(ctx: &TcContext, offset: usize) -> Option<T> {
    ctx.load::<T>(offset).ok()
}

/// `W` 4-byte words of packet data at constant `offset`, direct access (bounds checked here,
/// which the verifier tracks). Each word is one 4-byte load (the packet need not be aligned for
/// it: the verifier allows unaligned packet access where the CPU does), where `read_unaligned`
/// would make LLVM load byte by byte. Words keep the packet's byte order.
#[inline(always)]
fn load_words<const W: usize>(ctx: &TcContext, offset: usize) -> Option<[u32; W]> {
    let p = ptr_at::<[u32; W]>(ctx, offset)? as *const u32;
    let mut out = [0u32; W];
    for (i, w) in out.iter_mut().enumerate() {
        // SAFETY: ptr_at checked that all W words lie within the packet; the instruction reads
        // those 4 bytes only.
        unsafe {
            core::arch::asm!(
                "{w} = *(u32 *)({p} + 0)",
                w = lateout(reg) *w,
                p = in(reg) p.add(i),
                options(nostack, readonly, preserves_flags),
            );
        }
    }
    Some(out)
}

/// Byte `i` of a header held as words in packet byte order.
#[inline(always)]
const fn byte<const W: usize>(words: &[u32; W], i: usize) -> u8 {
    words[i / 4].to_le_bytes()[i % 4]
}

/// Clears `key` to the empty tuple at `point`: five 8-byte stores. Written as volatile stores
/// because LLVM otherwise merges the field stores into a `memset`, which the BPF target lowers
/// to a call of a byte-at-a-time loop (38 iterations, on every packet).
#[inline(always)]
fn reset_key(key: &mut CtKey, point: u8) {
    const WORDS: usize = size_of::<CtKey>() / 8;
    const _: () = assert!(size_of::<CtKey>() % 8 == 0 && core::mem::align_of::<CtKey>() == 8);
    let words = (key as *mut CtKey).cast::<u64>();
    for i in 0..WORDS {
        // SAFETY: `key` is a live, 8-byte aligned CtKey of WORDS words (asserted above), and
        // every bit pattern is a valid CtKey (plain integers and byte arrays).
        unsafe { words.add(i).write_volatile(0) };
    }
    key.point = point;
}

/// Where the fragment stands, if the packet is one.
enum Fragment {
    None,
    First(u32),
    Later(u32),
}

/// Parses the packet into `pkt`, its tuple keyed by the attach `point`.
#[inline(always)]
pub(crate) fn parse(ctx: &TcContext, point: u8, pkt: &mut Packet) -> Parsed {
    reset_key(&mut pkt.key, point);
    pkt.tcp_flags = 0;
    pkt.icmp_error = false;
    pkt.len = ctx.len();
    let Some(eth_proto) = load::<[u8; 2]>(ctx, 12) else {
        return Parsed::PassThrough;
    };
    let eth_proto = u16::from_be_bytes(eth_proto);
    let (l4_off, fragment) = match eth_proto {
        ETH_P_IP => match load_words::<5>(ctx, ETH_HLEN)
            .and_then(|hdr| parse_ipv4(&hdr, ETH_HLEN, &mut pkt.key))
        {
            Some(v) => v,
            None => return Parsed::Drop(DropReason::Malformed),
        },
        ETH_P_IPV6 => match parse_ipv6(ctx, ETH_HLEN, &mut pkt.key) {
            Some(v) => v,
            None => return Parsed::Drop(DropReason::Malformed),
        },
        _ => return Parsed::PassThrough,
    };

    if let Fragment::Later(id) = fragment {
        let fkey = frag_key(&pkt.key, id);
        // SAFETY: the value is plain data copied out at once.
        match unsafe { FRAGMENTS.get(&fkey) } {
            Some(ports) => {
                pkt.key.sport = ports.sport;
                pkt.key.dport = ports.dport;
                return Parsed::Packet;
            }
            None => return Parsed::Drop(DropReason::FragmentUnknown),
        }
    }

    match parse_l4(ctx, l4_off, pkt) {
        L4::Ok => {}
        L4::NeighbourDiscovery => return Parsed::PassThrough,
        L4::Truncated => return Parsed::Drop(DropReason::Malformed),
    }

    if let Fragment::First(id) = fragment {
        let fkey = frag_key(&pkt.key, id);
        let ports = FragEntry {
            sport: pkt.key.sport,
            dport: pkt.key.dport,
        };
        // Best effort: if the map refuses, later fragments drop as unknown (fail closed).
        let _ = FRAGMENTS.insert(&fkey, &ports, 0);
    }
    Parsed::Packet
}

#[inline(always)]
fn frag_key(key: &CtKey, id: u32) -> FragKey {
    FragKey {
        saddr: key.saddr,
        daddr: key.daddr,
        id,
        protocol: key.protocol,
        family: key.family,
        _pad: [0; 2],
    }
}

/// Parses an IPv4 header (its first 20 bytes in `hdr`, as words in packet byte order, found at
/// `off`) into `key`; returns the L4 offset and fragment state.
#[inline(always)]
fn parse_ipv4(hdr: &[u32; 5], off: usize, key: &mut CtKey) -> Option<(usize, Fragment)> {
    let vihl = byte(hdr, 0);
    if vihl >> 4 != 4 {
        return None;
    }
    let ihl = ((vihl & 0x0f) as usize) * 4;
    if ihl < 20 {
        return None;
    }
    key.family = FAMILY_IPV4;
    key.protocol = byte(hdr, 9);
    set_addr(key, End::Source, &hdr[3..4]);
    set_addr(key, End::Destination, &hdr[4..5]);
    let frag = u16::from_be_bytes([byte(hdr, 6), byte(hdr, 7)]);
    let id = u16::from_be_bytes([byte(hdr, 4), byte(hdr, 5)]) as u32;
    let more_fragments = frag & 0x2000 != 0;
    let offset = frag & 0x1fff;
    let fragment = if offset != 0 {
        Fragment::Later(id)
    } else if more_fragments {
        Fragment::First(id)
    } else {
        Fragment::None
    };
    Some((off + ihl, fragment))
}

/// Parses an IPv6 header and its extension headers at `off` into `key`.
#[inline(always)]
fn parse_ipv6(ctx: &TcContext, off: usize, key: &mut CtKey) -> Option<(usize, Fragment)> {
    let hdr = load_words::<{ IPV6_HLEN / 4 }>(ctx, off)?;
    if byte(&hdr, 0) >> 4 != 6 {
        return None;
    }
    let mut next = byte(&hdr, 6);
    key.family = FAMILY_IPV6;
    set_addr(key, End::Source, &hdr[2..6]);
    set_addr(key, End::Destination, &hdr[6..10]);
    let mut l4 = off + IPV6_HLEN;
    let mut fragment = Fragment::None;
    let mut i = 0;
    while i < MAX_IPV6_EXT_HEADERS {
        match next {
            // hop-by-hop, routing, destination options: (len + 1) * 8 bytes
            0 | 43 | 60 => {
                let hdr: [u8; 2] = load_at(ctx, l4)?;
                next = hdr[0];
                l4 += (hdr[1] as usize + 1) * 8;
            }
            // fragment: 8 bytes
            44 => {
                let hdr: [u8; 8] = load_at(ctx, l4)?;
                next = hdr[0];
                let frag = u16::from_be_bytes([hdr[2], hdr[3]]);
                let id = u32::from_be_bytes([hdr[4], hdr[5], hdr[6], hdr[7]]);
                fragment = if frag >> 3 != 0 {
                    Fragment::Later(id)
                } else if frag & 1 != 0 {
                    Fragment::First(id)
                } else {
                    Fragment::None
                };
                l4 += 8;
                if let Fragment::Later(_) = fragment {
                    // No L4 header follows; the protocol is all we learn.
                    break;
                }
            }
            // authentication header: (len + 2) * 4 bytes
            51 => {
                let hdr: [u8; 2] = load_at(ctx, l4)?;
                next = hdr[0];
                l4 += (hdr[1] as usize + 2) * 4;
            }
            _ => break,
        }
        i += 1;
    }
    if matches!(next, 0 | 43 | 60 | 44 | 51) {
        if let Fragment::Later(_) = fragment {
        } else {
            // Still an extension header after the walk: too many to be a real packet.
            return None;
        }
    }
    key.protocol = next;
    Some((l4, fragment))
}

enum L4 {
    Ok,
    NeighbourDiscovery,
    Truncated,
}

#[inline(always)]
fn parse_l4(ctx: &TcContext, off: usize, pkt: &mut Packet) -> L4 {
    match pkt.key.protocol {
        proto::TCP => {
            let Some(hdr) = load_l4::<[u8; 14]>(ctx, off) else {
                return L4::Truncated;
            };
            pkt.key.sport = u16::from_be_bytes([hdr[0], hdr[1]]);
            pkt.key.dport = u16::from_be_bytes([hdr[2], hdr[3]]);
            pkt.tcp_flags = hdr[13];
        }
        proto::UDP | proto::SCTP => {
            let Some(ports) = load_l4::<[u8; 4]>(ctx, off) else {
                return L4::Truncated;
            };
            pkt.key.sport = u16::from_be_bytes([ports[0], ports[1]]);
            pkt.key.dport = u16::from_be_bytes([ports[2], ports[3]]);
        }
        proto::ICMP | proto::ICMPV6 => {
            let Some(hdr) = load_l4::<[u8; 8]>(ctx, off) else {
                return L4::Truncated;
            };
            let ty = hdr[0];
            let id = u16::from_be_bytes([hdr[4], hdr[5]]);
            let v6 = pkt.key.protocol == proto::ICMPV6;
            let (echo_request, echo_reply, error) = if v6 {
                (ty == 128, ty == 129, matches!(ty, 1..=4))
            } else {
                (ty == 8, ty == 0, matches!(ty, 3 | 11 | 12))
            };
            // Neighbour discovery (133-137) and multicast listener discovery (130-132, 143).
            if v6 && matches!(ty, 130..=137 | 143) {
                return L4::NeighbourDiscovery;
            }
            // Echo "ports": the request's id is its source port, so the reply (0, id) is the
            // reversed tuple of the request (id, 0).
            if echo_request {
                pkt.key.sport = id;
            } else if echo_reply {
                pkt.key.dport = id;
            } else if error && parse_inner(ctx, off + 8, pkt) {
                pkt.icmp_error = true;
            }
        }
        _ => {}
    }
    L4::Ok
}

/// Parses the IP header quoted in an ICMP error into `pkt.inner`. Best effort: on failure the
/// error is an ordinary new flow.
#[inline(always)]
fn parse_inner(ctx: &TcContext, off: usize, pkt: &mut Packet) -> bool {
    let inner = &mut pkt.inner;
    reset_key(inner, 0);
    let l4 = if pkt.key.family == FAMILY_IPV4 {
        let Some(hdr) = load_at::<[u32; 5]>(ctx, off) else {
            return false;
        };
        match parse_ipv4(&hdr, off, inner) {
            Some((l4, Fragment::None | Fragment::First(_))) => l4,
            _ => return false,
        }
    } else {
        let Some(hdr) = load_at::<[u32; IPV6_HLEN / 4]>(ctx, off) else {
            return false;
        };
        inner.family = FAMILY_IPV6;
        inner.protocol = byte(&hdr, 6);
        set_addr(inner, End::Source, &hdr[2..6]);
        set_addr(inner, End::Destination, &hdr[6..10]);
        off + IPV6_HLEN
    };
    let Some(hdr) = load_at::<[u8; 8]>(ctx, l4) else {
        return false;
    };
    match inner.protocol {
        proto::TCP | proto::UDP | proto::SCTP => {
            inner.sport = u16::from_be_bytes([hdr[0], hdr[1]]);
            inner.dport = u16::from_be_bytes([hdr[2], hdr[3]]);
        }
        proto::ICMP | proto::ICMPV6 => {
            let request = if inner.protocol == proto::ICMP {
                8
            } else {
                128
            };
            if hdr[0] != request {
                return false;
            }
            inner.sport = u16::from_be_bytes([hdr[4], hdr[5]]);
        }
        _ => {}
    }
    true
}

/// A TCP segment without SYN. Netfilter maps a TCP connection's ports on its SYN, so a marked
/// one of a node-local flow passes `to_pod` without a lookup: the fast path of established
/// node-local TCP (see [`crate::conntrack::local_reply_tracked`]). Not covered: netfilter
/// picking a connection up mid-stream after its own entry expired, with a clashing tuple.
#[inline(always)]
pub(crate) fn tcp_without_syn(pkt: &Packet) -> bool {
    pkt.key.protocol == proto::TCP && pkt.tcp_flags & TCP_SYN == 0
}

/// A TCP segment with ACK and without SYN: part of a connection already under way.
#[inline(always)]
pub(crate) fn is_midstream_tcp(pkt: &Packet) -> bool {
    pkt.key.protocol == proto::TCP && pkt.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_ACK
}
