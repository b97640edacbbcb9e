//! The fault matrix (opt-in, slow): many runs, each with random kills of
//! random operators' workers at random times (some during checkpoints, since
//! instances checkpoint every 100 ms here), sometimes with a split and
//! sometimes a merge (scale in) in the middle, and half of them placed by
//! pipelines (one worker runs every operator's first instance, passing
//! tuples in process). Every run must produce exactly the failure-free
//! answers.
//!
//! `SPATE_FAULT_RUNS=100 cargo test --release -p spate --test fault_matrix -- --ignored --nocapture`

mod common;

use common::lrb::survives;
use common::next_random as next;

const OPERATORS: [&str; 8] = [
    "feeder",
    "forwarder",
    "toll_calculator:0",
    "toll_calculator:1",
    "toll_assessment",
    "tolls",
    "accidents",
    "balances",
];

#[test]
#[ignore = "slow: set SPATE_FAULT_RUNS and run with --ignored"]
fn random_kills_never_lose_or_duplicate_an_answer() {
    let runs: u64 = std::env::var("SPATE_FAULT_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let mut kills_tried = 0;
    for seed in 1..=runs {
        let mut rng = seed;
        let mut kills = Vec::new();
        for _ in 0..1 + next(&mut rng) % 3 {
            let at = 1.0 + (next(&mut rng) % 60) as f64 / 10.0;
            let operator = OPERATORS[(next(&mut rng) % OPERATORS.len() as u64) as usize];
            kills.push(format!("{at:.1}:{operator}"));
        }
        let mut extra = vec!["--checkpoint-ms", "100", "--pool", "4"];
        let split_at = format!(
            "{:.1}:toll_calculator",
            1.0 + (next(&mut rng) % 50) as f64 / 10.0
        );
        if next(&mut rng).is_multiple_of(3) {
            extra.extend(["--scale", split_at.as_str()]);
        }
        let merge_at = format!(
            "{:.1}:toll_calculator",
            1.0 + (next(&mut rng) % 50) as f64 / 10.0
        );
        if next(&mut rng).is_multiple_of(3) {
            extra.extend(["--scale-in", merge_at.as_str()]);
        }
        if next(&mut rng).is_multiple_of(2) {
            extra.extend(["--workers", "3", "--placement", "pipelines"]);
        }
        let kill_refs: Vec<&str> = kills.iter().map(String::as_str).collect();
        println!("run {seed}: kills {kills:?} options {extra:?}");
        survives(&format!("matrix-{seed}"), &kill_refs, &extra);
        kills_tried += kills.len();
    }
    println!("{runs} runs, {kills_tried} kills: no answer lost or duplicated");
}
