#!/usr/bin/env bash
# Issue 15's targets, measured with `warren perf` against one broker; run it
# once for warren and once for RabbitMQ to compare them side by side:
#   BROKER=warren   bash scripts/perf_compare.sh     # starts the release warren on 5690
#   BROKER=rabbitmq bash scripts/perf_compare.sh     # a RabbitMQ already on 5672
# SECONDS_EACH (default 10) sets -z. Prints one line per target; the JSON
# summaries go to target/perf/$BROKER-*.json.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
BROKER="${BROKER:-warren}"
Z="${SECONDS_EACH:-10}"
OUT="target/perf"
mkdir -p "$OUT"
cargo build --release --quiet
PERF=(target/release/warren perf)
# A fresh warren for each memory figure: one that has carried load holds
# freed memory a new load reuses, and would look smaller than it is.
fresh_warren() { # extra arguments go to warren
    if [ -n "${PID:-}" ]; then kill "$PID" 2>/dev/null; wait "$PID" 2>/dev/null || true; fi
    target/release/warren --port 5690 --no-http "$@" >/dev/null 2>&1 &
    PID=$!
    sleep 0.5
}
case "$BROKER" in
    warren)
        fresh_warren
        trap 'kill $PID 2>/dev/null' EXIT
        URI="amqp://guest:guest@127.0.0.1:5690/%2f"
        ;;
    rabbitmq)
        PID=$(pgrep -f beam.smp | head -1)
        URI="amqp://guest:guest@127.0.0.1:5672/%2f"
        ;;
    *) echo "BROKER is warren or rabbitmq" >&2; exit 2 ;;
esac
run() { # name, then perf arguments; a failed run leaves its log and no figure
    local name=$1; shift
    "${PERF[@]}" -h "$URI" "$@" --json "$OUT/$BROKER-$name.json" >"$OUT/$BROKER-$name.log" 2>&1 \
        || { echo "$BROKER $name failed: $(tail -1 "$OUT/$BROKER-$name.log")"; echo '{}' >"$OUT/$BROKER-$name.json"; }
}
# First, while the broker's peak resident memory is still its own: one
# 100 MB message through it.
run huge -x 1 -y 1 -s 100000000 -C 1 -c 1 --broker-pid "$PID"
run pipeline -x 1 -y 1 -s 16 -q 1000 -c 1000 -A 100 -z "$Z"
for pairs in 10 100 1000; do
    run "flows-$pairs" -x "$pairs" -y "$pairs" -s 16 -q 1000 -c 1000 -A 100 -z "$Z" \
        --queue-pattern "perf-flow-%d" --queue-pattern-from 1 --queue-pattern-to "$pairs"
done
for rate in 10000 200000; do
    run "latency-$rate" -x 1 -y 1 -s 16 -q 1000 -A 100 -r "$rate" -z "$Z"
done
# The same with one thread for the tool and, for warren, one for the broker
# (--threads 1): on two cores neither then waits out the other's time slice.
# (For RabbitMQ the tool's side only; its schedulers are as it was started.)
if [ "$BROKER" = warren ]; then fresh_warren --threads 1; fi
run pipeline-1t -x 1 -y 1 -s 16 -q 1000 -c 1000 -A 100 -z "$Z" --threads 1
for rate in 10000 200000; do
    run "latency-1t-$rate" -x 1 -y 1 -s 16 -q 1000 -A 100 -r "$rate" -z "$Z" --threads 1
done
if [ "$BROKER" = warren ]; then fresh_warren; fi
run large -x 1 -y 1 -s 4096 -q 1000 -c 1000 -A 100 -z "$Z"
run fanout -x 1 -y 10 -t fanout -s 16 -q 1000 -c 1000 -A 100 -z "$Z"
for round in 1 2 3; do # alternately, three of each: the figure is the median
    for kind in direct topic; do
        run "$kind-bindings-$round" -x 1 -y 1 -t "$kind" --extra-bindings 100000 -s 16 -q 1000 -c 1000 -A 100 -z "$Z"
    done
