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

#[cfg(test)]
mod tests {
    use super::parse_size;

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
