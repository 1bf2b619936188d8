//! The message store with a data directory: what a broker writes, a new
//! broker on the same directory reads back; confirms come after the
//! write; a torn segment tail is cut and the rest recovered; a foreign file
//! refuses the start; fully acknowledged segments are deleted; and the real
//! binary, SIGKILLed while a publisher with confirms runs flat out, comes
//! back with every confirmed message exactly once.

#[path = "common/binary.rs"]
mod binary;

use std::path::{Path, PathBuf};
use std::time::Duration;

use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use warren::EmbeddedBroker;

/// A fresh data directory under the target directory, removed when the
/// test ends, however it ends.
struct DataDir(PathBuf);

impl std::ops::Deref for DataDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for DataDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn data_dir(test: &str) -> DataDir {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("store-{test}-{}", std::process::id()));
    DataDir(dir)
}

async fn start(dir: &Path) -> EmbeddedBroker {
    EmbeddedBroker::builder().data_dir(dir).start().await.unwrap()
}

async fn channel(broker: &EmbeddedBroker) -> (Connection, Channel) {
    let conn = Connection::connect(&broker.url(), ConnectionProperties::default()).await.unwrap();
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default()).await.unwrap();
    (conn, ch)
}

async fn publish(ch: &Channel, exchange: &str, key: &str, body: &[u8], persistent: bool) {
    let props = BasicProperties::default().with_delivery_mode(if persistent { 2 } else { 1 });
    let confirm = ch.basic_publish(exchange.into(), key.into(), BasicPublishOptions::default(), body, props);
    assert!(confirm.await.unwrap().await.unwrap().is_ack());
}

async fn durable_queue(ch: &Channel, name: &str) {
    let options = QueueDeclareOptions { durable: true, ..Default::default() };
    ch.queue_declare(name.into(), options, FieldTable::default()).await.unwrap();
}

/// Every message left in `queue`, taken with no_ack: (body, redelivered).
async fn drain(ch: &Channel, queue: &str) -> Vec<(String, bool)> {
    let mut seen = Vec::new();
    while let Some(m) = ch.basic_get(queue.into(), BasicGetOptions { no_ack: true }).await.unwrap() {
        seen.push((String::from_utf8_lossy(&m.delivery.data).into_owned(), m.delivery.redelivered));
    }
    seen
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for q in std::fs::read_dir(dir.join("queues")).unwrap() {
        for f in std::fs::read_dir(q.unwrap().path()).unwrap() {
            let path = f.unwrap().path();
            if path.extension().is_some_and(|e| e == "seg") {
                found.push(path);
            }
        }
    }
    found.sort();
    found
}

#[tokio::test]
async fn a_new_broker_on_the_same_directory_finds_durable_state_and_persistent_messages() {
    let dir = data_dir("recover");
    {
        let broker = start(&dir).await;
        let (_conn, ch) = channel(&broker).await;
        durable_queue(&ch, "work").await;
        ch.queue_declare("scratch".into(), Default::default(), FieldTable::default()).await.unwrap();
        let durable = ExchangeDeclareOptions { durable: true, ..Default::default() };
        ch.exchange_declare("jobs".into(), ExchangeKind::Topic, durable, FieldTable::default()).await.unwrap();
        ch.queue_bind("work".into(), "jobs".into(), "a.*".into(), Default::default(), FieldTable::default())
            .await
            .unwrap();
        for (body, persistent) in [("p1", true), ("t1", false), ("p2", true), ("p3", true)] {
            publish(&ch, "jobs", "a.b", body.as_bytes(), persistent).await;
        }
        publish(&ch, "", "scratch", b"gone", true).await;
        // p1 (and t1) acknowledged, p2 delivered and not: it comes back
        // redelivered.
        for _ in ["p1", "t1"] {
            let m = ch.basic_get("work".into(), BasicGetOptions::default()).await.unwrap().unwrap();
            m.ack(BasicAckOptions::default()).await.unwrap();
        }
        let p2 = ch.basic_get("work".into(), BasicGetOptions::default()).await.unwrap().unwrap();
        assert_eq!(p2.delivery.data, b"p2");
        broker.broker().store.as_ref().unwrap().flush().await;
        broker.shutdown().await;
    }
    let broker = start(&dir).await;
    let (_conn, ch) = channel(&broker).await;
    let passive = QueueDeclareOptions { passive: true, ..Default::default() };
    assert!(ch.queue_declare("scratch".into(), passive, FieldTable::default()).await.is_err());
    let (_conn, ch) = channel(&broker).await;
    assert_eq!(drain(&ch, "work").await, [("p2".into(), true), ("p3".into(), false)]);
    // The binding came back with the exchange: jobs/a.* still routes to work.
    publish(&ch, "jobs", "a.c", b"after", true).await;
    assert_eq!(drain(&ch, "work").await, [("after".into(), false)]);
}

