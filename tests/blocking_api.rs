//! The blocking API, from a plain (non-async) test with a plain std socket.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use warren::protocol::frame::{parse_frame, write_method, PROTOCOL_HEADER};
use warren::protocol::methods::connection;
use warren::protocol::{FieldTable, Frame, Method};
use warren::Event;

const WAIT: Duration = Duration::from_secs(5);

fn send(stream: &mut TcpStream, method: impl Into<Method>) {
    let mut buf = BytesMut::new();
    write_method(&mut buf, 0, &method.into());
    stream.write_all(&buf).unwrap();
}

fn next_method(stream: &mut TcpStream, buf: &mut BytesMut) -> Method {
    loop {
        if let Some(Frame::Method { method, .. }) = parse_frame(buf, 1 << 20).unwrap() {
            return method;
        }
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).unwrap();
        assert!(n > 0, "closed");
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[test]
fn a_sync_test_starts_a_broker_awaits_events_and_injects_faults() {
    let broker = warren::blocking::Broker::start().unwrap();
    let mut events = broker.events();
    let mut stream = TcpStream::connect(broker.addr()).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let mut buf = BytesMut::new();
    stream.write_all(PROTOCOL_HEADER).unwrap();
    assert!(matches!(next_method(&mut stream, &mut buf), Method::ConnectionStart(_)));
    send(
        &mut stream,
        connection::StartOk {
            client_properties: FieldTable::new(),
            mechanism: "PLAIN".into(),
            response: Bytes::from_static(b"\0guest\0guest"),
            locale: "en_US".into(),
        },
    );
    assert!(matches!(next_method(&mut stream, &mut buf), Method::ConnectionTune(_)));
    send(&mut stream, connection::TuneOk { channel_max: 10, frame_max: 131_072, heartbeat: 0 });
    send(&mut stream, connection::Open { virtual_host: "/".into(), ..Default::default() });
    assert!(matches!(next_method(&mut stream, &mut buf), Method::ConnectionOpenOk(_)));

    let opened = events.wait_for(|e| matches!(e, Event::ConnectionOpened { .. }), WAIT).expect("opened");
    let Event::ConnectionOpened { connection, heartbeat, .. } = opened else { unreachable!() };
    assert_eq!(heartbeat, 0);
    let handle = broker.connection(&connection).expect("by name");
    handle.force_close("bye from a sync test");
    match next_method(&mut stream, &mut buf) {
        Method::ConnectionClose(c) => {
            assert_eq!(c.reply_text.to_string(), "CONNECTION_FORCED - bye from a sync test")
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_sync_test_restarts_the_broker_on_the_same_port() {
    let broker = warren::blocking::Broker::start().unwrap();
    let mut events = broker.events();
    let restart = warren::Restart { downtime: Duration::from_millis(50), crash: false };
    let done = broker.restart(restart).expect("restarted");
    assert!(done.took >= Duration::from_millis(50));
    assert_eq!(
        events.wait_for(|e| matches!(e, Event::BrokerStopped { .. }), WAIT),
        Some(Event::BrokerStopped { crash: false })
    );
    TcpStream::connect(broker.addr()).expect("listening again on the same port");
}
