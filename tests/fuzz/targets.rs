//! The fuzz targets: what a hostile client controls, fed arbitrary input.
//!
//! Shared by two harnesses (each includes this file):
//! - `tests/fuzz.rs`, under plain `cargo test`: each target replays its
//!   corpus (`tests/fuzz/__fuzz__/<target>/corpus`) and then runs random inputs
//!   for a second;
//! - `fuzz/`, a package of its own, for coverage-guided campaigns with
//!   libFuzzer through cargo-bolero (`scripts/fuzz.sh`), which grow the
//!   corpus the first harness replays.
//!
//! Every target asserts more than "does not crash": decoders agree with
//! their checkers, decode and encode round trip, warren agrees with an
//! independent codec (amq-protocol), the topic trie agrees with a naive
//! matcher, and a whole connection driven by arbitrary frames ends and
//! leaves the broker consistent.

#![allow(dead_code)]

use std::time::Duration;

use amq_protocol::frame::{gen_frame, parse_frame as oracle_parse_frame, WriteContext};
use bolero::TypeGenerator;
use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use warren::broker::topic::TopicTrie;
use warren::broker::Broker;
use warren::protocol::field_table::{encode_table, parse_table, skip_table};
use warren::protocol::frame::{
    parse_frame, write_body_frame_header, write_content_header, write_method, Frame, PROTOCOL_HEADER,
};
use warren::protocol::methods::{basic, channel, confirm, connection, exchange, queue, tx};
use warren::protocol::properties::{self, BasicProperties};
use warren::protocol::{FieldTable, FieldValue, Method};

/// The largest frame payload the targets parse with.
const MAX_PAYLOAD: u32 = 131_072;

/// Re-encodes a decoded frame the way warren writes frames.
fn encode(frame: &Frame) -> Vec<u8> {
    let mut buf = BytesMut::new();
    match frame {
        Frame::Method { channel, method } => write_method(&mut buf, *channel, method),
        Frame::Header { channel, header } => {
            write_content_header(&mut buf, *channel, header.class_id, header.body_size, &header.raw_properties)
        }
        Frame::Body { channel, body } => {
            write_body_frame_header(&mut buf, *channel, body.len());
            buf.extend_from_slice(body);
            buf.extend_from_slice(&[0xce]);
        }
        Frame::Heartbeat { channel } => {
            buf.extend_from_slice(&[8, (channel >> 8) as u8, *channel as u8, 0, 0, 0, 0, 0xce])
        }
    }
    buf.to_vec()
}

fn parse_one(wire: &[u8]) -> Option<Frame> {
    parse_frame(&mut BytesMut::from(wire), MAX_PAYLOAD).ok().flatten()
}

/// Frames from arbitrary bytes: every frame parsed re-encodes to something
/// that parses to the same frame, and its trace prints.
pub fn frames(input: &[u8]) {
    let mut buf = BytesMut::from(input);
    while let Ok(Some(frame)) = parse_frame(&mut buf, MAX_PAYLOAD) {
        let wire = encode(&frame);
        let again = parse_one(&wire).expect("warren's own encoding parses");
        // Compared as bytes: a NaN in a table is not equal to itself.
        assert_eq!(encode(&again), wire);
        if let Frame::Method { method, .. } = &frame {
            let _ = method.trace().to_string();
        }
    }
}

/// The methods a client sends, as (class, method) ids.
const CLIENT_METHODS: [(u16, u16); 31] = [
    (10, 11),
    (10, 21),
    (10, 31),
    (10, 40),
    (10, 50),
    (10, 51),
    (10, 70),
    (20, 10),
    (20, 20),
    (20, 21),
    (20, 40),
    (20, 41),
    (40, 10),
    (40, 20),
    (40, 30),
    (40, 40),
    (50, 10),
    (50, 20),
    (50, 30),
    (50, 40),
    (50, 50),
    (60, 10),
    (60, 20),
    (60, 30),
    (60, 40),
    (60, 70),
    (60, 80),
    (60, 90),
    (60, 110),
    (60, 120),
    (85, 10),
];

