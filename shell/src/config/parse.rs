//! The small value parsers every group of variables shares: bounded integers, `on`/`off`
//! switches and language tags, each failing with a [`ConfigError`] that names the variable.

use super::ConfigError;

/// An `on`/`off` variable, `on` when unset.
pub(super) fn switch<'a>(
    non_empty: &impl Fn(&str) -> Option<&'a str>,
    name: &'static str,
) -> Result<bool, ConfigError> {
    match non_empty(name) {
        None => Ok(true),
        Some(v) if v.eq_ignore_ascii_case("on") => Ok(true),
        Some(v) if v.eq_ignore_ascii_case("off") => Ok(false),
        Some(v) => Err(ConfigError::Switch {
            name,
            value: v.to_owned(),
        }),
    }
}

/// An integer from `min` to `max`; anything else is [`ConfigError::OutOfRange`] naming the
/// variable, the value and the range.
pub(super) fn int_in(
    name: &'static str,
    value: &str,
    min: u64,
    max: u64,
) -> Result<u64, ConfigError> {
    value
        .parse::<u64>()
        .ok()
        .filter(|n| (min..=max).contains(n))
        .ok_or_else(|| ConfigError::OutOfRange {
            name,
            value: value.to_owned(),
            min,
            max,
        })
}

/// Accepts `ll-CC` / `ll_CC` in any case and returns `ll-CC` (the form Twilio documents).
pub(super) fn language_tag(name: &'static str, value: &str) -> Result<String, ConfigError> {
    let b = value.as_bytes();
    let ok = b.len() == 5
        && b[..2].iter().all(u8::is_ascii_alphabetic)
        && (b[2] == b'-' || b[2] == b'_')
        && b[3..].iter().all(u8::is_ascii_alphabetic);
    if !ok {
        return Err(ConfigError::Language {
            name,
            value: value.to_owned(),
        });
    }
    Ok(format!(
        "{}-{}",
        value[..2].to_ascii_lowercase(),
        value[3..].to_ascii_uppercase()
    ))
}
