//! The latency histogram picture (`latency.svg`): every latency step and the raw baseline as one
//! line each over logarithmic bins, so the shape of the tail shows at a glance where the report's
//! p99 is a single number. Drawn as plain SVG text: a picture needs no plotting dependency.

use std::fmt::Write as _;

use crate::figure::percentile;

/// One line of the picture: a label and its latencies in milliseconds.
pub struct Series {
    pub label: String,
    pub samples_ms: Vec<f64>,
}

/// Bins per factor of ten.
const BINS_PER_DECADE: i32 = 10;
const COLOURS: [&str; 6] = ["#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#666666"];
const WIDTH: f64 = 900.0;
const HEIGHT: f64 = 420.0;
const LEFT: f64 = 60.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 50.0;

/// The bin a latency falls in: bin `b` holds `[10^(b/10), 10^((b+1)/10))` milliseconds.
/// Latencies below a microsecond share the lowest bin.
fn bin_of(ms: f64) -> i32 {
    (ms.max(0.001).log10() * f64::from(BINS_PER_DECADE)).floor() as i32
}

fn bin_start_ms(bin: i32) -> f64 {
    10f64.powf(f64::from(bin) / f64::from(BINS_PER_DECADE))
}

/// Share of the samples (0..=1) in each bin from `first` to `last`, both included.
fn shares(samples: &[f64], first: i32, last: i32) -> Vec<f64> {
    let mut counts = vec![0usize; (last - first + 1) as usize];
    for &ms in samples {
        counts[(bin_of(ms).clamp(first, last) - first) as usize] += 1;
    }
    let total = samples.len().max(1) as f64;
    counts.into_iter().map(|n| n as f64 / total).collect()
}

