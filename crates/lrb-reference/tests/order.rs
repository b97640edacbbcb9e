//! docs/LRB.md: "Order of reports within one second does not change the
//! result." Random small inputs, rich in stopped cars sharing places, give
//! the same toll notifications and accident alerts whatever the order of
//! the lines within each second.

use lrb_reference::validate::{expected_answers, AlertRow, BadInput, TollRow};
use proptest::prelude::*;

/// Three places close together (Dir 0, segments 10 and 11), so that cars
/// stop at the same place often and probes upstream are affected.
const PLACES: [(u32, u32); 3] = [(1, 10 * 5280 + 100), (1, 11 * 5280 + 7), (2, 11 * 5280 + 7)];
/// Mostly zero speeds, so that stop reports are common (about two thirds
/// of the generated cases contain accident alerts).
const SPEEDS: [u32; 5] = [0, 0, 0, 0, 30];

/// A car standing at one place: its first report's second, its place index
/// and, per report, a speed index.
type Car = (u32, usize, Vec<usize>);

fn cars() -> impl Strategy<Value = Vec<Car>> {
    prop::collection::vec(
        (
            0u32..30,
            0..PLACES.len(),
            prop::collection::vec(0..SPEEDS.len(), 3..14),
        ),
        2..10,
    )
}

/// Input lines by second; within a second, in the order given by sorting on
/// a key mixed from `seed` and the line's index.
fn input_text(cars: &[Car], seed: u64) -> String {
    let mut lines: Vec<(u32, u64, String)> = Vec::new();
    for (vid, (start, place, speeds)) in cars.iter().enumerate() {
        let (lane, pos) = PLACES[*place];
        for (k, &speed) in speeds.iter().enumerate() {
            let t = start + 30 * k as u32;
            let spd = SPEEDS[speed];
            let seg = pos / 5280;
            let key = mix(seed ^ (lines.len() as u64));
            lines.push((
                t,
                key,
                format!("0,{t},{vid},{spd},0,{lane},0,{seg},{pos},-1,-1,-1,-1,-1,-1"),
            ));
        }
    }
    // Probes entering segments 7..=11 every 20 s, to observe accidents.
    for (i, t) in (0..480).step_by(20).enumerate() {
        let vid = 1_000 + i;
        let pos = (7 + (i as u32 % 5)) * 5280 + 1;
        let seg = pos / 5280;
        let key = mix(seed ^ (lines.len() as u64));
        lines.push((
            t,
            key,
            format!("0,{t},{vid},40,0,1,0,{seg},{pos},-1,-1,-1,-1,-1,-1"),
        ));
    }
    lines.sort();
    lines.into_iter().map(|(_, _, l)| l + "\n").collect()
}

/// splitmix64's finalizer: a cheap, well-spread hash.
fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn answers(input: &str) -> (Vec<TollRow>, Vec<AlertRow>) {
    let e = expected_answers(input.as_bytes(), &b""[..], BadInput::Stop)
        .expect("generated input is valid");
    let (mut tolls, mut alerts) = (e.tolls, e.accidents);
    tolls.sort_unstable();
    alerts.sort_unstable();
    (tolls, alerts)
}

proptest! {
    #[test]
    fn order_within_a_second_does_not_matter(cars in cars(), a in any::<u64>(), b in any::<u64>()) {
        let (tolls_a, alerts_a) = answers(&input_text(&cars, a));
        let (tolls_b, alerts_b) = answers(&input_text(&cars, b));
        prop_assert_eq!(tolls_a, tolls_b);
        prop_assert_eq!(alerts_a, alerts_b);
    }
}

#[test]
fn the_random_inputs_do_produce_accidents() {
    // Guards the property above against vacuity: with this shape of input
    // accidents are common. Two cars stopped together at place 0 from t = 0:
    let cars = vec![(0, 0, vec![0; 6]), (5, 0, vec![0; 6])];
    let (_, alerts) = answers(&input_text(&cars, 1));
    // Active in minutes 2 and 3 (stop reports 90..=155), so probes entering
    // segments 6..=10 at t = 120..=239 are alerted. Probes enter segments 7,
    // 8, 9, 10, 11, 7, ... every 20 s: at 180 the probe is in segment 11
    // (downstream) and at 240 the accident no longer affects minute 5.
    let seconds: Vec<u32> = alerts.iter().map(|a| a.time).collect();
    assert_eq!(seconds, vec![120, 140, 160, 200, 220]);
    assert!(alerts.iter().all(|a| a.seg == 10));
}
