//! `cable-bench report`: reads every `<target>-<connections>.json` of a results directory
//! and writes `results.md` (tables: per server, Rails-vs-gateway ratios, the targets)
//! and `chart.png` (fan-out latency and memory per connection versus connections).
//!
//! The chart is drawn with plotters' bitmap backend and a TrueType font read at run time
//! (DejaVu Sans from Debian's fonts-dejavu-core): no fontconfig or system font lookup needed.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use plotters::prelude::*;
use serde_json::Value;

/// Prints a standalone run's result and, with `--out`, writes it there.
pub fn emit(result: &Value, out: Option<&Path>) -> Result<(), String> {
    let text = serde_json::to_string_pretty(result).expect("json");
    println!("{text}");
    if let Some(out) = out {
        std::fs::write(out, text + "\n").map_err(|e| format!("{}: {e}", out.display()))?;
    }
    Ok(())
}

/// Results by target ("gateway", "rails"), then by connections.
type Results = BTreeMap<String, BTreeMap<u64, Value>>;

fn load(dir: &Path) -> std::io::Result<Results> {
    let mut results = Results::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let Some(stem) = name.strip_suffix(".json") else {
            continue;
        };
        let Some((target, n)) = stem.rsplit_once('-') else {
            continue;
        };
        let Ok(n) = n.parse::<u64>() else { continue };
        // The floor program and the churn run are not servers; BENCHMARKS.md quotes them.
        if matches!(target, "floor" | "resume") {
            continue;
        }
        let text = std::fs::read_to_string(&path)?;
        let value: Value = serde_json::from_str(&text)
            .map_err(|e| std::io::Error::other(format!("{}: {e}", path.display())))?;
        results
            .entry(target.to_string())
            .or_default()
            .insert(n, value);
    }
    Ok(results)
}

fn at<'a>(v: &'a Value, path: &str) -> &'a Value {
    path.split('.').fold(v, |v, key| &v[key])
}

fn num(v: &Value, path: &str) -> Option<f64> {
    at(v, path).as_f64()
}

fn fmt(x: Option<f64>, digits: usize) -> String {
    match x {
        Some(x) if x.is_finite() => format!("{x:.digits$}"),
        _ => "–".into(),
    }
}

fn kib(v: &Value) -> Option<f64> {
    num(v, "scenarios.idle.rss_per_connection_bytes").map(|b| b / 1024.0)
}

fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

fn exact(v: &Value, scenario: &str) -> String {
    match at(v, &format!("scenarios.{scenario}.exact")).as_bool() {
        Some(true) => "yes".into(),
        Some(false) => {
            let s = at(v, &format!("scenarios.{scenario}"));
            let mut why = format!("{} of {}", s["delivered"], s["expected"]);
            if s["drained_within_s"].is_null() && s["delivered"] != s["expected"] {
                why.push_str(", rest not in time");
            }
            if s["silent_receivers"].as_u64().unwrap_or(0) > 0 {
                why.push_str(&format!(
                    ", {} receivers got nothing",
                    s["silent_receivers"]
                ));
            }
            if s["out_of_order"].as_u64().unwrap_or(0) > 0 {
                why.push_str(&format!(", {} out of order", s["out_of_order"]));
            }
            format!("**NO** ({why})")
        }
        None => "–".into(),
    }
}

fn storm_cell(v: &Value, scenario: &str) -> String {
    let s = at(v, &format!("scenarios.{scenario}"));
    let time = fmt(num(s, "all_confirmed_s"), 2);
    match s["all_confirmed"].as_bool() {
        Some(false) => format!("{time} (**{} of {}**)", s["confirmed"], s["connections"]),
        _ => time,
    }
}

