//! HTTP to a [`TestServer`]: requests with hyper's client, the signed voice webhook, raw bytes
//! over TCP for what a client library would not send, and reading TwiML answers.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use handset_sim::StreamTarget;

use super::{TOKEN, TestServer, twilio_sign, voice_params};

/// A response read in full.
#[derive(Debug)]
pub struct Reply {
    /// Status code.
    pub status: u16,
    /// Response headers.
    pub headers: http::HeaderMap,
    /// Body as text.
    pub body: String,
}

/// POSTs a form to `path` with `headers`, over a fresh connection with hyper's client.
pub async fn post_form(
    server: &TestServer,
    path: &str,
    params: &[(&str, &str)],
    headers: &[(&str, &str)],
) -> Reply {
    let body = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(params.iter().copied())
        .finish();
    let mut req = http::Request::post(server.url(path))
        .header("content-type", "application/x-www-form-urlencoded");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    send(req.body(Full::new(Bytes::from(body))).unwrap()).await
}

/// Sends one request with hyper's client over TCP and reads the whole answer.
pub async fn send(req: http::Request<Full<Bytes>>) -> Reply {
    try_send(req).await.expect("request completes")
}

/// [`send`], with a failure to connect or to read the answer, or a body that is not UTF-8, as
/// an error.
pub async fn try_send(req: http::Request<Full<Bytes>>) -> Result<Reply, String> {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let resp = client.request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    let body = String::from_utf8(body.to_vec()).map_err(|e| format!("body: {e}"))?;
    Ok(Reply {
        status,
        headers,
        body,
    })
}

/// POSTs the signed voice webhook for call `n` and returns the stream target from its TwiML.
pub async fn stream_target(server: &TestServer, n: u32) -> StreamTarget {
    let params = voice_params(n);
    let pairs: Vec<(&str, &str)> = params.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let url = server.url("/webhook/incoming_call");
    let sig = twilio_sign(TOKEN, &url, &pairs);
    let reply = post_form(
        server,
        "/webhook/incoming_call",
        &pairs,
        &[("X-Twilio-Signature", sig.as_str())],
    )
    .await;
    assert_eq!(reply.status, 200, "voice webhook: {}", reply.body);
    handset_sim::parse_twiml(&reply.body).expect("TwiML with <Connect><Stream>")
}

/// Value of `<Parameter name="…" value="…" />` in a TwiML document.
pub fn twiml_parameter<'a>(xml: &'a str, name: &str) -> Option<&'a str> {
    let needle = format!("<Parameter name=\"{name}\" value=\"");
    let start = xml.find(&needle)? + needle.len();
    let end = xml[start..].find('"')?;
    Some(&xml[start..start + end])
}

/// Value of attribute `attr` on the first `<tag …>` in `xml`.
pub fn twiml_attr<'a>(xml: &'a str, tag: &str, attr: &str) -> Option<&'a str> {
    let open = xml.find(&format!("<{tag} "))?;
    let close = open + xml[open..].find('>')?;
    let element = &xml[open..close];
    let needle = format!(" {attr}=\"");
    let start = element.find(&needle)? + needle.len();
    let end = element[start..].find('"')?;
    Some(&element[start..start + end])
}

/// Writes `request` on a fresh connection and reads the answer until the server closes or
/// `limit` passes; returns the raw text (empty when the server closed without answering).
pub async fn raw_exchange(addr: SocketAddr, request: &[u8], limit: Duration) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    // The server may answer (and close) before reading everything: ignore write errors.
    let _ = stream.write_all(request).await;
    read_raw(&mut stream, limit).await
}

/// Reads from `stream` until EOF, a reset, or `limit`; a complete response without a body
/// length is read to EOF.
pub async fn read_raw(stream: &mut TcpStream, limit: Duration) -> String {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + limit;
    while let Ok(Ok(n)) = tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        if head_and_body_complete(&buf) {
            break;
        }
    }
    String::from_utf8_lossy(&buf).into_owned()
}

fn head_and_body_complete(buf: &[u8]) -> bool {
    let text = String::from_utf8_lossy(buf);
    let Some(end) = text.find("\r\n\r\n") else {
        return false;
    };
    let length = text[..end]
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0);
    buf.len() >= end + 4 + length
}

/// The status code of a raw HTTP answer (0 when there was none).
pub fn status_of(raw: &str) -> u16 {
    raw.strip_prefix("HTTP/1.1 ")
        .and_then(|r| r.get(..3))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// A header's value in a raw HTTP answer.
pub fn header_of<'a>(raw: &'a str, name: &str) -> Option<&'a str> {
    let head = &raw[..raw.find("\r\n\r\n").unwrap_or(raw.len())];
    head.lines().skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}
