"""A Celery worker (celery.contrib.pytest's in-process worker, solo pool) on warren through the
plugin: tasks round-trip, and the seed's story with a real long task: the task blocks the
worker's event loop, so no heartbeats go out, warren drops the connection after 2T..3T, the
late ack is lost, and the task runs a second time, redelivered."""

import threading

from warren_broker import Broker


def test_a_task_round_trips(warren: Broker, celery_app, celery_worker):
    @celery_app.task
    def add(x, y):
        return x + y

    celery_worker.reload()
    assert add.delay(2, 3).get(timeout=10) == 5


def test_a_long_task_outlives_the_heartbeat_and_runs_again(warren: Broker, celery_app, celery_worker):
    runs = []
    ran_again = threading.Event()
    events = warren.events()

    @celery_app.task(bind=True)
    def long_task(self):
        runs.append(self.request.delivery_info["redelivered"])
        if len(runs) == 1:
            # The long task: it holds the worker (and with it the worker's heartbeats) until
            # warren has given up on the connection, however long that takes.
            events.wait_for(lambda e: e["type"] == "connection.closed" and "missed heartbeats" in e["reason"],
                            timeout=10)
        else:
            ran_again.set()
        return len(runs)

    celery_worker.reload()
    # The first run's result is published (on another connection) although its ack is lost.
    assert long_task.delay().get(timeout=30) == 1
    assert ran_again.wait(timeout=30), "the task was not redelivered"
    assert runs == [False, True]
    assert warren.log_lines(r"missed heartbeats from client, timeout: 1s")


def test_a_task_interrupted_by_a_broker_restart_runs_again(warren: Broker, celery_app, celery_worker):
    runs = []
    ran_again = threading.Event()

    @celery_app.task(bind=True)
    def restarted_midway(self):
        runs.append(self.request.delivery_info["redelivered"])
        if len(runs) == 1:
            # The broker restarts while the task runs: the worker's connection is closed with
            # 320, its ack is lost with it, and the persistent message in the durable `celery`
            # queue is there again, unacknowledged, when the broker is back.
            report = warren.restart(downtime=0.5)
            assert report["kept"]["messages"] >= 1
        else:
            ran_again.set()

    celery_worker.reload()
    restarted_midway.delay()
    assert ran_again.wait(timeout=30), "the task did not run again after the restart"
    assert runs == [False, True]
