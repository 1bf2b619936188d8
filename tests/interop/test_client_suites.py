"""The clients' OWN live-broker integration tests, from their PyPI sdists, against warren.

- py-amqp (the pinned `amqp`): `t/integration/test_rmq.py -k plain`
- kombu (the pinned `kombu`): `t/integration/test_py_amqp.py`

Each suite runs once, as a pytest subprocess in its unpacked sdist, against its own warren
(RABBITMQ_HOST=127.0.0.1 RABBITMQ_5672_TCP=<port>, as their CI points them at RabbitMQ), with
a JUnit report. Then every test of the suite is one test here, named
`test_external[<suite>::<its node id>]`, which passes when that test passed on warren.
The terminal summary prints each suite's pass counts.

KNOWN_FAILURES below is the ONE list of the suites' tests that fail today because warren lacks
a feature, or (reason starting "BUG:") because of a warren bug being fixed; they all pass
against RabbitMQ 3.10.8 (all 12 py-amqp and all 51 kombu tests do).
They are xfail(strict=True): when the feature lands they XPASS, which fails the run, and the
entry must be removed from this list.

The sdists are downloaded with `pip download --no-binary :all: --no-deps` into
target/interop-sdists/ (override with WARREN_INTEROP_SDISTS) if not there yet; their
pytest warnings about unregistered marks (`env`, `flaky` — pytest-rerunfailures is
deliberately not installed, so nothing is retried) are silenced.
"""

import os
import subprocess
import sys
import tarfile
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from conftest import REPO, start_broker

SDISTS = Path(os.environ.get("WARREN_INTEROP_SDISTS") or REPO / "target" / "interop-sdists")


def _version(dist):
    from importlib.metadata import version

    return version(dist)


SUITES = {
    "py-amqp": {"dist": "amqp", "args": ["t/integration/test_rmq.py", "-k", "plain"]},
    "kombu": {"dist": "kombu", "args": ["t/integration/test_py_amqp.py"]},
}

# suite -> node id -> reason: the missing feature, or "BUG: ..." for a warren bug being fixed.
# Keep this the single list; an entry here is xfail(strict=True), so it fails the run (XPASS)
# as soon as warren gets it right. Empty since the queue-argument features (x-message-ttl,
# x-max-priority) and the queue.delete-ok/basic.cancel ordering fix landed.
# Example entry:
#   "t/integration/test_py_amqp.py::test_PyAMQPPriority::test_publish_consume":
#       "x-max-priority / message priority not implemented: messages come out in FIFO order",
KNOWN_FAILURES = {
    "py-amqp": {},
    "kombu": {},
}

EXTERNAL_PYTEST_OPTS = [
    "-p", "no:cacheprovider",
    "-o", "addopts=",
    "-W", "ignore::pytest.PytestUnknownMarkWarning",
]  # fmt: skip

# Filled by the runs; read by conftest's terminal summary.
RESULTS = {}


def sdist_dir(suite):
    """The unpacked sdist of the installed (pinned) version; downloaded if missing."""
    dist = SUITES[suite]["dist"]
    ver = _version(dist)
    d = SDISTS / f"{dist}-{ver}"
    if not (d / "t" / "integration").is_dir():
        SDISTS.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
             "--no-binary", ":all:", "--no-deps", f"{dist}=={ver}", "-d", str(SDISTS)],
            check=True, timeout=300,
        )  # fmt: skip
        with tarfile.open(SDISTS / f"{dist}-{ver}.tar.gz") as tf:
            tf.extractall(SDISTS, filter="data")
    return d


def collect(suite):
    d = sdist_dir(suite)
    r = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", *EXTERNAL_PYTEST_OPTS, *SUITES[suite]["args"]],
        cwd=d, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    ids = [line.strip() for line in r.stdout.splitlines() if "::" in line and not line.startswith(" ")]
    if r.returncode != 0 or not ids:
        raise RuntimeError(f"collecting {suite} in {d} failed (rc {r.returncode}):\n{r.stdout}\n{r.stderr}")
    return ids


