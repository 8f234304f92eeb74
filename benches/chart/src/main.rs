//! `bench-chart RESULTS.json [FONT.ttf]`: draws PNG charts next to a benchmark result file.
//!
//! - `<stamp>-cpu.png`: server CPU µs per request, side by side for each compared scenario;
//! - `<stamp>-rps.png`: requests per second, the same way;
//! - `<stamp>-ratio.png`: gateway / nginx per scenario (CPU per request; RSS growth for S6)
//!   on one linear scale, with the 1.0 line and each scenario's target, so the small
//!   scenarios are not hidden behind the 1 MiB bars of the absolute charts.
//!
//! Text needs a TrueType font; Debian's DejaVu Sans is the default (`fonts-dejavu-core`).

use anyhow::{bail, Context, Result};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use serde_json::Value;
use std::path::{Path, PathBuf};

const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

/// One bar group: scenario id and (server, value) pairs.
type Group = (String, Vec<(String, f64)>);

/// The compared scenarios of a run, with `metric` for each server.
fn groups(doc: &Value, metric: &str) -> Vec<Group> {
    let mut out = Vec::new();
    let Some(results) = doc["results"].as_object() else {
        return out;
    };
    for (sid, row) in results {
        let Some(servers) = row["servers"].as_array() else {
            continue;
        };
        let bars: Vec<(String, f64)> = servers
            .iter()
            .filter_map(|s| {
                let name = s.as_str()?;
                Some((name.to_string(), row[name][metric].as_f64()?))
            })
            .collect();
        if !bars.is_empty() {
            out.push((sid.clone(), bars));
        }
    }
    out
}

/// The targets of issue #23 (gateway / nginx, lower is better); other scenarios aim at 1.0.
const TARGETS: &[(&str, f64)] = &[
    ("S1-1k-h1", 0.85),
    ("S1-1k-h2", 0.85),
    ("S3-api", 0.9),
    ("S5-handshake", 0.6),
    ("S6-idle", 0.5),
];

/// One ratio row: scenario id, gateway / nginx, the target if the scenario has one.
type Ratio = (String, f64, Option<f64>);

/// Gateway / nginx for every scenario run on both (CPU per request), and S6's RSS growth.
fn ratios(doc: &Value) -> Vec<Ratio> {
    let target = |sid: &str| TARGETS.iter().find(|(t, _)| *t == sid).map(|(_, v)| *v);
    let mut out = Vec::new();
    let Some(results) = doc["results"].as_object() else {
        return out;
    };
    for (sid, row) in results {
        let value = if sid == "S6-idle" {
            let growth = |s: &str| {
                Some(row[s]["rss_kib_with_idle"].as_f64()? - row[s]["rss_kib_before"].as_f64()?)
            };
            growth("gateway").zip(growth("nginx"))
        } else {
            let cpu = |s: &str| row[s]["cpu_us_per_req"].as_f64();
            match row["servers"].as_array().map(Vec::as_slice) {
                Some([a, b]) if a == "gateway" && b == "nginx" => cpu("gateway").zip(cpu("nginx")),
                _ => None,
            }
        };
        if let Some((g, n)) = value.filter(|(_, n)| *n > 0.0) {
            out.push((sid.clone(), g / n, target(sid)));
        }
    }
    out
}

/// Horizontal bars of gateway / nginx: green where the target (or 1.0) is met, orange where
/// not; a black line at 1.0 and a red mark at each target.
fn draw_ratios(path: &Path, title: &str, data: &[Ratio]) -> Result<()> {
    if data.is_empty() {
        bail!("no scenario was run on both the gateway and nginx");
    }
    let rows = data.len();
    let max = data
        .iter()
        .map(|(_, r, t)| r.max(t.unwrap_or(0.0)))
        .fold(1.0f64, f64::max)
        * 1.15;
    let root = BitMapBackend::new(path, (1000, 120 + rows as u32 * 30)).into_drawing_area();
    root.fill(&WHITE)?;
    let labels: Vec<String> = data.iter().map(|(sid, _, _)| sid.clone()).collect();
    let x_desc = "gateway / nginx (lower is better; red mark: target)";
    let mut chart = frame(&root, title, 160, max, x_desc, &labels)?;
    for (i, (_, r, t)) in data.iter().enumerate() {
        let y = rows - 1 - i;
        let met = *r <= t.unwrap_or(1.0);
        let c = if met {
            RGBColor(0, 150, 57)
        } else {
            RGBColor(243, 128, 32)
        };
        labelled_bar(&mut chart, &root, y, *r, c, 4, format!(" {r:.2}×"))?;
        if let Some(t) = t {
            chart.draw_series(std::iter::once(PathElement::new(
                vec![
                    (*t, SegmentValue::Exact(y)),
                    (*t, SegmentValue::Exact(y + 1)),
                ],
                RED.stroke_width(3),
            )))?;
        }
    }
    chart.draw_series(std::iter::once(PathElement::new(
        vec![
            (1.0, SegmentValue::Exact(0)),
            (1.0, SegmentValue::Exact(rows)),
        ],
        BLACK.stroke_width(2),
    )))?;
    root.present()?;
    Ok(())
}

