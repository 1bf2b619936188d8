"""pika 1.4.4 (BlockingConnection) against the real warren binary.

Proves that warren:
- drops a pika consumer that stops driving I/O for more than 3x its heartbeat
  (heartbeat=1), logging "missed heartbeats from client, timeout: 1s" at error level and
  closing the socket without connection.close, so the late ack fails with a pika
  connection error, and requeues the unacked message with redelivered=True;
- keeps the same stalled consumer when heartbeat=0, so its late ack lands;
- keeps a heartbeat=1 consumer that does drive I/O;
- accepts a client heartbeat above its own proposal (120 > 60);
- round-trips message properties and header tables (nested tables, arrays, ints, bools,
  None, decimals, timestamps, byte arrays) and multi-frame bodies, and implements
  basic.nack/reject requeue semantics and basic.qos prefetch_count.
"""

import time
import urllib.parse
import uuid
from datetime import datetime, timezone
from decimal import Decimal

import pika
import pika.connection
import pika.exceptions
import pika.spec
import pytest

MISSED_1S = r"(?i)\berror\b.*missed heartbeats from client, timeout: 1s"
ANY_MISSED = r"missed heartbeats from client"

# What pika raises when the broker has gone away under it.
PIKA_CONN_ERRORS = (pika.exceptions.AMQPConnectionError, ConnectionError)

# The scenario's "long task": longer than 3T for T=1, so the broker must have acted.
STALL_S = 3.8


def connect(broker, heartbeat):
    params = pika.URLParameters(
        f"{broker.url}?heartbeat={heartbeat}&socket_timeout=5"
        f"&stack_timeout=10&connection_attempts=1&blocked_connection_timeout=30"
    )
    return pika.BlockingConnection(params)


def get_eventually(ch, queue, timeout=5.0, auto_ack=True):
    """basic.get until a message arrives (requeues may be asynchronous) or fail."""
    deadline = time.monotonic() + timeout
    while True:
        method, props, body = ch.basic_get(queue, auto_ack=auto_ack)
        if method is not None:
            return method, props, body
        if time.monotonic() >= deadline:
            pytest.fail(f"no message on {queue!r} within {timeout}s")
        time.sleep(0.05)


def ready_count(ch, queue):
    return ch.queue_declare(queue, passive=True).method.message_count


def run_stalled_consumer(broker, queue, heartbeat, body):
    """Consume one message with start_consuming(); the callback sleeps STALL_S without
    driving I/O (a long task), then acks. Returns what happened."""
    conn = connect(broker, heartbeat)
    assert conn._impl.params.heartbeat == heartbeat  # what pika sent in tune-ok
    ch = conn.channel()
    ch.queue_declare(queue)
    ch.basic_qos(prefetch_count=1)
    ch.basic_publish("", queue, body)
    state = {}

    def on_message(c, method, props, b):
        state["body"] = b
        state["redelivered"] = method.redelivered
        time.sleep(STALL_S)  # the scenario: the application stops driving I/O
        state["open_after_stall"] = conn.is_open
        try:
            c.basic_ack(method.delivery_tag)
        except Exception as e:  # noqa: BLE001 - inspected by the caller
            state["ack_error"] = e
            raise
        state["acked"] = True
        c.stop_consuming()

    ch.basic_consume(queue, on_message)
    try:
        ch.start_consuming()
    except PIKA_CONN_ERRORS as e:
        state["consume_error"] = e
    return conn, state


def test_stalled_consumer_heartbeat_1_is_dropped_and_message_redelivered(broker, qname):
    body = b"seed-story-" + uuid.uuid4().bytes
    conn, state = run_stalled_consumer(broker, qname, heartbeat=1, body=body)
    assert state.get("body") == body and state.get("redelivered") is False

    # The broker noticed the silence and said so at error level.
    line = broker.wait_for_log(MISSED_1S, timeout=5)
    assert "timeout: 1s" in line

    # The late ack failed with a pika connection error...
    assert "acked" not in state, "late basic_ack succeeded: broker kept a silent heartbeat=1 client"
    err = state.get("ack_error")
    assert isinstance(err, PIKA_CONN_ERRORS), f"late ack raised {err!r}, not a connection error"
    # ...because the socket was closed, not because of a connection.close from the broker.
    assert not isinstance(err, pika.exceptions.ConnectionClosedByBroker), (
        f"broker sent connection.close ({err!r}); RabbitMQ just closes the TCP socket"
    )
    assert conn.is_closed

    # A new connection gets the same message back, marked redelivered.
    conn2 = connect(broker, heartbeat=0)
    try:
        ch2 = conn2.channel()
        method, _props, got = get_eventually(ch2, qname)
        assert got == body
        assert method.redelivered is True
        assert ready_count(ch2, qname) == 0
    finally:
        conn2.close()