/// The picture: x is latency on a log scale over whole decades covering every sample, y the share
/// of a series' messages in each bin; the legend gives each series' count, p50 and p99.
pub fn svg(title: &str, series: &[Series]) -> String {
    let all = || series.iter().flat_map(|s| s.samples_ms.iter().copied());
    let lowest = all().fold(f64::INFINITY, f64::min);
    let highest = all().fold(0.0, f64::max);
    let (first, last) = if lowest.is_finite() {
        let decade = |bin: i32| bin.div_euclid(BINS_PER_DECADE) * BINS_PER_DECADE;
        (decade(bin_of(lowest)), decade(bin_of(highest)) + BINS_PER_DECADE - 1)
    } else {
        (-BINS_PER_DECADE, 2 * BINS_PER_DECADE - 1)
    };
    let bins = series
        .iter()
        .map(|s| shares(&s.samples_ms, first, last))
        .collect::<Vec<_>>();
    let peak = bins.iter().flatten().copied().fold(0.0, f64::max).max(0.01);
    let y_top = (peak * 20.0).ceil() / 20.0; // the next 5%
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let bin_w = plot_w / f64::from(last - first + 1);
    let x = |bin: i32| LEFT + f64::from(bin - first) * bin_w;
    let y = |share: f64| TOP + plot_h * (1.0 - share / y_top);

    let mut out = String::new();
    let _ = write!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    let _ = write!(out, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = write!(
        out,
        r#"<text x="{}" y="22" text-anchor="middle" font-size="15">{}</text>"#,
        WIDTH / 2.0,
        escape(title)
    );
    // Axes, decade ticks with 2× and 5× ticks between, and share ticks every 5%.
    let _ = write!(
        out,
        r#"<path d="M{LEFT},{TOP}V{}H{}" fill="none" stroke="black"/>"#,
        TOP + plot_h,
        LEFT + plot_w
    );
    let x_of_ms = |ms: f64| LEFT + (ms.log10() * f64::from(BINS_PER_DECADE) - f64::from(first)) * bin_w;
    let mut decade_ms = bin_start_ms(first);
    while decade_ms <= bin_start_ms(last + 1) * 1.001 {
        for (factor, major) in [(1.0, true), (2.0, false), (5.0, false)] {
            let ms = decade_ms * factor;
            if ms > bin_start_ms(last + 1) * 1.001 {
                break;
            }
            let px = x_of_ms(ms);
            let _ = write!(
                out,
                r#"<line x1="{px:.1}" y1="{TOP}" x2="{px:.1}" y2="{}" stroke="{}"/>"#,
                TOP + plot_h,
                if major { "#ccc" } else { "#eee" }
            );
            let _ = write!(
                out,
                r#"<text x="{px:.1}" y="{}" text-anchor="middle">{}</text>"#,
                TOP + plot_h + 16.0,
                tick_label(ms)
            );
        }
        decade_ms *= 10.0;
    }
    let _ = write!(
        out,
        r#"<text x="{}" y="{}" text-anchor="middle">latency (ms, log scale)</text>"#,
        LEFT + plot_w / 2.0,
        HEIGHT - 10.0
    );
    let mut tick = 0.0;
    while tick <= y_top + 1e-9 {
        let _ = write!(
            out,
            r#"<text x="{}" y="{:.1}" text-anchor="end">{:.0}%</text>"#,
            LEFT - 6.0,
            y(tick) + 4.0,
            tick * 100.0
        );
        tick += 0.05;
    }
    let _ = write!(
        out,
        r#"<text transform="translate(16,{}) rotate(-90)" text-anchor="middle">share of messages</text>"#,
        TOP + plot_h / 2.0
    );
    // One step line per series, and its legend entry.
    for (index, (series, shares)) in series.iter().zip(&bins).enumerate() {
        let colour = COLOURS[index % COLOURS.len()];
        let mut path = format!("M{:.1},{:.1}", x(first), y(0.0));
        for (offset, share) in shares.iter().enumerate() {
            let bin = first + offset as i32;
            let _ = write!(path, "V{:.1}H{:.1}", y(*share), x(bin + 1));
        }
        let _ = write!(path, "V{:.1}", y(0.0));
        let _ = write!(
            out,
            r#"<path d="{path}" fill="none" stroke="{colour}" stroke-width="1.5"/>"#
        );
        let mut sorted = series.samples_ms.clone();
        sorted.sort_by(f64::total_cmp);
        let legend_y = TOP + 14.0 + 16.0 * index as f64;
        let _ = write!(
            out,
            r#"<rect x="{}" y="{:.1}" width="12" height="3" fill="{colour}"/><text x="{}" y="{:.1}">{}: p50 {:.2} ms, p99 {:.2} ms, n = {}</text>"#,
            WIDTH - RIGHT - 440.0,
            legend_y - 4.0,
            WIDTH - RIGHT - 424.0,
            legend_y,
            escape(&series.label),
            percentile(&sorted, 50.0),
            percentile(&sorted, 99.0),
            sorted.len(),
        );
    }
    out.push_str("</svg>\n");
    out
}

/// `0.1`, `2`, `50`, `1000`: as few digits as the tick needs.
fn tick_label(ms: f64) -> String {
    let rounded = (ms * 1000.0).round() / 1000.0;
    let mut text = format!("{rounded:.3}");
    while text.ends_with('0') {
        text.pop();
    }
    if text.ends_with('.') {
        text.pop();
    }
    text
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_latency_lands_in_the_bin_of_its_decade_tenth() {
        assert_eq!(bin_of(1.0), 0);
        assert_eq!(bin_of(1.2), 0);
        assert_eq!(bin_of(1.3), 1);
        assert_eq!(bin_of(0.5), -4);
        assert_eq!(bin_of(10.0), 10);
        assert_eq!(bin_of(0.0), -30);
        assert!((bin_start_ms(3) - 1.995).abs() < 0.01);
    }

    #[test]
    fn shares_count_every_sample_once_and_clamp_the_outliers_into_the_end_bins() {
        let shares = shares(&[0.001, 1.0, 1.1, 5.0, 1e6], -10, 9);
        assert_eq!(shares.len(), 20);
        assert!((shares.iter().sum::<f64>() - 1.0).abs() < 1e-9);
        assert_eq!(shares[0], 0.2); // 1 µs, clamped up
        assert_eq!(shares[10], 0.4); // 1.0 and 1.1 ms
        assert_eq!(shares[16], 0.2); // 5 ms
        assert_eq!(shares[19], 0.2); // 1000 s, clamped down
    }

    #[test]
    fn the_picture_draws_a_line_and_a_legend_per_series_over_whole_decades() {
        let picture = svg(
            "Latency <50%>",
            &[
                Series {
                    label: "raw".into(),
                    samples_ms: vec![0.2, 0.25, 0.3],
                },
                Series {
                    label: "Parley 50%".into(),
                    samples_ms: vec![1.0, 1.5, 40.0],
                },
            ],
        );
        assert!(picture.starts_with("<svg") && picture.ends_with("</svg>\n"));
        assert!(picture.contains("Latency &lt;50%&gt;"));
        assert_eq!(picture.matches(r##"fill="none" stroke="#"##).count(), 2);
        assert!(picture.contains("raw: p50 0.25 ms, p99 0.30 ms, n = 3"));
        assert!(picture.contains("Parley 50%: p50 1.50 ms, p99 40.00 ms, n = 3"));
        // From the decade of 0.2 ms to the end of the decade of 40 ms: ticks 0.1 … 100.
        assert!(picture.contains(">0.1</text>") && picture.contains(">100</text>"));
        assert!(!picture.contains(">0.01</text>") && !picture.contains(">1000</text>"));
    }
}
