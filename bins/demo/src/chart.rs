//! The run's chart: load, replicas and p95 latency over time, one panel
//! each, as a PNG.

use std::path::Path;

use plotters::prelude::*;
use plotters::style::{FontStyle, register_font};

use crate::record::{Entry, Sample};

/// Fonts tried for the chart's text, in order (Debian's `fonts-dejavu-core`
/// and `fonts-liberation`).
pub const FONTS: [&str; 3] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
];

/// Drawing the chart failed.
#[derive(Debug, thiserror::Error)]
pub enum ChartError {
    /// No font for the labels.
    #[error("no font for the chart's labels: install the Debian package fonts-dejavu-core (looked for {})", FONTS.join(", "))]
    NoFont,
    /// The run recorded no samples.
    #[error("the run recorded no samples")]
    Empty,
    /// plotters failed.
    #[error("drawing {path}: {message}")]
    Draw {
        /// The file.
        path: String,
        /// What failed.
        message: String,
    },
}

/// The series the chart draws, one point per sample: seconds since the
/// first sample.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Series {
    /// Open connections.
    pub connections: Vec<(f64, f64)>,
    /// Messages sent per second (between two samples).
    pub rate: Vec<(f64, f64)>,
    /// Replicas asked for.
    pub wanted: Vec<(f64, f64)>,
    /// Replicas Ready.
    pub ready: Vec<(f64, f64)>,
    /// The highest p95 latency among the socket pods, ms.
    pub p95: Vec<(f64, f64)>,
}

/// The series of the samples among `entries`.
pub fn series(entries: &[Entry]) -> Series {
    let samples: Vec<&Sample> = entries
        .iter()
        .filter_map(|e| match e {
            Entry::Sample(s) => Some(s),
            _ => None,
        })
        .collect();
    let mut out = Series::default();
    let Some(first) = samples.first() else {
        return out;
    };
    let t = |s: &Sample| s.at_ms.saturating_sub(first.at_ms) as f64 / 1000.0;
    let mut previous: Option<&Sample> = None;
    for s in &samples {
        let x = t(s);
        out.connections.push((x, s.load.open as f64));
        if let Some(p) = previous {
            let dt = (s.at_ms.saturating_sub(p.at_ms)) as f64 / 1000.0;
            if dt > 0.0 {
                let sent = s.load.sent.saturating_sub(p.load.sent) as f64;
                out.rate.push((x, sent / dt));
            }
        }
        if let Some(w) = s.wanted {
            out.wanted.push((x, f64::from(w)));
        }
        if let Some(r) = s.ready {
            out.ready.push((x, f64::from(r)));
        }
        let p95 = s.nodes.iter().map(|n| n.p95_ms).fold(0.0, f64::max);
        out.p95.push((x, p95));
        previous = Some(s);
    }
    out
}

/// A line of a panel: its legend, its points, its colour.
type Legend<'a> = (&'a str, &'a [(f64, f64)], RGBColor);

/// One panel's drawing area.
type Area<'a> = DrawingArea<BitMapBackend<'a>, plotters::coord::Shift>;

/// A panel's axes and caption.
struct Axes<'a> {
    /// The x axis runs from 0 to this, seconds.
    end: f64,
    x_desc: &'a str,
    caption: &'a str,
    y_label: &'a str,
    y_top: f64,
}

fn draw_failed(path: &Path) -> impl Fn(&dyn std::fmt::Display) -> ChartError + '_ {
    move |e| ChartError::Draw {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

/// A white 1200 x 900 PNG at `path` with `title` on top.
fn canvas<'a>(path: &'a Path, title: &str) -> Result<Area<'a>, ChartError> {
    let failed = draw_failed(path);
    let root = BitMapBackend::new(path, (1200, 900)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| failed(&e))?;
    root.titled(title, ("sans-serif", 24))
        .map_err(|e| failed(&e))
}

