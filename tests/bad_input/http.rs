//! The HTTP family (`http::`): hostile or broken requests to the HTTP routes, each answered
//! with its status (or, for headers that never end, a closed connection): bodies over the
//! limit or of the wrong type, signatures missing, forged or over another URL, wrong methods
//! and paths, a replayed webhook, a `CallSid` that is not Twilio's, oversized headers and
//! garbage; with the signed and unsigned requests they are built from.

use std::time::Duration;

use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpStream;

use crate::PATIENCE;
use crate::case::{Case, Expect, Input, Observed, case, http};
use crate::support::{self, TOKEN, TestServer, read_raw, status_of, twilio_sign};

/// The family's rows of the matrix.
pub(crate) static CASES: &[Case] = &[
    case(
        "http::body_over_64_kib_by_content_length",
        Input::BodyOverLimitByLength,
        Expect::Status(413),
    ),
    case(
        "http::body_over_64_kib_chunked",
        Input::BodyOverLimitChunked,
        Expect::Status(413),
    ),
    case(
        "http::form_body_not_utf8",
        Input::FormNotUtf8,
        Expect::Status(400),
    ),
    case(
        "http::text_plain_body",
        Input::WrongContentType,
        Expect::Status(415),
    ),
    case(
        "http::json_body_without_body_sha256",
        Input::JsonWithoutBodyHash,
        Expect::Status(415),
    ),
    case(
        "http::non_numeric_content_length",
        Input::BadContentLength,
        Expect::Status(400),
    ),
    case(
        "http::missing_signature",
        Input::MissingSignature,
        Expect::Status(403),
    ),
    case(
        "http::forged_signature",
        Input::ForgedSignature,
        Expect::Status(403),
    ),
    case(
        "http::signature_over_another_url",
        Input::SignatureForOtherUrl,
        Expect::Status(403),
    ),
    case(
        "http::delete_incoming_call",
        Input::WrongMethodIncomingCall,
        Expect::NotAllowed("GET, POST"),
    ),
    case(
        "http::get_handle_recording",
        Input::WrongMethodRecording,
        Expect::NotAllowed("POST"),
    ),
    case(
        "http::post_media_stream_path",
        Input::WrongMethodMediaStream,
        Expect::NotAllowed("GET"),
    ),
    case(
        "http::unknown_path",
        Input::UnknownPath,
        Expect::Status(404),
    ),
    case(
        "http::replayed_voice_webhook",
        Input::ReplayedVoiceWebhook,
        Expect::Status(409),
    ),
    case(
        "http::call_sid_that_is_not_twilios",
        Input::CallSidNotTwilios,
        Expect::Status(400),
    ),
    case(
        "http::one_mib_header",
        Input::HugeHeader,
        Expect::Status(431),
    ),
    case(
        "http::five_hundred_headers",
        Input::TooManyHeaders,
        Expect::Status(431),
    ),
    case(
        "http::garbage_request_line",
        Input::GarbageRequestLine,
        Expect::Status(400),
    ),
    case(
        "http::headers_dribbled_past_header_read_timeout",
        Input::SlowHeaders,
        Expect::ClosedWithoutAnswer,
    ),
];

