"""py-amqp 5.4.2 (`import amqp`, Celery's pyamqp transport) against the real warren binary.

Proves that warren:
- authenticates py-amqp with AMQPLAIN (py-amqp's pick when the server lists it) and with
  PLAIN (what kombu forces), and refuses a bad password;
- serves declare / publish / basic.get / ack with properties and Celery-style header types
  (S t d L I D T F A V) intact;
- with heartbeat=1, sends heartbeats to an idle client (every T/2) and keeps a client that
  calls heartbeat_tick() and reads the socket; once the client goes silent it logs
  "missed heartbeats from client, timeout: 1s" at error level 2T..3T after the client's
  last byte, closes the socket (the next client operation fails with a socket error, not
  a connection.close) and requeues the unacked message with redelivered=True;
- with heartbeat=0 (py-amqp sends 0 in tune-ok), neither side heartbeats: the broker sends
  nothing during 3.5 s of client silence and keeps the connection.
"""

import socket
import time
import uuid
from datetime import datetime
from decimal import Decimal

import amqp
import amqp.exceptions
import pytest

MISSED_1S = r"(?i)\berror\b.*missed heartbeats from client, timeout: 1s"
ANY_MISSED = r"missed heartbeats from client"


def make_conn(broker, heartbeat, **kw):
    kw.setdefault("userid", "guest")
    kw.setdefault("password", "guest")
    return amqp.Connection(
        host=f"{broker.host}:{broker.port}",
        virtual_host="/",
        heartbeat=heartbeat,
        connect_timeout=5,
        read_timeout=10,
        write_timeout=5,
        **kw,
    )


def record_mechanism(conn):
    """Wrap each SASL candidate so we see which one py-amqp actually used."""
    used = []
    for auth in conn.authentication:
        orig = auth.start

        def start(connection, _orig=orig, _mech=auth.mechanism):
            resp = _orig(connection)
            if resp is not NotImplemented:
                used.append(_mech)
            return resp

        auth.start = start
    return used


def get_eventually(ch, queue, timeout=5.0, no_ack=True):
    deadline = time.monotonic() + timeout
    while True:
        msg = ch.basic_get(queue, no_ack=no_ack)
        if msg is not None:
            return msg
        if time.monotonic() >= deadline:
            pytest.fail(f"no message on {queue!r} within {timeout}s")
        time.sleep(0.05)


def ready_count(ch, queue):
    return ch.queue_declare(queue, passive=True).message_count


HEADERS = {
    "str": "text é",
    "int": 7,
    "long": 2**40,  # py-amqp writes 'L'
    "float": 2.5,  # 'd'
    "decimal": Decimal("1.25"),  # 'D'
    "when": datetime(2024, 5, 6, 7, 8, 9),  # 'T'
    "flag": True,
    "none": None,  # 'V'
    "nested": {"a": [1, "x", None], "b": {"c": False}},
    "array": [1, "two", 3.5, {"k": "v"}],
}


def test_connect_amqplain_publish_get_ack(broker, qname):
    conn = make_conn(broker, heartbeat=0)
    used = record_mechanism(conn)
    conn.connect()
    try:
        assert b"AMQPLAIN" in conn.mechanisms and b"PLAIN" in conn.mechanisms
        assert used == [b"AMQPLAIN"], f"py-amqp authenticated with {used!r}"
        assert conn.connected
        ch = conn.channel()
        name, count, consumers = ch.queue_declare(qname)
        assert (name, count, consumers) == (qname, 0, 0)
        body = "payload " + uuid.uuid4().hex
        ch.basic_publish(
            amqp.Message(
                body,
                content_type="text/plain",
                content_encoding="utf-8",
                delivery_mode=2,
                correlation_id="c-1",
                reply_to="r",
                application_headers=HEADERS,
            ),
            exchange="",
            routing_key=qname,
        )
        msg = get_eventually(ch, qname, no_ack=False)
        assert msg.body == body  # content_encoding utf-8: py-amqp decodes the body to str
        assert msg.delivery_info["redelivered"] is False
        assert msg.delivery_info["routing_key"] == qname
        assert msg.content_type == "text/plain" and msg.delivery_mode == 2
        assert msg.correlation_id == "c-1" and msg.reply_to == "r"
        assert msg.headers == HEADERS
        ch.basic_ack(msg.delivery_tag)
        assert ch.basic_get(qname) is None
        assert ready_count(ch, qname) == 0
    finally:
        conn.close()


