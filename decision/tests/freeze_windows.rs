//! Freeze windows: parsing, when they are active, how occurrences merge, and the
//! daylight-saving rules (Europe/Berlin, 2026: clocks go forward on 29 March at 02:00
//! CET and back on 25 October at 03:00 CEST).

use stella_decision::format_time;
use stella_decision::freeze::{
    active_freeze, ActiveFreeze, FreezeWindow, CHAIN_HORIZON_MS, MAX_CHAINED_OCCURRENCES,
};

fn ms(rfc3339: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(rfc3339)
        .expect("test times are RFC 3339")
        .timestamp_millis()
}

fn window(spec: &str) -> FreezeWindow {
    FreezeWindow::parse(spec).expect("test specs are valid")
}

/// The starts of a window from `from` on, as RFC 3339 UTC.
fn starts(window: &FreezeWindow, from: &str, count: usize) -> Vec<String> {
    let mut at = ms(from);
    let mut out = Vec::new();
    for _ in 0..count {
        let Some(next) = window.next_start_after(at) else {
            break;
        };
        out.push(format_time(next));
        at = next;
    }
    out
}

const FRIDAY_BERLIN: &str = "0 18 * * FRI/64h@Europe/Berlin";

#[test]
fn friday_evening_freeze_is_active_on_saturday_and_ends_monday_ten_local_in_winter() {
    let w = window(FRIDAY_BERLIN);
    let freeze = w
        .active_at(ms("2026-01-10T12:00:00Z"))
        .expect("frozen on Saturday");
    assert_eq!(
        freeze,
        ActiveFreeze {
            window: FRIDAY_BERLIN.to_string(),
            // Friday 18:00 CET
            started_at_ms: ms("2026-01-09T17:00:00Z"),
            // Monday 10:00 CET
            ends_at_ms: ms("2026-01-12T09:00:00Z"),
        }
    );
}

#[test]
fn friday_evening_freeze_ends_monday_ten_local_in_summer() {
    let w = window(FRIDAY_BERLIN);
    let freeze = w
        .active_at(ms("2026-07-12T23:00:00Z"))
        .expect("frozen on Sunday night");
    // Friday 18:00 CEST to Monday 10:00 CEST.
    assert_eq!(freeze.started_at_ms, ms("2026-07-10T16:00:00Z"));
    assert_eq!(freeze.ends_at_ms, ms("2026-07-13T08:00:00Z"));
}

#[test]
fn friday_evening_freeze_is_not_active_on_thursday() {
    let w = window(FRIDAY_BERLIN);
    assert_eq!(w.active_at(ms("2026-01-08T12:00:00Z")), None);
    assert_eq!(w.active_at(ms("2026-01-14T12:00:00Z")), None, "Wednesday");
    assert_eq!(
        w.next_start_after(ms("2026-01-08T12:00:00Z")),
        Some(ms("2026-01-09T17:00:00Z"))
    );
}

#[test]
fn a_freeze_includes_its_start_and_excludes_its_end() {
    let w = window(FRIDAY_BERLIN);
    let start = ms("2026-01-09T17:00:00Z");
    let end = ms("2026-01-12T09:00:00Z");
    assert_eq!(
        w.active_at(start - 1),
        None,
        "a millisecond before the start"
    );
    assert_eq!(w.active_at(start).map(|f| f.started_at_ms), Some(start));
    assert_eq!(w.active_at(end - 1).map(|f| f.ends_at_ms), Some(end));
    assert_eq!(
        w.active_at(end),
        None,
        "promotions are allowed again at the end"
    );
    // next_start_after is strict.
    assert_eq!(w.next_start_after(start - 1), Some(start));
    assert_eq!(w.next_start_after(start), Some(ms("2026-01-16T17:00:00Z")));
}

