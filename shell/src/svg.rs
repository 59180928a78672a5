//! The one SVG writer: a document built from a few shapes and text, every text escaped by
//! [`crate::xml`]. Used by `handset trace` ([`crate::trace_svg`]) and the simulator's pictures.

use std::fmt::Write as _;

use crate::xml::escape;

/// An SVG document being written: shapes and text in drawing order.
#[derive(Debug)]
pub struct Svg {
    body: String,
    width: f64,
    height: f64,
}

impl Svg {
    /// An empty picture of this size (px).
    pub fn new(width: f64, height: f64) -> Self {
        Self {
            body: String::new(),
            width,
            height,
        }
    }

    /// A filled rectangle.
    pub fn rect(&mut self, x: f64, y: f64, w: f64, h: f64, fill: &str) {
        let _ = writeln!(
            self.body,
            r#"<rect x="{x:.1}" y="{y:.1}" width="{:.1}" height="{:.1}" fill="{fill}"/>"#,
            w.max(0.5),
            h.max(0.0)
        );
    }

    /// A rectangle filled at `opacity` (0–1).
    pub fn rect_faded(&mut self, x: f64, y: f64, w: f64, h: f64, fill: &str, opacity: f64) {
        let _ = writeln!(
            self.body,
            r#"<rect x="{x:.1}" y="{y:.1}" width="{:.1}" height="{:.1}" fill="{fill}" fill-opacity="{opacity:.2}"/>"#,
            w.max(0.5),
            h.max(0.0)
        );
    }

    /// A rectangle filled with `color` at `opacity` and outlined in it.
    pub fn rect_outlined(&mut self, x: f64, y: f64, w: f64, h: f64, color: &str, opacity: f64) {
        let _ = writeln!(
            self.body,
            r#"<rect x="{x:.1}" y="{y:.1}" width="{:.1}" height="{:.1}" fill="{color}" fill-opacity="{opacity:.2}" stroke="{color}"/>"#,
            w.max(0.5),
            h.max(0.0)
        );
    }

    /// A line.
    pub fn line(&mut self, x1: f64, y1: f64, x2: f64, y2: f64, stroke: &str, width: f64) {
        let _ = writeln!(
            self.body,
            r#"<line x1="{x1:.1}" y1="{y1:.1}" x2="{x2:.1}" y2="{y2:.1}" stroke="{stroke}" stroke-width="{width}"/>"#
        );
    }

    /// A thin dashed polyline through `points`.
    pub fn dashed_polyline(&mut self, points: &[(f64, f64)], stroke: &str) {
        self.polyline_styled(points, stroke, r#"stroke-width="1" stroke-dasharray="4 3""#);
    }

    fn polyline_styled(&mut self, points: &[(f64, f64)], stroke: &str, style: &str) {
        let pts: Vec<String> = points
            .iter()
            .map(|(x, y)| format!("{x:.1},{y:.1}"))
            .collect();
        let _ = writeln!(
            self.body,
            r#"<polyline points="{}" fill="none" stroke="{stroke}" {style}/>"#,
            pts.join(" ")
        );
    }

    /// A dashed line.
    pub fn dashed(&mut self, x1: f64, y1: f64, x2: f64, y2: f64, stroke: &str) {
        let _ = writeln!(
            self.body,
            r#"<line x1="{x1:.1}" y1="{y1:.1}" x2="{x2:.1}" y2="{y2:.1}" stroke="{stroke}" stroke-width="1" stroke-dasharray="4 3"/>"#
        );
    }

    /// A polyline through `points`, its points marked.
    pub fn polyline(&mut self, points: &[(f64, f64)], stroke: &str) {
        self.polyline_styled(points, stroke, "stroke-width=\"2\"");
        for (x, y) in points {
            let _ = writeln!(
                self.body,
                r#"<circle cx="{x:.1}" cy="{y:.1}" r="3" fill="{stroke}"/>"#
            );
        }
    }

    /// Text; `anchor` is `start`, `middle` or `end`.
    pub fn text(&mut self, x: f64, y: f64, size: f64, anchor: &str, text: &str) {
        let _ = writeln!(
            self.body,
            r#"<text x="{x:.1}" y="{y:.1}" font-size="{size}" text-anchor="{anchor}">{}</text>"#,
            escape(text)
        );
    }

    /// Text in `fill`.
    pub fn text_colored(
        &mut self,
        x: f64,
        y: f64,
        size: f64,
        anchor: &str,
        fill: &str,
        text: &str,
    ) {
        let _ = writeln!(
            self.body,
            r#"<text x="{x:.1}" y="{y:.1}" font-size="{size}" text-anchor="{anchor}" fill="{fill}">{}</text>"#,
            escape(text)
        );
    }

    /// Bold text, for a title.
    pub fn title(&mut self, x: f64, y: f64, size: f64, text: &str) {
        let _ = writeln!(
            self.body,
            r#"<text x="{x:.1}" y="{y:.1}" font-size="{size}" font-weight="bold">{}</text>"#,
            escape(text)
        );
    }

    /// The document.
    pub fn finish(self) -> String {
        format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" font-family=\"Helvetica, Arial, sans-serif\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n{}</svg>\n",
            self.body,
            w = self.width,
            h = self.height
        )
    }
}

/// A round step (1, 2 or 5 times a power of ten) for about `n` ticks over `range`.
pub fn nice_step(range: f64, n: f64) -> f64 {
    let raw = (range / n).max(1e-9);
    let mag = 10f64.powf(raw.log10().floor());
    let norm = raw / mag;
    let step = if norm < 1.5 {
        1.0
    } else if norm < 3.5 {
        2.0
    } else if norm < 7.5 {
        5.0
    } else {
        10.0
    };
    step * mag
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped() {
        let mut svg = Svg::new(10.0, 10.0);
        svg.text(0.0, 0.0, 10.0, "start", r#"a<b & "c">"#);
        svg.title(0.0, 0.0, 10.0, "x<y");
        let doc = svg.finish();
        assert!(doc.contains("a&lt;b &amp; &quot;c&quot;&gt;"), "{doc}");
        assert!(doc.contains(">x&lt;y</text>"), "{doc}");
    }

    #[test]
    fn nice_steps_are_round() {
        assert_eq!(nice_step(10.0, 5.0), 2.0);
        assert_eq!(nice_step(0.7, 5.0), 0.1);
        assert_eq!(nice_step(300.0, 6.0), 50.0);
    }
}
