//! Freeze windows: `CRON/DURATION[@TZ]`.
//!
//! An environment may carry freeze windows (`stella env create prod --freeze
//! '0 18 * * FRI/64h@Europe/Berlin'`). A window starts at every match of its cron
//! expression and lasts DURATION; while one is active, promotions to the
//! environment are refused.
//!
//! # The spec
//!
//! - **CRON**: five fields, `minute hour day-of-month month day-of-week`, as in
//!   crontab(5): `*`, numbers, ranges `1-5`, lists `1,15`, steps `*/15` or `9-17/2`,
//!   month names `JAN`–`DEC` and weekday names `SUN`–`SAT` (0 and 7 are Sunday),
//!   case-insensitive. The extensions of the `croner` crate are accepted too: `L` (last
//!   day of the month, or `5#L` the last Friday), `5#2` (second Friday), `15W`
//!   (weekday nearest the 15th), `?` (same as `*`). Six-field (seconds) and
//!   seven-field (years) patterns and nicknames such as `@daily` are refused.
//! - **Day of month and day of week**: when both are restricted (neither is `*`), a day
//!   matches when *either* matches, as crontab(5) and Vixie cron document:
//!   `0 0 13 * FRI` is every 13th and every Friday. Prefix the day-of-week field with
//!   `+` to require both: `0 0 13 * +FRI` is Friday the 13th only. (As in `croner`, only
//!   a field that is exactly `*` counts as unrestricted; `*/2` is a restriction.)
//! - **DURATION**: one or more `<integer><unit>` with units `w`, `d`, `h`, `m`, `s`
//!   (`64h`, `2h30m`, `1d`); more than zero and at most 366 days.
//! - **TZ**: an IANA time zone name (`Europe/Berlin`), UTC when omitted.
//!
//! The spec splits at the last `@` (time zone) and then at the last `/` (duration),
//! so steps in the cron (`*/15`) and zone names with `/` need no quoting.
//!
//! # Time semantics
//!
//! The cron is matched against the wall clock of the window's time zone; the duration
//! is elapsed time. `0 18 * * FRI/64h@Europe/Berlin` starts at 18:00 Berlin time every
//! Friday and ends 64 hours later: Monday 10:00 local, except on the weekends the
//! clocks change (the last Sunday of March it ends 11:00 CEST, of October 09:00 CET).
//!
//! Around daylight-saving changes the rules of the `croner` crate apply (the Open Cron
//! Pattern Specification's, after Vixie cron). A pattern is *fixed-time* when its
//! minute and hour fields are single values (`30 2 * * *`) and *interval* otherwise
//! (`*/15 2 * * *`, `0 * * * *`):
//!
//! - **Gap** (spring forward, 02:00 becomes 03:00): a fixed-time window whose start
//!   falls in the gap starts when the gap ends (03:00 that day); interval matches in
//!   the gap do not happen.
//! - **Overlap** (fall back, 03:00 becomes 02:00): a fixed-time window starts once, at
//!   the first of the two instants; an interval window starts at both.
//!
//! The search applies these rules itself (with `croner` matching wall-clock times
//! only), so that starts come out in order of absolute time and none is skipped when
//! the evaluation time itself lies in an overlap.
//!
//! # Merging and bounds
//!
//! Occurrences that overlap or touch (one starts exactly when another ends) form one
//! freeze: [`ActiveFreeze::ends_at_ms`] is when promotions are allowed again. A chain
//! that never ends (`0 0 * * */24h`, `* * * * */1m`) is followed for at most
//! [`MAX_CHAINED_OCCURRENCES`] occurrences or [`CHAIN_HORIZON_MS`] past the evaluation
//! time; the end reported then is a lower bound (the freeze lasts at least that long),
//! which keeps every decision fast whatever the spec.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Datelike, NaiveDate, NaiveDateTime, Offset, TimeZone, Utc};
use chrono_tz::Tz;
use croner::parser::{CronParser, Seconds, Year};
use croner::{Cron, JobType};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::DecisionError;

/// The longest duration a window may have: 366 days, in milliseconds.
pub const MAX_DURATION_MS: i64 = 366 * DAY_MS;

/// How far past the evaluation time a chain of touching occurrences is followed (366
/// days); a freeze still running there is reported as ending at the end of the chain
/// found so far.
pub const CHAIN_HORIZON_MS: i64 = 366 * DAY_MS;

/// How many occurrences of one window a chain follows at most; a freeze still running
/// after that many is reported as ending at the end of the last one.
pub const MAX_CHAINED_OCCURRENCES: usize = 1024;

