//! `handset trace FILE`: renders a call's Chrome trace JSON (written by the engine's per-call
//! timeline) as an SVG a person can read at a glance.
//!
//! One row per lane (caller media in, caller playout, caller speech, agent, to Twilio, marks).
//! Frames are drawn as a density strip: one pixel column per time slice, darker where more
//! frames fell in it, so gaps, bursts and concealment stand out. Intervals (speech) are bars;
//! the events that matter when profiling barge-in and pacing — speech started/ended, `clear`,
//! `BARGE_IN`, marks, concealed slots — are marked and labelled.

use std::fmt::Write as _;

use crate::xml::escape;

/// Why a trace could not be rendered.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    /// Not JSON.
    #[error("trace is not JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// JSON without a `traceEvents` array.
    #[error("trace has no traceEvents array")]
    Shape,
}

const WIDTH: f64 = 1400.0;
const LEFT: f64 = 170.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 50.0;
const ROW: f64 = 56.0;

struct Event {
    name: String,
    tid: u64,
    ts: f64,
    dur: Option<f64>,
}

/// Renders Chrome trace JSON (as [`crate::chrome_trace::to_json`] writes it) to SVG.
pub fn render(json: &str) -> Result<String, TraceError> {
    let value: serde_json::Value = serde_json::from_str(json)?;
    let events = value
        .get("traceEvents")
        .and_then(|e| e.as_array())
        .ok_or(TraceError::Shape)?;
    let mut lanes: Vec<(u64, String)> = Vec::new();
    let mut title = String::from("call");
    let mut parsed = Vec::with_capacity(events.len());
    for e in events {
        let name = e
            .get("name")
            .and_then(|n| n.as_str())
            .unwrap_or("")
            .to_owned();
        let tid = e
            .get("tid")
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(0);
        let ph = e.get("ph").and_then(|p| p.as_str()).unwrap_or("");
        if ph == "M" {
            let label = e
                .pointer("/args/name")
                .and_then(|n| n.as_str())
                .unwrap_or("")
                .to_owned();
            if name == "thread_name" {
                lanes.push((tid, label));
            } else if name == "process_name" {
                title = label;
            }
            continue;
        }
        let Some(ts) = e.get("ts").and_then(serde_json::Value::as_f64) else {
            continue;
        };
        let dur = e.get("dur").and_then(serde_json::Value::as_f64);
        parsed.push(Event { name, tid, ts, dur });
    }
    lanes.sort_by_key(|(t, _)| *t);
    if lanes.is_empty() {
        lanes = (1..=6).map(|t| (t, format!("lane {t}"))).collect();
    }
    let end_us = parsed
        .iter()
        .map(|e| e.ts + e.dur.unwrap_or(0.0))
        .fold(1.0f64, f64::max);
    let plot = WIDTH - LEFT - RIGHT;
    let x = |us: f64| LEFT + us / end_us * plot;
    let height = TOP + ROW * lanes.len() as f64 + 60.0;
    let row_of = |tid: u64| lanes.iter().position(|(t, _)| *t == tid);

    let mut svg = String::with_capacity(64 * 1024);
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = write!(
        svg,
        r##"<rect width="100%" height="100%" fill="#ffffff"/>"##
    );
    let _ = write!(
        svg,
        r#"<text x="{LEFT}" y="24" font-size="16" font-weight="bold">{} — {:.2} s</text>"#,
        escape(&title),
        end_us / 1e6
    );
    for (i, (_, label)) in lanes.iter().enumerate() {
        let y = TOP + ROW * i as f64;
        let fill = if i % 2 == 0 { "#f4f6f8" } else { "#ffffff" };
        let _ = write!(
            svg,
            r##"<rect x="{LEFT}" y="{y}" width="{plot}" height="{ROW}" fill="{fill}"/><text x="10" y="{:.1}">{}</text>"##,
            y + ROW / 2.0 + 4.0,
            escape(label)
        );
    }
    // Time axis.
    let axis_y = TOP + ROW * lanes.len() as f64;
    let step = nice_step(end_us / 1e6);
    let mut t = 0.0;
    while t * 1e6 <= end_us {
        let px = x(t * 1e6);
        let _ = write!(
            svg,
            r##"<line x1="{px:.1}" y1="{TOP}" x2="{px:.1}" y2="{axis_y}" stroke="#d0d4d8" stroke-width="0.5"/><text x="{px:.1}" y="{:.1}" text-anchor="middle">{t:.1} s</text>"##,
            axis_y + 16.0
        );
        t += step;
    }
    // Density strips: count events per pixel column per lane.
    let columns = plot as usize;
    let mut density = vec![vec![0u32; columns + 1]; lanes.len()];
    for e in &parsed {
        if e.dur.is_some() || is_marked(&e.name) {
            continue;
        }
        if let Some(row) = row_of(e.tid) {
            let col = ((e.ts / end_us) * columns as f64) as usize;
            density[row][col.min(columns)] += 1;
        }
    }
    let colors = [
        "#4a78c2", "#5a9a5a", "#c27a2c", "#8a5ac2", "#2c8c9c", "#9c2c5a",
    ];
    for (row, counts) in density.iter().enumerate() {
        let max = counts.iter().copied().max().unwrap_or(0).max(1);
        let y = TOP + ROW * row as f64 + 8.0;
        let color = colors[row % colors.len()];
        for (col, &n) in counts.iter().enumerate() {
            if n == 0 {
                continue;
            }
            let opacity = 0.25 + 0.75 * f64::from(n) / f64::from(max);
            let _ = write!(
                svg,
                r#"<rect x="{:.1}" y="{y:.1}" width="1" height="{:.1}" fill="{color}" fill-opacity="{opacity:.2}"/>"#,
                LEFT + col as f64,
                ROW - 16.0
            );
        }
    }
    // Intervals and marked events.
    for e in &parsed {
        let Some(row) = row_of(e.tid) else { continue };
        let y = TOP + ROW * row as f64;
        if let Some(dur) = e.dur {
            let _ = write!(
                svg,
                r##"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="#c27a2c" fill-opacity="0.35" stroke="#c27a2c"/>"##,
                x(e.ts),
                y + 6.0,
                (dur / end_us * plot).max(1.0),
                ROW - 12.0
            );
        } else if is_marked(&e.name) {
            let (color, label) = match e.name.as_str() {
                "BARGE_IN" => ("#d62728", "BARGE_IN"),
                "clear" => ("#d62728", "clear"),
                "speech started" => ("#2ca02c", "start"),
                "speech ended" => ("#7f7f7f", "end"),
                "onset held" => ("#bcbd22", "held"),
                "onset rejected" => ("#7f7f7f", "rejected"),
                "speech dismissed" => ("#7f7f7f", "dismissed"),
                "playback paused" => ("#bcbd22", "paused"),
                "playback resumed" => ("#2ca02c", "resumed"),
                "concealed" => ("#ff7f0e", ""),
                "agent clear" => ("#d62728", "agent clear"),
                "dtmf" => ("#1f77b4", "dtmf"),
                _ => ("#555555", ""),
            };
            let px = x(e.ts);
            let _ = write!(
                svg,
                r#"<line x1="{px:.1}" y1="{:.1}" x2="{px:.1}" y2="{:.1}" stroke="{color}" stroke-width="1.5"/>"#,
                y + 2.0,
                y + ROW - 2.0
            );
            if !label.is_empty() {
                // Barge-in sits on the same frame as the speech start: label it lower.
                let dy = if label == "BARGE_IN" { 26.0 } else { 12.0 };
                let _ = write!(
                    svg,
                    r#"<text x="{:.1}" y="{:.1}" fill="{color}" font-size="10">{label}</text>"#,
                    px + 2.0,
                    y + dy
                );
            }
        }
    }
    let _ = write!(
        svg,
        r##"<text x="{LEFT}" y="{:.1}" fill="#555555">strips: one pixel per {:.1} ms, darker = more frames; orange bars = caller speech; red = clear / barge-in; olive = onset held for the second-stage check (and playback paused for it); orange ticks = concealed slots</text>"##,
        height - 12.0,
        end_us / plot / 1e3
    );
    svg.push_str("</svg>");
    Ok(svg)
}

