//! XML escaping for the documents the shell writes: TwiML and the SVG renderings of call
//! timelines and simulator results.
//!
//! Text and attribute values escape `& < > " '`; line breaks and tabs become character
//! references, so they survive attribute-value normalisation; other C0 controls, which XML 1.0
//! does not allow at all, are dropped.

/// Appends `value` to `out` with `& < > " '` and control whitespace escaped.
pub fn escape_into(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\n' => out.push_str("&#10;"),
            '\r' => out.push_str("&#13;"),
            '\t' => out.push_str("&#09;"),
            // Other C0 controls are not allowed in XML 1.0 at all; drop them.
            c if (c as u32) < 0x20 => {}
            c => out.push(c),
        }
    }
}

/// `value` escaped for XML text or attribute content.
pub fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    escape_into(&mut out, value);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_five_special_characters_and_control_whitespace_are_escaped() {
        assert_eq!(escape(r#"a&b<c>d"e'f"#), "a&amp;b&lt;c&gt;d&quot;e&apos;f");
        assert_eq!(escape("a\nb\tc\rd\u{7}e"), "a&#10;b&#09;c&#13;de");
    }

    proptest::proptest! {
        #[test]
        fn escaped_text_contains_no_markup_characters(s in "\\PC{0,64}") {
            let e = escape(&s);
            proptest::prop_assert!(!e.contains(['<', '>', '"', '\'']));
            // Every '&' starts an entity we wrote.
            for (i, _) in e.match_indices('&') {
                let rest = &e[i..];
                proptest::prop_assert!(
                    ["&amp;", "&lt;", "&gt;", "&quot;", "&apos;", "&#10;", "&#13;", "&#09;"]
                        .iter()
                        .any(|ent| rest.starts_with(ent))
                );
            }
        }
    }
}
