//! The picture: a self-contained SVG a person opens in a browser.
//!
//! Per scenario: three histograms (outbound frame interval error, response latency, barge-in
//! latency), one colour per server, each normalised to that server's sample count so servers
//! with different numbers of samples compare; then a timeline per call for the first calls of
//! each server: caller speech (blue, upper half), agent audio played by the playback model
//! (green, lower half), `clear` (red line), mark echoes (grey ticks) and DTMF keys (purple).
//! Capacity mode gets a chart of interval error p99 (at the wire when captured) and server CPU
//! against concurrency.
//! Drawn with the shell's one SVG writer ([`handset_shell::svg`]).

use handset_shell::svg::{Svg, nice_step};

use super::observer::Timeline;
use super::report::{CapacityReport, CapacityStep, GroupReport};

/// Reads one plotted value off a capacity step.
type StepValue = fn(&CapacityStep) -> f64;

/// Colours per server, in order.
const PALETTE: [&str; 4] = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"];
const WIDTH: f64 = 1200.0;

/// One histogram panel: `series` are `(name, samples in ms)`.
fn histogram_panel(
    svg: &mut Svg,
    x0: f64,
    y0: f64,
    w: f64,
    h: f64,
    title: &str,
    series: &[(String, Vec<f64>)],
) {
    const BINS: usize = 30;
    svg.text(x0 + w / 2.0, y0 - 8.0, 13.0, "middle", title);
    let (px, py, pw, ph) = (x0 + 40.0, y0, w - 50.0, h - 40.0);
    svg.line(px, py + ph, px + pw, py + ph, "#333", 1.0);
    svg.line(px, py, px, py + ph, "#333", 1.0);
    let all: Vec<f64> = series.iter().flat_map(|(_, v)| v.iter().copied()).collect();
    if all.is_empty() {
        svg.text(px + pw / 2.0, py + ph / 2.0, 12.0, "middle", "no samples");
        return;
    }
    // Range: up to the largest p99 over the series (the tail beyond lands in the last bin).
    let mut xmax = series
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(_, v)| {
            let mut s = v.clone();
            s.sort_by(f64::total_cmp);
            s[((s.len() as f64 * 0.99).ceil() as usize).clamp(1, s.len()) - 1]
        })
        .fold(0.0f64, f64::max)
        * 1.1;
    if xmax <= 0.0 {
        xmax = 1.0;
    }
    let bin_w = xmax / BINS as f64;
    let mut fractions = Vec::new();
    let mut ymax = 0.0f64;
    for (_, values) in series {
        let mut counts = [0usize; BINS];
        for v in values {
            counts[((v / bin_w) as usize).min(BINS - 1)] += 1;
        }
        let n = values.len().max(1) as f64;
        let f: Vec<f64> = counts.iter().map(|c| *c as f64 / n).collect();
        ymax = ymax.max(f.iter().copied().fold(0.0, f64::max));
        fractions.push(f);
    }
    let ymax = ymax.max(0.01);
    let slot = pw / BINS as f64;
    let bar = slot / series.len() as f64;
    for (si, f) in fractions.iter().enumerate() {
        for (b, frac) in f.iter().enumerate() {
            if *frac > 0.0 {
                let bh = frac / ymax * ph;
                svg.rect(
                    px + b as f64 * slot + si as f64 * bar,
                    py + ph - bh,
                    bar * 0.9,
                    bh,
                    PALETTE[si % PALETTE.len()],
                );
            }
        }
    }
    let step = nice_step(xmax, 5.0);
    let mut t = 0.0;
    while t <= xmax + 1e-9 {
        let x = px + t / xmax * pw;
        svg.line(x, py + ph, x, py + ph + 4.0, "#333", 1.0);
        svg.text(x, py + ph + 16.0, 10.0, "middle", &format!("{t}"));
        t += step;
    }
    svg.text(
        px + pw,
        py + ph + 30.0,
        10.0,
        "end",
        &format!("ms (last bin: ≥ {:.1})", xmax - bin_w),
    );
    svg.text(
        px - 4.0,
        py + 8.0,
        10.0,
        "end",
        &format!("{:.0}%", ymax * 100.0),
    );
    svg.text(px - 4.0, py + ph, 10.0, "end", "0");
    for (si, (name, values)) in series.iter().enumerate() {
        let ly = py + 14.0 + si as f64 * 14.0;
        svg.rect(
            px + pw - 130.0,
            ly - 9.0,
            10.0,
            10.0,
            PALETTE[si % PALETTE.len()],
        );
        svg.text(
            px + pw - 116.0,
            ly,
            10.0,
            "start",
            &format!("{name} (n={})", values.len()),
        );
    }
}

