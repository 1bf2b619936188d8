"""Shared fixtures for the Python interop suite, built on the warren-broker package
(python/, installed into the venv by scripts/interop.sh): the same `Broker` a user of the
pytest plugin gets, with this suite's few extras.

`broker` starts the real warren binary on free loopback ports (its log in the test's
tmp_path), hands the test a `Broker` (AMQP URL, HTTP control API, faults, events, log) and
stops it at teardown.

Environment:
  WARREN_BIN                path of the broker binary (default <repo>/target/release/warren)
  WARREN_START_TIMEOUT      seconds to wait for its ready line (default 10)
  WARREN_INTEROP_TEST_TIMEOUT  per-test watchdog in seconds (default 60)
  WARREN_INTEROP_EXTERNAL_URL  test_aio_pika.py only: run against this broker (e.g. a real
                            RabbitMQ) instead of a warren started per test
  WARREN_INTEROP_SDISTS     where the kombu/amqp sdists are unpacked (target/interop-sdists)
"""

import os
import signal
import sys
import urllib.parse
import uuid
from pathlib import Path

import pytest
import warren_broker

REPO = Path(__file__).resolve().parents[2]
DEFAULT_BIN = REPO / "target" / "release" / "warren"

# Broker features the hand-written interop tests need that are not in warren yet, as
# name -> reason. A test that needs one is marked xfail(strict=True, reason=MISSING[name]): when
# the feature lands it XPASSes, which fails the run, and the marker and entry must go. Empty:
# DLX, TTL, expiration, max-length, x-expires, headers exchanges, tx and SAC have all landed.
# (test_client_suites.KNOWN_FAILURES is the list for the clients' own suites.)
MISSING = {}


class Broker(warren_broker.Broker):
    """warren_broker.Broker, with the names this suite's tests were written against."""

    @property
    def port(self) -> int:
        return self.amqp_port

    @property
    def proc(self):
        return self.process

    def alive(self) -> bool:
        return self.process.poll() is None

    def close_connection(self, connection_name):
        """What `rabbitmqctl close_connection` does: connection.close 320."""
        self.api("DELETE", f"/api/connections/{urllib.parse.quote(connection_name, safe='')}")


def start_broker(log_dir, *extra_args):
    """Start warren on free loopback ports (its log under `log_dir`) and wait for its ready
    line. `extra_args` go to the command line (e.g. "--heartbeat", "1"). The caller must call
    `.stop()` on the returned Broker. A broker that cannot start fails the test with what it
    printed."""
    binary = Path(os.environ.get("WARREN_BIN") or DEFAULT_BIN)
    if not binary.is_file() or not os.access(binary, os.X_OK):
        pytest.fail(
            f"warren binary not found or not executable at {binary}. "
            f"Build it with `cargo build --release` (or run `bash scripts/interop.sh`), "
            f"or point WARREN_BIN at it.",
            pytrace=False,
        )
    os.environ.setdefault("RUST_BACKTRACE", "1")
    try:
        return Broker.start(binary=str(binary), args=["--bind", "127.0.0.1", *map(str, extra_args)],
                            timeout=float(os.environ.get("WARREN_START_TIMEOUT", "10")),
                            workdir=Path(log_dir))  # fmt: skip
    except warren_broker.BrokerError as e:
        pytest.fail(str(e), pytrace=False)


@pytest.fixture
def broker(tmp_path):
    """Start warren on a free port; yield a Broker; kill it afterwards."""
    b = start_broker(tmp_path)
    try:
        yield b
    finally:
        b.stop()


@pytest.fixture
def broker_factory(tmp_path):
    """Start brokers with extra command-line arguments: `broker_factory("--heartbeat", "1")`.
    All are killed at teardown."""
    started = []

    def start(*extra_args):
        b = start_broker(tmp_path, *extra_args)
        started.append(b)
        return b

    try:
        yield start
    finally:
        for b in started:
            b.stop()


@pytest.fixture
def qname(request):
    """A queue name unique to this test."""
    return f"interop.{request.node.name}.{uuid.uuid4().hex[:8]}"


class _TestTimeout(Exception):
    pass


@pytest.fixture(autouse=True)
def _watchdog():
    """Fail a test that hangs (e.g. a client waiting forever for a reply) instead of
    hanging the whole run. SIGALRM interrupts blocking socket calls in the main thread."""
    limit = int(os.environ.get("WARREN_INTEROP_TEST_TIMEOUT", "60"))
    if not hasattr(signal, "SIGALRM") or limit <= 0:
        yield
        return

    def on_alarm(signum, frame):
        raise _TestTimeout(f"interop test exceeded {limit}s (watchdog)")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(limit)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def pytest_terminal_summary(terminalreporter):
    """Pass counts of the clients' own suites (test_client_suites.py) and of the Node suite
    (test_amqplib.py), for the issue's note."""
    lines = []
    for modname in ("test_client_suites", "test_amqplib"):
        mod = sys.modules.get(modname)
        for suite, r in sorted(getattr(mod, "RESULTS", {}).items()):
            counts = ", ".join(f"{n} {k}" for k, n in sorted(r["counts"].items()))
            lines.append(
                f"{suite} {r['version']} ({r['args']}): {counts} on warren; "
                f"{r['expected_failures']} listed as known failures (xfail); output: {r['output']}"
            )
    if lines:
        terminalreporter.section("external client suites against warren")
        for line in lines:
            terminalreporter.write_line(line)
