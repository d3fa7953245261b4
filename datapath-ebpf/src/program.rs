//! The enforcement path, packet in, verdict out: the entry points and the flow through the other
//! modules ([`parse`](crate::parse), [`conntrack`](crate::conntrack), [`policy`](crate::policy),
//! [`events`](crate::events); every map is in [`maps`](crate::maps)).
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
//!   walked (at most [`MAX_IPV6_EXT_HEADERS`](crate::parse::MAX_IPV6_EXT_HEADERS)); more than that is treated as malformed and dropped.
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
//! - **Node-local flows** (the destination address is a local pod's in the ipcache,
//!   `IPCACHE_KIND_LOCAL_POD`, and one of this node's endpoints' in the local addresses map,
//!   that endpoint ready; not a Service VIP, not mid-stream TCP) are decided whole at the
//!   source's `from_pod`: the source's egress and the destination's ingress (in the
//!   destination's mode), one pair of conntrack entries both keyed at `from_pod` and one flow
//!   event carrying both sides. Every packet of such a flow leaves `from_pod` with
//!   [`SKB_MARK_NODE_LOCAL`] in `skb->mark` and the destination pod's host ifindex handed over
//!   in `tc_index` (kept in the flow's entries), and the destination's `to_pod` passes it at
//!   once after checking that it was received from an interface (a veth clears the mark when a
//!   packet leaves a pod's namespace; a locally generated packet has no ingress interface) and
//!   was decided for this pod: the handed-over ifindex is its own, or, when none was handed
//!   over, the packet is addressed to its pod. A packet decided for another pod (the host
//!   redirected it, a DNAT to another pod) is decided here like any other, and so is one whose
//!   ports the host rewrote on the way (netfilter's NAT clash resolution remaps a source port):
//!   a marked packet that could start a netfilter connection (a TCP SYN, any non-TCP packet)
//!   passes only when the flow's entries at `from_pod` know its tuple as `to_pod` sees it, one
//!   lookup; a TCP segment without SYN passes without one. Should the mark be
//!   lost on the way, `to_pod` finds the flow's local entry and passes it all the same. The
//!   destination's `to_pod` reports nothing for such a flow, except when the host rewrote its
//!   ports: then it decides, tracks and reports the tuple it sees, as for a remote source.
//! - **Host**: the node (identity host) may always reach its pods.
//! - **Deny** is `TC_ACT_SHOT`, a silent drop: the peer sees a timeout, never a reset.

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT},
    macros::classifier,
    programs::TcContext,
};
use septum_datapath_common::{
    CONFIG_F_TRACE_FORWARDED, CT_F_EGRESS_DEFERRED, CT_F_EGRESS_EVALUATED, CT_F_LOCAL, CT_F_PICKUP,
    Counter, DIRECTION_EGRESS, DIRECTION_INGRESS, DropReason, ENDPOINT_F_EGRESS_POLICY,
    ENDPOINT_F_INGRESS_POLICY, EVENT_F_EGRESS_DEFERRED, EVENT_F_FROM_HOST, EVENT_F_NODE_LOCAL,
    EVENT_F_PICKUP, EVENT_F_REPLY, EndpointInfo, IDENTITY_HOST, IPCACHE_KIND_LOCAL_POD,
    POINT_FROM_POD, POINT_TO_POD, SKB_MARK_MASK, SKB_MARK_NODE_LOCAL, STATE_READY, Verdict,
    is_pod_kind,
};

use crate::{
    conntrack::{self, create_flow, now_ns},
    events::{count, emit, finish_drop},
    maps::{SCRATCH, Scratch, config},
    mem::End,
    parse::{Parsed, is_midstream_tcp, parse, tcp_without_syn},
    policy::{self, endpoint, evaluate, ipcache, local_endpoint},
};

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

/// One packet at `point`: parse, then a known flow passes at once, else the new flow is decided.
#[inline(always)]
fn process(ctx: &TcContext, point: u8) -> i32 {
    count(if point == POINT_FROM_POD {
        Counter::PacketsFromPod
    } else {
        Counter::PacketsToPod
    });
    if point == POINT_FROM_POD {
        // Nothing handed over unless this packet is marked below (`tc_classid` is scratch
        // space the kernel does not clear; what is left there would become `tc_index`).
        hand_over(ctx, 0);
    }
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

    // A node-local flow that the source's from_pod decided, for this pod: nothing more to do
    // here. Decided for another pod (the host redirected it since): decided here instead. So is
    // a packet whose ports the host rewrote on the way (below).
    if point == POINT_TO_POD && marked_node_local(ctx) {
        let me = ifindex(ctx);
        let for_this_pod = match handed_over(ctx) {
            // Not handed over: the address says whom it was decided for.
            0 => for_me(&s.pkt, me),
            to => to == me,
        };
        if for_this_pod && (tcp_without_syn(&s.pkt) || conntrack::local_reply_tracked(s)) {
            count(Counter::NodeLocalPassed);
            return TC_ACT_OK;
        }
    }

    // Fast path: one lookup for every packet of a known flow, either way.
    if let Some((flags, local_ifindex)) = conntrack::established(&s.pkt) {
        count(Counter::ConntrackHit);
        if flags & CT_F_LOCAL != 0 {
            mark_node_local(ctx, local_ifindex);
        }
        return TC_ACT_OK;
    }

    if s.pkt.icmp_error && conntrack::related(s, point) {
        count(Counter::IcmpRelated);
        return TC_ACT_OK;
    }

    count(Counter::NewFlows);
    let ifindex = ifindex(ctx);
    let ep = endpoint(ifindex);
    if point == POINT_FROM_POD {
        new_flow_from_pod(ctx, s, ifindex, ep)
    } else {
        new_flow_to_pod(ctx, s, ifindex, ep)
    }
}