/// Method payloads from arbitrary bytes: the first octet picks a method a
/// client sends (so decoding gets past the ids), or, past the list, the
/// bytes are the whole payload.
pub fn methods(input: &[u8]) {
    let payload = match input.split_first() {
        Some((&pick, args)) if (pick as usize) < CLIENT_METHODS.len() => {
            let (class, method) = CLIENT_METHODS[pick as usize];
            let mut p = BytesMut::new();
            p.extend_from_slice(&class.to_be_bytes());
            p.extend_from_slice(&method.to_be_bytes());
            p.extend_from_slice(args);
            p.freeze()
        }
        _ => Bytes::copy_from_slice(input),
    };
    if let Ok(method) = Method::decode(&payload) {
        let mut wire = BytesMut::new();
        write_method(&mut wire, 1, &method);
        let again = match parse_one(&wire) {
            Some(Frame::Method { method, .. }) => method,
            other => panic!("re-encoded {method:?} parsed as {other:?}"),
        };
        let mut wire_again = BytesMut::new();
        write_method(&mut wire_again, 1, &again);
        assert_eq!(wire, wire_again);
        let _ = method.trace().to_string();
    }
}

/// Content properties: the checker and the decoder agree, a decoded list
/// round trips, and what the broker reads of them never panics.
pub fn properties(input: &[u8]) {
    let raw = Bytes::copy_from_slice(input);
    let checked = properties::check(&raw);
    let decoded = BasicProperties::decode(&raw);
    assert_eq!(checked.is_ok(), decoded.is_ok(), "check {checked:?} vs decode {decoded:?}");
    let _ = properties::message_priority(&raw);
    let _ = properties::message_expiration(&raw);
    if let Ok(p) = decoded {
        let once = p.to_bytes();
        let twice = BasicProperties::decode(&once).expect("warren's own encoding decodes").to_bytes();
        assert_eq!(once, twice);
        if let Some(e) = &p.expiration {
            let _ = properties::parse_expiration(e.as_bytes());
        }
    }
}

/// Field tables: parsing and the allocation-free walk agree on what is
/// valid and where the table ends; a parsed table round trips and renders
/// as JSON and as a trace.
pub fn field_tables(input: &[u8]) {
    let src = Bytes::copy_from_slice(input);
    let parsed = parse_table(&src, &src);
    let skipped = skip_table(&src);
    match (&parsed, &skipped) {
        (Ok((rest, _)), Ok(skip_rest)) => assert_eq!(rest.len(), skip_rest.len()),
        (Err(_), Err(_)) => {}
        _ => panic!("parse {parsed:?} vs skip {skipped:?}"),
    }
    if let Ok((_, table)) = parsed {
        let mut once = BytesMut::new();
        encode_table(&mut once, &table);
        let once = once.freeze();
        let (_, again) = parse_table(&once, &once).expect("warren's own encoding parses");
        let mut twice = BytesMut::new();
        encode_table(&mut twice, &again);
        assert_eq!(once, twice);
        let _ = warren::http::table_json(&table).to_string();
    }
}