#[test]
fn the_duration_is_elapsed_time_across_the_spring_forward_weekend() {
    let w = window(FRIDAY_BERLIN);
    let freeze = w
        .active_at(ms("2026-03-29T12:00:00Z"))
        .expect("frozen on the Sunday");
    // Friday 18:00 CET plus 64 hours is Monday 11:00 CEST, not 10:00.
    assert_eq!(freeze.started_at_ms, ms("2026-03-27T17:00:00Z"));
    assert_eq!(freeze.ends_at_ms, ms("2026-03-30T09:00:00Z"));
}

#[test]
fn the_duration_is_elapsed_time_across_the_fall_back_weekend() {
    let w = window(FRIDAY_BERLIN);
    let freeze = w
        .active_at(ms("2026-10-25T12:00:00Z"))
        .expect("frozen on the Sunday");
    // Friday 18:00 CEST plus 64 hours is Monday 09:00 CET.
    assert_eq!(freeze.started_at_ms, ms("2026-10-23T16:00:00Z"));
    assert_eq!(freeze.ends_at_ms, ms("2026-10-26T08:00:00Z"));
}

#[test]
fn a_fixed_time_start_in_the_spring_forward_gap_happens_when_the_gap_ends() {
    // 02:30 does not exist in Berlin on 29 March 2026; the window starts at 03:00 CEST.
    let w = window("30 2 * * */1h@Europe/Berlin");
    assert_eq!(
        starts(&w, "2026-03-28T12:00:00Z", 2),
        ["2026-03-29T01:00:00.000Z", "2026-03-30T00:30:00.000Z"]
    );
    let gap_end = ms("2026-03-29T01:00:00Z");
    assert_eq!(w.next_start_after(gap_end - 1), Some(gap_end));
    assert_eq!(
        w.active_at(gap_end).map(|f| f.ends_at_ms),
        Some(gap_end + 3_600_000)
    );
    assert_eq!(w.active_at(gap_end - 1), None);
}

#[test]
fn interval_starts_in_the_spring_forward_gap_do_not_happen() {
    let w = window("*/30 2 * * */1h@Europe/Berlin");
    assert_eq!(
        starts(&w, "2026-03-28T12:00:00Z", 2),
        ["2026-03-30T00:00:00.000Z", "2026-03-30T00:30:00.000Z"]
    );
}

#[test]
fn a_fixed_time_start_in_the_fall_back_overlap_happens_once_at_the_first_instant() {
    // 02:30 happens twice in Berlin on 25 October 2026: 00:30Z (CEST) and 01:30Z (CET).
    let w = window("30 2 * * */1h@Europe/Berlin");
    assert_eq!(
        starts(&w, "2026-10-24T12:00:00Z", 2),
        ["2026-10-25T00:30:00.000Z", "2026-10-26T01:30:00.000Z"]
    );
    assert_eq!(
        w.active_at(ms("2026-10-25T01:45:00Z")),
        None,
        "the second 02:45 is not frozen"
    );
}

#[test]
fn interval_starts_in_the_fall_back_overlap_happen_at_both_instants_in_order() {
    let w = window("0,30 2 * * */1m@Europe/Berlin");
    assert_eq!(
        starts(&w, "2026-10-24T12:00:00Z", 5),
        [
            "2026-10-25T00:00:00.000Z",
            "2026-10-25T00:30:00.000Z",
            "2026-10-25T01:00:00.000Z",
            "2026-10-25T01:30:00.000Z",
            "2026-10-26T01:00:00.000Z",
        ]
    );
    // From inside the first 02:xx hour, the next start is a second-hour one.
    assert_eq!(
        w.next_start_after(ms("2026-10-25T00:40:00Z")),
        Some(ms("2026-10-25T01:00:00Z"))
    );
    // From inside the second 02:xx hour.
    assert_eq!(
        w.next_start_after(ms("2026-10-25T01:10:00Z")),
        Some(ms("2026-10-25T01:30:00Z"))
    );
    // Every minute of the repeated hour starts twice.
    let every_minute = window("* 2 * * */1m@Europe/Berlin");
    let all = starts(&every_minute, "2026-10-24T23:59:00Z", 130);
    let on_the_day: Vec<_> = all.iter().filter(|t| t.starts_with("2026-10-25")).collect();
    assert_eq!(on_the_day.len(), 120);
}

