//! A run's latency distribution as an SVG (`plotters`, no fonts needed: the
//! text is SVG text the viewer renders): each series' share of samples at or
//! under each latency, on a log scale, with its p50 and p99 in the legend.

use std::path::Path;
use std::time::Duration;

use plotters::prelude::*;

use crate::stats::percentile_ms;

/// One named set of latency samples.
pub struct Series {
    pub label: String,
    pub samples: Vec<Duration>,
}

impl Series {
    pub fn new(label: impl Into<String>, samples: Vec<Duration>) -> Self {
        Self {
            label: label.into(),
            samples,
        }
    }
}

/// At most this many points a curve: a million samples draw like 2,000.
const POINTS: usize = 2000;

pub fn latency_svg(path: &Path, title: &str, series: &mut [Series]) -> anyhow::Result<()> {
    let series: Vec<&mut Series> = series
        .iter_mut()
        .filter(|s| !s.samples.is_empty())
        .collect();
    anyhow::ensure!(!series.is_empty(), "no samples to plot");
    let all = series.iter().flat_map(|s| s.samples.iter());
    let (min, max) = all.fold((f64::MAX, 0f64), |(lo, hi), d| {
        let ms = d.as_secs_f64() * 1e3;
        (lo.min(ms), hi.max(ms))
    });
    let (min, max) = ((min * 0.9).max(1e-3), (max * 1.1).max(min * 2.0));

    let root = SVGBackend::new(path, (900, 520)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(56)
        .build_cartesian_2d(
            (min..max)
                .log_scale()
                .with_key_points(one_two_five(min, max)),
            0f64..100f64,
        )?;
    chart
        .configure_mesh()
        .x_label_formatter(&|ms| format!("{}", ((ms * 1000.0).round() / 1000.0)))
        .y_labels(11)
        .x_desc("latency (ms, log scale)")
        .y_desc("% of samples at or under")
        .draw()?;
    for (i, series) in series.into_iter().enumerate() {
        let p50 = percentile_ms(&mut series.samples, 50.0);
        let p99 = percentile_ms(&mut series.samples, 99.0);
        let n = series.samples.len();
        let step = n.div_ceil(POINTS).max(1);
        let points: Vec<(f64, f64)> = (0..n)
            .step_by(step)
            .chain(std::iter::once(n - 1))
            .map(|k| {
                let ms = series.samples[k].as_secs_f64() * 1e3;
                (ms, 100.0 * (k + 1) as f64 / n as f64)
            })
            .collect();
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))?
            .label(format!(
                "{} ({n} samples): p50 {p50:.3} ms, p99 {p99:.3} ms",
                series.label
            ))
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

/// The 1, 2, 5 × 10^k values in `[min, max]`: the log axis' labels.
fn one_two_five(min: f64, max: f64) -> Vec<f64> {
    let mut points = Vec::new();
    let mut decade = 10f64.powf(min.log10().floor());
    while decade <= max {
        for step in [1.0, 2.0, 5.0] {
            let x = decade * step;
            if (min..=max).contains(&x) {
                points.push(x);
            }
        }
        decade *= 10.0;
    }
    points
}
