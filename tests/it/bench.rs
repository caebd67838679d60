//! The benchmarks themselves, run tiny: each scenario completes and reports consistent
//! figures. (Speed is measured by `cartwatch bench` at full size, never asserted here.)

use std::process::Command;

use crate::common::BINARY;

fn bench(scenario: &str, scale: &str) -> serde_json::Value {
    let output = Command::new(BINARY).args(["bench", scenario, "--scale", scale]).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let stdout = String::from_utf8_lossy(&output.stdout);
    serde_json::from_str(stdout.lines().last().unwrap()).unwrap_or_else(|error| panic!("{error}: {stdout}"))
}

#[test]
fn sweep_commits_every_cart_and_reports_its_bound() {
    let figures = bench("sweep", "0.002");
    assert_eq!(figures["scenario"], "sweep");
    assert_eq!(figures["carts"], 200);
    assert_eq!(figures["all_committed"], true);
    for run in ["first_sweep_every_cart_new", "steady_sweep_nothing_changed"] {
        assert_eq!(figures[run]["requests"], 20.0, "{run}: ceil(200 / 10) requests");
        assert!(figures[run]["ratio_to_bound"].as_f64().unwrap() > 0.9, "{run}: no faster than physics allows");
        assert!(figures[run]["cpu_us_per_request"].as_f64().unwrap() > 0.0);
        assert!(figures[run]["cpu_ratio_to_floor"].as_f64().unwrap() > 0.0, "{run}: read against the floor");
    }
    // The floor did the steady sweep's work in the same run: the same requests, every cart
    // written.
    let floor = &figures["floor_steady_work"];
    assert_eq!(floor["requests"], 20, "{figures}");
    assert_eq!(floor["carts_written"], 200, "{figures}");
    assert!(floor["commits"].as_u64().unwrap() >= 1);
    assert!(floor["cpu_us_per_request"].as_f64().unwrap() > 0.0);
    // Measured with the daemon's logging at the shipped level: the first sweep's 200
    // transitions are logged, one INFO line each.
    assert_eq!(figures["log_level"], "info");
    assert!(figures["log_bytes"].as_u64().unwrap() > 200 * 50, "{figures}");
}

#[test]
fn floor_polls_and_writes_every_cart_once() {
    let figures = bench("floor", "0.002");
    assert_eq!(figures["scenario"], "floor");
    assert_eq!(figures["floor"]["requests"], 20, "{figures}");
    assert_eq!(figures["floor"]["carts_written"], 200, "{figures}");
    assert!(figures["floor"]["ratio_to_bound"].as_f64().unwrap() > 0.9, "{figures}");
}

#[test]
fn sweep_among_more_tracked_carts_polls_only_the_due_ones() {
    let output = Command::new(BINARY)
        .args(["bench", "sweep", "--scale", "0.002", "--tracked", "5000", "--latency", "0"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let figures: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&output.stdout).lines().last().unwrap()).unwrap();
    assert_eq!((figures["carts"].as_u64(), figures["tracked_carts"].as_u64()), (Some(200), Some(5000)));
    assert_eq!(figures["partner_latency_ms"], 0);
    assert_eq!(figures["steady_sweep_nothing_changed"]["carts_polled"], 200, "{figures}");
}

#[test]
fn scale_runs_the_real_binary_and_the_due_query_uses_its_index() {
    let figures = bench("scale", "0.002");
    assert_eq!((figures["tracked_carts"].as_u64(), figures["due_carts"].as_u64()), (Some(2000), Some(20)));
    assert_eq!(figures["due_query_uses_index"], true, "{figures}");
    assert_eq!(figures["clean_exit"], true);
    assert_eq!(figures["requests"], 2.0);
    assert!(figures["peak_rss_mib"].as_f64().unwrap() > 1.0);
}

#[test]
fn deliver_sends_every_event_in_order_to_both_sinks() {
    let figures = bench("deliver", "0.002");
    assert_eq!(figures["events"], 200);
    assert_eq!(figures["webhook_delivered"], 200);
    assert_eq!(figures["webhook_out_of_order"], 0);
    assert_eq!(figures["log_lines"], 200);
}

#[test]
fn transitions_commit_every_transition_and_event() {
    let figures = bench("transitions", "0.002");
    assert_eq!(figures["all_committed"], true, "{figures}");
    assert_eq!(figures["transitions_committed"], 200);
    assert_eq!(figures["events_committed"], 200);
    assert!(figures["sqlite_ms_per_batch_mean"].as_f64().unwrap() > 0.0, "{figures}");
    assert!(figures["batches_per_commit"].as_f64().unwrap() >= 1.0, "{figures}");
}

#[test]
fn an_unknown_scenario_is_refused() {
    let output = Command::new(BINARY).args(["bench", "everything"]).output().unwrap();
    assert_eq!(output.status.code(), Some(2), "a bad command line");
    assert!(
        String::from_utf8_lossy(&output.stderr)
            .contains("use sweep, floor, scale, deliver, transitions, plan, daemons (needs PostgreSQL) or all")
    );
}