/// The picture for one scenario: histograms for every server, then up to `rows` timelines each.
pub fn scenario_picture(groups: &[&GroupReport], rows: usize) -> String {
    let timelines: Vec<(usize, &str, usize, &Timeline)> = groups
        .iter()
        .enumerate()
        .flat_map(|(gi, g)| {
            g.per_call
                .iter()
                .enumerate()
                .filter_map(move |(ci, c)| {
                    c.timeline.as_ref().map(|t| (gi, g.target.as_str(), ci, t))
                })
                .take(rows)
        })
        .collect();
    let row_h = 28.0;
    let top = 290.0;
    let height = top + 60.0 + timelines.len() as f64 * row_h + 50.0;
    let mut svg = Svg::new(WIDTH, height);
    let scenario = groups.first().map_or("", |g| g.scenario.as_str());
    svg.text(
        20.0,
        26.0,
        18.0,
        "start",
        &format!(
            "handset-sim — scenario “{scenario}”: {}",
            groups
                .iter()
                .map(|g| format!("{} ({} calls)", g.target, g.calls))
                .collect::<Vec<_>>()
                .join(" vs ")
        ),
    );
    let interval: Vec<(String, Vec<f64>)> = groups
        .iter()
        .map(|g| {
            let mut v = Vec::new();
            for (lo, hi, n) in g.interval_hist.buckets() {
                let mid = if hi == u64::MAX { lo } else { (lo + hi) / 2 } as f64 / 1000.0;
                v.extend(std::iter::repeat_n(mid, n as usize));
            }
            (g.target.clone(), v)
        })
        .collect();
    let response: Vec<(String, Vec<f64>)> = groups
        .iter()
        .map(|g| (g.target.clone(), g.response_samples()))
        .collect();
    let barge: Vec<(String, Vec<f64>)> = groups
        .iter()
        .map(|g| (g.target.clone(), g.barge_in_samples()))
        .collect();
    let pw = (WIDTH - 40.0) / 3.0;
    histogram_panel(
        &mut svg,
        20.0,
        70.0,
        pw - 10.0,
        200.0,
        "Outbound frame interval error",
        &interval,
    );
    histogram_panel(
        &mut svg,
        20.0 + pw,
        70.0,
        pw - 10.0,
        200.0,
        "Response latency (caller stops → agent heard)",
        &response,
    );
    histogram_panel(
        &mut svg,
        20.0 + 2.0 * pw,
        70.0,
        pw - 10.0,
        200.0,
        "Barge-in latency (onset → clear)",
        &barge,
    );

    if timelines.is_empty() {
        return svg.finish();
    }
    let span_ms = timelines
        .iter()
        .flat_map(|(_, _, _, t)| {
            t.played
                .iter()
                .map(|s| s.end.as_secs_f64() * 1000.0)
                .chain(t.speech.iter().map(|u| u.end.as_secs_f64() * 1000.0))
                .chain(t.clears_ms.iter().copied())
        })
        .fold(1_000.0f64, f64::max);
    let (lx, tw) = (170.0, WIDTH - 200.0);
    let x_of = |ms: f64| lx + ms / span_ms * tw;
    svg.text(20.0, top, 14.0, "start", "Per-call timeline");
    let legend = [
        ("#4e79a7", "caller speech (sent)"),
        ("#59a14f", "agent audio played"),
        ("#e15759", "clear"),
        ("#999999", "mark echo"),
        ("#b07aa1", "DTMF"),
    ];
    for (i, (c, name)) in legend.iter().enumerate() {
        let x = 200.0 + i as f64 * 170.0;
        svg.rect(x, top - 10.0, 12.0, 10.0, c);
        svg.text(x + 16.0, top, 11.0, "start", name);
    }
    let y_axis = top + 20.0;
    for (row, (gi, target, ci, t)) in timelines.iter().enumerate() {
        let y = y_axis + row as f64 * row_h;
        let colour = PALETTE[gi % PALETTE.len()];
        svg.text(
            lx - 8.0,
            y + 16.0,
            11.0,
            "end",
            &format!("{target} · call {}", ci + 1),
        );
        svg.rect(lx - 6.0, y + 4.0, 3.0, row_h - 8.0, colour);
        svg.rect(lx, y + row_h - 2.0, tw, 0.5, "#dddddd");
        for u in &t.speech {
            let (a, b) = (u.onset.as_secs_f64() * 1000.0, u.end.as_secs_f64() * 1000.0);
            svg.rect(x_of(a), y + 3.0, x_of(b) - x_of(a), 10.0, "#4e79a7");
        }
        for s in &t.played {
            let (a, b) = (s.start.as_secs_f64() * 1000.0, s.end.as_secs_f64() * 1000.0);
            svg.rect(x_of(a), y + 14.0, x_of(b) - x_of(a), 10.0, "#59a14f");
        }
        for m in &t.marks_ms {
            svg.line(x_of(*m), y + 22.0, x_of(*m), y + 26.0, "#999999", 1.0);
        }
        for c in &t.clears_ms {
            svg.line(x_of(*c), y + 1.0, x_of(*c), y + 27.0, "#e15759", 2.0);
        }
        for k in &t.dtmf_ms {
            svg.line(x_of(*k), y + 1.0, x_of(*k), y + 14.0, "#b07aa1", 3.0);
        }
    }
    let y = y_axis + timelines.len() as f64 * row_h + 4.0;
    svg.line(lx, y, lx + tw, y, "#333", 1.0);
    let step = nice_step(span_ms / 1000.0, 12.0);
    let mut s = 0.0;
    while s * 1000.0 <= span_ms + 1e-6 {
        let x = x_of(s * 1000.0);
        svg.line(x, y, x, y + 4.0, "#333", 1.0);
        svg.text(x, y + 16.0, 10.0, "middle", &format!("{s}"));
        s += step;
    }
    svg.text(
        lx + tw,
        y + 32.0,
        10.0,
        "end",
        "seconds since the stream started",
    );
    svg.finish()
}

