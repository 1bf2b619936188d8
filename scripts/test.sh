#!/usr/bin/env bash
# Runs warren's whole test suite on a fresh machine: the Rust tests (unit,
# codec oracle, heartbeat windows, lapin end to end) and the Python interop
# tests (pika, py-amqp) in a venv this script creates.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# The TLS tests drive `openssl s_client` for the protocol-level cases.
if ! command -v openssl >/dev/null 2>&1; then
    apt-get update -qq && apt-get install -y -qq openssl
fi

echo "== cargo test"
cargo test --all-targets

echo "== interop (pika, py-amqp)"
bash scripts/interop.sh
