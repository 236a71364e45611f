//! The loss curve as a small standalone SVG: training loss per step and validation loss.

use std::fmt::Write;

/// Renders `train` (step, loss) and `val` (step, loss) as polylines on shared axes.
pub fn loss_svg(title: &str, train: &[(u64, f32)], val: &[(u64, f32)]) -> String {
    let (w, h, m) = (720.0, 400.0, 50.0);
    let all = train.iter().chain(val).filter(|p| p.1.is_finite());
    let (mut x_max, mut y_min, mut y_max) = (1.0f64, f64::INFINITY, f64::NEG_INFINITY);
    for &(x, y) in all {
        x_max = x_max.max(x as f64);
        y_min = y_min.min(y as f64);
        y_max = y_max.max(y as f64);
    }
    if !y_min.is_finite() {
        (y_min, y_max) = (0.0, 1.0);
    }
    if y_max - y_min < 1e-6 {
        y_max = y_min + 1.0;
    }
    let px = |x: u64| m + (x as f64 / x_max) * (w - 2.0 * m);
    let py = |y: f32| h - m - ((y as f64 - y_min) / (y_max - y_min)) * (h - 2.0 * m);
    let line = |points: &[(u64, f32)]| {
        points
            .iter()
            .filter(|p| p.1.is_finite())
            .map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y)))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let mut svg = String::new();
    let _ = write!(
        svg,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{m}" y="24" font-size="15">{title}</text>
<line x1="{m}" y1="{b}" x2="{r}" y2="{b}" stroke="black"/>
<line x1="{m}" y1="{m}" x2="{m}" y2="{b}" stroke="black"/>
<text x="{r}" y="{lx}" text-anchor="end">step {x_max}</text>
<text x="4" y="{m}">{y_max:.3}</text>
<text x="4" y="{b}">{y_min:.3}</text>
<polyline fill="none" stroke="#1f77b4" stroke-width="1.2" points="{train}"/>
<polyline fill="none" stroke="#d62728" stroke-width="2" points="{val}"/>
<text x="{r}" y="{m}" text-anchor="end" fill="#1f77b4">train loss</text>
<text x="{r}" y="{v}" text-anchor="end" fill="#d62728">validation loss</text>
</svg>
"##,
        b = h - m,
        r = w - m,
        lx = h - m + 20.0,
        v = m + 16.0,
        train = line(train),
        val = line(val),
    );
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plots_both_series_within_the_frame() {
        let svg = loss_svg("t", &[(1, 5.0), (2, 4.0), (3, 3.0)], &[(3, 3.5)]);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        // x from 50 to 670 over steps 0..3, y from 350 (loss 3) up to 50 (loss 5).
        assert!(
            svg.contains("points=\"256.7,50.0 463.3,200.0 670.0,350.0\""),
            "{svg}"
        );
        assert!(svg.contains("points=\"670.0,275.0\""), "{svg}");
        assert_eq!(svg.matches("<polyline").count(), 2);
    }
}
