//! Twilio's identifiers and the addresses it dials: pure checks, used wherever one arrives
//! (webhooks, the stream's `start`, configuration, an agent's transfer, `POST /calls`).

/// Whether `sid` is the two-letter `prefix` followed by 32 hex digits.
pub fn is_sid(sid: &str, prefix: &str) -> bool {
    sid.len() == 34 && sid.starts_with(prefix) && sid.bytes().skip(2).all(|b| b.is_ascii_hexdigit())
}

/// `+` then 8 to 15 digits, the first not 0.
pub fn is_e164(s: &str) -> bool {
    s.strip_prefix('+').is_some_and(|d| {
        (8..=15).contains(&d.len()) && d.bytes().all(|b| b.is_ascii_digit()) && !d.starts_with('0')
    })
}

/// Whether `value` is something Twilio can dial: an E.164 number
/// ([`is_e164`]), or a `sip:` or `client:` address (printable, no spaces, at
/// most 256 bytes).
pub fn is_address(value: &str) -> bool {
    if value.starts_with('+') {
        return is_e164(value);
    }
    let rest = value
        .strip_prefix("sip:")
        .or_else(|| value.strip_prefix("client:"));
    rest.is_some_and(|r| {
        !r.is_empty() && value.len() <= 256 && r.bytes().all(|b| b.is_ascii_graphic())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_e164_numbers_or_sip_and_client_addresses() {
        for good in [
            "+15550001111",
            "+12345678",
            "+123456789012345",
            "sip:a@b.example",
            "client:alice",
        ] {
            assert!(is_address(good), "{good}");
        }
        for bad in [
            "15550001111",
            "+1234567",
            "+1234567890123456",
            "+1555000111a",
            "sip:",
            "client:a b",
            "tel:+15550001111",
            "",
        ] {
            assert!(!is_address(bad), "{bad}");
        }
    }

    #[test]
    fn sids_are_their_prefix_and_32_hex_digits() {
        assert!(is_sid("CA0123456789abcdef0123456789ABCDEF", "CA"));
        assert!(!is_sid("CA0123456789abcdef0123456789ABCDEF", "AC"));
        assert!(!is_sid("CA0123456789abcdef0123456789ABCDE", "CA"));
        assert!(!is_sid("CA0123456789abcdef0123456789ABCDEg", "CA"));
    }
}
