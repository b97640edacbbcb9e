//! The expected answers of hand-made inputs, each worked out by hand from
//! docs/LRB.md.

mod common;

use common::{alerts, scenario, skipping_bad_lines, tolls_of, try_expected, Input};
use lrb_reference::validate::{Expected, SkippedLine, ValidateError};

const SEG_FEET: u32 = 5280;

#[test]
fn toll_is_twice_the_squared_excess_over_50_cars() {
    let mut input = Input::default();
    // Minute 1 in segment 10: cars 1..=52 report 20 and 25 mph (mean 22.5),
    // car 53 reports 30 and 31 (30.5). A(1) = (52 * 22.5 + 30.5) / 53 =
    // 1200.5 / 53 = 22.65..., so LAV(2) = 22. NOV(2) = 53.
    for vid in 1..=53u32 {
        let (s1, s2) = if vid == 53 { (30, 31) } else { (20, 25) };
        input.report(0, vid, s1, 1, 0, 10 * SEG_FEET + vid);
        input.report(30, vid, s2, 1, 0, 10 * SEG_FEET + 100 + vid);
    }
    input.report(60, 100, 20, 0, 0, 10 * SEG_FEET + 7);
    let e = input.expected("");
    // Each crowd car entered at t = 0, when the segment had no history.
    assert_eq!(tolls_of(&e, 1), vec![(0, -1, 0)]);
    assert_eq!(tolls_of(&e, 53), vec![(0, -1, 0)]);
    // 2 * (53 - 50)^2 = 18.
    assert_eq!(tolls_of(&e, 100), vec![(60, 22, 18)]);
    assert_eq!(e.tolls.len(), 54);
    assert!(e.accidents.is_empty());
}

#[test]
fn lav_of_40_or_more_means_no_toll() {
    let mut input = Input::default();
    input.crowd(1, 60, 10, 40, 30).crowd(101, 60, 20, 39, 30);
    input.report(60, 500, 40, 1, 0, 10 * SEG_FEET + 1);
    input.report(60, 501, 40, 1, 0, 20 * SEG_FEET + 1);
    let e = input.expected("");
    assert_eq!(tolls_of(&e, 500), vec![(60, 40, 0)]);
    // LAV 39 with 60 cars: 2 * 10^2 = 200.
    assert_eq!(tolls_of(&e, 501), vec![(60, 39, 200)]);
}

#[test]
fn fifty_cars_or_fewer_means_no_toll() {
    let mut input = Input::default();
    input.crowd(1, 50, 10, 10, 30).crowd(101, 51, 20, 10, 30);
    input.report(60, 500, 10, 1, 0, 10 * SEG_FEET + 1);
    input.report(60, 501, 10, 1, 0, 20 * SEG_FEET + 1);
    let e = input.expected("");
    assert_eq!(tolls_of(&e, 500), vec![(60, 10, 0)]);
    assert_eq!(tolls_of(&e, 501), vec![(60, 10, 2)]);
}

#[test]
fn lav_averages_only_the_last_five_minutes_that_had_reports() {
    let mut input = Input::default();
    let base = 20 * SEG_FEET;
    input.report(0, 1, 50, 1, 0, base); // A(1) = 50
    input.report(120, 2, 31, 1, 0, base + 10); // A(3) = 31
    input.report(180, 3, 10, 1, 0, base + 20); // A(4) = 10
    input.report(360, 4, 60, 1, 0, base + 30); // minute 7
    let e = input.expected("");
    // LAV(3): minutes 1 and 2 (only 1 has reports) = 50.
    assert_eq!(tolls_of(&e, 2), vec![(120, 50, 0)]);
    // LAV(4) = floor((50 + 31) / 2) = 40.
    assert_eq!(tolls_of(&e, 3), vec![(180, 40, 0)]);
    // LAV(7) over minutes 2..=6: floor((31 + 10) / 2) = 20; minute 1 is out.
    assert_eq!(tolls_of(&e, 4), vec![(360, 20, 0)]);
}

