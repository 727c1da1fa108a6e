//! Small helpers for the printed tables and `RESULTS.md`.

use anyhow::{Context, Result};
use std::path::Path;

/// The median of `v` (mean of the two middle values for even lengths); NaN when empty.
pub fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

pub fn min_max(v: &[f64]) -> (f64, f64) {
    v.iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &x| {
            (lo.min(x), hi.max(x))
        })
}

/// A markdown table from a header and rows.
pub fn markdown_table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut s = String::new();
    s.push_str(&format!("| {} |\n", header.join(" | ")));
    s.push_str(&format!(
        "|{}\n",
        header.iter().map(|_| " --- |").collect::<String>()
    ));
    for r in rows {
        s.push_str(&format!("| {} |\n", r.join(" | ")));
    }
    s
}

const HEADER: &str = "# lamina-benches: results\n\n\
Written by `lamina-bench` (`benches/src/main.rs`). Each section below is replaced by the \
subcommand that produced it; raw numbers are in `benches/results/*.json`.\n";

/// Replaces the section `name` of the markdown file at `path` (between
/// `<!-- BEGIN name -->` and `<!-- END name -->`), appending it when absent.
pub fn update_section(path: &Path, name: &str, body: &str) -> Result<()> {
    let begin = format!("<!-- BEGIN {name} -->");
    let end = format!("<!-- END {name} -->");
    let old = std::fs::read_to_string(path).unwrap_or_else(|_| HEADER.to_string());
    let block = format!("{begin}\n{}\n{end}", body.trim_end());
    let new = match (old.find(&begin), old.find(&end)) {
        (Some(b), Some(e)) if e > b => {
            format!("{}{}{}", &old[..b], block, &old[e + end.len()..])
        }
        _ => format!("{}\n{}\n", old.trim_end(), block),
    };
    std::fs::write(path, new).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&[]).is_nan());
    }

    #[test]
    fn sections_are_replaced_in_place() {
        let dir = std::env::temp_dir().join(format!("lamina-bench-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("R.md");
        update_section(&p, "a", "one").unwrap();
        update_section(&p, "b", "two").unwrap();
        update_section(&p, "a", "three").unwrap();
        let s = std::fs::read_to_string(&p).unwrap();
        assert!(s.contains("three") && s.contains("two") && !s.contains("one"));
        assert!(s.find("BEGIN a").unwrap() < s.find("BEGIN b").unwrap());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