/// The chart both drawings use: a linear value axis, one segment per bar.
type Bars<'a, 'b> = ChartContext<
    'a,
    BitMapBackend<'b>,
    Cartesian2d<
        plotters::coord::types::RangedCoordf64,
        plotters::coord::ranged1d::SegmentedCoord<plotters::coord::types::RangedCoordusize>,
    >,
>;

/// The chart and its axes: values 0..`max` across, one segmented row per label, the first
/// label on top (each bar fills its own band, centred on its label).
fn frame<'a, 'b>(
    root: &'a DrawingArea<BitMapBackend<'b>, plotters::coord::Shift>,
    title: &str,
    label_width: u32,
    max: f64,
    x_desc: &str,
    labels: &[String],
) -> Result<Bars<'a, 'b>> {
    let rows = labels.len();
    let mut chart = ChartBuilder::on(root)
        .caption(title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(label_width)
        .build_cartesian_2d(0.0..max, (0..rows).into_segmented())?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .x_desc(x_desc)
        .y_labels(rows)
        .y_label_formatter(&|y| match y {
            SegmentValue::CenterOf(y) => rows
                .checked_sub(1 + *y)
                .and_then(|i| labels.get(i))
                .cloned()
                .unwrap_or_default(),
            _ => String::new(),
        })
        .draw()?;
    Ok(chart)
}

/// One horizontal bar in row `y` from 0 to `value`, with `text` written after its end.
fn labelled_bar(
    chart: &mut Bars<'_, '_>,
    root: &DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>,
    y: usize,
    value: f64,
    colour: RGBColor,
    margin: u32,
    text: String,
) -> Result<()> {
    let mut bar = Rectangle::new(
        [
            (0.0, SegmentValue::Exact(y)),
            (value, SegmentValue::Exact(y + 1)),
        ],
        colour.filled(),
    );
    bar.set_margin(margin, margin, 0, 0);
    chart.draw_series(std::iter::once(bar))?;
    let label = ("sans-serif", 14)
        .into_text_style(root)
        .pos(Pos::new(HPos::Left, VPos::Center));
    chart.draw_series(std::iter::once(Text::new(
        text,
        (value, SegmentValue::CenterOf(y)),
        label,
    )))?;
    Ok(())
}

fn colour(server: &str) -> RGBColor {
    if server.starts_with("nginx") {
        RGBColor(0, 150, 57)
    } else if server.starts_with("gateway") {
        RGBColor(243, 128, 32)
    } else {
        // Reference rows (pingora alone, the backend direct).
        RGBColor(140, 140, 140)
    }
}

/// Horizontal grouped bars: one row per scenario, one bar per server.
fn draw(path: &Path, title: &str, unit: &str, data: &[Group]) -> Result<()> {
    let rows: usize = data.iter().map(|(_, b)| b.len()).sum();
    if rows == 0 {
        bail!("no compared scenarios in the results");
    }
    let max = data
        .iter()
        .flat_map(|(_, b)| b.iter().map(|(_, v)| *v))
        .fold(0.0f64, f64::max)
        * 1.15;
    let height = 120 + rows as u32 * 26;
    let root = BitMapBackend::new(path, (1000, height)).into_drawing_area();
    root.fill(&WHITE)?;
    let labels: Vec<String> = data
        .iter()
        .flat_map(|(sid, bars)| bars.iter().map(move |(s, _)| format!("{sid} · {s}")))
        .collect();
    let mut chart = frame(&root, title, 260, max, unit, &labels)?;
    let mut i = 0;
    for (_, bars) in data {
        for (server, v) in bars {
            let y = rows - 1 - i;
            let c = colour(server);
            labelled_bar(&mut chart, &root, y, *v, c, 3, format!(" {v:.1}"))?;
            i += 1;
        }
    }
    root.present()?;
    Ok(())
}

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let input = PathBuf::from(
        args.next()
            .context("usage: bench-chart RESULTS.json [FONT.ttf]")?,
    );
    let font = args.next().unwrap_or_else(|| FONT.to_string());
    let bytes: &'static [u8] = Box::leak(
        std::fs::read(&font)
            .with_context(|| format!("font {font} (install fonts-dejavu-core)"))?
            .into_boxed_slice(),
    );
    plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
        .map_err(|_| anyhow::anyhow!("{font} is not a usable TrueType font"))?;
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(&input)?)
        .with_context(|| format!("{} is not JSON", input.display()))?;
    let stem = input.with_extension("");
    let mode = doc["mode"].as_str().unwrap_or("?");
    for (metric, suffix, title, unit) in [
        (
            "cpu_us_per_req",
            "cpu",
            "Server CPU per request (lower is better)",
            "µs / request",
        ),
        (
            "rps",
            "rps",
            "Requests per second (higher is better)",
            "requests / s",
        ),
    ] {
        let out = PathBuf::from(format!("{}-{suffix}.png", stem.display()));
        draw(
            &out,
            &format!("{title} — {mode} mode"),
            unit,
            &groups(&doc, metric),
        )?;
        println!("{}", out.display());
    }
    let out = PathBuf::from(format!("{}-ratio.png", stem.display()));
    draw_ratios(
        &out,
        &format!("Gateway / nginx per scenario — {mode} mode"),
        &ratios(&doc),
    )?;
    println!("{}", out.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_follow_the_compared_servers() {
        let doc: Value = serde_json::json!({
            "results": {
                "S1": {"servers": ["gateway", "nginx"], "gateway": {"rps": 2.0}, "nginx": {"rps": 3.0}},
                "S6-idle": {"description": "no servers list"},
                "S4": {"servers": ["gateway-jwt"], "gateway-jwt": {"rps": 1.5}}
            }
        });
        let g = groups(&doc, "rps");
        assert_eq!(g.len(), 2);
        assert_eq!(g[0].1, vec![("gateway".into(), 2.0), ("nginx".into(), 3.0)]);
        assert_eq!(g[1].1, vec![("gateway-jwt".into(), 1.5)]);
    }

    #[test]
    fn ratios_pair_the_gateway_with_nginx_and_carry_targets() {
        let doc: Value = serde_json::json!({
            "results": {
                "S1-1k-h1": {"servers": ["gateway", "nginx"],
                    "gateway": {"cpu_us_per_req": 18.0}, "nginx": {"cpu_us_per_req": 24.0}},
                "S2-deeplink": {"servers": ["gateway", "nginx"],
                    "gateway": {"cpu_us_per_req": 15.0}, "nginx": {"cpu_us_per_req": 20.0}},
                "S4-jwt": {"servers": ["gateway-jwt"], "gateway-jwt": {"cpu_us_per_req": 40.0}},
                "S6-idle": {"gateway": {"rss_kib_before": 100.0, "rss_kib_with_idle": 130.0},
                    "nginx": {"rss_kib_before": 50.0, "rss_kib_with_idle": 110.0}}
            }
        });
        let r = ratios(&doc);
        assert_eq!(
            r,
            vec![
                ("S1-1k-h1".to_string(), 0.75, Some(0.85)),
                ("S2-deeplink".to_string(), 0.75, None),
                ("S6-idle".to_string(), 0.5, Some(0.5)),
            ]
        );
    }

    #[test]
    fn charts_are_written_as_png() {
        let Ok(font) = std::fs::read(FONT) else {
            panic!("{FONT} missing: scripts/deps.sh installs fonts-dejavu-core");
        };
        let font: &'static [u8] = Box::leak(font.into_boxed_slice());
        plotters::style::register_font("sans-serif", FontStyle::Normal, font)
            .map_err(|_| ())
            .expect("font");
        let dir = std::env::temp_dir().join(format!("bench-chart-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let out = dir.join("c.png");
        let data = vec![(
            "S1".to_string(),
            vec![("gateway".to_string(), 18.5), ("nginx".to_string(), 16.1)],
        )];
        draw(&out, "t", "µs", &data).expect("draw");
        let bytes = std::fs::read(&out).expect("png");
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
        let ratio = dir.join("r.png");
        draw_ratios(&ratio, "t", &[("S3-api".into(), 1.4, Some(0.9))]).expect("ratio chart");
        assert_eq!(
            &std::fs::read(&ratio).expect("png")[..8],
            b"\x89PNG\r\n\x1a\n"
        );
        assert!(draw_ratios(&ratio, "t", &[]).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
