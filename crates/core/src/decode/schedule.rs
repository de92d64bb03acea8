//! Which masked positions a step commits (SPEC §3): the transfer schedule and the
//! threshold-with-fallback rule.

/// Tokens to commit at each of `steps` steps of a block of `block_length`:
/// `floor(B/S)`, plus one for the first `B mod S` steps.
pub fn transfer_schedule(block_length: usize, steps: usize) -> Vec<usize> {
    let base = block_length / steps;
    let extra = block_length % steps;
    (0..steps).map(|s| base + usize::from(s < extra)).collect()
}

/// Picks the window indices to commit among `masked` (indices with their confidences):
/// every one above `threshold` if there are at least `n` of them, else the `min(n, masked)`
/// most confident (ties to the lower index). Returned in ascending index order.
pub fn select_commits(masked: &[(usize, f32)], threshold: f32, n: usize) -> Vec<usize> {
    let above: Vec<usize> = masked
        .iter()
        .filter(|m| m.1 > threshold)
        .map(|m| m.0)
        .collect();
    let mut chosen = if above.len() >= n {
        above
    } else {
        let mut by_conf = masked.to_vec();
        by_conf.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        by_conf.truncate(n.min(masked.len()));
        by_conf.into_iter().map(|m| m.0).collect()
    };
    chosen.sort_unstable();
    chosen
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_spreads_the_remainder_first() {
        assert_eq!(transfer_schedule(32, 32), vec![1; 32]);
        assert_eq!(transfer_schedule(16, 4), vec![4; 4]);
        let s = transfer_schedule(32, 12);
        assert_eq!(s.iter().sum::<usize>(), 32);
        assert_eq!(&s[..8], &[3; 8]);
        assert_eq!(&s[8..], &[2; 4]);
        assert_eq!(transfer_schedule(4, 6), vec![1, 1, 1, 1, 0, 0]);
    }

    #[test]
    fn threshold_or_fallback() {
        let m = [(0, 0.5), (1, 0.97), (2, 0.99), (3, 0.2)];
        // Two above 0.95 >= n = 1: both.
        assert_eq!(select_commits(&m, 0.95, 1), vec![1, 2]);
        // Fewer than n = 3 above: the three most confident.
        assert_eq!(select_commits(&m, 0.95, 3), vec![0, 1, 2]);
        // Strict comparison: equal to the threshold is not above.
        assert_eq!(select_commits(&[(4, 0.9), (5, 0.8)], 0.9, 1), vec![4]);
        assert_eq!(
            select_commits(&[(4, 0.9), (5, 0.8)], 0.9, 0),
            Vec::<usize>::new()
        );
        // Ties go to the lower index; never more than are masked.
        assert_eq!(select_commits(&[(7, 0.3), (2, 0.3)], 1.0, 1), vec![2]);
        assert_eq!(select_commits(&[(7, 0.3)], 1.0, 5), vec![7]);
    }
}