#[tokio::test]
async fn a_confirmed_message_is_already_in_its_segment_file() {
    let dir = data_dir("confirm");
    let broker = start(&dir).await;
    let (_conn, ch) = channel(&broker).await;
    durable_queue(&ch, "q").await;
    for n in 0..50 {
        let body = format!("confirmed-{n}-");
        publish(&ch, "", "q", body.as_bytes(), true).await;
        // The confirm came: the record is in the file, not in a buffer.
        let file = std::fs::read(&segments(&dir)[0]).unwrap();
        assert!(file.windows(body.len()).any(|w| w == body.as_bytes()), "message {n} not on disk at its confirm");
    }
}

#[tokio::test]
async fn a_torn_tail_is_cut_off_and_the_messages_before_it_recovered() {
    let dir = data_dir("torn");
    {
        let broker = start(&dir).await;
        let (_conn, ch) = channel(&broker).await;
        durable_queue(&ch, "q").await;
        for body in ["one", "two", "three"] {
            publish(&ch, "", "q", body.as_bytes(), true).await;
        }
        broker.shutdown().await;
    }
    // Power lost in the middle of writing "three".
    let segment = &segments(&dir)[0];
    let len = std::fs::metadata(segment).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(segment).unwrap().set_len(len - 3).unwrap();
    let broker = start(&dir).await;
    let (_conn, ch) = channel(&broker).await;
    assert_eq!(drain(&ch, "q").await, [("one".into(), false), ("two".into(), false)]);
}

#[tokio::test]
async fn a_foreign_file_in_the_data_directory_refuses_the_start_and_is_named() {
    let dir = data_dir("foreign");
    start(&dir).await.shutdown().await;
    let stray = dir.join("queues").join("holiday-photos.jpg");
    std::fs::write(&stray, b"\xff\xd8\xff").unwrap();
    let err = EmbeddedBroker::builder().data_dir(&*dir).start().await.err().expect("refused");
    assert!(err.to_string().contains("holiday-photos.jpg"), "{err}");
    std::fs::remove_file(&stray).unwrap();

    // A segment that is not one: named too.
    let broker = start(&dir).await;
    let (_conn, ch) = channel(&broker).await;
    durable_queue(&ch, "q").await;
    publish(&ch, "", "q", b"m", true).await;
    broker.shutdown().await;
    let segment = segments(&dir)[0].clone();
    std::fs::write(&segment, b"GIF89a").unwrap();
    let err = EmbeddedBroker::builder().data_dir(&*dir).start().await.err().expect("refused");
    assert!(err.to_string().contains(&*segment.to_string_lossy()) && err.to_string().contains("not a warren seg file"));
}

#[tokio::test]
async fn a_segment_whose_messages_are_all_acknowledged_is_deleted() {
    let dir = data_dir("segments");
    let broker = start(&dir).await;
    let (_conn, ch) = channel(&broker).await;
    durable_queue(&ch, "q").await;
    // 80 x 64 KiB: past the 4 MiB at which a segment takes no more.
    let body = vec![7u8; 64 * 1024];
    for _ in 0..80 {
        publish(&ch, "", "q", &body, true).await;
    }
    let store = broker.broker().store.clone().unwrap();
    store.flush().await;
    let before = segments(&dir);
    assert_eq!(before.len(), 2, "{before:?}");
    for _ in 0..80 {
        let m = ch.basic_get("q".into(), BasicGetOptions::default()).await.unwrap().unwrap();
        m.ack(BasicAckOptions::default()).await.unwrap();
    }
    // The acks are in: a passive declare after them is answered after them.
    let passive = QueueDeclareOptions { passive: true, ..Default::default() };
    assert_eq!(ch.queue_declare("q".into(), passive, FieldTable::default()).await.unwrap().message_count(), 0);
    store.flush().await;
    let after = segments(&dir);
    assert!(!after.contains(&before[0]), "the first segment is gone: {after:?}");
}