/// Sends an HTTP `input` (call `n` where a webhook needs one) and returns what was observed.
pub(crate) async fn run_case(server: &TestServer, input: Input, n: u32) -> Observed {
    let voice = server.url("/webhook/incoming_call");
    match input {
        Input::BodyOverLimitByLength => {
            let mut req = format!(
                "POST /webhook/incoming_call HTTP/1.1\r\nHost: {}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 70000\r\n\r\n",
                server.addr
            )
            .into_bytes();
            req.extend_from_slice(&[b'a'; 1000]);
            http(server, &req).await
        }
        Input::BodyOverLimitChunked => {
            let mut req = format!(
                "POST /webhook/incoming_call HTTP/1.1\r\nHost: {}\r\nContent-Type: application/x-www-form-urlencoded\r\nTransfer-Encoding: chunked\r\n\r\n",
                server.addr
            )
            .into_bytes();
            for _ in 0..70 {
                req.extend_from_slice(b"3e8\r\n");
                req.extend_from_slice(&[b'a'; 1000]);
                req.extend_from_slice(b"\r\n");
            }
            req.extend_from_slice(b"0\r\n\r\n");
            http(server, &req).await
        }
        Input::FormNotUtf8 => {
            let body = b"CallSid=%FF%FE%FD&From=%C3%28";
            let sig = twilio_sign(TOKEN, &voice, &[]);
            let req = raw_post(
                server,
                "/webhook/incoming_call",
                "application/x-www-form-urlencoded",
                body,
                &sig,
            );
            http(server, &req).await
        }
        Input::WrongContentType => {
            let (body, sig) = signed_voice(&voice, TOKEN);
            let req = raw_post(
                server,
                "/webhook/incoming_call",
                "text/plain",
                body.as_bytes(),
                &sig,
            );
            http(server, &req).await
        }
        Input::JsonWithoutBodyHash => {
            let body = br#"{"CallSid":"CA1"}"#;
            let sig = twilio_sign(TOKEN, &voice, &[]);
            let req = raw_post(
                server,
                "/webhook/incoming_call",
                "application/json",
                body,
                &sig,
            );
            http(server, &req).await
        }
        Input::BadContentLength => {
            let req = format!(
                "POST /webhook/incoming_call HTTP/1.1\r\nHost: {}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: abc\r\n\r\nCallSid=CA1",
                server.addr
            );
            http(server, req.as_bytes()).await
        }
        Input::MissingSignature => {
            let (body, _) = signed_voice(&voice, TOKEN);
            let req = format!(
                "POST /webhook/incoming_call HTTP/1.1\r\nHost: {}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                server.addr,
                body.len()
            );
            http(server, req.as_bytes()).await
        }
        Input::ForgedSignature => {
            let (body, sig) = signed_voice(&voice, "not-the-token");
            let req = raw_post(
                server,
                "/webhook/incoming_call",
                "application/x-www-form-urlencoded",
                body.as_bytes(),
                &sig,
            );
            http(server, &req).await
        }
        Input::SignatureForOtherUrl => {
            let other = server.url("/webhook/call_status");
            let (body, sig) = signed_voice(&other, TOKEN);
            let req = raw_post(
                server,
                "/webhook/incoming_call",
                "application/x-www-form-urlencoded",
                body.as_bytes(),
                &sig,
            );
            http(server, &req).await
        }
        Input::WrongMethodIncomingCall => {
            bare(server, "DELETE", "/webhook/incoming_call", "").await
        }
        Input::WrongMethodRecording => bare(server, "GET", "/webhook/handle_recording", "").await,
        Input::WrongMethodMediaStream => {
            bare(server, "POST", "/ws/twilio-media", "Content-Length: 0\r\n").await
        }
        Input::UnknownPath => bare(server, "GET", "/nowhere", "").await,
        Input::ReplayedVoiceWebhook => {
            let req = signed_voice_post(server, &voice, support::voice_params(n));
            let genuine = http(server, &req).await;
            assert_eq!(genuine.status, 200, "the genuine webhook is answered");
            http(server, &req).await
        }
        Input::CallSidNotTwilios => {
            let mut params = support::voice_params(n);
            for (k, v) in &mut params {
                if *k == "CallSid" {
                    v.push_str("\n1999-01-01T00:00:00Z  INFO forged");
                }
            }
            http(server, &signed_voice_post(server, &voice, params)).await
        }
        Input::HugeHeader => {
            let req = format!(
                "GET /healthz HTTP/1.1\r\nHost: {}\r\nX-Big: {}\r\n\r\n",
                server.addr,
                "a".repeat(1 << 20)
            );
            http(server, req.as_bytes()).await
        }
        Input::TooManyHeaders => {
            let mut req = format!("GET /healthz HTTP/1.1\r\nHost: {}\r\n", server.addr);
            for i in 0..500 {
                req.push_str(&format!("X-H{i}: v\r\n"));
            }
            req.push_str("\r\n");
            http(server, req.as_bytes()).await
        }
        Input::GarbageRequestLine => http(server, b"\x16\x03\x01 hello there\r\n\r\n").await,
        Input::SlowHeaders => {
            let mut tcp = TcpStream::connect(server.addr).await.unwrap();
            let req = format!(
                "POST /webhook/incoming_call HTTP/1.1\r\nHost: {}\r\nX-Slow: ",
                server.addr
            );
            let mut seen = Observed::default();
            let deadline = tokio::time::Instant::now() + PATIENCE;
            // Keep dribbling until the server gives up on us (a write fails or it closes).
            for &b in req.as_bytes().iter().chain(std::iter::repeat(&b'x')) {
                if tokio::time::Instant::now() > deadline {
                    return seen;
                }
                if tcp.write_all(&[b]).await.is_err() {
                    break;
                }
                let mut probe = [0u8; 1];
                match tokio::time::timeout(Duration::from_millis(100), tcp.peek(&mut probe)).await {
                    Ok(Ok(0)) | Ok(Err(_)) => break,
                    Ok(Ok(_)) => break,
                    Err(_) => {}
                }
            }
            let raw = read_raw(&mut tcp, PATIENCE).await;
            seen.status = status_of(&raw);
            seen.closed_without_answer = raw.is_empty();
            seen
        }
        other => unreachable!("not an HTTP input: {other:?}"),
    }
}

/// A signed form POST to the voice webhook, as raw bytes, with `body` and `content_type`.
fn raw_post(
    server: &TestServer,
    path: &str,
    content_type: &str,
    body: &[u8],
    sig: &str,
) -> Vec<u8> {
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nX-Twilio-Signature: {sig}\r\nConnection: close\r\n\r\n",
        server.addr,
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(body);
    req
}

/// `params` as a form body, and its signature over `url` with `key`.
fn signed_form(params: &[(&'static str, String)], url: &str, key: &str) -> (String, String) {
    let pairs: Vec<(&str, &str)> = params.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let body = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs.iter().copied())
        .finish();
    let sig = twilio_sign(key, url, &pairs);
    (body, sig)
}

/// The voice webhook's form body (call 99) and its signature over `url` with `key`.
fn signed_voice(url: &str, key: &str) -> (String, String) {
    signed_form(&support::voice_params(99), url, key)
}

/// The voice webhook POST of `params`, signed over `url` with the server's key, as raw bytes.
fn signed_voice_post(
    server: &TestServer,
    url: &str,
    params: Vec<(&'static str, String)>,
) -> Vec<u8> {
    let (body, sig) = signed_form(&params, url, TOKEN);
    raw_post(
        server,
        "/webhook/incoming_call",
        "application/x-www-form-urlencoded",
        body.as_bytes(),
        &sig,
    )
}

/// A body-less request: `method path`, `Host`, the `headers` given (each ending in CRLF) and
/// `Connection: close`.
async fn bare(server: &TestServer, method: &str, path: &str, headers: &str) -> Observed {
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {}\r\n{headers}Connection: close\r\n\r\n",
        server.addr
    );
    http(server, req.as_bytes()).await
}
