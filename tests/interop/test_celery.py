"""A real Celery 5.7 worker (pyamqp transport, rpc:// results) against the real warren binary.

The worker is `celery -A celery_app worker` run as a subprocess (solo pool, one process), the
client side is the same app (tests/interop/celery_app.py) in the test process, and the CLI
commands are the real `celery inspect` / `celery control`. Proves that on warren, as on
RabbitMQ:
- tasks round-trip through the `celery` direct exchange and rpc:// reply queues
  (x-expires, correlation_id on the default exchange);
- `celery inspect ping` and `celery control add_consumer` get their replies (pidbox fanout +
  reply queues with x-message-ttl / x-expires), and the worker consumes from the added queue;
- events flow through the `celeryev` topic exchange to an event receiver;
- acks_late: a task raising Reject(requeue=True) runs again with redelivered=True, one raising
  Reject(requeue=False) is dropped (no dead-letter exchange: gone), a failing task is acked;
- heartbeats: a solo worker with broker_heartbeat=1 whose task blocks its event loop for
  longer than 3T is dropped by the broker ("missed heartbeats from client, timeout: 1s"),
  the worker logs "Connection to broker lost", reconnects, and the unacked task is
  redelivered and runs a second time (redelivered=True); with broker_heartbeat=0 the same
  task runs once.
"""

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import amqp
import pytest

from conftest import start_broker
from warren_broker import BrokerError

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import celery_app  # noqa: E402

HOSTNAME = socket.gethostname()


def broker_url(broker):
    return f"pyamqp://guest:guest@{broker.host}:{broker.port}//"


class Worker:
    """`celery -A celery_app worker` in its own process group, log in a file."""

    def __init__(self, broker, log_dir, name, heartbeat=120, extra=()):
        self.name = f"{name}@{HOSTNAME}"
        self.log_path = Path(log_dir) / f"celery-{name}.log"
        env = dict(os.environ)
        env.update(
            WARREN_CELERY_BROKER=broker_url(broker),
            WARREN_CELERY_HEARTBEAT=str(heartbeat),
            WARREN_CELERY_ACKS_LATE="1",
            PYTHONUNBUFFERED="1",
        )
        cmd = [
            sys.executable, "-m", "celery", "-A", "celery_app", "worker",
            "-P", "solo", "-c", "1", "-l", "info", "-n", self.name, *extra,
        ]  # fmt: skip
        with open(self.log_path, "wb") as f:
            self.proc = subprocess.Popen(
                cmd, cwd=HERE, env=env, stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip

    def log(self):
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_for_log(self, needle, timeout=20.0, count=1):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.log().count(needle) >= count:
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        pytest.fail(f"celery worker log has not {count}x {needle!r} within {timeout}s:\n{self.log()[-6000:]}")

    def stop(self):
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=5)
            except ProcessLookupError:
                pass