/// Differential against amq-protocol, the codec under lapin: on one frame
/// of arbitrary bytes both codecs accept or refuse alike, except where
/// warren refuses on purpose (RabbitMQ's rules, or a bound); and what both
/// accept, amq-protocol reads back identically from warren's re-encoding.
pub fn oracle(input: &[u8]) {
    let warren = parse_frame(&mut BytesMut::from(input), MAX_PAYLOAD);
    let oracle = oracle_parse_frame(input);
    match (warren, oracle) {
        (Ok(Some(frame)), Ok((_, theirs))) => {
            let reencoded = encode(&frame);
            let (_, ours) = oracle_parse_frame(&reencoded[..])
                .unwrap_or_else(|e| panic!("amq-protocol cannot read warren's {frame:?}: {e:?}"));
            assert_eq!(oracle_bytes(&ours), oracle_bytes(&theirs), "{frame:?}");
        }
        (Ok(None), _) | (_, Err(_)) => {}
        (Err(refused), Ok((_, theirs))) => {
            let why = format!("{refused:?}");
            // Deliberate refusals: RabbitMQ's field types (no 'U'), octets
            // left over in a method, property flags no basic property has,
            // the nesting bound, frame types and sizes RabbitMQ refuses.
            let deliberate = [
                "unknown field table type 'U'",
                "trailing octets",
                "after the last property",
                "set bits no basic property has",
                "nested deeper than",
                "TooLarge",
                "HeartbeatPayload",
                "UnknownType",
                "Unknown {",
            ];
            assert!(
                deliberate.iter().any(|d| why.contains(d)),
                "warren refused what amq-protocol read as {theirs:?}: {why}"
            );
        }
    }
}

/// amq-protocol's own encoding of a frame it parsed: a comparison that does
/// not trip over NaN.
fn oracle_bytes(frame: &amq_protocol::frame::AMQPFrame) -> Vec<u8> {
    match gen_frame(frame)(WriteContext::from(Vec::new())) {
        Ok(w) => w.into_inner().0,
        Err(e) => format!("cannot generate: {e:?}").into_bytes(),
    }
}

/// Topic routing against a naive matcher: a few binding keys and a routing
/// key over a small alphabet (so that matches happen), as word indexes.
#[derive(Debug, TypeGenerator)]
pub struct TopicCase {
    pub patterns: Vec<Vec<u8>>,
    pub key: Vec<u8>,
    /// Which pattern to unbind before routing again.
    pub unbind: u8,
}

const PATTERN_WORDS: [&[u8]; 5] = [b"a", b"b", b"", b"*", b"#"];
const KEY_WORDS: [&[u8]; 3] = [b"a", b"b", b""];

fn words<'a>(indexes: &[u8], alphabet: &[&'a [u8]], max: usize) -> Vec<&'a [u8]> {
    indexes.iter().take(max).map(|&i| alphabet[i as usize % alphabet.len()]).collect()
}

/// RabbitMQ's rules as a direct recursion over words: exponential, but
/// obviously right, and the inputs here are small.
fn naive_match(pattern: &[&[u8]], key: &[&[u8]]) -> bool {
    match pattern.split_first() {
        None => key.is_empty(),
        Some((&b"#", rest)) => (0..=key.len()).any(|skip| naive_match(rest, &key[skip..])),
        Some((&b"*", rest)) => !key.is_empty() && naive_match(rest, &key[1..]),
        Some((word, rest)) => key.first() == Some(word) && naive_match(rest, &key[1..]),
    }
}

pub fn topic(case: &TopicCase) {
    let patterns: Vec<Vec<&[u8]>> = case.patterns.iter().take(8).map(|p| words(p, &PATTERN_WORDS, 7)).collect();
    let key = words(&case.key, &KEY_WORDS, 9);
    let key_text = key.join(&b"."[..]);
    let mut trie = TopicTrie::default();
    for (i, p) in patterns.iter().enumerate() {
        trie.insert(&p.join(&b"."[..]), i);
    }
    let check = |trie: &TopicTrie<usize>, bound: &dyn Fn(usize) -> bool| {
        let mut got = Vec::new();
        trie.route(&key_text, &mut |d: &usize| got.push(*d));
        got.sort();
        got.dedup();
        // The empty key has no words; a one-word key may be the empty word.
        let key_words: Vec<&[u8]> = if key_text.is_empty() { Vec::new() } else { key.clone() };
        let expected: Vec<usize> = (0..patterns.len())
            .filter(|&i| bound(i))
            .filter(|&i| {
                let p: Vec<&[u8]> =
                    if patterns[i].join(&b"."[..]).is_empty() { Vec::new() } else { patterns[i].clone() };
                naive_match(&p, &key_words)
            })
            .collect();
        assert_eq!(got, expected, "patterns {patterns:?} key {key_text:?}");
    };
    check(&trie, &|_| true);
    if !patterns.is_empty() {
        let gone = case.unbind as usize % patterns.len();
        let gone_key = patterns[gone].join(&b"."[..]);
        trie.remove(&gone_key, &gone);
        check(&trie, &|i| i != gone);
    }
}

