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
//!
//! Here: the routing, the errors and the responses. The handlers are in `webhook.rs` (what every
//! webhook shares), `voice.rs` (the voice webhook and the call's ending), `callbacks.rs`,
//! `calls.rs` (`POST /calls`) and `health.rs` (`/healthz`, `/readyz`, `/metrics`, `/version`).

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

mod callbacks;
mod calls;
mod health;
mod voice;
mod webhook;

use callbacks::{call_status, handle_recording, stream_status};
use calls::create_call;
use health::{healthz, metrics, readyz, version};
use voice::{dial_ended, incoming_call, stream_ended};
use webhook::{Webhook, content_type, hop, origin_from_headers, read_body, read_webhook};

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
