#!/usr/bin/env bash
# The soak run (examples/soak.rs) against the release binary, for MINUTES
# minutes (default 30): publishers and consumers through random faults,
# alarms and churn; fails if a confirmed message is lost, the broker panics
# or exits, or its resident memory grows once warm.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
minutes="${1:-30}"
cargo build --release --bin warren --example soak
exec target/release/examples/soak --minutes "$minutes" --binary target/release/warren
