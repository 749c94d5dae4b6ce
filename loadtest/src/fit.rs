//! Robust line fits for the soak: the Theil–Sen estimator.
//!
//! A soak's samples have outliers that are not trends: an export building an 8 MiB answer, a
//! burst of calls ending at once, the allocator handing a page back. Least squares follows them;
//! Theil–Sen takes the median of the slopes between every pair of points, so up to ~29% of
//! the points can be wild without moving the fit (its breakdown point).

/// Most points fitted: the estimator looks at every pair (n² / 2), and 2,000 points (5.5 hours
/// of samples every 10 s) are 2 million slopes, a fraction of a second. Longer series are
/// thinned evenly to this.
pub const MAX_POINTS: usize = 2_000;

/// The Theil–Sen slope through `points` (x, y): the median of the pairwise slopes. `None` with
/// fewer than two distinct x.
pub fn theil_sen(points: &[(f64, f64)]) -> Option<f64> {
    let pts = thin(points);
    let mut slopes = Vec::with_capacity(pts.len() * pts.len().saturating_sub(1) / 2);
    for (i, &(xi, yi)) in pts.iter().enumerate() {
        for &(xj, yj) in &pts[i + 1..] {
            if xj != xi {
                slopes.push((yj - yi) / (xj - xi));
            }
        }
    }
    median(&mut slopes)
}

/// Every k-th point so at most [`MAX_POINTS`] remain (the last one always kept).
fn thin(points: &[(f64, f64)]) -> Vec<(f64, f64)> {
    if points.len() <= MAX_POINTS {
        return points.to_vec();
    }
    let step = points.len().div_ceil(MAX_POINTS);
    let mut out: Vec<(f64, f64)> = points.iter().step_by(step).copied().collect();
    if let (Some(&last), Some(kept)) = (points.last(), out.last()) {
        if *kept != last {
            out.push(last);
        }
    }
    out
}

/// The median (the mean of the middle two for an even count); `None` when empty. NaNs sort last.
pub fn median(v: &mut [f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_exact_line_is_found() {
        let pts: Vec<(f64, f64)> = (0..20).map(|i| (i as f64, 3.0 + 0.5 * i as f64)).collect();
        let slope = theil_sen(&pts).unwrap();
        assert!((slope - 0.5).abs() < 1e-12, "{slope}");
    }

    /// A flat series with a few huge spikes (an export, a burst): least squares would report a
    /// slope; Theil–Sen reports none.
    #[test]
    fn spikes_do_not_make_a_trend() {
        let mut pts: Vec<(f64, f64)> = (0..60).map(|i| (i as f64 * 10.0, 100.0)).collect();
        for i in [40, 50, 55, 59] {
            pts[i].1 += 50.0;
        }
        assert_eq!(theil_sen(&pts), Some(0.0));
        let n = pts.len() as f64;
        let (mx, my) = (
            pts.iter().map(|p| p.0).sum::<f64>() / n,
            pts.iter().map(|p| p.1).sum::<f64>() / n,
        );
        let ls = pts.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum::<f64>()
            / pts.iter().map(|p| (p.0 - mx).powi(2)).sum::<f64>();
        // 0.024 per x: a rise of 14 over the window where nothing rose.
        assert!(ls > 0.01, "least squares would see a climb: {ls}");
    }

    #[test]
    fn too_few_points_give_no_line() {
        assert_eq!(theil_sen(&[]), None);
        assert_eq!(theil_sen(&[(1.0, 2.0)]), None);
        assert_eq!(theil_sen(&[(1.0, 2.0), (1.0, 5.0)]), None);
    }

    #[test]
    fn long_series_are_thinned_and_still_fit() {
        let pts: Vec<(f64, f64)> = (0..5_001).map(|i| (i as f64, -2.0 * i as f64)).collect();
        assert!(thin(&pts).len() <= MAX_POINTS + 1);
        assert_eq!(thin(&pts).last(), pts.last());
        assert_eq!(theil_sen(&pts), Some(-2.0));
    }

    #[test]
    fn medians() {
        assert_eq!(median(&mut []), None);
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&mut [4.0, 1.0, 2.0, 3.0]), Some(2.5));
    }
}
