//! Times as responders write and read them: RFC 3339 in UTC for display, and `--since` /
//! `--until` values that are a duration ago (`1h`), an RFC 3339 timestamp, or a time of day
//! today in UTC (`14:02`).

use crate::filter::FilterError;
use crate::wire::parse_duration;

fn invalid(field: &'static str, message: impl Into<String>) -> FilterError {
    FilterError::Invalid {
        field,
        message: message.into(),
    }
}

/// Now, in milliseconds since the Unix epoch (0 if the clock is before it).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's `days_from_civil`).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day number (the inverse of [`days_from_civil`]).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// `2026-12-05T14:02:03.456Z`.
pub fn format_ms(ms: i64) -> String {
    let days = ms.div_euclid(86_400_000);
    let rem = ms.rem_euclid(86_400_000);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3_600_000,
        rem / 60_000 % 60,
        rem / 1000 % 60,
        rem % 1000
    )
}

fn num(s: &str, lo: i64, hi: i64) -> Option<i64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse::<i64>().ok().filter(|v| (lo..=hi).contains(v))
}

/// `HH:MM[:SS[.fff]]` as ms since midnight.
fn time_of_day(s: &str) -> Option<i64> {
    let (hms, frac) = match s.split_once('.') {
        Some((a, f)) => (a, Some(f)),
        None => (s, None),
    };
    let parts: Vec<&str> = hms.split(':').collect();
    let (h, m, sec) = match parts.as_slice() {
        [h, m] => (num(h, 0, 23)?, num(m, 0, 59)?, 0),
        [h, m, s] => (num(h, 0, 23)?, num(m, 0, 59)?, num(s, 0, 60)?),
        _ => return None,
    };
    let ms = match frac {
        None => 0,
        Some(f) if !f.is_empty() && f.len() <= 9 && f.bytes().all(|b| b.is_ascii_digit()) => {
            let padded = format!("{f:0<3}");
            padded[..3].parse::<i64>().ok()?
        }
        Some(_) => return None,
    };
    Some(((h * 60 + m) * 60 + sec) * 1000 + ms)
}

/// An RFC 3339 timestamp (`2026-12-05T14:02:00Z`, `...+01:00`, a space instead of `T`).
fn rfc3339(s: &str) -> Option<i64> {
    let (date, rest) = s.split_once(['T', 't', ' '])?;
    let dp: Vec<&str> = date.split('-').collect();
    let [y, mo, d] = dp.as_slice() else {
        return None;
    };
    let (y, mo) = (num(y, 1970, 9999)?, num(mo, 1, 12)?);
    let d = num(d, 1, 31)?;
    let (clock, offset_ms) = if let Some(c) = rest.strip_suffix(['Z', 'z']) {
        (c, 0)
    } else {
        let at = rest.rfind(['+', '-'])?;
        let (c, off) = rest.split_at(at);
        let sign = if off.starts_with('-') { -1 } else { 1 };
        let (oh, om) = off[1..].split_once(':')?;
        (c, sign * (num(oh, 0, 23)? * 60 + num(om, 0, 59)?) * 60_000)
    };
    let tod = time_of_day(clock)?;
    Some(days_from_civil(y, mo, d) * 86_400_000 + tod - offset_ms)
}

/// A `--since`/`--until` value at `now_ms`: a duration ago, an RFC 3339 timestamp, or a time
/// of day today (UTC; yesterday's when it is still to come today).
pub fn parse_time(field: &'static str, s: &str, now_ms: i64) -> Result<i64, FilterError> {
    let s = s.trim();
    if s.len() > 64 {
        return Err(invalid(field, "at most 64 characters"));
    }
    if let Some(t) = rfc3339(s) {
        return Ok(t);
    }
    if let Some(tod) = time_of_day(s) {
        let midnight = now_ms.div_euclid(86_400_000) * 86_400_000;
        let t = midnight + tod;
        return Ok(if t > now_ms { t - 86_400_000 } else { t });
    }
    match parse_duration(field, s) {
        Ok(d) => Ok(now_ms.saturating_sub(d)),
        Err(_) => Err(invalid(
            field,
            format!(
                "{s:?} is not a time: use a duration ago (30s, 15m, 1h), an RFC 3339 timestamp \
                 (2026-12-05T14:02:00Z) or a time of day in UTC (14:02)"
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_instants() {
        assert_eq!(format_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(format_ms(1_764_943_323_456), "2025-12-05T14:02:03.456Z");
        assert_eq!(
            parse_time("since", "2025-12-05T14:02:03.456Z", 0).unwrap(),
            1_764_943_323_456
        );
        assert_eq!(
            parse_time("since", "2025-12-05T15:02:03.456+01:00", 0).unwrap(),
            1_764_943_323_456
        );
    }

    #[test]
    fn relative_and_time_of_day() {
        let now = 1_764_943_323_456; // 14:02:03.456 UTC
        assert_eq!(parse_time("since", "1h", now).unwrap(), now - 3_600_000);
        assert_eq!(
            parse_time("since", "14:02", now).unwrap(),
            1_764_943_320_000
        );
        // 15:00 is still to come today: it means yesterday's.
        assert_eq!(
            parse_time("since", "15:00", now).unwrap(),
            1_764_860_400_000
        );
        for bad in ["", "25:00", "2025-13-01T00:00:00Z", "yesterday", "1h;DROP"] {
            assert!(parse_time("since", bad, now).is_err(), "{bad:?}");
        }
    }

    proptest! {
        #[test]
        fn format_and_parse_round_trip(ms in 0i64..253_402_300_799_999) {
            let s = format_ms(ms);
            prop_assert_eq!(parse_time("since", &s, 0).unwrap(), ms);
        }
    }
}
