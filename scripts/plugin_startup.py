#!/usr/bin/env python3
"""How long a pytest session waits for its broker: warren's plugin against pytest-rabbitmq.

Times whole `pytest` runs (median of --runs) of generated sessions: no broker at all, then
1 and 20 tests that each take the broker fixture and open a connection. The session cost is
(1 test) - (no broker); the per-test cost is ((20 tests) - (1 test)) / 19.

  python3 scripts/plugin_startup.py --warren-python target/plugin-venv/bin/python \\
      [--rabbitmq-python VENV/bin/python]      # a venv with pytest-rabbitmq, and
                                               # rabbitmq-server from Debian installed
"""

import argparse
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

SESSIONS = {
    "warren": ("import pika\n\n", "def test_{i}(warren):\n    pika.BlockingConnection(pika.URLParameters(warren.url)).close()\n\n"),
    "pytest-rabbitmq": ("", "def test_{i}(rabbitmq):\n    rabbitmq.channel().queue_declare('q')\n\n"),
}


def run(python: str, directory: Path, runs: int) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run([python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_x.py"], cwd=directory,
                       check=True, stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def measure(name: str, python: str, runs: int, root: Path) -> None:
    head, test = SESSIONS[name]
    walls = {}
    for n in (0, 1, 20):
        d = root / f"{name}-{n}"
        d.mkdir()
        body = "def test_0():\n    pass\n" if n == 0 else head + "".join(test.format(i=i) for i in range(n))
        (d / "test_x.py").write_text(body)
        walls[n] = run(str(Path(python).absolute()), d, runs)
    print(f"{name}: pytest alone {walls[0]:.3f} s; 1 test {walls[1]:.3f} s, so the session's broker costs "
          f"{walls[1] - walls[0]:.3f} s; 20 tests {walls[20]:.3f} s, so "
          f"{(walls[20] - walls[1]) / 19 * 1000:.1f} ms per test")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--warren-python", required=True)
    parser.add_argument("--rabbitmq-python")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as root:
        measure("warren", args.warren_python, args.runs, Path(root))
        if args.rabbitmq_python:
            measure("pytest-rabbitmq", args.rabbitmq_python, args.runs, Path(root))


if __name__ == "__main__":
    main()
