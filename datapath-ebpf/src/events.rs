//! What the datapath tells user space: flow events in the ring buffer (waking the reader only
//! at its wakeup mark), drop events folded to one per flow per interval, and the per-CPU counters.

use core::mem::size_of;

use aya_ebpf::bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP, TC_ACT_SHOT};
use septum_datapath_common::{Counter, EVENT_F_RELATED, FlowEvent, map_sizes};

use crate::{
    conntrack::now_ns,
    maps::{COUNTERS, DROP_EVENTS, EVENTS, config},
    mem::{End, set_words, words},
    parse::Packet,
    policy::FlowDecision,
};

/// Adds one to a datapath counter (per CPU; user space sums the CPUs).
#[inline(always)]
pub(crate) fn count(counter: Counter) {
    if let Some(v) = COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: per-CPU slot of this CPU; nothing else writes it concurrently.
        unsafe { *v += 1 };
    }
}

/// Drops silently, reporting at most one event per flow per configured interval.
#[inline(always)]
pub(crate) fn finish_drop(pkt: &Packet, d: &FlowDecision) -> i32 {
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
        emit(pkt, d, now);
    } else {
        count(Counter::DropEventsSuppressed);
    }
    TC_ACT_SHOT
}

/// One event's footprint in the ring: the record and its 8-byte header.
const EVENT_RECORD_BYTES: u64 = (size_of::<FlowEvent>() + 8) as u64;

/// Writes the flow event of `pkt` decided by `d` at `now` (ns, [`now_ns`]) to the ring buffer.
#[inline(always)]
pub(crate) fn emit(pkt: &Packet, d: &FlowDecision, now: u64) {
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
        (*ev).timestamp_ns = now;
        (*ev).ifindex = d.ifindex;
        (*ev).endpoint_id = d.endpoint_id;
        (*ev).src_identity = d.src_identity;
        (*ev).dst_identity = d.dst_identity;
        (*ev).egress_cookie = d.egress_cookie;
        (*ev).ingress_cookie = d.ingress_cookie;
        // Addresses as words: FlowEvent is 8-byte aligned and they sit at offsets 32 and 48.
        set_words(&mut (*ev).saddr, &words(&pkt.key, End::Source));
        set_words(&mut (*ev).daddr, &words(&pkt.key, End::Destination));
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
    let wakeup_mark =
        map_sizes::EVENTS_WAKEUP_BYTES..map_sizes::EVENTS_WAKEUP_BYTES + EVENT_RECORD_BYTES;
    let flags = if wakeup_mark.contains(&waiting) {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    slot.submit(flags as u64);
    count(Counter::EventsSent);
}
