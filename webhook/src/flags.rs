//! Byte sizes for command-line flags: bytes or Kubernetes' binary suffixes (`64Ki`, `32Mi`),
//! as users write them in manifests. (Durations: `rolebridge_contract::duration::parse`.)

/// Parses a byte size: `1048576`, `64Ki`, `3584Ki`, `32Mi`, `1Gi` (also `KiB`, `MiB`, `GiB`).
pub fn parse_size(text: &str) -> Result<usize, String> {
    let s = text.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let value: usize = number
        .parse()
        .map_err(|_| format!("{text:?} is not a size (bytes, or a number with Ki, Mi, Gi)"))?;
    let scale: usize = match unit.trim() {
        "" | "B" => 1,
        "Ki" | "KiB" => 1 << 10,
        "Mi" | "MiB" => 1 << 20,
        "Gi" | "GiB" => 1 << 30,
        other => return Err(format!("{text:?}: unknown unit {other:?} (Ki, Mi, Gi)")),
    };
    value
        .checked_mul(scale)
        .ok_or_else(|| format!("{text:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("64Ki").unwrap(), 64 << 10);
        assert_eq!(parse_size("3584Ki").unwrap(), 3584 << 10);
        assert_eq!(parse_size("32Mi").unwrap(), 32 << 20);
        assert_eq!(parse_size("1GiB").unwrap(), 1 << 30);
        for bad in ["", "Mi", "12k", "1.5Mi", "-1"] {
            assert!(parse_size(bad).is_err(), "{bad:?}");
        }
    }
}