/// One panel: its axes, a line per legend entry, and the legend.
fn draw_panel(
    area: &Area<'_>,
    path: &Path,
    axes: &Axes<'_>,
    lines: &[Legend<'_>],
) -> Result<(), ChartError> {
    let failed = draw_failed(path);
    let mut chart = ChartBuilder::on(area)
        .caption(axes.caption, ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..axes.end, 0.0..axes.y_top)
        .map_err(|e| failed(&e))?;
    chart
        .configure_mesh()
        .x_desc(axes.x_desc)
        .y_desc(axes.y_label)
        .draw()
        .map_err(|e| failed(&e))?;
    for (name, points, color) in lines {
        let color = *color;
        chart
            .draw_series(LineSeries::new(
                points.iter().copied(),
                color.stroke_width(2),
            ))
            .map_err(|e| failed(&e))?
            .label(*name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .map_err(|e| failed(&e))?;
    Ok(())
}

fn top(points: &[(f64, f64)], at_least: f64) -> f64 {
    points.iter().map(|p| p.1).fold(at_least, f64::max) * 1.1
}

fn load_font() -> Result<(), ChartError> {
    for path in FONTS {
        if let Ok(bytes) = std::fs::read(path) {
            // plotters keeps fonts for the life of the process.
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            if register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                return Ok(());
            }
        }
    }
    Err(ChartError::NoFont)
}

/// Draws the chart of `entries` to `path` (PNG, 1200 x 900).
///
/// # Errors
///
/// [`ChartError`] when there is no sample, no font, or drawing fails.
pub fn draw(entries: &[Entry], path: &Path, title: &str) -> Result<(), ChartError> {
    let s = series(entries);
    let Some(end) = s.connections.last().map(|p| p.0.max(1.0)) else {
        return Err(ChartError::Empty);
    };
    load_font()?;
    let root = canvas(path, title)?;
    let panels = root.split_evenly((3, 1));
    let panel =
        |area: &Area<'_>, caption: &str, y_label: &str, y_top: f64, lines: &[Legend<'_>]| {
            draw_panel(
                area,
                path,
                &Axes {
                    end,
                    x_desc: "seconds",
                    caption,
                    y_label,
                    y_top,
                },
                lines,
            )
        };
    let load_top = top(&s.connections, 1.0).max(top(&s.rate, 1.0));
    panel(
        &panels[0],
        "load",
        "connections, msg/s",
        load_top,
        &[
            ("open connections", &s.connections, BLUE),
            ("messages sent per second", &s.rate, RGBColor(230, 120, 0)),
        ],
    )?;
    panel(
        &panels[1],
        "socket replicas",
        "replicas",
        top(&s.wanted, 2.0).max(top(&s.ready, 2.0)),
        &[
            ("wanted (spec.replicas)", &s.wanted, RED),
            ("ready", &s.ready, RGBColor(0, 140, 0)),
        ],
    )?;
    panel(
        &panels[2],
        "delivery latency",
        "p95 ms",
        top(&s.p95, 10.0),
        &[("highest p95 of the socket pods", &s.p95, MAGENTA)],
    )?;
    root.present().map_err(|e| draw_failed(path)(&e))?;
    Ok(())
}

/// Colours of the comparison's systems, in order.
const PALETTE: [RGBColor; 6] = [
    RGBColor(200, 0, 0),
    RGBColor(0, 90, 200),
    RGBColor(0, 150, 60),
    RGBColor(150, 0, 170),
    RGBColor(230, 120, 0),
    RGBColor(90, 90, 90),
];

/// Draws the comparison chart of one profile to `path` (PNG, 1200 x 900):
/// the load (the connections the profile wants, and those open in the
/// first run), every run's socket pods, and every run's highest p95.
///
/// # Errors
///
/// [`ChartError`] when there is no run with samples, no font, or drawing
/// fails.
pub fn draw_compare(
    runs: &[&crate::compare::RunResult],
    path: &Path,
    title: &str,
) -> Result<(), ChartError> {
    let end = runs
        .iter()
        .filter_map(|r| r.curves.pods.last().map(|p| p.0))
        .fold(0.0, f64::max);
    let Some(first) = runs.first().filter(|_| end > 0.0) else {
        return Err(ChartError::Empty);
    };
    load_font()?;
    let root = canvas(path, title)?;
    let panels = root.split_evenly((3, 1));
    let panel =
        |area: &Area<'_>, caption: &str, y_label: &str, y_top: f64, lines: &[Legend<'_>]| {
            draw_panel(
                area,
                path,
                &Axes {
                    end,
                    x_desc: "seconds since the load started",
                    caption,
                    y_label,
                    y_top,
                },
                lines,
            )
        };
    let c = &first.curves;
    let open = format!("open connections ({} run)", first.label);
    panel(
        &panels[0],
        "load",
        "connections",
        top(&c.wanted_connections, 1.0).max(top(&c.open_connections, 1.0)),
        &[
            (
                "connections the profile wants",
                &c.wanted_connections,
                BLACK,
            ),
            (&open, &c.open_connections, RGBColor(120, 120, 120)),
        ],
    )?;
    let labels: Vec<String> = runs.iter().map(|r| r.label.clone()).collect();
    // One line per run, in the run's colour.
    let per_run = |curve: fn(&crate::compare::RunResult) -> &[(f64, f64)]| -> Vec<Legend<'_>> {
        runs.iter()
            .zip(&labels)
            .enumerate()
            .map(|(i, (r, l))| (l.as_str(), curve(r), PALETTE[i % PALETTE.len()]))
            .collect()
    };
    let pods = per_run(|r| r.curves.pods.as_slice());
    let pods_top = runs
        .iter()
        .map(|r| top(&r.curves.pods, 2.0))
        .fold(2.0, f64::max);
    panel(
        &panels[1],
        "socket pods (draining ones included)",
        "pods",
        pods_top,
        &pods,
    )?;
    let p95 = per_run(|r| r.curves.p95.as_slice());
    let p95_top = runs
        .iter()
        .map(|r| top(&r.curves.p95, 10.0))
        .fold(10.0, f64::max);
    panel(
        &panels[2],
        "highest p95 of the socket pods",
        "p95 ms",
        p95_top,
        &p95,
    )?;
    root.present().map_err(|e| draw_failed(path)(&e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Load, NodeFigures};

    fn sample(at_ms: u64, sent: u64, wanted: i32, p95: f64) -> Entry {
        Entry::Sample(Sample {
            at_ms,
            wanted: Some(wanted),
            ready: Some(wanted - 1),
            load: Load {
                open: 10,
                sent,
                ..Load::default()
            },
            nodes: vec![
                NodeFigures {
                    p95_ms: p95,
                    ..NodeFigures::default()
                },
                NodeFigures {
                    p95_ms: p95 / 2.0,
                    ..NodeFigures::default()
                },
            ],
            ..Sample::default()
        })
    }

    #[test]
    fn the_series_are_rates_and_maxima_over_seconds_since_the_start() {
        let s = series(&[sample(10_000, 0, 2, 8.0), sample(12_000, 100, 3, 20.0)]);
        assert_eq!(s.connections, [(0.0, 10.0), (2.0, 10.0)]);
        assert_eq!(s.rate, [(2.0, 50.0)]);
        assert_eq!(s.wanted, [(0.0, 2.0), (2.0, 3.0)]);
        assert_eq!(s.ready, [(0.0, 1.0), (2.0, 2.0)]);
        assert_eq!(s.p95, [(0.0, 8.0), (2.0, 20.0)]);
        assert_eq!(series(&[]), Series::default());
    }

    #[test]
    fn a_chart_is_a_png() -> Result<(), Box<dyn std::error::Error>> {
        if FONTS.iter().all(|f| !Path::new(f).exists()) {
            // Without a font the chart says so; that path is tested below.
            assert!(matches!(
                draw(&[sample(0, 0, 2, 1.0)], Path::new("/nonexistent.png"), "t"),
                Err(ChartError::NoFont)
            ));
            return Ok(());
        }
        let dir = std::env::temp_dir().join(format!("rtc-demo-chart-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let path = dir.join("chart.png");
        draw(
            &[sample(0, 0, 2, 1.0), sample(1_000, 50, 3, 40.0)],
            &path,
            "test",
        )?;
        let bytes = std::fs::read(&path)?;
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
        assert!(matches!(draw(&[], &path, "t"), Err(ChartError::Empty)));
        std::fs::remove_dir_all(&dir)?;
        Ok(())
    }
}
