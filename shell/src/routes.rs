//! HTTP routing and the Twilio webhook handlers (glue around the pure modules).
//!
//! One `match (method, path)` in [`route`] picks a [`Route`]; everything that can go wrong is an
//! [`HttpError`], mapped to a status in exactly one place ([`HttpError::into_response`]).
//! Every `/webhook/*` request is read with a 64 KiB cap, its public URL is rebuilt (configured
//! `PUBLIC_URL`, else `X-Forwarded-Proto`/`X-Forwarded-Host`/`Host`), and, when an auth token is
//! configured, its `X-Twilio-Signature` is verified before any handler runs. A failed check is a
//! bare 403; the log line names the path and the failure kind, never the signature or token.
//!
//! One `REQ` line and one `RES` line are logged per request, sharing a request id; every
//! response names the instance that answered (`X-Handset-Instance`, the `INSTANCE_ID`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{ALLOW, CONTENT_LENGTH, CONTENT_TYPE, HOST};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming;

use crate::clock;
use crate::config::PublicUrl;
use crate::ending::Ending;
use crate::form;
use crate::media_stream::MEDIA_STREAM_PATH;
use crate::signature::{
    Algorithm, BODY_SHA256_PARAM, SETTINGS_HEADER, SIGNATURE_HEADER, SignedContent,
};
use crate::state::AppState;
use crate::store::{CallRecord, CallStatusEvent, RecordingEvent, StreamStatusEvent};
use crate::tokens::{CallIdentity, TOKEN_PARAMETER};
use crate::twiml;

/// Largest accepted request body.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Longest time to wait for a request body once the headers are in.
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Response header naming the instance (`INSTANCE_ID`) that answered.
pub const INSTANCE_HEADER: &str = "x-handset-instance";

/// Response body type used by every handler.
pub type Body = Full<Bytes>;

/// The endpoints the shell serves.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub enum Route {
    /// `POST /webhook/call_status`.
    CallStatus,
    /// `POST /webhook/handle_recording`.
    HandleRecording,
    /// `GET /healthz`.
    Healthz,
    /// `GET /ws/twilio-media`: the Media Streams WebSocket.
    MediaStream,
    /// `GET|POST /webhook/incoming_call`.
    IncomingCall,
    /// `POST /webhook/stream_ended`.
    StreamEnded,
    /// `POST /webhook/dial_ended`: the `<Dial action>` of a transfer.
    DialEnded,
    /// `POST /webhook/stream_status`.
    StreamStatus,
    /// `GET /version`.
    Version,
    /// `GET /metrics`: Prometheus/OpenMetrics text.
    Metrics,
    /// `GET /readyz`: ready for new calls (the load balancer's readiness check).
    Readyz,
    /// `POST /calls`: start an outbound call (bearer `CONTROL_TOKEN`).
    Calls,
}

impl Route {
    /// Whether the route is a Twilio webhook (signed, body parsed).
    pub fn is_webhook(self) -> bool {
        !matches!(
            self,
            Self::Healthz
                | Self::MediaStream
                | Self::Version
                | Self::Metrics
                | Self::Readyz
                | Self::Calls
        )
    }
}

