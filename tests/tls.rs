//! amqps end to end over real sockets: the TLS handshake with and without a
//! client certificate, EXTERNAL authentication, what the management API
//! shows, and everything that must not change over TLS — the heartbeat
//! window (a silent client, and one stalled inside a TLS record), a kill
//! that is a reset, the black hole, flow control, a restart.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use bytes::BytesMut;
use common::http::get;
use common::tls::{client_config, connect, Identity};
use common::{publish_frames, RawClient, Read};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;
use warren::protocol::frame::{HEARTBEAT_FRAME, PROTOCOL_HEADER};
use warren::protocol::methods::connection;
use warren::protocol::{Frame, Method};
use warren::tls::certs::TestCertificates;
use warren::{EmbeddedBroker, Event};

const WAIT: Duration = Duration::from_secs(10);

/// A directory of its own for one test's certificates.
fn cert_dir(test: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("tls-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

async fn tls_broker(test: &str) -> EmbeddedBroker {
    EmbeddedBroker::builder().tls_self_signed(cert_dir(test)).http(true).start().await.unwrap()
}

/// The `connection.start` the broker sends first, over a TLS client.
async fn start_over(
    client: &mut RawClient<impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>,
) -> connection::Start {
    client.send_raw(PROTOCOL_HEADER).await;
    match client.expect_method(WAIT).await {
        (0, Method::ConnectionStart(start)) => start,
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_client_certificate_is_verified_shown_as_rabbitmq_shows_it_and_offers_external() {
    let broker = tls_broker("inspect").await;
    let certs = broker.certificates().unwrap().clone();
    let tls = broker.tls_addr().unwrap();
    assert!(broker.amqps_url().unwrap().starts_with(&format!("amqps://guest:guest@localhost:{}/", tls.port())));

    // Without a certificate: PLAIN and AMQPLAIN, as over TCP.
    let mut anonymous = RawClient::over(connect(tls, client_config(&certs, Identity::Anonymous)).await.unwrap());
    assert_eq!(&start_over(&mut anonymous).await.mechanisms[..], b"PLAIN AMQPLAIN");

    // With one, EXTERNAL is offered when configured, and logs in as its CN.
    let mut config = broker.broker().config.clone();
    config.auth_mechanisms.push(warren::config::tls::AuthMechanism::External);
    let dir = cert_dir("inspect-external");
    let external = EmbeddedBroker::builder().config(config).tls_self_signed(&dir).http(true).start().await.unwrap();
    let certs = external.certificates().unwrap().clone();
    let stream = connect(external.tls_addr().unwrap(), client_config(&certs, Identity::Client(&certs))).await.unwrap();
    let mut client = RawClient::over(stream);
    let start = start_over(&mut client).await;
    assert_eq!(&start.mechanisms[..], b"PLAIN AMQPLAIN EXTERNAL");
    client
        .send(
            0,
            connection::StartOk {
                client_properties: Default::default(),
                mechanism: "EXTERNAL".into(),
                response: Default::default(),
                locale: "en_US".into(),
            },
        )
        .await;
    assert!(matches!(client.expect_method(WAIT).await, (0, Method::ConnectionTune(_))));
    client.send(0, connection::TuneOk { channel_max: 2047, frame_max: 131_072, heartbeat: 0 }).await;
    client.send(0, connection::Open { virtual_host: "/".into(), ..Default::default() }).await;
    assert!(matches!(client.expect_method(WAIT).await, (0, Method::ConnectionOpenOk(_))));

    let shown = get(external.http_addr().unwrap(), "/api/connections").await;
    let c = &shown[0];
    assert_eq!(
        (c["ssl"].as_bool(), c["auth_mechanism"].as_str(), c["user"].as_str()),
        (Some(true), Some("EXTERNAL"), Some("guest"))
    );
    assert_eq!(c["ssl_protocol"], "tlsv1.3");
    assert!(["aes_256_gcm", "aes_128_gcm", "chacha20_poly1305"].contains(&c["ssl_cipher"].as_str().unwrap()), "{c}");
    assert_eq!(c["peer_cert_subject"], "O=warren,CN=guest");
    assert_eq!(c["peer_cert_issuer"], "O=warren,CN=warren test authority");
    // A plain connection shows none of it.
    let plain = RawClient::open(external.addr(), 0).await;
    let shown = get(external.http_addr().unwrap(), "/api/connections").await;
    let plain_row = shown.as_array().unwrap().iter().find(|c| c["ssl"] == false).unwrap();
    assert!(plain_row["peer_cert_subject"].is_null());
    drop(plain);
}

#[tokio::test]
async fn external_is_refused_when_not_offered_and_a_certificate_from_another_authority_is_refused() {
    let broker = tls_broker("refusals").await;
    let certs = broker.certificates().unwrap().clone();
    let tls = broker.tls_addr().unwrap();
    // EXTERNAL is not in auth_mechanisms by default: choosing it ends the connection.
    let mut client = RawClient::over(connect(tls, client_config(&certs, Identity::Client(&certs))).await.unwrap());
    start_over(&mut client).await;
    let ok = connection::StartOk { mechanism: "EXTERNAL".into(), locale: "en_US".into(), ..Default::default() };
    client.send(0, ok).await;
    assert!(matches!(client.read(WAIT).await, Read::Closed));

    // A client certificate the broker's authority did not sign.
    let stranger = TestCertificates::generate(&cert_dir("refusals-stranger"), "guest").unwrap();
    let config = client_config(&certs, Identity::Files(&stranger.client_certificate, &stranger.client_key));
    // Under TLS 1.3 the client learns of the refusal at its first read.
    if let Ok(stream) = connect(tls, config).await {
        let mut client = RawClient::over(stream);
        client.send_raw(PROTOCOL_HEADER).await;
        assert!(matches!(client.read(WAIT).await, Read::Closed), "refused");
    }
    // The broker goes on serving others.
    let mut fine = RawClient::over(connect(tls, client_config(&certs, Identity::Anonymous)).await.unwrap());
    fine.open_on(0).await;
}

/// Reads until the broker closes; how long after `since` that was.
async fn closed_after<S: tokio::io::AsyncRead + Unpin>(stream: &mut S, since: Instant) -> Duration {
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(WAIT, stream.read(&mut buf)).await.expect("dropped within 10 s") {
            Ok(0) | Err(_) => return since.elapsed(),
            Ok(_) => {}
        }
    }
}

#[tokio::test]
async fn a_silent_tls_client_is_dropped_between_2t_and_3t_and_so_is_one_stalled_inside_a_record() {
    let broker = tls_broker("heartbeats").await;
    let certs = broker.certificates().unwrap().clone();
    let tls = broker.tls_addr().unwrap();
    let t = Duration::from_secs(1);

    let mut silent = RawClient::over(connect(tls, client_config(&certs, Identity::Anonymous)).await.unwrap());
    silent.open_on(1).await;
    // Its last octets: a heartbeat, then nothing at all.
    silent.send_raw(&HEARTBEAT_FRAME).await;
    let last = Instant::now();
    let silence = closed_after(&mut silent.stream, last).await;
    assert!(
        silence >= 2 * t - Duration::from_millis(50) && silence <= 3 * t + Duration::from_millis(300),
        "{silence:?}"
    );

    // A client that stops halfway through a TLS record: three octets of a
    // record header reach the socket, the record never completes. The
    // monitor counts the socket's octets, so those three are its last sign
    // of life, and it is dropped 2T..3T after them.
    let stream = connect(tls, client_config(&certs, Identity::Anonymous)).await.unwrap();
    let mut stalled = RawClient::over(stream);
    stalled.open_on(1).await;
    stalled.stream.get_mut().0.write_all(&[0x17, 0x03, 0x03]).await.unwrap();
    let last = Instant::now();
    let silence = closed_after(&mut stalled.stream.get_mut().0, last).await;
    assert!(
        silence >= 2 * t - Duration::from_millis(50) && silence <= 3 * t + Duration::from_millis(300),
        "{silence:?}"
    );
}

#[tokio::test]
async fn a_kill_over_tls_is_a_tcp_reset_and_a_black_hole_stops_heartbeats_until_released() {
    let broker = tls_broker("faults").await;
    let certs = broker.certificates().unwrap().clone();
    let tls = broker.tls_addr().unwrap();
    let mut client = RawClient::over(connect(tls, client_config(&certs, Identity::Anonymous)).await.unwrap());
    client.open_on(0).await;
    let handle = broker.all_connections().pop().unwrap();
    handle.kill();
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(WAIT, client.stream.get_mut().0.read(&mut buf)).await.unwrap();
    assert_eq!(
        read.map_err(|e| e.kind()).unwrap_err(),
        std::io::ErrorKind::ConnectionReset,
        "a reset, not a close_notify"
    );

    // Heartbeat 1: warren sends one every 500 ms, except into a black hole.
    let mut client = RawClient::over(connect(tls, client_config(&certs, Identity::Anonymous)).await.unwrap());
    client.open_on(1).await;
    let heartbeat = |r: Read| matches!(r, Read::Frame(Frame::Heartbeat { .. }));
    assert!(heartbeat(client.read(WAIT).await));
    let handle = broker.all_connections().pop().unwrap();
    handle.black_hole(true);
    let mut events = broker.events();
    let quiet = client.read_bytes(Duration::from_millis(1_500)).await;
    assert!(quiet.len() <= 64, "at most what was in flight: {} octets", quiet.len());
    handle.black_hole(false);
    let sent = events.wait_for(|e| matches!(e, Event::HeartbeatSent { .. }), WAIT).await;
    assert!(sent.is_some());
    assert!(heartbeat(client.read(WAIT).await), "heartbeats again once released");
}

#[tokio::test]
async fn an_alarm_blocks_a_tls_publisher_and_pauses_its_monitor_and_a_restart_brings_tls_back() {
    let broker = tls_broker("flow").await;
    let certs = broker.certificates().unwrap().clone();
    let tls = broker.tls_addr().unwrap();
    let mut client = RawClient::over(connect(tls, client_config(&certs, Identity::Anonymous)).await.unwrap());
    client.open_on(1).await;
    client.declare_queue("q").await;
    broker.raise_alarm(warren::broker::alarm::Resource::Memory);
    let mut frames = BytesMut::new();
    publish_frames(&mut frames, "q", false, b"m");
    client.send_raw(&frames).await;
    let blocked = client.expect_method(WAIT).await;
    assert!(matches!(blocked, (0, Method::ConnectionBlocked(_))), "{blocked:?}");
    let handle = broker.all_connections().pop().unwrap();
    assert_eq!(handle.state(), warren::ConnectionState::Blocked);
    assert!(handle.monitor_paused());
    // Silent, and blocked for 4T: not dropped, the monitor is paused.
    let quiet_until = Instant::now() + Duration::from_secs(4);
    while Instant::now() < quiet_until {
        assert!(heartbeat_or_nothing(client.read(Duration::from_secs(2)).await));
    }
    broker.clear_alarm(warren::broker::alarm::Resource::Memory);
    assert!(matches!(client.expect_method(WAIT).await, (0, Method::ConnectionUnblocked(_))));

    // After a restart the TLS listener is back on its port.
    broker.restart(warren::Restart { downtime: Duration::from_millis(100), crash: false }).await.unwrap();
    let mut again = RawClient::over(connect(tls, client_config(&certs, Identity::Anonymous)).await.unwrap());
    again.open_on(0).await;
}

fn heartbeat_or_nothing(read: Read) -> bool {
    matches!(read, Read::Frame(Frame::Heartbeat { .. }))
}

#[tokio::test]
async fn lapin_over_rustls_publishes_and_consumes() {
    use futures_lite::StreamExt;
    use lapin::options::{BasicConsumeOptions, BasicPublishOptions, QueueDeclareOptions};
    let broker = tls_broker("lapin").await;
    let certs = broker.certificates().unwrap().clone();
    let tls = lapin::tcp::OwnedTLSConfig {
        identity: None,
        cert_chain: Some(std::fs::read_to_string(&certs.ca_certificate).unwrap()),
    };
    let props = lapin::ConnectionProperties::default();
    let runtime = lapin::runtime::default_runtime().unwrap();
    let conn = lapin::Connection::connect_with_config(&broker.amqps_url().unwrap(), props, tls, runtime).await.unwrap();
    let ch = conn.create_channel().await.unwrap();
    ch.queue_declare("tls-q".into(), QueueDeclareOptions::default(), Default::default()).await.unwrap();
    ch.basic_publish("".into(), "tls-q".into(), BasicPublishOptions::default(), b"over tls", Default::default())
        .await
        .unwrap();
    let mut consumer = ch
        .basic_consume(
            "tls-q".into(),
            "c".into(),
            BasicConsumeOptions { no_ack: true, ..Default::default() },
            Default::default(),
        )
        .await
        .unwrap();
    let delivery = tokio::time::timeout(WAIT, consumer.next()).await.unwrap().unwrap().unwrap();
    assert_eq!(delivery.data, b"over tls");
    let shown = broker.all_connections().pop().unwrap();
    assert_eq!(shown.info().tls.unwrap().protocol, "tlsv1.3");
}
