#!/usr/bin/env bash
# amqps against amqp, warren against RabbitMQ, with the same client: the
# pipeline bench (1 publisher with confirms, 1 consumer, prefetch 1000) at
# 16 B and 4 KB, plain and over TLS, RUNS times each; prints each figure and
# the median. RabbitMQ must be running with listeners.tcp.default = 5672 and
# listeners.ssl.default = 5671, using the certificates in $CERTS (made by
# `warren --tls-self-signed $CERTS`); RABBITMQ=0 measures warren alone.
#   CERTS=/tmp/rmqtls RUNS=3 bash scripts/tls_bench.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
CERTS="${CERTS:-/tmp/rmqtls}"
RUNS="${RUNS:-3}"
cargo build --release --quiet
cargo bench --bench pipeline --no-run --quiet 2>/dev/null
target/release/warren --port 5680 --no-http --tls-self-signed "$CERTS.warren" --tls-port 5681 >/dev/null 2>&1 &
WARREN=$!
trap 'kill $WARREN 2>/dev/null' EXIT
sleep 0.5
measure() { # label url ca size messages
    local figures=()
    for _ in $(seq "$RUNS"); do
        figures+=("$(AMQP_URL="$2" TLS_CA="$3" SIZE="$4" MESSAGES="$5" cargo bench --bench pipeline 2>/dev/null \
            | grep -o '[0-9]* msg/s end' | grep -o '^[0-9]*')")
    done
    local median
    median=$(printf '%s\n' "${figures[@]}" | sort -n | sed -n "$(( (RUNS + 1) / 2 ))p")
    printf '%-28s %5s B: %s -> median %s msg/s\n' "$1" "$4" "${figures[*]}" "$median"
}
for size in 16 4096; do
    n=$([ "$size" = 16 ] && echo 1000000 || echo 200000)
    measure "warren amqp" "amqp://guest:guest@127.0.0.1:5680/%2f" "" "$size" "$n"
    measure "warren amqps" "amqps://guest:guest@localhost:5681/%2f" "$CERTS.warren/ca_certificate.pem" "$size" "$n"
    if [ "${RABBITMQ:-1}" != 0 ]; then
        measure "RabbitMQ amqp" "amqp://guest:guest@127.0.0.1:5672/%2f" "" "$size" "$n"
        measure "RabbitMQ amqps" "amqps://guest:guest@localhost:5671/%2f" "$CERTS/ca_certificate.pem" "$size" "$n"
    fi
done
