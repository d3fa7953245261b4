//! The parts of `prevResult` septum-cni reads: the interfaces (to cross-check the host veth found
//! through the kernel) and the IP addresses of the container interface.
//!
//! The reading is lenient where the spec versions differ (0.3.x/0.4.0 put a `version` in each
//! `ips` entry, 1.0.0 does not; unknown keys are ignored) and strict where a wrong value would
//! register the pod with the wrong addresses. The printed result is never rebuilt from this view:
//! ADD prints `prevResult` exactly as received.

use std::net::IpAddr;

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::{config::ConfigError, link::HostVeth};

/// One entry of `prevResult.interfaces`.
#[derive(Debug, Clone, Deserialize)]
pub struct Interface {
    /// Interface name.
    pub name: String,
    /// Hardware address, if the plugin gave one.
    #[serde(default)]
    pub mac: Option<String>,
    /// The netns path for container interfaces; absent or empty for host interfaces.
    #[serde(default)]
    pub sandbox: Option<String>,
}

impl Interface {
    fn is_host(&self) -> bool {
        self.sandbox.as_deref().is_none_or(str::is_empty)
    }
}

/// One entry of `prevResult.ips`.
#[derive(Debug, Clone, Deserialize)]
pub struct IpConfig {
    /// Address in CIDR notation, e.g. `10.22.0.5/16`.
    pub address: String,
    /// Index into `interfaces` of the interface holding the address.
    #[serde(default)]
    pub interface: Option<u64>,
}

/// The typed view of `prevResult`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct PrevResult {
    /// `interfaces`; empty when absent.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub interfaces: Vec<Interface>,
    /// `ips`; empty when absent.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub ips: Vec<IpConfig>,
}

fn null_as_empty<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Ok(Option::<Vec<T>>::deserialize(d)?.unwrap_or_default())
}

/// `prevResult` disagrees with what the kernel shows.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Mismatch {
    /// The peer of the container interface is not among prevResult's host interfaces.
    #[error(
        "the peer of the container interface is host interface {found:?}, but prevResult lists host interfaces {listed:?}"
    )]
    HostInterface {
        /// The name the kernel gives the peer.
        found: String,
        /// prevResult's host-side interface names.
        listed: Vec<String>,
    },
    /// prevResult lists container interfaces but not CNI_IFNAME.
    #[error("prevResult lists container interfaces {listed:?} but not CNI_IFNAME {ifname:?}")]
    ContainerInterfaceMissing {
        /// CNI_IFNAME.
        ifname: String,
        /// prevResult's container-side interface names.
        listed: Vec<String>,
    },
    /// prevResult puts CNI_IFNAME in another sandbox than CNI_NETNS.
    #[error("prevResult puts {ifname:?} in sandbox {listed:?}, but CNI_NETNS is {netns:?}")]
    Sandbox {
        /// CNI_IFNAME.
        ifname: String,
        /// prevResult's `sandbox`.
        listed: String,
        /// CNI_NETNS.
        netns: String,
    },
    /// prevResult gives CNI_IFNAME another MAC than the kernel.
    #[error("prevResult gives {ifname:?} MAC {listed:?}, but the kernel shows {found:?}")]
    Mac {
        /// CNI_IFNAME.
        ifname: String,
        /// prevResult's `mac`.
        listed: String,
        /// The kernel's address.
        found: String,
    },
}

impl PrevResult {
    /// Decodes `prevResult`; it must be a JSON object.
    pub fn parse(raw: &RawValue) -> Result<Self, ConfigError> {
        if !raw.get().trim_start().starts_with('{') {
            return Err(ConfigError::InvalidField {
                field: "prevResult".into(),
                value: truncate(raw.get()),
                reason: "must be a JSON object (a CNI result)".into(),
            });
        }
        crate::config::decode_nested("prevResult", raw)
    }

    /// The index of CNI_IFNAME's entry: the container-side interface (with a sandbox) of that
    /// name. `None` when prevResult does not list it.
    fn container_index(&self, ifname: &str) -> Option<usize> {
        self.interfaces
            .iter()
            .position(|i| i.name == ifname && !i.is_host())
    }

    /// The container interface's addresses: entries of `ips` that point at CNI_IFNAME's entry or
    /// at no interface. Sorted, without duplicates.
    pub fn container_ips(&self, ifname: &str) -> Result<Vec<IpAddr>, ConfigError> {
        let container = self.container_index(ifname);
        let mut ips = Vec::new();
        for (n, ip) in self.ips.iter().enumerate() {
            if let Some(i) = ip.interface {
                let in_range = usize::try_from(i).is_ok_and(|i| i < self.interfaces.len());
                if !in_range {
                    return Err(ConfigError::InvalidField {
                        field: format!("prevResult.ips[{n}].interface"),
                        value: i.to_string(),
                        reason: format!(
                            "not an index into prevResult.interfaces (which has {} entries)",
                            self.interfaces.len()
                        ),
                    });
                }
                if Some(i as usize) != container {
                    continue;
                }
            }
            let addr = ip.address.split_once('/').map_or(&*ip.address, |(a, _)| a);
            let addr: IpAddr = addr.parse().map_err(|_| ConfigError::InvalidField {
                field: format!("prevResult.ips[{n}].address"),
                value: format!("{:?}", ip.address),
                reason: "not an IP address in CIDR notation".into(),
            })?;
            ips.push(addr);
        }
        ips.sort();
        ips.dedup();
        Ok(ips)
    }