#[test]
fn nov_counts_distinct_cars_of_the_previous_minute_only() {
    let mut input = Input::default();
    // 60 cars in minute 1, then only 55 of them in minute 2 (they report at
    // 60 and 90 in the same segment, so they are not new entries).
    input.crowd(1, 55, 30, 10, 90).crowd(101, 5, 30, 10, 30);
    input.report(60, 500, 10, 1, 0, 30 * SEG_FEET + 1);
    input.report(120, 501, 10, 1, 0, 30 * SEG_FEET + 1);
    let e = input.expected("");
    assert_eq!(tolls_of(&e, 500), vec![(60, 10, 200)]);
    // Minute 2 had cars 1..=55 and car 500: NOV(3) = 56.
    assert_eq!(tolls_of(&e, 501), vec![(120, 10, 72)]);
}

#[test]
fn exit_lane_entries_get_no_notification() {
    let mut input = Input::default();
    input.report(0, 1, 60, 0, 0, 5 * SEG_FEET + 10);
    input.report(30, 1, 60, 1, 0, 6 * SEG_FEET + 10);
    input.report(60, 1, 60, 4, 0, 7 * SEG_FEET + 10);
    let e = input.expected("");
    assert_eq!(tolls_of(&e, 1), vec![(0, -1, 0), (30, -1, 0)]);
}

#[test]
fn a_gap_in_reports_makes_a_new_entry_even_in_the_same_segment() {
    let mut input = Input::default();
    // Car 1 exits from segment 6 and re-enters there five minutes later.
    input.report(0, 1, 60, 0, 0, 5 * SEG_FEET + 10);
    input.report(30, 1, 60, 1, 0, 5 * SEG_FEET + 2000);
    input.report(60, 1, 60, 4, 0, 6 * SEG_FEET + 10);
    input.report(360, 1, 60, 0, 0, 6 * SEG_FEET + 100);
    // Car 2 misses one report but stays in segment 8.
    input.report(0, 2, 10, 1, 0, 8 * SEG_FEET);
    input.report(90, 2, 10, 1, 0, 8 * SEG_FEET + 100);
    input.report(120, 2, 10, 1, 0, 8 * SEG_FEET + 200);
    let e = input.expected("");
    // LAV at 360 (minute 7, window 2..=6): segment 6 had car 1 at 60 mph in
    // minute 2.
    assert_eq!(tolls_of(&e, 1), vec![(0, -1, 0), (360, 60, 0)]);
    assert_eq!(tolls_of(&e, 2), vec![(0, -1, 0), (90, 10, 0)]);
}

#[test]
fn moving_to_the_other_direction_or_expressway_is_an_entry() {
    let mut input = Input::default();
    input.report_on(0, 1, 60, 0, 1, 0, 5 * SEG_FEET);
    input.report_on(30, 1, 60, 0, 1, 1, 5 * SEG_FEET);
    input.report_on(60, 1, 60, 3, 1, 1, 5 * SEG_FEET);
    let e = input.expected("");
    assert_eq!(tolls_of(&e, 1), vec![(0, -1, 0), (30, -1, 0), (60, -1, 0)]);
}

/// Two cars stopped in segment 50, Dir 0, lane 1: car 1 at t = 0..=150,
/// car 2 at t = 10..=160. Stop reports: car 1 at 90, 120, 150; car 2 at
/// 100, 130, 160. The place is active in minute 2 (car 2 at 100 sees car 1
/// at 90) and minute 3 (120..=160), so segments 46..=50 are affected in
/// minutes 3 and 4, i.e. for entries at t = 120..=239.
fn accident_scenario() -> Input {
    let mut input = Input::default();
    let place = 50 * SEG_FEET + 1000;
    input
        .stopped(1, 0, 6, 1, 0, place)
        .stopped(2, 10, 6, 1, 0, place);
    // Segment 48 is congested throughout (60 cars at 5 mph), so outside the
    // accident window its toll is 2 * (60 - 50)^2 = 200.
    input.crowd(100, 60, 48, 5, 300);
    input.report(119, 10, 5, 1, 0, 48 * SEG_FEET + 500); // minute 2: too early
    input.report(120, 11, 5, 1, 0, 48 * SEG_FEET + 600); // first affected second
    input.report(150, 17, 5, 1, 0, 50 * SEG_FEET + 10); // the accident's own segment
    input.report(150, 16, 5, 1, 1, 48 * SEG_FEET + 700); // other direction
    input.report(180, 18, 5, 4, 0, 47 * SEG_FEET + 10); // exit lane: nothing
    input.report(200, 13, 5, 1, 0, 45 * SEG_FEET + 10); // more than 4 upstream
    input.report(200, 14, 5, 1, 0, 51 * SEG_FEET + 10); // downstream
    input.report(239, 12, 5, 1, 0, 46 * SEG_FEET + 10); // last affected second
    input.report(240, 15, 5, 1, 0, 48 * SEG_FEET + 800); // minute 5: over
    input
}

