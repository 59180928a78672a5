//! Strict `application/x-www-form-urlencoded` decoding.
//!
//! Signatures are computed over the decoded parameters, so decoding must be exact: `+` is a
//! space, `%XX` is a byte, and the decoded bytes must be UTF-8. Unlike lenient decoders that
//! substitute U+FFFD (which would make a signature silently fail), invalid UTF-8 is an error the
//! router turns into 400. A `%` not followed by two hex digits is kept literally, as browsers and
//! Twilio's helper libraries do.

/// Why a form body could not be decoded.
#[derive(Clone, Debug, Eq, PartialEq, thiserror::Error)]
pub enum FormError {
    /// A name or value was not UTF-8 after percent-decoding.
    #[error("form field {index} is not valid utf-8 after percent-decoding")]
    NotUtf8 {
        /// Zero-based position of the `name=value` pair.
        index: usize,
    },
}

/// Decodes `input` into `(name, value)` pairs in order; empty pairs (`&&`) are skipped.
pub fn decode(input: &[u8]) -> Result<Vec<(String, String)>, FormError> {
    let mut out = Vec::new();
    for (index, pair) in input
        .split(|&b| b == b'&')
        .filter(|p| !p.is_empty())
        .enumerate()
    {
        let (name, value) = match pair.iter().position(|&b| b == b'=') {
            Some(eq) => (&pair[..eq], &pair[eq + 1..]),
            None => (pair, &[][..]),
        };
        let name =
            String::from_utf8(percent_decode(name)).map_err(|_| FormError::NotUtf8 { index })?;
        let value =
            String::from_utf8(percent_decode(value)).map_err(|_| FormError::NotUtf8 { index })?;
        out.push((name, value));
    }
    Ok(out)
}

fn percent_decode(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        match input[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hi = input.get(i + 1).copied().and_then(hex);
                let lo = input.get(i + 2).copied().and_then(hex);
                match (hi, lo) {
                    (Some(h), Some(l)) => {
                        out.push(h << 4 | l);
                        i += 3;
                        continue;
                    }
                    _ => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    out
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter()
            .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
            .collect()
    }

    #[test]
    fn decodes_plus_percent_and_repeats_in_order() {
        assert_eq!(
            decode(b"From=%2B1555&Body=It%27s+ok&D=1&D=2&flag&&e=").unwrap(),
            pairs(&[
                ("From", "+1555"),
                ("Body", "It's ok"),
                ("D", "1"),
                ("D", "2"),
                ("flag", ""),
                ("e", "")
            ])
        );
    }

    #[test]
    fn non_ascii_utf8_round_trips() {
        assert_eq!(
            decode(b"Name=Jos%C3%A9+%E2%9C%93").unwrap(),
            pairs(&[("Name", "José ✓")])
        );
    }

    #[test]
    fn invalid_utf8_is_an_error_naming_the_field() {
        assert_eq!(
            decode(b"a=1&b=%FF").unwrap_err(),
            FormError::NotUtf8 { index: 1 }
        );
    }

    #[test]
    fn stray_percent_is_kept_literally() {
        assert_eq!(
            decode(b"a=100%&b=%2&c=%zz").unwrap(),
            pairs(&[("a", "100%"), ("b", "%2"), ("c", "%zz")])
        );
    }

    proptest::proptest! {
        #[test]
        fn encoding_then_decoding_is_identity(v in proptest::collection::vec(("\\PC{0,8}", "\\PC{0,8}"), 0..6)) {
            let encoded: String = form_urlencoded::Serializer::new(String::new())
                .extend_pairs(v.iter().map(|(a, b)| (a.as_str(), b.as_str())))
                .finish();
            // A pair with an empty name and value encodes to "=", which decodes back to ("", "").
            proptest::prop_assert_eq!(decode(encoded.as_bytes()).unwrap(), v);
        }
    }
}