    /// Checks the host veth found through the kernel against prevResult's interfaces. Absent
    /// information is not a disagreement: a result without interfaces checks nothing.
    pub fn cross_check(&self, found: &HostVeth, ifname: &str, netns: &str) -> Result<(), Mismatch> {
        let host: Vec<&Interface> = self.interfaces.iter().filter(|i| i.is_host()).collect();
        if !host.is_empty() && !host.iter().any(|i| i.name == found.host_name) {
            return Err(Mismatch::HostInterface {
                found: found.host_name.clone(),
                listed: host.iter().map(|i| i.name.clone()).collect(),
            });
        }
        let container: Vec<&Interface> = self.interfaces.iter().filter(|i| !i.is_host()).collect();
        if container.is_empty() {
            return Ok(());
        }
        let Some(entry) = container.iter().find(|i| i.name == ifname) else {
            return Err(Mismatch::ContainerInterfaceMissing {
                ifname: ifname.to_string(),
                listed: container.iter().map(|i| i.name.clone()).collect(),
            });
        };
        let sandbox = entry.sandbox.as_deref().unwrap_or_default();
        if sandbox != netns {
            return Err(Mismatch::Sandbox {
                ifname: ifname.to_string(),
                listed: sandbox.to_string(),
                netns: netns.to_string(),
            });
        }
        if let Some(mac) = entry.mac.as_deref().filter(|m| !m.is_empty()) {
            let kernel = format_mac(&found.container_mac);
            if !mac.eq_ignore_ascii_case(&kernel) {
                return Err(Mismatch::Mac {
                    ifname: ifname.to_string(),
                    listed: mac.to_string(),
                    found: kernel,
                });
            }
        }
        Ok(())
    }
}

/// `aa:bb:cc:dd:ee:ff`, as CNI results spell MACs.
pub fn format_mac(mac: &[u8]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn truncate(s: &str) -> String {
    const MAX: usize = 64;
    match s.char_indices().nth(MAX) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> PrevResult {
        let raw: Box<RawValue> = serde_json::from_str(json).expect("valid JSON");
        PrevResult::parse(&raw).expect("valid prevResult")
    }

    const BRIDGE: &str = r#"{"cniVersion":"1.0.0","interfaces":[
        {"name":"cni0","mac":"aa:00:00:00:00:01"},
        {"name":"veth1234","mac":"aa:00:00:00:00:02"},
        {"name":"eth0","mac":"AA:00:00:00:00:03","sandbox":"/run/netns/p"}],
        "ips":[{"interface":2,"address":"10.1.0.5/24","gateway":"10.1.0.1"},
               {"interface":2,"address":"fd00::5/64"},
               {"interface":0,"address":"10.1.0.1/24"}],
        "dns":{}}"#;

    fn veth() -> HostVeth {
        HostVeth {
            host_ifindex: 7,
            host_name: "veth1234".into(),
            container_ifindex: 2,
            container_mac: vec![0xaa, 0, 0, 0, 0, 3],
        }
    }

    #[test]
    fn reads_the_container_ips_only() {
        let ips = parse(BRIDGE).container_ips("eth0").expect("ips");
        assert_eq!(
            ips,
            vec![
                "10.1.0.5".parse::<IpAddr>().unwrap(),
                "fd00::5".parse().unwrap()
            ]
        );
    }

    #[test]
    fn old_results_with_versions_and_no_interfaces() {
        let r = parse(r#"{"cniVersion":"0.3.1","ips":[{"version":"4","address":"10.0.0.9/8"}]}"#);
        assert_eq!(r.container_ips("eth0").unwrap().len(), 1);
        assert_eq!(r.cross_check(&veth(), "eth0", "/x"), Ok(()));
    }

    #[test]
    fn cross_check_accepts_agreement_and_names_disagreement() {
        let r = parse(BRIDGE);
        assert_eq!(r.cross_check(&veth(), "eth0", "/run/netns/p"), Ok(()));
        let other = HostVeth {
            host_name: "veth9".into(),
            ..veth()
        };
        assert!(matches!(
            r.cross_check(&other, "eth0", "/run/netns/p"),
            Err(Mismatch::HostInterface { .. })
        ));
        assert!(matches!(
            r.cross_check(&veth(), "eth0", "/run/netns/q"),
            Err(Mismatch::Sandbox { .. })
        ));
        assert!(matches!(
            r.cross_check(&veth(), "eth1", "/run/netns/p"),
            Err(Mismatch::ContainerInterfaceMissing { .. })
        ));
        let mac = HostVeth {
            container_mac: vec![0xaa, 0, 0, 0, 0, 4],
            ..veth()
        };
        assert!(matches!(
            r.cross_check(&mac, "eth0", "/run/netns/p"),
            Err(Mismatch::Mac { .. })
        ));
    }

    #[test]
    fn refuses_bad_addresses_and_indexes() {
        let r = parse(r#"{"ips":[{"address":"banana/24"}]}"#);
        assert!(r.container_ips("eth0").is_err());
        let r = parse(r#"{"interfaces":[],"ips":[{"address":"10.0.0.1/8","interface":3}]}"#);
        assert!(r.container_ips("eth0").is_err());
        let raw: Box<RawValue> = serde_json::from_str("[1,2]").unwrap();
        assert!(PrevResult::parse(&raw).is_err());
    }
}
