//! Twilio's request signature, written here independently of the server's signer so that the
//! two check each other: this one is checked against Twilio's official test vectors in
//! tests/http_signatures.rs, and the server must accept what it signs.

use std::collections::{BTreeMap, BTreeSet};

use base64::Engine as _;
use hmac::{Hmac, Mac};

/// The `X-Twilio-Signature` of a request to `url` with form `params`: a map of name → set of
/// values (sorted, de-duplicated), appended as name+value after the URL, HMAC-SHA1 with
/// `token`, base64.
pub fn twilio_sign(token: &str, url: &str, params: &[(&str, &str)]) -> String {
    let mut grouped: BTreeMap<&[u8], BTreeSet<&[u8]>> = BTreeMap::new();
    for (k, v) in params {
        grouped
            .entry(k.as_bytes())
            .or_default()
            .insert(v.as_bytes());
    }
    let mut data = url.as_bytes().to_vec();
    for (k, values) in grouped {
        for v in values {
            data.extend_from_slice(k);
            data.extend_from_slice(v);
        }
    }
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(token.as_bytes()).unwrap();
    mac.update(&data);
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}
