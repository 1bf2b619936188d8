#!/usr/bin/env bash
# Interop suite: real clients against the real warren binary over loopback — pika, py-amqp,
# a Celery 5.7 worker, aio-pika, kombu's and py-amqp's own integration tests (from their PyPI
# sdists) and amqplib (node), all at pinned versions.
# Usage: bash scripts/interop.sh [extra pytest args, e.g. -k heartbeat -x]
# Creates <repo>/.venv if missing, installs tests/interop/requirements.txt, downloads the
# kombu/amqp sdists into target/interop-sdists/, runs `npm ci` in tests/interop/node, builds
# the release binary, runs pytest. Exits non-zero on any failure.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"

VENV="$REPO/.venv"
if [ ! -x "$VENV/bin/python" ]; then
    echo "interop: creating virtualenv at $VENV"
    python3 -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r tests/interop/requirements.txt

# The clients' own integration tests ship only in their sdists (same versions as installed).
SDISTS="${WARREN_INTEROP_SDISTS:-$REPO/target/interop-sdists}"
export WARREN_INTEROP_SDISTS="$SDISTS"
mkdir -p "$SDISTS"
for dist in amqp kombu; do
    ver="$("$VENV/bin/python" -c "from importlib.metadata import version; print(version('$dist'))")"
    if [ ! -d "$SDISTS/$dist-$ver/t/integration" ]; then
        echo "interop: fetching the $dist $ver sdist"
        "$VENV/bin/python" -m pip download --quiet --disable-pip-version-check \
            --no-binary :all: --no-deps "$dist==$ver" -d "$SDISTS"
        tar -xzf "$SDISTS/$dist-$ver.tar.gz" -C "$SDISTS"
    fi
done

# amqplib (node): exact versions from tests/interop/node/package-lock.json.
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    echo "interop: installing nodejs and npm"
    apt-get update -qq && apt-get install -y -qq nodejs npm
fi
(cd tests/interop/node && npm ci --no-audit --no-fund --loglevel=error)

echo "interop: cargo build --release"
cargo build --release

if [ -z "${WARREN_BIN:-}" ]; then
    WARREN_BIN="${CARGO_TARGET_DIR:-$REPO/target}/release/warren"
    case "$WARREN_BIN" in /*) ;; *) WARREN_BIN="$REPO/$WARREN_BIN" ;; esac
    export WARREN_BIN
fi
echo "interop: testing $WARREN_BIN"

# The Python package: a wheel built with maturin, installed into a venv of its
# own, tested with no cargo on PATH and no WARREN_BIN: the binary it runs is
# the one inside the wheel.
echo "interop: building the warren-broker wheel"
WHEELS="$REPO/target/wheels"
rm -f "$WHEELS"/warren_broker-*.whl
(cd python && "$VENV/bin/maturin" build --release --quiet -o "$WHEELS")
PLUGIN_VENV="$REPO/target/plugin-venv"
rm -rf "$PLUGIN_VENV"
python3 -m venv "$PLUGIN_VENV"
"$PLUGIN_VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
    "$WHEELS"/warren_broker-*.whl pika==1.4.4 pytest==9.2.0 kombu==5.7.0 amqp==5.4.2 vine==5.1.0
echo "interop: the pytest plugin, from the installed wheel"
(cd python && env -i PATH="$PLUGIN_VENV/bin:/usr/bin:/bin" HOME="${HOME:-/tmp}" \
    "$PLUGIN_VENV/bin/python" -m pytest tests -v -p no:cacheprovider)

exec "$VENV/bin/python" -m pytest tests/interop -v -rxX -p no:cacheprovider "$@"