def test_plain_login_and_bad_password(broker):
    conn = make_conn(broker, heartbeat=0, login_method="PLAIN")
    conn.connect()
    assert conn.connected
    conn.close()

    bad = make_conn(broker, heartbeat=0, password="not-the-password")
    with pytest.raises(Exception) as exc:
        bad.connect()
    caps = bad.server_properties.get("capabilities") or {}
    if caps.get("authentication_failure_close"):
        # py-amqp asked for authentication_failure_close: expect connection.close 403
        assert isinstance(exc.value, amqp.exceptions.AccessRefused), repr(exc.value)
        assert exc.value.reply_code == 403
    else:
        assert isinstance(exc.value, OSError), repr(exc.value)
    try:
        bad.collect()
    except Exception:  # noqa: BLE001 - best-effort cleanup of a refused connection
        pass


def test_heartbeat_1_survives_while_ticking_then_dropped_when_silent(broker, qname):
    conn = make_conn(broker, heartbeat=1)
    conn.connect()
    assert conn.heartbeat == 1
    ch = conn.channel()
    ch.queue_declare(qname)
    ch.basic_publish(amqp.Message(b"acked"), routing_key=qname)
    ch.basic_publish(amqp.Message(b"held"), routing_key=qname)
    first = get_eventually(ch, qname, no_ack=False)
    assert first.body == b"acked"
    ch.basic_ack(first.delivery_tag)
    held = get_eventually(ch, qname, no_ack=False)  # stays unacked through the drop
    assert held.body == b"held" and held.delivery_info["redelivered"] is False

    # Phase 1: behave like Celery's event loop for 3 s (> 2T..3T): tick + read the socket.
    recv_before = conn.bytes_recv
    end = time.monotonic() + 3.0
    while time.monotonic() < end:
        conn.heartbeat_tick()  # sends ours every T/2; raises if the server went quiet
        try:
            conn.drain_events(timeout=0.1)
        except socket.timeout:
            pass
    frames_in = conn.bytes_recv - recv_before
    # Nothing but heartbeats flows while idle; the server sends one per T/2 of silence.
    assert frames_in >= 3, f"server sent only {frames_in} frames in 3 s of idle with heartbeat=1"
    assert ready_count(ch, qname) == 0  # still works; 'held' is unacked, not ready
    assert broker.log_lines(ANY_MISSED) == [], "broker dropped a client that was heartbeating"

    # Phase 2: go silent. Our last byte is this heartbeat.
    conn.send_heartbeat()
    t_last = time.monotonic()
    line = broker.wait_for_log(MISSED_1S, timeout=5)
    detected_after = time.monotonic() - t_last
    assert "timeout: 1s" in line
    assert 1.8 <= detected_after <= 3.5, (
        f"broker detected silence {detected_after:.2f}s after the client's last byte; "
        f"RabbitMQ does so between 2T and 3T (2..3 s)"
    )
    remaining = t_last + 3.5 - time.monotonic()
    if remaining > 0:
        time.sleep(remaining)  # the scenario: the client stays silent past 3T

    with pytest.raises(Exception) as exc:
        ch.queue_declare(qname, passive=True)
    err = exc.value
    assert isinstance(err, OSError) and not isinstance(err, socket.timeout), (
        f"expected the socket to be closed under the client, got {err!r}"
    )
    try:
        conn.collect()
    except Exception:  # noqa: BLE001
        pass

    # The unacked message is back, marked redelivered.
    conn2 = make_conn(broker, heartbeat=0)
    conn2.connect()
    try:
        ch2 = conn2.channel()
        again = get_eventually(ch2, qname)
        assert again.body == b"held"
        assert again.delivery_info["redelivered"] is True
        assert ch2.basic_get(qname) is None
    finally:
        conn2.close()


def test_heartbeat_0_idle_connection_survives(broker, qname):
    conn = make_conn(broker, heartbeat=0)
    conn.connect()
    try:
        assert conn.heartbeat == 0
        ch = conn.channel()
        ch.queue_declare(qname)
        recv_before = conn.bytes_recv
        # 3.5 s of client silence; the server must not send anything either (no heartbeats).
        with pytest.raises(socket.timeout):
            conn.drain_events(timeout=3.5)
        assert conn.bytes_recv == recv_before
        ch.basic_publish(amqp.Message(b"after-idle"), routing_key=qname)
        msg = get_eventually(ch, qname, no_ack=False)
        assert msg.body == b"after-idle"
        ch.basic_ack(msg.delivery_tag)
        assert ready_count(ch, qname) == 0
    finally:
        conn.close()
    assert broker.log_lines(ANY_MISSED) == []