/// How many windows' chains [`active_freeze`] links at most.
const MAX_CROSS_WINDOW_LINKS: usize = 64;

/// Wall-clock matches one start search looks at before giving up. The rules below need
/// at most a handful; the bound only guards against a time zone database oddity.
const MAX_MATCHES_PER_SEARCH: usize = 64;

const SECOND_MS: i64 = 1_000;
const MINUTE_MS: i64 = 60 * SECOND_MS;
const HOUR_MS: i64 = 60 * MINUTE_MS;
const DAY_MS: i64 = 24 * HOUR_MS;

/// A parsed freeze window (`CRON/DURATION[@TZ]`); serializes as its spec string.
#[derive(Clone, Debug)]
pub struct FreezeWindow {
    spec: String,
    cron: Cron,
    duration_ms: i64,
    tz: Tz,
    fixed_time: bool,
}

/// The freeze in force at some instant.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActiveFreeze {
    /// The spec of the window that is active (see [`active_freeze`] when several are).
    pub window: String,
    /// Start of the earliest occurrence that contains the instant, UTC milliseconds.
    /// Earlier occurrences chained to it are not searched for.
    pub started_at_ms: i64,
    /// When promotions are allowed again, UTC milliseconds: the end of the chain of
    /// overlapping or touching occurrences. For a chain longer than the search bounds
    /// (see the module documentation) it is a lower bound.
    pub ends_at_ms: i64,
}

impl FreezeWindow {
    /// Parses `CRON/DURATION[@TZ]`; the error names the spec and the part that is wrong.
    pub fn parse(spec: &str) -> Result<FreezeWindow, DecisionError> {
        let spec = spec.trim();
        let fail = |what: String| DecisionError::new(format!("freeze window `{spec}`: {what}"));

        if spec.is_empty() {
            return Err(DecisionError::new(
                "freeze window ``: empty (expected `CRON/DURATION[@TZ]`, e.g. `0 18 * * FRI/64h@Europe/Berlin`)",
            ));
        }
        if spec.starts_with('@') {
            return Err(fail(
                "cron nicknames such as `@daily` are not supported; write the five fields (`0 0 * * *`)"
                    .to_string(),
            ));
        }
        let (rest, tz) = match spec.rsplit_once('@') {
            Some((rest, zone)) => (rest, parse_time_zone(zone).map_err(fail)?),
            None => (spec, Tz::UTC),
        };
        let Some((cron_text, duration_text)) = rest.rsplit_once('/') else {
            return Err(fail(
                "missing `/` between the cron expression and the duration (expected `CRON/DURATION[@TZ]`, e.g. `0 18 * * FRI/64h@Europe/Berlin`)"
                    .to_string(),
            ));
        };
        let cron = parse_cron(cron_text).map_err(fail)?;
        let duration_ms = parse_duration_ms(duration_text).map_err(fail)?;
        let fixed_time = cron.determine_job_type() == JobType::FixedTime;
        Ok(FreezeWindow {
            spec: spec.to_string(),
            cron,
            duration_ms,
            tz,
            fixed_time,
        })
    }

    /// The spec as written (trimmed).
    pub fn spec(&self) -> &str {
        &self.spec
    }

    /// How long each occurrence lasts, in milliseconds.
    pub fn duration_ms(&self) -> i64 {
        self.duration_ms
    }

