//! Parsers of flag values: each refuses what it cannot use with a one-line reason.

use super::LayersChoice;

pub(crate) fn parse_role(s: &str) -> Result<lamina_protocol::Role, String> {
    s.parse()
}

/// Durations like 30d, 12h, 90m, 3600s (a bare number is seconds).
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration like 30d, 12h, 90m or 3600s"))?;
    let mult: u64 = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        u => return Err(format!("`{u}` is not a duration unit (s, m, h, d)")),
    };
    n.checked_mul(mult)
        .filter(|&v| v > 0)
        .map(std::time::Duration::from_secs)
        .ok_or_else(|| format!("`{s}` is not a usable duration"))
}

pub(crate) fn parse_layers_choice(s: &str) -> Result<LayersChoice, String> {
    s.parse()
}

/// Byte sizes: a number with an optional unit (B, KB, MB, GB, KiB, MiB, GiB).
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a size like 512MiB or 2GB"))?;
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "kb" | "k" => 1e3,
        "mb" | "m" => 1e6,
        "gb" | "g" => 1e9,
        "kib" => 1024.0,
        "mib" => 1024.0 * 1024.0,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        u => {
            return Err(format!(
                "`{u}` is not a size unit (B, KB, MB, GB, KiB, MiB, GiB)"
            ))
        }
    };
    let v = n * mult;
    if !(v.is_finite() && (1.0..1e18).contains(&v)) {
        return Err(format!("`{s}` is not a usable size"));
    }
    Ok(v as u64)
}

/// Thread counts from 1 to 1024: zero would deadlock and more is a typo.
pub(crate) fn parse_threads(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if (1..=1024).contains(&n) => Ok(n),
        _ => Err(format!("`{s}` is not a thread count from 1 to 1024")),
    }
}

/// Demo meshes of 1 to 16 nodes (each is a process on this machine).
pub(crate) fn parse_node_count(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if (1..=16).contains(&n) => Ok(n),
        _ => Err(format!("`{s}` is not a node count from 1 to 16")),
    }
}

/// Session limits from 1 to 65536.
pub(crate) fn parse_max_sessions(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if (1..=65536).contains(&n) => Ok(n),
        _ => Err(format!("`{s}` is not a session count from 1 to 65536")),
    }
}

/// Connection caps from 1 to 65536.
pub(crate) fn parse_count(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if (1..=65536).contains(&n) => Ok(n),
        _ => Err(format!("`{s}` is not a count from 1 to 65536")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_units_and_refuse_junk() {
        assert_eq!(parse_bytes("512MiB"), Ok(512 << 20));
        assert_eq!(parse_bytes("2GB"), Ok(2_000_000_000));
        assert_eq!(parse_bytes("1000"), Ok(1000));
        assert_eq!(parse_bytes("1.5 GiB"), Ok(3 << 29));
        for bad in ["", "abc", "10XB", "-5MB", "0"] {
            assert!(parse_bytes(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn layers_choice_parses() {
        assert_eq!(parse_layers_choice("auto"), Ok(LayersChoice::Auto));
        assert_eq!(parse_layers_choice("none"), Ok(LayersChoice::None));
        assert!(matches!(
            parse_layers_choice("0..4"),
            Ok(LayersChoice::Fixed(_))
        ));
        assert!(parse_layers_choice("4..2").is_err());
    }
}
