//! Parsing and printing of byte sizes (`16M`, `2G`) and durations (`500ms`, `2s`).

use std::fmt;
use std::time::Duration;

/// A size in bytes, printed in the largest binary unit that divides it (`16 MiB`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Size(pub u64);

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(&str, u64); 4] = [
            ("TiB", 1 << 40),
            ("GiB", 1 << 30),
            ("MiB", 1 << 20),
            ("KiB", 1 << 10),
        ];
        for (name, unit) in UNITS {
            if self.0 >= unit && self.0.is_multiple_of(unit) {
                return write!(f, "{} {name}", self.0 / unit);
            }
        }
        for (name, unit) in UNITS {
            if self.0 >= unit {
                write!(f, "{:.1} {name}", self.0 as f64 / unit as f64)?;
                // A rounded figure must not pass for the exact one ("4.0 GiB" for 4 GiB + 1).
                if !(u128::from(self.0) * 10).is_multiple_of(u128::from(unit)) {
                    write!(f, " ({} bytes)", self.0)?;
                }
                return Ok(());
            }
        }
        write!(f, "{} bytes", self.0)
    }
}

/// Parses `16M`, `2G`, `512K`, `16MiB`, `1048576` (bytes) into a byte count.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let digits_end = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(digits_end);
    if digits.is_empty() {
        return Err(format!(
            "invalid size '{text}' (expected a number with an optional unit, e.g. 16M or 2G)"
        ));
    }
    let shift = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        "T" | "TB" | "TIB" => 40,
        _ => {
            return Err(format!(
                "invalid size unit '{unit}' in '{text}' (use K, M or G)"
            ));
        }
    };
    let value: u64 = digits
        .parse()
        .map_err(|_| format!("size '{text}' is too large"))?;
    value
        .checked_mul(1u64 << shift)
        .ok_or_else(|| format!("size '{text}' is too large"))
}

/// Parses `500ms`, `2s`, `1.5s`, `1m`, `100us` or a plain number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let number_end = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(number_end);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("invalid duration '{text}' (expected e.g. 500ms, 2s or 1m)"))?;
    let seconds = match unit.trim() {
        "" | "s" => value,
        "ms" => value / 1e3,
        "us" | "µs" => value / 1e6,
        "ns" => value / 1e9,
        "m" | "min" => value * 60.0,
        "h" => value * 3600.0,
        other => {
            return Err(format!(
                "invalid duration unit '{other}' in '{text}' (use ms, s, m or h)"
            ));
        }
    };
    let duration = Duration::try_from_secs_f64(seconds)
        .map_err(|_| format!("duration '{text}' is out of range"))?;
    if duration > MAX_DURATION {
        return Err(format!(
            "duration '{text}' is out of range (at most {} days)",
            MAX_DURATION.as_secs() / 86_400
        ));
    }
    Ok(duration)
}

/// The longest duration any flag takes: ten years, far from where `Instant` arithmetic or a
/// millisecond count in a `u64` could overflow.
pub const MAX_DURATION: Duration = Duration::from_secs(10 * 365 * 86_400);

/// Parses a timeout: a duration above zero (a zero timeout would stop every guest before its
/// first instruction; leave the flag out for no timeout).
pub fn parse_timeout(text: &str) -> Result<Duration, String> {
    let duration = parse_duration(text)?;
    if duration.is_zero() {
        return Err(format!(
            "timeout '{text}' is zero (leave the flag out for no timeout)"
        ));
    }
    Ok(duration)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_parse_size_units() {
        assert_eq!(parse_size("16M"), Ok(16 << 20));
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        assert_eq!(parse_size("512k"), Ok(512 << 10));
        assert_eq!(parse_size("16MiB"), Ok(16 << 20));
        assert_eq!(parse_size("4096"), Ok(4096));
    }

    #[test]
    fn test_parse_size_rejects_garbage_and_overflow() {
        assert!(parse_size("").is_err());
        assert!(parse_size("M").is_err());
        assert!(parse_size("12X").is_err());
        assert!(parse_size("-1M").is_err());
        assert!(parse_size("99999999999999999999").is_err());
        assert!(parse_size("99999999999T").is_err());
    }

    #[test]
    fn test_parse_duration_units() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
    }

    #[test]
    fn test_parse_duration_rejects_garbage() {
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("1e400").is_err());
    }

    #[test]
    fn test_parse_duration_refuses_durations_that_would_overflow() {
        assert!(parse_duration("18446744073709552s").is_err());
        assert!(parse_duration("9223372036854775808").is_err());
        assert!(parse_duration("3650d").is_err());
        assert!(parse_duration("87600h").is_ok());
        assert!(parse_duration("87601h").is_err());
    }

    #[test]
    fn test_parse_timeout_refuses_zero() {
        assert!(parse_timeout("0").is_err());
        assert!(parse_timeout("0ms").is_err());
        assert_eq!(parse_timeout("1ms"), Ok(Duration::from_millis(1)));
    }

    #[test]
    fn test_size_display_picks_unit() {
        assert_eq!(Size(16 << 20).to_string(), "16 MiB");
        assert_eq!(Size(3 << 30).to_string(), "3 GiB");
        assert_eq!(Size(1536).to_string(), "1.5 KiB");
        assert_eq!(
            Size((4 << 30) + 1).to_string(),
            "4.0 GiB (4294967297 bytes)",
            "a rounded figure says it is one"
        );
        assert_eq!(Size(100).to_string(), "100 bytes");
    }
}