    /// The IANA name of the time zone the cron is matched in (`UTC` by default).
    pub fn time_zone(&self) -> &'static str {
        self.tz.name()
    }

    /// The freeze this window imposes at `at_ms` (start <= at < end), with touching or
    /// overlapping occurrences merged into one; `None` when it imposes none.
    pub fn active_at(&self, at_ms: i64) -> Option<ActiveFreeze> {
        let duration = self.duration_ms;
        // Only an occurrence starting in (at - duration, at] contains `at`.
        let started_at_ms = self.first_start_at_or_after(at_ms.saturating_sub(duration - 1))?;
        if started_at_ms > at_ms {
            return None;
        }
        Some(ActiveFreeze {
            window: self.spec.clone(),
            started_at_ms,
            ends_at_ms: self.chain_end(at_ms, started_at_ms.saturating_add(duration)),
        })
    }

    /// The first start of this window strictly after `at_ms`; `None` when there is none
    /// before the year 5000.
    pub fn next_start_after(&self, at_ms: i64) -> Option<i64> {
        self.first_start_at_or_after(at_ms.checked_add(1)?)
    }

    /// Follows occurrences that start before `end_ms` (or exactly at it) and returns the
    /// end of the last one, within the bounds of the module documentation.
    fn chain_end(&self, at_ms: i64, mut end_ms: i64) -> i64 {
        let horizon_ms = at_ms.saturating_add(CHAIN_HORIZON_MS);
        for _ in 0..MAX_CHAINED_OCCURRENCES {
            if end_ms > horizon_ms {
                break;
            }
            // An occurrence starting at or before `end - duration` ends by `end`; only one
            // starting in (end - duration, end] takes the freeze further.
            match self.first_start_at_or_after(end_ms.saturating_sub(self.duration_ms - 1)) {
                Some(start_ms) if start_ms <= end_ms => {
                    end_ms = start_ms.saturating_add(self.duration_ms);
                }
                _ => break,
            }
        }
        end_ms
    }

    /// The first start at or after `t_ms`, in absolute time, under the daylight-saving
    /// rules of the module documentation.
    ///
    /// `croner` runs in UTC here, which makes it a pure wall-clock matcher: it yields the
    /// wall-clock times that match, in order, and this function maps each to the
    /// instants it denotes in the window's zone.
    fn first_start_at_or_after(&self, t_ms: i64) -> Option<i64> {
        let from_wall_clock = self.first_start_from_wall_clock(t_ms);
        if self.fixed_time {
            return from_wall_clock;
        }
        // An interval window also starts at the second instant of each matching
        // wall-clock time of a fall-back overlap; when the clocks go back after `t`,
        // those wall-clock times may read earlier than t's own.
        let repeated = self.first_repeated_start_after(t_ms);
        match (from_wall_clock, repeated) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The first start at or after `t_ms` among the wall-clock times from t's own on.
    fn first_start_from_wall_clock(&self, t_ms: i64) -> Option<i64> {
        // A fixed-time window whose wall-clock time fell in a gap starts when the gap
        // ends; when `t` is exactly that instant, its own wall-clock time is already past
        // the match, so look from the second before.
        let from_ms = if self.fixed_time {
            t_ms.checked_sub(SECOND_MS)?
        } else {
            t_ms
        };
        let mut cursor = naive_ceil_second(from_ms.checked_add(self.offset_ms(from_ms)?)?)?;
        let mut inclusive = true;
        for _ in 0..MAX_MATCHES_PER_SEARCH {
            let wall = self.next_wall_clock_match(cursor, inclusive)?;
            cursor = wall;
            inclusive = false;
            match self.tz.from_local_datetime(&wall) {
                chrono::LocalResult::Single(instant) => {
                    let instant_ms = instant.timestamp_millis();
                    if instant_ms >= t_ms {
                        return Some(instant_ms);
                    }
                }
                chrono::LocalResult::Ambiguous(first, second) => {
                    let (first_ms, second_ms) =
                        (first.timestamp_millis(), second.timestamp_millis());
                    if first_ms >= t_ms {
                        return Some(first_ms);
                    }
                    // `t` is in the repeated hour. A fixed-time window started at the
                    // first instant, which is past; an interval window starts again at
                    // the second, before any later match.
                    if !self.fixed_time && second_ms >= t_ms {
                        return Some(second_ms);
                    }
                }
                chrono::LocalResult::None => {
                    let gap_end_ms = self.gap_end_ms(wall)?;
                    if self.fixed_time {
                        if gap_end_ms >= t_ms {
                            return Some(gap_end_ms);
                        }
                    } else {
                        // Interval matches in the gap do not happen; resume where it ends.
                        let resume = naive_ceil_second(
                            gap_end_ms.checked_add(self.offset_ms(gap_end_ms)?)?,
                        )?;
                        if resume > wall {
                            cursor = resume;
                            inclusive = true;
                        }
                    }
                }
            }
        }
        None
    }

    /// When the clocks go back within two days after `t_ms`: the second instant of the
    /// first matching wall-clock time in the repeated hour, if any.
    fn first_repeated_start_after(&self, t_ms: i64) -> Option<i64> {
        let offset_at_t = self.offset_ms(t_ms)?;
        let horizon_ms = t_ms.checked_add(2 * DAY_MS)?;
        if self.offset_ms(horizon_ms)? >= offset_at_t {
            return None;
        }
        let change_ms = first_instant_where(t_ms, horizon_ms, |instant_ms| {
            Some(self.offset_ms(instant_ms)? != offset_at_t)
        })?;
        // The repeated wall-clock times begin where the clock lands after going back.
        let repeat_from = naive_ceil_second(change_ms.checked_add(self.offset_ms(change_ms)?)?)?;
        let wall = self.next_wall_clock_match(repeat_from, true)?;
        match self.tz.from_local_datetime(&wall) {
            chrono::LocalResult::Ambiguous(_, second) => {
                let second_ms = second.timestamp_millis();
                (second_ms >= t_ms).then_some(second_ms)
            }
            _ => None,
        }
    }

    /// The first wall-clock time matching the cron at or after (or strictly after)
    /// `cursor`.
    fn next_wall_clock_match(
        &self,
        cursor: NaiveDateTime,
        inclusive: bool,
    ) -> Option<NaiveDateTime> {
        let found = self
            .cron
            .find_next_occurrence(&Utc.from_utc_datetime(&cursor), inclusive)
            .ok()?;
        Some(found.naive_utc())
    }

    /// The instant a spring-forward gap containing the wall-clock time `wall` ends: the
    /// first instant whose wall-clock time is `wall` or later.
    fn gap_end_ms(&self, wall: NaiveDateTime) -> Option<i64> {
        // Offsets lie within a day of UTC, and gaps are at most a day long (Samoa, 2011).
        let as_utc_ms = wall.and_utc().timestamp_millis();
        first_instant_where(
            as_utc_ms.checked_sub(2 * DAY_MS)?,
            as_utc_ms.checked_add(2 * DAY_MS)?,
            |instant_ms| {
                Some(naive_utc(instant_ms.checked_add(self.offset_ms(instant_ms)?)?)? >= wall)
            },
        )
    }

    /// The zone's offset from UTC at an instant, in milliseconds.
    fn offset_ms(&self, instant_ms: i64) -> Option<i64> {
        let utc = DateTime::from_timestamp_millis(instant_ms)?.naive_utc();
        let offset = self
            .tz
            .offset_from_utc_datetime(&utc)
            .fix()
            .local_minus_utc();
        Some(i64::from(offset) * SECOND_MS)
    }
}