#[test]
fn an_hourly_window_stays_continuous_through_the_repeated_hour() {
    // Hourly, one hour long: frozen without a break, including the repeated hour.
    let w = window("0 * * * */1h@Europe/Berlin");
    for at in [
        "2026-10-25T00:30:00Z",
        "2026-10-25T01:00:00Z",
        "2026-10-25T01:59:59Z",
    ] {
        assert!(w.active_at(ms(at)).is_some(), "active at {at}");
    }
}

/// Brute force over every minute of a few days around each change: the starts the
/// search finds are exactly those of the rules written out directly.
#[test]
fn starts_agree_with_a_minute_by_minute_reading_of_the_rules() {
    use chrono::{TimeZone as _, Timelike as _};
    let zone: chrono_tz::Tz = "Europe/Berlin".parse().expect("zone");
    let patterns = [
        ("*/20 * * * *", false),
        ("0,30 1-3 * * *", false),
        ("15 2 * * *", true),
        ("0 3 * * *", true),
        ("45 1 * * SUN", true),
    ];
    for (from, to) in [
        ("2026-03-27T00:00:00Z", "2026-03-31T00:00:00Z"),
        ("2026-10-23T00:00:00Z", "2026-10-27T00:00:00Z"),
    ] {
        for (cron, fixed) in patterns {
            let w = window(&format!("{cron}/1m@Europe/Berlin"));
            let matcher: croner::Cron = cron.parse().expect("cron");
            let wall_matches = |wall: chrono::NaiveDateTime| {
                matcher
                    .is_time_matching(&chrono::Utc.from_utc_datetime(&wall))
                    .expect("match")
            };
            let wall_of = |instant: i64| {
                chrono::DateTime::from_timestamp_millis(instant)
                    .expect("instant")
                    .with_timezone(&zone)
                    .naive_local()
            };
            let mut expected = Vec::new();
            let mut instant = ms(from);
            while instant < ms(to) {
                let wall = wall_of(instant);
                let previous = wall_of(instant - 60_000);
                let start = if !fixed {
                    wall_matches(wall)
                } else if previous + chrono::Duration::minutes(1) < wall {
                    // The clock jumped: this instant also stands for the skipped times.
                    let mut skipped = previous + chrono::Duration::minutes(1);
                    let mut any = wall_matches(wall);
                    while skipped < wall {
                        any |= wall_matches(skipped);
                        skipped += chrono::Duration::minutes(1);
                    }
                    any
                } else {
                    // Only the first instant showing this wall-clock time.
                    let first = zone.from_local_datetime(&wall).earliest().expect("exists");
                    wall_matches(wall) && first.timestamp_millis() == instant
                };
                if start {
                    assert_eq!(wall.second(), 0);
                    expected.push(format_time(instant));
                }
                instant += 60_000;
            }
            let mut found = Vec::new();
            let mut at = ms(from) - 1;
            while let Some(next) = w.next_start_after(at) {
                if next >= ms(to) {
                    break;
                }
                found.push(format_time(next));
                at = next;
            }
            assert_eq!(found, expected, "{cron} from {from}");
            assert!(!expected.is_empty(), "{cron} from {from} is a real check");
        }
    }
}

#[test]
fn a_window_without_a_zone_is_in_utc() {
    let w = window("0 12 * * */1h");
    assert_eq!(w.time_zone(), "UTC");
    assert_eq!(w.duration_ms(), 3_600_000);
    let freeze = w.active_at(ms("2026-05-05T12:30:00Z")).expect("active");
    assert_eq!(freeze.started_at_ms, ms("2026-05-05T12:00:00Z"));
    assert_eq!(freeze.ends_at_ms, ms("2026-05-05T13:00:00Z"));
    assert_eq!(w.active_at(ms("2026-05-05T13:00:00Z")), None);
}