fn is_marked(name: &str) -> bool {
    matches!(
        name,
        "BARGE_IN"
            | "clear"
            | "speech started"
            | "speech ended"
            | "onset held"
            | "onset rejected"
            | "speech dismissed"
            | "playback paused"
            | "playback resumed"
            | "concealed"
            | "agent clear"
            | "dtmf"
    )
}

fn nice_step(seconds: f64) -> f64 {
    for step in [0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0] {
        if seconds / step <= 16.0 {
            return step;
        }
    }
    600.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_lanes_events_and_intervals() {
        let json = r#"{"displayTimeUnit":"ms","traceEvents":[
            {"name":"process_name","ph":"M","pid":1,"tid":0,"args":{"name":"CA<1>"}},
            {"name":"thread_name","ph":"M","pid":1,"tid":1,"args":{"name":"caller media in"}},
            {"name":"thread_name","ph":"M","pid":1,"tid":3,"args":{"name":"caller speech (VAD)"}},
            {"name":"media","ph":"i","s":"t","pid":1,"tid":1,"ts":20000,"args":{}},
            {"name":"speech","ph":"X","pid":1,"tid":3,"ts":100000,"dur":500000},
            {"name":"BARGE_IN","ph":"i","s":"t","pid":1,"tid":3,"ts":160000,"args":{}}
        ]}"#;
        let svg = render(json).unwrap();
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
        assert!(svg.contains("CA&lt;1&gt;"), "title escaped");
        assert!(svg.contains("caller media in"));
        assert!(svg.contains(">BARGE_IN<"));
        assert!(
            svg.contains(r##"fill="#c27a2c" fill-opacity="0.35""##),
            "speech interval drawn"
        );
    }

    #[test]
    fn rejects_non_traces() {
        assert!(matches!(render("nope"), Err(TraceError::Json(_))));
        assert!(matches!(render("{}"), Err(TraceError::Shape)));
    }
}