/// The freeze in force at `at_ms` across several windows: when more than one is
/// active, the one ending last, with its end carried on through any window active at
/// that end (one window's freeze running straight into another's). `None` when no
/// window is active.
pub fn active_freeze(windows: &[FreezeWindow], at_ms: i64) -> Option<ActiveFreeze> {
    let mut freeze = latest_ending(windows, at_ms)?;
    for _ in 0..MAX_CROSS_WINDOW_LINKS {
        match latest_ending(windows, freeze.ends_at_ms) {
            Some(next) if next.ends_at_ms > freeze.ends_at_ms => {
                freeze.ends_at_ms = next.ends_at_ms;
            }
            _ => break,
        }
    }
    Some(freeze)
}

/// Of the windows active at `at_ms`, the one ending last (the first listed on a tie).
fn latest_ending(windows: &[FreezeWindow], at_ms: i64) -> Option<ActiveFreeze> {
    windows
        .iter()
        .filter_map(|window| window.active_at(at_ms))
        .fold(None, |best: Option<ActiveFreeze>, candidate| match best {
            Some(best) if best.ends_at_ms >= candidate.ends_at_ms => Some(best),
            _ => Some(candidate),
        })
}

impl FromStr for FreezeWindow {
    type Err = DecisionError;

    fn from_str(spec: &str) -> Result<FreezeWindow, DecisionError> {
        FreezeWindow::parse(spec)
    }
}

impl fmt::Display for FreezeWindow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.spec)
    }
}

/// Two windows are equal when their specs are.
impl PartialEq for FreezeWindow {
    fn eq(&self, other: &FreezeWindow) -> bool {
        self.spec == other.spec
    }
}

impl Eq for FreezeWindow {}

impl Serialize for FreezeWindow {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.spec)
    }
}

impl<'de> Deserialize<'de> for FreezeWindow {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<FreezeWindow, D::Error> {
        let spec = String::deserialize(deserializer)?;
        FreezeWindow::parse(&spec).map_err(serde::de::Error::custom)
    }
}

fn parse_time_zone(zone: &str) -> Result<Tz, String> {
    if zone.is_empty() {
        return Err(
            "empty time zone after `@` (expected an IANA name such as `Europe/Berlin`)".to_string(),
        );
    }
    zone.parse::<Tz>().map_err(|_| {
        format!("unknown time zone `{zone}` (expected an IANA name such as `Europe/Berlin`)")
    })
}

