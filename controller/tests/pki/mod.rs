//! A throwaway PKI for the node-state stream's tests and bench: a CA, the controller's serving
//! certificate, and client certificates whose Common Name is a node's name.

#![allow(dead_code)]

use std::path::PathBuf;

/// A CA, the controller's serving certificate and client certificates.
pub struct Pki {
    dir: tempfile::TempDir,
    pub ca: rcgen::Certificate,
    ca_key: rcgen::KeyPair,
}

impl Pki {
    pub fn new() -> Self {
        let ca_key = rcgen::KeyPair::generate().expect("CA key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "septum test CA");
        let ca = params.self_signed(&ca_key).expect("CA certificate");
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("ca.crt"), ca.pem()).expect("write CA");
        Self { dir, ca, ca_key }
    }

    pub fn ca_path(&self) -> PathBuf {
        self.dir.path().join("ca.crt")
    }

    /// A certificate with Common Name `cn` (and DNS names localhost and `cn`), signed by this
    /// CA.
    pub fn issue(&self, cn: &str) -> (String, String) {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params =
            rcgen::CertificateParams::new(vec!["localhost".to_string(), cn.to_string()])
                .expect("params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        let cert = params
            .signed_by(&key, &self.ca, &self.ca_key)
            .expect("signed certificate");
        (cert.pem(), key.serialize_pem())
    }

    /// Writes a client certificate for `cn`; returns (cert, key) paths.
    pub fn client_files(&self, cn: &str) -> (PathBuf, PathBuf) {
        let (cert, key) = self.issue(cn);
        let c = self.dir.path().join(format!("{cn}.crt"));
        let k = self.dir.path().join(format!("{cn}.key"));
        std::fs::write(&c, cert).expect("write cert");
        std::fs::write(&k, key).expect("write key");
        (c, k)
    }

    pub fn server_tls(&self) -> tonic::transport::ServerTlsConfig {
        self.server_tls_for("septum-controller")
    }

    /// A server identity for `cn` that asks clients for a certificate of this CA.
    pub fn server_tls_for(&self, cn: &str) -> tonic::transport::ServerTlsConfig {
        let (cert, key) = self.issue(cn);
        tonic::transport::ServerTlsConfig::new()
            .identity(tonic::transport::Identity::from_pem(cert, key))
            .client_ca_root(tonic::transport::Certificate::from_pem(self.ca.pem()))
    }
}

impl Pki {
    /// A client configuration trusting this CA, presenting a certificate for `cn` if given,
    /// checking the server's certificate against `server_name`.
    pub fn client_tls(
        &self,
        cn: Option<&str>,
        server_name: &str,
    ) -> tonic::transport::ClientTlsConfig {
        let mut tls = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(self.ca.pem()))
            .domain_name(server_name);
        if let Some(cn) = cn {
            let (c, k) = self.issue(cn);
            tls = tls.identity(tonic::transport::Identity::from_pem(c, k));
        }
        tls
    }
}
