//! `X-Twilio-Signature` verification (pure: no I/O, no clock).
//!
//! Twilio signs every webhook with HMAC over the full URL it requested, followed by the POST
//! parameters: names sorted byte-wise, each repeated name's values sorted and de-duplicated, each
//! pair appended as `name` immediately followed by `value`. The digest is base64 (standard
//! alphabet, padded). JSON bodies are not appended; instead Twilio adds `bodySHA256=<hex>` to the
//! URL's query and we check the hash of the raw body. HMAC-SHA256 replaces HMAC-SHA1 when the
//! `X-Twilio-Webhooks-Signature-Settings` header names it.
//!
//! Twilio's back end is inconsistent about default ports, so the URL is tried both without any
//! port and with the scheme's default port (`https`/`wss` → 443, `http`/`ws` → 80); an explicit
//! non-default port is kept. The same [`Verifier`] serves the Media Streams WebSocket upgrade,
//! which is a GET with no body signed over the `wss://` URL written in the TwiML: call
//! [`Verifier::verify`] with empty params.
//!
//! Assumptions: the caller passes the URL byte-exact (query string as received, not re-encoded)
//! and every received parameter. Comparison is constant-time over the base64 text; a length
//! mismatch is not secret.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, Mac};
use sha1::Sha1;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::Secret;

/// Header carrying the signature.
pub const SIGNATURE_HEADER: &str = "x-twilio-signature";
/// Header naming the signing algorithm when it is not HMAC-SHA1.
pub const SETTINGS_HEADER: &str = "x-twilio-webhooks-signature-settings";
/// Query parameter carrying the hex SHA-256 of a JSON body.
pub const BODY_SHA256_PARAM: &str = "bodySHA256";

/// Why a request failed verification. Callers must answer 403 without saying which; the
/// variants exist for tests and metrics only.
#[derive(Clone, Copy, Debug, Eq, PartialEq, thiserror::Error)]
pub enum SignatureError {
    /// The `bodySHA256` query value did not match the SHA-256 of the raw body.
    #[error("body hash does not match the bodySHA256 query parameter")]
    BodyHashMismatch,
    /// The request carried no `X-Twilio-Signature` header.
    #[error("signature header missing")]
    Missing,
    /// No URL variant produced the signature in the header.
    #[error("signature does not match")]
    Mismatch,
    /// A raw body was given but the URL has no `bodySHA256` parameter.
    #[error("raw body without a bodySHA256 query parameter")]
    UnsignedBody,
}

/// HMAC flavour used by Twilio for a request.
#[derive(Clone, Copy, Debug, Default, Eq, PartialEq)]
pub enum Algorithm {
    /// HMAC-SHA1, Twilio's default.
    #[default]
    HmacSha1,
    /// HMAC-SHA256, used when the signature-settings header names it.
    HmacSha256,
}

impl Algorithm {
    /// Picks the algorithm from the `X-Twilio-Webhooks-Signature-Settings` header value: any
    /// mention of SHA-256 (e.g. `algorithm=HMAC-SHA256`, case-insensitive) selects
    /// [`Algorithm::HmacSha256`]; absence or anything else selects HMAC-SHA1.
    pub fn from_settings_header(value: Option<&str>) -> Self {
        match value {
            Some(v) => {
                let v = v.to_ascii_lowercase();
                if v.contains("sha256") || v.contains("sha-256") {
                    Self::HmacSha256
                } else {
                    Self::HmacSha1
                }
            }
            None => Self::HmacSha1,
        }
    }
}

/// What Twilio signed besides the URL.
#[derive(Clone, Copy, Debug)]
pub enum SignedContent<'a> {
    /// Decoded form parameters (POST `application/x-www-form-urlencoded`), or none for a GET.
    Params(&'a [(String, String)]),
    /// The raw bytes of a non-form body (JSON); the URL must carry `bodySHA256`.
    RawBody(&'a [u8]),
}

/// Which URL form matched; useful to log while a deployment is being set up.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub enum UrlVariant {
    /// The URL exactly as given, when it is neither normalised form (e.g. an empty port).
    AsGiven,
    /// The URL with the scheme's default port (or its explicit port) in it.
    WithPort,
    /// The URL with any port removed.
    WithoutPort,
}