done
run conn-churn --scenario connection-churn -x 32 -z "$Z"
run queue-churn --scenario queue-churn -z "$Z" --pipeline 100
if [ "$BROKER" = warren ]; then fresh_warren; fi # (a RabbitMQ: start it afresh before the run)
run idle --scenario idle --connections 10000 --heartbeat 2 -z "$Z" --broker-pid "$PID"
run heartbeat --scenario heartbeat-check --heartbeat 2 -x 1 -y 1 -s 16 -q 1000 -c 1000 -A 100 -z "$Z"

# One line per target, from the JSON summaries.
python3 - "$OUT" "$BROKER" <<'REPORT'
import json, sys
out, broker = sys.argv[1], sys.argv[2]
def load(name):
    try:
        return json.load(open(f"{out}/{broker}-{name}.json"))
    except (OSError, ValueError):
        return {}
def line(text, name, show):
    d = load(name)
    try:
        print(f"{broker} {text}: {show(d)}")
    except (KeyError, TypeError):
        print(f"{broker} {text}: failed (see {out}/{broker}-{name}.log)")
line("1 publisher/1 consumer, 16 B", "pipeline", lambda d: f"{int(d['receive_rate']):,} msg/s consumed")
line("1 publisher/1 consumer, 16 B, one thread each", "pipeline-1t", lambda d: f"{int(d['receive_rate']):,} msg/s consumed")
for pairs in (10, 100, 1000):
    line(f"{pairs} pairs on {pairs} queues", f"flows-{pairs}", lambda d: f"{int(d['receive_rate']):,} msg/s consumed")
for rate in (10000, 200000):
    line(f"latency at {rate:,} msg/s", f"latency-{rate}",
         lambda d: f"p50 {d['latency_us']['median']} µs, p99 {d['latency_us']['p99']} µs ({int(d['receive_rate']):,} msg/s)")
    line(f"latency at {rate:,} msg/s, one thread each", f"latency-1t-{rate}",
         lambda d: f"p50 {d['latency_us']['median']} µs, p99 {d['latency_us']['p99']} µs ({int(d['receive_rate']):,} msg/s)")
line("one 100 MB message", "huge",
     lambda d: f"broker peak {d['broker_rss_peak'] / 2**20:.0f} MiB, "
               f"{(d['broker_rss_peak'] - d['broker_rss_before']) / 1e8:.2f}x the message above its {d['broker_rss_before'] / 2**20:.0f} MiB before")
line("fanout to 10 queues", "fanout", lambda d: f"{int(d['receive_rate']):,} deliveries/s ({int(d['send_rate']):,} published/s)")
def median_rate(kind):
    rates = sorted(load(f"{kind}-bindings-{r}").get("send_rate", 0) for r in (1, 2, 3))
    return rates[1]
try:
    direct, topic = median_rate("direct"), median_rate("topic")
    print(f"{broker} direct, 100,000 bindings: {int(direct):,} published/s (median of 3)")
    print(f"{broker} topic, 100,000 bindings: {int(topic):,} published/s (median of 3, {topic / direct:.2f}x direct)")
except ZeroDivisionError:
    print(f"{broker} direct/topic with 100,000 bindings: failed (see {out}/{broker}-*-bindings-*.log)")
line("4 KB bodies", "large", lambda d: f"{d['receive_rate'] * 4096 / 1e9:.2f} GB/s ({int(d['receive_rate']):,} msg/s)")
line("connection open + close (32 at a time)", "conn-churn", lambda d: f"{int(d['rate']):,} /s")
line("queue declare + delete (100 in flight)", "queue-churn", lambda d: f"{int(d['rate']):,} /s")
line("10,000 idle connections, heartbeat 2", "idle",
     lambda d: f"{d['bytes_per_connection'] / 1024:.1f} KB each, opened in {d['opened_in_s']:.2f} s, {d['dropped']} dropped")
line("heartbeat check under load", "heartbeat",
     lambda d: f"heartbeating kept: {d['heartbeating_kept']}, silent dropped after {d['silent_dropped_after_s']:.2f} s "
               f"(in 2T..3T: {d['silent_dropped_in_window']})")
REPORT