// ---------------------------------------------------------------------------
// A whole connection, driven by arbitrary frames.

/// What a client sends: usually a valid handshake, then operations.
#[derive(Debug, TypeGenerator)]
pub struct Script {
    pub handshake: Handshake,
    pub ops: Vec<Op>,
}

#[derive(Debug, TypeGenerator)]
pub enum Handshake {
    /// Header, start-ok, tune-ok with this heartbeat, open, channel 1.
    Full { heartbeat: u8 },
    /// Stops after tune-ok (the ops then come before connection.open).
    Tuned,
    /// Protocol header and nothing else.
    HeaderOnly,
    /// Whatever bytes.
    Raw(Vec<u8>),
}

#[derive(Debug, TypeGenerator)]
pub enum Op {
    ChannelOpen {
        channel: u8,
    },
    ChannelClose {
        channel: u8,
    },
    ChannelCloseOk {
        channel: u8,
    },
    Flow {
        channel: u8,
        active: bool,
    },
    QueueDeclare {
        channel: u8,
        queue: u8,
        flags: u8,
        args: Vec<Arg>,
    },
    QueueBind {
        channel: u8,
        queue: u8,
        exchange: u8,
        key: u8,
        args: Vec<Arg>,
    },
    QueueUnbind {
        channel: u8,
        queue: u8,
        exchange: u8,
        key: u8,
    },
    QueuePurge {
        channel: u8,
        queue: u8,
    },
    QueueDelete {
        channel: u8,
        queue: u8,
        flags: u8,
    },
    ExchangeDeclare {
        channel: u8,
        exchange: u8,
        kind: u8,
        flags: u8,
        args: Vec<Arg>,
    },
    ExchangeDelete {
        channel: u8,
        exchange: u8,
        if_unused: bool,
    },
    ExchangeBind {
        channel: u8,
        destination: u8,
        source: u8,
        key: u8,
    },
    Qos {
        channel: u8,
        prefetch: u8,
        global: bool,
    },
    Consume {
        channel: u8,
        queue: u8,
        tag: u8,
        flags: u8,
        args: Vec<Arg>,
    },
    Cancel {
        channel: u8,
        tag: u8,
    },
    Publish {
        channel: u8,
        exchange: u8,
        key: u8,
        mandatory: bool,
        properties: Props,
        body: Vec<u8>,
    },
    Get {
        channel: u8,
        queue: u8,
        no_ack: bool,
    },
    Ack {
        channel: u8,
        tag: u8,
        multiple: bool,
    },
    Nack {
        channel: u8,
        tag: u8,
        multiple: bool,
        requeue: bool,
    },
    Reject {
        channel: u8,
        tag: u8,
        requeue: bool,
    },
    Recover {
        channel: u8,
        requeue: bool,
    },
    ConfirmSelect {
        channel: u8,
    },
    TxSelect {
        channel: u8,
    },
    TxCommit {
        channel: u8,
    },
    TxRollback {
        channel: u8,
    },
    Heartbeat,
    ConnectionClose,
    ConnectionCloseOk,
    UpdateSecret,
    /// Any frame at all.
    Raw {
        frame_type: u8,
        channel: u8,
        payload: Vec<u8>,
    },
    /// Raw octets, possibly cutting a frame.
    Bytes(Vec<u8>),
}