#[test]
fn an_accident_alerts_and_frees_the_right_segments_in_the_right_minutes() {
    let e = accident_scenario().expected("");
    assert_eq!(
        alerts(&e),
        vec![(120, 11, 50), (150, 17, 50), (239, 12, 50)]
    );
    assert_eq!(tolls_of(&e, 10), vec![(119, 5, 200)]);
    assert_eq!(tolls_of(&e, 11), vec![(120, 5, 0)]);
    assert_eq!(tolls_of(&e, 12), vec![(239, -1, 0)]);
    assert_eq!(tolls_of(&e, 17), vec![(150, 0, 0)]);
    assert_eq!(tolls_of(&e, 18), vec![]);
    assert_eq!(tolls_of(&e, 15), vec![(240, 5, 200)]);
    // Both stopped cars only entered once.
    assert_eq!(tolls_of(&e, 1), vec![(0, -1, 0)]);
    assert_eq!(tolls_of(&e, 2), vec![(10, -1, 0)]);
}

#[test]
fn reports_of_one_second_can_come_in_any_order() {
    let place = 30 * SEG_FEET + 5;
    let build = |first: u32, second: u32| {
        let mut input = Input::default();
        // Both cars stop at the same seconds; their stop reports are at 90
        // and 120, so the place is active in minutes 2 and 3.
        input
            .stopped(first, 0, 5, 2, 0, place)
            .stopped(second, 0, 5, 2, 0, place);
        input.report(60, 7, 50, 1, 0, 28 * SEG_FEET); // minute 2: nothing yet
        input.report(120, 8, 50, 1, 0, 28 * SEG_FEET); // minute 3: active in 2
        input.report(180, 9, 50, 1, 0, 26 * SEG_FEET); // minute 4: active in 3
        input.report(240, 6, 50, 1, 0, 26 * SEG_FEET); // minute 5: over
        alerts(&input.expected(""))
    };
    let expected = vec![(120, 8, 30), (180, 9, 30)];
    assert_eq!(build(1, 2), expected);
    assert_eq!(build(2, 1), expected);
}

#[test]
fn no_accident_without_two_cars_at_exactly_one_place() {
    let place = 30 * SEG_FEET + 5;
    let mut input = Input::default();
    // One car alone; then two cars in different lanes; then two cars one
    // foot apart; then two cars whose stops are more than 30 s apart.
    input.stopped(1, 0, 8, 1, 0, place);
    input.stopped(2, 0, 8, 1, 0, place + 10 * SEG_FEET);
    input.stopped(3, 0, 8, 2, 0, place + 10 * SEG_FEET);
    input.stopped(4, 0, 8, 1, 0, place + 20 * SEG_FEET);
    input.stopped(5, 0, 8, 1, 0, place + 20 * SEG_FEET + 1);
    input.stopped(6, 0, 4, 1, 0, place + 30 * SEG_FEET);
    input.stopped(7, 125, 4, 1, 0, place + 30 * SEG_FEET);
    for (k, seg) in [28, 38, 48, 58].into_iter().enumerate() {
        for t in [150, 210, 270] {
            input.report(t, 100 + 10 * k as u32 + t / 60, 50, 1, 0, seg * SEG_FEET);
        }
    }
    let e = input.expected("");
    assert_eq!(alerts(&e), vec![]);
    assert!(e.tolls.iter().all(|r| r.toll == 0));
}

