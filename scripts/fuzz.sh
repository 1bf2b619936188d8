#!/usr/bin/env bash
# A coverage-guided fuzzing campaign on stable Rust: libFuzzer through
# cargo-bolero, over the targets in tests/fuzz/targets.rs, built by the
# package in fuzz/. Each target runs RUNS inputs (default 10 million),
# starting from and growing its corpus in tests/fuzz/__fuzz__/<target>/corpus,
# which plain `cargo test` (tests/fuzz.rs) replays; the corpus is then
# reduced to the inputs that add coverage. An input that fails is written
# to tests/fuzz/__fuzz__/<target>/crashes, which `cargo test` replays too:
# commit it with its fix.
#
#   scripts/fuzz.sh                     # every target, 10M inputs each
#   RUNS=1000000 scripts/fuzz.sh oracle topic
#
# Prints, per target, the inputs run, the time taken and the corpus size.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

RUNS="${RUNS:-10000000}"
TARGETS=("$@")
if [ ${#TARGETS[@]} -eq 0 ]; then
    TARGETS=(frames methods properties field_tables oracle topic connection)
fi
command -v cargo-bolero >/dev/null || cargo install cargo-bolero --version 0.13.5 --locked

root="$PWD"
(cd fuzz && cargo run -q --example seeds)
summary=()
for target in "${TARGETS[@]}"; do
    dir="$root/tests/fuzz/__fuzz__/$target"
    mkdir -p "$dir/corpus" "$dir/crashes"
    echo "== $target: $RUNS inputs"
    start=$(date +%s)
    # No sanitizer: stable Rust has none; libFuzzer's coverage is what
    # guides the search, and Rust's own checks (bounds, overflow in this
    # debug-assertions profile) are what fail.
    # Both harnesses include the same file, so bolero finds the same
    # corpus and crashes directories for either.
    (cd fuzz && cargo bolero test "$target" --engine libfuzzer --sanitizer NONE --runs "$RUNS")
    elapsed=$(( $(date +%s) - start ))
    (cd fuzz && cargo bolero reduce "$target" --engine libfuzzer --sanitizer NONE >/dev/null)
    summary+=("$target: $RUNS inputs in ${elapsed}s, corpus $(ls "$dir/corpus" | wc -l) files")
done
echo "== summary"
printf '%s\n' "${summary[@]}"
