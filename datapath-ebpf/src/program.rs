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
//! - **Host**: the node (identity host) may always reach its pods.
//! - **Deny** is `TC_ACT_SHOT`, a silent drop: the peer sees a timeout, never a reset.

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT},
    macros::classifier,
    programs::TcContext,
};
use septum_datapath_common::{
    CONFIG_F_TRACE_FORWARDED, CT_F_EGRESS_DEFERRED, CT_F_EGRESS_EVALUATED, CT_F_PICKUP, Counter,
    DIRECTION_EGRESS, DIRECTION_INGRESS, DropReason, ENDPOINT_F_EGRESS_POLICY,
    ENDPOINT_F_INGRESS_POLICY, EVENT_F_EGRESS_DEFERRED, EVENT_F_FROM_HOST, EVENT_F_PICKUP,
    EVENT_F_REPLY, EndpointInfo, IDENTITY_HOST, IPCACHE_KIND_POD, POINT_FROM_POD, POINT_TO_POD,
    STATE_READY, Verdict,
};

use crate::{
    conntrack::{self, create_flow},
    events::{count, emit, finish_drop},
    maps::{SCRATCH, Scratch, config},
    parse::{Parsed, is_midstream_tcp, parse},
    policy::{self, endpoint, evaluate, ipcache},
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
    if conntrack::established(&s.pkt) {
        count(Counter::ConntrackHit);
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
        new_flow_from_pod(s, ifindex, ep)
    } else {
        new_flow_to_pod(s, ifindex, ep)
    }
}

#[inline(always)]
fn ifindex(ctx: &TcContext) -> u32 {
    // SAFETY: the context pointer is valid for the program's run.
    unsafe { (*ctx.skb.skb).ifindex }
}

/// A new flow leaving a pod: the pod's egress (deferred for a Service VIP), or, for mid-stream
/// TCP it denies, its ingress as the reply of a flow the peer opened.
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

    if policy::to_service(&pkt.key) {
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

/// A new flow entering a pod: the source's egress unless its `from_pod` decided it, and the
/// pod's ingress, or, for mid-stream TCP they deny, its egress as the reply of a flow it opened.
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
    if conntrack::egress_evaluated_at_source(&mut s.key, &pkt.key) {
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
