"""Shared fixtures for the Python interop suite.

`broker` starts the real warren binary on a free loopback port, captures its log
output to a file, waits (event wait: polling TCP connect) until it accepts
connections, hands the test an object to talk to it and to read/wait on its log,
and kills it at teardown.

Environment:
  WARREN_BIN                path of the broker binary (default <repo>/target/release/warren)
  WARREN_START_TIMEOUT      seconds to wait for the port to accept (default 10)
  WARREN_INTEROP_TEST_TIMEOUT  per-test watchdog in seconds (default 60)
  WARREN_INTEROP_EXTERNAL_URL  test_aio_pika.py only: run against this broker (e.g. a real
                            RabbitMQ) instead of a warren started per test
  WARREN_INTEROP_SDISTS     where the kombu/amqp sdists are unpacked (target/interop-sdists)
"""

import base64
import json
import os
import re
import urllib.error
import urllib.parse
import urllib.request
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DEFAULT_BIN = REPO / "target" / "release" / "warren"

# Broker features the hand-written interop tests need that are not in warren yet, as
# name -> reason. A test that needs one is marked xfail(strict=True, reason=MISSING[name]): when
# the feature lands it XPASSes, which fails the run, and the marker and entry must go. Empty:
# DLX, TTL, expiration, max-length, x-expires, headers exchanges, tx and SAC have all landed.
# (test_client_suites.KNOWN_FAILURES is the list for the clients' own suites.)
MISSING = {}

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def _free_port() -> int:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
    finally:
        s.close()


