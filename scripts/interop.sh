#!/usr/bin/env bash
# Python interop suite: pika and py-amqp against the real warren binary over loopback.
# Usage: bash scripts/interop.sh [extra pytest args, e.g. -k heartbeat -x]
# Creates <repo>/.venv if missing, installs tests/interop/requirements.txt, builds the
# release binary, runs pytest. Exits non-zero on any failure.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"

VENV="$REPO/.venv"
if [ ! -x "$VENV/bin/python" ]; then
    echo "interop: creating virtualenv at $VENV"
    python3 -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r tests/interop/requirements.txt

echo "interop: cargo build --release"
cargo build --release

if [ -z "${WARREN_BIN:-}" ]; then
    WARREN_BIN="${CARGO_TARGET_DIR:-$REPO/target}/release/warren"
    case "$WARREN_BIN" in /*) ;; *) WARREN_BIN="$REPO/$WARREN_BIN" ;; esac
    export WARREN_BIN
fi
echo "interop: testing $WARREN_BIN"

exec "$VENV/bin/python" -m pytest tests/interop -v -p no:cacheprovider "$@"
