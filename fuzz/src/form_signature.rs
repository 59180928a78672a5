//! Target `form_signature`: `handset_shell::form::decode` on arbitrary bytes, then
//! `handset_shell::signature::{Verifier, compute}` over the decoded parameters with an arbitrary
//! token, URL, header and algorithm.
//!
//! Invariants checked:
//! - decoding never panics; a decoded body equals what `form_urlencoded` (the reference decoder)
//!   produces, and re-encoding the pairs and decoding again gives the same pairs; a rejected
//!   body names a pair that the lenient decoder had to repair (U+FFFD);
//! - verification never panics and accepts an arbitrary header exactly when it equals (after
//!   trimming) the signature of one of the two URL forms, or of the URL as given when that is
//!   neither form, reporting which matched;
//! - a signature made with `compute` for the same token, URL, parameters and algorithm verifies
//!   (also with surrounding whitespace, with the parameters reordered or a pair repeated);
//! - a signature with one character changed, made with another token, or made with the other
//!   algorithm does not verify; a missing header is `Missing`;
//! - a raw (JSON) body signed through `bodySHA256` verifies, and the same signature with a
//!   changed body is a `BodyHashMismatch`.

use arbitrary::{Arbitrary, Unstructured};
use handset_shell::Secret;
use handset_shell::form;
use handset_shell::signature::{
    Algorithm, SignatureError, SignedContent, UrlVariant, Verifier, compute, url_variants,
};
use sha2::{Digest, Sha256};

/// Base64 alphabet, to change one character of a signature into another valid one.
const BASE64_CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// One fuzz input: the strings come first, the form body takes the rest.
#[derive(Arbitrary, Debug)]
struct Input<'a> {
    /// Auth token (HMAC key).
    token: &'a str,
    /// The request URL as received.
    url: &'a str,
    /// An arbitrary `X-Twilio-Signature` value.
    header: &'a str,
    /// HMAC-SHA256 instead of HMAC-SHA1.
    sha256: bool,
    /// Which character of the signature to change, and into what.
    flip: (u16, u8),
    /// The form body.
    body: &'a [u8],
}

/// Runs one input.
pub fn run(data: &[u8]) {
    let Ok(input) = Input::arbitrary_take_rest(Unstructured::new(data)) else {
        return;
    };
    let params = check_decode(input.body);
    check_signatures(&input, &params);
}

/// Checks `form::decode` against the reference decoder; returns the pairs (empty if rejected).
fn check_decode(body: &[u8]) -> Vec<(String, String)> {
    let reference: Vec<(String, String)> = form_urlencoded::parse(body).into_owned().collect();
    match form::decode(body) {
        Ok(pairs) => {
            assert_eq!(pairs, reference, "decode differs from form_urlencoded");
            let encoded = form_urlencoded::Serializer::new(String::new())
                .extend_pairs(pairs.iter())
                .finish();
            let again = form::decode(encoded.as_bytes()).expect("re-encoded body decodes");
            // Empty pairs vanish on re-encoding only if both name and value are empty; a pair
            // `=` (empty name and value) re-encodes to `=`, which decodes back to ("", "").
            assert_eq!(again, pairs, "decode(encode(pairs)) differs");
            pairs
        }
        Err(form::FormError::NotUtf8 { index }) => {
            let (name, value) = reference
                .get(index)
                .unwrap_or_else(|| panic!("error names pair {index} of {}", reference.len()));
            assert!(
                name.contains('\u{FFFD}') || value.contains('\u{FFFD}'),
                "pair {index} rejected but it decodes cleanly: {name:?}={value:?}"
            );
            Vec::new()
        }
    }
}