/// Verifies Twilio signatures with one auth token.
#[derive(Clone, Debug)]
pub struct Verifier {
    /// HMAC key: the Twilio auth token (never logged).
    token: Secret,
}

impl Verifier {
    /// A verifier keyed with `token`.
    pub fn new(token: Secret) -> Self {
        Self { token }
    }

    /// Verifies an HMAC-SHA1 signature over `url` and form `params` (empty for a GET or a
    /// WebSocket upgrade). `header` is the `X-Twilio-Signature` value, if any.
    pub fn verify(
        &self,
        url: &str,
        params: &[(String, String)],
        header: Option<&str>,
    ) -> Result<UrlVariant, SignatureError> {
        self.verify_with(
            url,
            SignedContent::Params(params),
            header,
            Algorithm::HmacSha1,
        )
    }

    /// Verifies a request in full: form or raw (JSON) content and either algorithm.
    pub fn verify_with(
        &self,
        url: &str,
        content: SignedContent<'_>,
        header: Option<&str>,
        algorithm: Algorithm,
    ) -> Result<UrlVariant, SignatureError> {
        let header = header.ok_or(SignatureError::Missing)?.trim();
        let params: &[(String, String)] = match content {
            SignedContent::Params(params) => params,
            SignedContent::RawBody(body) => {
                let expected =
                    query_value(url, BODY_SHA256_PARAM).ok_or(SignatureError::UnsignedBody)?;
                let actual = hex_lower(&Sha256::digest(body));
                // Compare case-insensitively: hex case carries no meaning.
                let expected = expected.to_ascii_lowercase();
                if !bool::from(actual.as_bytes().ct_eq(expected.as_bytes())) {
                    return Err(SignatureError::BodyHashMismatch);
                }
                &[]
            }
        };
        let (without, with) = url_variants(url);
        let token = self.token.expose().as_bytes();
        let sig_without = compute(token, &without, params, algorithm);
        let sig_with = compute(token, &with, params, algorithm);
        let ok_without = sig_without.as_bytes().ct_eq(header.as_bytes());
        let ok_with = sig_with.as_bytes().ct_eq(header.as_bytes());
        // The URL exactly as given, when neither form is it (an empty port `h:/`, or an
        // authority the splitter normalises): Twilio signs the URL as it wrote it.
        let ok_as_given = if url != without && url != with {
            compute(token, url, params, algorithm)
                .as_bytes()
                .ct_eq(header.as_bytes())
        } else {
            subtle::Choice::from(0)
        };
        if bool::from(ok_without) {
            Ok(UrlVariant::WithoutPort)
        } else if bool::from(ok_with) {
            Ok(UrlVariant::WithPort)
        } else if bool::from(ok_as_given) {
            Ok(UrlVariant::AsGiven)
        } else {
            Err(SignatureError::Mismatch)
        }
    }
}

/// Computes Twilio's base64 signature of `url` + sorted `params` with key `token`.
///
/// Names are sorted byte-wise; a repeated name's values are sorted and de-duplicated.
pub fn compute(
    token: &[u8],
    url: &str,
    params: &[(String, String)],
    algorithm: Algorithm,
) -> String {
    let mut pairs: Vec<(&str, &str)> = params
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    // Sorting by (name, value) sorts names byte-wise and each name's values byte-wise.
    pairs.sort_unstable();
    pairs.dedup();
    match algorithm {
        Algorithm::HmacSha1 => {
            let mut mac = <Hmac<Sha1> as Mac>::new_from_slice(token)
                .unwrap_or_else(|_| unreachable!("hmac accepts keys of any length"));
            feed(&mut mac, url, &pairs);
            BASE64.encode(mac.finalize().into_bytes())
        }
        Algorithm::HmacSha256 => {
            let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(token)
                .unwrap_or_else(|_| unreachable!("hmac accepts keys of any length"));
            feed(&mut mac, url, &pairs);
            BASE64.encode(mac.finalize().into_bytes())
        }
    }
}

