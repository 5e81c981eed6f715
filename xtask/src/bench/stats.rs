//! Summary statistics of a peer's samples: min, percentiles (linear interpolation between
//! closest ranks), max and mean, all in microseconds.

use serde::Serialize;

/// The distribution of one peer's wall times, µs.
#[derive(Clone, Copy, Debug, Serialize, PartialEq)]
pub struct Summary {
    /// Fastest run.
    pub min_us: f64,
    /// 10th percentile.
    pub p10_us: f64,
    /// Median.
    pub median_us: f64,
    /// 90th percentile.
    pub p90_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// Slowest run.
    pub max_us: f64,
    /// Arithmetic mean.
    pub mean_us: f64,
}

/// Summarises `samples` (µs); `None` when there are none.
pub fn summarize(samples: &[f64]) -> Option<Summary> {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let (first, last) = (*sorted.first()?, *sorted.last()?);
    Some(Summary {
        min_us: first,
        p10_us: percentile(&sorted, 10.0),
        median_us: percentile(&sorted, 50.0),
        p90_us: percentile(&sorted, 90.0),
        p99_us: percentile(&sorted, 99.0),
        max_us: last,
        mean_us: sorted.iter().sum::<f64>() / sorted.len() as f64,
    })
}

/// The `p`th percentile of non-empty sorted `sorted`, interpolating between closest ranks.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = p / 100.0 * (sorted.len() - 1) as f64;
    let (low, high) = (rank.floor() as usize, rank.ceil() as usize);
    let frac = rank - low as f64;
    sorted[low] + (sorted[high] - sorted[low]) * frac
}

/// The median of unsorted `values`; `None` when empty.
pub fn median(values: &[f64]) -> Option<f64> {
    summarize(values).map(|s| s.median_us)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_summarize_empty_is_none() {
        assert_eq!(summarize(&[]), None);
    }

    #[test]
    fn test_summarize_one_sample_is_that_sample_everywhere() {
        let s = summarize(&[7.0]).unwrap();
        assert_eq!(
            (s.min_us, s.median_us, s.p99_us, s.max_us),
            (7.0, 7.0, 7.0, 7.0)
        );
    }

    #[test]
    fn test_percentile_even_count_interpolates_median() {
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
    }

    #[test]
    fn test_percentile_p90_of_eleven_is_tenth_value() {
        let sorted: Vec<f64> = (0..=10).map(f64::from).collect();
        assert_eq!(percentile(&sorted, 90.0), 9.0);
    }
}