pub fn markdown(results: &Results) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "## Per server\n");
    let _ = writeln!(
        md,
        "| server | connections | RSS per idle connection (KiB) | idle CPU (% of a core) | storm: all confirmed (s) | storm, one account (s) | token queries (storm / tabs: queries for N/4 tokens) | fan-out latency p50 / p99 / p99.9 / max (ms) | deliveries per server CPU-s | fan-out delivered exactly | slow: others' p99 (ms) | slow: exact | too_slow disconnects | other processes' CPU during fan-out (s) |"
    );
    let _ = writeln!(
        md,
        "|---|---:|---:|---:|---:|---:|---:|---|---:|---|---:|---|---:|---:|"
    );
    for (target, runs) in results {
        for (n, v) in runs {
            let f = "scenarios.fanout.latency";
            let queries = match (
                num(v, "scenarios.storm.auth_queries"),
                num(v, "scenarios.storm_tabs.auth_queries"),
                num(v, "scenarios.storm_tabs.distinct_tokens"),
            ) {
                (Some(a), Some(b), Some(t)) => format!("{a:.0} / {b:.0} for {t:.0}"),
                _ => "n/a".into(),
            };
            let _ = writeln!(
                md,
                "| {target} | {n} | {} | {} | {} | {} | {queries} | {} / {} / {} / {} | {} | {} | {} | {} | {} | {} |",
                fmt(kib(v), 1),
                fmt(num(v, "scenarios.idle.idle_cpu_percent"), 1),
                storm_cell(v, "storm"),
                storm_cell(v, "storm_one_account"),
                fmt(num(v, &format!("{f}.p50_ms")), 1),
                fmt(num(v, &format!("{f}.p99_ms")), 1),
                fmt(num(v, &format!("{f}.p999_ms")), 1),
                fmt(num(v, &format!("{f}.max_ms")), 1),
                fmt(num(v, "scenarios.fanout.deliveries_per_cpu_s"), 0),
                exact(v, "fanout"),
                fmt(num(v, "scenarios.slow.latency.p99_ms"), 1),
                exact(v, "slow"),
                at(v, "scenarios.slow.too_slow_disconnects")
                    .as_f64()
                    .map_or("n/a".into(), |x| format!("{x:.0}")),
                fmt(num(v, "scenarios.fanout.other_cpu_s"), 1),
            );
        }
    }

    let _ = writeln!(
        md,
        "\nMarginal RSS per connection between consecutive sizes (idle, end of hold): the \
         process's fixed growth cancels out.\n"
    );
    let _ = writeln!(md, "| server | from → to | marginal KiB per connection |");
    let _ = writeln!(md, "|---|---|---:|");
    for (target, runs) in results {
        let sizes: Vec<(&u64, &Value)> = runs.iter().collect();
        for pair in sizes.windows(2) {
            let ((a, va), (b, vb)) = (pair[0], pair[1]);
            let rss = |v: &Value| num(v, "scenarios.idle.rss_end_bytes");
            if let (Some(ra), Some(rb)) = (rss(va), rss(vb)) {
                let _ = writeln!(
                    md,
                    "| {target} | {a} → {b} | {:.1} |",
                    (rb - ra) / (*b - *a) as f64 / 1024.0
                );
            }
        }
    }

    let empty = BTreeMap::new();
    let gateway = results.get("gateway").unwrap_or(&empty);
    let rails = results.get("rails").unwrap_or(&empty);
    let _ = writeln!(
        md,
        "\n## Gateway versus Rails ActionCable (same machine, same client)\n"
    );
    let _ = writeln!(
        md,
        "| connections | memory per connection (Rails ÷ gateway) | deliveries per CPU-s (gateway ÷ Rails) | fan-out p99 latency (Rails ÷ gateway) | storm time (Rails ÷ gateway) | idle CPU (Rails ÷ gateway) |"
    );
    let _ = writeln!(md, "|---:|---:|---:|---:|---:|---:|");
    for (n, g) in gateway {
        let Some(r) = rails.get(n) else { continue };
        let d = "scenarios.fanout.deliveries_per_cpu_s";
        let p = "scenarios.fanout.latency.p99_ms";
        let s = "scenarios.storm.all_confirmed_s";
        let i = "scenarios.idle.idle_cpu_percent";
        let _ = writeln!(
            md,
            "| {n} | {}× | {}× | {}× | {}× | {}× |",
            fmt(ratio(kib(r), kib(g)), 1),
            fmt(ratio(num(g, d), num(r, d)), 1),
            fmt(ratio(num(r, p), num(g, p)), 1),
            fmt(ratio(num(r, s), num(g, s)), 1),
            fmt(ratio(num(r, i), num(g, i)), 1),
        );
    }

    let _ = writeln!(md, "\n## Targets for the gateway\n");
    let _ = writeln!(md, "| target | measured | met |");
    let _ = writeln!(md, "|---|---|---|");
    let closest = |runs: &BTreeMap<u64, Value>, want: u64| -> Option<(u64, Value)> {
        runs.iter()
            .min_by_key(|(n, _)| n.abs_diff(want))
            .map(|(n, v)| (*n, v.clone()))
    };
    let mut target = |name: &str, measured: Option<(String, bool)>| {
        let (text, met) = measured.unwrap_or(("not measured".into(), false));
        let _ = writeln!(
            md,
            "| {name} | {text} | {} |",
            if met { "yes" } else { "**no**" }
        );
    };
    target(
        "≤ 8 KB RSS per idle subscribed connection at 15k",
        closest(gateway, 15_000).and_then(|(n, v)| {
            let k = kib(&v)?;
            Some((format!("{k:.1} KiB at {n}"), k * 1024.0 <= 8000.0))
        }),
    );
    target(
        "fan-out to 10k subscribers, p99 ≤ 20 ms from commit",
        closest(gateway, 10_000).and_then(|(n, v)| {
            let p = num(&v, "scenarios.fanout.latency.p99_ms")?;
            Some((format!("p99 {p:.1} ms at {n}"), p <= 20.0))
        }),
    );
    target(
        "≥ 300k deliveries per gateway CPU-second",
        gateway
            .iter()
            .filter_map(|(n, v)| Some((*n, num(v, "scenarios.fanout.deliveries_per_cpu_s")?)))
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .map(|(n, d)| (format!("{d:.0} at {n} (best size)"), d >= 300_000.0)),
    );
    target(
        "15k-client connect+subscribe storm confirmed in ≤ 5 s",
        closest(gateway, 15_000).and_then(|(n, v)| {
            let s = num(&v, "scenarios.storm.all_confirmed_s")?;
            let all = at(&v, "scenarios.storm.all_confirmed").as_bool() == Some(true);
            Some((format!("{s:.2} s at {n}"), all && s <= 5.0))
        }),
    );
    let common = gateway
        .keys()
        .filter(|n| rails.contains_key(n))
        .max()
        .copied();
    target(
        "≥ 20× Rails' deliveries per CPU-second",
        common.and_then(|n| {
            let d = "scenarios.fanout.deliveries_per_cpu_s";
            let x = ratio(num(&gateway[&n], d), num(&rails[&n], d))?;
            Some((format!("{x:.1}× at {n}"), x >= 20.0))
        }),
    );
    target(
        "≥ 10× less memory per connection than Rails",
        common.and_then(|n| {
            let x = ratio(kib(&rails[&n]), kib(&gateway[&n]))?;
            Some((format!("{x:.1}× at {n}"), x >= 10.0))
        }),
    );
    md
}

