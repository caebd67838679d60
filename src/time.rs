//! Timestamps: the one text format stored in SQLite, tolerant parsing of what people and the
//! partner write, and duration helpers.
//!
//! Stored timestamps are UTC with millisecond precision and a fixed width
//! (`2026-11-25T08:11:04.123Z`), so that comparing them as text in SQL orders them in time.

use chrono::{DateTime, Datelike, NaiveDate, NaiveDateTime, TimeZone, Timelike, Utc};

/// The latest instant the store can hold: its text form must keep four year digits, or it
/// would no longer sort after every earlier one. Far-future times are clamped to it. A
/// constant, because every poll of every cart clamps against it.
pub const MAX_STORED: DateTime<Utc> = match NaiveDate::from_ymd_opt(9999, 12, 31) {
    Some(date) => match date.and_hms_milli_opt(23, 59, 59, 999) {
        Some(last) => last.and_utc(),
        None => DateTime::<Utc>::MAX_UTC,
    },
    None => DateTime::<Utc>::MAX_UTC,
};

/// The earliest instant the store holds; earlier ones are clamped to it for the same reason.
pub const MIN_STORED: DateTime<Utc> = match NaiveDate::from_ymd_opt(0, 1, 1) {
    Some(date) => match date.and_hms_opt(0, 0, 0) {
        Some(first) => first.and_utc(),
        None => DateTime::<Utc>::MIN_UTC,
    },
    None => DateTime::<Utc>::MIN_UTC,
};

/// Formats an instant in the stored form, clamped to the years 0000..=9999 so that every
/// stored timestamp has the same width and sorts as text in time order. It runs for every
/// cart of every poll.
pub fn format_ts(instant: DateTime<Utc>) -> String {
    let naive = instant.clamp(MIN_STORED, MAX_STORED).naive_utc();
    fixed_form(naive, "Z").unwrap_or_else(|| format_naive_widths(naive) + "Z")
}

/// Reads a timestamp written by the daemon, by a person with `sqlite3` (`datetime('now')`
/// gives `2026-11-25 08:11:04`) or by an RFC 3339 producer. Text without a zone is taken as
/// UTC. Returns `None` for anything else.
pub fn parse_ts(text: &str) -> Option<DateTime<Utc>> {
    // The stored form first, read by its fixed positions: a cart row holds six timestamps,
    // read on every poll, and chrono's RFC 3339 reader costs several times as much.
    match text.strip_suffix('Z').and_then(|text| parse_fixed(text.as_bytes())) {
        Some(naive) => Some(naive.and_utc()),
        None => parse_ts_by_chrono(text),
    }
}

/// [`parse_ts`] through chrono's readers alone.
fn parse_ts_by_chrono(text: &str) -> Option<DateTime<Utc>> {
    let text = text.trim();
    if let Ok(instant) = DateTime::parse_from_rfc3339(text) {
        return Some(instant.with_timezone(&Utc));
    }
    parse_naive_by_chrono(text).map(|naive| Utc.from_utc_datetime(&naive))
}

/// Reads a zone-less date and time as the partner APIs send them: `2017-06-13T16:28:47`,
/// `2017-06-14T16:46:55.473` or `2016-03-03 11:39:45`, with any number of fraction digits.
pub fn parse_naive(text: &str) -> Option<NaiveDateTime> {
    parse_fixed(text.as_bytes()).or_else(|| parse_naive_by_chrono(text))
}

/// [`parse_naive`] through chrono's readers alone.
fn parse_naive_by_chrono(text: &str) -> Option<NaiveDateTime> {
    let text = text.trim();
    // chrono's own ISO reader first: it needs no format string parsed, and reads the form
    // the store and the partner use most.
    if let Ok(naive) = text.parse::<NaiveDateTime>() {
        return Some(naive);
    }
    ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"]
        .iter()
        .find_map(|format| NaiveDateTime::parse_from_str(text, format).ok())
}

/// Reads `YYYY-MM-DDTHH:MM:SS` with an optional fraction of one to nine digits (the form the
/// store and the partner write) by its fixed positions. `None` for anything else, which the
/// general readers then try, and for a date or time that does not exist.
fn parse_fixed(text: &[u8]) -> Option<NaiveDateTime> {
    fn number(digits: &[u8]) -> Option<u32> {
        digits.iter().try_fold(0u32, |value, &byte| byte.is_ascii_digit().then(|| value * 10 + u32::from(byte - b'0')))
    }
    let (head, fraction) = text.split_at_checked(19)?;
    if [(4, b'-'), (7, b'-'), (10, b'T'), (13, b':'), (16, b':')].iter().any(|&(at, separator)| head[at] != separator) {
        return None;
    }
    let nanos = match fraction {
        [] => 0,
        [b'.', digits @ ..] if (1..=9).contains(&digits.len()) => number(digits)? * 10u32.pow(9 - digits.len() as u32),
        _ => return None,
    };
    let year = i32::try_from(number(&head[0..4])?).ok()?;
    let date = NaiveDate::from_ymd_opt(year, number(&head[5..7])?, number(&head[8..10])?)?;
    date.and_hms_nano_opt(number(&head[11..13])?, number(&head[14..16])?, number(&head[17..19])?, nanos)
}

