//! amqps: AMQP over TLS, with rustls.
//!
//! A TLS connection is a plain one with a TLS stream in front of it:
//!
//! ```text
//!  accept ── first octets ── TLS handshake ── AMQP, exactly as over TCP
//!            (a plain AMQP     (within ssl_handshake_timeout;
//!             header is told   the client certificate, if asked
//!             off by name)     for, must chain to cacertfile)
//! ```
//!
//! Everything after the handshake is the connection code of
//! `crate::connection`, unchanged, with three things TLS needs:
//!
//! - the octets the heartbeat monitor and sender count are those crossing
//!   the TCP socket, encrypted (`connection::transport::Metered`), as
//!   RabbitMQ counts them on an ssl socket: a client stalled halfway
//!   through a TLS record is silent, and is dropped 2T..3T after its last
//!   octet like any other;
//! - flow control still pushes back: a connection that stops reading stops
//!   reading the TLS stream, which stops reading the socket;
//! - a kill is still a TCP reset, through a second handle on the socket.
//!
//! What the handshake settled (version, cipher, the client certificate's
//! subject) is kept on the connection's registry entry ([`TlsInfo`]) for
//! the management API and for EXTERNAL authentication, whose user is the
//! certificate's common name.
//!
//! Certificates for tests come from [`certs`]: a throwaway authority, a
//! server certificate for localhost and 127.0.0.1, and a client one.

pub mod certs;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::broker::connections::{Counters, Faults};
pub use crate::broker::inspect::TlsInfo;
use crate::broker::Broker;
use crate::config::tls::{SslOptions, TlsVersion, Verify};
use crate::connection::transport::Metered;
use crate::logging::Escaped;

/// A TLS listener's side of the handshake, built once from `ssl_options`.
pub struct Acceptor {
    inner: tokio_rustls::TlsAcceptor,
    options: SslOptions,
}

impl Acceptor {
    /// Reads the certificate, key and authorities `options` name; a file
    /// that is missing or is not what it should be is an error naming it.
    pub fn new(options: &SslOptions) -> Result<Acceptor, String> {
        let certfile = options.certfile.as_deref().ok_or("the TLS listener needs ssl_options.certfile")?;
        let keyfile = options.keyfile.as_deref().ok_or("the TLS listener needs ssl_options.keyfile")?;
        let chain = read_certificates(certfile, "ssl_options.certfile")?;
        let key = PrivateKeyDer::from_pem_file(keyfile)
            .map_err(|e| format!("ssl_options.keyfile {}: no private key in PEM: {e}", keyfile.display()))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let versions: Vec<&'static rustls::SupportedProtocolVersion> = match options.versions.as_slice() {
            [] => vec![&rustls::version::TLS13, &rustls::version::TLS12],
            listed => listed
                .iter()
                .map(|v| match v {
                    TlsVersion::Tls13 => &rustls::version::TLS13,
                    TlsVersion::Tls12 => &rustls::version::TLS12,
                })
                .collect(),
        };
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&versions)
            .map_err(|e| format!("ssl_options.versions: {e}"))?;
        let builder = match options.verify {
            Verify::None => builder.with_no_client_auth(),
            Verify::Peer => {
                let cafile = options
                    .cacertfile
                    .as_deref()
                    .ok_or("ssl_options.verify = verify_peer needs ssl_options.cacertfile")?;
                let mut roots = RootCertStore::empty();
                for ca in read_certificates(cafile, "ssl_options.cacertfile")? {
                    roots.add(ca).map_err(|e| format!("ssl_options.cacertfile {}: {e}", cafile.display()))?;
                }
                let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
                let verifier = if options.fail_if_no_peer_cert { verifier } else { verifier.allow_unauthenticated() };
                builder.with_client_cert_verifier(verifier.build().map_err(|e| format!("ssl_options.cacertfile: {e}"))?)
            }
        };
        let config = builder
            .with_single_cert(chain, key)
            .map_err(|e| format!("ssl_options.certfile and keyfile do not go together: {e}"))?;
        Ok(Acceptor { inner: tokio_rustls::TlsAcceptor::from(Arc::new(config)), options: options.clone() })
    }
}

