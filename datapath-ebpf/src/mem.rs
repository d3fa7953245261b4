//! Stores and keys shaped for the BPF target, which lowers a `memset`, and a `memcpy` it cannot
//! prove aligned, to a call of a byte-at-a-time loop (five instructions per byte): a new flow
//! paid several of those, each over a 16-byte address or a run of zeroed fields.

use aya_ebpf::maps::lpm_trie::Key;
use septum_datapath_common::{CtKey, IpPrefixData};

/// `*p = v` as one store. Volatile, so that LLVM cannot merge neighbouring zero stores into a
/// `memset` call.
#[inline(always)]
pub(crate) fn put<T: Copy>(p: &mut T, v: T) {
    // SAFETY: `p` is a valid, aligned, exclusive reference.
    unsafe { core::ptr::write_volatile(p, v) }
}

/// Which address of a tuple.
#[derive(Clone, Copy)]
pub(crate) enum End {
    Source,
    Destination,
}

/// An address of `key` as four words, in packet byte order.
#[inline(always)]
pub(crate) fn words(key: &CtKey, end: End) -> [u32; 4] {
    let addr = match end {
        End::Source => &key.saddr,
        End::Destination => &key.daddr,
    };
    // SAFETY: CtKey is 8-byte aligned and its addresses sit at offsets 0 and 16, so `addr` is
    // 4-byte aligned; any 16 bytes are a valid [u32; 4].
    unsafe { *(addr as *const [u8; 16]).cast::<[u32; 4]>() }
}

/// [`IpPrefixData`] with word-aligned address words: the same 20 bytes.
#[repr(C, align(4))]
pub(crate) struct AddrKey {
    family: [u8; 4],
    addr: [u32; 4],
}

const _: () = assert!(size_of::<AddrKey>() == size_of::<IpPrefixData>());

impl AddrKey {
    /// The key of an address of `key`.
    #[inline(always)]
    pub(crate) fn new(key: &CtKey, end: End) -> Self {
        Self {
            family: [0, 0, 0, key.family],
            addr: words(key, end),
        }
    }

    #[inline(always)]
    pub(crate) fn as_key(&self) -> &IpPrefixData {
        // SAFETY: the same size and field offsets (family at 0, address at 4), IpPrefixData has
        // alignment 1, and every bit pattern is valid for both.
        unsafe { &*(self as *const Self).cast::<IpPrefixData>() }
    }
}

/// An LPM key over an address of full length (`lpm_trie::Key<IpPrefixData>`, which is packed),
/// built with word stores: the same 24 bytes.
#[repr(C, align(4))]
pub(crate) struct AddrLpmKey {
    prefix_len: u32,
    data: AddrKey,
}

const _: () = assert!(size_of::<AddrLpmKey>() == size_of::<Key<IpPrefixData>>());

impl AddrLpmKey {
    /// The full-length LPM key of an address of `key`.
    #[inline(always)]
    pub(crate) fn new(key: &CtKey, end: End) -> Self {
        Self {
            prefix_len: IpPrefixData::full_prefix_len(key.family),
            data: AddrKey::new(key, end),
        }
    }

    #[inline(always)]
    pub(crate) fn as_key(&self) -> &Key<IpPrefixData> {
        // SAFETY: the same size and field offsets (prefix length at 0 in native order, then the
        // IpPrefixData bytes), the packed Key has alignment 1, every bit pattern is valid.
        unsafe { &*(self as *const Self).cast::<Key<IpPrefixData>>() }
    }
}

/// Writes an address given as words in packet byte order (see [`words`]) into `dst`: four
/// for IPv6, the first one for IPv4 (the rest of `dst` stays as it was).
///
/// # Safety
/// `dst` is 4-byte aligned (a 16-byte address at a multiple of 4 in a struct aligned to 4 or
/// more).
#[inline(always)]
pub(crate) unsafe fn set_words(dst: &mut [u8; 16], addr: &[u32]) {
    let p = (dst as *mut [u8; 16]).cast::<u32>();
    for (i, w) in addr.iter().take(4).enumerate() {
        // SAFETY: the caller guarantees the alignment; at most four words, the 16 bytes of
        // `dst`. Volatile: plain stores would be merged back into a memcpy call.
        unsafe { p.add(i).write_volatile(*w) };
    }
}

/// Writes address `end` of `key` from words in packet byte order (see [`set_words`]).
#[inline(always)]
pub(crate) fn set_addr(key: &mut CtKey, end: End, addr: &[u32]) {
    let dst = match end {
        End::Source => &mut key.saddr,
        End::Destination => &mut key.daddr,
    };
    // SAFETY: CtKey is 8-byte aligned and its addresses sit at offsets 0 and 16.
    unsafe { set_words(dst, addr) };
}
