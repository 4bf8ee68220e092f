//! Latency pictures: the CDF of container-start latency per strategy, idle vs under pressure,
//! one panel per kernel, log-scale x (a stall is orders of magnitude, not percent).

use std::path::Path;

use plotters::prelude::*;

use crate::bench::Phase;
use crate::stall::LabReport;

const COLORS: [RGBColor; 3] = [
    RGBColor(200, 40, 40),
    RGBColor(90, 90, 200),
    RGBColor(20, 150, 60),
];

/// Draw `report` as an SVG at `out`.
pub fn cdf_svg(report: &LabReport, out: &Path) -> Result<(), String> {
    let panels = report.runs.len().max(1);
    let root = SVGBackend::new(out, (640 * panels as u32, 440)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let areas = root.split_evenly((1, panels));
    for (area, run) in areas.iter().zip(&report.runs) {
        let mut max_ms: f64 = 1.0;
        for ph in &run.phases {
            for s in &ph.strategies {
                max_ms = max_ms.max(s.max_ms);
            }
        }
        let mut chart = ChartBuilder::on(area)
            .caption(
                format!(
                    "start latency CDF: {} ({})",
                    run.kernel,
                    run.scenario.name()
                ),
                ("sans-serif", 18),
            )
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(48)
            .build_cartesian_2d((0.01f64..max_ms * 2.0).log_scale(), 0f64..1.0f64)
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .x_desc("container start latency (ms, log)")
            .y_desc("fraction of starts")
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
                let pts = s
                    .samples_ms
                    .iter()
                    .enumerate()
                    .map(|(k, &v)| (v.max(0.01), (k + 1) as f64 / n));
                chart
                    .draw_series(LineSeries::new(pts, style))
                    .map_err(|e| e.to_string())?
                    .label(format!("{} {} (max {:.1} ms)", s.name, ph.phase, s.max_ms))
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], style));
            }
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(|e| e.to_string())?;
    }
    root.present().map_err(|e| e.to_string())
}
