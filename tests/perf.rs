//! `warren perf`, the load tool, run as a command against a broker: its
//! PerfTest report lines and JSON summary, each scenario once, short, and
//! readable errors for bad arguments.

use std::process::{Command, Output};

use serde_json::Value;
use warren::EmbeddedBroker;

const WARREN: &str = env!("CARGO_BIN_EXE_warren");

/// Runs `warren perf ARGS --json -` on a thread (the broker runs on this
/// test's runtime); its output and the summary, the last JSON on stdout.
async fn perf(args: &[&str]) -> (Output, Value) {
    let mut command = Command::new(WARREN);
    command.arg("perf").args(args).args(["--json", "-"]);
    let output = tokio::task::spawn_blocking(move || command.output().unwrap()).await.unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let summary = stdout.find("\n{").map_or(Value::Null, |i| serde_json::from_str(&stdout[i..]).unwrap_or(Value::Null));
    (output, summary)
}

#[tokio::test(flavor = "multi_thread")]
async fn publish_consume_counts_every_message_and_reports_like_perftest() {
    let broker = EmbeddedBroker::start().await.unwrap();
    let url = broker.url();
    let (out, summary) =
        perf(&["-h", &url, "-x", "2", "-y", "2", "-s", "64", "-q", "100", "-c", "50", "-A", "10", "-C", "5000"]).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!((summary["sent"].as_u64(), summary["received"].as_u64()), (Some(10_000), Some(10_000)), "{summary}");
    assert_eq!(summary["reason"], "Reached message limit");
    assert!(summary["latency_us"]["count"].as_u64().unwrap() == 10_000, "{summary}");
    assert!(stdout.contains("id: test-1, sending rate avg: "), "{stdout}");
    assert!(stdout.contains("consumer latency min/median/75th/95th/99th"), "{stdout}");
    // The run's own queue is gone again.
    assert!(broker.broker().queue_infos().iter().all(|q| !q.name.starts_with("warren-perf-")));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_queue_pattern_spreads_pairs_over_queues_and_a_rate_is_kept() {
    let broker = EmbeddedBroker::start().await.unwrap();
    let url = broker.url();
    let (out, summary) = perf(&[
        "-h",
        &url,
        "-x",
        "3",
        "-y",
        "3",
        "--queue-pattern",
        "perf-%d",
        "--queue-pattern-from",
        "1",
        "--queue-pattern-to",
        "3",
        "-r",
        "500",
        "-z",
        "2",
        "-f",
        "persistent",
    ])
    .await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let names: Vec<String> = broker.broker().queue_infos().iter().map(|q| q.name.clone()).collect();
    for q in ["perf-1", "perf-2", "perf-3"] {
        assert!(names.contains(&q.to_string()), "{names:?}");
    }
    assert!(broker.broker().queue_infos().iter().filter(|q| q.name.starts_with("perf-")).all(|q| q.durable));
    // 3 producers at 500 msg/s for 2 s: about 3,000, never much more.
    let sent = summary["sent"].as_u64().unwrap();
    assert!((2_000..=3_300).contains(&sent), "{summary}");
}

#[tokio::test(flavor = "multi_thread")]
async fn fanout_delivers_each_message_to_every_consumers_queue_and_topic_routes_past_many_bindings() {
    let broker = EmbeddedBroker::start().await.unwrap();
    let url = broker.url();
    let (out, fanout) =
        perf(&["-h", &url, "-t", "fanout", "-x", "1", "-y", "3", "-s", "16", "-q", "100", "-c", "100", "-C", "2000"])
            .await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!((fanout["sent"].as_u64(), fanout["received"].as_u64()), (Some(2000), Some(6000)), "{fanout}");
    assert_eq!(fanout["queues"], 3);
    // 2,000 bindings that never match: the consumer still gets each message once.
    let (out, topic) = perf(&[
        "-h",
        &url,
        "-t",
        "topic",
        "--extra-bindings",
        "2000",
        "-k",
        "perf.a.b",
        "-s",
        "16",
        "-q",
        "100",
        "-c",
        "100",
        "-C",
        "2000",
    ])
    .await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!((topic["sent"].as_u64(), topic["received"].as_u64()), (Some(2000), Some(2000)), "{topic}");
    // The run's exchanges and queues (and so their bindings) are gone again.
    assert!(broker.broker().queue_infos().iter().all(|q| !q.name.starts_with("warren-perf-")));
    assert!(broker.broker().exchange_infos().iter().all(|e| !e.name.starts_with("warren-perf-")));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_message_bigger_than_frame_max_goes_in_many_frames_and_the_broker_memory_is_reported() {
    let broker = EmbeddedBroker::start().await.unwrap();
    let url = broker.url();
    let pid = std::process::id().to_string();
    // 3 MB: 24 body frames of at most 131,072 octets each.
    let (out, summary) = perf(&["-h", &url, "-s", "3000000", "-C", "3", "-c", "1", "--broker-pid", &pid]).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!((summary["sent"].as_u64(), summary["received"].as_u64()), (Some(3), Some(3)), "{summary}");
    assert!(summary["broker_rss_peak"].as_u64() >= summary["broker_rss_before"].as_u64(), "{summary}");
    assert!(stdout.contains("broker resident memory: "), "{stdout}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_churn_idle_and_heartbeat_scenarios_run_and_say_what_they_measured() {
    let broker = EmbeddedBroker::start().await.unwrap();
    let url = broker.url();
    let (_, churn) = perf(&["-h", &url, "--scenario", "connection-churn", "-z", "1"]).await;
    assert!(churn["total"].as_u64().unwrap() > 0, "{churn}");
    // A connection leaves the broker's registry just after its close-ok
    // is sent, so the last one may still be going when the tool exits.
    let mut open = broker.broker().gauges.connections.subscribe();
    tokio::time::timeout(std::time::Duration::from_secs(5), open.wait_for(|n| *n == 0))
        .await
        .expect("every churned connection is closed")
        .unwrap();
    assert!(broker.connections().is_empty());
    let (_, queues) = perf(&["-h", &url, "--scenario", "queue-churn", "-z", "1", "--pipeline", "10"]).await;
    assert!(queues["total"].as_u64().unwrap() >= 10, "{queues}");
    assert!(broker.broker().queue_infos().iter().all(|q| !q.name.starts_with("warren-perf-churn")));
    let pid = std::process::id().to_string();
    let (_, idle) = perf(&[
        "-h",
        &url,
        "--scenario",
        "idle",
        "--connections",
        "50",
        "--heartbeat",
        "1",
        "-z",
        "3",
        "--broker-pid",
        &pid,
    ])
    .await;
    assert_eq!((idle["connections"].as_u64(), idle["dropped"].as_u64()), (Some(50), Some(0)), "{idle}");
    assert!(idle["bytes_per_connection"].is_number(), "{idle}");
    let (out, hb) =
        perf(&["-h", &url, "--scenario", "heartbeat-check", "--heartbeat", "1", "-s", "16", "-q", "100", "-c", "100"])
            .await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(
        (hb["heartbeating_kept"].as_bool(), hb["silent_dropped_in_window"].as_bool()),
        (Some(true), Some(true)),
        "{hb}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_arguments_are_readable_errors() {
    let (out, _) = perf(&["--scenario", "nope"]).await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown scenario 'nope'"));
    let (out, _) = perf(&["-h", "amqps://localhost:1/%2f"]).await;
    assert!(String::from_utf8_lossy(&out.stderr).contains("--tls-ca"));
    let (out, _) = perf(&["-x", "many"]).await;
    assert_eq!(out.status.code(), Some(2));
    let (out, _) = perf(&["-h", "amqp://127.0.0.1:1/%2f", "-C", "1"]).await;
    assert!(String::from_utf8_lossy(&out.stderr).contains("127.0.0.1:1"), "names where it could not connect");
}
