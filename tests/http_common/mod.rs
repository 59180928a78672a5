//! Shared helpers for the HTTP end-to-end tests: start the real server on `127.0.0.1:0`, send
//! requests with a real HTTP client over TCP, and sign requests with a small signer written here
//! independently of the server's (checked against Twilio's official vectors in the tests).

#![allow(dead_code, unreachable_pub)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use base64::Engine as _;
use bytes::Bytes;
use hmac::{Hmac, Mac};
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::oneshot;

use handset_shell::{AppState, Config};

/// A server running in-process on a loopback port.
pub struct TestServer {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Shared state, to look at tokens and counters.
    pub state: Arc<AppState>,
    /// The data directory (removed by [`TestServer::stop`] unless kept).
    pub data_dir: PathBuf,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

/// A fresh, unique data directory under the system temp dir.
pub fn temp_data_dir() -> PathBuf {
    std::env::temp_dir().join(format!(
        "handset-e2e-{}-{}",
        std::process::id(),
        rand::random::<u64>()
    ))
}

/// Starts the server with `vars` plus a fresh `DATA_DIR`.
pub async fn start(vars: &[(&str, &str)]) -> TestServer {
    start_in(temp_data_dir(), vars).await
}

/// Starts the server with `vars` on an existing data directory.
pub async fn start_in(data_dir: PathBuf, vars: &[(&str, &str)]) -> TestServer {
    let dir = data_dir.display().to_string();
    let mut all: Vec<(&str, &str)> = vec![("DATA_DIR", dir.as_str()), ("DRAIN_TIMEOUT", "10")];
    all.extend_from_slice(vars);
    let config = Config::from_vars(all).expect("test config is valid");
    let (state, _startup) = AppState::new(config).await.expect("store opens");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(handset_shell::serve(listener, state.clone(), async {
        let _ = stopped.await;
    }));
    TestServer {
        addr,
        state,
        data_dir,
        stop,
        task,
    }
}

impl TestServer {
    /// Signals shutdown and waits for `serve` to return; keeps the data directory.
    pub async fn shutdown(self) -> PathBuf {
        let _ = self.stop.send(());
        self.task.await.unwrap().unwrap();
        self.data_dir
    }

    /// Shuts down and removes the data directory.
    pub async fn stop(self) {
        let dir = self.shutdown().await;
        let _ = std::fs::remove_dir_all(dir);
    }

    /// `http://127.0.0.1:port` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }
}

/// A response, read in full.
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

/// Sends `req` with hyper's client over TCP.
pub async fn send(req: Request<Full<Bytes>>) -> Reply {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let resp = client.request(req).await.expect("request completes");
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    Reply {
        status,
        headers,
        body: String::from_utf8(body.to_vec()).unwrap(),
    }
}

/// Builds a form-encoded POST to `server` at `path` with optional extra headers.
pub fn form_post(
    server: &TestServer,
    path: &str,
    params: &[(&str, &str)],
    headers: &[(&str, &str)],
) -> Request<Full<Bytes>> {
    let body = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(params.iter().copied())
        .finish();
    let mut builder =
        Request::post(server.url(path)).header("content-type", "application/x-www-form-urlencoded");
    for (k, v) in headers {
        builder = builder.header(*k, *v);
    }
    builder.body(Full::new(Bytes::from(body))).unwrap()
}

/// Writes raw bytes on a fresh TCP connection and returns the status line's code.
pub async fn raw_status(addr: SocketAddr, request: &[u8]) -> u16 {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    // The server may answer (and close) before reading everything: ignore write errors.
    let _ = stream.write_all(request).await;
    let mut buf = vec![0u8; 1024];
    let mut read = 0;
    while read < 12 {
        let n = stream.read(&mut buf[read..]).await.unwrap();
        if n == 0 {
            break;
        }
        read += n;
    }
    let text = String::from_utf8_lossy(&buf[..read]).to_string();
    text.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// Twilio's signature, written independently of the server: a map of name → set of values
/// (sorted, de-duplicated), appended as name+value after the URL, HMAC-SHA1, base64.
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
