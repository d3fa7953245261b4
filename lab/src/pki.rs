//! The multi-node lab's throwaway PKI: a CA, the local controller's serving certificate and one
//! certificate per node, all written under the lab directory and removed with it.
//!
//! A node's certificate carries its name as Common Name (the node-state stream names the node by
//! it), a DNS name equal to the node name, and both the serverAuth and clientAuth extended key
//! usages: the agent presents it to the controller, and can serve its flow API with it.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};

/// The DNS name in the controller's certificate (the agents' `--controller-server-name`).
pub const CONTROLLER_NAME: &str = "septum-lab-controller";

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
    /// The certificate and key of `name` (a node, or [`CONTROLLER_NAME`]).
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

/// Generates the CA, the controller's certificate (DNS [`CONTROLLER_NAME`] and
/// `controller_ips`) and one certificate per node into `dir`.
pub fn generate(dir: &Path, nodes: &[String], controller_ips: &[IpAddr]) -> Result<PkiFiles> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let files = PkiFiles::at(dir);
    let ca_key = KeyPair::generate().context("generating the lab CA's key")?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "septum lab CA");
    let ca = ca_params.self_signed(&ca_key)?;
    std::fs::write(files.ca(), ca.pem())?;

    let issue = |cn: &str, dns: &str, ips: &[IpAddr], client: bool| -> Result<()> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(vec![dns.to_string()])?;
        params
            .subject_alt_names
            .extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
        params.distinguished_name.push(DnType::CommonName, cn);
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        if client {
            params
                .extended_key_usages
                .push(ExtendedKeyUsagePurpose::ClientAuth);
        }
        let cert = params.signed_by(&key, &ca, &ca_key)?;
        let (c, k) = files.pair(cn);
        std::fs::write(&c, cert.pem())?;
        write_private(&k, &key.serialize_pem())
    };
    issue(CONTROLLER_NAME, CONTROLLER_NAME, controller_ips, false)
        .context("issuing the controller's certificate")?;
    for node in nodes {
        issue(node, node, &[], true)
            .with_context(|| format!("issuing the certificate of node {node}"))?;
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_certificates_name_the_node_and_serve_both_ends() {
        let dir = tempfile::tempdir().expect("temp dir");
        let files = generate(
            dir.path(),
            &["node-a".into(), "node-b".into()],
            &["10.230.0.1".parse().expect("ip")],
        )
        .expect("pki");
        let (c, k) = files.pair("node-a");
        let pem = std::fs::read_to_string(&c).expect("cert");
        let der = rustls_pemfile_der(&pem);
        let (_, cert) = x509_parser::parse_x509_certificate(&der).expect("x509");
        let cn = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|c| c.as_str().ok());
        assert_eq!(cn, Some("node-a"));
        let eku = cert
            .extended_key_usage()
            .expect("eku")
            .expect("present")
            .value;
        assert!(eku.server_auth && eku.client_auth);
        let san = cert
            .subject_alternative_name()
            .expect("san")
            .expect("present");
        assert!(
            san.value
                .general_names
                .iter()
                .any(|n| matches!(n, x509_parser::extensions::GeneralName::DNSName("node-a")))
        );
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(k).expect("key").permissions().mode();
        assert_eq!(mode & 0o077, 0, "the key is private");
        let (c, _) = files.pair(CONTROLLER_NAME);
        let pem = std::fs::read_to_string(&c).expect("cert");
        let der = rustls_pemfile_der(&pem);
        let (_, cert) = x509_parser::parse_x509_certificate(&der).expect("x509");
        let san = cert
            .subject_alternative_name()
            .expect("san")
            .expect("present");
        assert!(san.value.general_names.iter().any(|n| matches!(
            n,
            x509_parser::extensions::GeneralName::IPAddress([10, 230, 0, 1])
        )));
    }

    /// The DER of a one-certificate PEM.
    fn rustls_pemfile_der(pem: &str) -> Vec<u8> {
        let (_, p) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).expect("pem");
        p.contents
    }
}
