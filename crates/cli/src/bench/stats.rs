//! Summaries of repeated timings: the median and the spread around it.

use serde::Serialize;

/// Median and spread (min, 10th and 90th percentiles, max) of a set of samples, in their unit.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub p10: f64,
    pub p90: f64,
    pub max: f64,
    /// How many samples the figures summarise.
    pub n: usize,
}

impl Spread {
    /// `None` for no samples.
    pub fn of(samples: &[f64]) -> Option<Spread> {
        if samples.is_empty() {
            return None;
        }
        let mut s = samples.to_vec();
        s.sort_by(f64::total_cmp);
        Some(Spread {
            median: percentile(&s, 0.5),
            min: s[0],
            p10: percentile(&s, 0.1),
            p90: percentile(&s, 0.9),
            max: s[s.len() - 1],
            n: s.len(),
        })
    }
}

/// Linear interpolation between the closest ranks of sorted samples (numpy's default).
fn percentile(sorted: &[f64], q: f64) -> f64 {
    let pos = q * (sorted.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_of_known_samples() {
        let s = Spread::of(&[5.0, 1.0, 3.0, 2.0, 4.0]).unwrap();
        assert_eq!((s.min, s.median, s.max, s.n), (1.0, 3.0, 5.0, 5));
        assert!((s.p10 - 1.4).abs() < 1e-12, "{}", s.p10);
        assert!((s.p90 - 4.6).abs() < 1e-12, "{}", s.p90);
        // An even count takes the mean of the middle two.
        assert_eq!(Spread::of(&[4.0, 1.0, 2.0, 3.0]).unwrap().median, 2.5);
        let one = Spread::of(&[7.0]).unwrap();
        assert_eq!(
            (one.min, one.p10, one.median, one.p90, one.max),
            (7.0, 7.0, 7.0, 7.0, 7.0)
        );
        assert!(Spread::of(&[]).is_none());
    }
}