fn read_certificates(path: &Path, key: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{key} {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{key} {}: no certificate in it", path.display()));
    }
    Ok(certs)
}

/// Takes one socket accepted on the TLS listener through its TLS handshake
/// and then serves it as an AMQP connection. Whatever goes wrong before
/// the handshake is done is one log line, and the socket is closed.
pub async fn serve(socket: TcpStream, acceptor: Arc<Acceptor>, broker: Arc<Broker>, shutdown: watch::Receiver<bool>) {
    let (Ok(peer), Ok(local)) = (socket.peer_addr(), socket.local_addr()) else { return };
    let timeout = acceptor.options.handshake_timeout;
    let mut stop = shutdown.clone();
    let handshaken = tokio::select! {
        done = tokio::time::timeout(timeout, handshake(socket, &acceptor, peer)) => done,
        // A broker stopping or restarting does not wait for handshakes.
        _ = stop.wait_for(|stop| *stop) => return,
    };
    match handshaken {
        Ok(Ok(done)) => {
            let Handshaken { stream, socket, info, counters, faults } = done;
            crate::connection::serve_tls(stream, socket, info, counters, faults, (peer, local), broker, shutdown).await
        }
        Ok(Err(why)) => warn!("TLS connection from {peer} on {local} refused: {why}"),
        Err(_) => warn!(
            "TLS connection from {peer} on {local} refused: no TLS handshake within {} ms (ssl_handshake_timeout)",
            timeout.as_millis()
        ),
    }
}

/// A finished TLS handshake.
struct Handshaken {
    stream: tokio_rustls::server::TlsStream<Metered>,
    socket: std::net::TcpStream,
    info: TlsInfo,
    counters: Arc<Counters>,
    faults: Arc<Faults>,
}

async fn handshake(socket: TcpStream, acceptor: &Acceptor, peer: SocketAddr) -> Result<Handshaken, String> {
    // A TLS record starts with its content type, 22 for a handshake; a
    // plain AMQP client starts with "AMQP". Tell it apart for the log.
    let mut first = [0u8; 11];
    let n = socket.peek(&mut first).await.map_err(|e| e.to_string())?;
    if n == 0 {
        return Err("closed before a TLS handshake".into());
    }
    if b"AMQP".starts_with(&first[..n.min(4)]) {
        return Err("a plain AMQP client on the TLS port (it should use amqps://, or the plain port)".into());
    }
    if first[0] != 22 {
        return Err(format!("not a TLS handshake (first octet {:#04x})", first[0]));
    }
    let (counters, faults) = (Arc::<Counters>::default(), Arc::<Faults>::default());
    let metered = Metered::new(socket, counters.clone(), faults.clone());
    let handle = metered.handle().map_err(|e| e.to_string())?;
    let too_old = too_old(&first[..n]);
    let stream = acceptor.inner.accept(metered).await.map_err(|e| match too_old {
        Some(version) => {
            format!("TLS handshake failed: {e} (the client offers {version} at most; warren speaks TLS 1.2 and 1.3)")
        }
        None => format!("TLS handshake failed: {e}"),
    })?;
    let info = info(stream.get_ref().1);
    info!(
        "TLS connection from {peer}: {} {}{}",
        info.protocol,
        info.cipher,
        info.peer_cert_subject.as_deref().map(|s| format!(", client certificate {}", Escaped(s))).unwrap_or_default()
    );
    Ok(Handshaken { stream, socket: handle, info, counters, faults })
}