/// Interval error p99 of a capacity step as the simulator read the messages, ms.
fn app_p99(step: &CapacityStep) -> f64 {
    step.group.interval_error.p99_ms
}

/// Interval error p99 of a capacity step at the wire when captured, else as read, ms.
fn wire_p99(step: &CapacityStep) -> f64 {
    step.group
        .wire
        .as_ref()
        .map_or_else(|| app_p99(step), |w| w.interval_error.p99_ms)
}

/// Capacity mode: interval error p99 and server CPU against concurrency, one line per server.
/// With a wire capture, the interval error is plotted at the wire (solid; the limit is judged
/// there) and as the simulator read it (dashed).
pub fn capacity_picture(reports: &[CapacityReport]) -> String {
    let mut svg = Svg::new(WIDTH, 420.0);
    svg.text(
        20.0,
        26.0,
        18.0,
        "start",
        "handset-sim — capacity (ramp until interval error p99 > limit or any underrun)",
    );
    let xmax = reports
        .iter()
        .flat_map(|r| r.steps.iter().map(|s| s.calls))
        .max()
        .unwrap_or(1) as f64;
    let has_wire = reports
        .iter()
        .any(|r| r.steps.iter().any(|s| s.group.wire.is_some()));
    let interval_title = if has_wire {
        "Interval error p99 (ms): at the wire, dashed as read"
    } else {
        "Interval error p99 (ms)"
    };
    let panels: [(&str, StepValue); 2] = [
        (interval_title, wire_p99),
        ("Server CPU (% of one core)", |s| {
            s.group.server.cpu_percent.unwrap_or(0.0)
        }),
    ];
    let pw = (WIDTH - 60.0) / 2.0;
    for (pi, (title, value)) in panels.iter().enumerate() {
        let (px, py, w, h) = (60.0 + pi as f64 * (pw + 20.0), 70.0, pw - 60.0, 280.0);
        svg.text(px + w / 2.0, py - 10.0, 13.0, "middle", title);
        svg.line(px, py + h, px + w, py + h, "#333", 1.0);
        svg.line(px, py, px, py + h, "#333", 1.0);
        let mut ymax = reports
            .iter()
            .flat_map(|r| r.steps.iter().map(value))
            .fold(0.0f64, f64::max);
        if pi == 0 {
            ymax = ymax.max(reports.first().map_or(2.0, |r| r.pacing_limit_ms) * 1.3);
            if has_wire {
                ymax = reports
                    .iter()
                    .flat_map(|r| r.steps.iter().map(app_p99))
                    .fold(ymax, f64::max);
            }
        }
        let ymax = ymax.max(1e-3) * 1.05;
        let to_xy = |calls: usize, v: f64| (px + calls as f64 / xmax * w, py + h - v / ymax * h);
        for (ri, r) in reports.iter().enumerate() {
            let pts: Vec<(f64, f64)> = r.steps.iter().map(|s| to_xy(s.calls, value(s))).collect();
            svg.polyline(&pts, PALETTE[ri % PALETTE.len()]);
            if pi == 0 && has_wire {
                let read: Vec<(f64, f64)> =
                    r.steps.iter().map(|s| to_xy(s.calls, app_p99(s))).collect();
                svg.dashed_polyline(&read, PALETTE[ri % PALETTE.len()]);
            }
            svg.rect(
                px + w - 150.0,
                py + 6.0 + ri as f64 * 14.0,
                10.0,
                10.0,
                PALETTE[ri % PALETTE.len()],
            );
            svg.text(
                px + w - 136.0,
                py + 15.0 + ri as f64 * 14.0,
                10.0,
                "start",
                &r.target,
            );
        }
        if pi == 0
            && let Some(r) = reports.first()
        {
            let (_, y) = to_xy(0, r.pacing_limit_ms);
            svg.dashed(px, y, px + w, y, "#e15759");
            svg.text(
                px + 4.0,
                y - 4.0,
                10.0,
                "start",
                &format!("limit {} ms", r.pacing_limit_ms),
            );
        }
        let step = nice_step(xmax, 6.0);
        let mut t = 0.0;
        while t <= xmax + 1e-9 {
            let x = px + t / xmax * w;
            svg.line(x, py + h, x, py + h + 4.0, "#333", 1.0);
            svg.text(x, py + h + 16.0, 10.0, "middle", &format!("{t}"));
            t += step;
        }
        svg.text(px + w, py + h + 32.0, 10.0, "end", "concurrent calls");
        let ystep = nice_step(ymax, 5.0);
        let mut v = 0.0;
        while v <= ymax {
            let y = py + h - v / ymax * h;
            svg.line(px - 4.0, y, px, y, "#333", 1.0);
            svg.text(px - 6.0, y + 3.0, 10.0, "end", &format!("{v}"));
            v += ystep;
        }
    }
    svg.finish()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::observer::{CallMetrics, Span};
    use crate::script::Utterance;
    use crate::stats::Histogram;
    use crate::wire::WireGroup;

    #[test]
    fn capacity_with_a_wire_capture_plots_the_wire_and_what_was_read() {
        let step = |calls: usize, read: f64, wire: Option<f64>| {
            let mut group = GroupReport::default();
            group.interval_error.p99_ms = read;
            group.wire = wire.map(|p99| {
                let mut w = WireGroup::default();
                w.interval_error.p99_ms = p99;
                w
            });
            CapacityStep {
                calls,
                clean: true,
                broke: None,
                group,
            }
        };
        let report = |steps: Vec<CapacityStep>| CapacityReport {
            target: "handset".to_owned(),
            pacing_limit_ms: 1.0,
            paced_by: "wire",
            highest_clean: 200,
            calls_per_core: 100.0,
            cores: 2,
            server_kib_per_call: None,
            steps,
        };
        let wired = capacity_picture(&[report(vec![
            step(100, 2.0, Some(0.5)),
            step(200, 3.0, Some(0.8)),
        ])]);
        assert!(wired.contains("at the wire, dashed as read"), "{wired}");
        assert_eq!(
            wired.matches("stroke-dasharray=\"4 3\"/>").count(),
            2,
            "{wired}"
        );
        assert_eq!(
            wired.matches("<polyline").count(),
            3,
            "two solid, one dashed: {wired}"
        );
        let read = capacity_picture(&[report(vec![step(100, 2.0, None)])]);
        assert!(!read.contains("at the wire"), "{read}");
        assert_eq!(read.matches("<polyline").count(), 2, "{read}");
    }

    #[test]
    fn scenario_picture_draws_every_event_of_a_timeline() {
        let mut h = Histogram::new();
        h.record_us(500);
        let call = CallMetrics {
            responses_ms: vec![600.0],
            timeline: Some(Timeline {
                speech: vec![Utterance {
                    onset: Duration::from_millis(300),
                    end: Duration::from_millis(1_500),
                }],
                played: vec![Span {
                    start: Duration::ZERO,
                    end: Duration::from_millis(420),
                }],
                marks_ms: vec![20.0, 40.0],
                clears_ms: vec![420.0],
                dtmf_ms: vec![900.0],
            }),
            interval_hist: h,
            ..CallMetrics::default()
        };
        let g = GroupReport::aggregate("barge-in", "handset<1>", vec![call], 2.0);
        let svg = scenario_picture(&[&g], 4);
        assert!(svg.starts_with("<svg"));
        assert!(svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("handset&lt;1&gt; · call 1"));
        for colour in ["#4e79a7", "#59a14f", "#e15759", "#999999", "#b07aa1"] {
            assert!(svg.matches(colour).count() >= 2, "{colour} drawn");
        }
        // Parses as XML.
        roxmltree::Document::parse(&svg).expect("well-formed");
    }
}
