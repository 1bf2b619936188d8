#!/usr/bin/env bash
# Interop suite: real clients against the real warren binary over loopback — pika, py-amqp,
# a Celery 5.7 worker, aio-pika, kombu's and py-amqp's own integration tests (from their PyPI
# sdists) and amqplib (node), all at pinned versions; and the live page in a real browser
# (tests/browser: Debian's headless Chromium, driven by selenium).
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

# The browser tests' Chromium and its driver, from Debian (same major version, as a pair).
if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then
    echo "interop: installing chromium and chromium-driver"
    apt-get update -qq && apt-get install -y -qq chromium chromium-driver
fi

echo "interop: cargo build --release"
cargo build --release

if [ -z "${WARREN_BIN:-}" ]; then
    WARREN_BIN="${CARGO_TARGET_DIR:-$REPO/target}/release/warren"
    case "$WARREN_BIN" in /*) ;; *) WARREN_BIN="$REPO/$WARREN_BIN" ;; esac
    export WARREN_BIN
fi
echo "interop: testing $WARREN_BIN"

# The Python package: a wheel built with maturin. It goes into .venv (the
# interop suite's fixtures are built on it) and into a venv of its own where
# the plugin's suite runs with no cargo on PATH and no WARREN_BIN: the binary
# it runs is the one inside the wheel. -n 4: parallel tests, a broker each.
echo "interop: building the warren-broker wheel"
WHEELS="$REPO/target/wheels"
rm -f "$WHEELS"/warren_broker-*.whl
(cd python && "$VENV/bin/maturin" build --release --quiet -o "$WHEELS")
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps --force-reinstall \
    "$WHEELS"/warren_broker-*.whl
PLUGIN_VENV="$REPO/target/plugin-venv"
rm -rf "$PLUGIN_VENV"
python3 -m venv "$PLUGIN_VENV"
"$PLUGIN_VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
    "$WHEELS"/warren_broker-*.whl -r python/tests/requirements.txt
echo "interop: the pytest plugin, from the installed wheel"
(cd python && env -i PATH="$PLUGIN_VENV/bin:/usr/bin:/bin" HOME="${HOME:-/tmp}" \
    "$PLUGIN_VENV/bin/python" -m pytest tests -v -p no:cacheprovider -n 4)

echo "interop: the live page in headless Chromium (screenshots in target/browser/)"
(cd tests/browser && "$VENV/bin/python" -m pytest . -v -p no:cacheprovider)

exec "$VENV/bin/python" -m pytest tests/interop -v -rxX -p no:cacheprovider "$@"
