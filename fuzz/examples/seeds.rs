//! Writes seed inputs into the fuzz corpora: real client traffic (a
//! handshake, then every kind of operation, as `targets::script_bytes`
//! encodes it), whole and cut into frames, method payloads, property lists
//! and field tables. libFuzzer mutates from these rather than discovering
//! AMQP from nothing. Files are named by a hash of their content, so
//! running this again adds nothing twice. Run by `scripts/fuzz.sh`.

#[path = "../../tests/fuzz/targets.rs"]
mod targets;

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::Path;

use bytes::BytesMut;
use targets::{Arg, ArgValue, Handshake, Op, Props, Script};
use warren::protocol::frame::{parse_frame, Frame};

fn write(target: &str, input: &[u8]) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fuzz/__fuzz__").join(target).join("corpus");
    std::fs::create_dir_all(&dir).unwrap();
    let mut h = DefaultHasher::new();
    input.hash(&mut h);
    std::fs::write(dir.join(format!("seed-{:016x}", h.finish())), input).unwrap();
}

fn main() {
    let arg = |key, value| Arg { key, value };
    let args = || vec![arg(0, ArgValue::Int(100)), arg(4, ArgValue::Text(0)), arg(8, ArgValue::Bool(true))];
    let ops = vec![
        Op::ExchangeDeclare { channel: 1, exchange: 4, kind: 2, flags: 2, args: vec![arg(11, ArgValue::Text(2))] },
        Op::QueueDeclare { channel: 1, queue: 0, flags: 2, args: args() },
        Op::QueueBind { channel: 1, queue: 0, exchange: 2, key: 2, args: vec![] },
        Op::QueueBind { channel: 1, queue: 1, exchange: 5, key: 0, args: vec![arg(10, ArgValue::Text(3))] },
        Op::ExchangeBind { channel: 1, destination: 4, source: 2, key: 3 },
        Op::Qos { channel: 1, prefetch: 2, global: false },
        Op::ConfirmSelect { channel: 1 },
        Op::Publish {
            channel: 1,
            exchange: 2,
            key: 2,
            mandatory: true,
            properties: Props::Some {
                delivery_mode: 2,
                priority: 3,
                expiration: Some(10),
                headers: args(),
                user_id: Some(0),
            },
            body: b"hello".to_vec(),
        },
        Op::Publish { channel: 1, exchange: 0, key: 0, mandatory: false, properties: Props::None, body: vec![7; 9000] },
        Op::Consume { channel: 1, queue: 0, tag: 1, flags: 0, args: vec![arg(9, ArgValue::Int(5))] },
        Op::Get { channel: 1, queue: 1, no_ack: false },
        Op::Ack { channel: 1, tag: 1, multiple: false },
        Op::Nack { channel: 1, tag: 2, multiple: true, requeue: true },
        Op::Reject { channel: 1, tag: 3, requeue: false },
        Op::Recover { channel: 1, requeue: true },
        Op::Flow { channel: 1, active: false },
        Op::Cancel { channel: 1, tag: 0 },
        Op::ChannelOpen { channel: 2 },
        Op::TxSelect { channel: 2 },
        Op::Publish { channel: 2, exchange: 3, key: 1, mandatory: false, properties: Props::None, body: vec![] },
        Op::TxCommit { channel: 2 },
        Op::TxRollback { channel: 2 },
        Op::QueuePurge { channel: 1, queue: 0 },
        Op::QueueUnbind { channel: 1, queue: 0, exchange: 2, key: 2 },
        Op::QueueDelete { channel: 1, queue: 0, flags: 0 },
        Op::ExchangeDelete { channel: 1, exchange: 4, if_unused: false },
        Op::Heartbeat,
        Op::UpdateSecret,
        Op::ChannelClose { channel: 1 },
        Op::ConnectionClose,
    ];
    let wire = targets::script_bytes(&Script { handshake: Handshake::Full { heartbeat: 1 }, ops });
    write("frames", &wire);
    let mut buf = BytesMut::from(&wire[8..]); // after the protocol header
    let mut start = 8;
    while let Ok(Some(frame)) = parse_frame(&mut buf, 131_072) {
        let end = wire.len() - buf.len();
        let one = &wire[start..end];
        write("frames", one);
        write("oracle", one);
        match &frame {
            Frame::Method { .. } => write("methods", &one[7..one.len() - 1]),
            Frame::Header { .. } => {
                write("properties", &one[7 + 12..one.len() - 1]);
                write("methods", &one[7..one.len() - 1]);
            }
            _ => {}
        }
        start = end;
    }
    // Tables: from the arguments and headers above, as encoded in methods.
    let table = targets::seed_table(&args());
    write("field_tables", &table);
    println!("seeds written");
}
