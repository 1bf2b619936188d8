//! A TLS client for the amqps tests: tokio-rustls (ring), trusting the
//! test authority, with or without the client certificate.

use std::net::SocketAddr;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use warren::tls::certs::TestCertificates;

/// How the client presents itself.
pub enum Identity<'a> {
    /// No client certificate.
    Anonymous,
    /// The test client certificate (CN = the default user).
    Client(&'a TestCertificates),
    /// Another pair of files (e.g. a certificate from another authority).
    Files(&'a std::path::Path, &'a std::path::Path),
}

pub fn client_config(certs: &TestCertificates, identity: Identity<'_>) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_file_iter(&certs.ca_certificate).unwrap() {
        roots.add(ca.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let pair = |cert: &std::path::Path, key: &std::path::Path| {
        let chain = CertificateDer::pem_file_iter(cert).unwrap().map(Result::unwrap).collect();
        (chain, PrivateKeyDer::from_pem_file(key).unwrap())
    };
    match identity {
        Identity::Anonymous => builder.with_no_client_auth(),
        Identity::Client(c) => {
            let (chain, key) = pair(&c.client_certificate, &c.client_key);
            builder.with_client_auth_cert(chain, key).unwrap()
        }
        Identity::Files(cert, key) => {
            let (chain, key) = pair(cert, key);
            builder.with_client_auth_cert(chain, key).unwrap()
        }
    }
}

/// Connects to `addr` over TLS as `localhost`; the handshake's error if it fails.
pub async fn connect(addr: SocketAddr, config: rustls::ClientConfig) -> std::io::Result<TlsStream<TcpStream>> {
    let socket = TcpStream::connect(addr).await?;
    socket.set_nodelay(true)?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    connector.connect(ServerName::try_from("localhost").unwrap(), socket).await
}
