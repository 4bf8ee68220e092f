//! Latency pictures: the tail of container-start latency per strategy, idle vs under pressure,
//! one panel per kernel. Plotted as the complementary CDF (fraction of starts slower than x) on
//! log-log axes: a stall hits one start in thousands and is orders of magnitude long, which a
//! linear CDF would hide in its last pixel.

use std::path::Path;

use plotters::prelude::*;

use crate::bench::Phase;
use crate::stall::LabReport;

const COLORS: [RGBColor; 4] = [
    RGBColor(200, 40, 40),
    RGBColor(90, 90, 200),
    RGBColor(20, 150, 60),
    RGBColor(200, 140, 20),
];

/// Draw `report` as an SVG at `out`.
pub fn cdf_svg(report: &LabReport, out: &Path) -> Result<(), String> {
    let panels = report.runs.len().max(1);
    let root = SVGBackend::new(out, (640 * panels as u32, 440)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let areas = root.split_evenly((1, panels));
    for (area, run) in areas.iter().zip(&report.runs) {
        let mut max_ms: f64 = 1.0;
        let mut min_ms: f64 = f64::MAX;
        for ph in &run.phases {
            for s in &ph.strategies {
                max_ms = max_ms.max(s.max_ms);
                min_ms = s.samples_ms.iter().copied().fold(min_ms, f64::min);
            }
        }
        let min_ms = if min_ms == f64::MAX {
            0.01
        } else {
            (min_ms / 1.5).max(0.001)
        };
        let most = run
            .phases
            .iter()
            .flat_map(|p| &p.strategies)
            .map(|s| s.samples_ms.len())
            .max()
            .unwrap_or(1)
            .max(1);
        let min_frac = 0.5 / most as f64;
        let mut chart = ChartBuilder::on(area)
            .caption(
                format!(
                    "container start latency tail: {} ({})",
                    run.kernel,
                    run.scenario.name()
                ),
                ("sans-serif", 16),
            )
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(48)
            .build_cartesian_2d(
                (min_ms..max_ms * 1.5).log_scale(),
                (min_frac..1.0f64).log_scale(),
            )
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .x_desc("container start latency (ms, log)")
            .y_desc("fraction of starts slower (log)")
            .draw()
            .map_err(|e| e.to_string())?;
        for ph in &run.phases {
            for (i, s) in ph
                .strategies
                .iter()
                .filter(|s| s.phase == Phase::Start)
                .enumerate()
            {
                if s.samples_ms.is_empty() {
                    continue;
                }
                let n = s.samples_ms.len() as f64;
                let color = COLORS[i % COLORS.len()];
                let style = if ph.phase == "idle" {
                    color.mix(0.45).stroke_width(1)
                } else {
                    color.stroke_width(2)
                };
                let pts = thin(s.samples_ms.len()).into_iter().map(|k| {
                    (
                        s.samples_ms[k].max(min_ms),
                        ((n - k as f64) / n).max(min_frac),
                    )
                });
                chart
                    .draw_series(LineSeries::new(pts, style))
                    .map_err(|e| e.to_string())?
                    .label(format!("{} {} (max {:.1} ms)", s.name, ph.phase, s.max_ms))
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], style));
            }
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(|e| e.to_string())?;
    }
    root.present().map_err(|e| e.to_string())
}

/// Indices of the samples worth drawing: about 1000 spread over the body, and every one of the
/// slowest 200 (the tail is the point of the picture). Keeps the SVG small for 50 000 samples.
fn thin(n: usize) -> Vec<usize> {
    if n <= 1200 {
        return (0..n).collect();
    }
    let tail = n - 200;
    let step = tail.div_ceil(1000);
    (0..tail).step_by(step).chain(tail..n).collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn thinning_keeps_the_tail() {
        let idx = super::thin(50_000);
        assert!(idx.len() < 1300);
        assert_eq!(*idx.last().unwrap(), 49_999);
        assert!(idx.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(super::thin(10), (0..10).collect::<Vec<_>>());
    }
}