/// Where a TrueType font may be (Debian's fonts-dejavu-core first).
const FONTS: [&str; 4] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
];

fn register_font() -> Result<(), String> {
    let path = FONTS
        .iter()
        .find(|p| Path::new(p).exists())
        .ok_or("no TrueType font found; install Debian's fonts-dejavu-core")?;
    let bytes = std::fs::read(path).map_err(|e| format!("{path}: {e}"))?;
    plotters::style::register_font("sans-serif", FontStyle::Normal, Box::leak(bytes.into()))
        .map_err(|_| format!("{path}: not a usable font"))
}

type Series = Vec<(f64, f64)>;

fn series(runs: Option<&BTreeMap<u64, Value>>, f: impl Fn(&Value) -> Option<f64>) -> Series {
    runs.map(|runs| {
        runs.iter()
            .filter_map(|(n, v)| Some((*n as f64, f(v)?)))
            .filter(|(_, y)| *y > 0.0)
            .collect()
    })
    .unwrap_or_default()
}

fn panel(
    area: &DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>,
    title: &str,
    y_label: &str,
    lines: &[(&str, RGBColor, &Series, bool)],
    target: (&str, f64),
    legend: SeriesLabelPosition,
) -> Result<(), Box<dyn std::error::Error>> {
    let points = lines.iter().flat_map(|(_, _, s, _)| s.iter());
    let x_max = points.clone().map(|p| p.0).fold(1000.0, f64::max) * 1.05;
    let y_max = points.clone().map(|p| p.1).fold(1.0, f64::max) * 2.0;
    let y_min = points
        .map(|p| p.1)
        .fold(f64::INFINITY, f64::min)
        .min(1.0)
        .min(target.1)
        / 2.0;
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(65)
        .build_cartesian_2d(0.0..x_max, (y_min.max(0.01)..y_max).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("connections")
        .y_desc(y_label)
        .label_style(("sans-serif", 14))
        .x_labels(8)
        .x_label_formatter(&|x| format!("{:.0}", x))
        .y_label_formatter(&|y| format!("{y}"))
        .draw()?;
    let grey = RGBColor(120, 120, 120);
    chart
        .draw_series(DashedLineSeries::new(
            [(0.0, target.1), (x_max, target.1)],
            6,
            4,
            grey.stroke_width(2),
        ))?
        .label(target.0)
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], grey.stroke_width(2)));
    for (name, color, data, dashed) in lines {
        if data.is_empty() {
            continue;
        }
        let style = ShapeStyle::from(*color).stroke_width(if *dashed { 1 } else { 3 });
        chart
            .draw_series(LineSeries::new(data.iter().copied(), style))?
            .label(*name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
        chart.draw_series(data.iter().map(|&p| Circle::new(p, 4, color.filled())))?;
    }
    chart
        .configure_series_labels()
        .position(legend)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()?;
    Ok(())
}