fn feed<M: Mac>(mac: &mut M, url: &str, pairs: &[(&str, &str)]) {
    mac.update(url.as_bytes());
    for (name, value) in pairs {
        mac.update(name.as_bytes());
        mac.update(value.as_bytes());
    }
}

/// The two URL forms tried: (without any port, with the default or explicit port).
///
/// A URL that does not parse as `scheme://authority…` is returned unchanged in both slots.
pub fn url_variants(url: &str) -> (String, String) {
    let Some(parts) = UrlParts::split(url) else {
        return (url.to_owned(), url.to_owned());
    };
    let without = parts.join(None);
    let with = match parts.port {
        Some(port) => parts.join(Some(port)),
        None => match default_port(parts.scheme) {
            Some(port) => parts.join(Some(port)),
            None => url.to_owned(),
        },
    };
    (without, with)
}

/// Default port of a scheme (`https`/`wss` → 443, `http`/`ws` → 80).
pub fn default_port(scheme: &str) -> Option<&'static str> {
    match scheme.to_ascii_lowercase().as_str() {
        "https" | "wss" => Some("443"),
        "http" | "ws" => Some("80"),
        _ => None,
    }
}

/// A URL split just enough to add or remove the port, keeping every other byte as written.
struct UrlParts<'a> {
    /// Scheme without `://`.
    scheme: &'a str,
    /// `user[:pass]@`, including the `@`, or empty.
    userinfo: &'a str,
    /// Host, with brackets for IPv6.
    host: &'a str,
    /// Port digits, if written.
    port: Option<&'a str>,
    /// Path, query and fragment as written.
    rest: &'a str,
}

impl<'a> UrlParts<'a> {
    fn split(url: &'a str) -> Option<Self> {
        let (scheme, after) = url.split_once("://")?;
        let end = after.find(['/', '?', '#']).unwrap_or(after.len());
        let (authority, rest) = after.split_at(end);
        let (userinfo, hostport) = match authority.rfind('@') {
            Some(at) => authority.split_at(at + 1),
            None => ("", authority),
        };
        let (host, port) = if hostport.starts_with('[') {
            let close = hostport.find(']')?;
            let (host, tail) = hostport.split_at(close + 1);
            (host, tail.strip_prefix(':'))
        } else {
            match hostport.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (hostport, None),
            }
        };
        Some(Self {
            scheme,
            userinfo,
            host,
            port: port.filter(|p| !p.is_empty()),
            rest,
        })
    }

    fn join(&self, port: Option<&str>) -> String {
        let mut out =
            String::with_capacity(self.scheme.len() + self.host.len() + self.rest.len() + 16);
        out.push_str(self.scheme);
        out.push_str("://");
        out.push_str(self.userinfo);
        out.push_str(self.host);
        if let Some(port) = port {
            out.push(':');
            out.push_str(port);
        }
        out.push_str(self.rest);
        out
    }
}

/// Raw (still percent-encoded) value of the first query parameter called `name`.
fn query_value<'a>(url: &'a str, name: &str) -> Option<&'a str> {
    let query = url.split_once('?')?.1;
    let query = query.split('#').next().unwrap_or(query);
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then_some(v)
    })
}

