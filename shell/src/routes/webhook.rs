//! What every webhook shares: the body read under its limits, the signature checked against
//! the public URL, the form or JSON fields decoded strictly, the Twilio identifiers checked.

use super::*;

/// A verified webhook request.
pub(super) struct Webhook {
    /// Public origin of this request (configured or rebuilt).
    pub(super) origin: PublicUrl,
    /// Body parameters followed by query parameters.
    pub(super) fields: Vec<(String, String)>,
    /// The query parameters alone (the URL Handset wrote, e.g. an outbound call's `p.*`).
    pub(super) query: Vec<(String, String)>,
}
impl Webhook {
    pub(super) fn field(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub(super) fn field_or_empty(&self, name: &str) -> String {
        self.field(name).unwrap_or_default().to_owned()
    }
}
/// Reads a request body: at most [`MAX_BODY_BYTES`], within [`BODY_READ_TIMEOUT`].
pub(super) async fn read_body(headers: &HeaderMap, body: Incoming) -> Result<Bytes, HttpError> {
    if let Some(len) = headers.get(CONTENT_LENGTH) {
        let len = len
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .ok_or_else(|| HttpError::BadRequest("invalid Content-Length".to_owned()))?;
        if len > MAX_BODY_BYTES as u64 {
            return Err(HttpError::PayloadTooLarge);
        }
    }
    match tokio::time::timeout(
        BODY_READ_TIMEOUT,
        Limited::new(body, MAX_BODY_BYTES).collect(),
    )
    .await
    {
        Err(_) => Err(HttpError::Timeout),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(HttpError::PayloadTooLarge),
        Ok(Err(e)) => Err(HttpError::BadRequest(format!("cannot read body: {e}"))),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
    }
}
pub(super) async fn read_webhook(
    state: &AppState,
    req: Request<Incoming>,
    id: u64,
) -> Result<Webhook, HttpError> {
    let (parts, body) = req.into_parts();
    let body = read_body(&parts.headers, body).await?;

    let origin = match &state.config.public_url {
        Some(url) => url.clone(),
        None => origin_from_headers(&parts.headers)?,
    };
    let path_and_query = parts
        .uri
        .path_and_query()
        .map_or_else(|| parts.uri.path().to_owned(), |pq| pq.as_str().to_owned());
    let url = origin.http_url(&path_and_query);

    let query_fields = match parts.uri.query() {
        Some(q) => form::decode(q.as_bytes())
            .map_err(|e| HttpError::BadRequest(format!("query string: {e}")))?,
        None => Vec::new(),
    };
    let content_type = content_type(&parts.headers);
    let is_form = content_type.starts_with("application/x-www-form-urlencoded");
    let signed_body = query_fields.iter().any(|(k, _)| k == BODY_SHA256_PARAM);

    let body_fields = if is_form {
        form::decode(&body).map_err(|e| HttpError::BadRequest(format!("form body: {e}")))?
    } else if body.is_empty() {
        Vec::new()
    } else if content_type.starts_with("application/json") && signed_body {
        json_fields(&body)?
    } else {
        return Err(HttpError::UnsupportedMediaType);
    };

    if let Some(verifier) = &state.verifier {
        let header = parts
            .headers
            .get(SIGNATURE_HEADER)
            .and_then(|v| v.to_str().ok());
        let algorithm = Algorithm::from_settings_header(
            parts
                .headers
                .get(SETTINGS_HEADER)
                .and_then(|v| v.to_str().ok()),
        );
        let content = if is_form || !signed_body {
            SignedContent::Params(&body_fields)
        } else {
            SignedContent::RawBody(&body)
        };
        match verifier.verify_with(&url, content, header, algorithm) {
            Ok(variant) => tracing::debug!(id, ?variant, "signature verified"),
            Err(kind) => {
                state
                    .metrics
                    .signature_failure(crate::metrics::SignatureTransport::Http);
                tracing::warn!(
                    id,
                    url = %origin.http_url(parts.uri.path()),
                    reason = %kind,
                    "signature check failed"
                );
                return Err(HttpError::Forbidden);
            }
        }
    }

    let mut fields = body_fields;
    fields.extend(query_fields.iter().cloned());
    check_sids(&fields)?;
    Ok(Webhook {
        origin,
        fields,
        query: query_fields,
    })
}
/// The request's `Content-Type`, lowercased (empty when absent or not text).
pub(super) fn content_type(headers: &HeaderMap) -> String {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase()
}
/// Twilio identifiers a webhook may carry, with the prefix each has.
pub(super) const SID_FIELDS: [(&str, &str); 6] = [
    ("CallSid", "CA"),
    ("ParentCallSid", "CA"),
    ("DialCallSid", "CA"),
    ("AccountSid", "AC"),
    ("StreamSid", "MZ"),
    ("RecordingSid", "RE"),
];
/// Refuses a webhook whose Twilio identifiers are not a prefix and 32 hex digits (400): such a
/// value never comes from Twilio, and checked here it is safe everywhere it is stored or logged.
/// The value itself is not echoed.
pub(super) fn check_sids(fields: &[(String, String)]) -> Result<(), HttpError> {
    for (name, value) in fields {
        if let Some((name, prefix)) = SID_FIELDS.iter().find(|(n, _)| n == name)
            && !crate::ids::is_sid(value, prefix)
        {
            return Err(HttpError::BadRequest(format!(
                "invalid {name}: expected {prefix} and 32 hex digits"
            )));
        }
    }
    Ok(())
}
/// Rebuilds the public origin from `X-Forwarded-Proto`/`X-Forwarded-Host` (first values) or `Host`.
pub(super) fn origin_from_headers(headers: &HeaderMap) -> Result<PublicUrl, HttpError> {
    let first = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').next())
            .map(str::trim)
            .filter(|v| !v.is_empty())
    };
    let scheme = match first("x-forwarded-proto")
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        Some("https" | "wss") => "https",
        _ => "http",
    };
    let host = first("x-forwarded-host")
        .or_else(|| first(HOST.as_str()))
        .ok_or_else(|| {
            HttpError::BadRequest("no Host header to build the public URL from".to_owned())
        })?;
    let valid = host.is_ascii() && !host.contains(['/', '?', '#', '@', ' ', '\\']);
    if !valid {
        return Err(HttpError::BadRequest("invalid Host header".to_owned()));
    }
    Ok(PublicUrl::from_parts(scheme, host))
}
/// Flattens a JSON object's string/number/bool members into fields.
pub(super) fn json_fields(body: &[u8]) -> Result<Vec<(String, String)>, HttpError> {
    let value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| HttpError::BadRequest(format!("json body: {e}")))?;
    let serde_json::Value::Object(map) = value else {
        return Err(HttpError::BadRequest(
            "json body must be an object".to_owned(),
        ));
    };
    Ok(map
        .into_iter()
        .filter_map(|(k, v)| match v {
            serde_json::Value::String(s) => Some((k, s)),
            serde_json::Value::Number(n) => Some((k, n.to_string())),
            serde_json::Value::Bool(b) => Some((k, b.to_string())),
            _ => None,
        })
        .collect())
}
/// `hop` on the webhook URLs: how many times this call was redirected after a drain.
pub(super) fn hop(hook: &Webhook) -> u32 {
    hook.field("hop")
        .and_then(|h| h.parse::<u32>().ok())
        .unwrap_or(0)
        .min(crate::ending::MAX_HOPS)
}