#[test]
fn back_to_back_and_overlapping_occurrences_merge() {
    // 09:00-12:00 and 12:00-15:00 touch: one freeze until 15:00.
    let touching = window("0 9,12 * * */3h");
    let freeze = touching
        .active_at(ms("2026-05-05T10:00:00Z"))
        .expect("active");
    assert_eq!(freeze.started_at_ms, ms("2026-05-05T09:00:00Z"));
    assert_eq!(freeze.ends_at_ms, ms("2026-05-05T15:00:00Z"));
    // 09:00-12:00 and 11:00-14:00 overlap: until 14:00.
    let overlapping = window("0 9,11 * * */3h");
    let freeze = overlapping
        .active_at(ms("2026-05-05T10:00:00Z"))
        .expect("active");
    assert_eq!(freeze.ends_at_ms, ms("2026-05-05T14:00:00Z"));
    // In the overlap, the earliest occurrence containing the instant is reported.
    let freeze = overlapping
        .active_at(ms("2026-05-05T11:30:00Z"))
        .expect("active");
    assert_eq!(freeze.started_at_ms, ms("2026-05-05T09:00:00Z"));
    // With a gap between them, they stay apart.
    let apart = window("0 9,13 * * */3h");
    let freeze = apart.active_at(ms("2026-05-05T10:00:00Z")).expect("active");
    assert_eq!(freeze.ends_at_ms, ms("2026-05-05T12:00:00Z"));
    assert_eq!(apart.active_at(ms("2026-05-05T12:30:00Z")), None);
}

#[test]
fn a_minute_by_minute_window_for_an_hour_merges_into_the_hour() {
    let w = window("* 9 * * */1m");
    let freeze = w.active_at(ms("2026-05-05T09:30:20Z")).expect("active");
    assert_eq!(freeze.started_at_ms, ms("2026-05-05T09:30:00Z"));
    assert_eq!(freeze.ends_at_ms, ms("2026-05-05T10:00:00Z"));
}

#[test]
fn a_chain_that_never_ends_is_cut_at_a_far_end_instead_of_looping() {
    let at = ms("2026-05-05T12:00:00Z");
    // Every day for a day: frozen for good. The search stops a year ahead.
    let daily = window("0 0 * * */24h");
    let freeze = daily.active_at(at).expect("always active");
    assert_eq!(freeze.started_at_ms, ms("2026-05-05T00:00:00Z"));
    assert!(
        freeze.ends_at_ms >= at + CHAIN_HORIZON_MS,
        "{}",
        format_time(freeze.ends_at_ms)
    );
    assert!(freeze.ends_at_ms <= at + CHAIN_HORIZON_MS + 86_400_000);
    // Every minute for a minute: the chain is cut after a bounded number of steps.
    let dense = window("* * * * */1m");
    let freeze = dense.active_at(at).expect("always active");
    assert_eq!(freeze.started_at_ms, at);
    assert!(
        freeze.ends_at_ms > at + 3_600_000,
        "{}",
        format_time(freeze.ends_at_ms)
    );
    assert!(freeze.ends_at_ms <= at + (MAX_CHAINED_OCCURRENCES as i64 + 1) * 60_000);
    // Overlapping occurrences every six hours for eight: cut after so many occurrences.
    let overlapping = window("0 */6 * * */8h");
    let freeze = overlapping.active_at(at).expect("always active");
    let six_hours = 6 * 3_600_000;
    assert!(freeze.ends_at_ms >= at + (MAX_CHAINED_OCCURRENCES as i64 - 1) * six_hours);
}

