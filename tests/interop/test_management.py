"""The management API's write side through a real management client (pyrabbit2), per-test
reset over plain HTTP, and the Prometheus metrics through prometheus_client's OpenMetrics
parser, all against the warren binary."""

import urllib.request

import pika
from prometheus_client.openmetrics.parser import text_string_to_metric_families
from pyrabbit2.api import Client


def management(broker, user="guest", password="guest"):
    return Client(f"{broker.host}:{broker.http_port}", user, password)


def test_a_full_round_with_pyrabbit2(broker):
    c = management(broker)
    c.create_vhost("shop")
    c.create_user("app", "pw", tags="management")
    c.set_vhost_permissions("shop", "app", ".*", ".*", ".*")
    c.set_vhost_permissions("shop", "guest", ".*", ".*", ".*")
    assert "shop" in c.get_vhost_names()
    assert c.is_alive("shop")
    assert sorted(p["user"] for p in c.get_vhost_permissions("shop")) == ["app", "guest"]
    assert [p["vhost"] for p in c.get_user_permissions("app")] == ["shop"]

    c.create_exchange("shop", "orders", "topic")
    assert c.get_exchange("shop", "orders")["type"] == "topic"
    c.create_queue("shop", "eu", durable=True)
    c.create_binding("shop", "orders", "eu", "eu.#")
    assert [b["routing_key"] for b in c.get_queue_bindings("shop", "eu")] == ["eu", "eu.#"]
    assert c.publish("shop", "orders", "eu.fr", "order 1")
    assert c.publish("shop", "orders", "eu.de", "order 2")
    assert not c.publish("shop", "orders", "us.ny", "nobody wants this")
    assert c.get_queue_depth("shop", "eu") == 2

    peeked = c.get_messages("shop", "eu", count=1, requeue=True)
    assert peeked[0]["payload"] == "order 1" and peeked[0]["redelivered"] is False
    assert c.get_queue_depth("shop", "eu") == 2, "requeued, counted again at once"
    taken = c.get_messages("shop", "eu", count=1, requeue=False)
    assert taken[0]["payload"] == "order 1" and taken[0]["redelivered"] is True
    assert c.get_queue_depth("shop", "eu") == 1

    # A client of the new user, in the new vhost, finds what HTTP left there.
    conn = pika.BlockingConnection(pika.URLParameters(f"amqp://app:pw@{broker.host}:{broker.port}/shop"))
    ch = conn.channel()
    _, _, body = ch.basic_get("eu", auto_ack=True)
    assert body == b"order 2"
    conn.close()

    assert c.publish("shop", "orders", "eu.it", "order 3")
    assert c.publish("shop", "orders", "eu.es", "order 4")
    # The ackmodes pyrabbit2 does not offer, over plain HTTP.
    for mode, left in [("reject_requeue_true", 2), ("reject_requeue_false", 1)]:
        got = broker.api("POST", "/api/queues/shop/eu/get", {"count": 1, "ackmode": mode, "encoding": "auto"})
        assert got[0]["payload"] == "order 3"
        assert c.get_queue_depth("shop", "eu") == left
    c.purge_queue("shop", "eu")
    assert c.get_queue_depth("shop", "eu") == 0

    # Export, reset, import: everything is there again.
    exported = broker.api("GET", "/api/definitions")
    broker.api("POST", "/api/warren/reset")
    assert "shop" not in c.get_vhost_names()
    broker.api("POST", "/api/definitions", exported)
    assert "shop" in c.get_vhost_names()
    assert c.get_exchange("shop", "orders")["type"] == "topic"
    assert [b["routing_key"] for b in c.get_queue_bindings("shop", "eu")] == ["eu", "eu.#"]
    assert management(broker, "app", "pw").get_whoami()["name"] == "app"
    c.delete_queue("shop", "eu")
    c.delete_queue("shop", "aliveness-test")
    c.delete_exchange("shop", "orders")
    c.delete_vhost("shop")
    c.delete_user("app")
    assert "shop" not in c.get_vhost_names()


def test_reset_between_tests_over_http(broker):
    c = management(broker)
    c.create_queue("/", "left-over")
    conn = pika.BlockingConnection(pika.URLParameters(broker.url))
    done = broker.api("POST", "/api/warren/reset")
    assert done["closed_connections"] == 1 and done["all_gone"] is True
    assert not conn.is_open or _closed_soon(conn)
    assert [q["name"] for q in c.get_queues()] == []
    fresh = broker.api("POST", "/api/warren/vhosts")
    assert fresh["name"].startswith("test-")
    conn = pika.BlockingConnection(pika.URLParameters(f"amqp://guest:guest@{broker.host}:{broker.port}/{fresh['name']}"))
    conn.channel().queue_declare("mine")
    conn.close()
    c.delete_vhost(fresh["name"])


def _closed_soon(conn):
    """pika learns of the server's connection.close at its next I/O."""
    try:
        conn.process_data_events(time_limit=1)
    except pika.exceptions.AMQPError:
        return True
    return not conn.is_open


def test_metrics_parse_with_the_openmetrics_parser(broker):
    conn = pika.BlockingConnection(pika.URLParameters(broker.url))
    ch = conn.channel()
    ch.queue_declare("work")
    for n in range(3):
        ch.basic_publish("", "work", f"job {n}".encode())
    _, _, body = ch.basic_get("work", auto_ack=False)
    text = urllib.request.urlopen(f"http://{broker.host}:{broker.http_port}/metrics", timeout=5).read().decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}

    def value(name, **labels):
        (sample,) = [s for s in families[name].samples if s.labels == labels and not s.name.endswith("_created")]
        return sample.value

    assert value("rabbitmq_queue_messages_ready", vhost="/", queue="work") == 2
    assert value("rabbitmq_queue_messages_unacked", vhost="/", queue="work") == 1
    assert value("rabbitmq_connections") == 1
    assert value("rabbitmq_channels") == 1
    assert families["rabbitmq_global_messages_received"].type == "counter"
    assert value("rabbitmq_global_messages_received") == 3
    assert value("rabbitmq_global_messages_delivered") == 1
    assert value("rabbitmq_process_resident_memory_bytes") > 0
    conn.close()
