//! Functions over the (protocol, port) space, kept as sorted segments per protocol, and the
//! split of port ranges into the aligned power-of-two blocks the policy LPM trie matches.
//!
//! Protocols other than TCP, UDP and SCTP (ICMP, ...) have no ports for policy purposes and
//! share one value, [`Segmented::other`].

use smallvec::{SmallVec, smallvec};

use crate::model::Protocol;

/// A part of the (protocol, port) space a rule selects.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PortSel {
    /// Every protocol and port.
    All,
    /// Every port of one protocol.
    Protocol(Protocol),
    /// An inclusive port range of one protocol.
    Range(Protocol, u16, u16),
}

/// The segments of one protocol: `(first port, value)`.
pub type Segments<T> = SmallVec<[(u16, T); 4]>;

/// A value for every (protocol, port): one per segment of each port-carrying protocol, plus one
/// for every other protocol. Normalized: adjacent segments hold different values.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Segmented<T> {
    /// Value for protocols without ports policies can name.
    pub other: T,
    /// For TCP, UDP, SCTP (by [`Protocol::index`]): `(first port, value)`, the first at port 0.
    /// Inline storage: policies rarely cut a protocol into more than a few segments, and the
    /// compiler builds millions of these.
    pub protos: [Segments<T>; 3],
}

impl<T: Copy + Eq> Segmented<T> {
    /// `v` everywhere.
    pub fn constant(v: T) -> Self {
        Self {
            other: v,
            protos: [smallvec![(0, v)], smallvec![(0, v)], smallvec![(0, v)]],
        }
    }

    /// Whether the value is the same everywhere.
    pub fn is_constant(&self) -> bool {
        self.protos
            .iter()
            .all(|s| s.len() == 1 && s[0].1 == self.other)
    }

    /// The value at one point. `protocol` is an IP protocol number.
    pub fn get(&self, protocol: u8, port: u16) -> T {
        match Protocol::from_number(protocol) {
            None => self.other,
            Some(p) => {
                let segs = &self.protos[p.index()];
                let i = segs.partition_point(|(start, _)| *start <= port);
                segs[i.saturating_sub(1)].1
            }
        }
    }

    /// `(first, last, value)` of every segment of one protocol.
    pub fn segments(&self, protocol: Protocol) -> Vec<(u16, u16, T)> {
        let segs = &self.protos[protocol.index()];
        segs.iter()
            .enumerate()
            .map(|(i, (start, v))| {
                let end = segs.get(i + 1).map_or(u16::MAX, |(s, _)| s - 1);
                (*start, end, *v)
            })
            .collect()
    }

    /// Sets `v` on the selected part.
    pub fn paint(&mut self, sel: PortSel, v: T) {
        match sel {
            PortSel::All => *self = Self::constant(v),
            PortSel::Protocol(p) => self.protos[p.index()] = smallvec![(0, v)],
            PortSel::Range(p, lo, hi) => {
                if lo > hi {
                    return;
                }
                let old = self.segments(p);
                let mut out: Segments<T> = SmallVec::with_capacity(old.len() + 2);
                let mut push = |start: u16, val: T| match out.last() {
                    Some((_, last)) if *last == val => {}
                    _ => out.push((start, val)),
                };
                for (s, e, val) in old {
                    if e < lo || s > hi {
                        push(s, val);
                        continue;
                    }
                    if s < lo {
                        push(s, val);
                    }
                    push(s.max(lo), v);
                    if e > hi {
                        push(hi + 1, val);
                    }
                }
                self.protos[p.index()] = out;
            }
        }
    }

    /// Point-wise combination with another function.
    pub fn zip<U: Copy + Eq, R: Copy + Eq>(
        &self,
        other: &Segmented<U>,
        f: impl Fn(T, U) -> R,
    ) -> Segmented<R> {
        let mut protos: [Segments<R>; 3] = [SmallVec::new(), SmallVec::new(), SmallVec::new()];
        for p in Protocol::ALL {
            let a = &self.protos[p.index()];
            let b = &other.protos[p.index()];
            let (mut i, mut j) = (0usize, 0usize);
            let out = &mut protos[p.index()];
            loop {
                let start = a[i].0.max(b[j].0);
                let val = f(a[i].1, b[j].1);
                if out.last().is_none_or(|(_, last)| *last != val) {
                    out.push((start, val));
                }
                let na = a.get(i + 1).map(|x| x.0);
                let nb = b.get(j + 1).map(|x| x.0);
                match (na, nb) {
                    (None, None) => break,
                    (Some(x), None) => {
                        let _ = x;
                        i += 1;
                    }
                    (None, Some(_)) => j += 1,
                    (Some(x), Some(y)) => {
                        if x <= y {
                            i += 1;
                        }
                        if y <= x {
                            j += 1;
                        }
                    }
                }
            }
        }
        Segmented {
            other: f(self.other, other.other),
            protos,
        }
    }

