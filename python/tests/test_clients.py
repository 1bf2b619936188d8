"""pika and py-amqp through the plugin, and the seed's story with a real long task in a pika
consumer: its callback blocks the connection's I/O, warren drops it after missed heartbeats,
the late ack fails with pika's own error, and the message comes back redelivered."""

import socket
import time

import amqp
import pika
import pytest

from warren_broker import Broker


def test_a_pika_consumer_with_a_long_task_loses_its_ack(warren: Broker):
    params = pika.URLParameters(warren.url + "?heartbeat=1")
    conn = pika.BlockingConnection(params)
    ch = conn.channel()
    ch.queue_declare("tasks")
    ch.basic_publish("", "tasks", b"job")
    events = warren.events()
    seen = []

    def long_task(ch, method, properties, body):
        seen.append(method.redelivered)
        # The long task: pika's I/O waits while this runs, so no heartbeats go out. It lasts
        # until warren has dropped the connection.
        events.wait_for(lambda e: e["type"] == "connection.closed", timeout=10)
        ch.basic_ack(method.delivery_tag)

    ch.basic_consume("tasks", long_task)
    with pytest.raises(pika.exceptions.AMQPConnectionError):
        ch.start_consuming()
    assert seen == [False]
    assert warren.wait_for_log(r"missed heartbeats from client, timeout: 1s")
    again = warren.peek("tasks")
    assert again[0]["payload"] == "job" and again[0]["redelivered"] is True


def test_py_amqp_round_trip_and_heartbeat(warren: Broker):
    conn = amqp.Connection(f"{warren.host}:{warren.amqp_port}", heartbeat=1,
                           client_properties={"connection_name": "py-amqp"})
    conn.connect()
    ch = conn.channel()
    ch.queue_declare("amqp-q")
    ch.basic_publish(amqp.Message("hello"), routing_key="amqp-q")
    assert ch.basic_get("amqp-q", no_ack=True).body == "hello"
    # A silent broker: py-amqp's heartbeat_tick gives up once 2T pass without a byte in.
    warren.connection("py-amqp").withhold_heartbeats()
    deadline = time.monotonic() + 10
    with pytest.raises(amqp.exceptions.ConnectionForced, match="Too many heartbeats missed"):
        while time.monotonic() < deadline:
            conn.heartbeat_tick()
            try:
                conn.drain_events(timeout=0.2)
            except socket.timeout:
                pass
    conn.collect()


def test_after_a_restart_pika_finds_its_durable_queue_and_persistent_messages(warren: Broker):
    conn = pika.BlockingConnection(pika.URLParameters(warren.url))
    ch = conn.channel()
    ch.queue_declare("orders", durable=True)
    ch.queue_declare("scratch")
    for body, mode in ((b"kept", 2), (b"lost", 1)):
        ch.basic_publish("", "orders", body, pika.BasicProperties(delivery_mode=mode))
    ch.basic_publish("", "scratch", b"lost too", pika.BasicProperties(delivery_mode=2))
    conn.process_data_events(time_limit=0)

    report = warren.restart(downtime=0.2)
    assert report["kept"]["messages"] == 1 and report["dropped"]["queues"] == 1
    with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as closed:
        ch.basic_get("orders")
    assert closed.value.reply_code == 320
    assert closed.value.reply_text == "CONNECTION_FORCED - broker forced connection closure with reason 'shutdown'"

    ch = pika.BlockingConnection(pika.URLParameters(warren.url)).channel()
    _, _, body = ch.basic_get("orders", auto_ack=True)
    assert body == b"kept"
    assert ch.basic_get("orders")[0] is None
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as gone:
        ch.queue_declare("scratch", passive=True)
    assert gone.value.reply_code == 404


def test_a_crash_resets_pika_without_a_close_frame(warren: Broker):
    conn = pika.BlockingConnection(pika.URLParameters(warren.url))
    warren.restart(crash=True)
    with pytest.raises(pika.exceptions.StreamLostError):
        conn.channel()


def test_a_tls_broker_in_one_call_with_pika_and_a_client_certificate(tmp_path):
    # The README's TLS example, with the binary from the wheel.
    with Broker.start(tls=True, workdir=tmp_path) as broker:
        context = broker.tls.ssl_context()  # trusts the test authority, presents guest's certificate
        params = pika.ConnectionParameters(host="localhost", port=broker.amqps_port,
                                           ssl_options=pika.SSLOptions(context, "localhost"))
        with pika.BlockingConnection(params) as conn:
            ch = conn.channel()
            ch.queue_declare("secure")
            ch.basic_publish("", "secure", b"hello over tls")
            method, _, body = ch.basic_get("secure", auto_ack=True)
            assert body == b"hello over tls"
            shown = broker.connections()[0]
            assert shown["ssl"] and shown["peer_cert_subject"] == "O=warren,CN=guest"
        assert broker.amqps_url.startswith("amqps://guest:guest@localhost:")