#[test]
fn yearly_windows_and_leap_days() {
    // Christmas in Berlin, three days from midnight on the 24th.
    let christmas = window("0 0 24 12 */3d@Europe/Berlin");
    let freeze = christmas
        .active_at(ms("2026-12-25T12:00:00Z"))
        .expect("active");
    assert_eq!(freeze.started_at_ms, ms("2026-12-23T23:00:00Z"));
    assert_eq!(freeze.ends_at_ms, ms("2026-12-26T23:00:00Z"));
    assert_eq!(christmas.active_at(ms("2026-06-01T00:00:00Z")), None);
    assert_eq!(
        christmas.next_start_after(ms("2026-06-01T00:00:00Z")),
        Some(ms("2026-12-23T23:00:00Z"))
    );
    // Rare, not never: 29 February on a Monday (2016, 2044).
    let rare = window("0 0 29 2 +MON/1d");
    assert_eq!(
        rare.next_start_after(ms("2017-01-01T00:00:00Z")),
        Some(ms("2044-02-29T00:00:00Z"))
    );
    let leap_day = window("0 0 29 FEB */1d");
    assert_eq!(
        leap_day.next_start_after(ms("2026-03-01T00:00:00Z")),
        Some(ms("2028-02-29T00:00:00Z"))
    );
}

#[test]
fn day_of_month_and_day_of_week_match_either_unless_plus_asks_for_both() {
    // 1 January 2026 is a Thursday.
    let either = window("0 0 13 * FRI/1h");
    assert_eq!(
        starts(&either, "2026-01-01T00:00:00Z", 3),
        [
            "2026-01-02T00:00:00.000Z", // Friday
            "2026-01-09T00:00:00.000Z", // Friday
            "2026-01-13T00:00:00.000Z", // Tuesday the 13th
        ]
    );
    let both = window("0 0 13 * +FRI/1h");
    assert_eq!(
        starts(&both, "2026-01-01T00:00:00Z", 2),
        ["2026-02-13T00:00:00.000Z", "2026-03-13T00:00:00.000Z"]
    );
    // A restricted day of month alone still works as in crontab(5).
    let first_of_month = window("0 6 1 * */1h");
    assert_eq!(
        starts(&first_of_month, "2026-01-15T00:00:00Z", 1),
        ["2026-02-01T06:00:00.000Z"]
    );
}

#[test]
fn names_ranges_lists_and_steps_parse() {
    let w = window("*/15 9-17 * JAN-MAR,DEC MON-FRI/15m@America/New_York");
    assert_eq!(w.time_zone(), "America/New_York");
    assert_eq!(w.duration_ms(), 15 * 60_000);
    // From Saturday 3 January 2026: Monday the 5th, 09:00 EST.
    assert_eq!(
        starts(&w, "2026-01-03T12:00:00Z", 2),
        ["2026-01-05T14:00:00.000Z", "2026-01-05T14:15:00.000Z"]
    );
    // During the day the quarter-hours touch: frozen from 09:00 to 18:00 local.
    let freeze = w.active_at(ms("2026-01-05T15:05:00Z")).expect("active");
    assert_eq!(freeze.started_at_ms, ms("2026-01-05T15:00:00Z"));
    assert_eq!(freeze.ends_at_ms, ms("2026-01-05T23:00:00Z"));
    assert_eq!(w.active_at(ms("2026-01-05T23:00:00Z")), None);
    // Lowercase names and the last Friday of the month.
    let last_friday = window("0 18 * * 5#L/2h30m");
    assert_eq!(last_friday.duration_ms(), 9_000_000);
    assert_eq!(
        starts(&last_friday, "2026-01-01T00:00:00Z", 1),
        ["2026-01-30T18:00:00.000Z"]
    );
    assert!(FreezeWindow::parse("0 18 * * fri/1w").is_ok());
}

#[test]
fn durations_add_their_terms() {
    for (text, expected_ms) in [
        ("64h", 64 * 3_600_000),
        ("2h30m", 9_000_000),
        ("1d", 86_400_000),
        ("1w", 7 * 86_400_000),
        ("90s", 90_000),
        ("1d12h", 36 * 3_600_000),
        ("366d", 366 * 86_400_000),
    ] {
        let w = window(&format!("0 0 * * */{text}"));
        assert_eq!(w.duration_ms(), expected_ms, "{text}");
    }
}

