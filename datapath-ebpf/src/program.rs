//! The enforcement path, packet in, verdict out.
//!
//! Per packet: parse (Ethernet, IPv4/IPv6 with extension headers, TCP/UDP/SCTP/ICMP/ICMPv6),
//! then one conntrack lookup. A hit is the fast path: count and pass. A miss is a new flow: look up
//! the endpoint and the peers' identities, evaluate policy, then either create the two conntrack
//! entries and pass, or drop silently. Both report a flow event.
//!
//! Deliberate choices:
//! - **Non-IP** (ARP) and **IPv6 neighbour and multicast listener discovery** pass uninspected:
//!   without them nothing works, and they carry no application data.
//! - **Fragments**: the first fragment carries the L4 header; its ports are remembered in an LRU
//!   map keyed by {addresses, fragment id, protocol}, and later fragments take them, so they get
//!   the verdict of their datagram's flow. A later fragment whose first fragment was never seen
//!   cannot be classified and is dropped (`fragment-unknown`), fail-closed.
//! - **IPv6 extension headers**: hop-by-hop, routing, destination options, fragment and AH are
//!   walked (at most [`MAX_IPV6_EXT_HEADERS`]); more than that is treated as malformed and dropped.
//! - **Malformed or truncated** IP packets are dropped (`malformed`).
//! - **ICMP errors** (unreachable, time exceeded, parameter problem, packet too big) pass when
//!   the flow they quote is tracked ("related"); otherwise they are a new flow like any other.
//! - **Mid-stream TCP** (no SYN, ACK set, no conntrack entry) is a connection that predates
//!   enforcement or whose entry was evicted. It is evaluated as a new flow; if that is denied, it is
//!   evaluated once more as the *reply* of a flow opened by the other side, so a connection opened
//!   before enforcement started keeps its replies.
//! - **Services**: at `from_pod`, a flow to a Service VIP is passed with its egress check
//!   deferred; kube-proxy then DNATs it, and the backend's `to_pod` evaluates the source identity's
//!   egress on the real backend address and port, together with the backend's ingress.
//! - **Host**: the node (identity host) may always reach its pods.
//! - **Deny** is `TC_ACT_SHOT`, a silent drop: the peer sees a timeout, never a reset.

use core::mem::size_of;

use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP, TC_ACT_OK, TC_ACT_SHOT},
    helpers::bpf_ktime_get_ns,
    macros::{classifier, map},
    maps::{
        Array, HashMap, LruHashMap, PerCpuArray, RingBuf,
        lpm_trie::{Key, LpmTrie},
    },
    programs::TcContext,
};
use septum_datapath_common::{
    ACTION_ALLOW, ACTION_AUDIT, ACTION_DENY, CONFIG_F_TRACE_FORWARDED, COUNTER_COUNT, CT_F_AUDIT,
    CT_F_CLOSING, CT_F_EGRESS_DEFERRED, CT_F_EGRESS_EVALUATED, CT_F_PICKUP, CT_F_REPLY, Counter,
    CtEntry, CtKey, DIRECTION_EGRESS, DIRECTION_INGRESS, DatapathConfig, DropReason,
    ENDPOINT_F_EGRESS_POLICY, ENDPOINT_F_INGRESS_POLICY, EVENT_F_DENIED_BY_EGRESS,
    EVENT_F_DENIED_BY_INGRESS, EVENT_F_EGRESS_DEFERRED, EVENT_F_FROM_HOST, EVENT_F_PICKUP,
    EVENT_F_RELATED, EVENT_F_REPLY, EndpointInfo, FAMILY_IPV4, FAMILY_IPV6, FlowEvent, FragEntry,
    FragKey, IDENTITY_HOST, IDENTITY_WORLD, IPCACHE_KIND_POD, IPCACHE_KIND_WORLD, IpCacheEntry,
    IpPrefixData, MODE_AUDIT, POINT_FROM_POD, POINT_TO_POD, POLICY_PREFIX_FULL,
    PRECEDENCE_DEFAULT_DENY, PolicyEntry, PolicyKeyData, STATE_READY, ServiceEntry, ServiceKey,
    Verdict, map_sizes, opposite_point, proto,
};