/// A queue or consumer argument warren reads, with a value of some type.
#[derive(Debug, TypeGenerator)]
pub struct Arg {
    pub key: u8,
    pub value: ArgValue,
}

#[derive(Debug, TypeGenerator)]
pub enum ArgValue {
    Int(i64),
    Short(i16),
    Text(u8),
    Bool(bool),
    Void,
}

#[derive(Debug, TypeGenerator)]
pub enum Props {
    None,
    Some { delivery_mode: u8, priority: u8, expiration: Option<u16>, headers: Vec<Arg>, user_id: Option<u8> },
    Raw(Vec<u8>),
}

const QUEUES: [&str; 4] = ["q1", "q2", "", "amq.q"];
const EXCHANGES: [&str; 6] = ["", "amq.direct", "amq.topic", "amq.fanout", "x1", "amq.headers"];
const KEYS: [&str; 5] = ["q1", "q2", "a.b", "#", "*.b"];
const KINDS: [&str; 5] = ["direct", "fanout", "topic", "headers", "nope"];
const ARG_KEYS: [&str; 12] = [
    "x-message-ttl",
    "x-expires",
    "x-max-length",
    "x-max-length-bytes",
    "x-overflow",
    "x-dead-letter-exchange",
    "x-dead-letter-routing-key",
    "x-max-priority",
    "x-single-active-consumer",
    "x-priority",
    "x-match",
    "alternate-exchange",
];
const TEXTS: [&str; 6] = ["reject-publish", "drop-head", "x1", "any", "all", "reject-publish-dlx"];

fn pick<'a>(list: &[&'a str], i: u8) -> &'a str {
    list[i as usize % list.len()]
}

fn table(args: &[Arg]) -> FieldTable {
    let mut t = FieldTable::new();
    for a in args.iter().take(4) {
        let value = match &a.value {
            // Small numbers, mostly: TTLs of hours would only wait.
            ArgValue::Int(n) => FieldValue::I64(n % 1000),
            ArgValue::Short(n) => FieldValue::I16(*n),
            ArgValue::Text(i) => FieldValue::LongStr(Bytes::from_static(pick(&TEXTS, *i).as_bytes())),
            ArgValue::Bool(b) => FieldValue::Bool(*b),
            ArgValue::Void => FieldValue::Void,
        };
        t.insert(pick(&ARG_KEYS, a.key), value);
    }
    t
}

/// A table of these arguments in wire form (a seed for `field_tables`).
pub fn seed_table(args: &[Arg]) -> Vec<u8> {
    let mut buf = BytesMut::new();
    let mut t = table(args);
    t.insert("nested", FieldValue::Table(table(args)));
    t.insert("array", FieldValue::Array(vec![FieldValue::I32(1), FieldValue::Table(table(args))]));
    encode_table(&mut buf, &t);
    buf.to_vec()
}

fn channel_of(c: u8) -> u16 {
    u16::from(c % 3)
}