fn hex_lower(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "12345";
    const BASE_URL: &str = "https://mycompany.com/myapp.php?foo=1&bar=2";

    fn base_params() -> Vec<(String, String)> {
        [
            ("CallSid", "CA1234567890ABCDE"),
            ("Caller", "+14158675309"),
            ("Digits", "1234"),
            ("From", "+14158675309"),
            ("To", "+18005551212"),
        ]
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
    }

    fn verifier() -> Verifier {
        Verifier::new(Secret::new(TOKEN))
    }

    fn sign(url: &str, params: &[(String, String)]) -> String {
        compute(TOKEN.as_bytes(), url, params, Algorithm::HmacSha1)
    }

    #[test]
    fn official_v1_base_url_and_params() {
        assert_eq!(
            sign(BASE_URL, &base_params()),
            "RSOYDt4T1cUTdK1PDd93/VVr8B8="
        );
        assert!(
            verifier()
                .verify(
                    BASE_URL,
                    &base_params(),
                    Some("RSOYDt4T1cUTdK1PDd93/VVr8B8=")
                )
                .is_ok()
        );
    }

    #[test]
    fn official_v2_signature_with_443_validates_url_without_port() {
        let sig = "kvajT1Ptam85bY51eRf/AJRuM3w=";
        assert_eq!(
            sign(
                "https://mycompany.com:443/myapp.php?foo=1&bar=2",
                &base_params()
            ),
            sig
        );
        assert_eq!(
            verifier().verify(BASE_URL, &base_params(), Some(sig)),
            Ok(UrlVariant::WithPort)
        );
    }

    #[test]
    fn official_v3_signature_with_80_validates_http_url_without_port() {
        let sig = "0ZXoZLH/DfblKGATFgpif+LLRf4=";
        let url = "http://mycompany.com/myapp.php?foo=1&bar=2";
        assert_eq!(
            verifier().verify(url, &base_params(), Some(sig)),
            Ok(UrlVariant::WithPort)
        );
    }

    #[test]
    fn official_v4_explicit_port_is_kept() {
        let sig = "Zmvh+3yNM1Phv2jhDCwEM3q5ebU=";
        let url = "http://mycompany.com:1234/myapp.php?foo=1&bar=2";
        assert_eq!(sign(url, &base_params()), sig);
        assert_eq!(
            verifier().verify(url, &base_params(), Some(sig)),
            Ok(UrlVariant::WithPort)
        );
    }

    #[test]
    fn official_v5_repeated_names_sort_values_and_drop_duplicates() {
        let params: Vec<(String, String)> = [
            ("Sid", "CA123"),
            ("SidAccount", "AC123"),
            ("Digits", "5678"),
            ("Digits", "1234"),
            ("Digits", "1234"),
        ]
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
        assert_eq!(sign(BASE_URL, &params), "IK+Dwps556ElfBT0I3Rgjkr1wJU=");
    }

    #[test]
    fn official_v6_json_body_with_body_sha256() {
        let url = format!(
            "{BASE_URL}&bodySHA256=0a1ff7634d9ab3b95db5c9a2dfe9416e41502b283a80c7cf19632632f96e6620"
        );
        let body = br#"{"property": "value", "boolean": true}"#;
        let sig = "a9nBmqA0ju/hNViExpshrM61xv4=";
        assert!(
            verifier()
                .verify_with(
                    &url,
                    SignedContent::RawBody(body),
                    Some(sig),
                    Algorithm::HmacSha1
                )
                .is_ok()
        );
        let tampered = br#"{"property": "value", "boolean": false}"#;
        assert_eq!(
            verifier().verify_with(
                &url,
                SignedContent::RawBody(tampered),
                Some(sig),
                Algorithm::HmacSha1
            ),
            Err(SignatureError::BodyHashMismatch)
        );
    }

    #[test]
    fn official_v7_body_sha256_as_only_query_param() {
        let url = "https://mycompany.com/myapp.php?bodySHA256=0a1ff7634d9ab3b95db5c9a2dfe9416e41502b283a80c7cf19632632f96e6620";
        let body = br#"{"property": "value", "boolean": true}"#;
        assert!(
            verifier()
                .verify_with(
                    url,
                    SignedContent::RawBody(body),
                    Some("y77kIzt2vzLz71DgmJGsen2scGs="),
                    Algorithm::HmacSha1
                )
                .is_ok()
        );
    }

    #[test]
    fn official_v8_empty_json_body_signed_with_port() {
        let url = "https://mycompany.com/myapp.php?foo=1&bar=2&bodySHA256=44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a";
        assert_eq!(
            verifier().verify_with(
                url,
                SignedContent::RawBody(b"{}"),
                Some("Ldidvp12m26NI7eqEvxnEpkd9Hc="),
                Algorithm::HmacSha1
            ),
            Ok(UrlVariant::WithPort)
        );
        assert_eq!(
            verifier().verify_with(
                url,
                SignedContent::RawBody(b"{}"),
                Some("rw/jVviOgicj2+kHZULvebnA4ag="),
                Algorithm::HmacSha1
            ),
            Ok(UrlVariant::WithoutPort)
        );
    }

    #[test]
    fn official_v9_array_values_in_any_order() {
        let a = (
            "MessagingBinding.Address".to_owned(),
            "+1325xxxxxxx".to_owned(),
        );
        let b = (
            "MessagingBinding.Address".to_owned(),
            "+1415xxxxxxx".to_owned(),
        );
        let sig = "83O6e2vORAoJHUNzJjDWN1jz+BA=";
        assert_eq!(sign(BASE_URL, &[a.clone(), b.clone()]), sig);
        assert_eq!(sign(BASE_URL, &[b, a]), sig);
    }

    #[test]
    fn official_v10_query_with_encoded_apostrophe() {
        let url = format!("{BASE_URL}&Body=It%27s+amazing");
        assert_eq!(sign(&url, &base_params()), "TfZzewPq8wqrGlMfyAud8+/IvJ0=");
        let raw = format!("{BASE_URL}&Body=It's+amazing");
        assert_eq!(sign(&raw, &base_params()), "dsq4Ehbj6cs+KdTkpF5sSSplOWw=");
    }

    #[test]
    fn official_v11_userinfo_stays_in_signed_url() {
        let url = "https://user:pass@mycompany.com/myapp.php?foo=1&bar=2";
        assert_eq!(sign(url, &base_params()), "CukzLTc1tT5dXEDIHm/tKBanW10=");
        assert_eq!(
            verifier().verify(url, &base_params(), Some("ZQFR1PTIZXF2MXB8ZnKCvnnA+rI=")),
            Ok(UrlVariant::WithPort)
        );
        assert_eq!(
            sign(
                "https://user@mycompany.com/myapp.php?foo=1&bar=2",
                &base_params()
            ),
            "2YRLlVAflCqxaNicjMpJcSTgzSs="
        );
    }

    #[test]
    fn websocket_upgrade_vectors_with_and_without_443() {
        let url = "wss://mycompany.com/media-stream";
        assert_eq!(
            verifier().verify(url, &[], Some("N2Y//FHA042H22oVtTOPT1X3yoU=")),
            Ok(UrlVariant::WithoutPort)
        );
        assert_eq!(
            verifier().verify(url, &[], Some("hHE+nLvjnuaIlXBedOuYUYFUlZA=")),
            Ok(UrlVariant::WithPort)
        );
        assert_eq!(
            verifier().verify(
                "https://mycompany.com/media-stream",
                &[],
                Some("N2Y//FHA042H22oVtTOPT1X3yoU=")
            ),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            sign("https://mycompany.com/media-stream", &[]),
            "Mq5qllSf+ykIJXjR6CcZ2h2USZ0="
        );
    }

    #[test]
    fn stream_status_callback_vector() {
        let params: Vec<(String, String)> = [
            ("AccountSid", "ACXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX"),
            ("CallSid", "CA1234567890ABCDE"),
            ("StreamEvent", "stream-started"),
            ("StreamName", "MZ1234"),
            ("StreamSid", "MZ1234"),
            ("Timestamp", "2024-01-15T10:30:00Z"),
        ]
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
        assert_eq!(
            sign("https://mycompany.com/stream-status", &params),
            "3/+LVJcuq5+Jgx55T1MENd89n2U="
        );
    }

    #[test]
    fn missing_header_and_tampered_params_are_rejected() {
        assert_eq!(
            verifier().verify(BASE_URL, &base_params(), None),
            Err(SignatureError::Missing)
        );
        let mut params = base_params();
        params[2].1 = "9999".to_owned();
        assert_eq!(
            verifier().verify(BASE_URL, &params, Some("RSOYDt4T1cUTdK1PDd93/VVr8B8=")),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn raw_body_without_body_sha256_is_rejected() {
        let sig = sign(BASE_URL, &[]);
        assert_eq!(
            verifier().verify_with(
                BASE_URL,
                SignedContent::RawBody(b"{}"),
                Some(&sig),
                Algorithm::HmacSha1
            ),
            Err(SignatureError::UnsignedBody)
        );
    }

    #[test]
    fn sha256_algorithm_is_selected_by_settings_header() {
        assert_eq!(Algorithm::from_settings_header(None), Algorithm::HmacSha1);
        assert_eq!(
            Algorithm::from_settings_header(Some("algorithm=HMAC-SHA256")),
            Algorithm::HmacSha256
        );
        let sig = compute(
            TOKEN.as_bytes(),
            BASE_URL,
            &base_params(),
            Algorithm::HmacSha256,
        );
        assert_ne!(sig, sign(BASE_URL, &base_params()));
        assert!(
            verifier()
                .verify_with(
                    BASE_URL,
                    SignedContent::Params(&base_params()),
                    Some(&sig),
                    Algorithm::HmacSha256
                )
                .is_ok()
        );
        assert!(
            verifier()
                .verify(BASE_URL, &base_params(), Some(&sig))
                .is_err()
        );
    }

    #[test]
    fn url_variants_handle_ipv6_userinfo_and_explicit_ports() {
        assert_eq!(
            url_variants("ws://[::1]/x"),
            ("ws://[::1]/x".to_owned(), "ws://[::1]:80/x".to_owned())
        );
        assert_eq!(
            url_variants("https://u:p@h:8443/a?b=c:d"),
            (
                "https://u:p@h/a?b=c:d".to_owned(),
                "https://u:p@h:8443/a?b=c:d".to_owned()
            )
        );
        assert_eq!(
            url_variants("https://h?x=1"),
            ("https://h?x=1".to_owned(), "https://h:443?x=1".to_owned())
        );
    }

    proptest::proptest! {
        #[test]
        fn signature_is_independent_of_param_order(
            params in proptest::collection::vec(("[A-Za-z.]{1,6}", "\\PC{0,8}"), 0..8)
        ) {
            let mut reversed = params.clone();
            reversed.reverse();
            proptest::prop_assert_eq!(sign(BASE_URL, &params), sign(BASE_URL, &reversed));
        }

        #[test]
        fn arbitrary_headers_never_verify_or_panic(header in "\\PC{0,40}") {
            proptest::prop_assert!(verifier().verify(BASE_URL, &base_params(), Some(&header)).is_err());
        }
    }

    #[test]
    fn a_signature_over_the_url_as_given_verifies_when_it_is_neither_form() {
        // An empty port is valid URL syntax; Twilio signs the URL as written.
        let verifier = Verifier::new(Secret::new("12345"));
        for url in ["https://h:/x", "wss://[::1]x/p"] {
            let sig = compute(b"12345", url, &[], Algorithm::HmacSha1);
            assert_eq!(
                verifier.verify(url, &[], Some(&sig)),
                Ok(UrlVariant::AsGiven),
                "{url}"
            );
        }
        // A plain URL still reports the normal forms.
        let sig = compute(b"12345", "https://h/x", &[], Algorithm::HmacSha1);
        assert_eq!(
            verifier.verify("https://h/x", &[], Some(&sig)),
            Ok(UrlVariant::WithoutPort)
        );
    }
}