def test_stalled_consumer_heartbeat_0_keeps_connection_and_ack_lands(broker, qname):
    body = b"no-heartbeat-" + uuid.uuid4().bytes
    conn, state = run_stalled_consumer(broker, qname, heartbeat=0, body=body)
    assert "consume_error" not in state, f"connection failed: {state.get('consume_error')!r}"
    assert "ack_error" not in state, f"ack failed: {state.get('ack_error')!r}"
    assert state.get("body") == body and state.get("redelivered") is False
    assert state.get("open_after_stall") is True and state.get("acked") is True
    assert conn.is_open
    conn.close()

    conn2 = connect(broker, heartbeat=0)
    try:
        ch2 = conn2.channel()
        assert ch2.basic_get(qname, auto_ack=True) == (None, None, None), "acked message came back"
        assert ready_count(ch2, qname) == 0
    finally:
        conn2.close()
    assert broker.log_lines(ANY_MISSED) == [], "heartbeat=0 connection reported as missing heartbeats"


def test_heartbeat_1_client_that_drives_io_survives(broker, qname):
    conn = connect(broker, heartbeat=1)
    try:
        ch = conn.channel()
        ch.queue_declare(qname)
        # 3.2 s > 3T of idling while pika's own timer sends heartbeats every T/2.
        deadline = time.monotonic() + 3.2
        while time.monotonic() < deadline:
            conn.process_data_events(time_limit=0.1)
        assert conn.is_open
        ch.basic_publish("", qname, b"still-here")
        method, _p, body = get_eventually(ch, qname)
        assert body == b"still-here" and method.redelivered is False
    finally:
        if conn.is_open:
            conn.close()
    assert broker.log_lines(ANY_MISSED) == []


def test_heartbeat_above_server_proposal_is_accepted(broker, qname, monkeypatch):
    seen = {}
    original = pika.connection.Connection._tune_heartbeat_timeout

    def spy(client_value, server_value):
        seen["server"] = server_value
        return original(client_value, server_value)

    monkeypatch.setattr(pika.connection.Connection, "_tune_heartbeat_timeout", staticmethod(spy))
    conn = connect(broker, heartbeat=120)
    try:
        assert seen["server"] == 60, "server should propose heartbeat 60 in connection.tune"
        assert conn._impl.params.heartbeat == 120  # sent in tune-ok; the broker must accept it
        ch = conn.channel()
        ch.queue_declare(qname)
        ch.basic_publish("", qname, b"hb120")
        _m, _p, body = get_eventually(ch, qname)
        assert body == b"hb120"
        conn.process_data_events(time_limit=0.3)
        assert conn.is_open
    finally:
        if conn.is_open:
            conn.close()


HEADERS = {
    "str": "text é",
    "int": 42,
    "neg": -7,
    "int64": 2**40,
    "true": True,
    "false": False,
    "none": None,
    "nested": {"inner": "v", "n": 1, "deeper": {"list": [1, 2], "flag": False}},
    "array": [1, "two", True, None, {"k": "v"}, [3, [4]]],
    "decimal": Decimal("3.14"),
    "when": datetime(2024, 5, 6, 7, 8, 9, tzinfo=timezone.utc),  # pika decodes T as aware UTC
    "bytes": b"\x00\xffraw",
    "empty_table": {},
    "empty_array": [],
}


def test_properties_and_headers_round_trip(broker, qname):
    body = bytes(range(256)) * 4
    props = pika.BasicProperties(
        content_type="application/json",
        content_encoding="utf-8",
        headers=HEADERS,
        delivery_mode=2,
        priority=3,
        correlation_id="corr-" + uuid.uuid4().hex,
        reply_to="replies",
        expiration="60000",
        message_id="msg-1",
        timestamp=1700000000,
        type="task",
        user_id="guest",
        app_id="interop",
    )
    conn = connect(broker, heartbeat=0)
    try:
        ch = conn.channel()
        ch.queue_declare(qname)
        ch.basic_publish("", qname, body, props)
        method, got, got_body = next(ch.consume(qname, inactivity_timeout=5))
        assert method is not None, "no delivery within 5 s"
        assert got_body == body
        assert method.routing_key == qname and method.exchange == ""
        assert method.redelivered is False and method.delivery_tag == 1
        for name in (
            "content_type", "content_encoding", "delivery_mode", "priority", "correlation_id",
            "reply_to", "expiration", "message_id", "timestamp", "type", "user_id", "app_id",
        ):
            assert getattr(got, name) == getattr(props, name), name
        assert got.headers == HEADERS
        ch.basic_ack(method.delivery_tag)
        assert ch.cancel() == 0  # nothing left pending for the generator consumer
        assert ready_count(ch, qname) == 0
    finally:
        conn.close()


