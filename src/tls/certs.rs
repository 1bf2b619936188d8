//! Throwaway certificates for tests, in one call: an authority made for
//! the run, a server certificate for `localhost`, `127.0.0.1` and `::1`,
//! and a client certificate whose common name is a user (for EXTERNAL),
//! written as PEM files with the names RabbitMQ's `tls-gen` gives them, so
//! that a test hands them to its client as it would for RabbitMQ.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

/// Where the files are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestCertificates {
    pub dir: PathBuf,
    /// The authority: what clients trust, and what client certificates are
    /// checked against (`ssl_options.cacertfile`).
    pub ca_certificate: PathBuf,
    pub server_certificate: PathBuf,
    pub server_key: PathBuf,
    pub client_certificate: PathBuf,
    pub client_key: PathBuf,
    /// The client certificate's common name: the user EXTERNAL logs in as.
    pub client_name: String,
}

impl TestCertificates {
    /// The files' names in `dir`, as [`generate`](Self::generate) writes
    /// them (e.g. for a broker started with `--tls-self-signed dir`).
    pub fn in_dir(dir: &Path, client_name: &str) -> TestCertificates {
        TestCertificates {
            dir: dir.to_path_buf(),
            ca_certificate: dir.join("ca_certificate.pem"),
            server_certificate: dir.join("server_certificate.pem"),
            server_key: dir.join("server_key.pem"),
            client_certificate: dir.join("client_certificate.pem"),
            client_key: dir.join("client_key.pem"),
            client_name: client_name.to_string(),
        }
    }

    /// Makes a new authority and both certificates in `dir` (created if
    /// need be), the client's for user `client_name`.
    pub fn generate(dir: &Path, client_name: &str) -> Result<TestCertificates, String> {
        let failed = |e: rcgen::Error| format!("cannot make test certificates: {e}");
        std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(failed)?;
        ca_params.distinguished_name = name("warren test authority");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().map_err(failed)?).map_err(failed)?;

        let leaf = |names: Vec<String>, cn: &str, usage: ExtendedKeyUsagePurpose| -> Result<(String, String), String> {
            let mut params = CertificateParams::new(names).map_err(failed)?;
            params.distinguished_name = name(cn);
            params.extended_key_usages = vec![usage];
            params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
            let key = KeyPair::generate().map_err(failed)?;
            let cert = params.signed_by(&key, &ca).map_err(failed)?;
            Ok((cert.pem(), key.serialize_pem()))
        };
        let hosts = vec!["localhost".to_string(), "127.0.0.1".to_string(), "::1".to_string()];
        let (server_cert, server_key) = leaf(hosts, "localhost", ExtendedKeyUsagePurpose::ServerAuth)?;
        let (client_cert, client_key) = leaf(Vec::new(), client_name, ExtendedKeyUsagePurpose::ClientAuth)?;

        let files = TestCertificates::in_dir(dir, client_name);
        write(&files.ca_certificate, &ca.pem(), false)?;
        write(&files.server_certificate, &server_cert, false)?;
        write(&files.server_key, &server_key, true)?;
        write(&files.client_certificate, &client_cert, false)?;
        write(&files.client_key, &client_key, true)?;
        Ok(files)
    }
}

fn name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn.push(DnType::OrganizationName, "warren");
    dn
}

/// Writes a PEM file; keys are readable by their owner only.
fn write(path: &Path, pem: &str, secret: bool) -> Result<(), String> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let _ = secret;
    options
        .open(path)
        .and_then(|mut f| f.write_all(pem.as_bytes()))
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}