#[test]
fn a_stop_needs_four_zero_reports_exactly_30_s_apart() {
    let place = 30 * SEG_FEET + 5;
    let mut input = Input::default();
    // Car 1 stands still at 0, 30, 60, 90, then (after a 31 s gap) at 121,
    // 151, 181, 211. Its stop reports are 90 and 211 only: at 121, 151 and
    // 181 one of its three previous reports is not 30, 60 or 90 s before.
    input
        .stopped(1, 0, 4, 1, 0, place)
        .stopped(1, 121, 4, 1, 0, place);
    // Car 2's stop reports: 190, 220, 250.
    input.stopped(2, 100, 6, 1, 0, place);
    for (vid, t) in [(50, 180), (51, 240), (52, 300)] {
        input.report(t, vid, 50, 1, 0, 29 * SEG_FEET);
    }
    let e = input.expected("");
    // Only minute 4 is active (211 sees 190; 220 sees 211; at 250 the last
    // stop report of car 1 is 39 s old), so only minute 5 is affected.
    assert_eq!(alerts(&e), vec![(240, 51, 30)]);
}

#[test]
fn the_alert_names_the_nearest_affecting_accident() {
    let mut input = Input::default();
    // Dir 1 (decreasing Pos): an accident affects segments seg..=seg+4.
    input
        .stopped(1, 0, 5, 1, 1, 20 * SEG_FEET + 5)
        .stopped(2, 0, 5, 1, 1, 20 * SEG_FEET + 5);
    input
        .stopped(3, 0, 5, 1, 1, 23 * SEG_FEET + 5)
        .stopped(4, 0, 5, 1, 1, 23 * SEG_FEET + 5);
    for (vid, seg) in [
        (10, 19),
        (11, 20),
        (12, 22),
        (13, 23),
        (14, 24),
        (15, 27),
        (16, 28),
    ] {
        input.report(120, vid, 30, 1, 1, seg * SEG_FEET + 100);
    }
    let e = input.expected("");
    assert_eq!(
        alerts(&e),
        vec![
            (120, 11, 20),
            (120, 12, 20),
            (120, 13, 23),
            (120, 14, 23),
            (120, 15, 23)
        ]
    );
}

/// (ResultTime, Bal) answers the rules accept, per QID.
fn accepted(e: &Expected) -> Vec<(i64, Vec<(u32, i64)>)> {
    e.balances
        .iter()
        .map(|q| (q.qid, q.accepted.clone()))
        .collect()
}

#[test]
fn balances_are_as_of_one_of_the_accepted_notifications() {
    let e = scenario::balances().expected("");
    // Every notification of car 7 costs 2 * (60 - 50)^2 = 200 (LAV 10):
    // N1 at 60, N2 at 120, N3 at 150, and N4 at 400 after its re-entry.
    assert_eq!(
        tolls_of(&e, 7),
        vec![
            (60, 10, 200),
            (120, 10, 200),
            (150, 10, 200),
            (400, 10, 200)
        ]
    );
    // The balance as of a notification is the sum of the tolls of the
    // notifications before it: N1 0, N2 200, N3 400, N4 600.
    assert_eq!(
        accepted(&e),
        vec![
            // Q1 at 50, before any notification: only (50, 0).
            (1, vec![(50, 0)]),
            // Q2 at 130, 10 s after entering segment 11: the latest in
            // [100, 130] is N2, the one before it N1, the earliest in
            // [70, 130] N2.
            (2, vec![(60, 0), (120, 200)]),
            // Q3 at 150, the same second as N3 (its line comes first): the
            // latest in [120, 150] is N3, the one before N2, the earliest in
            // [90, 150] N2.
            (3, vec![(120, 200), (150, 400)]),
            // Car 8's first notification is at 200, the second of the query
            // (line before or after it): (200, 0).
            (4, vec![(200, 0)]),
            (5, vec![(200, 0)]),
            // Q6 at 300, 150 s after N3: nothing in [240, 300], so the
            // latest before, N3.
            (6, vec![(150, 400)]),
            // Q7 at 400, the second of N4 (query line first): N4 is the
            // latest in [370, 400] and the earliest in [340, 400]; N3 is the
            // one before it.
            (7, vec![(150, 400), (400, 600)]),
        ]
    );
}

#[test]
fn balance_acceptance_is_exactly_the_listed_answers() {
    let e = scenario::balances().expected("");
    let q2 = &e.balances[1];
    assert!(q2.accepts(60, 0) && q2.accepts(120, 200));
    // As of the query's own Time, with the current segment's toll: the old
    // rule's answer.
    assert!(!q2.accepts(130, 400) && !q2.accepts(130, 200));
    // The right ResultTime with the balance including its own toll.
    assert!(!q2.accepts(120, 400));
    assert!(q2.accepts_result_time(120) && !q2.accepts_result_time(90));
}