def test_large_body_spans_frames(broker, qname):
    body = uuid.uuid4().bytes * 25000  # 400 kB: several body frames at frame_max 131072
    conn = connect(broker, heartbeat=0)
    try:
        ch = conn.channel()
        ch.queue_declare(qname)
        ch.basic_publish("", qname, body, pika.BasicProperties(content_type="application/octet-stream"))
        method, props, got = get_eventually(ch, qname)
        assert len(got) == len(body) and got == body
        assert props.content_type == "application/octet-stream"
    finally:
        conn.close()


def test_amq_direct_routing(broker, qname):
    conn = connect(broker, heartbeat=0)
    try:
        ch = conn.channel()
        ch.queue_declare(qname)
        ch.queue_bind(qname, "amq.direct", routing_key="rk-" + qname)
        ch.basic_publish("amq.direct", "rk-" + qname, b"direct")
        ch.basic_publish("amq.direct", "unbound-key", b"dropped")
        method, _p, body = get_eventually(ch, qname)
        assert body == b"direct" and method.exchange == "amq.direct"
        assert method.routing_key == "rk-" + qname
        assert ch.basic_get(qname, auto_ack=True) == (None, None, None)
    finally:
        conn.close()


def test_nack_requeue_redelivers_and_reject_drops(broker, qname):
    conn = connect(broker, heartbeat=0)
    try:
        ch = conn.channel()
        ch.queue_declare(qname)
        ch.basic_publish("", qname, b"nack-me")
        method, _p, body = ch.basic_get(qname, auto_ack=False)
        assert body == b"nack-me" and method.redelivered is False
        ch.basic_nack(method.delivery_tag, requeue=True)
        method2, _p, body2 = get_eventually(ch, qname, auto_ack=False)
        assert body2 == b"nack-me"
        assert method2.redelivered is True
        assert method2.delivery_tag != method.delivery_tag
        ch.basic_ack(method2.delivery_tag)
        assert ready_count(ch, qname) == 0

        ch.basic_publish("", qname, b"reject-me")
        method3, _p, body3 = ch.basic_get(qname, auto_ack=False)
        assert body3 == b"reject-me"
        ch.basic_reject(method3.delivery_tag, requeue=False)
        assert ch.basic_get(qname, auto_ack=True) == (None, None, None)
        assert ready_count(ch, qname) == 0

        # reject with requeue=True comes back redelivered too
        ch.basic_publish("", qname, b"reject-requeue")
        method4, _p, _b = ch.basic_get(qname, auto_ack=False)
        ch.basic_reject(method4.delivery_tag, requeue=True)
        method5, _p, body5 = get_eventually(ch, qname)
        assert body5 == b"reject-requeue" and method5.redelivered is True
    finally:
        conn.close()


def test_qos_prefetch_count_1_limits_unacked_deliveries(broker, qname):
    conn = connect(broker, heartbeat=0)
    try:
        ch = conn.channel()
        ch.queue_declare(qname)
        ch.basic_qos(prefetch_count=1)
        ch.basic_publish("", qname, b"first")
        ch.basic_publish("", qname, b"second")
        got = []
        ch.basic_consume(qname, lambda c, m, p, b: got.append((m, b)))

        def pump_until(pred, timeout):
            deadline = time.monotonic() + timeout
            while not pred() and time.monotonic() < deadline:
                conn.process_data_events(time_limit=0.05)
            return pred()

        assert pump_until(lambda: len(got) >= 1, 5), "no delivery within 5 s"
        # Bounded window in which a second delivery would show up if prefetch were ignored.
        pump_until(lambda: len(got) >= 2, 0.7)
        assert [b for _m, b in got] == [b"first"], "second message delivered before the first was acked"
        declared = ch.queue_declare(qname, passive=True).method
        assert declared.message_count == 1 and declared.consumer_count == 1

        ch.basic_ack(got[0][0].delivery_tag)
        assert pump_until(lambda: len(got) >= 2, 5), "second message not delivered after ack"
        assert [b for _m, b in got] == [b"first", b"second"]
        ch.basic_ack(got[1][0].delivery_tag)
        assert ready_count(ch, qname) == 0
    finally:
        conn.close()


def test_queue_purge_and_delete(broker, qname):
    conn = connect(broker, heartbeat=0)
    try:
        ch = conn.channel()
        ok = ch.queue_declare(qname).method
        assert ok.queue == qname and ok.message_count == 0 and ok.consumer_count == 0
        for i in range(3):
            ch.basic_publish("", qname, b"m%d" % i)
        # publishes are async; a passive declare after them on the same channel sees them
        assert ready_count(ch, qname) == 3
        assert ch.queue_purge(qname).method.message_count == 3
        assert ready_count(ch, qname) == 0
        ch.basic_publish("", qname, b"left")
        assert ch.queue_delete(qname).method.message_count == 1
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as exc:
            ch.queue_declare(qname, passive=True)
        assert exc.value.reply_code == 404
        assert conn.is_open  # a channel error leaves the connection up
        assert conn.channel().is_open
    finally:
        conn.close()


