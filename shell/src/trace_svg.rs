//! `handset trace FILE`: renders a call's Chrome trace JSON (written by the engine's per-call
//! timeline) as an SVG a person can read at a glance.
//!
//! One row per lane (caller media in, caller playout, caller speech, agent, to Twilio, marks).
//! Frames are drawn as a density strip: one pixel column per time slice, darker where more
//! frames fell in it, so gaps, bursts and concealment stand out. Intervals (speech) are bars;
//! the events that matter when profiling barge-in and pacing — speech started/ended, `clear`,
//! `BARGE_IN`, marks, concealed slots — are marked and labelled.

use crate::svg::{Svg, nice_step};

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

    let mut svg = Svg::new(WIDTH, height);
    svg.title(
        LEFT,
        24.0,
        16.0,
        &format!("{title} — {:.2} s", end_us / 1e6),
    );
    for (i, (_, label)) in lanes.iter().enumerate() {
        let y = TOP + ROW * i as f64;
        let fill = if i % 2 == 0 { "#f4f6f8" } else { "#ffffff" };
        svg.rect(LEFT, y, plot, ROW, fill);
        svg.text(10.0, y + ROW / 2.0 + 4.0, 12.0, "start", label);
    }
    // Time axis.
    let axis_y = TOP + ROW * lanes.len() as f64;
    let step = nice_step(end_us / 1e6, 12.0);
    let mut t = 0.0;
    while t * 1e6 <= end_us {
        let px = x(t * 1e6);
        svg.line(px, TOP, px, axis_y, "#d0d4d8", 0.5);
        svg.text(px, axis_y + 16.0, 12.0, "middle", &format!("{t:.1} s"));
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
            svg.rect_faded(LEFT + col as f64, y, 1.0, ROW - 16.0, color, opacity);
        }
    }
    // Intervals and marked events.
    for e in &parsed {
        let Some(row) = row_of(e.tid) else { continue };
        let y = TOP + ROW * row as f64;
        if let Some(dur) = e.dur {
            let width = (dur / end_us * plot).max(1.0);
            svg.rect_outlined(x(e.ts), y + 6.0, width, ROW - 12.0, "#c27a2c", 0.35);
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
            svg.line(px, y + 2.0, px, y + ROW - 2.0, color, 1.5);
            if !label.is_empty() {
                // Barge-in sits on the same frame as the speech start: label it lower.
                let dy = if label == "BARGE_IN" { 26.0 } else { 12.0 };
                svg.text_colored(px + 2.0, y + dy, 10.0, "start", color, label);
            }
        }
    }
    svg.text_colored(
        LEFT,
        height - 12.0,
        12.0,
        "start",
        "#555555",
        &format!(
            "strips: one pixel per {:.1} ms, darker = more frames; orange bars = caller speech; \
             red = clear / barge-in; olive = onset held for the second-stage check (and playback \
             paused for it); orange ticks = concealed slots",
            end_us / plot / 1e3
        ),
    );
    Ok(svg.finish())
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
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
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