    /// Applies `f` to every value.
    pub fn map<R: Copy + Eq>(&self, f: impl Fn(T) -> R) -> Segmented<R> {
        let mut protos: [Segments<R>; 3] = [SmallVec::new(), SmallVec::new(), SmallVec::new()];
        for p in Protocol::ALL {
            let out = &mut protos[p.index()];
            for (s, v) in &self.protos[p.index()] {
                let val = f(*v);
                if out.last().is_none_or(|(_, last)| *last != val) {
                    out.push((*s, val));
                }
            }
        }
        Segmented {
            other: f(self.other),
            protos,
        }
    }
}

/// Splits `[lo, hi]` into aligned blocks `(first port, prefix bits of the 16-bit port)`, the way
/// an LPM trie over the big-endian port matches them.
pub fn range_to_prefixes(lo: u16, hi: u16) -> Vec<(u16, u8)> {
    let mut out = Vec::new();
    let (mut lo, hi) = (u32::from(lo), u32::from(hi));
    while lo <= hi {
        // Largest aligned block starting at lo that fits in [lo, hi].
        let mut size_bits = if lo == 0 {
            16
        } else {
            lo.trailing_zeros().min(16)
        };
        while size_bits > 0 && lo + (1u32 << size_bits) - 1 > hi {
            size_bits -= 1;
        }
        out.push((lo as u16, (16 - size_bits) as u8));
        lo += 1u32 << size_bits;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_prefixes_cover_exactly() {
        for (lo, hi) in [
            (0u16, 65535u16),
            (80, 80),
            (1, 65535),
            (1000, 2000),
            (32768, 60999),
            (65535, 65535),
        ] {
            let blocks = range_to_prefixes(lo, hi);
            let mut covered = 0u32;
            let mut next = u32::from(lo);
            for (start, bits) in &blocks {
                let size = 1u32 << (16 - u32::from(*bits));
                assert_eq!(
                    u32::from(*start),
                    next,
                    "blocks of {lo}-{hi} are contiguous"
                );
                assert_eq!(
                    u32::from(*start) % size,
                    0,
                    "block {start}/{bits} is aligned"
                );
                next += size;
                covered += size;
            }
            assert_eq!(covered, u32::from(hi) - u32::from(lo) + 1, "{lo}-{hi}");
        }
        assert_eq!(range_to_prefixes(0, 65535), vec![(0, 0)]);
        assert_eq!(range_to_prefixes(80, 80), vec![(80, 16)]);
    }

    #[test]
    fn paint_and_get() {
        let mut s = Segmented::constant(0u8);
        s.paint(PortSel::Range(Protocol::Tcp, 80, 90), 1);
        s.paint(PortSel::Range(Protocol::Tcp, 85, 100), 2);
        assert_eq!(s.get(6, 79), 0);
        assert_eq!(s.get(6, 80), 1);
        assert_eq!(s.get(6, 85), 2);
        assert_eq!(s.get(6, 100), 2);
        assert_eq!(s.get(6, 101), 0);
        assert_eq!(s.get(17, 85), 0);
        assert_eq!(s.get(1, 0), 0);
        s.paint(PortSel::Range(Protocol::Tcp, 0, 65535), 0);
        assert!(s.is_constant());
    }

    #[test]
    fn zip_merges_breakpoints() {
        let mut a = Segmented::constant(false);
        a.paint(PortSel::Range(Protocol::Udp, 10, 20), true);
        let mut b = Segmented::constant(false);
        b.paint(PortSel::Range(Protocol::Udp, 15, 30), true);
        let both = a.zip(&b, |x, y| x && y);
        assert_eq!(
            both.segments(Protocol::Udp),
            vec![(0, 14, false), (15, 20, true), (21, 65535, false)]
        );
    }
}