#[inline(always)]
fn ifindex(ctx: &TcContext) -> u32 {
    // SAFETY: the context pointer is valid for the program's run.
    unsafe { (*ctx.skb.skb).ifindex }
}

/// Whether the packet carries [`SKB_MARK_NODE_LOCAL`] and was received from an interface
/// (only a from_pod can have set it then: a veth clears the mark when a packet leaves a pod's
/// namespace, and a host process's `SO_MARK` marks a locally generated packet, which has no
/// ingress interface).
#[inline(always)]
fn marked_node_local(ctx: &TcContext) -> bool {
    // SAFETY: the context pointer is valid for the program's run.
    let (mark, ingress) = unsafe { ((*ctx.skb.skb).mark, (*ctx.skb.skb).ingress_ifindex) };
    mark & SKB_MARK_MASK == SKB_MARK_NODE_LOCAL && ingress != 0
}

/// Marks the packet as one of a node-local flow decided here for the pod behind host
/// interface `to`, and hands `to` over: the kernel copies `tc_classid` into `skb->tc_index`
/// when the program passes the packet (an ifindex above 16 bits is not handed over, 0).
#[inline(always)]
fn mark_node_local(ctx: &TcContext, to: u32) {
    // SAFETY: the context pointer is valid for the program's run; TC programs may write
    // `mark` and `tc_classid`.
    unsafe {
        let skb = ctx.skb.skb;
        (*skb).mark = ((*skb).mark & !SKB_MARK_MASK) | SKB_MARK_NODE_LOCAL;
    }
    hand_over(ctx, if to <= u32::from(u16::MAX) { to } else { 0 });
}

/// Sets what the kernel copies into `skb->tc_index` when the program passes the packet.
#[inline(always)]
fn hand_over(ctx: &TcContext, to: u32) {
    // SAFETY: the context pointer is valid for the program's run; TC programs may write
    // `tc_classid`.
    unsafe { (*ctx.skb.skb).tc_classid = to };
}

/// The host ifindex a marked packet's `from_pod` handed over (see [`mark_node_local`]), 0 if
/// none.
#[inline(always)]
fn handed_over(ctx: &TcContext) -> u32 {
    // SAFETY: the context pointer is valid for the program's run.
    unsafe { (*ctx.skb.skb).tc_index }
}

/// Whether the packet is addressed to the pod behind `ifindex` (what the source's from_pod
/// decided its node-local flow for).
#[inline(always)]
fn for_me(pkt: &crate::parse::Packet, ifindex: u32) -> bool {
    local_endpoint(&pkt.key, End::Destination) == Some(ifindex)
}

/// A new flow leaving a pod: the pod's egress (deferred for a Service VIP) and, to a pod of this
/// node, that pod's ingress; or, for mid-stream TCP it denies, its ingress as the reply of a
/// flow the peer opened.
#[inline(always)]
fn new_flow_from_pod(
    ctx: &TcContext,
    s: &mut Scratch,
    ifindex: u32,
    ep: Option<&EndpointInfo>,
) -> i32 {
    let pkt = &s.pkt;
    let d = &mut s.decision;
    d.init(ifindex, ep);
    let Some(ep) = ep else {
        d.drop_hard(DropReason::UnknownEndpoint);
        return finish_drop(pkt, d);
    };
    d.src_identity = ep.identity;
    let peer = ipcache(&pkt.key, End::Destination);
    d.dst_identity = peer.identity;
    if ep.state != STATE_READY {
        d.drop_hard(DropReason::EndpointNotReady);
        return finish_drop(pkt, d);
    }

    if policy::to_service(&pkt.key) {
        count(Counter::EgressDeferred);
        d.ct_flags |= CT_F_EGRESS_DEFERRED;
        d.event_flags |= EVENT_F_EGRESS_DEFERRED;
        return finish(ctx, s, false);
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

    // To a pod of this node: its ingress too, here. Only an address the ipcache knows as a pod
    // of this node's is looked up (another node's pod costs nothing more), and not when the
    // egress already drops it (the drop and its event are the same either way). Mid-stream TCP
    // takes the two-point path: each point may pick it up as the reply of a connection the
    // other end opened.
    if d.verdict != Verdict::Dropped
        && peer.kind == IPCACHE_KIND_LOCAL_POD
        && !is_midstream_tcp(pkt)
        && let Some(dst_ifindex) = local_endpoint(&pkt.key, End::Destination)
        && let Some(dst) = endpoint(dst_ifindex)
        && dst.state == STATE_READY
    {
        return new_local_flow(ctx, s, dst_ifindex, dst);
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
            return finish(ctx, s, true);
        }
    }
    finish(ctx, s, false)
}

