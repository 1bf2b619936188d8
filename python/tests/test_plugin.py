"""The plugin's fixtures against the installed warren: a pika consumer dropped after missed
heartbeats (the seed's story, with a fault instead of a long task), reset and fresh vhosts."""

import time

import pika
import pytest

from warren_broker import Broker, BrokerError


def test_a_consumer_that_stops_heartbeating_is_dropped_and_its_message_redelivered(warren):
    params = pika.URLParameters(warren.url + "?heartbeat=1")
    params.client_properties = {"connection_name": "worker"}
    conn = pika.BlockingConnection(params)
    ch = conn.channel()
    ch.queue_declare("tasks")
    ch.basic_publish("", "tasks", b"job")
    method, _, body = ch.basic_get("tasks")
    assert body == b"job"
    events = warren.events()
    warren.connection("worker").ignore_client()      # as if a long task blocked pika's I/O
    closed = events.wait_for(lambda e: e["type"] == "connection.closed", timeout=10)
    assert "missed heartbeats" in closed["reason"]
    with pytest.raises(pika.exceptions.AMQPError):
        ch.basic_ack(method.delivery_tag)              # the late ack fails
        conn.process_data_events(time_limit=1)
    again = warren.peek("tasks")
    assert again[0]["payload"] == "job" and again[0]["redelivered"] is True


def test_each_test_starts_clean(warren):
    assert warren.queues() == []
    assert warren.connections() == []


def test_a_vhost_of_its_own(warren_vhost):
    conn = pika.BlockingConnection(pika.URLParameters(warren_vhost.url))
    conn.channel().queue_declare("mine")
    conn.close()


def test_a_broker_that_cannot_start_says_why(tmp_path):
    with pytest.raises(BrokerError, match="invalid value 'lots' for 'heartbeat'"):
        Broker.start(config="heartbeat = lots\n")


def _connect(warren, name, heartbeat=0, **kwargs):
    params = pika.URLParameters(f"{warren.url}?heartbeat={heartbeat}")
    params.client_properties = {"connection_name": name}
    for key, value in kwargs.items():
        setattr(params, key, value)
    return pika.BlockingConnection(params)


def test_every_fault_reaches_a_pika_client(warren):
    # force_close: connection.close 320 with the reason, as rabbitmqctl close_connection.
    conn = _connect(warren, "closed")
    warren.connection("closed").force_close("maintenance")
    with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as closed:
        conn.process_data_events(time_limit=2)
    assert closed.value.reply_code == 320 and "maintenance" in closed.value.reply_text

    # kill: a TCP reset, without a word.
    conn = _connect(warren, "killed")
    warren.connection("killed").kill()
    with pytest.raises(pika.exceptions.AMQPConnectionError):
        conn.process_data_events(time_limit=2)
        conn.channel().queue_declare("after-kill")

    # block: connection.blocked at the next publish.
    conn = _connect(warren, "blocked")
    blocked = []
    conn.add_on_connection_blocked_callback(lambda *a: blocked.append(True))
    ch = conn.channel()
    warren.connection("blocked").block()
    ch.basic_publish("", "nowhere", b"m")
    conn.process_data_events(time_limit=1)
    assert blocked == [True]
    warren.connection("blocked").block(False)
    conn.close()

    # delivery latency: a get waits for it.
    conn = _connect(warren, "slow")
    ch = conn.channel()
    ch.queue_declare("slow-q")
    ch.basic_publish("", "slow-q", b"m")
    warren.connection("slow").delivery_latency(300)
    started = time.monotonic()
    _, _, body = ch.basic_get("slow-q", auto_ack=True)
    assert body == b"m" and time.monotonic() - started >= 0.3
    conn.close()

    # withhold heartbeats and black hole: pika (heartbeat 1) finds the broker gone. pika
    # checks every T + 5 s and gives up at the second silent check: about 12 s.
    for fault in ("withhold_heartbeats", "black_hole"):
        conn = _connect(warren, fault, heartbeat=1)
        getattr(warren.connection(fault), fault)()
        with pytest.raises(pika.exceptions.AMQPConnectionError):
            conn.process_data_events(time_limit=20)


def test_a_kombu_round_trip(warren):
    import kombu
    with kombu.Connection(warren.url) as conn:
        queue = conn.SimpleQueue("kombu-q")
        queue.put({"n": 1})
        assert queue.get(timeout=5).payload == {"n": 1}
        queue.close()


def test_an_alarm_blocks_a_publisher_until_it_clears(warren):
    conn = _connect(warren, "publisher")
    states = []
    conn.add_on_connection_blocked_callback(lambda *a: states.append("blocked"))
    conn.add_on_connection_unblocked_callback(lambda *a: states.append("unblocked"))
    ch = conn.channel()
    warren.raise_alarm()
    ch.basic_publish("", "nowhere", b"m")
    _pump_until(conn, lambda: states == ["blocked"])
    warren.clear_alarm()
    _pump_until(conn, lambda: states == ["blocked", "unblocked"])
    conn.close()


def _pump_until(conn, condition, timeout=5.0):
    """Lets pika read (and run its callbacks) until `condition` holds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        conn.process_data_events(time_limit=0.2)


def test_a_broker_started_with_definitions_has_them():
    definitions = {"queues": [{"name": "preloaded", "vhost": "/", "durable": True, "auto_delete": False,
                               "arguments": {"x-max-length": 10}}]}
    with Broker.start(definitions=definitions, heartbeat=5) as broker:
        assert broker.queue("preloaded")["arguments"] == {"x-max-length": 10}
        conn = pika.BlockingConnection(pika.URLParameters(broker.url))
        assert conn._impl.params.heartbeat == 5
        conn.close()


def test_a_broker_on_a_data_directory_finds_its_persistent_messages_after_a_kill(tmp_path):
    with Broker.start(data_dir=tmp_path / "data") as broker:
        ch = pika.BlockingConnection(pika.URLParameters(broker.url)).channel()
        ch.confirm_delivery()
        ch.queue_declare("orders", durable=True)
        ch.basic_publish("", "orders", b"kept", pika.BasicProperties(delivery_mode=2))  # confirmed: on disk
        broker.process.kill()
    with Broker.start(data_dir=tmp_path / "data") as broker:
        assert broker.queue("orders")["messages"] == 1
        assert broker.peek("orders")[0]["payload"] == "kept"