#[test]
fn lav_is_the_exact_mean_truncated_once_at_39_8() {
    let input = scenario::lav_at_39_8();
    let e = input.expected("");
    // LAV(6) = trunc((39.5 + 39.75 + 40 + 39.75 + 40) / 5) = trunc(39.8) =
    // 39 < 40, so the toll is 2 * (60 - 50)^2 = 200.
    assert_eq!(tolls_of(&e, 500), vec![(300, 39, 200)]);
    // A minute with one car: LAV(2) = A(1) = trunc(39.5) = 39, NOV(2) = 1.
    assert_eq!(tolls_of(&e, 2), vec![(60, 39, 0)]);
}

#[test]
fn lav_of_exactly_40_from_fractional_means_means_no_toll() {
    let input = scenario::lav_at_40();
    let e = input.expected("");
    // LAV(3) = trunc((39.5 + 40.5) / 2) = 40, so no toll. (Flooring each
    // mean first gives (39 + 40) / 2 -> 39 and a toll of 200.)
    assert_eq!(tolls_of(&e, 500), vec![(120, 40, 0)]);
}

#[test]
fn minutes_without_reports_inside_the_window_do_not_count() {
    let input = scenario::lav_with_empty_minutes();
    let e = input.expected("");
    // LAV(6) over minutes 1..=5 with reports (1 and 4): trunc((30.5 + 49) /
    // 2) = trunc(39.75) = 39 (not (30.5 + 49) / 5).
    assert_eq!(tolls_of(&e, 500), vec![(300, 39, 0)]);
    // LAV(7) over 2..=6 (4 and 6): trunc((49 + 20) / 2) = trunc(34.5) = 34.
    assert_eq!(tolls_of(&e, 501), vec![(360, 34, 0)]);
}

#[test]
fn daily_expenditure_reads_history_and_drops_day_0() {
    let history = "7,3,0,42\n7,4,0,11\n7,3,1,5\n8,3,0,99\n";
    let mut input = Input::default();
    input
        .expenditure(10, 7, 0, 1, 3)
        .expenditure(10, 7, 1, 2, 3)
        .expenditure(11, 7, 0, 3, 5)
        .expenditure(12, 7, 0, 4, 0)
        .expenditure(13, 8, 0, 5, 3);
    let e = input.expected(history);
    let rows: Vec<(u32, i64, i64)> = e
        .expenditures
        .iter()
        .map(|r| (r.time, r.qid, r.bal))
        .collect();
    assert_eq!(rows, vec![(10, 1, 42), (10, 2, 5), (11, 3, 0), (13, 5, 99)]);
}

#[test]
fn travel_time_queries_are_accepted_and_ignored() {
    let input = "4,0,1,-1,0,-1,-1,-1,-1,7,1,5,1,100,-1\n0,1,1,50,0,1,0,0,10,-1,-1,-1,-1,-1,-1\n";
    let e = try_expected(input, "").unwrap();
    assert_eq!(e.tolls.len(), 1);
    assert!(e.balances.is_empty() && e.expenditures.is_empty());
}

/// The error's line number and message.
fn input_error(input: &str, history: &str) -> (String, u64, String) {
    match try_expected(input, history) {
        Err(ValidateError::Input {
            path,
            line,
            message,
        }) => (path.display().to_string(), line, message),
        other => panic!("expected an input error, got {other:?}"),
    }
}

#[test]
fn time_going_backwards_is_an_error_on_its_line() {
    let input = "0,0,1,50,0,1,0,0,10,-1,-1,-1,-1,-1,-1\n\
                 0,30,1,50,0,1,0,0,20,-1,-1,-1,-1,-1,-1\n\
                 \n\
                 0,29,2,50,0,1,0,0,30,-1,-1,-1,-1,-1,-1\n";
    let (path, line, message) = input_error(input, "");
    assert_eq!(path, "<input>");
    assert_eq!(line, 4);
    assert!(
        message.contains("Time 29 is before an earlier line's Time 30"),
        "{message}"
    );
}