// ---------------------------------------------------------------------------------------------
// Maps (names from septum_datapath_common::map_names; pinned by the loader, not by the object)

#[map(name = "septum_ep_v1")]
static ENDPOINTS: HashMap<u32, EndpointInfo> = HashMap::with_max_entries(map_sizes::ENDPOINTS, 0);

#[map(name = "septum_ipc_v1")]
static IPCACHE: LpmTrie<IpPrefixData, IpCacheEntry> =
    LpmTrie::with_max_entries(map_sizes::IPCACHE, 0);

#[map(name = "septum_pol_v1")]
static POLICY: LpmTrie<PolicyKeyData, PolicyEntry> =
    LpmTrie::with_max_entries(map_sizes::POLICY, 0);

#[map(name = "septum_svc_v1")]
static SERVICES: HashMap<ServiceKey, ServiceEntry> =
    HashMap::with_max_entries(map_sizes::SERVICES, 0);

#[map(name = "septum_ct_v1")]
static CONNTRACK: LruHashMap<CtKey, CtEntry> =
    LruHashMap::with_max_entries(map_sizes::CONNTRACK, 0);

#[map(name = "septum_frag_v1")]
static FRAGMENTS: LruHashMap<FragKey, FragEntry> =
    LruHashMap::with_max_entries(map_sizes::FRAGMENTS, 0);

#[map(name = "septum_drl_v1")]
static DROP_EVENTS: LruHashMap<CtKey, u64> =
    LruHashMap::with_max_entries(map_sizes::DROP_EVENTS, 0);

#[map(name = "septum_evt_v1")]
static EVENTS: RingBuf = RingBuf::with_byte_size(map_sizes::EVENTS_BYTES, 0);

#[map(name = "septum_cnt_v1")]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_COUNT, 0);

#[map(name = "septum_cfg_v1")]
static CONFIG: Array<DatapathConfig> = Array::with_max_entries(1, 0);

/// Per-CPU working memory: the BPF stack (512 bytes) cannot hold a packet's tuples, two
/// decisions and two conntrack entries at once. Not part of the pinned layout.
#[map(name = "septum_scratch")]
static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

struct Scratch {
    pkt: Packet,
    decision: FlowDecision,
    reply: FlowDecision,
    ct_forward: CtEntry,
    ct_reply: CtEntry,
    key: CtKey,
}

// ---------------------------------------------------------------------------------------------
// Entry points

#[classifier]
pub fn from_pod(ctx: TcContext) -> i32 {
    process(&ctx, POINT_FROM_POD)
}

#[classifier]
pub fn to_pod(ctx: TcContext) -> i32 {
    process(&ctx, POINT_TO_POD)
}

/// An empty classifier: the baseline the benchmark compares the real programs with. Never
/// attached.
#[classifier]
pub fn bench_empty(_ctx: TcContext) -> i32 {
    TC_ACT_OK
}

// ---------------------------------------------------------------------------------------------
// Parsing

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const IPV6_HLEN: usize = 40;
const MAX_IPV6_EXT_HEADERS: usize = 6;

const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;

/// A parsed packet: its flow tuple and what the verdict needs.
struct Packet {
    key: CtKey,
    tcp_flags: u8,
    /// This is an ICMP error quoting a flow; `inner` is that flow's tuple as it was sent.
    icmp_error: bool,
    inner: CtKey,
    len: u32,
}