#[test]
fn invalid_specs_are_refused_with_the_spec_and_the_part_named() {
    let cases = [
        (
            "0 18 * * FRI/64h@Europe/Berln",
            "freeze window `0 18 * * FRI/64h@Europe/Berln`: unknown time zone `Europe/Berln`",
        ),
        (
            "0 18 * * FRI 64h",
            "freeze window `0 18 * * FRI 64h`: missing `/`",
        ),
        (
            "0 18 * * FRI/64h@",
            "freeze window `0 18 * * FRI/64h@`: empty time zone",
        ),
        (
            "0 18 * FRI/64h",
            "freeze window `0 18 * FRI/64h`: cron `0 18 * FRI` has 4 fields, expected 5",
        ),
        (
            "0 0 18 * * FRI/64h",
            "cron `0 0 18 * * FRI` has 6 fields, expected 5",
        ),
        (
            "61 18 * * FRI/64h",
            "freeze window `61 18 * * FRI/64h`: invalid cron `61 18 * * FRI`",
        ),
        ("0 18 * * FUN/64h", "invalid cron `0 18 * * FUN`"),
        ("0 0 31 4 */1h", "cron `0 0 31 4 *` never matches a date"),
        (
            "0 0 30 2 +MON/1h",
            "cron `0 0 30 2 +MON` never matches a date",
        ),
        ("0 18 * * FRI/64", "invalid duration `64`: `64` has no unit"),
        (
            "0 18 * * FRI/64x",
            "invalid duration `64x`: unknown unit `x`",
        ),
        (
            "0 18 * * FRI/h",
            "invalid duration `h`: unit `h` without a number",
        ),
        (
            "0 18 * * FRI/0h",
            "invalid duration `0h`: must be longer than zero",
        ),
        (
            "0 18 * * FRI/367d",
            "invalid duration `367d`: longer than 366 days",
        ),
        (
            "0 18 * * FRI/99999999999999999999w",
            "invalid duration `99999999999999999999w`",
        ),
        ("0 18 * * FRI/", "invalid duration ``: empty"),
        ("0 18 * * FRI/-1h", "unknown unit `-`"),
        (
            "@daily/1h",
            "cron nicknames such as `@daily` are not supported",
        ),
        ("", "freeze window ``: empty"),
    ];
    for (spec, expected) in cases {
        let error = FreezeWindow::parse(spec).expect_err(spec).to_string();
        assert!(error.contains(expected), "{spec}: {error}");
        assert!(!error.contains('\n'), "one line: {error}");
    }
}

#[test]
fn a_window_serializes_as_its_spec_and_parses_back() {
    let w: FreezeWindow = FRIDAY_BERLIN.parse().expect("valid");
    assert_eq!(w.to_string(), FRIDAY_BERLIN);
    assert_eq!(w.spec(), FRIDAY_BERLIN);
    let json = serde_json::to_string(&w).expect("serializes");
    assert_eq!(json, format!("\"{FRIDAY_BERLIN}\""));
    let back: FreezeWindow = serde_json::from_str(&json).expect("deserializes");
    assert_eq!(back, w);
    let bad = serde_json::from_str::<FreezeWindow>("\"0 18 * * FRI/64q\"").expect_err("invalid");
    assert!(bad.to_string().contains("unknown unit `q`"), "{bad}");
    let freeze = w.active_at(ms("2026-01-10T12:00:00Z")).expect("active");
    assert_eq!(
        serde_json::to_value(&freeze).expect("serializes"),
        serde_json::json!({
            "window": FRIDAY_BERLIN,
            "started_at_ms": ms("2026-01-09T17:00:00Z"),
            "ends_at_ms": ms("2026-01-12T09:00:00Z"),
        })
    );
}