/// Everything a request can fail with; [`HttpError::into_response`] maps it to a status.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// Malformed request (form decoding, missing field, bad Host).
    #[error("bad request: {0}")]
    BadRequest(String),
    /// Signature missing or wrong (the reason is logged, never returned).
    #[error("forbidden")]
    Forbidden,
    /// `/metrics` or `/calls` without the configured bearer token.
    #[error("unauthorized")]
    Unauthorized,
    /// Twilio's REST API refused or failed a request made for this one.
    #[error("twilio api: {0}")]
    Upstream(String),
    /// The store could not take or give the data the answer depends on (nothing was
    /// half-written: Twilio may retry).
    #[error("store unavailable: {0}")]
    Store(#[from] crate::store::StoreError),
    /// Server-side failure (e.g. the store could not sync).
    #[error("internal error: {0}")]
    Internal(String),
    /// Known path, wrong method; carries the `Allow` header value.
    #[error("method not allowed")]
    MethodNotAllowed(&'static str),
    /// Unknown path.
    #[error("not found")]
    NotFound,
    /// Body over [`MAX_BODY_BYTES`].
    #[error("request body over {MAX_BODY_BYTES} bytes")]
    PayloadTooLarge,
    /// Body not received within [`BODY_READ_TIMEOUT`].
    #[error("request body not received in time")]
    Timeout,
    /// The request conflicts with what is stored (a replayed voice webhook).
    #[error("conflict: {0}")]
    Conflict(&'static str),
    /// A POST body that is neither a form nor a signed JSON document.
    #[error("unsupported content type: expected application/x-www-form-urlencoded")]
    UnsupportedMediaType,
}

impl HttpError {
    /// The one place errors become HTTP responses.
    pub fn into_response(self) -> Response<Body> {
        let status = match &self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Forbidden => StatusCode::FORBIDDEN,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::Upstream(_) => StatusCode::BAD_GATEWAY,
            Self::Internal(_) | Self::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Self::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Timeout => StatusCode::REQUEST_TIMEOUT,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        };
        // Internal details stay in the logs.
        let text = match &self {
            Self::Internal(_) | Self::Store(_) => "internal error".to_owned(),
            other => other.to_string(),
        };
        let mut resp = text_response(status, "text/plain; charset=utf-8", format!("{text}\n"));
        if let Self::MethodNotAllowed(allow) = self {
            resp.headers_mut()
                .insert(ALLOW, HeaderValue::from_static(allow));
        }
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                http::header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer"),
            );
        }
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            // The unread body may still be in flight: do not reuse the connection.
            resp.headers_mut()
                .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
        }
        resp
    }
}

/// Maps a request line to a route, or to 404/405.
pub fn route(method: &Method, path: &str) -> Result<Route, HttpError> {
    match (method, path) {
        (&Method::GET | &Method::POST, "/webhook/incoming_call") => Ok(Route::IncomingCall),
        (_, "/webhook/incoming_call") => Err(HttpError::MethodNotAllowed("GET, POST")),
        (&Method::POST, "/webhook/stream_ended") => Ok(Route::StreamEnded),
        (&Method::POST, "/webhook/dial_ended") => Ok(Route::DialEnded),
        (&Method::POST, "/webhook/handle_recording") => Ok(Route::HandleRecording),
        (&Method::POST, "/webhook/call_status") => Ok(Route::CallStatus),
        (&Method::POST, "/webhook/stream_status") => Ok(Route::StreamStatus),
        (
            _,
            "/webhook/stream_ended"
            | "/webhook/dial_ended"
            | "/webhook/handle_recording"
            | "/webhook/call_status"
            | "/webhook/stream_status",
        ) => Err(HttpError::MethodNotAllowed("POST")),
        (&Method::GET, MEDIA_STREAM_PATH) => Ok(Route::MediaStream),
        (_, MEDIA_STREAM_PATH) => Err(HttpError::MethodNotAllowed("GET")),
        (&Method::GET | &Method::HEAD, "/healthz") => Ok(Route::Healthz),
        (&Method::GET | &Method::HEAD, "/version") => Ok(Route::Version),
        (&Method::GET | &Method::HEAD, "/metrics") => Ok(Route::Metrics),
        (&Method::GET | &Method::HEAD, "/readyz") => Ok(Route::Readyz),
        (&Method::POST, "/calls") => Ok(Route::Calls),
        (_, "/calls") => Err(HttpError::MethodNotAllowed("POST")),
        (_, "/healthz" | "/version" | "/metrics" | "/readyz") => {
            Err(HttpError::MethodNotAllowed("GET, HEAD"))
        }
        _ => Err(HttpError::NotFound),
    }
}

