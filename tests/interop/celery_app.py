"""The Celery application the interop tests run as a real worker against warren.

Configured entirely from the environment, so the test can start `celery -A celery_app worker`
as a subprocess (cwd = this directory) with the settings each scenario needs:

  WARREN_CELERY_BROKER     broker URL, e.g. pyamqp://guest:guest@127.0.0.1:PORT//
  WARREN_CELERY_HEARTBEAT  broker_heartbeat in seconds (default 120, Celery's default)
  WARREN_CELERY_ACKS_LATE  "1" for task_acks_late=True (default "1")

Tasks record each execution as a line in a side-effect file, so a test can count how many
times a task really ran (a redelivered acks_late task runs twice).
"""

import os
import time

from celery import Celery
from celery.exceptions import Reject

def make_app(broker_url, heartbeat=120.0, acks_late=True):
    """A Celery app on warren at `broker_url`; the tests use it as the client side too."""
    a = Celery("interop", broker=broker_url, backend="rpc://")
    a.conf.update(
        broker_heartbeat=float(heartbeat),
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=5,
        task_acks_late=acks_late,
        worker_prefetch_multiplier=1,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,
        # Keep a dropped worker's reconnect quick: the heartbeat test waits for it.
        broker_transport_options={"interval_start": 0, "interval_step": 0.5, "interval_max": 1},
    )
    return a


app = make_app(
    os.environ.get("WARREN_CELERY_BROKER"),
    heartbeat=os.environ.get("WARREN_CELERY_HEARTBEAT", "120"),
    acks_late=os.environ.get("WARREN_CELERY_ACKS_LATE", "1") == "1",
)


def _record(path, line):
    """Append one line to the side-effect file; return how many lines it has now."""
    with open(path, "a") as f:
        f.write(line + "\n")
    with open(path) as f:
        return sum(1 for _ in f)


@app.task(name="interop.add")
def add(x, y):
    return x + y


@app.task(name="interop.echo_headers", bind=True)
def echo_headers(self, value):
    """Round-trips an argument and reports what the worker saw of the delivery."""
    info = self.request.delivery_info or {}
    return {"value": value, "routing_key": info.get("routing_key"), "redelivered": info.get("redelivered")}


@app.task(name="interop.slow_once", bind=True)
def slow_once(self, path, seconds):
    """Sleeps `seconds` (blocking the solo pool's event loop, so no heartbeats go out) on its
    first execution only; returns the execution count."""
    n = _record(path, f"run redelivered={(self.request.delivery_info or {}).get('redelivered')}")
    if n == 1:
        time.sleep(seconds)
    return n


@app.task(name="interop.reject_then_run", bind=True)
def reject_then_run(self, path, requeue):
    """First execution: basic.reject (requeue as given). Later executions: succeed."""
    n = _record(path, f"run redelivered={(self.request.delivery_info or {}).get('redelivered')}")
    if n == 1:
        raise Reject("interop: reject on first run", requeue=requeue)
    return n


@app.task(name="interop.fail", bind=True)
def fail(self, path):
    """Raises: with acks_late the message is still acked (task_acks_on_failure_or_timeout)."""
    _record(path, "run")
    raise ValueError("interop: task failure")
