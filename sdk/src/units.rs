//! Byte sizes as people write them, shared by every proxymesh command line
//! and config file: plain bytes, binary units (`K`/`KiB` = 1024, `M`/`MiB`,
//! `G`/`GiB`, `T`/`TiB`) and SI units (`KB` = 1000, `MB`, `GB`, `TB`),
//! case-insensitive, decimals allowed.
//!
//! ```
//! assert_eq!(proxymesh::units::parse_size("64MiB"), Ok(64 << 20));
//! assert_eq!(proxymesh::units::parse_size("10MB"), Ok(10_000_000));
//! ```

/// Parse a byte size (see the module docs).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let unit = unit.trim();
    let multiplier: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "t" | "tib" => 1 << 40,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        _ => {
            return Err(format!(
                "unknown size unit {unit:?} in {text:?} (use e.g. 4096, 64KiB, 10MB, 64GiB)"
            ))
        }
    };
    if number.is_empty() {
        return Err(format!(
            "{text:?} is not a size (use e.g. 4096, 64KiB, 10MB, 64GiB)"
        ));
    }
    if let Ok(n) = number.parse::<u64>() {
        return n
            .checked_mul(multiplier)
            .ok_or_else(|| format!("size {text:?} is too large"));
    }
    let n: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a size (use e.g. 4096, 64KiB, 10MB, 64GiB)"))?;
    let bytes = n * multiplier as f64;
    if !bytes.is_finite() || bytes >= u64::MAX as f64 {
        return Err(format!("size {text:?} is too large"));
    }
    Ok(bytes.round() as u64)
}

/// Parse a duration: a whole number with a unit `s`, `m` (minutes), `h`,
/// `d` or `w` (`90d`, `12h`, `30m`); a bare number is seconds.
///
/// ```
/// use std::time::Duration;
/// assert_eq!(proxymesh::units::parse_duration("90d"), Ok(Duration::from_secs(90 * 86_400)));
/// ```
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let unit_secs: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => {
            return Err(format!(
                "{text:?} is not a duration (use e.g. 30s, 15m, 12h, 90d, 4w)"
            ))
        }
    };
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration (use e.g. 30s, 15m, 12h, 90d, 4w)"))?;
    n.checked_mul(unit_secs)
        .map(std::time::Duration::from_secs)
        .ok_or_else(|| format!("duration {text:?} is too long"))
}

#[cfg(test)]
mod tests {
    use super::{parse_duration, parse_size};

    #[test]
    fn durations() {
        assert_eq!(parse_duration("45"), Ok(std::time::Duration::from_secs(45)));
        assert_eq!(
            parse_duration("15m"),
            Ok(std::time::Duration::from_secs(900))
        );
        assert_eq!(
            parse_duration("2w"),
            Ok(std::time::Duration::from_secs(14 * 86_400))
        );
        for bad in ["", "d", "1y", "-3d", "1.5h", "99999999999999999999w"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("1KiB"), Ok(1024));
        assert_eq!(parse_size("1k"), Ok(1024));
        assert_eq!(parse_size("64 mib"), Ok(64 << 20));
        assert_eq!(parse_size("10MB"), Ok(10_000_000));
        assert_eq!(parse_size("64GiB"), Ok(64 << 30));
        assert_eq!(parse_size("1.5 GiB"), Ok(3 << 29));
        assert_eq!(parse_size("0"), Ok(0));
        for bad in ["", "MiB", "12XB", "-1", "1e400", "99999999999TiB"] {
            assert!(parse_size(bad).is_err(), "{bad:?} accepted");
        }
    }
}
