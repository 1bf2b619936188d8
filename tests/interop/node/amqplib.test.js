// amqplib (npm, pinned in package.json / package-lock.json) against the real warren binary.
// Run by tests/interop/test_amqplib.py, which starts the brokers and passes their URLs:
//   WARREN_URL      a warren with the default settings (proposes heartbeat 60)
//   WARREN_URL_HB1  a warren started with `--heartbeat 1` (proposes heartbeat 1)
// Run alone: WARREN_URL=amqp://guest:guest@127.0.0.1:5672/%2f WARREN_URL_HB1=... node --test
'use strict';

const { test } = require('node:test');
const assert = require('node:assert/strict');
const amqp = require('amqplib');

const URL = process.env.WARREN_URL;
const URL_HB1 = process.env.WARREN_URL_HB1;
const HEARTBEAT_FRAME = Buffer.from([0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xce]);

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const uniq = (p) => `interop.node.${p}.${Math.random().toString(16).slice(2, 10)}`;

function nextMessage(ch, queue, opts = {}) {
  return new Promise((resolve, reject) => {
    ch.consume(queue, (msg) => (msg ? resolve(msg) : reject(new Error('consumer cancelled'))), opts)
      .then((ok) => { ch._interopTag = ok.consumerTag; })
      .catch(reject);
  });
}

async function getEventually(ch, queue, opts = { noAck: true }, timeoutMs = 5000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const m = await ch.get(queue, opts);
    if (m) return m;
    if (Date.now() > deadline) throw new Error(`no message on ${queue} within ${timeoutMs} ms`);
    await sleep(50);
  }
}

test('publish, consume, ack, nack-requeue, prefetch', async () => {
  const conn = await amqp.connect(URL);
  try {
    const ch = await conn.createChannel();
    const { queue } = await ch.assertQueue('', { exclusive: true });
    assert.match(queue, /^amq\.gen-/);
    const headers = { s: 'ünï', n: 42, neg: -3, big: 2 ** 40, f: 1.5, b: true, nested: { a: [1, 'x'] } };
    assert.equal(ch.sendToQueue(queue, Buffer.from('hello'), {
      contentType: 'text/plain', headers, correlationId: 'c1', replyTo: 'r1', messageId: 'm1',
      timestamp: 1700000000, type: 't', appId: 'node', priority: 2, persistent: true, expiration: '60000',
    }), true);
    await ch.prefetch(1);
    const msg = await nextMessage(ch, queue, { noAck: false });
    assert.equal(msg.content.toString(), 'hello');
    assert.equal(msg.fields.redelivered, false);
    assert.equal(msg.fields.deliveryTag, 1);
    assert.equal(msg.fields.routingKey, queue);
    assert.equal(msg.fields.exchange, '');
    const p = msg.properties;
    assert.equal(p.contentType, 'text/plain');
    assert.equal(p.correlationId, 'c1');
    assert.equal(p.replyTo, 'r1');
    assert.equal(p.messageId, 'm1');
    assert.equal(p.timestamp, 1700000000);
    assert.equal(p.type, 't');
    assert.equal(p.appId, 'node');
    assert.equal(p.priority, 2);
    assert.equal(p.deliveryMode, 2);
    assert.equal(p.expiration, '60000');
    assert.deepEqual(p.headers, headers);
    await ch.cancel(ch._interopTag);

    // nack with requeue: the message comes back, redelivered
    ch.sendToQueue(queue, Buffer.from('again'));
    const first = await getEventually(ch, queue, { noAck: false });
    assert.equal(first.fields.redelivered, false);
    ch.nack(first, false, true);
    const second = await getEventually(ch, queue, { noAck: false });
    assert.equal(second.content.toString(), 'again');
    assert.equal(second.fields.redelivered, true);
    ch.ack(second);

    // prefetch(1): the second message waits for the first ack
    for (const b of ['p1', 'p2']) ch.sendToQueue(queue, Buffer.from(b));
    const got = [];
    let resolveTwo;
    const two = new Promise((r) => { resolveTwo = r; });
    await ch.consume(queue, (m) => {
      got.push(m);
      if (got.length === 2) resolveTwo();
    });
    await sleep(300);
    assert.deepEqual(got.map((m) => m.content.toString()), ['p1']);
    ch.ack(got[0]);
    await two;
    assert.deepEqual(got.map((m) => m.content.toString()), ['p1', 'p2']);
    ch.ack(got[1]);
    const q = await ch.checkQueue(queue);
    assert.equal(q.messageCount, 0);
    assert.equal(q.consumerCount, 1);
    await ch.close();
  } finally {
    await conn.close();
  }
});

