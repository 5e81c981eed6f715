//! Summary statistics of a peer's samples: min, percentiles (the bench's interpolating
//! [`percentile`]), max and mean, all in microseconds.

use crate::contracts::percentile;
use serde::Serialize;

/// The distribution of one peer's wall times, µs.
#[derive(Clone, Copy, Debug, Serialize, PartialEq)]
pub(crate) struct Summary {
    /// Fastest run.
    pub(crate) min_us: f64,
    /// 10th percentile.
    pub(crate) p10_us: f64,
    /// Median.
    pub(crate) median_us: f64,
    /// 90th percentile.
    pub(crate) p90_us: f64,
    /// 99th percentile.
    pub(crate) p99_us: f64,
    /// Slowest run.
    pub(crate) max_us: f64,
    /// Arithmetic mean.
    pub(crate) mean_us: f64,
}

/// Summarises `samples` (µs); `None` when there are none.
pub(crate) fn summarize(samples: &[f64]) -> Option<Summary> {
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
    fn test_summarize_mean_is_the_average() {
        assert_eq!(summarize(&[1.0, 2.0, 6.0]).unwrap().mean_us, 3.0);
    }
}
