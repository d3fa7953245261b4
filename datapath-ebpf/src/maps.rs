//! Every map of the object, and the per-CPU scratch memory.
//!
//! Map names come from `septum_datapath_common::map_names` (the loader checks each one's kernel
//! shape against its expectation); the loader pins them, not the object.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
};
use septum_datapath_common::{
    COUNTER_COUNT, CtEntry, CtKey, DatapathConfig, EndpointInfo, FragEntry, FragKey, IpCacheEntry,
    IpPrefixData, PolicyEntry, PolicyKeyData, ServiceEntry, ServiceKey, map_sizes,
};

use crate::{parse::Packet, policy::FlowDecision};

#[map(name = "septum_ep_v1")]
pub(crate) static ENDPOINTS: HashMap<u32, EndpointInfo> =
    HashMap::with_max_entries(map_sizes::ENDPOINTS, 0);

#[map(name = "septum_ipc_v1")]
pub(crate) static IPCACHE: LpmTrie<IpPrefixData, IpCacheEntry> =
    LpmTrie::with_max_entries(map_sizes::IPCACHE, 0);

#[map(name = "septum_pol_v1")]
pub(crate) static POLICY: LpmTrie<PolicyKeyData, PolicyEntry> =
    LpmTrie::with_max_entries(map_sizes::POLICY, 0);

#[map(name = "septum_svc_v1")]
pub(crate) static SERVICES: HashMap<ServiceKey, ServiceEntry> =
    HashMap::with_max_entries(map_sizes::SERVICES, 0);

#[map(name = "septum_ct_v2")]
pub(crate) static CONNTRACK: LruHashMap<CtKey, CtEntry> =
    LruHashMap::with_max_entries(map_sizes::CONNTRACK, 0);

#[map(name = "septum_frag_v1")]
pub(crate) static FRAGMENTS: LruHashMap<FragKey, FragEntry> =
    LruHashMap::with_max_entries(map_sizes::FRAGMENTS, 0);

#[map(name = "septum_drl_v1")]
pub(crate) static DROP_EVENTS: LruHashMap<CtKey, u64> =
    LruHashMap::with_max_entries(map_sizes::DROP_EVENTS, 0);

#[map(name = "septum_evt_v1")]
pub(crate) static EVENTS: RingBuf = RingBuf::with_byte_size(map_sizes::EVENTS_BYTES, 0);

#[map(name = "septum_cnt_v1")]
pub(crate) static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_COUNT, 0);

#[map(name = "septum_cfg_v1")]
pub(crate) static CONFIG: Array<DatapathConfig> = Array::with_max_entries(1, 0);

#[map(name = "septum_lip_v1")]
pub(crate) static LOCAL_ADDRS: HashMap<IpPrefixData, u32> =
    HashMap::with_max_entries(map_sizes::LOCAL_ADDRS, 0);

/// Per-CPU working memory: the BPF stack (512 bytes) cannot hold a packet's tuples, two
/// decisions and two conntrack entries at once. Not part of the pinned layout.
#[map(name = "septum_scratch")]
pub(crate) static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

pub(crate) struct Scratch {
    pub(crate) pkt: Packet,
    pub(crate) decision: FlowDecision,
    /// The other orientation's decision, for a mid-stream TCP packet that may be a reply.
    pub(crate) reply: FlowDecision,
    pub(crate) ct_forward: CtEntry,
    pub(crate) ct_reply: CtEntry,
    /// A conntrack key built here rather than on the stack.
    pub(crate) key: CtKey,
}

/// The datapath configuration the agent wrote, or the defaults before it has.
#[inline(always)]
pub(crate) fn config() -> DatapathConfig {
    match CONFIG.get(0) {
        Some(c) => *c,
        None => DatapathConfig::default(),
    }
}