#[tokio::test]
async fn sigkill_under_a_flat_out_publisher_loses_no_confirmed_message_and_duplicates_none() {
    use binary::Warren;
    let dir = data_dir("sigkill");
    let dir_arg = dir.to_string_lossy().into_owned();
    let mut warren = Warren::start(&["--no-http", "--data-dir", &dir_arg], "");
    let url = format!("amqp://guest:guest@{}/%2f", warren.amqp);
    let conn = Connection::connect(&url, ConnectionProperties::default()).await.unwrap();
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default()).await.unwrap();
    durable_queue(&ch, "q").await;
    // Up to 500 publishes in flight; a confirmed number goes to `confirmed`.
    let (tx, mut confirmed) = tokio::sync::mpsc::unbounded_channel();
    let publisher = tokio::spawn(async move {
        let mut in_flight = std::collections::VecDeque::new();
        for n in 0u32.. {
            let props = BasicProperties::default().with_delivery_mode(2);
            let Ok(confirm) =
                ch.basic_publish("".into(), "q".into(), Default::default(), &n.to_be_bytes(), props).await
            else {
                return;
            };
            in_flight.push_back((n, confirm));
            if in_flight.len() == 500 {
                let (n, confirm) = in_flight.pop_front().unwrap();
                match confirm.await {
                    Ok(c) if c.is_ack() => {
                        let _ = tx.send(n);
                    }
                    _ => return,
                }
            }
        }
    });
    let mut acked = Vec::new();
    while acked.len() < 10_000 {
        acked.push(tokio::time::timeout(Duration::from_secs(20), confirmed.recv()).await.unwrap().unwrap());
    }
    warren.child.kill().unwrap(); // SIGKILL: no shutdown, no flush
    warren.child.wait().unwrap();
    let _ = publisher.await;
    while let Ok(n) = confirmed.try_recv() {
        acked.push(n);
    }

    let warren = Warren::start(&["--no-http", "--data-dir", &dir_arg], "");
    let url = format!("amqp://guest:guest@{}/%2f", warren.amqp);
    let conn = Connection::connect(&url, ConnectionProperties::default()).await.unwrap();
    let ch = conn.create_channel().await.unwrap();
    let mut seen = std::collections::HashSet::new();
    while let Some(m) = ch.basic_get("q".into(), BasicGetOptions { no_ack: true }).await.unwrap() {
        let n = u32::from_be_bytes(m.delivery.data[..4].try_into().unwrap());
        assert!(seen.insert(n), "message {n} recovered twice");
    }
    let lost: Vec<_> = acked.iter().filter(|n| !seen.contains(n)).collect();
    assert!(lost.is_empty(), "{} confirmed message(s) lost, e.g. {:?}", lost.len(), &lost[..lost.len().min(5)]);
}

#[tokio::test]
async fn a_disk_below_disk_free_limit_raises_the_disk_alarm_and_blocks_publishers() {
    let dir = data_dir("disk-alarm");
    // More free space than any disk here has: the alarm is on at the first check.
    let limit = warren::config::DiskLimit::Absolute(u64::MAX / 2);
    let broker = EmbeddedBroker::builder().data_dir(&*dir).disk_free_limit(limit).start().await.unwrap();
    let mut alarms = broker.broker().alarms.subscribe();
    let set = *tokio::time::timeout(Duration::from_secs(5), alarms.wait_for(|a| a.disk)).await.unwrap().unwrap();
    assert_eq!(set.reason(), "low on disk");
    let (_conn, ch) = channel(&broker).await;
    let props = BasicProperties::default().with_delivery_mode(2);
    // Never confirmed while the alarm lasts: the connection is blocked.
    let _unconfirmed = ch.basic_publish("".into(), "q".into(), Default::default(), b"m", props).await.unwrap();
    let blocked = broker.wait_for_connection_state(warren::ConnectionState::Blocked, Duration::from_secs(5)).await;
    assert!(blocked.is_some(), "the publisher is blocked: {:?}", broker.connections());
}

