//! The results folder: `results.json` (every raw number), `summary.md`
//! (medians over rounds, and ratios) and `latency.svg`.

use std::fmt::Write as _;
use std::path::Path;

use super::scenarios::{self, SCENARIOS};
use super::targets::Kind;
use super::{Measurement, Results};

/// `YYYYMMDD-HHMMSS` in UTC.
pub fn timestamp() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rest) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}{month:02}{day:02}-{:02}{:02}{:02}",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

pub fn write(dir: &Path, results: &Results) -> anyhow::Result<()> {
    std::fs::write(
        dir.join("results.json"),
        serde_json::to_string_pretty(results)?,
    )?;
    std::fs::write(dir.join("summary.md"), summary(results))?;
    std::fs::write(dir.join("latency.svg"), latency_svg(results))?;
    Ok(())
}

pub fn median(mut values: Vec<f64>) -> Option<f64> {
    values.retain(|v| v.is_finite());
    if values.is_empty() {
        return None;
    }
    values.sort_by(|a, b| a.partial_cmp(b).expect("finite"));
    let n = values.len();
    Some(if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    })
}

/// The medians of one target in one scenario.
#[derive(Default, Clone, Copy)]
struct Row {
    rate: Option<f64>,
    cpu: Option<f64>,
    rss_idle: Option<f64>,
    rss_loaded: Option<f64>,
    p50: Option<f64>,
    p99: Option<f64>,
    p999: Option<f64>,
    errors: u64,
    mib_per_s: Option<f64>,
}

fn row(measurements: &[&Measurement]) -> Row {
    let of = |f: &dyn Fn(&Measurement) -> Option<f64>| {
        median(measurements.iter().filter_map(|m| f(m)).collect())
    };
    Row {
        rate: of(&|m| Some(m.throughput.rate)),
        cpu: of(&|m| m.cpu_us_per_request),
        rss_idle: of(&|m| m.rss_idle.map(|b| b as f64 / 1e6)),
        rss_loaded: of(&|m| m.rss_loaded.map(|b| b as f64 / 1e6)),
        p50: of(&|m| m.latency.as_ref().map(|l| l.latency_us.p50 as f64)),
        p99: of(&|m| m.latency.as_ref().map(|l| l.latency_us.p99 as f64)),
        p999: of(&|m| m.latency.as_ref().map(|l| l.latency_us.p999 as f64)),
        errors: measurements
            .iter()
            .map(|m| m.throughput.errors + m.latency.as_ref().map_or(0, |l| l.errors))
            .sum(),
        mib_per_s: of(&|m| {
            (m.throughput.protocol == crate::load::Protocol::Tcp)
                .then(|| m.throughput.bytes as f64 / m.throughput.seconds / (1 << 20) as f64)
        }),
    }
}

fn cell(value: Option<f64>, decimals: usize) -> String {
    value.map_or("—".into(), |v| format!("{v:.decimals$}"))
}

fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

