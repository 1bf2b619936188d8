"""pytest fixtures for warren, registered through the `pytest11` entry point.

- `warren_session`: one broker for the whole test session (started on first use).
- `warren`: that broker, reset before the test (connections closed, everything the last test
  made removed): the usual fixture.
- `warren_vhost`: a vhost of the test's own on the session broker, deleted after it; its AMQP
  URL is `warren_vhost.url`.
- `warren_celery_config`: a Celery configuration dict pointing at the session broker with
  heartbeats on (T = 1 s), for Celery's `celery_config` fixture::

      pytest_plugins = ("celery.contrib.pytest",)

      @pytest.fixture(scope="session")
      def celery_config(warren_celery_config):
          return {**warren_celery_config, "task_acks_late": True}

Options: `--warren-binary PATH`, `--warren-heartbeat SECONDS` (the T warren proposes; 60 by
default, as RabbitMQ).
"""

from typing import Any, Dict, Iterator

import pytest

from .broker import Broker, FreshVhost


def pytest_addoption(parser: Any) -> None:
    group = parser.getgroup("warren")
    group.addoption("--warren-binary", default=None, help="the warren binary to run (default: the installed one)")
    group.addoption("--warren-heartbeat", type=int, default=None, help="heartbeat T warren proposes, in seconds")


@pytest.fixture(scope="session")
def warren_session(request: Any) -> Iterator[Broker]:
    broker = Broker.start(
        heartbeat=request.config.getoption("--warren-heartbeat"),
        binary=request.config.getoption("--warren-binary"),
    )
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def warren(warren_session: Broker) -> Broker:
    warren_session.reset()
    return warren_session


@pytest.fixture
def warren_vhost(warren_session: Broker) -> Iterator[FreshVhost]:
    with warren_session.fresh_vhost() as vhost:
        yield vhost


@pytest.fixture(scope="session")
def warren_celery_config(warren_session: Broker) -> Dict[str, Any]:
    """Session-scoped, like Celery's own `celery_config`, which it is made to be returned by;
    ask for `warren` in the test as well, so that the test starts clean."""
    return {
        "broker_url": warren_session.url,
        "result_backend": "rpc://",
        "broker_heartbeat": 1,
        "broker_connection_retry_on_startup": True,
    }
