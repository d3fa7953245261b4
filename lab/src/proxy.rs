//! Service ClusterIPs as nftables rules, in the shape kube-proxy's nftables mode writes them:
//! a `service-ips` verdict map keyed by `address . protocol . port`, reached from the nat
//! prerouting and output hooks; one chain per Service port that picks an endpoint with
//! `numgen random`; one chain per endpoint that DNATs, and marks hairpin traffic (a pod reaching
//! itself through its Service) for masquerade. A Service port without endpoints has no map
//! element (kube-proxy rejects those in a filter chain; the lab lets them time out).
//!
//! The table is `ip septum-lab-proxy` in the lab's node namespace; a script replaces it in one
//! `nft -f` transaction, so an update is atomic.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::Ipv4Addr;
use std::process::Stdio;

use crate::ns::NetNs;

/// The table's name.
pub const TABLE: &str = "septum-lab-proxy";

/// A transport protocol as nftables names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum L4 {
    /// tcp.
    Tcp,
    /// udp.
    Udp,
    /// sctp.
    Sctp,
}

impl L4 {
    fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
            Self::Sctp => "sctp",
        }
    }
}

/// One Service port on one ClusterIP.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePortRule {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Port name.
    pub port_name: Option<String>,
    /// ClusterIP.
    pub cluster_ip: Ipv4Addr,
    /// Port on the ClusterIP.
    pub port: u16,
    /// Protocol.
    pub protocol: L4,
    /// Endpoints (address, target port).
    pub endpoints: Vec<(Ipv4Addr, u16)>,
}

/// Errors applying rules.
#[derive(Debug, thiserror::Error)]
pub enum NftError {
    /// nft could not run.
    #[error("running nft: {0}")]
    Exec(#[source] std::io::Error),
    /// nft refused the script.
    #[error("nft refused the rules: {stderr}")]
    Refused {
        /// What nft said.
        stderr: String,
    },
}

/// The script that replaces the table with `rules`.
pub fn render(rules: &[ServicePortRule]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "table ip {TABLE} {{}}\ndelete table ip {TABLE}\ntable ip {TABLE} {{"
    );
    let mut elements = Vec::new();
    let mut chains = String::new();
    for (i, r) in rules.iter().enumerate() {
        if r.endpoints.is_empty() {
            continue;
        }
        let _ = writeln!(
            chains,
            "  chain service-{i} {{\n    comment \"{}/{}/{}/{}\"",
            r.namespace,
            r.name,
            r.protocol.as_str(),
            r.port_name.as_deref().unwrap_or("")
        );
        let picks: Vec<String> = (0..r.endpoints.len())
            .map(|j| format!("{j} : goto endpoint-{i}-{j}"))
            .collect();
        let _ = writeln!(
            chains,
            "    numgen random mod {} vmap {{ {} }}\n  }}",
            r.endpoints.len(),
            picks.join(", ")
        );
        for (j, (ip, port)) in r.endpoints.iter().enumerate() {
            let _ = writeln!(
                chains,
                "  chain endpoint-{i}-{j} {{\n    ip saddr {ip} jump mark-for-masquerade\n    meta l4proto {} dnat to {ip}:{port}\n  }}",
                r.protocol.as_str()
            );
        }
        elements.push(format!(
            "{} . {} . {} : goto service-{i}",
            r.cluster_ip,
            r.protocol.as_str(),
            r.port
        ));
    }
    s.push_str("  map service-ips {\n    type ipv4_addr . inet_proto . inet_service : verdict\n");
    if !elements.is_empty() {
        let _ = writeln!(s, "    elements = {{ {} }}", elements.join(", "));
    }
    s.push_str("  }\n");
    s.push_str(
        "  chain services {\n    ip daddr . meta l4proto . th dport vmap @service-ips\n  }\n",
    );
    s.push_str("  chain nat-prerouting {\n    type nat hook prerouting priority dstnat; policy accept;\n    jump services\n  }\n");
    s.push_str("  chain nat-output {\n    type nat hook output priority -100; policy accept;\n    jump services\n  }\n");
    s.push_str("  chain mark-for-masquerade {\n    meta mark set meta mark or 0x4000\n  }\n");
    s.push_str("  chain nat-postrouting {\n    type nat hook postrouting priority srcnat; policy accept;\n    meta mark & 0x4000 == 0x4000 masquerade\n  }\n");
    s.push_str(&chains);
    s.push_str("}\n");
    s
}

/// Runs `script` with `nft -f -` inside `ns`.
pub fn apply(ns: &NetNs, script: &str) -> Result<(), NftError> {
    let mut child = ns
        .command("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(NftError::Exec)?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(script.as_bytes()).map_err(NftError::Exec)?;
    }
    let out = child.wait_with_output().map_err(NftError::Exec)?;
    if !out.status.success() {
        return Err(NftError::Refused {
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    Ok(())
}

/// The first free address of `base/prefix` (skipping the network address and the first host,
/// which Kubernetes gives the `kubernetes` Service).
pub fn allocate_cluster_ip(
    base: Ipv4Addr,
    prefix: u8,
    used: &BTreeSet<Ipv4Addr>,
) -> Option<Ipv4Addr> {
    let size = 1u64 << (32 - u32::from(prefix.min(32)));
    let start = u32::from(base) & !((size - 1) as u32);
    (2..size.saturating_sub(1))
        .map(|i| Ipv4Addr::from(start + i as u32))
        .find(|ip| !used.contains(ip))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_one_chain_per_service_port_and_endpoint() {
        let s = render(&[ServicePortRule {
            namespace: "shop".into(),
            name: "web".into(),
            port_name: Some("http".into()),
            cluster_ip: Ipv4Addr::new(10, 96, 0, 2),
            port: 80,
            protocol: L4::Tcp,
            endpoints: vec![
                (Ipv4Addr::new(10, 231, 0, 5), 8080),
                (Ipv4Addr::new(10, 231, 0, 6), 8080),
            ],
        }]);
        assert!(s.contains("10.96.0.2 . tcp . 80 : goto service-0"), "{s}");
        assert!(
            s.contains("numgen random mod 2 vmap { 0 : goto endpoint-0-0, 1 : goto endpoint-0-1 }"),
            "{s}"
        );
        assert!(s.contains("dnat to 10.231.0.6:8080"), "{s}");
        assert!(
            s.starts_with("table ip septum-lab-proxy {}\ndelete table"),
            "{s}"
        );
    }

    #[test]
    fn allocation_skips_used_and_reserved_addresses() {
        let base = Ipv4Addr::new(10, 96, 0, 0);
        let mut used = BTreeSet::new();
        assert_eq!(
            allocate_cluster_ip(base, 16, &used),
            Some(Ipv4Addr::new(10, 96, 0, 2))
        );
        used.insert(Ipv4Addr::new(10, 96, 0, 2));
        assert_eq!(
            allocate_cluster_ip(base, 16, &used),
            Some(Ipv4Addr::new(10, 96, 0, 3))
        );
        assert_eq!(allocate_cluster_ip(base, 31, &BTreeSet::new()), None);
    }
}