/// The frames of one operation.
fn write_op(buf: &mut BytesMut, op: &Op) {
    let method = |buf: &mut BytesMut, ch: u8, m: Method| write_method(buf, channel_of(ch), &m);
    let bit = |flags: u8, n: u8| flags >> n & 1 == 1;
    match op {
        Op::ChannelOpen { channel } => method(buf, *channel, channel::Open::default().into()),
        Op::ChannelClose { channel } => {
            method(buf, *channel, channel::Close { reply_code: 200, ..Default::default() }.into())
        }
        Op::ChannelCloseOk { channel } => method(buf, *channel, channel::CloseOk {}.into()),
        Op::Flow { channel, active } => method(buf, *channel, channel::Flow { active: *active }.into()),
        Op::QueueDeclare { channel, queue, flags, args } => method(
            buf,
            *channel,
            queue::Declare {
                queue: pick(&QUEUES, *queue).into(),
                passive: bit(*flags, 0),
                durable: bit(*flags, 1),
                exclusive: bit(*flags, 2),
                auto_delete: bit(*flags, 3),
                no_wait: bit(*flags, 4),
                arguments: table(args),
                ..Default::default()
            }
            .into(),
        ),
        Op::QueueBind { channel, queue, exchange, key, args } => method(
            buf,
            *channel,
            queue::Bind {
                queue: pick(&QUEUES, *queue).into(),
                exchange: pick(&EXCHANGES, *exchange).into(),
                routing_key: pick(&KEYS, *key).into(),
                arguments: table(args),
                ..Default::default()
            }
            .into(),
        ),
        Op::QueueUnbind { channel, queue, exchange, key } => method(
            buf,
            *channel,
            queue::Unbind {
                queue: pick(&QUEUES, *queue).into(),
                exchange: pick(&EXCHANGES, *exchange).into(),
                routing_key: pick(&KEYS, *key).into(),
                ..Default::default()
            }
            .into(),
        ),
        Op::QueuePurge { channel, queue } => {
            method(buf, *channel, queue::Purge { queue: pick(&QUEUES, *queue).into(), ..Default::default() }.into())
        }
        Op::QueueDelete { channel, queue, flags } => method(
            buf,
            *channel,
            queue::Delete {
                queue: pick(&QUEUES, *queue).into(),
                if_unused: bit(*flags, 0),
                if_empty: bit(*flags, 1),
                ..Default::default()
            }
            .into(),
        ),
        Op::ExchangeDeclare { channel, exchange, kind, flags, args } => method(
            buf,
            *channel,
            exchange::Declare {
                exchange: pick(&EXCHANGES, *exchange).into(),
                kind: pick(&KINDS, *kind).into(),
                passive: bit(*flags, 0),
                durable: bit(*flags, 1),
                auto_delete: bit(*flags, 2),
                internal: bit(*flags, 3),
                arguments: table(args),
                ..Default::default()
            }
            .into(),
        ),
        Op::ExchangeDelete { channel, exchange, if_unused } => method(
            buf,
            *channel,
            exchange::Delete {
                exchange: pick(&EXCHANGES, *exchange).into(),
                if_unused: *if_unused,
                ..Default::default()
            }
            .into(),
        ),
        Op::ExchangeBind { channel, destination, source, key } => method(
            buf,
            *channel,
            exchange::Bind {
                destination: pick(&EXCHANGES, *destination).into(),
                source: pick(&EXCHANGES, *source).into(),
                routing_key: pick(&KEYS, *key).into(),
                ..Default::default()
            }
            .into(),
        ),
        Op::Qos { channel, prefetch, global } => method(
            buf,
            *channel,
            basic::Qos { prefetch_count: u16::from(*prefetch % 8), global: *global, ..Default::default() }.into(),
        ),
        Op::Consume { channel, queue, tag, flags, args } => method(
            buf,
            *channel,
            basic::Consume {
                queue: pick(&QUEUES, *queue).into(),
                consumer_tag: ["", "c1", "c2"][*tag as usize % 3].into(),
                no_ack: bit(*flags, 0),
                exclusive: bit(*flags, 1),
                no_wait: bit(*flags, 2),
                arguments: table(args),
                ..Default::default()
            }
            .into(),
        ),
        Op::Cancel { channel, tag } => method(
            buf,
            *channel,
            basic::Cancel { consumer_tag: ["c1", "c2", "x"][*tag as usize % 3].into(), no_wait: false }.into(),
        ),
        Op::Publish { channel, exchange, key, mandatory, properties, body } => {
            let ch = channel_of(*channel);
            let publish = basic::Publish {
                exchange: pick(&EXCHANGES, *exchange).into(),
                routing_key: pick(&KEYS, *key).into(),
                mandatory: *mandatory,
                ..Default::default()
            };
            write_method(buf, ch, &publish.into());
            let raw = match properties {
                Props::None => Bytes::from_static(properties::EMPTY_PROPERTIES),
                Props::Some { delivery_mode, priority, expiration, headers, user_id } => BasicProperties {
                    delivery_mode: Some(*delivery_mode % 3),
                    priority: Some(*priority % 12),
                    expiration: expiration.map(|e| (e % 50).to_string().into()),
                    headers: (!headers.is_empty()).then(|| table(headers)),
                    user_id: user_id.map(|u| ["guest", "other"][u as usize % 2].into()),
                    ..Default::default()
                }
                .to_bytes(),
                Props::Raw(raw) => Bytes::copy_from_slice(raw),
            };
            let body = &body[..body.len().min(20_000)];
            write_content_header(buf, ch, 60, body.len() as u64, &raw);
            // In frames of at most 8,184 octets (a frame_max of 8192).
            for chunk in body.chunks(8_184) {
                write_body_frame_header(buf, ch, chunk.len());
                buf.extend_from_slice(chunk);
                buf.extend_from_slice(&[0xce]);
            }
        }
        Op::Get { channel, queue, no_ack } => method(
            buf,
            *channel,
            basic::Get { queue: pick(&QUEUES, *queue).into(), no_ack: *no_ack, ..Default::default() }.into(),
        ),
        Op::Ack { channel, tag, multiple } => {
            method(buf, *channel, basic::Ack { delivery_tag: u64::from(*tag % 8), multiple: *multiple }.into())
        }
        Op::Nack { channel, tag, multiple, requeue } => method(
            buf,
            *channel,
            basic::Nack { delivery_tag: u64::from(*tag % 8), multiple: *multiple, requeue: *requeue }.into(),
        ),
        Op::Reject { channel, tag, requeue } => {
            method(buf, *channel, basic::Reject { delivery_tag: u64::from(*tag % 8), requeue: *requeue }.into())
        }
        Op::Recover { channel, requeue } => method(buf, *channel, basic::Recover { requeue: *requeue }.into()),
        Op::ConfirmSelect { channel } => method(buf, *channel, confirm::Select { no_wait: false }.into()),
        Op::TxSelect { channel } => method(buf, *channel, tx::Select {}.into()),
        Op::TxCommit { channel } => method(buf, *channel, tx::Commit {}.into()),
        Op::TxRollback { channel } => method(buf, *channel, tx::Rollback {}.into()),
        Op::Heartbeat => buf.extend_from_slice(&[8, 0, 0, 0, 0, 0, 0, 0xce]),
        Op::ConnectionClose => method(buf, 0, connection::Close { reply_code: 200, ..Default::default() }.into()),
        Op::ConnectionCloseOk => method(buf, 0, connection::CloseOk {}.into()),
        Op::UpdateSecret => {
            method(buf, 0, connection::UpdateSecret { new_secret: Bytes::from_static(b"s"), reason: "r".into() }.into())
        }
        Op::Raw { frame_type, channel, payload } => {
            buf.extend_from_slice(&[*frame_type % 10, 0, channel % 3]);
            buf.extend_from_slice(&(payload.len() as u32).to_be_bytes());
            buf.extend_from_slice(payload);
            buf.extend_from_slice(&[0xce]);
        }
        Op::Bytes(b) => buf.extend_from_slice(b),
    }
}