/// A new node-local flow at its source's from_pod, its egress decided in `s.decision` (not a
/// drop): the destination `dst` (behind host interface `dst_ifindex`)'s ingress as its `to_pod`
/// would decide it (the node's addresses pass), in the destination's mode.
#[inline(always)]
fn new_local_flow(ctx: &TcContext, s: &mut Scratch, dst_ifindex: u32, dst: &EndpointInfo) -> i32 {
    count(Counter::NodeLocalDecided);
    let pkt = &s.pkt;
    let d = &mut s.decision;
    d.ct_flags |= CT_F_LOCAL;
    d.local_ifindex = dst_ifindex;
    d.event_flags |= EVENT_F_NODE_LOCAL;
    let src = ipcache(&pkt.key, End::Source);
    if src.identity == IDENTITY_HOST {
        d.event_flags |= EVENT_F_FROM_HOST;
    } else if dst.flags & ENDPOINT_F_INGRESS_POLICY != 0 {
        d.set_audit_mode(dst);
        let i = evaluate(
            dst.identity,
            DIRECTION_INGRESS,
            &src,
            &pkt.key,
            pkt.key.dport,
        );
        d.apply(&i, DIRECTION_INGRESS);
    }
    finish(ctx, s, false)
}

/// A new flow entering a pod: the source's egress unless its `from_pod` decided it, and the
/// pod's ingress, or, for mid-stream TCP they deny, its egress as the reply of a flow it opened.
#[inline(always)]
fn new_flow_to_pod(
    ctx: &TcContext,
    s: &mut Scratch,
    ifindex: u32,
    ep: Option<&EndpointInfo>,
) -> i32 {
    let pkt = &s.pkt;
    let d = &mut s.decision;
    d.init(ifindex, ep);
    let src = ipcache(&pkt.key, End::Source);
    d.src_identity = src.identity;
    if src.identity == IDENTITY_HOST {
        // The node may always reach its pods (kubelet probes).
        if let Some(ep) = ep {
            d.dst_identity = ep.identity;
        }
        d.event_flags |= EVENT_F_FROM_HOST;
        return finish(ctx, s, false);
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
    // or the source lives elsewhere; then it is decided here, after DNAT. A node-local flow that
    // from_pod decided whole, whose packet lost its mark on the way: passed as marked.
    let at_source = conntrack::source_entry_flags(&mut s.key, &pkt.key);
    if at_source & CT_F_LOCAL != 0 && for_me(pkt, ifindex) {
        count(Counter::NodeLocalPassed);
        return TC_ACT_OK;
    }
    if at_source & CT_F_EGRESS_EVALUATED != 0 {
        d.ct_flags |= CT_F_EGRESS_EVALUATED;
    } else if is_pod_kind(src.kind) {
        d.ct_flags |= CT_F_EGRESS_EVALUATED;
        d.event_flags |= EVENT_F_EGRESS_DEFERRED;
        // Only here is this pod's own address (its CIDR identity) needed: as the source's peer.
        let me = ipcache(&pkt.key, End::Destination);
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
            return finish(ctx, s, true);
        }
    }
    finish(ctx, s, false)
}

/// Passes or drops a new flow and reports it. With `pickup_reply`, the packet is the reply of a
/// flow its destination opened before enforcement started (decided in `s.reply`): the flow is
/// tracked in that orientation. A passed node-local flow's packet is marked for its `to_pod`.
#[inline(always)]
fn finish(ctx: &TcContext, s: &mut Scratch, pickup_reply: bool) -> i32 {
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
    // One clock read for the entries and the event.
    let now = now_ns();
    create_flow(s, pickup_reply, now);
    let d = if pickup_reply { &s.reply } else { &s.decision };
    if d.ct_flags & CT_F_LOCAL != 0 {
        mark_node_local(ctx, d.local_ifindex);
    }
    count(if d.verdict == Verdict::Audit {
        Counter::Audit
    } else {
        Counter::Forwarded
    });
    if config().flags & CONFIG_F_TRACE_FORWARDED != 0 || d.verdict == Verdict::Audit {
        emit(&s.pkt, d, now);
    }
    TC_ACT_OK
}