#[tokio::test]
async fn a_reset_clears_the_data_directory_too() {
    let dir = data_dir("reset");
    {
        let broker = start(&dir).await;
        let (_conn, ch) = channel(&broker).await;
        durable_queue(&ch, "q").await;
        publish(&ch, "", "q", b"m", true).await;
        broker.reset().await;
        broker.broker().store.as_ref().unwrap().flush().await;
        broker.shutdown().await;
    }
    let broker = start(&dir).await;
    assert!(broker.broker().queue_infos().is_empty(), "{:?}", broker.broker().queue_infos());
    assert!(segments(&dir).is_empty());
}

#[tokio::test]
async fn a_second_broker_on_a_directory_in_use_is_refused() {
    let dir = data_dir("in-use");
    let _first = start(&dir).await;
    let err = EmbeddedBroker::builder().data_dir(&*dir).start().await.err().expect("refused");
    assert!(err.to_string().contains("is in use by another broker"), "{err}");
}

#[tokio::test]
async fn users_permissions_and_vhosts_made_while_running_are_found_again() {
    use warren::config::{PermissionConfig, UserConfig};
    let dir = data_dir("users");
    {
        let broker = start(&dir).await;
        let b = broker.broker();
        b.add_vhost(&"orders".into());
        b.access.put_user(&UserConfig::plain("ann", "s3cret")).unwrap();
        let permission = |vhost: &str| PermissionConfig {
            user: "ann".into(),
            vhost: vhost.into(),
            configure: "".into(),
            write: ".*".into(),
            read: "^q$".into(),
        };
        b.access.set_permission(&permission("orders")).unwrap();
        b.access.set_permission(&permission("/")).unwrap();
        b.access.clear_permission("ann", "/");
        b.access.put_user(&UserConfig::plain("bob", "x")).unwrap();
        b.access.delete_user("bob");
        b.store.as_ref().unwrap().flush().await;
        broker.shutdown().await;
    }
    let broker = start(&dir).await;
    let b = broker.broker();
    assert!(b.vhost(&"orders".into()).is_some());
    assert!(
        b.access.authenticate("ann", "s3cret", "127.0.0.1".parse().unwrap()).is_ok(),
        "the password hash came back"
    );
    assert!(b.access.authenticate("ann", "wrong", "127.0.0.1".parse().unwrap()).is_err());
    assert!(b.access.user("bob").is_none());
    let kept: Vec<_> =
        b.access.permissions().into_iter().filter(|p| p.user == "ann").map(|p| (p.vhost, p.read)).collect();
    assert_eq!(kept, [("orders".to_string(), "^q$".to_string())]);
}

#[tokio::test]
async fn queue_names_a_client_chooses_stay_inside_the_data_directory_and_come_back_intact() {
    let dir = data_dir("names");
    let names = ["../../escape", "/etc/passwd", "a\nb \"quoted\" ünïcödé", "x".repeat(255).leak() as &str];
    {
        let broker = start(&dir).await;
        let (_conn, ch) = channel(&broker).await;
        for name in names {
            durable_queue(&ch, name).await;
            publish(&ch, "", name, name.as_bytes(), true).await;
        }
        broker.shutdown().await;
    }
    // Every queue directory is a hash inside queues/, nothing elsewhere.
    for entry in std::fs::read_dir(dir.join("queues")).unwrap() {
        let file = entry.unwrap().file_name().into_string().unwrap();
        assert!(file.len() == 16 && file.bytes().all(|b| b.is_ascii_hexdigit()), "{file}");
    }
    assert!(!dir.parent().unwrap().join("escape").exists());
    let broker = start(&dir).await;
    let (_conn, ch) = channel(&broker).await;
    for name in names {
        assert_eq!(drain(&ch, name).await, [(name.to_string(), false)]);
    }
}
