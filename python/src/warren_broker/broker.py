"""Start warren from Python and drive it through its HTTP control API.

Standard library only. A sketch of a test::

    from warren_broker import Broker

    with Broker.start(heartbeat=1) as broker:
        # ... connect pika / kombu / Celery to broker.url ...
        conn = broker.connection("my-worker")          # by client-provided name
        conn.withhold_heartbeats()                      # inject a fault
        broker.events().wait_for(lambda e: e["type"] == "connection.closed", timeout=10)
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence


class BrokerError(RuntimeError):
    """warren could not start, or the control API refused a request."""


def find_binary(explicit: Optional[str] = None) -> str:
    """The `warren` binary: `explicit`, else $WARREN_BIN, else the one this package installed
    next to the running Python, else the first on PATH."""
    candidates = [explicit, os.environ.get("WARREN_BIN"), str(Path(sys.executable).parent / "warren")]
    for c in candidates:
        if c and os.path.isfile(c) and os.access(c, os.X_OK):
            return c
    found = shutil.which("warren")
    if found:
        return found
    raise BrokerError("the warren binary was not found: install this package (pip install warren-broker), "
                      "set $WARREN_BIN, or pass binary=")


class TlsFiles:
    """The throwaway certificates of a broker started with `tls=True` (PEM files, named as
    RabbitMQ's tls-gen names them): the authority to trust, and a client certificate for
    guest (for EXTERNAL)."""

    def __init__(self, directory: Path):
        self.dir = directory
        self.ca_certificate = directory / "ca_certificate.pem"
        self.client_certificate = directory / "client_certificate.pem"
        self.client_key = directory / "client_key.pem"

    def ssl_context(self, client_certificate: bool = True) -> ssl.SSLContext:
        """A client context that trusts the test authority, checks the server is `localhost`
        and, unless told not to, presents the client certificate."""
        context = ssl.create_default_context(cafile=str(self.ca_certificate))
        if client_certificate:
            context.load_cert_chain(str(self.client_certificate), str(self.client_key))
        return context


class Broker:
    """A running warren process: its AMQP URL and its HTTP control API."""

    def __init__(self, process: subprocess.Popen, ready: Dict[str, Any], log_path: Path,
                 tls: Optional[TlsFiles] = None):
        self.process = process
        self.log_path = log_path
        # Without a plain listener (--no-tcp) there is only amqps.
        self.amqp = ready.get("amqp")
        self.amqp_port = int(ready["amqp_port"]) if ready.get("amqp_port") is not None else None
        self.amqps = ready.get("amqps")
        self.amqps_port = int(ready["amqps_port"]) if ready.get("amqps_port") is not None else None
        self.host = (self.amqp or self.amqps or "127.0.0.1").rsplit(":", 1)[0]
        self.http = f"http://{ready['http']}"
        self.http_port = int(ready["http"].rsplit(":", 1)[1])
        self.url = f"amqp://guest:guest@{self.amqp}/%2f" if self.amqp else None
        # `localhost`: the name the test server certificate is for.
        self.amqps_url = f"amqps://guest:guest@localhost:{self.amqps_port}/%2f" if self.amqps_port else None
        self.tls = tls
        self._auth = "Basic " + base64.b64encode(b"guest:guest").decode()

    @classmethod
    def start(cls, heartbeat: Optional[int] = None, config: Optional[str] = None,
              definitions: Optional[Dict[str, Any]] = None, binary: Optional[str] = None,
              args: Sequence[str] = (), timeout: float = 10.0,
              workdir: Optional[Path] = None, data_dir: Optional[Path] = None,
              tls: bool = False) -> "Broker":
        """Starts warren on free loopback ports. `heartbeat`: the T it proposes (seconds);
        `config`: rabbitmq.conf text; `definitions`: a RabbitMQ definitions document loaded
        at start-up; `args`: more command-line arguments; `workdir`: the directory in which
        it gets a folder of its own for its log and generated files (the system's temporary
        directory by default); `data_dir`: keep durable queues and persistent messages there,
        and find them again when a broker starts on it; `tls`: also listen for amqps on a free
        port, with a throwaway authority, server and client certificates (`.tls`, `.amqps_url`;
        client certificates are asked for, not required). If warren cannot start, the error
        carries what it printed."""
        workdir = Path(tempfile.mkdtemp(prefix="warren-", dir=workdir))
        command = [find_binary(binary), "--port", "0", "--http-port", "0", *args]
        if heartbeat is not None:
            command += ["--heartbeat", str(heartbeat)]
        if data_dir is not None:
            command += ["--data-dir", str(data_dir)]
        tls_files = None
        if tls:
            tls_files = TlsFiles(workdir / "tls")
            command += ["--tls-self-signed", str(tls_files.dir), "--tls-port", "0"]
        conf_text = config or ""
        if definitions is not None:
            defs = workdir / "definitions.json"
            defs.write_text(json.dumps(definitions))
            conf_text += f"\nload_definitions = {defs}\n"
        if conf_text:
            conf = workdir / "rabbitmq.conf"
            conf.write_text(conf_text)
            command += ["--config", str(conf)]
        log_path = workdir / "warren.log"
        with open(log_path, "wb") as log:
            process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL,
                                       env={**os.environ, "NO_COLOR": "1"})
        deadline = time.monotonic() + timeout
        line = b""
        while time.monotonic() < deadline:
            line = process.stdout.readline() if process.stdout else b""
            if line or process.poll() is not None:
                break
        try:
            ready = json.loads(line)
        except ValueError:
            process.kill()
            process.wait()
            said = log_path.read_text(errors="replace").strip() or "(nothing)"
            raise BrokerError(f"warren did not start ({' '.join(command)}); it said:\n{said}") from None
        return cls(process, ready, log_path, tls_files)

    def stop(self) -> None:
        """Stops warren (SIGTERM, then SIGKILL after 5 s)."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def __enter__(self) -> "Broker":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def log(self) -> str:
        """What warren has logged so far."""
        return self.log_path.read_text(errors="replace")

    def log_lines(self, pattern: str) -> List[str]:
        """The log lines so far that match the regular expression `pattern`."""
        rx = re.compile(pattern)
        return [line for line in self.log().splitlines() if rx.search(line)]

    def wait_for_log(self, pattern: str, timeout: float = 5.0) -> str:
        """The first log line matching `pattern`, waiting up to `timeout` seconds for it to be
        written; BrokerError, with the log's tail, if none is. (A log file offers nothing to
        wait on, so this looks again every 50 ms; `events()` is the way to wait on the broker.)"""
        deadline = time.monotonic() + timeout
        while True:
            found = self.log_lines(pattern)
            if found:
                return found[0]
            if time.monotonic() >= deadline:
                raise BrokerError(f"no log line matched {pattern!r} within {timeout}s; "
                                  f"the log so far:\n{self.log()[-8000:]}")
            time.sleep(0.05)

    # -- the HTTP control API ---------------------------------------------------
    def api(self, method: str, path: str, body: Any = None, timeout: float = 35.0) -> Any:
        """One request as guest; the parsed JSON answer, or None. A refusal raises BrokerError
        with RabbitMQ's reason."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.http + path, data=data, method=method,
                                         headers={"Authorization": self._auth, "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as e:
            raise BrokerError(f"{method} {path}: {e.code} {e.read().decode(errors='replace')}") from None
        return json.loads(raw) if raw else None

    def connections(self) -> List[Dict[str, Any]]:
        return self.api("GET", "/api/connections")

    def connection(self, name: str, timeout: float = 5.0) -> "Connection":
        """The open connection with this name (`client:port -> server:port`) or client-provided
        `connection_name`, waiting for it up to `timeout`."""
        deadline = time.monotonic() + timeout
        # Events are taken first, so that a connection opening between the
        # listing and the wait still wakes the wait.
        events = self.events()
        while True:
            for c in self.connections():
                if name in (c["name"], c.get("user_provided_name")) and c.get("state") != "starting":
                    return Connection(self, c["name"])
            try:
                events.wait_for(lambda e: e["type"] == "connection.opened", deadline - time.monotonic())
            except BrokerError:
                raise BrokerError(f"no connection named {name!r} within {timeout}s") from None

    def queues(self) -> List[Dict[str, Any]]:
        return self.api("GET", "/api/queues")

    def queue(self, name: str, vhost: str = "/") -> Dict[str, Any]:
        return self.api("GET", f"/api/queues/{_q(vhost)}/{_q(name)}")

    def peek(self, queue: str, count: int = 1, vhost: str = "/") -> List[Dict[str, Any]]:
        """Up to `count` messages of a queue, left there (marked redelivered, as RabbitMQ's
        management `get` with requeue does)."""
        body = {"count": count, "ackmode": "ack_requeue_true", "encoding": "auto"}
        return self.api("POST", f"/api/queues/{_q(vhost)}/{_q(queue)}/get", body)

    def raise_alarm(self, resource: str = "memory") -> None:
        """Blocks publishers as a resource alarm does."""
        self.api("PUT", f"/api/warren/alarms/{resource}")

    def clear_alarm(self, resource: str = "memory") -> None:
        self.api("DELETE", f"/api/warren/alarms/{resource}")

    def reset(self) -> Dict[str, Any]:
        """Back to the start-up state: connections closed (320), everything made since gone."""
        return self.api("POST", "/api/warren/reset")

    def restart(self, downtime: float = 0.0, crash: bool = False) -> Dict[str, Any]:
        """Restarts the broker as a RabbitMQ node restarts, on the same port: every connection
        is closed (320 "broker forced connection closure with reason 'shutdown'") or, with
        `crash`, reset; the port refuses connections for `downtime` seconds; then durable
        exchanges, durable queues with their bindings and persistent messages are back
        (unacknowledged ones redelivered) and everything else is gone. Returns once it
        listens again, with what was kept and dropped."""
        return self.api("POST", "/api/warren/restart", {"downtime_ms": int(downtime * 1000), "crash": crash})

    def fresh_vhost(self) -> "FreshVhost":
        """A vhost of its own for one test; use as a context manager to delete it after."""
        made = self.api("POST", "/api/warren/vhosts")
        return FreshVhost(self, made["name"])

    def events(self) -> "Events":
        """Events from now on (connection.opened/closed, heartbeat.timeout, …)."""
        return Events(self)


class Connection:
    """One open connection and the faults that can be injected into it."""

    def __init__(self, broker: Broker, name: str):
        self.broker = broker
        self.name = name

    def _faults(self, **switches: Any) -> None:
        self.broker.api("POST", f"/api/warren/connections/{_q(self.name)}/faults", switches)

    def withhold_heartbeats(self, on: bool = True) -> None:
        """The broker stops sending heartbeats: the client must notice."""
        self._faults(withhold_heartbeats=on)

    def ignore_client(self, on: bool = True) -> None:
        """The client's traffic stops counting: dropped 2T..3T later, as after missed heartbeats."""
        self._faults(ignore_client=on)

    def black_hole(self, on: bool = True) -> None:
        """Nothing is read or written while the TCP connection stays open."""
        self._faults(black_hole=on)

    def block(self, on: bool = True) -> None:
        """Blocked as under a resource alarm (connection.blocked at its next publish)."""
        self._faults(block=on)

    def delivery_latency(self, milliseconds: int) -> None:
        self._faults(delivery_latency_ms=milliseconds)

    def kill(self) -> None:
        """A TCP reset, without a word."""
        self._faults(kill=True)

    def force_close(self, reason: str = "Closed via management plugin") -> None:
        """connection.close 320 CONNECTION_FORCED, as rabbitmqctl close_connection."""
        self._faults(force_close=reason)


class FreshVhost:
    def __init__(self, broker: Broker, name: str):
        self.broker = broker
        self.name = name
        self.url = f"amqp://guest:guest@{broker.amqp}/{_q(name)}"

    def delete(self) -> None:
        self.broker.api("DELETE", f"/api/vhosts/{_q(self.name)}")

    def __enter__(self) -> "FreshVhost":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.delete()


class Events:
    """Events after the moment this was made, by long polling."""

    def __init__(self, broker: Broker):
        self.broker = broker
        # Asking past the end returns no events, only the number of the last one.
        self.since = broker.api("GET", f"/api/warren/events?since={2**64 - 1}&timeout_ms=0")["last"]

    def __iter__(self) -> Iterator[Dict[str, Any]]:
        while True:
            got = self.broker.api("GET", f"/api/warren/events?since={self.since}&timeout_ms=30000")
            for event in got["events"]:
                self.since = event["seq"]
                yield event

    def wait_for(self, predicate: Callable[[Dict[str, Any]], bool], timeout: float = 10.0) -> Dict[str, Any]:
        """The first event `predicate` accepts; BrokerError after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BrokerError(f"no matching event within {timeout}s")
            wait_ms = int(min(left, 30) * 1000)
            got = self.broker.api("GET", f"/api/warren/events?since={self.since}&timeout_ms={wait_ms}")
            for event in got["events"]:
                self.since = event["seq"]
                if predicate(event):
                    return event


def _q(text: str) -> str:
    return urllib.parse.quote(text, safe="")