enum Parsed {
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

#[inline(always)]
fn reset_key(key: &mut CtKey, point: u8) {
    key.saddr = [0; 16];
    key.daddr = [0; 16];
    key.sport = 0;
    key.dport = 0;
    key.protocol = 0;
    key.family = 0;
    key.point = point;
    key._pad = 0;
}

/// Where the fragment stands, if the packet is one.
enum Fragment {
    None,
    First(u32),
    Later(u32),
}

#[inline(always)]
fn parse(ctx: &TcContext, point: u8, pkt: &mut Packet) -> Parsed {
    reset_key(&mut pkt.key, point);
    pkt.tcp_flags = 0;
    pkt.icmp_error = false;
    pkt.len = ctx.len();
    let Some(eth_proto) = load::<[u8; 2]>(ctx, 12) else {
        return Parsed::PassThrough;
    };
    let eth_proto = u16::from_be_bytes(eth_proto);
    let (l4_off, fragment) = match eth_proto {
        ETH_P_IP => match load::<[u8; 20]>(ctx, ETH_HLEN)
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

/// Parses an IPv4 header (its first 20 bytes in `hdr`, found at `off`) into `key`; returns
/// the L4 offset and fragment state.
#[inline(always)]
fn parse_ipv4(hdr: &[u8; 20], off: usize, key: &mut CtKey) -> Option<(usize, Fragment)> {
    let vihl = hdr[0];
    if vihl >> 4 != 4 {
        return None;
    }
    let ihl = ((vihl & 0x0f) as usize) * 4;
    if ihl < 20 {
        return None;
    }
    key.family = FAMILY_IPV4;
    key.protocol = hdr[9];
    key.saddr[0] = hdr[12];
    key.saddr[1] = hdr[13];
    key.saddr[2] = hdr[14];
    key.saddr[3] = hdr[15];
    key.daddr[0] = hdr[16];
    key.daddr[1] = hdr[17];
    key.daddr[2] = hdr[18];
    key.daddr[3] = hdr[19];
    let frag = u16::from_be_bytes([hdr[6], hdr[7]]);
    let id = u16::from_be_bytes([hdr[4], hdr[5]]) as u32;
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
    let hdr: [u8; IPV6_HLEN] = load(ctx, off)?;
    if hdr[0] >> 4 != 6 {
        return None;
    }
    let mut next = hdr[6];
    key.family = FAMILY_IPV6;
    key.saddr.copy_from_slice(&hdr[8..24]);
    key.daddr.copy_from_slice(&hdr[24..40]);
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
            } else if error {
                if parse_inner(ctx, off + 8, pkt) {
                    pkt.icmp_error = true;
                }
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
        let Some(hdr) = load_at::<[u8; 20]>(ctx, off) else {
            return false;
        };
        match parse_ipv4(&hdr, off, inner) {
            Some((l4, Fragment::None | Fragment::First(_))) => l4,
            _ => return false,
        }
    } else {
        let Some(hdr) = load_at::<[u8; IPV6_HLEN]>(ctx, off) else {
            return false;
        };
        inner.family = FAMILY_IPV6;
        inner.protocol = hdr[6];
        inner.saddr.copy_from_slice(&hdr[8..24]);
        inner.daddr.copy_from_slice(&hdr[24..40]);
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

// ---------------------------------------------------------------------------------------------
// Verdict

#[inline(always)]
fn count(counter: Counter) {
    if let Some(v) = COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: per-CPU slot of this CPU; nothing else writes it concurrently.
        unsafe { *v += 1 };
    }
}

#[inline(always)]
fn now_ns() -> u64 {
    // SAFETY: helper without preconditions.
    unsafe { bpf_ktime_get_ns() }
}

#[inline(always)]
fn config() -> DatapathConfig {
    match CONFIG.get(0) {
        Some(c) => *c,
        None => DatapathConfig::default(),
    }
}

#[inline(always)]
fn process(ctx: &TcContext, point: u8) -> i32 {
    count(if point == POINT_FROM_POD {
        Counter::PacketsFromPod
    } else {
        Counter::PacketsToPod
    });
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        return TC_ACT_SHOT;
    };
    // SAFETY: this CPU's slot, used by this program run only (TC programs do not nest on a CPU).
    let s = unsafe { &mut *scratch };
    match parse(ctx, point, &mut s.pkt) {
        Parsed::Packet => {}
        Parsed::PassThrough => {
            count(Counter::NonIp);
            return TC_ACT_OK;
        }
        Parsed::Drop(reason) => {
            let ifindex = ifindex(ctx);
            let ep = endpoint(ifindex);
            // Unclassifiable traffic on an endpoint that polices nothing is still its business.
            if let Some(ep) = ep
                && ep.state == STATE_READY
                && ep.flags & (ENDPOINT_F_INGRESS_POLICY | ENDPOINT_F_EGRESS_POLICY) == 0
            {
                return TC_ACT_OK;
            }
            s.decision.init(ifindex, ep);
            s.decision.drop_hard(reason);
            return finish_drop(&s.pkt, &s.decision);
        }
    }

    // Fast path: one lookup for every packet of a known flow, either way.
    if let Some(ct) = CONNTRACK.get_ptr_mut(&s.pkt.key) {
        // SAFETY: the map value stays valid for the program's run; concurrent writers only
        // race on statistics.
        let entry = unsafe { &mut *ct };
        let fresh_syn = s.pkt.key.protocol == proto::TCP
            && s.pkt.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN
            && entry.flags & CT_F_REPLY == 0;
        if !fresh_syn {
            touch(entry, &s.pkt);
            count(Counter::ConntrackHit);
            return TC_ACT_OK;
        }
        // A new SYN on a known tuple is a new connection (port reuse, or a retransmitted SYN):
        // evaluate it against the current policy.
    }

    if s.pkt.icmp_error {
        s.key = s.pkt.inner;
        s.key.point = opposite_point(point);
        if CONNTRACK.get_ptr(&s.key).is_some() {
            count(Counter::IcmpRelated);
            return TC_ACT_OK;
        }
    }

    count(Counter::NewFlows);
    let ifindex = ifindex(ctx);
    let ep = endpoint(ifindex);
    if point == POINT_FROM_POD {
        new_flow_from_pod(s, ifindex, ep)
    } else {
        new_flow_to_pod(s, ifindex, ep)
    }
}

/// `*p += v` as one BPF_ATOMIC_ADD instruction. Rust's core offers the BPF target atomic loads and
/// stores but no read-modify-write, so the instruction is written out.
///
/// # Safety
/// `p` points at a live, 8-byte aligned u64 (a map value field).
#[inline(always)]
unsafe fn atomic_add(p: *mut u64, v: u64) {
    // SAFETY: the caller guarantees `p`; the instruction touches those 8 bytes only.
    unsafe {
        core::arch::asm!(
            "lock *(u64 *)({p} + 0) += {v}",
            p = in(reg) p,
            v = in(reg) v,
            options(nostack),
        );
    }
}

#[inline(always)]
fn touch(entry: &mut CtEntry, pkt: &Packet) {
    // Coarse clock: last-seen needs jiffy precision, not a precise clock read per packet.
    // SAFETY: helper without preconditions.
    entry.last_seen_ns = unsafe { aya_ebpf::helpers::generated::bpf_ktime_get_coarse_ns() };
    // Atomic adds (BPF_ATOMIC_ADD, `lock *(u64 *)(r + off) += r`): two CPUs sending one flow at
    // once count into the same entry, and a plain add would lose increments (verdicts.rs shows
    // ~1% lost at 2 x 50k packets without it).
    // SAFETY: the fields are 8-byte aligned u64s in a live map value, accessed only through
    // atomics or plain reads of statistics.
    unsafe {
        atomic_add(&mut entry.packets, 1);
        atomic_add(&mut entry.bytes, pkt.len as u64);
    }
    if pkt.tcp_flags & !entry.tcp_flags != 0 {
        entry.tcp_flags |= pkt.tcp_flags;
        if pkt.tcp_flags & (TCP_FIN | TCP_RST) != 0 {
            entry.flags |= CT_F_CLOSING;
        }
    }
}

#[inline(always)]
fn ifindex(ctx: &TcContext) -> u32 {
    // SAFETY: the context pointer is valid for the program's run.
    unsafe { (*ctx.skb.skb).ifindex }
}

#[inline(always)]
fn endpoint(ifindex: u32) -> Option<&'static EndpointInfo> {
    // SAFETY: map values stay valid for the program's run. A reference, not a copy: a copied
    // Option lets LLVM read the (uninitialised) payload of None, which the verifier rejects.
    unsafe { ENDPOINTS.get(&ifindex) }
}

#[inline(always)]
fn ipcache(family: u8, addr: &[u8; 16]) -> IpCacheEntry {
    let key = Key::new(
        IpPrefixData::full_prefix_len(family),
        IpPrefixData::new(family, *addr),
    );
    match IPCACHE.get(&key) {
        Some(e) => *e,
        None => IpCacheEntry {
            identity: IDENTITY_WORLD,
            cidr_identity: 0,
            kind: IPCACHE_KIND_WORLD,
            _pad: [0; 3],
        },
    }
}

/// The outcome of evaluating one direction of policy.
#[derive(Clone, Copy)]
struct Decision {
    action: u8,
    precedence: u16,
    cookie: u32,
    matched: bool,
}

const NOT_POLICED: Decision = Decision {
    action: ACTION_ALLOW,
    precedence: 0,
    cookie: 0,
    matched: false,
};

#[inline(always)]
fn lookup_one(best: &mut Decision, subject: u32, direction: u8, peer: u32, pkt: &CtKey, port: u16) {
    let key = Key::new(
        POLICY_PREFIX_FULL,
        PolicyKeyData::new(subject, direction, peer, pkt.protocol, port),
    );
    if let Some(e) = POLICY.get(&key) {
        let better = !best.matched
            || septum_datapath_common::lpm::outranks(
                e.precedence,
                e.action,
                best.precedence,
                best.action,
            );
        if better {
            *best = Decision {
                action: e.action,
                precedence: e.precedence,
                cookie: e.cookie,
                matched: true,
            };
        }
    }
}

/// Evaluates `subject`'s policy in `direction` towards a peer (identity and CIDR identity) on
/// `port`: three lookups, highest precedence wins, deny beats audit beats allow.
#[inline(always)]
fn evaluate(subject: u32, direction: u8, peer: &IpCacheEntry, pkt: &CtKey, port: u16) -> Decision {
    let mut best = NOT_POLICED;
    // The contract's three lookups, in its order (`septum_datapath_common::lpm::peer_lookups`).
    for p in septum_datapath_common::lpm::peer_lookups(peer)
        .into_iter()
        .flatten()
    {
        lookup_one(&mut best, subject, direction, p, pkt, port);
    }
    best
}

#[inline(always)]
fn deny_reason(d: &Decision) -> DropReason {
    if d.precedence == PRECEDENCE_DEFAULT_DENY {
        DropReason::PolicyDefaultDeny
    } else {
        DropReason::PolicyDeny
    }
}

/// Everything a new flow's verdict and event need.
struct FlowDecision {
    ifindex: u32,
    endpoint_id: u32,
    audit_mode: bool,
    src_identity: u32,
    dst_identity: u32,
    egress_cookie: u32,
    ingress_cookie: u32,
    verdict: Verdict,
    reason: DropReason,
    event_flags: u8,
    ct_flags: u16,
}

impl FlowDecision {
    #[inline(always)]
    fn init(&mut self, ifindex: u32, ep: Option<&EndpointInfo>) {
        let (endpoint_id, audit_mode) = match ep {
            Some(ep) => (ep.endpoint_id, ep.mode == MODE_AUDIT),
            None => (0, false),
        };
        self.ifindex = ifindex;
        self.endpoint_id = endpoint_id;
        self.audit_mode = audit_mode;
        self.src_identity = 0;
        self.dst_identity = 0;
        self.egress_cookie = 0;
        self.ingress_cookie = 0;
        self.verdict = Verdict::Forwarded;
        self.reason = DropReason::None;
        self.event_flags = 0;
        self.ct_flags = 0;
    }