fn parse_cron(text: &str) -> Result<Cron, String> {
    let text = text.trim();
    let fields = text.split_whitespace().count();
    if fields != 5 {
        return Err(format!(
            "cron `{text}` has {fields} field{}, expected 5 (minute hour day-of-month month day-of-week)",
            if fields == 1 { "" } else { "s" }
        ));
    }
    let cron = CronParser::builder()
        .seconds(Seconds::Disallowed)
        .year(Year::Disallowed)
        .build()
        .parse(text)
        .map_err(|error| format!("invalid cron `{text}`: {}", croner_message(&error)))?;
    // A pattern such as `0 0 31 4 *` (April 31) parses but never matches; a window
    // that can never start is a mistake worth reporting now. Dates and weekdays repeat
    // every 28 years from 1901 to 2099, so a pattern matching any day at all matches
    // one of 2001 to 2028 (29 February falls on each weekday once in that span).
    let first_day = NaiveDate::from_ymd_opt(2001, 1, 1);
    let end_day = NaiveDate::from_ymd_opt(2029, 1, 1);
    let mut day = first_day;
    while let (Some(date), Some(end)) = (day, end_day) {
        if date >= end {
            break;
        }
        let matches = cron.pattern.month_match(date.month()).unwrap_or(false)
            && cron
                .pattern
                .day_match(date.year(), date.month(), date.day())
                .unwrap_or(false);
        if matches {
            return Ok(cron);
        }
        day = date.succ_opt();
    }
    Err(format!("cron `{text}` never matches a date"))
}

fn croner_message(error: &croner::errors::CronError) -> String {
    let message = error.to_string();
    let message = message.trim_end_matches('.');
    let mut chars = message.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// `64h`, `2h30m`, `1d`, `1w`, `90s`: a sum of `<integer><unit>` terms, in milliseconds.
fn parse_duration_ms(text: &str) -> Result<i64, String> {
    let fail = |why: &str| format!("invalid duration `{text}`: {why}");
    if text.is_empty() {
        return Err(fail("empty (expected e.g. `64h`, `2h30m`, `1d`)"));
    }
    let mut total_ms: i64 = 0;
    let mut digits = String::new();
    for c in text.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let unit_ms = match c {
            'w' => 7 * DAY_MS,
            'd' => DAY_MS,
            'h' => HOUR_MS,
            'm' => MINUTE_MS,
            's' => SECOND_MS,
            _ => {
                return Err(fail(&format!(
                    "unknown unit `{c}` (expected w, d, h, m or s)"
                )))
            }
        };
        if digits.is_empty() {
            return Err(fail(&format!("unit `{c}` without a number before it")));
        }
        let amount: i64 = digits.parse().map_err(|_| fail("number too large"))?;
        total_ms = amount
            .checked_mul(unit_ms)
            .and_then(|term| total_ms.checked_add(term))
            .ok_or_else(|| fail("longer than 366 days"))?;
        digits.clear();
    }
    if !digits.is_empty() {
        return Err(fail(&format!(
            "`{digits}` has no unit (expected w, d, h, m or s)"
        )));
    }
    if total_ms == 0 {
        return Err(fail("must be longer than zero"));
    }
    if total_ms > MAX_DURATION_MS {
        return Err(fail("longer than 366 days"));
    }
    Ok(total_ms)
}

/// The UTC-interpreted naive time of `ms`, rounded up to a whole second (cron matches
/// whole seconds; a start is never between two).
fn naive_ceil_second(ms: i64) -> Option<NaiveDateTime> {
    let rounded = ms
        .checked_add(SECOND_MS - 1)?
        .div_euclid(SECOND_MS)
        .checked_mul(SECOND_MS)?;
    naive_utc(rounded)
}

fn naive_utc(ms: i64) -> Option<NaiveDateTime> {
    Some(DateTime::from_timestamp_millis(ms)?.naive_utc())
}

/// The first instant in (`low_ms`, `high_ms`] where `reached` holds, by bisection;
/// `reached` must be false at `low_ms`, true at `high_ms` and change once in between.
fn first_instant_where(
    mut low_ms: i64,
    mut high_ms: i64,
    reached: impl Fn(i64) -> Option<bool>,
) -> Option<i64> {
    if reached(low_ms)? || !reached(high_ms)? {
        return None;
    }
    while high_ms - low_ms > 1 {
        let middle_ms = low_ms + (high_ms - low_ms) / 2;
        if reached(middle_ms)? {
            high_ms = middle_ms;
        } else {
            low_ms = middle_ms;
        }
    }
    Some(high_ms)
}
