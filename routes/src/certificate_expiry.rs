//! When a certificate stops being valid: the `notAfter` of its validity (RFC 5280 §4.1.2.5),
//! read from the DER with the few steps it takes, so an operator can be warned and alerted
//! before clients start refusing the gateway.
//!
//! Only called on certificates rustls has already parsed, and only informs (a log line, a
//! metric): a certificate this reader cannot follow yields `None`, never an error.

use crate::der::{any_element, element, tbs_after_serial, GENERALIZED_TIME, SEQUENCE, UTC_TIME};

/// `notAfter` of a DER X.509 certificate, in seconds since the Unix epoch.
pub fn not_after_unix(certificate: &[u8]) -> Option<i64> {
    // After the serial number: signature, issuer, then validity.
    let mut rest = tbs_after_serial(certificate)?;
    rest = element(rest, SEQUENCE)?.1;
    rest = element(rest, SEQUENCE)?.1;
    // Validity ::= SEQUENCE { notBefore Time, notAfter Time }
    let (validity, _) = element(rest, SEQUENCE)?;
    let (_, after_not_before) = any_element(validity)?;
    let (&tag, _) = after_not_before.split_first()?;
    let (time, _) = element(after_not_before, tag)?;
    let text = std::str::from_utf8(time).ok()?;
    match tag {
        UTC_TIME => utc_time(text),
        GENERALIZED_TIME => generalized_time(text),
        _ => None,
    }
}

/// `YYMMDDHHMMSSZ`; RFC 5280 §4.1.2.5.1: YY below 50 is 20YY, otherwise 19YY.
fn utc_time(text: &str) -> Option<i64> {
    let text = text.strip_suffix('Z')?;
    if text.len() != 12 {
        return None;
    }
    let yy = digits(&text[0..2])?;
    let year = if yy < 50 { 2000 + yy } else { 1900 + yy };
    unix_seconds(year, &text[2..])
}

/// `YYYYMMDDHHMMSSZ` (RFC 5280 §4.1.2.5.2: no fractional seconds).
fn generalized_time(text: &str) -> Option<i64> {
    let text = text.strip_suffix('Z')?;
    if text.len() != 14 {
        return None;
    }
    unix_seconds(digits(&text[0..4])?, &text[4..])
}

/// `MMDDHHMMSS` of `year` as seconds since the Unix epoch.
fn unix_seconds(year: i64, rest: &str) -> Option<i64> {
    let field = |at: usize| digits(rest.get(at..at + 2)?);
    let (month, day) = (field(0)?, field(2)?);
    let (hour, minute, second) = (field(4)?, field(6)?, field(8)?);
    let in_range = (1..=12).contains(&month)
        && (1..=31).contains(&day)
        && hour <= 23
        && minute <= 59
        && second <= 60;
    if !in_range {
        return None;
    }
    Some(days_from_civil(year, month, day) * 86_400 + hour * 3_600 + minute * 60 + second)
}

fn digits(text: &str) -> Option<i64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// Days from 1970-01-01 to the given proleptic Gregorian date (Howard Hinnant's
/// `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month_from_march = (month + 9) % 12;
    let day_of_year = (153 * month_from_march + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calendar_dates_map_to_the_unix_clock() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        // `date -u -d 2126-10-31T04:04:43Z +%s`
        assert_eq!(generalized_time("21261031040443Z"), Some(4_949_093_083));
        // `date -u -d 2036-02-29T23:59:59Z +%s`: a leap day, written as UTCTime.
        assert_eq!(utc_time("360229235959Z"), Some(2_087_942_399));
        assert_eq!(
            utc_time("991231235959Z"),
            Some(946_684_799),
            "YY 99 is 1999"
        );
    }

    #[test]
    fn malformed_times_and_truncated_der_give_nothing() {
        assert_eq!(utc_time("3602292359Z"), None);
        assert_eq!(utc_time("361302000000Z"), None);
        assert_eq!(generalized_time("2036022923595"), None);
        assert_eq!(not_after_unix(&[]), None);
        assert_eq!(not_after_unix(&[0x30, 0x82, 0x01]), None);
        assert_eq!(not_after_unix(&[0x30, 0x05, 0x30, 0x03, 0x02, 0x01]), None);
    }
}
