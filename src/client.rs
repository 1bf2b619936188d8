//! A lean AMQP client on raw frames from `crate::protocol`: what `warren
//! perf` loads a broker with (so that the broker rather than a client
//! library is what is measured) and what the teaching demo's workers are.
//! Speaks amqp:// and amqps://.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::protocol::frame::{parse_frame, write_method, PROTOCOL_HEADER};
use crate::protocol::methods::{channel, connection};
use crate::protocol::{FieldTable, FieldValue, Frame, Method};

/// Where and how to connect, from an AMQP URI.
#[derive(Clone)]
pub struct Target {
    /// `host:port`.
    pub addr: String,
    pub host: String,
    pub user: String,
    pub password: String,
    pub vhost: String,
    /// For amqps://: the client configuration (trusting `--tls-ca`).
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

impl Target {
    /// `amqp[s]://user:password@host:port/vhost` (vhost `%2f` is `/`, none
    /// is `/`); `ca`: the authorities to trust for amqps.
    pub fn parse(uri: &str, ca: Option<&std::path::Path>) -> Result<Target, String> {
        let (secure, rest) = match (uri.strip_prefix("amqp://"), uri.strip_prefix("amqps://")) {
            (Some(rest), _) => (false, rest),
            (None, Some(rest)) => (true, rest),
            _ => return Err(format!("not an amqp:// or amqps:// URI: {uri}")),
        };
        let (creds, rest) = rest.rsplit_once('@').unwrap_or(("guest:guest", rest));
        let (user, password) = creds.split_once(':').unwrap_or((creds, ""));
        let (hostport, vhost) = rest.split_once('/').unwrap_or((rest, "%2f"));
        let vhost = match vhost {
            "" => "/".to_string(),
            v => percent_decode(v),
        };
        let default_port = if secure { 5671 } else { 5672 };
        let (host, addr) = match hostport.rsplit_once(':') {
            Some((h, p)) if p.parse::<u16>().is_ok() => (h.to_string(), hostport.to_string()),
            _ => (hostport.to_string(), format!("{hostport}:{default_port}")),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']').to_string();
        let tls = match secure {
            false => None,
            true => Some(Arc::new(tls_client(ca)?)),
        };
        Ok(Target { addr, host, user: percent_decode(user), password: percent_decode(password), vhost, tls })
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (bytes[i], bytes.get(i + 1).copied().and_then(hex), bytes.get(i + 2).copied().and_then(hex)) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn tls_client(ca: Option<&std::path::Path>) -> Result<rustls::ClientConfig, String> {
    use rustls::pki_types::pem::PemObject;
    let ca = ca.ok_or("amqps:// needs --tls-ca, the authority's PEM file")?;
    let mut roots = rustls::RootCertStore::empty();
    let certs = rustls::pki_types::CertificateDer::pem_file_iter(ca).map_err(|e| format!("--tls-ca: {e}"))?;
    for cert in certs {
        roots.add(cert.map_err(|e| format!("--tls-ca: {e}"))?).map_err(|e| format!("--tls-ca: {e}"))?;
    }
    Ok(rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

pub type Reader = Box<dyn AsyncRead + Unpin + Send>;
pub type Writer = Box<dyn AsyncWrite + Unpin + Send>;

/// One open connection with channel 1 open.
pub struct Client {
    pub reader: Reader,
    pub writer: Writer,
    buf: BytesMut,
    /// This end of the socket (a broker names the connection `local -> addr`).
    pub local: std::net::SocketAddr,
    /// The largest frame the broker takes (its `tune`), 0 for no limit.
    pub frame_max: u32,
}

impl Client {
    /// Connects, logs in with PLAIN, tunes with `heartbeat` and opens
    /// channel 1.
    pub async fn open(target: &Target, heartbeat: u16, name: &str) -> Result<Client, String> {
        Client::handshake(target, heartbeat, name).await.map_err(|e| format!("{name} ({}): {e}", target.addr))
    }

    async fn handshake(target: &Target, heartbeat: u16, name: &str) -> Result<Client, String> {
        let stream = TcpStream::connect(&target.addr).await.map_err(|e| e.to_string())?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        let local = stream.local_addr().map_err(|e| e.to_string())?;
        let (reader, writer): (Reader, Writer) = match &target.tls {
            None => {
                let (r, w) = stream.into_split();
                (Box::new(r), Box::new(w))
            }
            Some(config) => {
                let name = rustls::pki_types::ServerName::try_from(target.host.clone()).map_err(|e| e.to_string())?;
                let tls = tokio_rustls::TlsConnector::from(config.clone())
                    .connect(name, stream)
                    .await
                    .map_err(|e| format!("TLS: {e}"))?;
                let (r, w) = tokio::io::split(tls);
                (Box::new(r), Box::new(w))
            }
        };
        let mut c = Client { reader, writer, buf: BytesMut::with_capacity(64 * 1024), local, frame_max: 0 };
        c.write(PROTOCOL_HEADER).await?;
        c.expect(|m| matches!(m, Method::ConnectionStart(_))).await?;
        let props = FieldTable::new()
            .with("product", FieldValue::LongStr(Bytes::from_static(b"warren")))
            .with("connection_name", FieldValue::LongStr(Bytes::from(name.to_string())));
        let response = Bytes::from(format!("\0{}\0{}", target.user, target.password));
        let start_ok = connection::StartOk {
            client_properties: props,
            mechanism: "PLAIN".into(),
            response,
            locale: "en_US".into(),
        };
        c.send(0, start_ok).await?;
        let Method::ConnectionTune(tune) = c.expect(|m| matches!(m, Method::ConnectionTune(_))).await? else {
            unreachable!("expect checked it")
        };
        c.frame_max = tune.frame_max;
        // tune-ok, connection.open and channel.open go in one write, and
        // the two open-oks come back together: a broker handles frames in
        // order, so it has opened the connection by the time it reads the
        // channel.open. One round trip fewer for every connection.
        let mut out = BytesMut::new();
        let tune_ok = connection::TuneOk { channel_max: tune.channel_max, frame_max: tune.frame_max, heartbeat };
        write_method(&mut out, 0, &tune_ok.into());
        let open = connection::Open { virtual_host: target.vhost.as_str().into(), ..Default::default() };
        write_method(&mut out, 0, &open.into());
        write_method(&mut out, 1, &channel::Open::default().into());
        c.write(&out).await?;
        c.expect(|m| matches!(m, Method::ConnectionOpenOk(_))).await?;
        c.expect(|m| matches!(m, Method::ChannelOpenOk(_))).await?;
        Ok(c)
    }

    pub async fn write(&mut self, bytes: &[u8]) -> Result<(), String> {
        self.writer.write_all(bytes).await.map_err(|e| e.to_string())
    }

    pub async fn send(&mut self, channel: u16, method: impl Into<Method>) -> Result<(), String> {
        let mut out = BytesMut::new();
        write_method(&mut out, channel, &method.into());
        self.write(&out).await
    }

    /// The next frame; an error once the broker has closed the connection.
    pub async fn frame(&mut self) -> Result<Frame, String> {
        loop {
            if let Some(f) = parse_frame(&mut self.buf, u32::MAX).map_err(|e| format!("a bad frame: {e:?}"))? {
                return Ok(f);
            }
            if self.buf.capacity() - self.buf.len() < 16 * 1024 {
                self.buf.reserve(256 * 1024);
            }
            match self.reader.read_buf(&mut self.buf).await {
                Ok(0) => return Err("the broker closed the connection".into()),
                Ok(_) => {}
                Err(e) => return Err(e.to_string()),
            }
        }
    }

    /// The next frame, or None if none has come by `until`.
    pub async fn frame_until(&mut self, until: tokio::time::Instant) -> Result<Option<Frame>, String> {
        match tokio::time::timeout_at(until, self.frame()).await {
            Ok(frame) => frame.map(Some),
            Err(_) => Ok(None),
        }
    }

    /// The next frame, or None once `stop` turns true; the wait is only
    /// for the socket, so frames already read cost no more than a parse.
    pub async fn frame_or_stop(
        &mut self,
        stop: &mut tokio::sync::watch::Receiver<bool>,
    ) -> Result<Option<Frame>, String> {
        loop {
            if let Some(f) = parse_frame(&mut self.buf, u32::MAX).map_err(|e| format!("a bad frame: {e:?}"))? {
                return Ok(Some(f));
            }
            if *stop.borrow() {
                return Ok(None);
            }
            if self.buf.capacity() - self.buf.len() < 16 * 1024 {
                self.buf.reserve(256 * 1024);
            }
            // The stop first: once it is given, nothing more is read.
            tokio::select! {
                biased;
                _ = stop.changed() => return Ok(None),
                read = self.reader.read_buf(&mut self.buf) => match read {
                    Ok(0) => return Err("the broker closed the connection".into()),
                    Ok(_) => {}
                    Err(e) => return Err(e.to_string()),
                },
            }
        }
    }

    /// The next method frame, skipping heartbeats and content; a
    /// `connection.close` from the broker is an error with its text.
    pub async fn method(&mut self) -> Result<Method, String> {
        loop {
            match self.frame().await? {
                Frame::Method { method: Method::ConnectionClose(c), .. } => {
                    return Err(format!("closed by the broker: {} {}", c.reply_code, c.reply_text));
                }
                Frame::Method { method, .. } => return Ok(method),
                _ => {}
            }
        }
    }

    /// The next method, which must be what `wanted` accepts, within 10 s.
    pub async fn expect(&mut self, wanted: impl Fn(&Method) -> bool) -> Result<Method, String> {
        let m = tokio::time::timeout(Duration::from_secs(30), self.method())
            .await
            .map_err(|_| "no answer within 30 s".to_string())??;
        if wanted(&m) {
            Ok(m)
        } else {
            Err(format!("unexpected {}", m.name()))
        }
    }

    /// `connection.close`, then its `close-ok`.
    pub async fn close(mut self) -> Result<(), String> {
        let close = connection::Close { reply_code: 200, reply_text: "Goodbye".into(), ..Default::default() };
        self.send(0, close).await?;
        loop {
            match self.frame().await? {
                Frame::Method { method: Method::ConnectionCloseOk(_), .. } => return Ok(()),
                _ => continue,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_are_read_as_rabbitmq_clients_read_them() {
        let t = Target::parse("amqp://u%40x:p%2Fw@example:5673/my%2fvhost", None).unwrap();
        assert_eq!((t.addr.as_str(), t.user.as_str(), t.password.as_str()), ("example:5673", "u@x", "p/w"));
        assert_eq!(t.vhost, "my/vhost");
        let t = Target::parse("amqp://localhost", None).unwrap();
        assert_eq!((t.addr.as_str(), t.user.as_str(), t.vhost.as_str()), ("localhost:5672", "guest", "/"));
        assert!(Target::parse("amqps://localhost", None).err().unwrap().contains("--tls-ca"));
        assert!(Target::parse("http://x", None).is_err());
    }
}