pub fn chart(results: &Results, path: &Path) -> Result<(), Box<dyn std::error::Error>> {
    register_font()?;
    let g = results.get("gateway");
    let r = results.get("rails");
    let p = |q: &'static str| move |v: &Value| num(v, &format!("scenarios.fanout.latency.{q}"));
    let g50 = series(g, p("p50_ms"));
    let g99 = series(g, p("p99_ms"));
    let r50 = series(r, p("p50_ms"));
    let r99 = series(r, p("p99_ms"));
    let gm = series(g, kib);
    let rm = series(r, kib);
    let root = BitMapBackend::new(path, (1400, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let (left, right) = root.split_horizontally(700);
    let blue = RGBColor(31, 119, 180);
    let red = RGBColor(214, 39, 40);
    panel(
        &left,
        "Fan-out latency, commit to receipt",
        "milliseconds (log)",
        &[
            ("cable-gateway p99", blue, &g99, false),
            ("cable-gateway p50", blue, &g50, true),
            ("Rails ActionCable p99", red, &r99, false),
            ("Rails ActionCable p50", red, &r50, true),
        ],
        ("target: p99 ≤ 20 ms at 10k", 20.0),
        SeriesLabelPosition::LowerRight,
    )?;
    panel(
        &right,
        "Server RSS per idle subscribed connection",
        "KiB (log)",
        &[
            ("cable-gateway", blue, &gm, false),
            ("Rails ActionCable", red, &rm, false),
        ],
        ("target: ≤ 8 KB at 15k", 8000.0 / 1024.0),
        SeriesLabelPosition::UpperRight,
    )?;
    root.present()?;
    Ok(())
}

pub fn write(dir: &Path) -> Result<(), String> {
    let results = load(dir).map_err(|e| format!("reading {}: {e}", dir.display()))?;
    if results.is_empty() {
        return Err(format!(
            "no <target>-<connections>.json files in {}",
            dir.display()
        ));
    }
    let md_path: PathBuf = dir.join("results.md");
    let md = format!(
        "# cable-bench results\n\nGenerated by `cable-bench report` from the JSON files beside this one. Method and caveats: BENCHMARKS.md.\n\n{}",
        markdown(&results)
    );
    std::fs::write(&md_path, md).map_err(|e| format!("{}: {e}", md_path.display()))?;
    let png = dir.join("chart.png");
    chart(&results, &png).map_err(|e| format!("{}: {e}", png.display()))?;
    eprintln!(
        "cable-bench: wrote {} and {}",
        md_path.display(),
        png.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn result(rss: f64, p99: f64, per_cpu: f64) -> Value {
        json!({ "scenarios": {
            "idle": { "rss_per_connection_bytes": rss, "idle_cpu_percent": 1.0 },
            "storm": { "all_confirmed_s": 1.0, "all_confirmed": true, "auth_queries": 100.0 },
            "storm_tabs": { "auth_queries": 25.0, "distinct_tokens": 25 },
            "fanout": { "latency": { "p50_ms": 1.0, "p99_ms": p99, "p999_ms": 5.0, "max_ms": 9.0 },
                        "deliveries_per_cpu_s": per_cpu, "exact": true },
        }})
    }

    #[test]
    fn tables_show_ratios_and_targets() {
        let mut results = Results::new();
        results
            .entry("gateway".into())
            .or_default()
            .insert(15000, result(4096.0, 10.0, 400_000.0));
        results
            .entry("rails".into())
            .or_default()
            .insert(15000, result(81920.0, 100.0, 10_000.0));
        let md = markdown(&results);
        assert!(
            md.contains("| 15000 | 20.0× | 40.0× | 10.0× | 1.0× | 1.0× |"),
            "{md}"
        );
        assert!(
            md.contains(
                "| ≤ 8 KB RSS per idle subscribed connection at 15k | 4.0 KiB at 15000 | yes |"
            ),
            "{md}"
        );
        assert!(md.contains("| 100 / 25 for 25 |"), "{md}");
    }
}
