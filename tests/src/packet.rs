//! Synthetic packets for BPF_PROG_TEST_RUN: Ethernet frames carrying IPv4/IPv6 and
//! TCP/UDP/SCTP/ICMP headers. Checksums are left zero; the programs do not verify them.

use std::net::IpAddr;

use septum_datapath_common::proto;

/// TCP flags (the datapath's own constants).
pub use septum_datapath_common::tcp_flags::{ACK, FIN, RST, SYN};

/// One packet's headers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Flow {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub protocol: u8,
    pub sport: u16,
    pub dport: u16,
    pub tcp_flags: u8,
    /// ICMP/ICMPv6 type (echo request by default).
    pub icmp_type: u8,
}

impl Flow {
    pub fn tcp(src: IpAddr, dst: IpAddr, sport: u16, dport: u16) -> Self {
        Self {
            src,
            dst,
            protocol: proto::TCP,
            sport,
            dport,
            tcp_flags: SYN,
            icmp_type: 0,
        }
    }

    pub fn with_protocol(mut self, protocol: u8) -> Self {
        self.protocol = protocol;
        if protocol == proto::ICMP {
            self.icmp_type = 8;
        } else if protocol == proto::ICMPV6 {
            self.icmp_type = 128;
        }
        self
    }

    pub fn with_flags(mut self, flags: u8) -> Self {
        self.tcp_flags = flags;
        self
    }

    /// The same flow the other way (a reply), with ACK for TCP and echo reply for ICMP.
    pub fn reply(&self) -> Self {
        let mut r = Self {
            src: self.dst,
            dst: self.src,
            sport: self.dport,
            dport: self.sport,
            ..*self
        };
        r.tcp_flags = if self.tcp_flags & SYN != 0 {
            SYN | ACK
        } else {
            ACK
        };
        r.icmp_type = match self.icmp_type {
            8 => 0,
            128 => 129,
            t => t,
        };
        r
    }

    pub fn is_v6(&self) -> bool {
        self.src.is_ipv6()
    }

    /// Ethernet + IP + L4 header + 8 bytes of payload.
    pub fn build(&self) -> Vec<u8> {
        build(self, &Options::default())
    }
}

/// Variations on a packet.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// IPv4 fragment (more-fragments, offset in 8-byte units) or IPv6 fragment header.
    pub fragment: Option<(bool, u16, u32)>,
    /// IPv6 extension headers (hop-by-hop, destination options) before the L4 header.
    pub ipv6_ext: Vec<u8>,
    /// IPv4 options length in bytes (multiple of 4).
    pub ipv4_options: usize,
    /// Truncate the frame to this many bytes.
    pub truncate: Option<usize>,
    /// For ICMP errors: the quoted packet's flow.
    pub quoted: Option<Flow>,
}

fn l4_header(f: &Flow, o: &Options) -> Vec<u8> {
    let mut l4 = Vec::new();
    match f.protocol {
        proto::TCP => {
            l4.extend_from_slice(&f.sport.to_be_bytes());
            l4.extend_from_slice(&f.dport.to_be_bytes());
            l4.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0]);
            l4.push(0x50);
            l4.push(f.tcp_flags);
            l4.extend_from_slice(&[0xff, 0xff, 0, 0, 0, 0]);
        }
        proto::UDP => {
            l4.extend_from_slice(&f.sport.to_be_bytes());
            l4.extend_from_slice(&f.dport.to_be_bytes());
            l4.extend_from_slice(&16u16.to_be_bytes());
            l4.extend_from_slice(&[0, 0]);
        }
        proto::SCTP => {
            l4.extend_from_slice(&f.sport.to_be_bytes());
            l4.extend_from_slice(&f.dport.to_be_bytes());
            l4.extend_from_slice(&[0; 8]);
        }
        proto::ICMP | proto::ICMPV6 => {
            l4.push(f.icmp_type);
            l4.push(0);
            l4.extend_from_slice(&[0, 0]);
            if let Some(q) = &o.quoted {
                l4.extend_from_slice(&[0; 4]);
                // The quoted packet: its IP header and the first 8 bytes of its L4 header.
                let inner = build(q, &Options::default());
                let ip_len = if q.is_v6() { 40 } else { 20 };
                l4.extend_from_slice(&inner[14..14 + ip_len + 8]);
            } else {
                let (id,) = if matches!(f.icmp_type, 0 | 129) {
                    (f.dport,)
                } else {
                    (f.sport,)
                };
                l4.extend_from_slice(&id.to_be_bytes());
                l4.extend_from_slice(&1u16.to_be_bytes());
            }
        }
        _ => {}
    }
    l4
}

