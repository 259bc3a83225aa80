//! Summaries of measured durations: nearest-rank percentiles, and milliseconds for a report.

use std::time::Duration;

/// Nearest-rank percentile `p` (0–100) of sorted `values`; `None` when there are none.
pub fn percentile(values: &[Duration], p: usize) -> Option<Duration> {
    if values.is_empty() {
        return None;
    }
    let rank = (p * values.len()).div_ceil(100).max(1);
    values.get(rank - 1).copied()
}

/// Whole milliseconds, or `-` for no value.
pub fn ms(d: Option<Duration>) -> String {
    d.map_or_else(|| "-".to_owned(), |d| d.as_millis().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let v: Vec<Duration> = (1..=10).map(Duration::from_millis).collect();
        assert_eq!(percentile(&v, 50), Some(Duration::from_millis(5)));
        assert_eq!(percentile(&v, 99), Some(Duration::from_millis(10)));
        assert_eq!(percentile(&v[..1], 99), Some(Duration::from_millis(1)));
        assert_eq!(percentile(&[], 50), None);
    }
}