/// The newest version a ClientHello offers, if it is older than TLS 1.2:
/// the `client_version` after the record and handshake headers (a TLS 1.3
/// client also says 1.2 there, and names 1.3 in an extension).
fn too_old(hello: &[u8]) -> Option<&'static str> {
    match hello.get(9..11)? {
        [3, 0] => Some("SSL 3.0"),
        [3, 1] => Some("TLS 1.0"),
        [3, 2] => Some("TLS 1.1"),
        _ => None,
    }
}

/// What a finished handshake settled, as [`TlsInfo`].
fn info(connection: &rustls::ServerConnection) -> TlsInfo {
    let protocol = match connection.protocol_version() {
        Some(rustls::ProtocolVersion::TLSv1_3) => "tlsv1.3",
        _ => "tlsv1.2",
    };
    let suite = connection.negotiated_cipher_suite().map(|s| format!("{:?}", s.suite())).unwrap_or_default();
    let (key_exchange, cipher, hash) = split_suite(&suite);
    let peer = connection.peer_certificates().and_then(|chain| chain.first()).and_then(|c| describe(c));
    let (subject, issuer, cn) = match peer {
        Some((s, i, cn)) => (Some(s), Some(i), cn),
        None => (None, None, None),
    };
    TlsInfo {
        protocol,
        key_exchange,
        cipher,
        hash,
        peer_cert_subject: subject,
        peer_cert_issuer: issuer,
        peer_cert_cn: cn,
    }
}

/// Splits a suite's IANA name as RabbitMQ's management API shows it:
/// `TLS13_AES_256_GCM_SHA384` is (`any`, `aes_256_gcm`, `sha384`),
/// `TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256` is (`ecdhe_rsa`, `aes_128_gcm`, `sha256`).
fn split_suite(name: &str) -> (String, String, String) {
    let lower = name.to_ascii_lowercase();
    let (kx, rest) = match lower.strip_prefix("tls13_") {
        Some(rest) => ("any".to_string(), rest.to_string()),
        None => match lower.trim_start_matches("tls_").split_once("_with_") {
            Some((kx, rest)) => (kx.to_string(), rest.to_string()),
            None => (String::new(), lower.clone()),
        },
    };
    match rest.rsplit_once('_') {
        Some((cipher, hash)) => (kx, cipher.to_string(), hash.to_string()),
        None => (kx, rest, String::new()),
    }
}

/// A certificate's subject and issuer in RFC 4514 order (most specific
/// first, as RabbitMQ prints them), and its subject's common name.
fn describe(der: &CertificateDer<'_>) -> Option<(String, String, Option<String>)> {
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
    let cn = cert.subject().iter_common_name().next().and_then(|a| a.as_str().ok()).map(str::to_string);
    Some((rfc4514(cert.subject()), rfc4514(cert.issuer()), cn))
}

fn rfc4514(name: &x509_parser::x509::X509Name<'_>) -> String {
    let registry = x509_parser::objects::oid_registry();
    let mut parts = Vec::new();
    for rdn in name.iter_rdn() {
        for attr in rdn.iter() {
            let key = x509_parser::objects::oid2abbrev(attr.attr_type(), registry)
                .map(str::to_string)
                .unwrap_or_else(|_| attr.attr_type().to_id_string());
            let value = attr.as_str().map(str::to_string).unwrap_or_else(|_| "#".to_string());
            parts.push(format!("{key}={}", value.replace('\\', "\\\\").replace(',', "\\,")));
        }
    }
    parts.reverse();
    parts.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suites_are_split_as_rabbitmq_shows_them() {
        let s = |a: &str, b: &str, c: &str| (a.to_string(), b.to_string(), c.to_string());
        assert_eq!(split_suite("TLS13_AES_256_GCM_SHA384"), s("any", "aes_256_gcm", "sha384"));
        assert_eq!(split_suite("TLS13_CHACHA20_POLY1305_SHA256"), s("any", "chacha20_poly1305", "sha256"));
        assert_eq!(split_suite("TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"), s("ecdhe_rsa", "aes_128_gcm", "sha256"));
    }
}
