#!/usr/bin/env python3
"""Runs the same management-API requests against RabbitMQ and warren and prints where the
answers differ: status codes, JSON keys one has and the other lacks, and values that differ.

    python3 scripts/compare_management.py http://127.0.0.1:15672 http://127.0.0.1:15673

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
            "password_hash", "Location", "name_hash"}


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


def main(rabbit, warren):
    differences = 0
    for method, path, body in STEPS:
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


if __name__ == "__main__":
    main(sys.argv[1].rstrip("/"), sys.argv[2].rstrip("/"))
