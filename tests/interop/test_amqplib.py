"""amqplib (npm, pinned in tests/interop/node/package-lock.json) against the real warren binary.

Each test of tests/interop/node/amqplib.test.js is one test here: node's built-in runner
(`node --test --test-name-pattern`) runs it against two fresh warren processes, one with the
defaults (WARREN_URL) and one started with `--heartbeat 1` (WARREN_URL_HB1). On top of what
the JS test asserts, the broker logs are checked: the idle amqplib connection (which takes the
server's heartbeat 1) is never dropped, and the one whose event loop is blocked is dropped
with "missed heartbeats from client, timeout: 1s".

`npm ci` is run here if tests/interop/node/node_modules is missing (scripts/interop.sh does it
first anyway). A missing `node` fails the tests; it is never a skip.
"""

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

NODE_DIR = Path(__file__).resolve().parent / "node"
TEST_FILE = NODE_DIR / "amqplib.test.js"
MISSED_1S = r"(?i)\berror\b.*missed heartbeats from client, timeout: 1s"

# Filled as the tests run; printed by conftest's terminal summary.
RESULTS = {}

# test name -> reason (missing feature or "BUG: ..."): xfail(strict=True). Empty: all pass.
KNOWN_FAILURES = {}


def node_test_names():
    return re.findall(r"^test\('((?:[^'\\]|\\.)*)'", TEST_FILE.read_text(), re.M)


def _amqplib_version():
    import json

    lock = json.loads((NODE_DIR / "package-lock.json").read_text())
    return lock["packages"]["node_modules/amqplib"]["version"]


@pytest.fixture(scope="module")
def node_modules():
    if not shutil.which("node") or not shutil.which("npm"):
        pytest.fail("node and npm are needed for the amqplib interop tests (apt-get install nodejs npm)")
    if not (NODE_DIR / "node_modules" / "amqplib").is_dir():
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=NODE_DIR, check=True, timeout=300)
    return NODE_DIR / "node_modules"


def _js_regex_escape(s):
    return "^" + re.sub(r"([.*+?^${}()|\[\]\\/])", r"\\\1", s) + "$"


@pytest.mark.parametrize(
    "name",
    [pytest.param(n, marks=[pytest.mark.xfail(strict=True, reason=KNOWN_FAILURES[n])] if n in KNOWN_FAILURES else [])
     for n in node_test_names()],
)  # fmt: skip
def test_amqplib(name, node_modules, broker, broker_factory):
    hb1 = broker_factory("--heartbeat", "1")
    env = dict(os.environ, WARREN_URL=broker.url, WARREN_URL_HB1=hb1.url)
    r = subprocess.run(
        ["node", "--test", "--test-reporter=tap", f"--test-name-pattern={_js_regex_escape(name)}", TEST_FILE.name],
        cwd=NODE_DIR, env=env, capture_output=True, text=True, timeout=50,
    )  # fmt: skip
    out = r.stdout + r.stderr
    passed = re.search(r"^# pass (\d+)", out, re.M)
    failed = re.search(r"^# fail (\d+)", out, re.M)
    ok = r.returncode == 0 and passed and passed.group(1) == "1" and failed and failed.group(1) == "0"
    res = RESULTS.setdefault(
        "amqplib",
        {"version": _amqplib_version(), "args": "node --test amqplib.test.js", "counts": {},
         "expected_failures": len(KNOWN_FAILURES), "output": "pytest -v output"},
    )  # fmt: skip
    res["counts"]["passed" if ok else "failed"] = res["counts"].get("passed" if ok else "failed", 0) + 1
    assert ok, f"node test {name!r} did not pass (rc {r.returncode}):\n{out[-6000:]}"

    if name.startswith("heartbeat: takes the server value"):
        assert not hb1.log_lines(r"missed heartbeats"), hb1.log()[-4000:]
    if name.startswith("heartbeat: a blocked event loop"):
        assert hb1.log_lines(MISSED_1S), hb1.log()[-4000:]