#[test]
fn bad_lines_are_skipped_and_listed_by_number_by_default() {
    // Line 2 has a negative speed and Time 40; line 3 goes back to 35, which
    // is before line 2's Time even though line 2 was skipped; line 4 is
    // fine; line 5 has too few fields.
    let input = "0,0,1,50,0,1,0,0,10,-1,-1,-1,-1,-1,-1\n\
                 0,40,2,-1,0,1,0,0,10,-1,-1,-1,-1,-1,-1\n\
                 0,35,3,50,0,1,0,0,10,-1,-1,-1,-1,-1,-1\n\
                 0,60,4,50,0,1,0,0,10,-1,-1,-1,-1,-1,-1\n\
                 0,61,5\n";
    let e = skipping_bad_lines(input);
    let lines: Vec<u64> = e.skipped.iter().map(|s: &SkippedLine| s.line).collect();
    assert_eq!(lines, vec![2, 3, 5]);
    assert!(e.skipped[0].message.contains("Spd -1"), "{:?}", e.skipped);
    assert!(e.skipped[1].message.contains("Time 35"), "{:?}", e.skipped);
    // The good lines are answered: cars 1 and 4 entered (LAV(2) = 50 from car 1).
    assert_eq!(tolls_of(&e, 1), vec![(0, -1, 0)]);
    assert_eq!(tolls_of(&e, 4), vec![(60, 50, 0)]);
    assert_eq!(e.tolls.len(), 2);
}

#[test]
fn malformed_and_out_of_range_lines_are_errors_on_their_line() {
    let good = "0,0,1,50,0,1,0,0,10,-1,-1,-1,-1,-1,-1\n";
    let cases = [
        ("0,1,1,50,0,1,0,0,10,-1,-1,-1,-1,-1\n", "expected 15"),
        ("0,1,1,50,0,1,0,0,10,-1,-1,-1,-1,-1,-1,-1\n", "found 16"),
        ("0,1,x,50,0,1,0,0,10,-1,-1,-1,-1,-1,-1\n", "field 3 (VID)"),
        ("0,1,1,50,0,5,0,0,10,-1,-1,-1,-1,-1,-1\n", "Lane 5"),
        ("0,1,1,50,0,1,2,0,10,-1,-1,-1,-1,-1,-1\n", "Dir 2"),
        ("0,1,1,50,0,1,0,0,528000,-1,-1,-1,-1,-1,-1\n", "Pos 528000"),
        (
            "0,1,1,50,0,1,0,1,10,-1,-1,-1,-1,-1,-1\n",
            "Seg 1 does not match Pos 10",
        ),
        ("0,1,-3,50,0,1,0,0,10,-1,-1,-1,-1,-1,-1\n", "VID -3"),
        ("0,1,1,50,1000,1,0,0,10,-1,-1,-1,-1,-1,-1\n", "XWay 1000"),
        ("2,1,1,-1,-1,-1,-1,-1,-1,-1,-1,-1,-1,-1,-1\n", "QID -1"),
        ("3,1,1,-1,0,-1,-1,-1,-1,4,-1,-1,-1,-1,70\n", "Day 70"),
        ("5,1,1,-1,0,-1,-1,-1,-1,4,-1,-1,-1,-1,7\n", "Type 5"),
    ];
    for (bad, what) in cases {
        let input = format!("{good}{good}{bad}{good}");
        let (_, line, message) = input_error(&input, "");
        assert_eq!(line, 3, "{bad}");
        assert!(message.contains(what), "{bad} gave {message}");
    }
}

#[test]
fn history_errors_name_the_history_and_its_line() {
    let (path, line, message) = input_error("", "1,1,0,5\n1,0,0,5\n");
    assert_eq!((path.as_str(), line), ("<history>", 2));
    assert!(message.contains("Day 0"), "{message}");
    let (_, line, message) = input_error("", "1,1,0,5\n2,1,0,5\n1,1,0,6\n");
    assert_eq!(line, 3);
    assert!(
        message.contains("a second toll for VID 1, Day 1, XWay 0"),
        "{message}"
    );
    let (_, line, message) = input_error("", "1,1,0\n");
    assert_eq!(line, 1);
    assert!(message.contains("expected 4"), "{message}");
}