    #[inline(always)]
    fn drop(&mut self, reason: DropReason, event_flags: u8) {
        self.event_flags |= event_flags;
        if self.verdict == Verdict::Dropped {
            return;
        }
        self.reason = reason;
        if self.audit_mode {
            self.verdict = Verdict::Audit;
            self.ct_flags |= CT_F_AUDIT;
        } else {
            self.verdict = Verdict::Dropped;
        }
    }

    /// Drops regardless of audit mode: the endpoint is unknown or not ready, or the packet
    /// cannot be classified. Audit mode relaxes policy, never these.
    #[inline(always)]
    fn drop_hard(&mut self, reason: DropReason) {
        self.reason = reason;
        self.verdict = Verdict::Dropped;
    }

    /// Applies one direction's decision.
    #[inline(always)]
    fn apply(&mut self, d: &Decision, direction: u8) {
        let (cookie, flag) = if direction == DIRECTION_EGRESS {
            (&mut self.egress_cookie, EVENT_F_DENIED_BY_EGRESS)
        } else {
            (&mut self.ingress_cookie, EVENT_F_DENIED_BY_INGRESS)
        };
        *cookie = d.cookie;
        match d.action {
            ACTION_DENY => self.drop(deny_reason(d), flag),
            ACTION_AUDIT => {
                if self.verdict == Verdict::Forwarded {
                    self.verdict = Verdict::Audit;
                    self.reason = deny_reason(d);
                }
                self.event_flags |= flag;
                self.ct_flags |= CT_F_AUDIT;
            }
            _ => {}
        }
    }
}

#[inline(always)]
fn new_flow_from_pod(s: &mut Scratch, ifindex: u32, ep: Option<&EndpointInfo>) -> i32 {
    let pkt = &s.pkt;
    let d = &mut s.decision;
    d.init(ifindex, ep);
    let Some(ep) = ep else {
        d.drop_hard(DropReason::UnknownEndpoint);
        return finish_drop(pkt, d);
    };
    d.src_identity = ep.identity;
    let peer = ipcache(pkt.key.family, &pkt.key.daddr);
    d.dst_identity = peer.identity;
    if ep.state != STATE_READY {
        d.drop_hard(DropReason::EndpointNotReady);
        return finish_drop(pkt, d);
    }

    let svc = ServiceKey {
        addr: pkt.key.daddr,
        port: pkt.key.dport.to_be_bytes(),
        protocol: pkt.key.protocol,
        family: pkt.key.family,
    };
    // SAFETY: plain data.
    if unsafe { SERVICES.get(&svc) }.is_some() {
        count(Counter::EgressDeferred);
        d.ct_flags |= CT_F_EGRESS_DEFERRED;
        d.event_flags |= EVENT_F_EGRESS_DEFERRED;
        return finish(s, false);
    }

    d.ct_flags |= CT_F_EGRESS_EVALUATED;
    if ep.flags & ENDPOINT_F_EGRESS_POLICY != 0 {
        let e = evaluate(
            ep.identity,
            DIRECTION_EGRESS,
            &peer,
            &pkt.key,
            pkt.key.dport,
        );
        d.apply(&e, DIRECTION_EGRESS);
    }

    if d.verdict == Verdict::Dropped && is_midstream_tcp(pkt) {
        // Perhaps the reply of a connection the peer opened before enforcement: the pod's ingress
        // decides that one.
        let r = &mut s.reply;
        r.init(ifindex, Some(ep));
        r.src_identity = peer.identity;
        r.dst_identity = ep.identity;
        if ep.flags & ENDPOINT_F_INGRESS_POLICY != 0 {
            let i = evaluate(
                ep.identity,
                DIRECTION_INGRESS,
                &peer,
                &pkt.key,
                pkt.key.sport,
            );
            r.apply(&i, DIRECTION_INGRESS);
        }
        if r.verdict != Verdict::Dropped {
            return finish(s, true);
        }
    }
    finish(s, false)
}

#[inline(always)]
fn new_flow_to_pod(s: &mut Scratch, ifindex: u32, ep: Option<&EndpointInfo>) -> i32 {
    let pkt = &s.pkt;
    let d = &mut s.decision;
    d.init(ifindex, ep);
    let src = ipcache(pkt.key.family, &pkt.key.saddr);
    d.src_identity = src.identity;
    if src.identity == IDENTITY_HOST {
        // The node may always reach its pods (kubelet probes).
        if let Some(ep) = ep {
            d.dst_identity = ep.identity;
        }
        d.event_flags |= EVENT_F_FROM_HOST;
        return finish(s, false);
    }
    let Some(ep) = ep else {
        d.drop_hard(DropReason::UnknownEndpoint);
        return finish_drop(pkt, d);
    };
    d.dst_identity = ep.identity;
    if ep.state != STATE_READY {
        d.drop_hard(DropReason::EndpointNotReady);
        return finish_drop(pkt, d);
    }
    // The source's egress: done by a local source's from_pod unless it was deferred (Service VIP)
    // or the source lives elsewhere; then it is decided here, after DNAT.
    s.key = pkt.key;
    s.key.point = POINT_FROM_POD;
    let evaluated_at_source = match CONNTRACK.get_ptr(&s.key) {
        // SAFETY: plain data read at once.
        Some(e) => (unsafe { (*e).flags } & CT_F_EGRESS_EVALUATED) != 0,
        None => false,
    };
    if evaluated_at_source {
        d.ct_flags |= CT_F_EGRESS_EVALUATED;
    } else if src.kind == IPCACHE_KIND_POD {
        d.ct_flags |= CT_F_EGRESS_EVALUATED;
        d.event_flags |= EVENT_F_EGRESS_DEFERRED;
        // Only here is this pod's own address (its CIDR identity) needed: as the source's peer.
        let me = ipcache(pkt.key.family, &pkt.key.daddr);
        let e = evaluate(src.identity, DIRECTION_EGRESS, &me, &pkt.key, pkt.key.dport);
        d.apply(&e, DIRECTION_EGRESS);
    }

    if ep.flags & ENDPOINT_F_INGRESS_POLICY != 0 {
        let i = evaluate(
            ep.identity,
            DIRECTION_INGRESS,
            &src,
            &pkt.key,
            pkt.key.dport,
        );
        d.apply(&i, DIRECTION_INGRESS);
    }

    if d.verdict == Verdict::Dropped && is_midstream_tcp(pkt) {
        // Perhaps the reply of a connection the pod opened before enforcement: the pod's egress
        // decides that one.
        let r = &mut s.reply;
        r.init(ifindex, Some(ep));
        r.src_identity = ep.identity;
        r.dst_identity = src.identity;
        if ep.flags & ENDPOINT_F_EGRESS_POLICY != 0 {
            let e = evaluate(ep.identity, DIRECTION_EGRESS, &src, &pkt.key, pkt.key.sport);
            r.apply(&e, DIRECTION_EGRESS);
        }
        if r.verdict != Verdict::Dropped {
            r.ct_flags |= CT_F_EGRESS_EVALUATED;
            return finish(s, true);
        }
    }
    finish(s, false)
}

#[inline(always)]
fn is_midstream_tcp(pkt: &Packet) -> bool {
    pkt.key.protocol == proto::TCP && pkt.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_ACK
}

/// Passes or drops a new flow and reports it. With `pickup_reply`, the packet is the reply of a
/// flow its destination opened before enforcement started (decided in `s.reply`): the flow is
/// tracked in that orientation.
#[inline(always)]
fn finish(s: &mut Scratch, pickup_reply: bool) -> i32 {
    let d = if pickup_reply {
        s.reply.ct_flags |= CT_F_PICKUP;
        s.reply.event_flags |= EVENT_F_PICKUP | EVENT_F_REPLY;
        count(Counter::ConntrackPickup);
        &s.reply
    } else {
        &s.decision
    };
    if d.verdict == Verdict::Dropped {
        return finish_drop(&s.pkt, d);
    }
    create_flow(s, pickup_reply);
    let d = if pickup_reply { &s.reply } else { &s.decision };
    count(if d.verdict == Verdict::Audit {
        Counter::Audit
    } else {
        Counter::Forwarded
    });
    if config().flags & CONFIG_F_TRACE_FORWARDED != 0 || d.verdict == Verdict::Audit {
        emit(&s.pkt, d);
    }
    TC_ACT_OK
}

/// Writes both conntrack entries of the new flow. The packet at hand is counted on the entry it
/// matches: the forward one, or with `pickup_reply` the reply one.
#[inline(always)]
fn create_flow(s: &mut Scratch, pickup_reply: bool) {
    let now = now_ns();
    let d = if pickup_reply { &s.reply } else { &s.decision };
    let (fwd, rep) = (&mut s.ct_forward, &mut s.ct_reply);
    fwd.created_ns = now;
    fwd.last_seen_ns = now;
    fwd.src_identity = d.src_identity;
    fwd.dst_identity = d.dst_identity;
    fwd.egress_cookie = d.egress_cookie;
    fwd.ingress_cookie = d.ingress_cookie;
    fwd.flags = d.ct_flags;
    fwd._pad = [0; 5];
    *rep = *fwd;
    rep.flags |= CT_F_REPLY;
    let (counted, other) = if pickup_reply { (rep, fwd) } else { (fwd, rep) };
    counted.packets = 1;
    counted.bytes = s.pkt.len as u64;
    counted.tcp_flags = s.pkt.tcp_flags;
    other.packets = 0;
    other.bytes = 0;
    other.tcp_flags = 0;
    // The packet's own tuple, and the reversed one for the other way.
    s.key = s.pkt.key.reversed();
    if pickup_reply {
        let _ = CONNTRACK.insert(&s.key, &s.ct_forward, 0);
        let _ = CONNTRACK.insert(&s.pkt.key, &s.ct_reply, 0);
    } else {
        let _ = CONNTRACK.insert(&s.pkt.key, &s.ct_forward, 0);
        let _ = CONNTRACK.insert(&s.key, &s.ct_reply, 0);
    }
}

/// Drops silently, reporting at most one event per flow per configured interval.
#[inline(always)]
fn finish_drop(pkt: &Packet, d: &FlowDecision) -> i32 {
    count(Counter::Dropped);
    let interval = config().drop_event_interval_ns;
    let now = now_ns();
    let mut report = true;
    if interval != 0 {
        if let Some(last) = DROP_EVENTS.get_ptr_mut(&pkt.key) {
            // SAFETY: live map value; a lost race only costs one extra event.
            let last = unsafe { &mut *last };
            if now.wrapping_sub(*last) < interval {
                report = false;
            } else {
                *last = now;
            }
        } else {
            let _ = DROP_EVENTS.insert(&pkt.key, &now, 0);
        }
    }
    if report {
        emit(pkt, d);
    } else {
        count(Counter::DropEventsSuppressed);
    }
    TC_ACT_SHOT
}

/// One event's footprint in the ring: the record and its 8-byte header.
const EVENT_RECORD_BYTES: u64 = (size_of::<FlowEvent>() + 8) as u64;

#[inline(always)]
fn emit(pkt: &Packet, d: &FlowDecision) {
    let Some(mut slot) = EVENTS.reserve::<FlowEvent>(0) else {
        count(Counter::EventsLost);
        return;
    };
    let mut flags = d.event_flags;
    if pkt.icmp_error {
        flags |= EVENT_F_RELATED;
    }
    // Field by field into the ring: a FlowEvent built on the stack would not fit beside the rest.
    let ev = slot.as_mut_ptr();
    // SAFETY: `ev` points at a reserved, exclusively owned ring-buffer slot of FlowEvent's size.
    unsafe {
        (*ev).timestamp_ns = now_ns();
        (*ev).ifindex = d.ifindex;
        (*ev).endpoint_id = d.endpoint_id;
        (*ev).src_identity = d.src_identity;
        (*ev).dst_identity = d.dst_identity;
        (*ev).egress_cookie = d.egress_cookie;
        (*ev).ingress_cookie = d.ingress_cookie;
        (*ev).saddr = pkt.key.saddr;
        (*ev).daddr = pkt.key.daddr;
        (*ev).sport = pkt.key.sport;
        (*ev).dport = pkt.key.dport;
        (*ev).packet_len = pkt.len;
        (*ev).family = pkt.key.family;
        (*ev).protocol = pkt.key.protocol;
        (*ev).point = pkt.key.point;
        (*ev).verdict = d.verdict as u8;
        (*ev).drop_reason = d.reason as u8;
        (*ev).tcp_flags = pkt.tcp_flags;
        (*ev).flags = flags;
        (*ev)._pad = 0;
    }
    // Wake the reader only when the ring crosses the wakeup mark; below it the reader's own
    // poll timer collects the events (a wakeup per event is an interrupt and a context switch per
    // new flow). The reservation above already counts in the available data.
    let waiting = EVENTS.query(BPF_RB_AVAIL_DATA as u64);
    let flags = if waiting >= map_sizes::EVENTS_WAKEUP_BYTES
        && waiting < map_sizes::EVENTS_WAKEUP_BYTES + EVENT_RECORD_BYTES
    {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    slot.submit(flags as u64);
    count(Counter::EventsSent);
}