def test_blocked_publisher_is_not_dropped_for_missed_heartbeats(broker, qname):
    """Flow control with pika (heartbeat=1): a memory alarm (raised by SIGUSR1 to the binary)
    blocks the publisher at its next publish; pika gets Connection.Blocked; the broker stops
    reading it and pauses its heartbeat monitor, so 4 s (4T) of blocking is not "missed
    heartbeats"; after SIGUSR2 pika gets Connection.Unblocked and the message arrives once."""
    import os
    import signal

    conn = connect(broker, heartbeat=1)
    events = []
    conn.add_on_connection_blocked_callback(lambda c, m: events.append(("blocked", m.method.reason)))
    conn.add_on_connection_unblocked_callback(lambda c, m: events.append(("unblocked", None)))
    ch = conn.channel()
    ch.queue_declare(qname)
    os.kill(broker.proc.pid, signal.SIGUSR1)
    broker.wait_for_log(r"raising the memory alarm")
    ch.basic_publish("", qname, b"during the alarm")
    deadline = time.monotonic() + 5
    while not events and time.monotonic() < deadline:
        conn.process_data_events(time_limit=0.1)
    assert events == [("blocked", "low on memory")]
    conn.sleep(4.0)  # blocked for 4T; pika keeps its I/O going, the broker does not read it
    assert conn.is_open
    assert not broker.log_lines(ANY_MISSED)
    os.kill(broker.proc.pid, signal.SIGUSR2)
    deadline = time.monotonic() + 5
    while len(events) < 2 and time.monotonic() < deadline:
        conn.process_data_events(time_limit=0.1)
    assert events[-1] == ("unblocked", None)
    method, _, body = get_eventually(ch, qname)
    assert body == b"during the alarm" and not method.redelivered
    assert ch.basic_get(qname, auto_ack=True) == (None, None, None)
    conn.close()


def test_silent_loss_through_the_control_api_makes_pika_fail(broker, qname):
    """Fault injection over HTTP: a black hole (nothing read or written, TCP kept open) on
    pika's connection; pika's own heartbeat check gives up. pika checks every T + 5 s and
    fails on the second check that saw nothing (about 12 s with T=1)."""
    params = pika.URLParameters(f"{broker.url}?heartbeat=1&socket_timeout=5&connection_attempts=1")
    params.client_properties = {"connection_name": "black-holed"}
    conn = pika.BlockingConnection(params)
    ch = conn.channel()
    ch.queue_declare(qname)
    c = broker.connection("black-holed")
    assert broker.api("GET", f"/api/connections/{urllib.parse.quote(c.name, safe='')}")["timeout"] == 1
    c.black_hole()
    started = time.monotonic()
    with pytest.raises(PIKA_CONN_ERRORS):
        while time.monotonic() - started < 30:
            conn.process_data_events(time_limit=0.5)
    took = time.monotonic() - started
    assert 5 <= took <= 25, f"pika noticed after {took:.1f}s"


def test_update_secret_blocking(broker, qname):
    """pika's BlockingConnection.update_secret, as its acceptance suite
    calls it: update-secret-ok comes back and the connection goes on."""
    conn = connect(broker, 0)
    try:
        conn.update_secret("new-secret", "token refresh")
        ch = conn.channel()
        ch.queue_declare(qname, auto_delete=True)
        ch.basic_publish("", qname, b"after update")
        assert get_eventually(ch, qname)[2] == b"after update"
    finally:
        conn.close()


def test_update_secret_select_connection(broker):
    """The asynchronous adapter: the callback receives UpdateSecretOk."""
    frames = []

    def on_open(connection):
        connection.update_secret("new-secret", "reason", callback=on_updated)

    def on_updated(frame):
        frames.append(frame)
        conn.close()

    conn = pika.SelectConnection(
        pika.URLParameters(f"{broker.url}?heartbeat=0&socket_timeout=5"),
        on_open_callback=on_open,
        on_open_error_callback=lambda _c, e: frames.append(e),
        on_close_callback=lambda _c, _r: conn.ioloop.stop(),
    )
    conn.ioloop.call_later(10, conn.ioloop.stop)
    conn.ioloop.start()
    assert len(frames) == 1, frames
    assert isinstance(frames[0].method, pika.spec.Connection.UpdateSecretOk)