/// Builds a frame for `f` with the variations in `o`.
pub fn build(f: &Flow, o: &Options) -> Vec<u8> {
    let mut pkt = vec![0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1];
    let mut l4 = l4_header(f, o);
    if o.fragment.is_some_and(|(_, off, _)| off != 0) {
        l4.clear();
    }
    l4.extend_from_slice(b"septum!\n");
    match (f.src, f.dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            pkt.extend_from_slice(&0x0800u16.to_be_bytes());
            let ihl = 20 + o.ipv4_options;
            let total = (ihl + l4.len()) as u16;
            let (id, frag) = match o.fragment {
                Some((more, off, id)) => (id as u16, (if more { 0x2000 } else { 0 }) | off),
                None => (0x1234, 0x4000),
            };
            pkt.push(0x40 | (ihl / 4) as u8);
            pkt.push(0);
            pkt.extend_from_slice(&total.to_be_bytes());
            pkt.extend_from_slice(&id.to_be_bytes());
            pkt.extend_from_slice(&frag.to_be_bytes());
            pkt.push(64);
            pkt.push(f.protocol);
            pkt.extend_from_slice(&[0, 0]);
            pkt.extend_from_slice(&s.octets());
            pkt.extend_from_slice(&d.octets());
            pkt.extend(std::iter::repeat_n(1u8, o.ipv4_options));
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            pkt.extend_from_slice(&0x86ddu16.to_be_bytes());
            let mut ext = Vec::new();
            // Chain: the listed extension headers, then a fragment header if asked, then L4.
            let mut chain: Vec<u8> = o.ipv6_ext.clone();
            if o.fragment.is_some() {
                chain.push(44);
            }
            let first = chain.first().copied().unwrap_or(f.protocol);
            for (i, h) in chain.iter().enumerate() {
                let next = chain.get(i + 1).copied().unwrap_or(f.protocol);
                if *h == 44 {
                    let (more, off, id) = o.fragment.unwrap_or((false, 0, 0));
                    ext.push(next);
                    ext.push(0);
                    ext.extend_from_slice(&((off << 3) | more as u16).to_be_bytes());
                    ext.extend_from_slice(&id.to_be_bytes());
                } else {
                    // 8-byte options header with PadN.
                    ext.extend_from_slice(&[next, 0, 1, 4, 0, 0, 0, 0]);
                }
            }
            let payload = (ext.len() + l4.len()) as u16;
            pkt.extend_from_slice(&[0x60, 0, 0, 0]);
            pkt.extend_from_slice(&payload.to_be_bytes());
            pkt.push(first);
            pkt.push(64);
            pkt.extend_from_slice(&s.octets());
            pkt.extend_from_slice(&d.octets());
            pkt.extend_from_slice(&ext);
        }
        _ => panic!("mixed address families in {f:?}"),
    }
    pkt.extend_from_slice(&l4);
    if let Some(n) = o.truncate {
        pkt.truncate(n);
    }
    pkt
}

/// An ARP request frame.
pub fn arp() -> Vec<u8> {
    let mut pkt = vec![0xff; 6];
    pkt.extend_from_slice(&[0x02, 0, 0, 0, 0, 1, 0x08, 0x06]);
    pkt.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    pkt.extend_from_slice(&[0; 20]);
    pkt
}
