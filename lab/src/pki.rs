//! The multi-node lab's throwaway PKI, written under the lab directory and removed with it, in
//! the shape `manifests/README.md` asks of a cluster:
//! - the nodes' CA (`ca.crt`), which signs the controller's certificate and one per node;
//! - the controller's certificate: DNS [`CONTROLLER_NAME`] and its link address, serverAuth
//!   (the node-state stream and the flow relay) and clientAuth (the relay dials every agent's
//!   flow API with it);
//! - a node's certificate: its name as Common Name (the node-state stream names the node by it)
//!   and as DNS name (the relay checks the agent's flow API against it), clientAuth (the
//!   stream) and serverAuth (the flow API);
//! - the relay clients' CA (`relay-client-ca.crt`), another CA than the nodes' (a node's
//!   certificate must not read every node's flows), and the certificate it signs for the lab's
//!   user, [`OPERATOR_NAME`] (clientAuth only), which `septum flows` presents to the relay.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};

/// The DNS name in the controller's certificate (the agents' `--controller-server-name`).
pub const CONTROLLER_NAME: &str = "septum-lab-controller";

/// The Common Name of the relay client certificate `septum flows` presents in a two-node lab.
pub const OPERATOR_NAME: &str = "septum-lab-operator";

/// The files of the lab's PKI in one directory.
#[derive(Clone, Debug)]
pub struct PkiFiles {
    dir: PathBuf,
}

impl PkiFiles {
    /// The PKI in `dir`.
    pub fn at(dir: &Path) -> Self {
        Self {
            dir: dir.to_path_buf(),
        }
    }
    /// The CA certificate.
    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }
    /// The CA of the relay's clients.
    pub fn relay_client_ca(&self) -> PathBuf {
        self.dir.join("relay-client-ca.crt")
    }
    /// The certificate and key of `name` (a node, [`CONTROLLER_NAME`] or [`OPERATOR_NAME`]).
    pub fn pair(&self, name: &str) -> (PathBuf, PathBuf) {
        (
            self.dir.join(format!("{name}.crt")),
            self.dir.join(format!("{name}.key")),
        )
    }
}

fn write_private(path: &Path, text: &str) -> Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

/// A self-signed CA named `cn`.
fn new_ca(cn: &str) -> Result<(rcgen::Certificate, KeyPair)> {
    let key = KeyPair::generate().with_context(|| format!("generating the key of {cn}"))?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.distinguished_name.push(DnType::CommonName, cn);
    let cert = params.self_signed(&key)?;
    Ok((cert, key))
}

/// What a leaf certificate is for.
struct Leaf<'a> {
    cn: &'a str,
    /// DNS names (none for a certificate that only ever authenticates a client).
    dns: &'a [&'a str],
    ips: &'a [IpAddr],
    server: bool,
    client: bool,
}

fn issue(files: &PkiFiles, ca: &rcgen::Certificate, ca_key: &KeyPair, leaf: &Leaf) -> Result<()> {
    let key = KeyPair::generate()?;
    let mut params =
        CertificateParams::new(leaf.dns.iter().map(|d| d.to_string()).collect::<Vec<_>>())?;
    params
        .subject_alt_names
        .extend(leaf.ips.iter().map(|ip| SanType::IpAddress(*ip)));
    params.distinguished_name.push(DnType::CommonName, leaf.cn);
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    if leaf.server {
        params
            .extended_key_usages
            .push(ExtendedKeyUsagePurpose::ServerAuth);
    }
    if leaf.client {
        params
            .extended_key_usages
            .push(ExtendedKeyUsagePurpose::ClientAuth);
    }
    let cert = params.signed_by(&key, ca, ca_key)?;
    let (c, k) = files.pair(leaf.cn);
    std::fs::write(&c, cert.pem())?;
    write_private(&k, &key.serialize_pem())
}

