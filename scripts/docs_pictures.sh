#!/usr/bin/env bash
# Refreshes the pictures in docs/ from a real run: the browser test that plays the teaching
# demo in headless Chromium saves a screenshot of the page and the demo worker's timeline
# as SVG (drawn by the page's own drawing code) under target/browser/; this copies them to
# docs/dashboard.png and docs/heartbeat-timeline.svg. Needs the interop venv and the release
# binary (run scripts/interop.sh once first).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
export WARREN_BIN="${WARREN_BIN:-$REPO/target/release/warren}"
cargo build --release --quiet
(cd tests/browser && "$REPO/.venv/bin/python" -m pytest . -q -p no:cacheprovider -k teaching_demo)
cp target/browser/dashboard.png docs/dashboard.png
cp target/browser/heartbeat-timeline.svg docs/heartbeat-timeline.svg
echo "docs/dashboard.png and docs/heartbeat-timeline.svg refreshed"
