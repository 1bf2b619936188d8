"""The plugin's fixtures against the installed warren: a pika consumer dropped after missed
heartbeats (the seed's story, with a fault instead of a long task), reset and fresh vhosts."""

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