/// The client's whole side of the conversation.
pub fn script_bytes(script: &Script) -> BytesMut {
    let mut buf = BytesMut::new();
    let start_ok = connection::StartOk {
        client_properties: FieldTable::new(),
        mechanism: "PLAIN".into(),
        response: Bytes::from_static(b"\0guest\0guest"),
        locale: "en_US".into(),
    };
    match &script.handshake {
        Handshake::Full { heartbeat } => {
            buf.extend_from_slice(PROTOCOL_HEADER);
            write_method(&mut buf, 0, &start_ok.into());
            let tune_ok = connection::TuneOk { channel_max: 8, frame_max: 8192, heartbeat: u16::from(heartbeat % 3) };
            write_method(&mut buf, 0, &tune_ok.into());
            write_method(&mut buf, 0, &connection::Open { virtual_host: "/".into(), ..Default::default() }.into());
            write_method(&mut buf, 1, &channel::Open::default().into());
        }
        Handshake::Tuned => {
            buf.extend_from_slice(PROTOCOL_HEADER);
            write_method(&mut buf, 0, &start_ok.into());
            write_method(&mut buf, 0, &connection::TuneOk { channel_max: 8, frame_max: 8192, heartbeat: 0 }.into());
        }
        Handshake::HeaderOnly => buf.extend_from_slice(PROTOCOL_HEADER),
        Handshake::Raw(bytes) => buf.extend_from_slice(bytes),
    }
    for op in script.ops.iter().take(64) {
        write_op(&mut buf, op);
    }
    buf
}