test('confirm channel: acks for every publish, mandatory returns', async () => {
  const conn = await amqp.connect(URL);
  try {
    const ch = await conn.createConfirmChannel();
    const queue = uniq('confirm');
    await ch.assertQueue(queue, { autoDelete: false });
    const acked = [];
    for (let i = 0; i < 200; i++) {
      ch.sendToQueue(queue, Buffer.alloc(1 + i * 700, i % 256), {}, (err) => acked.push(err));
    }
    await ch.waitForConfirms();
    assert.equal(acked.length, 200);
    assert.ok(acked.every((e) => e === null || e === undefined), `nacked: ${acked}`);
    assert.equal((await ch.checkQueue(queue)).messageCount, 200);

    // an unroutable mandatory publish: basic.return first, then its confirm (an ack)
    const returned = new Promise((r) => ch.once('return', r));
    const confirmed = new Promise((resolve, reject) => {
      ch.publish('amq.direct', uniq('nowhere'), Buffer.from('lost'), { mandatory: true },
        (err) => (err ? reject(err) : resolve()));
    });
    const ret = await returned;
    assert.equal(ret.fields.replyCode, 312);
    assert.equal(ret.fields.replyText, 'NO_ROUTE');
    assert.equal(ret.content.toString(), 'lost');
    await confirmed;
    await ch.deleteQueue(queue);
    await ch.close();
  } finally {
    await conn.close();
  }
});

test('heartbeat: takes the server value 1 and stays alive while idle', async () => {
  // no heartbeat option: amqplib takes the server's proposal
  const conn = await amqp.connect(URL_HB1);
  try {
    assert.equal(conn.connection.heartbeat, 1);
    const stream = conn.connection.stream;
    let received = 0;
    stream.on('data', (chunk) => {
      for (let i = 0; i + 8 <= chunk.length; i++) {
        if (chunk.subarray(i, i + 8).equals(HEARTBEAT_FRAME)) received++;
      }
    });
    let sent = 0;
    const origSend = conn.connection.sendHeartbeat.bind(conn.connection);
    conn.connection.sendHeartbeat = () => { sent++; return origSend(); };
    let failure = null;
    conn.on('error', (e) => { failure = e; });
    conn.on('close', (e) => { failure = failure || e || new Error('closed'); });
    const ch = await conn.createChannel();
    await sleep(3500); // idle for more than 3 x T
    assert.equal(failure, null, `connection failed while idle: ${failure}`);
    // the server sends one every T/2 when it has nothing else to send; amqplib every T/2 idle
    assert.ok(received >= 4, `heartbeats received from the server: ${received}`);
    assert.ok(sent >= 2, `heartbeats sent by amqplib: ${sent}`);
    const { queue } = await ch.assertQueue('', { exclusive: true });
    ch.sendToQueue(queue, Buffer.from('still here'));
    assert.equal((await getEventually(ch, queue)).content.toString(), 'still here');
    await ch.close();
  } finally {
    await conn.close().catch(() => {});
  }
});

test('heartbeat: a blocked event loop gets the connection dropped', async () => {
  const conn = await amqp.connect(URL_HB1);
  const closed = new Promise((r) => conn.on('close', r));
  conn.on('error', () => {});
  const ch = await conn.createChannel();
  await ch.assertQueue('', { exclusive: true });
  // block the event loop for more than 3 x T: no heartbeats go out, nothing is read
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 3500);
  const err = await Promise.race([closed, sleep(3000).then(() => 'still open')]);
  assert.notEqual(err, 'still open', 'the broker did not drop a client silent for 3.5 s with heartbeat 1');
});