/// Generates into `dir` the nodes' CA, the controller's certificate (DNS [`CONTROLLER_NAME`]
/// and `controller_ips`), one certificate per node, the relay clients' CA and the operator's
/// certificate.
pub fn generate(dir: &Path, nodes: &[String], controller_ips: &[IpAddr]) -> Result<PkiFiles> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let files = PkiFiles::at(dir);
    let (ca, ca_key) = new_ca("septum lab CA")?;
    std::fs::write(files.ca(), ca.pem())?;
    issue(
        &files,
        &ca,
        &ca_key,
        &Leaf {
            cn: CONTROLLER_NAME,
            dns: &[CONTROLLER_NAME],
            ips: controller_ips,
            server: true,
            client: true,
        },
    )
    .context("issuing the controller's certificate")?;
    for node in nodes {
        issue(
            &files,
            &ca,
            &ca_key,
            &Leaf {
                cn: node,
                dns: &[node],
                ips: &[],
                server: true,
                client: true,
            },
        )
        .with_context(|| format!("issuing the certificate of node {node}"))?;
    }
    let (relay_ca, relay_ca_key) = new_ca("septum lab relay client CA")?;
    std::fs::write(files.relay_client_ca(), relay_ca.pem())?;
    issue(
        &files,
        &relay_ca,
        &relay_ca_key,
        &Leaf {
            cn: OPERATOR_NAME,
            dns: &[],
            ips: &[],
            server: false,
            client: true,
        },
    )
    .context("issuing the relay client certificate")?;
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;
    use x509_parser::extensions::GeneralName;

    /// The certificate in a one-certificate PEM file, as DER.
    fn der(path: &Path) -> Vec<u8> {
        let pem = std::fs::read(path).expect("certificate");
        let (_, p) = x509_parser::pem::parse_x509_pem(&pem).expect("pem");
        p.contents
    }

    struct Seen {
        cn: String,
        issuer: String,
        server: bool,
        client: bool,
        dns: Vec<String>,
        ips: Vec<Vec<u8>>,
    }

    fn seen(path: &Path) -> Seen {
        let der = der(path);
        let (_, cert) = x509_parser::parse_x509_certificate(&der).expect("x509");
        let cn = |n: &x509_parser::x509::X509Name| {
            n.iter_common_name()
                .next()
                .and_then(|c| c.as_str().ok())
                .unwrap_or_default()
                .to_string()
        };
        let eku = cert.extended_key_usage().expect("eku").map(|e| e.value);
        let names: Vec<GeneralName> = cert
            .subject_alternative_name()
            .expect("san")
            .map(|s| s.value.general_names.clone())
            .unwrap_or_default();
        Seen {
            cn: cn(cert.subject()),
            issuer: cn(cert.issuer()),
            server: eku.is_some_and(|e| e.server_auth),
            client: eku.is_some_and(|e| e.client_auth),
            dns: names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::DNSName(d) => Some(d.to_string()),
                    _ => None,
                })
                .collect(),
            ips: names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::IPAddress(ip) => Some(ip.to_vec()),
                    _ => None,
                })
                .collect(),
        }
    }

    #[test]
    fn certificates_carry_what_the_stream_and_the_relay_check() {
        let dir = tempfile::tempdir().expect("temp dir");
        let files = generate(
            dir.path(),
            &["node-a".into(), "node-b".into()],
            &["10.230.0.1".parse().expect("ip")],
        )
        .expect("pki");
        // A node: named by CN (the stream) and DNS (the relay), client and server.
        for node in ["node-a", "node-b"] {
            let (c, k) = files.pair(node);
            let n = seen(&c);
            assert_eq!(n.cn, node);
            assert_eq!(n.dns, [node]);
            assert!(n.server && n.client, "{node}: serverAuth and clientAuth");
            assert_eq!(n.issuer, "septum lab CA");
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(k).expect("key").permissions().mode();
            assert_eq!(mode & 0o077, 0, "the key is private");
        }
        // The controller: serves the stream and the relay, dials the agents' flow APIs.
        let (c, _) = files.pair(CONTROLLER_NAME);
        let ctl = seen(&c);
        assert_eq!(ctl.dns, [CONTROLLER_NAME]);
        assert_eq!(ctl.ips, [vec![10, 230, 0, 1]]);
        assert!(
            ctl.server && ctl.client,
            "controller: serverAuth and clientAuth"
        );
        // The operator: a client of the relay only, from another CA than the nodes'.
        let (c, _) = files.pair(OPERATOR_NAME);
        let op = seen(&c);
        assert_eq!(op.cn, OPERATOR_NAME);
        assert!(op.client && !op.server, "operator: clientAuth only");
        assert!(op.dns.is_empty());
        assert_eq!(op.issuer, "septum lab relay client CA");
        assert_eq!(
            seen(&files.relay_client_ca()).cn,
            "septum lab relay client CA"
        );
        assert_ne!(der(&files.relay_client_ca()), der(&files.ca()));
    }
}
