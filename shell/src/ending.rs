//! How a call goes on once its media stream has ended: the one table that decides what
//! `/webhook/stream_ended` (Twilio's `<Connect action>`) answers, and the checks a transfer
//! target must pass. Pure: the handler reads the call's record from the store and hands how its
//! stream ended ([`StreamEnd`]) here.
//!
//! | why the stream ended (`calls.end_reason`) | answer |
//! |---|---|
//! | the agent hung up after its audio played (`agent_hangup`) | `<Hangup/>` |
//! | the agent transferred the call (`transfer`) | `<Dial>` to the checked target, with `action` back to Handset |
//! | the caller hung up: Twilio's `stop` (`completed`), or the request says the call is over | `<Hangup/>`: nothing can be played |
//! | the instance was draining (`draining`, `going_away`) | `<Redirect>` to the voice webhook, at most [`MAX_HOPS`] times |
//! | the agent failed, the token or capacity was refused, any other reason | the apology and `<Record>` |
//! | no record of the call at all | the apology and `<Record>`, logged with the reason |

use crate::ids::is_e164;

/// Most times one call is moved to another instance (a drain's `<Redirect>`) before it
/// takes the fallback instead.
pub const MAX_HOPS: u32 = 3;

/// Longest transfer target accepted, in bytes.
pub const MAX_TARGET: usize = 256;

/// Ring time allowed for a transfer when the agent names none, in seconds (Twilio's default).
pub const DEFAULT_TRANSFER_TIMEOUT_S: u32 = 30;

/// What `/webhook/stream_ended` answers.
#[derive(Clone, Debug, Eq, PartialEq)]
pub enum Ending {
    /// Dial the transfer target.
    Dial(Transfer),
    /// The apology and a recorded message; the reason is logged.
    Fallback(&'static str),
    /// End the call without a word.
    Hangup,
    /// Back to the voice webhook (through the load balancer): hop number `next`.
    Redirect {
        /// The hop the redirected webhook request will carry.
        next: u32,
    },
}

/// How a call's stream ended, as its row in the store tells it.
#[derive(Clone, Copy, Debug, Default)]
pub struct StreamEnd<'a> {
    /// Why it ended (`calls.end_reason`: a close-reason label such as `agent_hangup`); `None`
    /// while it has not.
    pub reason: Option<&'a str>,
    /// Where the agent transferred the call, when it ended with `transfer`.
    pub transfer: Option<&'a Transfer>,
}

/// Decides how the call goes on. `record` is how the call's stream ended, from its row in the
/// store (`None`: no row), `call_status` the `CallStatus` of the `<Connect action>` request
/// and `hop` its hop count.
pub fn decide(record: Option<StreamEnd<'_>>, call_status: Option<&str>, hop: u32) -> Ending {
    if matches!(
        call_status,
        Some("completed" | "canceled" | "busy" | "failed" | "no-answer")
    ) {
        return Ending::Hangup;
    }
    let Some(record) = record else {
        return Ending::Fallback("no record of the call");
    };
    match record.reason {
        Some("agent_hangup" | "completed") => Ending::Hangup,
        Some("transfer") => match record.transfer {
            Some(transfer) => Ending::Dial(transfer.clone()),
            None => Ending::Fallback("transfer without a target"),
        },
        Some("draining" | "going_away") if hop < MAX_HOPS => Ending::Redirect { next: hop + 1 },
        Some("draining" | "going_away") => Ending::Fallback("moved too many times"),
        Some("agent_failed") => Ending::Fallback("the agent failed"),
        Some(_) => Ending::Fallback("the stream was refused or failed"),
        None => Ending::Fallback("the stream has not ended"),
    }
}

/// Where a transfer goes.
#[derive(Clone, Debug, Eq, PartialEq)]
pub enum TransferTarget {
    /// An E.164 number (`+` and 8 to 15 digits).
    Number(String),
    /// A SIP URI (`sip:user@host`).
    Sip(String),
}

