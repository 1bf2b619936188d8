//! A short round of the soak run (`examples/soak.rs`, `scripts/soak.sh`)
//! against the binary: publishers and consumers reconnecting through
//! random faults and alarms lose no confirmed message, and nothing panics.
//! (Memory flatness needs the long run; this round is too short to judge.)

#[path = "../examples/soak.rs"]
mod soak;

use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_soak_loses_nothing_confirmed() {
    let opts = soak::Options {
        binary: env!("CARGO_BIN_EXE_warren").into(),
        duration: Duration::from_secs(25),
        queues: 2,
        publishers: 2,
        consumers: 2,
        rate: 200,
        sample_every: Duration::from_secs(5),
    };
    let report = soak::run(&opts).await;
    report.print();
    let problems = report.problems(false);
    assert!(problems.is_empty(), "{problems:?}");
    assert!(report.faults > 0, "no fault was injected");
    assert!(report.alarms > 0, "no alarm was raised");
}