/// Handles one request: logs `REQ`/`RES`, routes, verifies, dispatches, maps errors.
pub async fn handle(
    state: &Arc<AppState>,
    req: Request<Incoming>,
    peer: SocketAddr,
) -> Response<Body> {
    let id = state
        .request_ids
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let started = clock::now();
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    tracing::info!(id, %method, %path, %peer, "REQ");
    let mut response = match dispatch(state, req, id).await {
        Ok(resp) => resp,
        Err(err) => {
            match &err {
                HttpError::Internal(detail) => {
                    tracing::error!(id, %path, error = %detail, "request failed");
                }
                HttpError::Store(e) => {
                    tracing::error!(id, %path, error = %e, "request failed: store");
                }
                _ => {}
            }
            err.into_response()
        }
    };
    // Which instance answered: for operators behind a load balancer (and the fleet test).
    if let Ok(instance) = HeaderValue::from_str(&state.config.instance_id) {
        response.headers_mut().insert(INSTANCE_HEADER, instance);
    }
    state.metrics.http_request(
        crate::metrics::RouteLabel::of_path(&path),
        response.status().as_u16(),
    );
    let elapsed = started.elapsed();
    tracing::info!(
        id,
        %method,
        %path,
        status = response.status().as_u16(),
        duration_us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
        "RES"
    );
    response
}

async fn dispatch(
    state: &Arc<AppState>,
    req: Request<Incoming>,
    id: u64,
) -> Result<Response<Body>, HttpError> {
    let route = route(req.method(), req.uri().path())?;
    if route == Route::Calls {
        return create_call(state, req, id).await;
    }
    if !route.is_webhook() {
        return Ok(match route {
            Route::Healthz => healthz(state).await,
            Route::Readyz => readyz(state).await,
            Route::Metrics => metrics(state, req.headers())?,
            Route::MediaStream => {
                // Twilio signs the wss:// URL exactly as written in the TwiML.
                let origin = match &state.config.public_url {
                    Some(url) => url.clone(),
                    None => origin_from_headers(req.headers())?,
                };
                let ws_url = origin.ws_url(MEDIA_STREAM_PATH);
                crate::bridge::upgrade(Arc::clone(state), req, &ws_url, id)
            }
            _ => version(state),
        });
    }
    let hook = read_webhook(state, req, id).await?;
    match route {
        Route::IncomingCall => incoming_call(state, &hook, id).await,
        Route::StreamEnded => Ok(stream_ended(state, &hook, id).await),
        Route::DialEnded => dial_ended(state, &hook, id).await,
        Route::HandleRecording => handle_recording(state, &hook, id).await,
        Route::CallStatus => call_status(state, &hook, id).await,
        Route::StreamStatus => stream_status(state, &hook, id).await,
        Route::Healthz
        | Route::MediaStream
        | Route::Version
        | Route::Metrics
        | Route::Readyz
        | Route::Calls => Err(HttpError::NotFound),
    }
}

/// A verified webhook request.
struct Webhook {
    /// Public origin of this request (configured or rebuilt).
    origin: PublicUrl,
    /// Body parameters followed by query parameters.
    fields: Vec<(String, String)>,
    /// The query parameters alone (the URL Handset wrote, e.g. an outbound call's `p.*`).
    query: Vec<(String, String)>,
}