def _junit_key(nodeid):
    parts = nodeid.split("::")
    module = parts[0][: -len(".py")].replace("/", ".")
    return (".".join([module, *parts[1:-1]]), parts[-1])


def pytest_generate_tests(metafunc):
    if "external" not in metafunc.fixturenames:
        return
    params = []
    for suite in SUITES:
        try:
            ids = collect(suite)
        except Exception as e:  # noqa: BLE001 - shows up as one failing test
            params.append(pytest.param((suite, None, repr(e)), id=f"{suite}::COLLECTION"))
            continue
        unknown = set(KNOWN_FAILURES[suite]) - set(ids)
        for nodeid in ids:
            marks = []
            if nodeid in KNOWN_FAILURES[suite]:
                marks.append(pytest.mark.xfail(strict=True, reason=KNOWN_FAILURES[suite][nodeid]))
            params.append(pytest.param((suite, nodeid, None), id=f"{suite}::{nodeid}", marks=marks))
        for nodeid in sorted(unknown):  # a stale entry in KNOWN_FAILURES is an error too
            params.append(pytest.param((suite, nodeid, "listed in KNOWN_FAILURES but not collected"), id=f"{suite}::{nodeid}"))
    metafunc.parametrize("external", params)


@pytest.fixture(scope="session")
def suite_results(tmp_path_factory):
    """Runs each suite once (lazily), returns {suite: {(classname, name): (outcome, detail)}}."""
    cache = {}

    def get(suite):
        if suite in cache:
            return cache[suite]
        d = sdist_dir(suite)
        logdir = tmp_path_factory.mktemp(f"suite-{suite}")
        b = start_broker(logdir)
        junit = logdir / "junit.xml"
        env = dict(os.environ, RABBITMQ_HOST=b.host, RABBITMQ_5672_TCP=str(b.port))
        try:
            r = subprocess.run(
                [sys.executable, "-m", "pytest", "-q", f"--junitxml={junit}", *EXTERNAL_PYTEST_OPTS,
                 *SUITES[suite]["args"]],
                cwd=d, env=env, capture_output=True, text=True, timeout=300,
            )  # fmt: skip
        finally:
            b.stop()
        (logdir / "pytest-output.txt").write_text(r.stdout + r.stderr)
        outcomes = {}
        if junit.exists():
            for tc in ET.parse(junit).getroot().iter("testcase"):
                key = (tc.get("classname"), tc.get("name"))
                outcome, detail = "passed", ""
                for child in tc:
                    if child.tag in ("failure", "error"):
                        outcome, detail = "failed", (child.get("message") or "") + "\n" + (child.text or "")
                    elif child.tag == "skipped":
                        outcome, detail = "skipped", child.get("message") or ""
                outcomes[key] = (outcome, detail)
        counts = {}
        for outcome, _ in outcomes.values():
            counts[outcome] = counts.get(outcome, 0) + 1
        RESULTS[suite] = {
            "version": _version(SUITES[suite]["dist"]),
            "args": " ".join(SUITES[suite]["args"]),
            "counts": counts,
            "expected_failures": len(KNOWN_FAILURES[suite]),
            "output": logdir / "pytest-output.txt",
            "log": b.log_path,
        }
        cache[suite] = (outcomes, r, b.log_path)
        return cache[suite]

    return get


def test_external(external, suite_results):
    suite, nodeid, problem = external
    if problem:
        pytest.fail(f"{suite}: {problem}", pytrace=False)
    outcomes, run, broker_log = suite_results(suite)
    got = outcomes.get(_junit_key(nodeid))
    if got is None:
        pytest.fail(
            f"{suite}: {nodeid} has no result in the JUnit report (suite exit {run.returncode}):\n"
            f"{run.stdout[-4000:]}\n{run.stderr[-2000:]}",
            pytrace=False,
        )
    outcome, detail = got
    if outcome != "passed":
        pytest.fail(f"{suite}: {nodeid} {outcome} on warren (log {broker_log}):\n{detail[-4000:]}", pytrace=False)