/// Checks `Verifier` and `compute` on the decoded parameters.
fn check_signatures(input: &Input<'_>, params: &[(String, String)]) {
    let algorithm = if input.sha256 {
        Algorithm::HmacSha256
    } else {
        Algorithm::HmacSha1
    };
    let token = input.token;
    let url = input.url;
    let verifier = Verifier::new(Secret::new(token));
    let verify = |url: &str, header: Option<&str>| {
        verifier.verify_with(url, SignedContent::Params(params), header, algorithm)
    };
    let (without, with) = url_variants(url);
    let sig_without = compute(token.as_bytes(), &without, params, algorithm);
    let sig_with = compute(token.as_bytes(), &with, params, algorithm);

    // An arbitrary header is accepted exactly when it is one of the signatures tried.
    let header = input.header.trim();
    let as_given = (url != without && url != with)
        .then(|| compute(token.as_bytes(), url, params, algorithm));
    let expected = if header == sig_without {
        Ok(UrlVariant::WithoutPort)
    } else if header == sig_with {
        Ok(UrlVariant::WithPort)
    } else if as_given.as_deref() == Some(header) {
        Ok(UrlVariant::AsGiven)
    } else {
        Err(SignatureError::Mismatch)
    };
    assert_eq!(verify(url, Some(input.header)), expected);
    assert_eq!(verify(url, None), Err(SignatureError::Missing));

    // Signatures over either URL form verify; so does one over the URL as given.
    assert!(verify(url, Some(&sig_without)).is_ok());
    assert!(verify(url, Some(&sig_with)).is_ok());
    let sig = compute(token.as_bytes(), url, params, algorithm);
    assert!(
        verify(url, Some(&sig)).is_ok(),
        "signature over the URL as given does not verify: {url:?} (forms {without:?}, {with:?})"
    );
    assert!(verify(url, Some(&format!(" \t{sig}\r\n"))).is_ok());
    if algorithm == Algorithm::HmacSha1 {
        assert!(verifier.verify(url, params, Some(&sig)).is_ok());
    }

    // The signature does not depend on parameter order or repeated pairs.
    let mut shuffled: Vec<(String, String)> = params.iter().rev().cloned().collect();
    if let Some(first) = params.first() {
        shuffled.push(first.clone());
    }
    assert_eq!(compute(token.as_bytes(), url, &shuffled, algorithm), sig);

    // A different signature does not verify.
    let (pos, to) = input.flip;
    let mut changed = sig.clone().into_bytes();
    let pos = usize::from(pos) % changed.len();
    let replacement = BASE64_CHARS[usize::from(to) % BASE64_CHARS.len()];
    if changed[pos] != replacement && changed[pos] != b'=' {
        changed[pos] = replacement;
        let changed = String::from_utf8(changed).expect("base64 is ascii");
        if changed != sig_without && changed != sig_with && as_given.as_ref() != Some(&changed) {
            assert_eq!(verify(url, Some(&changed)), Err(SignatureError::Mismatch));
        }
    }
    let other_token = format!("{token}x");
    let foreign = compute(other_token.as_bytes(), url, params, algorithm);
    assert_eq!(verify(url, Some(&foreign)), Err(SignatureError::Mismatch));
    let other_algorithm = match algorithm {
        Algorithm::HmacSha1 => Algorithm::HmacSha256,
        Algorithm::HmacSha256 => Algorithm::HmacSha1,
    };
    let foreign = compute(token.as_bytes(), url, params, other_algorithm);
    assert_eq!(verify(url, Some(&foreign)), Err(SignatureError::Mismatch));

    check_raw_body(&verifier, token, url, input.body, algorithm);
}

/// A JSON body signed through `bodySHA256` in the URL verifies; a changed body does not.
fn check_raw_body(verifier: &Verifier, token: &str, url: &str, body: &[u8], algorithm: Algorithm) {
    if url.contains('#') || url.contains("bodySHA256") {
        return;
    }
    let hash: String = Sha256::digest(body)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let separator = if url.contains('?') { '&' } else { '?' };
    let signed_url = format!("{url}{separator}bodySHA256={hash}");
    let sig = compute(token.as_bytes(), &signed_url, &[], algorithm);
    let result = verifier.verify_with(
        &signed_url,
        SignedContent::RawBody(body),
        Some(&sig),
        algorithm,
    );
    assert!(
        result.is_ok(),
        "raw body signature over {signed_url:?}: {result:?}"
    );
    let mut changed = body.to_vec();
    match changed.first_mut() {
        Some(b) => *b ^= 1,
        None => changed.push(b'{'),
    }
    assert_eq!(
        verifier.verify_with(
            &signed_url,
            SignedContent::RawBody(&changed),
            Some(&sig),
            algorithm
        ),
        Err(SignatureError::BodyHashMismatch)
    );
    assert_eq!(
        verifier.verify_with(url, SignedContent::RawBody(body), Some(&sig), algorithm),
        Err(SignatureError::UnsignedBody)
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn twilio_documented_example_passes_every_check() {
        let input = Input {
            token: "12345",
            url: "https://mycompany.com/myapp.php?foo=1&bar=2",
            header: "RSOYDt4T1cUTdK1PDd93/VVr8B8=",
            sha256: false,
            flip: (3, 7),
            body: b"CallSid=CA1234567890ABCDE&Caller=%2B14158675309&Digits=1234&From=%2B14158675309&To=%2B18005551212",
        };
        let params = check_decode(input.body);
        assert_eq!(params.len(), 5);
        let verifier = Verifier::new(Secret::new(input.token));
        assert_eq!(
            verifier.verify(input.url, &params, Some(input.header)),
            Ok(UrlVariant::WithoutPort)
        );
        check_signatures(&input, &params);
    }

    #[test]
    fn invalid_utf8_is_rejected_and_checked() {
        assert!(check_decode(b"a=1&b=%FF").is_empty());
    }
}
