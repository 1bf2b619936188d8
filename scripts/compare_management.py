#!/usr/bin/env python3
"""Runs the same management-API requests against RabbitMQ and warren and prints where the
answers differ: status codes, JSON keys one has and the other lacks, and values that differ.

    python3 scripts/compare_management.py http://127.0.0.1:15672 http://127.0.0.1:15673 [5672 5673]

With the two AMQP ports too (and pika installed), it also opens a connection with a consumer on
each broker and compares /api/overview, /api/connections, /api/channels and /api/consumers.

Both brokers need the user guest/guest (administrator). The script creates and then deletes
the vhost `compare`. Standard library only. Statistics that RabbitMQ refreshes every 5 s
(message counts in GET replies) are compared after a wait of 6 s, so that both are current.
"""

import base64
import json
import sys
import time
import urllib.error
import urllib.request

AUTH = {"Authorization": "Basic " + base64.b64encode(b"guest:guest").decode(),
        "Content-Type": "application/json"}

# Keys whose values are expected to differ (node names, versions, timings, ids).
VOLATILE = {"node", "pid", "reductions", "garbage_collection", "message_stats", "rabbit_version",
            "rabbitmq_version", "product_name", "product_version", "management_version",
            "erlang_version", "erlang_full_version", "cluster_name", "idle_since", "memory",
            "messages_details", "messages_ready_details", "messages_unacknowledged_details",
            "backing_queue_status", "effective_policy_definition", "head_message_timestamp",
            "password_hash", "Location", "name_hash", "connected_at", "peer_port", "port", "name",
            "connection_name", "client_properties", "recv_oct", "send_oct", "recv_cnt", "send_cnt",
            "recv_oct_details", "send_oct_details", "garbage_collection", "listeners", "contexts",
            "object_totals", "queue_totals", "churn_rates", "message_stats", "statistics_db_event_queue",
            "sample_retention_policies", "exchange_types", "exchange_types"}


def call(base, method, path, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data, method=method, headers=AUTH)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            raw, status = resp.read(), resp.status
    except urllib.error.HTTPError as e:
        raw, status = e.read(), e.code
    try:
        return status, json.loads(raw) if raw else None
    except ValueError:
        return status, raw.decode(errors="replace")


STEPS = [
    ("PUT", "/api/vhosts/compare", None),
    ("PUT", "/api/permissions/compare/guest", {"configure": ".*", "write": ".*", "read": ".*"}),
    ("PUT", "/api/exchanges/compare/x", {"type": "topic", "durable": True}),
    ("PUT", "/api/exchanges/compare/x", {"type": "topic", "durable": True}),
    ("PUT", "/api/exchanges/compare/x", {"type": "fanout", "durable": True}),
    ("PUT", "/api/exchanges/compare/y", {"type": "nope"}),
    ("PUT", "/api/queues/compare/q", {"durable": True, "arguments": {"x-max-length": 5}}),
    ("PUT", "/api/queues/compare/q", {"durable": False}),
    ("POST", "/api/bindings/compare/e/x/q/q", {"routing_key": "a.#", "arguments": {}}),
    ("POST", "/api/exchanges/compare/x/publish",
     {"routing_key": "a.b", "payload": "hello", "payload_encoding": "string",
      "properties": {"delivery_mode": 2, "headers": {"n": 1}}}),
    ("POST", "/api/exchanges/compare/x/publish",
     {"routing_key": "z", "payload": "lost", "payload_encoding": "string", "properties": {}}),
    ("WAIT", None, None),
    ("GET", "/api/queues/compare/q", None),
    ("GET", "/api/exchanges/compare/x", None),
    ("GET", "/api/bindings/compare", None),
    ("GET", "/api/queues/compare/q/bindings", None),
    ("GET", "/api/bindings/compare/e/x/q/q", None),
    ("GET", "/api/vhosts/compare", None),
    ("GET", "/api/permissions/compare/guest", None),
    ("GET", "/api/users/guest", None),
    ("GET", "/api/whoami", None),
    ("POST", "/api/queues/compare/q/get",
     {"count": 1, "ackmode": "ack_requeue_true", "encoding": "auto", "truncate": 50000}),
    ("DELETE", "/api/queues/compare/q?if-empty=true", None),
    ("GET", "/api/queues/compare/missing", None),
    ("GET", "/api/definitions/compare", None),
    ("GET", "/api/aliveness-test/compare", None),
    ("DELETE", "/api/bindings/compare/e/x/q/q/a.%23", None),
    ("DELETE", "/api/queues/compare/q/contents", None),
    ("DELETE", "/api/queues/compare/q", None),
    ("DELETE", "/api/queues/compare/aliveness-test", None),
    ("DELETE", "/api/exchanges/compare/x", None),
    ("DELETE", "/api/vhosts/compare", None),
    ("DELETE", "/api/vhosts/compare", None),
]


def shape(a, b, where, out):
    """Appends to `out` the differences between two JSON values."""
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if k in VOLATILE:
                continue
            if k not in b:
                out.append(f"{where}.{k}: only RabbitMQ has it ({json.dumps(a[k])[:60]})")
            elif k not in a:
                out.append(f"{where}.{k}: only warren has it ({json.dumps(b[k])[:60]})")
            else:
                shape(a[k], b[k], f"{where}.{k}", out)
    elif isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            out.append(f"{where}: {len(a)} items in RabbitMQ, {len(b)} in warren")
        for i, (x, y) in enumerate(zip(a, b)):
            shape(x, y, f"{where}[{i}]", out)
    elif a != b:
        out.append(f"{where}: RabbitMQ {json.dumps(a)[:80]}, warren {json.dumps(b)[:80]}")


CLIENT_STEPS = [
    ("GET", "/api/connections", None),
    ("GET", "/api/channels", None),
    ("GET", "/api/consumers", None),
    ("GET", "/api/overview", None),
]


def with_clients(ports):
    """Opens a pika connection with a consumer on each broker; returns them."""
    import pika  # only needed for this part

    clients = []
    for port in ports:
        params = pika.ConnectionParameters("127.0.0.1", int(port), client_properties={"connection_name": "compare"})
        conn = pika.BlockingConnection(params)
        ch = conn.channel()
        ch.queue_declare("compare-q", exclusive=True)
        ch.basic_qos(prefetch_count=5)
        ch.basic_consume("compare-q", lambda *a: None, consumer_tag="compare-c")
        clients.append(conn)
    time.sleep(6)  # RabbitMQ's statistics interval
    return clients


def main(rabbit, warren, ports=None):
    differences = 0
    steps = STEPS
    if ports:
        clients = with_clients(ports)
        steps = CLIENT_STEPS + STEPS
    for method, path, body in steps:
        if method == "WAIT":
            time.sleep(6)  # RabbitMQ's statistics interval: 5 s
            continue
        (sa, ja), (sb, jb) = call(rabbit, method, path, body), call(warren, method, path, body)
        out = []
        if sa != sb:
            out.append(f"status: RabbitMQ {sa}, warren {sb}")
        shape(ja, jb, "", out)
        print(f"{method} {path}: " + ("same" if not out else f"{len(out)} difference(s)"))
        for line in out:
            print("    " + line)
        differences += len(out)
    print(f"{differences} difference(s) in all")
    if ports:
        for c in clients:
            c.close()


if __name__ == "__main__":
    main(sys.argv[1].rstrip("/"), sys.argv[2].rstrip("/"), sys.argv[3:5] or None)