def run_celery_cli(broker, *args, timeout=30):
    env = dict(os.environ, WARREN_CELERY_BROKER=broker_url(broker))
    return subprocess.run(
        [sys.executable, "-m", "celery", "-A", "celery_app", *args],
        cwd=HERE, env=env, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def lines(path):
    try:
        return Path(path).read_text().splitlines()
    except FileNotFoundError:
        return []


def queue_depth(broker, queue):
    conn = amqp.Connection(host=f"{broker.host}:{broker.port}", connect_timeout=5)
    conn.connect()
    try:
        _, messages, _ = conn.channel().queue_declare(queue, passive=True)
        return messages
    finally:
        conn.close()


# ---------------------------------------------------------------------------------------------
# One broker and one worker (events on, mingle and gossip on) for the functional tests.


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("celery")
    b = start_broker(d)
    w = Worker(b, d, "main", extra=("-E",))
    app = celery_app.make_app(broker_url(b))
    try:
        w.wait_for_log(" ready.", timeout=30)
        yield b, w, app, d
    finally:
        app.close()
        w.stop()
        b.stop()


def test_task_round_trip(setup):
    b, w, app, d = setup
    assert app.send_task("interop.add", (2, 3)).get(timeout=10) == 5
    value = {"s": "ünïcode", "n": None, "l": [1, 2.5, True], "d": {"nested": [None, "x"]}}
    got = app.send_task("interop.echo_headers", (value,)).get(timeout=10)
    assert got == {"value": value, "routing_key": "celery", "redelivered": False}
    # several in flight at once, through one rpc:// reply queue
    results = [app.send_task("interop.add", (i, i)) for i in range(20)]
    assert [r.get(timeout=10) for r in results] == [2 * i for i in range(20)]


def test_inspect_ping_cli(setup):
    b, w, app, d = setup
    r = run_celery_cli(b, "inspect", "ping", "-d", w.name, "--timeout", "5")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "pong" in r.stdout, r.stdout + r.stderr
    assert w.name in r.stdout


def test_control_add_consumer_cli(setup):
    b, w, app, d = setup
    q = f"interop.extra.{uuid.uuid4().hex[:8]}"
    r = run_celery_cli(b, "control", "add_consumer", q, "-d", w.name, "--timeout", "5")
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"add consumer {q}" in r.stdout, r.stdout + r.stderr
    active = app.control.inspect(destination=[w.name], timeout=5).active_queues()
    assert q in [x["name"] for x in active[w.name]]
    # the worker now takes tasks from that queue
    assert app.send_task("interop.add", (40, 2), queue=q).get(timeout=10) == 42
    # and a reply-less broadcast (rate_limit) with reply=True round-trips too
    replies = app.control.rate_limit("interop.add", "100/s", destination=[w.name], reply=True, timeout=5)
    assert replies == [{w.name: {"ok": "new rate limit set successfully"}}]


def test_events(setup):
    """task-sent is the client's event; worker-heartbeat (also the answer to the receiver's
    wakeup broadcast) and task-received/started/succeeded come from the worker, all through
    the celeryev topic exchange to the receiver's celeryev.<uuid> queue."""
    b, w, app, d = setup
    seen = []
    errors = []
    with app.connection_for_read() as conn:
        recv = app.events.Receiver(conn, handlers={"*": seen.append})

        def run():
            try:
                recv.capture(limit=None, timeout=None, wakeup=True)
            except Exception as e:  # noqa: BLE001 - reported below
                errors.append(e)

        t = threading.Thread(target=run, daemon=True)
        t.start()
        try:
            wait_until(lambda: any(e["type"] == "worker-heartbeat" for e in seen) or errors, 10)
            assert not errors, errors
            result = app.send_task("interop.add", (1, 1))
            assert result.get(timeout=10) == 2
            want = {"task-received", "task-started", "task-succeeded"}
            wait_until(lambda: want <= {e["type"] for e in seen if e.get("uuid") == result.id} or errors, 10)
        finally:
            recv.should_stop = True
            t.join(timeout=5)
    assert not errors, errors
    assert any(e["type"] == "worker-heartbeat" and e["hostname"] == w.name for e in seen), seen
    mine = [e for e in seen if e.get("uuid") == result.id]
    assert {"task-received", "task-started", "task-succeeded"} <= {e["type"] for e in mine}, seen
    assert [e["result"] for e in mine if e["type"] == "task-succeeded"] == ["2"]


def wait_until(predicate, timeout):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def test_reject_requeue_runs_again_redelivered(setup):
    b, w, app, d = setup
    side = d / f"reject-requeue-{uuid.uuid4().hex[:6]}"
    assert app.send_task("interop.reject_then_run", (str(side), True)).get(timeout=15) == 2
    assert lines(side) == ["run redelivered=False", "run redelivered=True"]


def test_reject_without_requeue_drops_the_message(setup):
    b, w, app, d = setup
    side = d / f"reject-drop-{uuid.uuid4().hex[:6]}"
    app.send_task("interop.reject_then_run", (str(side), False))
    deadline = time.monotonic() + 10
    while not lines(side) and time.monotonic() < deadline:
        time.sleep(0.05)
    # a second task behind it proves the worker went on (and the rejected one did not come back)
    assert app.send_task("interop.add", (1, 2)).get(timeout=10) == 3
    time.sleep(0.5)
    assert lines(side) == ["run redelivered=False"]
    assert queue_depth(b, "celery") == 0


def test_acks_late_failure_is_acked(setup):
    b, w, app, d = setup
    side = d / f"fail-{uuid.uuid4().hex[:6]}"
    with pytest.raises(ValueError, match="interop: task failure"):
        app.send_task("interop.fail", (str(side),)).get(timeout=10)
    assert app.send_task("interop.add", (2, 2)).get(timeout=10) == 4
    assert lines(side) == ["run"]
    assert queue_depth(b, "celery") == 0


def test_worker_log_is_clean(setup):
    """After all of the above: no tracebacks, no errors, no duplicate-node warning (which
    Celery prints when queue.declare-ok's consumer count is wrong)."""
    b, w, app, d = setup
    log = w.log()
    errors = [x for x in log.splitlines() if "ERROR/" in x or "CRITICAL/" in x]
    expected = [x for x in errors if "Task interop.fail[" in x]  # test_acks_late_failure_is_acked
    assert errors == expected, log[-6000:]
    # tracebacks only from the tasks that raise on purpose (the last line is the exception)
    raised = re.findall(r"Traceback \(most recent call last\):\n(?:[ \t].*\n)*(.*)", log)
    assert all("interop: " in x for x in raised), raised
    assert "DuplicateNodenameWarning" not in log, log[-6000:]
    assert "Connection to broker lost" not in log, log[-6000:]


# ---------------------------------------------------------------------------------------------
# The heartbeat story: each scenario on its own broker and worker.

LONG_TASK_S = 4.5  # > 3 x 1 s: the broker must have dropped a heartbeat=1 worker by then


@pytest.mark.parametrize("heartbeat", [1, 0])
def test_long_task_in_solo_worker_and_heartbeats(tmp_path, heartbeat):
    b = start_broker(tmp_path)
    w = Worker(b, tmp_path, f"hb{heartbeat}", heartbeat=heartbeat, extra=("--without-mingle", "--without-gossip"))
    app = celery_app.make_app(broker_url(b), heartbeat=0)
    try:
        w.wait_for_log(" ready.", timeout=30)
        side = tmp_path / "runs"
        first = app.send_task("interop.slow_once", (str(side), LONG_TASK_S))
        if heartbeat:
            # dropped while the task blocks the event loop, reconnects, gets the message again
            b.wait_for_log(r"(?i)\berror\b.*missed heartbeats from client, timeout: 1s", timeout=LONG_TASK_S)
            w.wait_for_log("Connection to broker lost", timeout=LONG_TASK_S + 10)
            w.wait_for_log("succeeded", count=2, timeout=15)
            assert lines(side) == ["run redelivered=False", "run redelivered=True"]
        else:
            assert first.get(timeout=LONG_TASK_S + 10) == 1
            # nothing more is coming: the task ran once and was acked
            assert app.send_task("interop.add", (1, 1)).get(timeout=10) == 2
            assert lines(side) == ["run redelivered=False"]
            assert "Connection to broker lost" not in w.log()
            assert not b.log_lines(r"missed heartbeats")
            assert queue_depth(b, "celery") == 0
    finally:
        app.close()
        w.stop()
        b.stop()


def test_an_eta_task_does_not_stall_the_tasks_behind_it(setup):
    """An ETA task makes Celery raise its prefetch with basic.qos at run time (on its generic,
    per-consumer path, since warren is not "RabbitMQ"); the task behind it must then be
    delivered at once rather than wait for the ETA task's ack."""
    _, _, app, _ = setup
    # One task first, so the worker's event loop is running: a task that arrives during the
    # worker's start-up drain waits for its first timer on any broker.
    assert app.send_task("interop.add", (0, 0)).get(timeout=10) == 0
    eta = app.send_task("interop.add", (1, 1), countdown=3)
    time.sleep(0.3)  # let the worker receive the ETA task and raise its prefetch
    started = time.monotonic()
    assert app.send_task("interop.add", (2, 2)).get(timeout=10) == 4
    took = time.monotonic() - started
    assert took < 1.0, f"a plain task behind an ETA task took {took:.2f}s"
    assert eta.get(timeout=10) == 2


def test_worker_connections_closed_through_the_control_api_are_reestablished(tmp_path):
    """The pytest fixture drives warren's control API: every connection of a running worker
    is closed as `rabbitmqctl close_connection` would (320 CONNECTION_FORCED); the worker
    logs the loss, reconnects, and keeps running tasks."""
    b = start_broker(tmp_path)
    w = Worker(b, tmp_path, "forced")
    try:
        w.wait_for_log(" ready.", timeout=30)
        worker_connections = [c["name"] for c in b.connections()]  # no client has connected yet
        assert worker_connections
        app = celery_app.make_app(broker_url(b))
        try:
            assert app.send_task("interop.add", (1, 2)).get(timeout=10) == 3
            for name in worker_connections:
                try:
                    b.close_connection(name)
                except BrokerError as e:  # a short-lived start-up connection, gone
                    assert ": 404 " in str(e)

            w.wait_for_log("Connection to broker lost", timeout=15)
            b.wait_for_log(r"CONNECTION_FORCED|Closed via management plugin|closing AMQP connection", timeout=5)
            assert app.send_task("interop.add", (2, 3)).get(timeout=20) == 5
        finally:
            app.close()
    finally:
        w.stop()
        b.stop()
