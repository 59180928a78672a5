//! What the store costs a call: webhook latency over loopback with the store on SQLite (the
//! embedded default) and, when `DATABASE_URL` names one, on PostgreSQL.
//!
//! `cargo bench --bench webhook [-- CALLS]` starts the real server in-process (signature checks
//! on, the store as configured), then plays the store-touching legs of CALLS calls one after
//! another, each over a fresh keep-alive client, and times every answer at the client:
//!
//! | leg | store work |
//! |---|---|
//! | `GET /version` | none: the HTTP floor to compare with |
//! | voice webhook | issue a stream token (one upsert) |
//! | token redeem (stream `start`) | one conditional update |
//! | call start + end records | one upsert, one update |
//! | `<Connect action>` | one select (no record: the fallback) |
//! | call-status callback | one insert |
//!
//! It prints p50/p99/max per leg and the store's share of a call (everything but the HTTP
//! floor). Numbers are in docs/deploy.md.

#![allow(clippy::disallowed_methods)] // a bench times requests with the wall clock

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use handset_shell::signature::{Algorithm, compute};
use handset_shell::store::CallRecord;
use handset_shell::{AppState, Config};

const TOKEN: &str = "bench-auth-token";

fn main() {
    let calls: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(1_000);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        println!("{calls} calls, one after another; latency at the client, microseconds\n");
        run("sqlite", None, dir.path(), calls).await;
        match std::env::var("DATABASE_URL") {
            Ok(url) if url.starts_with("postgres") => {
                run("postgres", Some(url), dir.path(), calls).await
            }
            _ => println!("(set DATABASE_URL=postgres://… to measure PostgreSQL too)"),
        }
    });
}

async fn run(name: &str, url: Option<String>, dir: &std::path::Path, calls: usize) {
    let data = dir.join(name);
    let data_dir = data.display().to_string();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let public = format!("http://{addr}");
    let mut vars = vec![
        ("DATA_DIR", data_dir),
        ("TWILIO_AUTH_TOKEN", TOKEN.to_owned()),
        ("PUBLIC_URL", public.clone()),
        ("ENGINE_WORKERS", "1".to_owned()),
        ("RUST_LOG", "warn".to_owned()),
    ];
    if let Some(url) = url {
        vars.push(("DATABASE_URL", url));
    }
    let config = Config::from_vars(vars).unwrap();
    let (state, _) = AppState::new(config).await.unwrap();
    let server = tokio::spawn(handset_shell::serve(
        listener,
        Arc::clone(&state),
        std::future::pending(),
    ));
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let run_id: u32 = rand::random();

    let mut legs: Vec<(&str, Vec<Duration>)> = [
        "GET /version (floor)",
        "voice webhook",
        "token redeem",
        "call start + end records",
        "<Connect action>",
        "call-status callback",
    ]
    .into_iter()
    .map(|l| (l, Vec::with_capacity(calls)))
    .collect();

    for i in 0..calls + 50 {
        let call_sid = format!("CA{run_id:08x}{i:024x}");
        let params = vec![
            (
                "AccountSid".to_owned(),
                "AC00000000000000000000000000000000".to_owned(),
            ),
            ("CallSid".to_owned(), call_sid.clone()),
            ("CallStatus".to_owned(), "ringing".to_owned()),
            ("From".to_owned(), "+15550001111".to_owned()),
            ("To".to_owned(), "+15550002222".to_owned()),
        ];
        let mut times = [Duration::ZERO; 6];

        let t = Instant::now();
        let req = http::Request::get(format!("{public}/version"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let _ = body(&client, req).await;
        times[0] = t.elapsed();

        let t = Instant::now();
        let twiml = body(&client, signed(&public, "/webhook/incoming_call", &params)).await;
        times[1] = t.elapsed();
        let token = handset_sim::parse_twiml(&twiml)
            .expect("TwiML with a stream")
            .parameters
            .into_iter()
            .find(|(k, _)| k == handset_shell::tokens::TOKEN_PARAMETER)
            .expect("a stream token")
            .1;

        let t = Instant::now();
        let identity = state.tokens.redeem(&token, &call_sid).await.unwrap();
        times[2] = t.elapsed();
        assert!(identity.is_ok(), "the token redeems");

        let t = Instant::now();
        let record = CallRecord {
            call_sid: call_sid.clone(),
            account_sid: "AC00000000000000000000000000000000".to_owned(),
            stream_sid: format!("MZ{i:032x}"),
            instance: "bench".to_owned(),
            started_unix_ms: 1,
            ..CallRecord::default()
        };
        state.store.call_started(&record).await.unwrap();
        state
            .store
            .call_ended(&call_sid, &record.stream_sid, "bench", 2, "completed", None)
            .await
            .unwrap();
        times[3] = t.elapsed();

        let t = Instant::now();
        let _ = body(&client, signed(&public, "/webhook/stream_ended", &params)).await;
        times[4] = t.elapsed();

        let mut status = params.clone();
        status.retain(|(k, _)| k != "CallStatus");
        status.push(("CallStatus".to_owned(), "completed".to_owned()));
        status.push(("SequenceNumber".to_owned(), "3".to_owned()));
        let t = Instant::now();
        let _ = body(&client, signed(&public, "/webhook/call_status", &status)).await;
        times[5] = t.elapsed();

        if i >= 50 {
            for (leg, t) in legs.iter_mut().zip(times) {
                leg.1.push(t);
            }
        }
    }

    println!("store: {name}");
    println!("{:<28} {:>8} {:>8} {:>8}", "leg", "p50", "p99", "max");
    let mut per_call = Vec::with_capacity(calls);
    for i in 0..calls {
        let floor = legs[0].1[i];
        let store: Duration = legs[1..].iter().map(|(_, t)| t[i]).sum::<Duration>();
        // Three of the five legs are HTTP requests: take the floor off each.
        per_call.push(store.saturating_sub(floor * 3));
    }
    for (leg, times) in &mut legs {
        print_row(leg, times);
    }
    print_row("store's share of one call", &mut per_call);
    println!();
    server.abort();
    state.store.close().await;
}

fn print_row(name: &str, times: &mut [Duration]) {
    times.sort_unstable();
    let at = |q: f64| times[((times.len() as f64 * q) as usize).min(times.len() - 1)];
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    println!(
        "{:<28} {:>8.0} {:>8.0} {:>8.0}",
        name,
        us(at(0.5)),
        us(at(0.99)),
        us(*times.last().unwrap())
    );
}

fn signed(public: &str, path: &str, params: &[(String, String)]) -> http::Request<Full<Bytes>> {
    let url = format!("{public}{path}");
    let signature = compute(TOKEN.as_bytes(), &url, params, Algorithm::HmacSha1);
    let body = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(params.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .finish();
    http::Request::post(url)
        .header("content-type", "application/x-www-form-urlencoded")
        .header("x-twilio-signature", signature)
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}

async fn body(
    client: &Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
    req: http::Request<Full<Bytes>>,
) -> String {
    let resp = client.request(req).await.expect("request completes");
    assert!(resp.status().is_success(), "{}", resp.status());
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8_lossy(&bytes).into_owned()
}
