//! Time as text, once for the workspace: the ISO-8601 / RFC 3339 forms the protocol
//! uses (`not_after`, `expires_at`, `created_at`, event logs). The clock that tells the
//! time is `iicp_transport::clock` (this crate reads no clock).
//!
//! Pure: no IO, no allocation except the formatted strings.

use std::time::Duration;

/// `(year, month 1–12, day 1–31)` of a day number counted from 1970-01-01
/// (proleptic Gregorian; Hinnant's civil-from-days).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    // day is 1..=31 and month 1..=12 by construction
    (year, month as u32, day as u32)
}

/// The day number (from 1970-01-01) of a civil date (Hinnant's days-from-civil).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn date_time(unix_secs: u64) -> String {
    let days = i64::try_from(unix_secs / 86_400).unwrap_or(i64::MAX / 2);
    let rem = unix_secs % 86_400;
    let (y, mo, d) = civil_from_days(days);
    format!(
        "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// ISO-8601 UTC, whole seconds (`YYYY-MM-DDTHH:MM:SSZ`), of Unix seconds.
pub fn iso8601(unix_secs: u64) -> String {
    format!("{}Z", date_time(unix_secs))
}

/// ISO-8601 UTC with milliseconds (`YYYY-MM-DDTHH:MM:SS.mmmZ`), the timestamp of
/// event logs.
pub fn iso8601_millis(t: Duration) -> String {
    format!("{}.{:03}Z", date_time(t.as_secs()), t.subsec_millis())
}

/// ISO-8601 UTC with microseconds (`YYYY-MM-DDTHH:MM:SS.ffffffZ`), as the public
/// conformance runner writes timestamps.
pub fn iso8601_micros(t: Duration) -> String {
    format!("{}.{:06}Z", date_time(t.as_secs()), t.subsec_micros())
}

/// Unix seconds of an RFC 3339 / ISO-8601 timestamp
/// (`YYYY-MM-DD[T| ]HH:MM:SS[.frac][Z|±HH:MM]`; no offset means UTC). `None` for
/// anything else, including out-of-range fields.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 19
        || b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't' | b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let t = s.get(r)?;
        t.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| t.parse().ok())?
    };
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, se) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 60 {
        return None;
    }
    let mut rest = s.get(19..)?;
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        rest = &frac[digits..];
    }
    let offset = match rest {
        "" | "Z" | "z" => 0,
        o if o.len() == 6 && (o.starts_with('+') || o.starts_with('-')) && &o[3..4] == ":" => {
            let sign = if o.starts_with('-') { -1 } else { 1 };
            let (oh, om) = (
                o.get(1..3)?.parse::<i64>().ok()?,
                o.get(4..6)?.parse::<i64>().ok()?,
            );
            if oh > 23 || om > 59 {
                return None;
            }
            sign * (oh * 3600 + om * 60)
        }
        _ => return None,
    };
    Some(days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + se - offset)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_known_instants() {
        assert_eq!(iso8601(0), "1970-01-01T00:00:00Z");
        assert_eq!(iso8601(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(iso8601(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(iso8601(4_102_444_799), "2099-12-31T23:59:59Z");
        assert_eq!(
            iso8601_millis(Duration::from_millis(1_700_000_000_123)),
            "2023-11-14T22:13:20.123Z"
        );
        assert_eq!(
            iso8601_micros(Duration::from_micros(1_700_000_000_000_042)),
            "2023-11-14T22:13:20.000042Z"
        );
    }

    #[test]
    fn parses_what_it_formats_and_the_rfc_3339_variants() {
        for secs in [0, 951_782_400, 1_700_000_000, 4_102_444_799] {
            assert_eq!(parse_rfc3339(&iso8601(secs)), Some(secs as i64));
        }
        let t = 1_700_000_000;
        assert_eq!(parse_rfc3339("2023-11-14T22:13:20.999Z"), Some(t));
        assert_eq!(parse_rfc3339("2023-11-14 22:13:20"), Some(t));
        assert_eq!(parse_rfc3339("2023-11-15T00:13:20+02:00"), Some(t));
        assert_eq!(parse_rfc3339("2023-11-14T21:13:20-01:00"), Some(t));
        assert_eq!(parse_rfc3339("1969-12-31T23:59:59Z"), Some(-1));
    }

    #[test]
    fn refuses_malformed_timestamps() {
        for bad in [
            "",
            "2023-11-14",
            "2023-11-14T22:13",
            "2023/11/14T22:13:20Z",
            "2023-13-14T22:13:20Z",
            "2023-11-32T22:13:20Z",
            "2023-11-14T24:13:20Z",
            "2023-11-14T22:13:20.Z",
            "2023-11-14T22:13:20+0200",
            "2023-11-14T22:13:20+02:99",
            "2023-11-14T22:13:20 UTC",
            "+023-11-14T22:13:20Z",
            "2023-11-14T22:13:2xZ",
            "２023-11-14T22:13:20Z",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad:?}");
        }
    }
}