/// Formats a zone-less date and time the way the store keeps parsed partner dates
/// (`2017-06-14T16:46:55.473`): fixed millisecond precision, no zone, because the partner
/// does not say which zone it means.
pub fn format_naive(naive: NaiveDateTime) -> String {
    fixed_form(naive, "").unwrap_or_else(|| format_naive_widths(naive))
}

/// The stored form followed by `zone`, its digits put in place directly: three timestamps
/// are written for every cart of every poll, and chrono's RFC 3339 writer took twice the
/// instructions. `None` for a year outside 0000–9999 or a leap second, which only the form
/// with widths writes.
fn fixed_form(naive: NaiveDateTime, zone: &str) -> Option<String> {
    let millis = naive.nanosecond() / 1_000_000;
    let year = u32::try_from(naive.year()).ok().filter(|year| *year <= 9999)?;
    if millis > 999 {
        return None;
    }
    let mut text = *b"0000-00-00T00:00:00.000";
    for (at, width, mut value) in [
        (0, 4, year),
        (5, 2, naive.month()),
        (8, 2, naive.day()),
        (11, 2, naive.hour()),
        (14, 2, naive.minute()),
        (17, 2, naive.second()),
        (20, 3, millis),
    ] {
        for digit in text[at..at + width].iter_mut().rev() {
            *digit = b'0' + (value % 10) as u8;
            value /= 10;
        }
    }
    let mut form = String::with_capacity(text.len() + zone.len());
    form.push_str(std::str::from_utf8(&text).ok()?);
    form.push_str(zone);
    Some(form)
}

/// The stored form through `format!` with widths: any year, and a leap second clamped to
/// the millisecond before the next second.
fn format_naive_widths(naive: NaiveDateTime) -> String {
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}",
        naive.year(),
        naive.month(),
        naive.day(),
        naive.hour(),
        naive.minute(),
        naive.second(),
        naive.and_utc().timestamp_subsec_millis().min(999)
    )
}

/// Converts a standard duration into a chrono one, saturating instead of failing on the
/// absurd values a config file could hold.
pub fn to_chrono(duration: std::time::Duration) -> chrono::Duration {
    chrono::Duration::from_std(duration).unwrap_or(chrono::Duration::MAX)
}