#[test]
fn with_several_windows_the_freeze_ending_last_is_reported() {
    let windows = [window(FRIDAY_BERLIN), window("0 0 * * SAT/72h")];
    let freeze = active_freeze(&windows, ms("2026-01-10T12:00:00Z")).expect("frozen");
    assert_eq!(freeze.window, "0 0 * * SAT/72h");
    assert_eq!(freeze.started_at_ms, ms("2026-01-10T00:00:00Z"));
    assert_eq!(freeze.ends_at_ms, ms("2026-01-13T00:00:00Z"));
    // Friday evening: only the first is active.
    let freeze = active_freeze(&windows, ms("2026-01-09T20:00:00Z")).expect("frozen");
    assert_eq!(freeze.window, FRIDAY_BERLIN);
    // ...but the second starts before it ends, so promotions resume only after both.
    assert_eq!(freeze.ends_at_ms, ms("2026-01-13T00:00:00Z"));
    assert_eq!(active_freeze(&windows, ms("2026-01-08T12:00:00Z")), None);
    assert_eq!(active_freeze(&[], ms("2026-01-08T12:00:00Z")), None);
}

#[test]
fn a_freeze_running_into_another_window_ends_when_the_last_one_does() {
    let windows = [
        window("0 9 * * MON/2h"),
        window("0 11 * * MON/2h"),
        window("0 13 * * MON/1h"),
    ];
    // Monday 5 January 2026, 10:00: three windows back to back, 09:00 to 14:00.
    let freeze = active_freeze(&windows, ms("2026-01-05T10:00:00Z")).expect("frozen");
    assert_eq!(freeze.window, "0 9 * * MON/2h");
    assert_eq!(freeze.started_at_ms, ms("2026-01-05T09:00:00Z"));
    assert_eq!(freeze.ends_at_ms, ms("2026-01-05T14:00:00Z"));
    assert_eq!(active_freeze(&windows, ms("2026-01-05T14:00:00Z")), None);
}

#[test]
fn the_same_question_gives_the_same_answer() {
    let w = window(FRIDAY_BERLIN);
    let at = ms("2026-01-10T12:00:00Z");
    assert_eq!(w.active_at(at), w.active_at(at));
    assert_eq!(w.active_at(at), window(FRIDAY_BERLIN).active_at(at));
}

#[test]
fn times_at_the_edge_of_the_range_do_not_panic() {
    let w = window(FRIDAY_BERLIN);
    for at in [i64::MIN, i64::MIN + 1, -1, 0, i64::MAX - 1, i64::MAX] {
        let _ = w.active_at(at);
        let _ = w.next_start_after(at);
        let _ = active_freeze(std::slice::from_ref(&w), at);
    }
    // Before 1970 works too.
    assert_eq!(
        w.next_start_after(ms("1969-12-31T00:00:00Z")),
        Some(ms("1970-01-02T17:00:00Z"))
    );
}

/// Prints how long a decision's freeze check takes (no assertion: timing depends on
/// the machine and the build profile).
#[test]
fn prints_the_time_an_active_at_takes() {
    let cases = [
        (FRIDAY_BERLIN, "2026-01-10T12:00:00Z"),
        (FRIDAY_BERLIN, "2026-01-08T12:00:00Z"),
        ("0 0 24 12 */3d@Europe/Berlin", "2026-06-01T00:00:00Z"),
        ("*/5 9-17 * * MON-FRI/5m", "2026-01-05T12:00:00Z"),
        ("* * * * */1m", "2026-01-05T12:00:00Z"),
        ("0 0 * * */24h", "2026-01-05T12:00:00Z"),
    ];
    for (spec, at) in cases {
        let w = window(spec);
        let at = ms(at);
        let mut samples = Vec::new();
        for _ in 0..31 {
            let started = std::time::Instant::now();
            std::hint::black_box(w.active_at(std::hint::black_box(at)));
            samples.push(started.elapsed());
        }
        samples.sort();
        println!(
            "active_at `{spec}`: median {:?}",
            samples[samples.len() / 2]
        );
    }
}
