//! Resetting a broker between tests: everything a test made goes, what the
//! broker started with comes back, and its connections are closed with 320.

mod common;

use std::time::Duration;

use common::RawClient;
use warren::broker::alarm::Resource;
use warren::protocol::methods::{exchange, queue};
use warren::protocol::Method;
use warren::EmbeddedBroker;

const WAIT: Duration = Duration::from_secs(5);

#[tokio::test]
async fn reset_closes_connections_and_leaves_only_the_start_up_state() {
    let broker = EmbeddedBroker::builder().vhost("kept").start().await.unwrap();
    let b = broker.broker().clone();
    let before: Vec<String> = b.exchange_infos().iter().map(|x| format!("{}/{}", x.vhost, x.name)).collect();

    let mut client = RawClient::open(broker.addr(), 0).await;
    client.declare_queue("made-by-a-test").await;
    client.send(1, exchange::Declare { exchange: "x".into(), kind: "fanout".into(), ..Default::default() }).await;
    assert!(matches!(client.expect_method(WAIT).await, (1, Method::ExchangeDeclareOk(_))));
    client.send(1, queue::Bind { queue: "made-by-a-test".into(), exchange: "x".into(), ..Default::default() }).await;
    assert!(matches!(client.expect_method(WAIT).await, (1, Method::QueueBindOk(_))));
    b.add_vhost(&"added".into());
    b.access.put_user(&warren::config::UserConfig::plain("temp", "pw")).unwrap();
    broker.raise_alarm(Resource::Memory);

    let reset = tokio::spawn({
        let b = b.clone();
        async move { b.reset_and_wait(WAIT).await }
    });
    match client.expect_method(WAIT).await {
        (0, Method::ConnectionClose(c)) => {
            assert_eq!(c.reply_code, 320);
            assert_eq!(c.reply_text.to_string(), "CONNECTION_FORCED - broker reset");
        }
        other => panic!("{other:?}"),
    }
    // The reset does not wait for close-ok: a client that is not reading
    // must not hold it up. The socket closes right after the close frame.
    assert!(matches!(client.read(WAIT).await, common::Read::Closed), "then end of stream");
    let done = reset.await.unwrap();
    assert_eq!((done.closed_connections, done.all_gone), (1, true), "{done:?}");

    assert!(b.queue_infos().is_empty(), "{:?}", b.queue_infos());
    let after: Vec<String> = b.exchange_infos().iter().map(|x| format!("{}/{}", x.vhost, x.name)).collect();
    assert_eq!(after, before);
    assert!(b.exchange_infos().iter().all(|x| x.bindings.is_empty()));
    let mut vhosts: Vec<String> = b.vhosts.iter().map(|v| v.key().to_string()).collect();
    vhosts.sort();
    assert_eq!(vhosts, ["/", "kept"]);
    assert!(b.access.user("temp").is_none());
    assert!(!b.alarms.current().any());
    assert!(b.connections.is_empty());

    // The broker is as good as new: the same test can run again.
    let mut again = RawClient::open(broker.addr(), 0).await;
    again.declare_queue("made-by-a-test").await;
}

#[tokio::test]
async fn each_test_can_have_a_vhost_of_its_own_removed_when_it_is_done() {
    use lapin::options::{BasicPublishOptions, QueueDeclareOptions};
    use lapin::{BasicProperties, Connection, ConnectionProperties};

    let broker = EmbeddedBroker::start().await.unwrap();
    let (a, b) = (broker.fresh_vhost(), broker.fresh_vhost());
    assert_ne!(a.name(), b.name());
    assert!(a.name().starts_with("test-"), "{}", a.name());
    let conn = Connection::connect(a.url(), ConnectionProperties::default()).await.expect("connect to a");
    let ch = conn.create_channel().await.unwrap();
    ch.queue_declare("q".into(), QueueDeclareOptions::default(), Default::default()).await.unwrap();
    ch.basic_publish("".into(), "q".into(), BasicPublishOptions::default(), b"m", BasicProperties::default())
        .await
        .unwrap();
    // The same name in the other vhost is another queue, empty.
    let other = Connection::connect(b.url(), ConnectionProperties::default()).await.expect("connect to b");
    let och = other.create_channel().await.unwrap();
    let q = och.queue_declare("q".into(), QueueDeclareOptions::default(), Default::default()).await.unwrap();
    assert_eq!(q.message_count(), 0);

    let name = a.name().to_string();
    let mut events = broker.events();
    drop(a);
    assert!(broker.broker().vhost(&name.as_str().into()).is_none());
    assert!(broker.broker().queue_infos().iter().all(|q| q.vhost != name));
    // Its connection is closed (320, answered by lapin); the other's is not.
    let closed = events.wait_for(|e| matches!(e, warren::Event::ConnectionClosed { .. }), WAIT).await;
    assert!(closed.is_some());
    assert!(!conn.status().connected());
    assert!(other.status().connected());
    assert_eq!(broker.broker().connections.len(), 1);
}