/// Adds a duration to an instant, saturating at the latest instant the store can hold, to
/// the millisecond the store keeps.
pub fn add(instant: DateTime<Utc>, duration: std::time::Duration) -> DateTime<Utc> {
    use chrono::DurationRound;
    let sum = instant.checked_add_signed(to_chrono(duration)).unwrap_or(DateTime::<Utc>::MAX_UTC).min(MAX_STORED);
    sum.duration_trunc(chrono::Duration::milliseconds(1)).unwrap_or(sum)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_form_is_fixed_width_and_round_trips() {
        let instant = Utc.with_ymd_and_hms(2026, 11, 25, 8, 11, 4).unwrap();
        let text = format_ts(instant);
        assert_eq!(text, "2026-11-25T08:11:04.000Z");
        assert_eq!(parse_ts(&text), Some(instant));
    }

    #[track_caller]
    fn check(input: &str, expected: Option<&str>) {
        assert_eq!(parse_naive(input).map(format_naive).as_deref(), expected);
    }

    #[test]
    fn partner_dates_with_varying_fractions() {
        check("2017-06-13T16:28:47", Some("2017-06-13T16:28:47.000"));
        check("2017-06-14T16:46:55.473", Some("2017-06-14T16:46:55.473"));
        check("2017-06-13T14:12:42.9", Some("2017-06-13T14:12:42.900"));
        check("2016-03-03 11:39:45", Some("2016-03-03T11:39:45.000"));
        check("2017-06-13T14:12:42.1234567", Some("2017-06-13T14:12:42.123"));
        check("13/06/2017", None);
        check("", None);
    }

    #[test]
    fn the_quick_reader_agrees_with_the_formats() {
        for text in
            ["2017-06-13T16:28:47", "2017-06-14T16:46:55.473", "2017-06-13T14:12:42.9", "2026-11-25T08:11:04.123"]
        {
            let by_format = NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%.f").ok();
            assert!(by_format.is_some());
            assert_eq!(text.parse::<NaiveDateTime>().ok(), by_format, "{text}");
        }
    }

    #[test]
    fn formatting_agrees_with_chrono_and_the_form_with_widths() {
        // From the first instant of year 0 to the last of 9999, each with some microseconds.
        for millis in [-62_167_219_200_000i64, 0, 1, 999, 1_732_521_064_123, 253_402_300_799_999] {
            let naive = DateTime::<Utc>::from_timestamp_millis(millis).unwrap().naive_utc()
                + chrono::Duration::microseconds(456);
            assert_eq!(format_naive(naive), format_naive_widths(naive), "{naive:?}");
        }
        // A leap second, and years that only the form with widths writes.
        let leap = chrono::NaiveDate::from_ymd_opt(2016, 12, 31).unwrap().and_hms_milli_opt(23, 59, 59, 1500).unwrap();
        assert_eq!(format_naive(leap), "2016-12-31T23:59:59.999");
        let far = chrono::NaiveDate::from_ymd_opt(12345, 1, 2).unwrap().and_hms_opt(3, 4, 5).unwrap();
        assert_eq!(format_naive(far), "12345-01-02T03:04:05.000");
        for millis in [0i64, 1, 999, 1_732_521_064_123, 253_402_300_799_999] {
            let instant = DateTime::<Utc>::from_timestamp_millis(millis).unwrap();
            assert_eq!(format_ts(instant), instant.to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
            let naive = instant.naive_utc();
            assert_eq!(format_naive(naive), naive.format("%Y-%m-%dT%H:%M:%S%.3f").to_string());
        }
    }

    proptest::proptest! {
        /// Every instant of the years 0000–9999, to the nanosecond, is written as chrono
        /// writes it, truncated to the millisecond.
        #[test]
        fn the_fixed_writer_agrees_with_chrono(
            millis in -62_167_219_200_000i64..=253_402_300_799_999,
            nanos in 0u32..1_000_000,
        ) {
            let instant = DateTime::<Utc>::from_timestamp_millis(millis).unwrap() + chrono::Duration::nanoseconds(nanos.into());
            proptest::prop_assert_eq!(format_ts(instant), instant.to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
            let naive = instant.naive_utc();
            proptest::prop_assert_eq!(format_naive(naive), naive.format("%Y-%m-%dT%H:%M:%S%.3f").to_string());
        }
    }

    #[test]
    fn far_future_and_past_instants_keep_the_sortable_form() {
        let far = add(Utc::now(), std::time::Duration::from_secs(u64::MAX));
        assert_eq!(format_ts(far), "9999-12-31T23:59:59.999Z");
        assert_eq!(format_ts(DateTime::<Utc>::MAX_UTC), "9999-12-31T23:59:59.999Z");
        assert_eq!(format_ts(DateTime::<Utc>::MIN_UTC), "0000-01-01T00:00:00.000Z");
        assert!(format_ts(far) > format_ts(Utc::now()), "the far future sorts after now");
    }

    /// What the readers give through chrono's readers alone, without the fixed-position path.
    fn by_chrono(text: &str) -> (Option<DateTime<Utc>>, Option<NaiveDateTime>) {
        (parse_ts_by_chrono(text), parse_naive_by_chrono(text))
    }

    proptest::proptest! {
        /// Text in or near the fixed form (dates and times just inside and just outside
        /// their ranges, fractions of any length, other separators and zones, stray space)
        /// reads as chrono reads it.
        #[test]
        fn the_fixed_position_reader_agrees_with_chrono(
            (year, month, day) in (0u32..=9999, 0u32..=13, 0u32..=32),
            (hour, minute, second) in (0u32..=25, 0u32..=61, 0u32..=61),
            separator in "[T ]",
            fraction in "(\\.[0-9]{0,11})?",
            zone in "(Z|z|\\+01:00| )?",
        ) {
            let text = format!("{year:04}-{month:02}-{day:02}{separator}{hour:02}:{minute:02}:{second:02}{fraction}{zone}");
            proptest::prop_assert_eq!((parse_ts(&text), parse_naive(&text)), by_chrono(&text), "{}", text);
        }
    }

    #[test]
    fn the_fixed_position_reader_takes_the_usual_forms() {
        for text in ["2026-11-25T08:11:04.123Z", "2026-11-25T08:11:04Z", "2024-02-29T23:59:59.999999999Z"] {
            assert!(parse_fixed(text.strip_suffix('Z').unwrap().as_bytes()).is_some(), "{text}");
            assert_eq!((parse_ts(text), parse_naive(text)), by_chrono(text), "{text}");
        }
        for text in ["2025-02-29T00:00:00", "2026-11-25T24:00:00", "2016-12-31T23:59:60.5", "2026-11-25T08:11:04."] {
            assert!(parse_fixed(text.as_bytes()).is_none(), "{text}");
            assert_eq!((parse_ts(text), parse_naive(text)), by_chrono(text), "{text}");
        }
    }

    #[test]
    fn hand_written_timestamps_are_read_as_utc() {
        let expected = Utc.with_ymd_and_hms(2026, 11, 25, 8, 11, 4).unwrap();
        assert_eq!(parse_ts("2026-11-25 08:11:04"), Some(expected));
        assert_eq!(parse_ts("2026-11-25T09:11:04+01:00"), Some(expected));
        assert_eq!(parse_ts("yesterday"), None);
    }
}
