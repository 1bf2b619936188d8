//! amqps in the standalone binary: a TLS-only configuration file with
//! RabbitMQ's keys, the ready line, the frame trace over TLS, and bad TLS
//! input — a plain AMQP header, a handshake that never finishes, a client
//! that speaks only TLS 1.0 (`openssl s_client`), a missing certificate
//! where one is required — each a log line and a closed socket within the
//! handshake timeout, while other clients go on.

#[path = "common/binary.rs"]
mod binary;
mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use binary::Warren;
use common::tls::{client_config, connect, Identity};
use common::RawClient;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use warren::protocol::frame::PROTOCOL_HEADER;
use warren::tls::certs::TestCertificates;

fn cert_dir(test: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("tls-cli-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// How long until the broker closes `socket` (EOF or reset), reading and
/// dropping what it sends.
async fn closed_within(socket: &mut TcpStream, limit: Duration) -> Duration {
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(limit, socket.read(&mut buf)).await.expect("the broker closed the socket") {
            Ok(0) | Err(_) => return started.elapsed(),
            Ok(_) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tls_only_config_file_serves_amqps_names_what_it_does_not_honour_and_requires_a_certificate() {
    let certs = TestCertificates::generate(&cert_dir("only"), "guest").unwrap();
    let conf = format!(
        "listeners.tcp = none\nlisteners.ssl.default = 127.0.0.1:0\n\
         ssl_options.cacertfile = {}\nssl_options.certfile = {}\nssl_options.keyfile = {}\n\
         ssl_options.verify = verify_peer\nssl_options.fail_if_no_peer_cert = true\n\
         ssl_options.versions.1 = tlsv1.3\nssl_options.versions.2 = tlsv1.2\nssl_options.depth = 2\n",
        certs.ca_certificate.display(),
        certs.server_certificate.display(),
        certs.server_key.display()
    );
    let warren = Warren::start(&["--no-http"], &conf);
    let tls = warren.amqps.expect("the ready line names the amqps listener");
    assert_eq!(warren.amqp, tls, "no plain listener: the ready line has no amqp address");
    let (warning, _) = warren.wait_for_log("ssl_options.depth");
    assert!(warning.contains("not supported by warren"), "{warning}");

    let mut client = RawClient::over(connect(tls, client_config(&certs, Identity::Client(&certs))).await.unwrap());
    client.open_on(0).await;

    // fail_if_no_peer_cert: a client without a certificate is refused.
    if let Ok(stream) = connect(tls, client_config(&certs, Identity::Anonymous)).await {
        let mut anonymous = RawClient::over(stream);
        anonymous.send_raw(PROTOCOL_HEADER).await;
        assert!(matches!(anonymous.read(Duration::from_secs(5)).await, common::Read::Closed));
    }
    let (line, _) = warren.wait_for_log("refused: TLS handshake failed");
    assert!(line.contains("certificate"), "{line}");
    // The first client is still served.
    client.declare_queue("still-here").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_tls_input_is_a_log_line_and_a_closed_socket_within_the_handshake_timeout() {
    let dir = cert_dir("bad");
    let warren = Warren::start(
        &["--no-http", "--tls-self-signed", dir.to_str().unwrap(), "--tls-port", "0"],
        "ssl_handshake_timeout = 500\n",
    );
    let tls = warren.amqps.unwrap();
    let certs = TestCertificates::in_dir(&dir, "guest");
    let mut good = RawClient::over(connect(tls, client_config(&certs, Identity::Anonymous)).await.unwrap());
    good.open_on(0).await;

    // A plain AMQP client on the TLS port: told apart, closed at once.
    let mut plain = TcpStream::connect(tls).await.unwrap();
    plain.write_all(PROTOCOL_HEADER).await.unwrap();
    assert!(closed_within(&mut plain, Duration::from_secs(2)).await < Duration::from_millis(400));
    warren.wait_for_log("a plain AMQP client on the TLS port");

    // Nothing at all, and half a ClientHello: closed after 500 ms.
    let mut silent = TcpStream::connect(tls).await.unwrap();
    let took = closed_within(&mut silent, Duration::from_secs(3)).await;
    assert!(took >= Duration::from_millis(450) && took < Duration::from_secs(2), "{took:?}");
    warren.wait_for_log("no TLS handshake within 500 ms (ssl_handshake_timeout)");
    let mut half = TcpStream::connect(tls).await.unwrap();
    half.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]).await.unwrap();
    let took = closed_within(&mut half, Duration::from_secs(3)).await;
    assert!(took >= Duration::from_millis(450) && took < Duration::from_secs(2), "{took:?}");

    // A client that speaks only TLS 1.0 (OpenSSL must be told to allow it).
    let s_client = |args: &[&str]| {
        Command::new("openssl")
            .args(["s_client", "-connect", &tls.to_string(), "-servername", "localhost"])
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()
            .expect("openssl is installed")
    };
    let old = s_client(&["-tls1", "-cipher", "DEFAULT@SECLEVEL=0"]);
    assert!(!old.status.success(), "{}", String::from_utf8_lossy(&old.stdout));
    let (line, _) = warren.wait_for_log("refused: TLS handshake failed");
    assert!(line.contains("the client offers TLS 1.0 at most"), "{line}");
    // A good one: TLS 1.3, the chain verified against the test authority.
    let ca = certs.ca_certificate.to_str().unwrap();
    let ok = s_client(&["-CAfile", ca, "-verify_return_error", "-brief"]);
    let said = String::from_utf8_lossy(&ok.stderr).into_owned() + &String::from_utf8_lossy(&ok.stdout);
    assert!(said.contains("Protocol version: TLSv1.3"), "{said}");
    assert!(said.contains("Verification: OK"), "{said}");

    // None of it touched the connection that was already there.
    good.declare_queue("unharmed").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_frame_trace_and_heartbeats_work_over_tls() {
    let dir = cert_dir("trace");
    let warren = Warren::start(
        &[
            "--no-http",
            "--no-tcp",
            "--trace-frames",
            "--heartbeat",
            "1",
            "--tls-self-signed",
            dir.to_str().unwrap(),
            "--tls-port",
            "0",
        ],
        "",
    );
    warren.wait_for_log("started TLS (amqps) listener on");
    let certs = TestCertificates::in_dir(&dir, "guest");
    let mut client = RawClient::over(connect(warren.amqp, client_config(&certs, Identity::Anonymous)).await.unwrap());
    client.open_on(1).await;
    let (line, _) = warren.wait_for_log("TLS connection from");
    assert!(line.contains("tlsv1.3"), "{line}");
    let (tune_ok, _) = warren.wait_for_log("<- [0] connection.tune-ok");
    assert!(tune_ok.contains("heartbeat=1"), "{tune_ok}");
    warren.wait_for_log("-> heartbeat");
}
