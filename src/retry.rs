//! Exponential backoff with jitter and `Retry-After`, used alike by feeds and receivers.

use std::time::Duration;

use rand::Rng;

/// The wait before attempt `attempts + 1`: `initial` doubling per attempt up to `max`,
/// with ±20 % jitter so that many clients do not retry in step.
pub fn backoff(attempts: u32, initial: Duration, max: Duration) -> Duration {
    let exp = initial.saturating_mul(1u32 << attempts.saturating_sub(1).min(20));
    let base = exp.min(max).as_secs_f64();
    let jitter = rand::thread_rng().gen_range(0.8..1.2);
    Duration::from_secs_f64((base * jitter).max(0.001))
}

/// Parses a `Retry-After` value: delay seconds or an HTTP date.
pub fn parse_retry_after(value: &str, now: chrono::DateTime<chrono::Utc>) -> Option<Duration> {
    let v = value.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = chrono::DateTime::parse_from_rfc2822(v).ok()?;
    Some(
        (at.with_timezone(&chrono::Utc) - now)
            .to_std()
            .unwrap_or(Duration::ZERO),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn backoff_grows_and_caps() {
        let i = Duration::from_secs(5);
        let m = Duration::from_secs(600);
        assert!(backoff(1, i, m) <= Duration::from_secs(6));
        assert!(backoff(4, i, m) >= Duration::from_secs(32));
        assert!(backoff(30, i, m) <= Duration::from_secs(720));
    }

    #[test]
    fn retry_after_in_seconds_or_as_a_date() {
        let now = chrono::Utc
            .with_ymd_and_hms(2026, 11, 28, 12, 0, 0)
            .unwrap();
        assert_eq!(parse_retry_after("7", now), Some(Duration::from_secs(7)));
        assert_eq!(
            parse_retry_after("Sat, 28 Nov 2026 12:00:30 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Sat, 28 Nov 2026 11:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }
}