impl TransferTarget {
    /// The target as the agent wrote it (and as it is stored).
    pub fn as_str(&self) -> &str {
        match self {
            Self::Number(n) | Self::Sip(n) => n,
        }
    }
}

/// A checked transfer.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct Transfer {
    /// Where to.
    pub to: TransferTarget,
    /// The caller ID shown to the transfer target (E.164), if the agent named one.
    pub caller_id: Option<String>,
    /// Seconds to ring before giving up (5–600).
    pub timeout_s: u32,
}

/// Why a transfer was refused (reported to the agent as `transfer_refused`).
#[derive(Clone, Debug, Eq, PartialEq, thiserror::Error)]
pub enum TransferRefused {
    /// `caller_id` is not an E.164 number.
    #[error("caller_id must be an E.164 number (+ and 8 to 15 digits)")]
    CallerId,
    /// The target is well formed but not in `TRANSFER_ALLOW`.
    #[error("target is not allowed by TRANSFER_ALLOW")]
    NotAllowed,
    /// `timeout_s` out of range.
    #[error("timeout_s must be 5 to 600 seconds, got {0}")]
    Timeout(u64),
    /// Neither an E.164 number nor a `sip:user@host` URI.
    #[error("target must be an E.164 number (+ and 8 to 15 digits) or a sip:user@host URI")]
    Format,
}

/// Checks an agent's transfer request against the format rules and the `TRANSFER_ALLOW`
/// list (`allow`: number prefixes such as `+1555`, and SIP domains such as `pbx.example.com`,
/// which also admit their subdomains). An empty list allows every well-formed target.
pub fn check_transfer(
    to: &str,
    caller_id: Option<&str>,
    timeout_s: Option<u64>,
    allow: &[String],
) -> Result<Transfer, TransferRefused> {
    let target = parse_target(to)?;
    if !allow.is_empty() && !allow.iter().any(|entry| allows(entry, &target)) {
        return Err(TransferRefused::NotAllowed);
    }
    let caller_id = match caller_id {
        Some(id) if is_e164(id) => Some(id.to_owned()),
        Some(_) => return Err(TransferRefused::CallerId),
        None => None,
    };
    let timeout_s = match timeout_s {
        None => DEFAULT_TRANSFER_TIMEOUT_S,
        Some(t @ 5..=600) => t as u32,
        Some(t) => return Err(TransferRefused::Timeout(t)),
    };
    Ok(Transfer {
        to: target,
        caller_id,
        timeout_s,
    })
}

/// Whether `entry` (`TRANSFER_ALLOW` item) admits `target`.
fn allows(entry: &str, target: &TransferTarget) -> bool {
    match target {
        TransferTarget::Number(n) => entry.starts_with('+') && n.starts_with(entry),
        TransferTarget::Sip(uri) => {
            let host = sip_host(uri).unwrap_or_default().to_ascii_lowercase();
            let domain = entry.trim_start_matches("sip:").to_ascii_lowercase();
            !entry.starts_with('+')
                && (host == domain
                    || host
                        .strip_suffix(domain.as_str())
                        .is_some_and(|rest| rest.ends_with('.')))
        }
    }
}

/// Whether an allow-list entry is usable: a `+` and 1–15 digits, or a domain name.
pub fn valid_allow_entry(entry: &str) -> bool {
    if let Some(digits) = entry.strip_prefix('+') {
        return (1..=15).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit());
    }
    let domain = entry.strip_prefix("sip:").unwrap_or(entry);
    is_host(domain)
}

fn parse_target(to: &str) -> Result<TransferTarget, TransferRefused> {
    if to.len() > MAX_TARGET {
        return Err(TransferRefused::Format);
    }
    if is_e164(to) {
        return Ok(TransferTarget::Number(to.to_owned()));
    }
    if to.starts_with("sip:") && sip_host(to).is_some() {
        return Ok(TransferTarget::Sip(to.to_owned()));
    }
    Err(TransferRefused::Format)
}