pub fn summary(results: &Results) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# Benchmark results {}\n", results.started);
    let m = &results.machine;
    let _ = writeln!(
        out,
        "Machine: {}, {} CPUs, {:.0} GiB, Linux {}. Versions: {}.\n",
        m.cpu,
        m.cpus,
        m.memory_gib,
        m.kernel,
        results
            .versions
            .iter()
            .map(|(name, version)| format!("{name} `{version}`"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let _ = writeln!(
        out,
        "Every figure is the median of {} rounds; within a round the targets ran one after another. \
         Each proxy had {} worker(s), pinned to its own CPU; the upstream and the load generator shared the other. \
         Closed loop for {:.0} s per measurement; latency in an open loop at {:.0} requests/s for {:.0} s, \
         corrected for coordinated omission. CPU µs/req is the proxy's user+system time over the requests answered.\n",
        results.rounds,
        results.workers,
        results.duration_s,
        results.latency_rate,
        results.latency_duration_s
    );
    let _ = writeln!(out, "Command: `{}`\n", results.command);
    for scenario in SCENARIOS {
        let of_scenario: Vec<&Measurement> = results
            .measurements
            .iter()
            .filter(|m| m.scenario == scenario.name)
            .collect();
        if of_scenario.is_empty() {
            continue;
        }
        let mut kinds: Vec<Kind> = of_scenario.iter().map(|m| m.target).collect();
        kinds.sort();
        kinds.dedup();
        let rows: Vec<(Kind, Row)> = kinds
            .iter()
            .map(|&k| {
                let mine: Vec<&Measurement> = of_scenario
                    .iter()
                    .copied()
                    .filter(|m| m.target == k)
                    .collect();
                (k, row(&mine))
            })
            .collect();
        let get = |k: Kind| rows.iter().find(|(kind, _)| *kind == k).map(|(_, r)| *r);
        let direct = get(Kind::Direct);
        let _ = writeln!(out, "## {} — {}\n", scenario.name, scenario.about);
        let tcp = scenario.upstream == scenarios::UpstreamKind::Tcp;
        let latency = scenario.latency;
        let mut header = String::from("| target | ");
        header += if tcp {
            "round trips/s | MiB/s | CPU µs/round trip"
        } else {
            "req/s | CPU µs/req"
        };
        header += " | RSS idle MB | RSS loaded MB |";
        if latency {
            header += " p50 µs | p99 µs | p99.9 µs | added p99 µs |";
        }
        header += " errors |";
        let columns = header.matches('|').count() - 1;
        let _ = writeln!(out, "{header}\n|{}", "---|".repeat(columns));
        for (kind, r) in &rows {
            let mut line = format!("| {} | {} | ", kind.name(), cell(r.rate, 0));
            if tcp {
                line += &format!("{} | ", cell(r.mib_per_s, 0));
            }
            line += &format!(
                "{} | {} | {} |",
                cell(r.cpu, 1),
                cell(r.rss_idle, 1),
                cell(r.rss_loaded, 1)
            );
            if latency {
                let added = match (r.p99, direct.and_then(|d| d.p99)) {
                    (Some(p), Some(d)) if *kind != Kind::Direct => Some(p - d),
                    _ => None,
                };
                line += &format!(
                    " {} | {} | {} | {} |",
                    cell(r.p50, 0),
                    cell(r.p99, 0),
                    cell(r.p999, 0),
                    cell(added, 0)
                );
            }
            line += &format!(" {} |", r.errors);
            let _ = writeln!(out, "{line}");
        }
        let remora = get(Kind::Remora);
        let mut ratios = Vec::new();
        for (peer, name) in [
            (Kind::Baseline, "baseline"),
            (Kind::Envoy, "Envoy"),
            (Kind::Haproxy, "HAProxy"),
        ] {
            if let (Some(r), Some(p)) = (remora, get(peer)) {
                ratios.push(format!(
                    "Remora / {name}: CPU per request {} ×, throughput {} ×",
                    cell(ratio(r.cpu, p.cpu), 2),
                    cell(ratio(r.rate, p.rate), 2)
                ));
            }
        }
        if let (Some(r), Some(d)) = (remora, direct) {
            ratios.push(format!(
                "Remora / direct: throughput {} ×",
                cell(ratio(r.rate, d.rate), 2)
            ));
        }
        if !ratios.is_empty() {
            let _ = writeln!(out, "\n{}.", ratios.join("; "));
        }
        let others: Vec<f64> = of_scenario.iter().map(|m| m.others_cpu_ms as f64).collect();
        let _ = writeln!(
            out,
            "\nOther processes on the machine used a median of {} ms of CPU per {:.0} s measurement (max {}).\n",
            cell(median(others.clone()), 0),
            results.duration_s,
            cell(others.iter().copied().reduce(f64::max), 0)
        );
    }
    if !results.conns.is_empty() {
        let _ = writeln!(
            out,
            "## Idle connections\n\n| target | connections | answered after idling | RSS before MB | RSS idle MB | bytes per connection |\n|---|---|---|---|---|---|"
        );
        for c in &results.conns {
            let r = &c.report;
            let _ = writeln!(
                out,
                "| {} | {} | {} | {:.1} | {:.1} | {:.0} |",
                c.target.name(),
                r.opened,
                r.answered,
                r.rss_before as f64 / 1e6,
                r.rss_idle as f64 / 1e6,
                r.bytes_per_connection
            );
        }
        for c in &results.conns {
            if let Some(error) = &c.report.first_error {
                let _ = writeln!(out, "\n{}: first failure: {error}", c.target.name());
            }
        }
        let _ = writeln!(out);
    }
    out
}

/// One panel per latency scenario: p50, p90, p99 and p99.9 (log scale) per target.
fn latency_svg(results: &Results) -> String {
    const WIDTH: f64 = 640.0;
    const PANEL: f64 = 260.0;
    const LEFT: f64 = 70.0;
    const TOP: f64 = 40.0;
    let colors = [
        ("direct", "#888888"),
        ("remora", "#1f77b4"),
        ("envoy", "#d62728"),
        ("haproxy", "#2ca02c"),
    ];
    let panels: Vec<_> = SCENARIOS
        .iter()
        .filter(|s| s.latency)
        .filter(|s| {
            results
                .measurements
                .iter()
                .any(|m| m.scenario == s.name && m.latency.is_some())
        })
        .collect();
    let height = PANEL * panels.len().max(1) as f64 + 20.0;
    let mut svg = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" font-family="sans-serif" font-size="12">"#
    );
    svg += &format!(r#"<rect width="{WIDTH}" height="{height}" fill="white"/>"#);
    let quantiles = ["p50", "p90", "p99", "p99.9"];
    for (index, scenario) in panels.iter().enumerate() {
        let y0 = index as f64 * PANEL;
        let series: Vec<(&str, [f64; 4])> = colors
            .iter()
            .filter_map(|(name, _)| {
                let mine: Vec<&Measurement> = results
                    .measurements
                    .iter()
                    .filter(|m| m.scenario == scenario.name && m.target.name() == *name)
                    .collect();
                let q = |f: &dyn Fn(&crate::load::Latency) -> u64| {
                    median(
                        mine.iter()
                            .filter_map(|m| m.latency.as_ref())
                            .map(|l| f(&l.latency_us) as f64)
                            .collect(),
                    )
                };
                Some((
                    *name,
                    [
                        q(&|l| l.p50)?,
                        q(&|l| l.p90)?,
                        q(&|l| l.p99)?,
                        q(&|l| l.p999)?,
                    ],
                ))
            })
            .collect();
        let max = series
            .iter()
            .flat_map(|(_, v)| v.iter().copied())
            .fold(10.0, f64::max);
        let (low, high) = (1.0f64, max.log10().ceil().max(1.0));
        let plot_h = PANEL - TOP - 40.0;
        let plot_w = WIDTH - LEFT - 140.0;
        let y = |v: f64| {
            y0 + TOP + plot_h - (v.max(1.0).log10() - low.log10()) / (high - low.log10()) * plot_h
        };
        let x = |i: usize| LEFT + i as f64 * plot_w / 3.0;
        svg += &format!(
            r#"<text x="{LEFT}" y="{}" font-weight="bold">{} — latency at {:.0} req/s (µs, log scale)</text>"#,
            y0 + 20.0,
            scenario.name,
            results.latency_rate
        );
        for decade in 0..=(high as i32) {
            let v = 10f64.powi(decade);
            let yy = y(v);
            svg += &format!(
                r##"<line x1="{LEFT}" x2="{}" y1="{yy:.1}" y2="{yy:.1}" stroke="#eeeeee"/><text x="{}" y="{:.1}" text-anchor="end">{v}</text>"##,
                LEFT + plot_w,
                LEFT - 6.0,
                yy + 4.0
            );
        }
        for (i, q) in quantiles.iter().enumerate() {
            svg += &format!(
                r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{q}</text>"#,
                x(i),
                y0 + TOP + plot_h + 18.0
            );
        }
        for (rank, (name, values)) in series.iter().enumerate() {
            let color = colors
                .iter()
                .find(|(n, _)| n == name)
                .map_or("#000", |(_, c)| c);
            let points: Vec<String> = values
                .iter()
                .enumerate()
                .map(|(i, v)| format!("{:.1},{:.1}", x(i), y(*v)))
                .collect();
            svg += &format!(
                r#"<polyline points="{}" fill="none" stroke="{color}" stroke-width="2"/>"#,
                points.join(" ")
            );
            svg += &format!(
                r#"<text x="{:.1}" y="{:.1}" fill="{color}">{name}: p99 {:.0}</text>"#,
                LEFT + plot_w + 12.0,
                y0 + TOP + 14.0 + rank as f64 * 16.0,
                values[2]
            );
        }
    }
    svg += "</svg>\n";
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_timestamps() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(vec![]), None);
        let stamp = timestamp();
        assert_eq!(stamp.len(), 15, "{stamp}");
        assert!(stamp.starts_with("20"), "{stamp}");
    }
}