/// A runtime of its own for each input, with time paused: the broker's
/// timers (the handshake timeout, heartbeats, close timeouts) fire as soon
/// as everything else is idle, so an input costs microseconds, not seconds.
/// Its own, so that a task one input leaves behind is blamed on that input
/// and not on every input after it.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().expect("runtime")
}

/// Runs one connection over an in-memory pipe: the client sends the script
/// and then closes its side, reading everything the broker sends. The
/// connection must end (within a minute of virtual time: nothing may wedge
/// it), without a panic, and leave the broker consistent: no connection
/// registered, no consumer left, every unacknowledged message back in its
/// queue, no exclusive queue left behind.
pub fn connection(script: &Script) {
    let wire = script_bytes(script);
    runtime().block_on(async {
        let config = warren::Config { handshake_timeout: Duration::from_secs(10), ..Default::default() };
        let broker = Broker::new(config).expect("broker");
        let (client, server) = tokio::io::duplex(1 << 20);
        let (shutdown_tx, shutdown) = tokio::sync::watch::channel(false);
        let peer = "127.0.0.1:40000".parse().unwrap();
        let local = "127.0.0.1:5672".parse().unwrap();
        let served = tokio::spawn(warren::connection::serve_stream(server, peer, local, broker.clone(), shutdown));
        let (mut read, mut write) = tokio::io::split(client);
        let writer = async move {
            let _ = write.write_all(&wire).await;
            let _ = write.shutdown().await;
            // Keep the write half open until the end: dropping it early
            // is the same as shutting down, which has happened already.
            write
        };
        let reader = async move {
            let mut sink = vec![0u8; 64 * 1024];
            while matches!(read.read(&mut sink).await, Ok(n) if n > 0) {}
        };
        let ended = tokio::time::timeout(Duration::from_secs(60), async {
            let (write, ()) = tokio::join!(writer, reader);
            drop(write);
            served.await
        })
        .await;
        match ended {
            Err(_) => panic!("the connection did not end within a minute"),
            Ok(Err(e)) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Ok(_) => {}
        }
        drop(shutdown_tx);
        assert!(broker.connections.is_empty(), "a closed connection is still registered");
        for q in broker.queue_infos() {
            assert!(q.consumers.is_empty(), "queue {} kept a consumer of a closed connection", q.name);
            assert_eq!(q.messages_unacknowledged, 0, "queue {} lost track of unacked messages", q.name);
            assert!(!q.exclusive, "exclusive queue {} outlived its connection", q.name);
        }
        // Nothing the connection or its queues started may outlive the
        // broker: a task left behind is memory no one can free. tokio
        // has no event for "every task ended", so this polls, in paused
        // (virtual) time: it costs no wall-clock time.
        drop(broker);
        let runtime = tokio::runtime::Handle::current();
        let settled = tokio::time::timeout(Duration::from_secs(60), async {
            while runtime.metrics().num_alive_tasks() > 0 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
        .await;
        assert!(settled.is_ok(), "{} task(s) outlived their broker", runtime.metrics().num_alive_tasks());
    });
}