/// A phone number or transfer target as logged (unless `LOG_PII=full`): a number keeps its
/// first four digits and last four (`+1555***4321`), a SIP URI its host only
/// (`sip:***@pbx.example.com`), anything short or else `***`.
pub fn masked(target: &str) -> String {
    if let Some(host) = sip_host(target) {
        return format!("sip:***@{host}");
    }
    if !target.starts_with('+') || !target[1..].bytes().all(|b| b.is_ascii_digit()) {
        return "***".to_owned();
    }
    let chars: Vec<char> = target.chars().collect();
    if chars.len() <= 8 {
        return "***".to_owned();
    }
    let head: String = chars[..5].iter().collect();
    let tail: String = chars[chars.len() - 4..].iter().collect();
    format!("{head}***{tail}")
}

/// The host of `sip:user@host[:port][;params]`, if the URI is that shape.
fn sip_host(uri: &str) -> Option<&str> {
    let rest = uri.strip_prefix("sip:")?;
    let (user, host) = rest.split_once('@')?;
    let user_ok = !user.is_empty()
        && user
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.!~*'()&=+$,;?/%".contains(&b));
    let host = host.split([';', '?']).next()?;
    let host = match host.rsplit_once(':') {
        Some((h, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    };
    (user_ok && is_host(host)).then_some(host)
}

/// A DNS name of letters, digits, `-` and `.` (no empty label).
fn is_host(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ended(reason: &str) -> StreamEnd<'_> {
        StreamEnd {
            reason: Some(reason),
            transfer: None,
        }
    }

    #[test]
    fn the_ending_table() {
        let transfer = Transfer {
            to: TransferTarget::Number("+15557654321".into()),
            caller_id: None,
            timeout_s: 30,
        };
        let transferred = StreamEnd {
            transfer: Some(&transfer),
            ..ended("transfer")
        };
        let cases: Vec<(Option<StreamEnd<'_>>, Option<&str>, u32, Ending)> = vec![
            (
                Some(ended("agent_hangup")),
                Some("in-progress"),
                0,
                Ending::Hangup,
            ),
            (
                Some(transferred),
                Some("in-progress"),
                0,
                Ending::Dial(transfer.clone()),
            ),
            (
                Some(ended("transfer")),
                None,
                0,
                Ending::Fallback("transfer without a target"),
            ),
            (
                Some(ended("completed")),
                Some("in-progress"),
                0,
                Ending::Hangup,
            ),
            (
                Some(ended("agent_failed")),
                Some("in-progress"),
                0,
                Ending::Fallback("the agent failed"),
            ),
            (
                Some(ended("invalid_token")),
                None,
                0,
                Ending::Fallback("the stream was refused or failed"),
            ),
            (
                Some(ended("busy")),
                None,
                0,
                Ending::Fallback("the stream was refused or failed"),
            ),
            (
                Some(ended("protocol_error")),
                Some("in-progress"),
                0,
                Ending::Fallback("the stream was refused or failed"),
            ),
            (
                Some(ended("stalled")),
                Some("in-progress"),
                0,
                Ending::Fallback("the stream was refused or failed"),
            ),
            (
                Some(ended("draining")),
                None,
                0,
                Ending::Redirect { next: 1 },
            ),
            (
                Some(ended("going_away")),
                None,
                2,
                Ending::Redirect { next: 3 },
            ),
            (
                Some(ended("going_away")),
                None,
                3,
                Ending::Fallback("moved too many times"),
            ),
            (
                None,
                Some("in-progress"),
                0,
                Ending::Fallback("no record of the call"),
            ),
            // The caller hung up: whatever the record says, nothing can be played.
            (
                Some(ended("agent_failed")),
                Some("completed"),
                0,
                Ending::Hangup,
            ),
            (None, Some("completed"), 0, Ending::Hangup),
        ];
        for (record, status, hop, want) in cases {
            assert_eq!(
                decide(record, status, hop),
                want,
                "{record:?} {status:?} {hop}"
            );
        }
    }

    #[test]
    fn transfer_targets_are_numbers_or_sip_uris() {
        let ok = |to: &str| check_transfer(to, None, None, &[]).map(|t| t.to);
        assert_eq!(
            ok("+15557654321"),
            Ok(TransferTarget::Number("+15557654321".into()))
        );
        assert_eq!(
            ok("sip:alice@pbx.example.com;transport=tls"),
            Ok(TransferTarget::Sip(
                "sip:alice@pbx.example.com;transport=tls".into()
            ))
        );
        assert_eq!(
            ok("sip:desk@10.0.0.1:5060").map(|t| t.as_str().len()),
            Ok(22)
        );
        for bad in [
            "15557654321",
            "+1555",
            "+0155576543",
            "+1555765432109876",
            "+1555 765 4321",
            "sip:@host",
            "sip:alice@",
            "sip:alice@bad host",
            "sip:a<b>@x.com",
            "tel:+15557654321",
            "",
        ] {
            assert_eq!(ok(bad), Err(TransferRefused::Format), "{bad:?}");
        }
        assert_eq!(
            ok(&format!("sip:{}@x.com", "a".repeat(300))),
            Err(TransferRefused::Format)
        );
    }

    #[test]
    fn the_allow_list_admits_prefixes_and_sip_domains_only() {
        let allow = vec!["+1555".to_owned(), "pbx.example.com".to_owned()];
        let check = |to: &str| check_transfer(to, None, None, &allow).map(|_| ());
        assert_eq!(check("+15557654321"), Ok(()));
        assert_eq!(check("+19005550100"), Err(TransferRefused::NotAllowed));
        assert_eq!(check("sip:alice@pbx.example.com"), Ok(()));
        assert_eq!(check("sip:alice@eu.pbx.example.com"), Ok(()));
        assert_eq!(
            check("sip:alice@evilpbx.example.com"),
            Err(TransferRefused::NotAllowed)
        );
        assert_eq!(
            check("sip:alice@pbx.example.com.evil.net"),
            Err(TransferRefused::NotAllowed)
        );
        assert!(valid_allow_entry("+44"));
        assert!(valid_allow_entry("sip:pbx.example.com"));
        assert!(!valid_allow_entry("+"));
        assert!(!valid_allow_entry("+1-555"));
        assert!(!valid_allow_entry("pbx..example.com"));
    }

    #[test]
    fn targets_are_masked_in_logs() {
        assert_eq!(masked("+15557654321"), "+1555***4321");
        assert_eq!(
            masked("sip:alice@pbx.example.com"),
            "sip:***@pbx.example.com"
        );
        assert_eq!(masked("+1234"), "***");
        assert_eq!(masked("+14155554567"), "+1415***4567");
        assert_eq!(masked("client:alice-smith"), "***");
        assert_eq!(masked("+1415\n2026-12-06 INFO forged"), "***");
    }

    #[test]
    fn caller_id_and_timeout_are_checked() {
        let t = check_transfer("+15557654321", Some("+15550001111"), Some(20), &[]).unwrap();
        assert_eq!(
            (t.caller_id.as_deref(), t.timeout_s),
            (Some("+15550001111"), 20)
        );
        assert_eq!(
            check_transfer("+15557654321", Some("Bob"), None, &[]),
            Err(TransferRefused::CallerId)
        );
        assert_eq!(
            check_transfer("+15557654321", None, Some(4), &[]),
            Err(TransferRefused::Timeout(4))
        );
        assert_eq!(
            check_transfer("+15557654321", None, None, &[])
                .unwrap()
                .timeout_s,
            DEFAULT_TRANSFER_TIMEOUT_S
        );
    }
}