impl Webhook {
    fn field(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn field_or_empty(&self, name: &str) -> String {
        self.field(name).unwrap_or_default().to_owned()
    }
}

/// Reads a request body: at most [`MAX_BODY_BYTES`], within [`BODY_READ_TIMEOUT`].
async fn read_body(headers: &HeaderMap, body: Incoming) -> Result<Bytes, HttpError> {
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

async fn read_webhook(
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
fn content_type(headers: &HeaderMap) -> String {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase()
}

/// Twilio identifiers a webhook may carry, with the prefix each has.
const SID_FIELDS: [(&str, &str); 6] = [
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
fn check_sids(fields: &[(String, String)]) -> Result<(), HttpError> {
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
fn origin_from_headers(headers: &HeaderMap) -> Result<PublicUrl, HttpError> {
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
fn json_fields(body: &[u8]) -> Result<Vec<(String, String)>, HttpError> {
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
fn hop(hook: &Webhook) -> u32 {
    hook.field("hop")
        .and_then(|h| h.parse::<u32>().ok())
        .unwrap_or(0)
        .min(crate::ending::MAX_HOPS)
}

async fn incoming_call(
    state: &AppState,
    hook: &Webhook,
    id: u64,
) -> Result<Response<Body>, HttpError> {
    let call_sid = hook
        .field("CallSid")
        .filter(|s| !s.is_empty())
        .ok_or_else(|| HttpError::BadRequest("missing CallSid".to_owned()))?;
    let identity = CallIdentity {
        call_sid: call_sid.to_owned(),
        account_sid: hook.field_or_empty("AccountSid"),
        from: hook.field_or_empty("From"),
        to: hook.field_or_empty("To"),
    };
    if state.at_capacity() {
        let max = state.config.max_calls;
        tracing::warn!(id, call_sid = %identity.call_sid, active = state.active_calls.count(), max, "CALL_REJECTED: at MAX_CALLS");
        return Ok(xml_response(twiml::say_and_hangup(&twiml::Say {
            text: &state.config.busy_prompt,
            voice: state.config.greeting.voice.as_deref(),
            language: Some(&state.config.greeting.language),
        })));
    }
    let hop = hop(hook);
    // In the shared store: the stream may open on any instance. A call gets one token per hop:
    // the same webhook again is a replay (Twilio requests it once), so it gets none.
    let Some(token) = state.tokens.issue(&identity, hop).await? else {
        tracing::warn!(id, call_sid = %identity.call_sid, hop, "voice webhook refused: this call already has a stream token from this hop (a replayed webhook)");
        return Err(HttpError::Conflict(
            "a stream token was already issued for this call",
        ));
    };
    let config = &state.config;
    // A call moved here from a draining instance has been greeted already.
    let greeting = (!config.greeting.text.is_empty() && hop == 0).then(|| twiml::Say {
        text: &config.greeting.text,
        voice: config.greeting.voice.as_deref(),
        language: Some(&config.greeting.language),
    });
    let action = if hop == 0 {
        hook.origin.http_url("/webhook/stream_ended")
    } else {
        hook.origin
            .http_url(&format!("/webhook/stream_ended?hop={hop}"))
    };
    let status_callback = hook.origin.http_url("/webhook/stream_status");
    let stream_url = hook.origin.ws_url(MEDIA_STREAM_PATH);
    let mut parameters = vec![
        ("callSid", identity.call_sid.as_str()),
        ("accountSid", identity.account_sid.as_str()),
        ("from", identity.from.as_str()),
        ("to", identity.to.as_str()),
        (TOKEN_PARAMETER, token.as_str()),
    ];
    // Per-call opt-in to a timeline: `?trace=1` on the voice webhook URL.
    if hook.field("trace") == Some("1") {
        parameters.push(("trace", "1"));
    }
    // Which way the call goes (`inbound`, `outbound-api`, …), for the agent's `start`.
    if let Some(direction) = hook.field("Direction").filter(|d| !d.is_empty()) {
        parameters.push(("direction", direction));
    }
    // A call moved here from a draining instance: its agent's `start` says `resumed`, and a
    // second drain moves it one hop further.
    let hop_text = hop.to_string();
    if hop > 0 {
        parameters.push(("hop", hop_text.as_str()));
    }
    // An outbound call's extra parameters, written by `POST /calls` into this URL.
    for (key, value) in &hook.query {
        if let Some(name) = key.strip_prefix(crate::twilio::PARAM_PREFIX)
            && crate::twilio::is_param_name(name)
            && parameters.len() < 8 + crate::twilio::MAX_PARAMS
        {
            parameters.push((name, value.as_str()));
        }
    }
    let xml = twiml::connect_stream(&twiml::ConnectStream {
        greeting,
        action: &action,
        stream_url: &stream_url,
        status_callback: &status_callback,
        parameters: &parameters,
    });
    tracing::info!(id, call_sid = %identity.call_sid, status = hook.field("CallStatus").unwrap_or(""), hop, "incoming call");
    Ok(xml_response(xml))
}

/// `POST /calls`: starts an outbound call through Twilio's REST API whose TwiML is this
/// server's voice webhook, so it runs the same agent path as an inbound call. 404 while
/// `CONTROL_TOKEN` is unset (the route is off), 401 without `Authorization: Bearer
/// <CONTROL_TOKEN>`, 400 for a bad request, 502 when Twilio refuses; 201 with the CallSid.
///
/// The body is JSON (`{"to": "+1…", "from": "+1…", "params": {"k": "v"}}`) or a form (`to`,
/// `from`, and `param=k=v` for each parameter).
async fn create_call(
    state: &AppState,
    req: Request<Incoming>,
    id: u64,
) -> Result<Response<Body>, HttpError> {
    let Some(token) = &state.config.control_token else {
        return Err(HttpError::NotFound);
    };
    let authorization = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .map(HeaderValue::as_bytes);
    if !crate::metrics::authorized(Some(token), authorization) {
        tracing::warn!(id, "outbound call refused: missing or wrong bearer token");
        return Err(HttpError::Unauthorized);
    }
    let (parts, body) = req.into_parts();
    let body = read_body(&parts.headers, body).await?;
    let content_type = content_type(&parts.headers);
    let request = if content_type.starts_with("application/json") {
        serde_json::from_slice::<crate::twilio::Outbound>(&body)
            .map_err(|e| HttpError::BadRequest(format!("json body: {e}")))?
    } else if content_type.starts_with("application/x-www-form-urlencoded") {
        outbound_from_form(&body)?
    } else {
        return Err(HttpError::UnsupportedMediaType);
    };
    let (Some(public_url), Some(client)) = (&state.config.public_url, &state.twilio) else {
        // Configuration refuses CONTROL_TOKEN without both.
        return Err(HttpError::Internal(
            "POST /calls needs PUBLIC_URL and the twilio rest api".to_owned(),
        ));
    };
    let call = request
        .to_new_call(public_url, state.config.twilio.from.as_deref())
        .map_err(|e| HttpError::BadRequest(e.to_string()))?;
    let call_sid = client.create_call(&call).await.map_err(|e| {
        tracing::warn!(id, to = %call.to, error = %e, "outbound call not created");
        HttpError::Upstream(e.to_string())
    })?;
    tracing::info!(id, call_sid = %call_sid, to = %call.to, from = %call.from, params = request.params.len(), "OUTBOUND_CALL created");
    let mut resp = json_response(&serde_json::json!({ "callSid": call_sid }));
    *resp.status_mut() = StatusCode::CREATED;
    Ok(resp)
}

/// An outbound call request from a form: `to`, `from`, `param=k=v` (repeated).
fn outbound_from_form(body: &[u8]) -> Result<crate::twilio::Outbound, HttpError> {
    let fields =
        form::decode(body).map_err(|e| HttpError::BadRequest(format!("form body: {e}")))?;
    let mut request = crate::twilio::Outbound::default();
    for (key, value) in fields {
        match key.as_str() {
            "to" => request.to = value,
            "from" => request.from = Some(value),
            "param" => {
                let (k, v) = value.split_once('=').ok_or_else(|| {
                    HttpError::BadRequest(format!("param {value:?} is not name=value"))
                })?;
                request.params.insert(k.to_owned(), v.to_owned());
            }
            other => {
                return Err(HttpError::BadRequest(format!("unknown field {other:?}")));
            }
        }
    }
    Ok(request)
}

/// `<Connect action>`: the stream has ended. How the call goes on is decided from why it
/// ended, as stored by whichever instance ran the stream ([`crate::ending`]).
async fn stream_ended(state: &AppState, hook: &Webhook, id: u64) -> Response<Body> {
    let call_sid = hook.field("CallSid").unwrap_or("");
    let hop = hop(hook);
    let record = match state.store.call(call_sid).await {
        Ok(record) => record,
        Err(e) => {
            tracing::error!(id, call_sid, error = %e, "stream ended: store unavailable, taking the fallback");
            None
        }
    };
    let reason = record
        .as_ref()
        .and_then(|r| r.end_reason.as_deref())
        .unwrap_or("unknown");
    match crate::ending::decide(
        record.as_ref().map(CallRecord::stream_end),
        hook.field("CallStatus"),
        hop,
    ) {
        Ending::Hangup => {
            tracing::info!(id, call_sid, reason, "stream ended: hanging up");
            xml_response(twiml::hangup())
        }
        Ending::Dial(transfer) => {
            tracing::info!(id, call_sid, target = %crate::ending::masked(transfer.to.as_str()), "stream ended: transferring");
            let action = hook.origin.http_url("/webhook/dial_ended");
            xml_response(twiml::dial(&twiml::Dial {
                target: &transfer.to,
                caller_id: transfer.caller_id.as_deref(),
                timeout_s: transfer.timeout_s,
                action: &action,
            }))
        }
        Ending::Redirect { next } => {
            tracing::info!(
                id,
                call_sid,
                reason,
                hop = next,
                "stream ended: instance draining, call redirected"
            );
            let url = hook
                .origin
                .http_url(&format!("/webhook/incoming_call?hop={next}"));
            xml_response(twiml::redirect(&url))
        }
        Ending::Fallback(why) => {
            tracing::info!(
                id,
                call_sid,
                reason,
                why,
                hop,
                "stream ended: recording a message"
            );
            fallback(state, hook)
        }
    }
}

/// `<Dial action>`: a transfer has ended. Its outcome is stored; a transfer that was not
/// answered takes the fallback, one that was ends the call.
async fn dial_ended(
    state: &AppState,
    hook: &Webhook,
    id: u64,
) -> Result<Response<Body>, HttpError> {
    let call_sid = hook.field("CallSid").unwrap_or("");
    let status = hook.field("DialCallStatus").unwrap_or("");
    if !status.bytes().all(|b| b.is_ascii_lowercase() || b == b'-') || status.len() > 32 {
        return Err(HttpError::BadRequest("invalid DialCallStatus".to_owned()));
    }
    state.store.transfer_ended(call_sid, status).await?;
    if matches!(status, "completed" | "answered") {
        tracing::info!(id, call_sid, status, "transfer ended");
        return Ok(xml_response(twiml::hangup()));
    }
    tracing::warn!(id, call_sid, status, "transfer failed: recording a message");
    Ok(fallback(state, hook))
}

/// The apology, then `<Record>`.
fn fallback(state: &AppState, hook: &Webhook) -> Response<Body> {
    let config = &state.config;
    let action = hook.origin.http_url("/webhook/handle_recording");
    xml_response(twiml::record_fallback(&twiml::RecordFallback {
        prompt: twiml::Say {
            text: &config.fallback_prompt,
            voice: config.greeting.voice.as_deref(),
            language: Some(&config.greeting.language),
        },
        action: &action,
        max_length_secs: config.record_max_length.as_secs(),
    }))
}

async fn handle_recording(
    state: &AppState,
    hook: &Webhook,
    id: u64,
) -> Result<Response<Body>, HttpError> {
    let Some(url) = hook.field("RecordingUrl").filter(|u| !u.is_empty()) else {
        tracing::warn!(
            id,
            call_sid = hook.field("CallSid").unwrap_or(""),
            "recording callback without RecordingUrl"
        );
        return Ok(xml_response(twiml::hangup()));
    };
    let event = RecordingEvent {
        received_unix_ms: clock::unix_ms(),
        call_sid: hook.field_or_empty("CallSid"),
        account_sid: hook.field_or_empty("AccountSid"),
        recording_sid: hook.field_or_empty("RecordingSid"),
        recording_url: url.to_owned(),
        duration_secs: hook
            .field("RecordingDuration")
            .and_then(|d| d.trim().parse().ok()),
        digits: hook
            .field("Digits")
            .filter(|d| !d.is_empty())
            .map(str::to_owned),
    };
    // A RecordingSid that is present was checked with the other identifiers (`check_sids`).
    if event.recording_sid.is_empty() {
        return Err(HttpError::BadRequest("missing RecordingSid".to_owned()));
    }
    let new = state
        .store
        .insert_recording(&event, clock::unix_ms())
        .await?;
    tracing::info!(id, call_sid = %event.call_sid, recording_sid = %event.recording_sid, duration_secs = ?event.duration_secs, new, "recording stored");
    state.recording_stored.notify_one();
    Ok(xml_response(twiml::hangup()))
}

async fn call_status(
    state: &AppState,
    hook: &Webhook,
    id: u64,
) -> Result<Response<Body>, HttpError> {
    let event = CallStatusEvent {
        received_unix_ms: clock::unix_ms(),
        call_sid: hook.field_or_empty("CallSid"),
        call_status: hook.field_or_empty("CallStatus"),
        sequence_number: hook
            .field("SequenceNumber")
            .and_then(|s| s.trim().parse().ok()),
        duration_secs: hook
            .field("CallDuration")
            .and_then(|s| s.trim().parse().ok()),
    };
    let new = state.store.insert_call_status(&event).await?;
    tracing::info!(id, call_sid = %event.call_sid, call_status = %event.call_status, sequence = ?event.sequence_number, new, "call status");
    Ok(text_response(
        StatusCode::OK,
        "text/plain; charset=utf-8",
        String::new(),
    ))
}

async fn stream_status(
    state: &AppState,
    hook: &Webhook,
    id: u64,
) -> Result<Response<Body>, HttpError> {
    let event = StreamStatusEvent {
        received_unix_ms: clock::unix_ms(),
        stream_sid: hook.field_or_empty("StreamSid"),
        stream_event: hook.field_or_empty("StreamEvent"),
        call_sid: hook.field_or_empty("CallSid"),
        stream_error: hook.field("StreamError").map(str::to_owned),
    };
    let new = state.store.insert_stream_status(&event).await?;
    let (call_sid, stream_sid, event_name) =
        (&event.call_sid, &event.stream_sid, &event.stream_event);
    match &event.stream_error {
        Some(error) => {
            tracing::warn!(id, %call_sid, %stream_sid, event = %event_name, %error, new, "stream status")
        }
        None => {
            tracing::info!(id, %call_sid, %stream_sid, event = %event_name, new, "stream status")
        }
    }
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = StatusCode::NO_CONTENT;
    Ok(resp)
}

/// `GET /healthz`: alive (liveness). Always 200 while the process serves; the body says
/// whether the store takes writes (`store_error` says why not) and whether the instance is
/// draining.
async fn healthz(state: &AppState) -> Response<Body> {
    let checks = state.verifier.is_some();
    let store = state.store.check(STORE_CHECK_TIMEOUT).await;
    let mut body = serde_json::json!({
        "status": if store.is_ok() { "ok" } else { "degraded" },
        "store": if store.is_ok() { "ok" } else { "degraded" },
        "database": match state.store.dialect() {
            crate::store::Dialect::Postgres => "postgres",
            crate::store::Dialect::Sqlite => "sqlite",
        },
        "instance": state.config.instance_id,
        "draining": *state.draining.borrow(),
        "active_calls": state.active_calls.count(),
        "engine_calls": state.engine.counters().active_calls.load(std::sync::atomic::Ordering::Relaxed),
        "engine_workers": state.engine.workers(),
        "signature_checks": checks,
    });
    if let Err(trouble) = store {
        body["store_error"] = trouble.label().into();
    }
    if !checks {
        body["warning"] = "signature checks are off: TWILIO_AUTH_TOKEN is not set".into();
    }
    json_response(&body)
}

/// `GET /readyz`: 200 when this instance takes new calls (not draining, the store takes
/// writes, below `MAX_CALLS`), else 503 with the reason. Load balancers route new calls by it.
async fn readyz(state: &AppState) -> Response<Body> {
    let store = state.store.check(STORE_CHECK_TIMEOUT).await;
    match state.ready() {
        Ok(()) => json_response(&serde_json::json!({ "status": "ready" })),
        Err(reason) => {
            let mut body = serde_json::json!({
                "status": "not ready",
                "reason": reason,
            });
            if let Err(trouble) = store {
                body["store_error"] = trouble.label().into();
            }
            let mut resp = json_response(&body);
            *resp.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            resp
        }
    }
}

/// Longest a health or readiness check waits for the store to answer a ping. (Whether it
/// takes writes is the latest write's outcome: the webhooks' and the periodic probe's,
/// [`crate::store::keep_probing`].)
const STORE_CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// `GET /metrics`: the counters in the OpenMetrics text format, behind `METRICS_TOKEN` when set.
fn metrics(state: &AppState, headers: &HeaderMap) -> Result<Response<Body>, HttpError> {
    let authorization = headers
        .get(http::header::AUTHORIZATION)
        .map(HeaderValue::as_bytes);
    if !crate::metrics::authorized(state.config.metrics_token.as_ref(), authorization) {
        tracing::warn!("metrics scrape refused: missing or wrong bearer token");
        return Err(HttpError::Unauthorized);
    }
    Ok(text_response(
        StatusCode::OK,
        crate::metrics::CONTENT_TYPE,
        crate::metrics::encode(&state.metrics_registry),
    ))
}

fn version(state: &AppState) -> Response<Body> {
    let commit = option_env!("HANDSET_BUILD_COMMIT")
        .map(str::to_owned)
        .or_else(|| state.config.build_commit.clone());
    json_response(&serde_json::json!({
        "package": env!("CARGO_PKG_NAME"),
        "version": env!("CARGO_PKG_VERSION"),
        "deploy_id": state.config.deploy_id,
        "commit": commit,
    }))
}

fn xml_response(xml: String) -> Response<Body> {
    text_response(StatusCode::OK, "text/xml; charset=utf-8", xml)
}

fn json_response(value: &serde_json::Value) -> Response<Body> {
    text_response(StatusCode::OK, "application/json", value.to_string())
}

fn text_response(status: StatusCode, content_type: &'static str, body: String) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_known_paths_and_methods() {
        assert_eq!(
            route(&Method::GET, "/webhook/incoming_call").unwrap(),
            Route::IncomingCall
        );
        assert_eq!(
            route(&Method::POST, "/webhook/incoming_call").unwrap(),
            Route::IncomingCall
        );
        assert_eq!(
            route(&Method::POST, "/webhook/stream_status").unwrap(),
            Route::StreamStatus
        );
        assert_eq!(route(&Method::GET, "/healthz").unwrap(), Route::Healthz);
    }

    #[test]
    fn wrong_method_is_405_with_allow_and_unknown_path_404() {
        let resp = route(&Method::GET, "/webhook/stream_ended")
            .unwrap_err()
            .into_response();
        assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(resp.headers()[ALLOW], "POST");
        let resp = route(&Method::DELETE, "/webhook/incoming_call")
            .unwrap_err()
            .into_response();
        assert_eq!(resp.headers()[ALLOW], "GET, POST");
        assert_eq!(
            route(&Method::GET, "/webhook/incoming_call/")
                .unwrap_err()
                .into_response()
                .status(),
            StatusCode::NOT_FOUND
        );
    }

    #[test]
    fn forwarded_headers_take_first_value_and_fall_back_to_host() {
        let mut h = HeaderMap::new();
        h.insert(HOST, HeaderValue::from_static("internal:8080"));
        assert_eq!(
            origin_from_headers(&h).unwrap().to_string(),
            "http://internal:8080"
        );
        h.insert("x-forwarded-proto", HeaderValue::from_static("https, http"));
        h.insert(
            "x-forwarded-host",
            HeaderValue::from_static("voice.example.com, proxy.local"),
        );
        assert_eq!(
            origin_from_headers(&h).unwrap().to_string(),
            "https://voice.example.com"
        );
        h.insert("x-forwarded-host", HeaderValue::from_static("evil/x"));
        assert!(origin_from_headers(&h).is_err());
        assert!(origin_from_headers(&HeaderMap::new()).is_err());
    }

    #[test]
    fn internal_errors_do_not_leak_details() {
        let resp = HttpError::Internal("disk /secret full".to_owned()).into_response();
        assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let body = resp.into_body();
        let bytes = futures_bytes(body);
        assert!(!String::from_utf8_lossy(&bytes).contains("secret"));
    }

    fn futures_bytes(body: Body) -> Bytes {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(async { body.collect().await.unwrap().to_bytes() })
    }
}