class Broker:
    """A running warren process: address, URL, access to its log, and its HTTP control API
    (management-API subset, fault injection, events)."""

    def __init__(self, proc, host, port, log_path, http_port=None):
        self.proc = proc
        self.host = host
        self.port = port
        self.log_path = log_path
        self.http_port = http_port
        self.url = f"amqp://guest:guest@{host}:{port}/%2f"
        self._events_seen = 0

    # -- HTTP control API -------------------------------------------------
    def api(self, method, path, body=None, timeout=10.0):
        """One call to the control API (basic auth guest/guest); returns parsed JSON or None."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            f"http://{self.host}:{self.http_port}{path}", data=data, method=method,
            headers={"Authorization": "Basic " + base64.b64encode(b"guest:guest").decode(),
                     "Content-Type": "application/json"},
        )  # fmt: skip
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
        return json.loads(raw) if raw else None

    def connections(self):
        return self.api("GET", "/api/connections")

    def connection_named(self, predicate, timeout=5.0):
        """The first connection (a dict, management-API fields) `predicate` accepts, waiting
        for it up to `timeout` s."""
        deadline = time.monotonic() + timeout
        while True:
            for c in self.connections():
                if c.get("state") != "starting" and predicate(c):
                    return c
            if time.monotonic() >= deadline:
                pytest.fail(f"no matching connection within {timeout}s: {self.connections()}")
            time.sleep(0.05)

    def fault(self, connection_name, **switches):
        """Inject faults into one connection: withhold_heartbeats, ignore_client, black_hole,
        block (booleans), delivery_latency_ms, kill=True, force_close="text"."""
        name = urllib.parse.quote(connection_name, safe="")
        self.api("POST", f"/api/warren/connections/{name}/faults", switches)

    def close_connection(self, connection_name):
        """What `rabbitmqctl close_connection` does: connection.close 320."""
        self.api("DELETE", f"/api/connections/{urllib.parse.quote(connection_name, safe='')}")

    def wait_event(self, type_, timeout=10.0, predicate=lambda e: True):
        """The next event of `type_` (e.g. "heartbeat.timeout") after those already seen."""
        deadline = time.monotonic() + timeout
        while True:
            left = max(0.0, deadline - time.monotonic())
            got = self.api("GET", f"/api/warren/events?since={self._events_seen}&timeout_ms={int(left * 1000)}",
                           timeout=left + 5)  # fmt: skip
            for e in got["events"]:
                self._events_seen = e["seq"]
                if e["type"] == type_ and predicate(e):
                    return e
            if time.monotonic() >= deadline:
                pytest.fail(f"no {type_} event within {timeout}s")

    # -- log access -------------------------------------------------------
    def log(self) -> str:
        """Everything the broker wrote to stderr/stdout so far, ANSI colours stripped."""
        try:
            raw = self.log_path.read_bytes()
        except FileNotFoundError:
            return ""
        return _ANSI.sub("", raw.decode("utf-8", errors="replace"))

    def log_lines(self, pattern):
        rx = re.compile(pattern)
        return [line for line in self.log().splitlines() if rx.search(line)]

    def wait_for_log(self, pattern, timeout=5.0, poll=0.05):
        """Wait until a log line matches `pattern` (a regex); return that line.

        Fails the test (with the log attached) if no line matches within `timeout` s.
        """
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            for line in self.log().splitlines():
                if rx.search(line):
                    return line
            if time.monotonic() >= deadline:
                pytest.fail(
                    f"no broker log line matched {pattern!r} within {timeout}s; "
                    f"log so far:\n{self.log()[-8000:]}"
                )
            time.sleep(poll)

    # -- process ----------------------------------------------------------
    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self):
        # The broker runs in its own session/process group (start_new_session):
        # kill that group, which holds only what this fixture started.
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:  # pragma: no cover - kill should not hang
            pass


def _wait_until_accepting(proc, host, port, deadline, log_path):
    last_err = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log = _ANSI.sub("", log_path.read_text(errors="replace"))
            pytest.fail(
                f"warren exited with code {proc.returncode} before accepting "
                f"connections on {host}:{port}; its output:\n{log[-8000:]}"
            )
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError as e:  # refused / timed out: not up yet
            last_err = e
            time.sleep(0.05)
    log = _ANSI.sub("", log_path.read_text(errors="replace"))
    pytest.fail(
        f"warren did not accept TCP connections on {host}:{port} within the deadline "
        f"(last error: {last_err!r}); its output:\n{log[-8000:]}"
    )


def start_broker(log_dir, *extra_args):
    """Start warren on a free loopback port (log in `log_dir`/warren-PORT.log) and wait until it
    accepts TCP connections. `extra_args` go to the command line (e.g. "--heartbeat", "1").
    The caller must call `.stop()` on the returned Broker."""
    bin_path = Path(os.environ.get("WARREN_BIN") or DEFAULT_BIN)
    if not bin_path.is_file() or not os.access(bin_path, os.X_OK):
        pytest.fail(
            f"warren binary not found or not executable at {bin_path}. "
            f"Build it with `cargo build --release` (or run `bash scripts/interop.sh`), "
            f"or point WARREN_BIN at it.",
            pytrace=False,
        )
    host = "127.0.0.1"
    port = _free_port()
    http_port = _free_port()
    log_path = Path(log_dir) / f"warren-{port}.log"
    env = dict(os.environ)
    env["RUST_LOG"] = "info"
    env["NO_COLOR"] = "1"
    env.setdefault("RUST_BACKTRACE", "1")
    start_timeout = float(os.environ.get("WARREN_START_TIMEOUT", "10"))
    with open(log_path, "wb") as logf:
        proc = subprocess.Popen(
            [str(bin_path), "--bind", host, "--port", str(port), "--http-port", str(http_port),
             *map(str, extra_args)],  # fmt: skip
            stdin=subprocess.DEVNULL,
            stdout=logf,  # tracing's fmt layer may write to stdout or stderr:
            stderr=subprocess.STDOUT,  # capture both in one file
            env=env,
            start_new_session=True,
        )
    b = Broker(proc, host, port, log_path, http_port)
    try:
        _wait_until_accepting(proc, host, port, time.monotonic() + start_timeout, log_path)
    except BaseException:
        b.stop()
        raise
    return b


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
