//! The Twilio REST client against a fake Twilio REST server on loopback (a hyper server that
//! checks HTTP Basic auth and records every request): a call is created with the documented
//! form fields and updated (hung up, redirected); a download over its cap and a redirect to
//! another host are refused. End to end: `POST /calls` on the real server (bearer
//! `CONTROL_TOKEN`) makes the fake receive a create whose `Url` is the server's own voice
//! webhook; the test then plays Twilio (the signed webhook with `Direction=outbound-api`, the
//! signed stream) and a fake agent sees `direction: outbound-api` and the extra parameter in
//! its `start`. At a drain's deadline a live call is handed over: the fake receives a redirect
//! of the call to the voice webhook one hop further, the old agent gets `stop` with reason
//! `handover`, and the redirected call's new stream (on a second server sharing the store)
//! gives its agent a `start` with `resumed: true`.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt as _, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;

use handset_shell::twilio::{NewCall, TwilioClient, TwilioError, UpdateCall};
use handset_shell::{PublicUrl, Secret, TwilioRestConfig};

mod support;
use support::fakes::watcher;
use support::{Options, TOKEN, TestServer, call_sid, post_form, twilio_sign};

const ACCOUNT: &str = "AC0123456789abcdef0123456789abcdef";
const KEY: &str = "SK0123456789abcdef0123456789abcdef";
const KEY_SECRET: &str = "api-key-secret";
const CONTROL: &str = "control-bearer-token";

/// One request the fake Twilio received.
#[derive(Clone, Debug)]
struct Seen {
    method: String,
    path: String,
    /// The Basic-auth `user:password`, decoded.
    basic: Option<String>,
    form: Vec<(String, String)>,
}

impl Seen {
    fn field(&self, name: &str) -> Vec<&str> {
        self.form
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

type Log = Arc<Mutex<Vec<Seen>>>;

/// A fake Twilio REST API: accepts `user:password`, answers creates with `new_sid`, updates
/// with 200, `/Recordings/*.wav` with `wav`, `/Recordings/REDIRECT….wav` with a 302 to
/// `redirect_to`; anything unauthenticated gets Twilio's 401.
async fn fake_twilio(
    user: &'static str,
    password: &'static str,
    new_sid: String,
    wav: Vec<u8>,
    redirect_to: String,
) -> (String, Log) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let log: Log = Arc::default();
    let shared = Arc::clone(&log);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (log, sid, wav, redirect_to) = (
                Arc::clone(&shared),
                new_sid.clone(),
                wav.clone(),
                redirect_to.clone(),
            );
            let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                let (log, sid, wav, redirect_to) = (
                    Arc::clone(&log),
                    sid.clone(),
                    wav.clone(),
                    redirect_to.clone(),
                );
                async move {
                    let method = req.method().to_string();
                    let path = req.uri().path().to_owned();
                    let basic = req
                        .headers()
                        .get("authorization")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.strip_prefix("Basic "))
                        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
                        .map(|b| String::from_utf8_lossy(&b).into_owned());
                    let body = req.into_body().collect().await.unwrap().to_bytes();
                    let form = form_urlencoded::parse(&body).into_owned().collect();
                    let authorized = basic.as_deref() == Some(&format!("{user}:{password}"));
                    log.lock().unwrap().push(Seen {
                        method: method.clone(),
                        path: path.clone(),
                        basic,
                        form,
                    });
                    let answer = |status: u16, body: Vec<u8>| {
                        let mut resp = http::Response::new(Full::new(Bytes::from(body)));
                        *resp.status_mut() = http::StatusCode::from_u16(status).unwrap();
                        resp
                    };
                    let calls = format!("/2010-04-01/Accounts/{ACCOUNT}/Calls");
                    let resp = if !authorized {
                        answer(
                            401,
                            br#"{"code": 20003, "message": "Authenticate", "status": 401}"#
                                .to_vec(),
                        )
                    } else if method == "POST" && path == format!("{calls}.json") {
                        answer(
                            201,
                            json!({"sid": sid, "status": "queued"}).to_string().into(),
                        )
                    } else if method == "POST" && path.starts_with(&format!("{calls}/")) {
                        answer(200, json!({"sid": sid}).to_string().into())
                    } else if path.contains("/Recordings/REDIRECT") {
                        let mut r = answer(302, Vec::new());
                        r.headers_mut()
                            .insert("location", redirect_to.parse().unwrap());
                        r
                    } else if path.contains("/Recordings/") {
                        answer(200, wav)
                    } else {
                        answer(404, br#"{"message": "not found"}"#.to_vec())
                    };
                    Ok::<_, Infallible>(resp)
                }
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service),
            );
        }
    });
    (base, log)
}

fn client(api: &str, key: bool) -> TwilioClient {
    TwilioClient::new(&TwilioRestConfig {
        account_sid: Some(ACCOUNT.to_owned()),
        auth_token: Some(Secret::new(TOKEN)),
        api_key: key.then(|| (KEY.to_owned(), Secret::new(KEY_SECRET))),
        api_url: PublicUrl::parse("TWILIO_API_URL", api).unwrap(),
        from: None,
    })
    .unwrap()
}

#[tokio::test]
async fn calls_are_created_and_updated_with_basic_auth_and_the_documented_fields() {
    let (api, log) = fake_twilio(ACCOUNT, TOKEN, call_sid(3), Vec::new(), String::new()).await;
    let c = client(&api, false);
    let call = NewCall {
        to: "+15550002222".to_owned(),
        from: "+15550001111".to_owned(),
        url: "https://voice.example.com/webhook/incoming_call?p.k=v".to_owned(),
        status_callback: Some("https://voice.example.com/webhook/call_status".to_owned()),
    };
    assert_eq!(c.create_call(&call).await.unwrap(), call_sid(3));
    c.update_call(&call_sid(3), &UpdateCall::Completed)
        .await
        .unwrap();
    c.update_call(
        &call_sid(3),
        &UpdateCall::Redirect("https://voice.example.com/next".to_owned()),
    )
    .await
    .unwrap();
    let seen = log.lock().unwrap().clone();
    assert_eq!(seen.len(), 3);
    let basic = format!("{ACCOUNT}:{TOKEN}");
    assert!(
        seen.iter()
            .all(|s| s.basic.as_deref() == Some(basic.as_str()))
    );
    let create = &seen[0];
    assert_eq!(create.method, "POST");
    assert_eq!(
        create.path,
        format!("/2010-04-01/Accounts/{ACCOUNT}/Calls.json")
    );
    assert_eq!(create.field("To"), ["+15550002222"]);
    assert_eq!(create.field("From"), ["+15550001111"]);
    assert_eq!(create.field("Url"), [call.url.as_str()]);
    assert_eq!(create.field("Method"), ["POST"]);
    assert_eq!(
        create.field("StatusCallback"),
        ["https://voice.example.com/webhook/call_status"]
    );
    assert_eq!(
        create.field("StatusCallbackEvent"),
        ["initiated", "ringing", "answered", "completed"]
    );
    let update_path = format!("/2010-04-01/Accounts/{ACCOUNT}/Calls/{}.json", call_sid(3));
    assert_eq!(seen[1].path, update_path);
    assert_eq!(
        seen[1].form,
        [("Status".to_owned(), "completed".to_owned())]
    );
    assert_eq!(seen[2].path, update_path);
    assert_eq!(seen[2].field("Url"), ["https://voice.example.com/next"]);
    assert_eq!(seen[2].field("Method"), ["POST"]);

    // A CallSid that is not one never reaches the API.
    assert!(matches!(
        c.update_call("CA1/../../x", &UpdateCall::Completed).await,
        Err(TwilioError::Sid { .. })
    ));
    assert_eq!(log.lock().unwrap().len(), 3);
}

#[tokio::test]
async fn an_api_key_is_used_instead_of_the_auth_token_and_a_refusal_carries_twilios_message() {
    let (api, log) = fake_twilio(KEY, KEY_SECRET, call_sid(4), Vec::new(), String::new()).await;
    client(&api, true)
        .update_call(&call_sid(4), &UpdateCall::Completed)
        .await
        .unwrap();
    assert_eq!(
        log.lock().unwrap()[0].basic.as_deref(),
        Some(format!("{KEY}:{KEY_SECRET}").as_str())
    );
    let err = client(&api, false)
        .update_call(&call_sid(4), &UpdateCall::Completed)
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "twilio answered status 401: Authenticate");
    assert!(!err.retryable());
}

#[tokio::test]
async fn a_download_over_its_cap_or_redirected_elsewhere_is_refused() {
    let (elsewhere, connections) = watcher().await;
    let wav = vec![7u8; 10_000];
    let (api, log) = fake_twilio(
        ACCOUNT,
        TOKEN,
        call_sid(5),
        wav.clone(),
        format!("{elsewhere}/stolen.wav"),
    )
    .await;
    let c = client(&api, false);
    let sid = "RE0123456789abcdef0123456789abcdef";
    assert_eq!(
        c.download_recording(ACCOUNT, sid, 10_000).await.unwrap(),
        wav
    );
    assert_eq!(
        log.lock().unwrap()[0].path,
        format!("/2010-04-01/Accounts/{ACCOUNT}/Recordings/{sid}.wav")
    );
    assert!(matches!(
        c.download_recording(ACCOUNT, sid, 9_999).await,
        Err(TwilioError::TooLarge { limit: 9_999 })
    ));
    let err = c
        .download_recording(ACCOUNT, "REDIRECT", 10_000)
        .await
        .unwrap_err();
    assert!(
        matches!(err, TwilioError::Status { status: 302, .. }),
        "{err}"
    );
    assert_eq!(
        *connections.lock().unwrap(),
        0,
        "the redirect was not followed"
    );
    // Another account's recording is not fetched with this account's credentials.
    let other = ACCOUNT.replace("AC0", "AC1");
    assert!(matches!(
        c.download_recording(&other, sid, 10_000).await,
        Err(TwilioError::Account { .. })
    ));
    assert_eq!(log.lock().unwrap().len(), 3);
}

/// A fake agent: records the first text message (`start`) of every connection.
async fn agent() -> (String, Arc<Mutex<Vec<Value>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/agent", listener.local_addr().unwrap());
    let starts: Arc<Mutex<Vec<Value>>> = Arc::default();
    let shared = Arc::clone(&starts);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let starts = Arc::clone(&shared);
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
                    return;
                };
                while let Some(Ok(msg)) = ws.next().await {
                    if let Message::Text(t) = msg {
                        let v: Value = serde_json::from_str(&t).unwrap();
                        if v["type"] == "start" {
                            starts.lock().unwrap().push(v);
                        }
                    }
                }
            });
        }
    });
    (url, starts)
}

async fn post_calls(server: &TestServer, body: &str, bearer: Option<&str>) -> support::Reply {
    let mut req =
        http::Request::post(server.url("/calls")).header("content-type", "application/json");
    if let Some(token) = bearer {
        req = req.header("authorization", format!("Bearer {token}"));
    }
    support::send(req.body(Full::new(Bytes::from(body.to_owned()))).unwrap()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outbound_call_reaches_the_agent_with_direction_outbound_api() {
    let n = 7;
    let (api, log) = fake_twilio(ACCOUNT, TOKEN, call_sid(n), Vec::new(), String::new()).await;
    let (agent_url, starts) = agent().await;
    let server = TestServer::start(&[
        ("CONTROL_TOKEN", CONTROL),
        ("TWILIO_ACCOUNT_SID", ACCOUNT),
        ("TWILIO_API_URL", &api),
        ("TWILIO_FROM", "+15550001111"),
        ("AGENT_URL", &agent_url),
    ])
    .await;

    // Refused before Twilio is asked: no bearer, a wrong one, a bad `to`.
    let body = r#"{"to": "+15550002222", "params": {"lead": "42 b"}}"#;
    assert_eq!(post_calls(&server, body, None).await.status, 401);
    assert_eq!(post_calls(&server, body, Some("wrong")).await.status, 401);
    let bad = post_calls(&server, r#"{"to": "555"}"#, Some(CONTROL)).await;
    assert_eq!(bad.status, 400, "{}", bad.body);
    assert!(
        bad.body.contains("to must be an E.164 number"),
        "{}",
        bad.body
    );
    assert!(log.lock().unwrap().is_empty(), "Twilio was not asked");

    let reply = post_calls(&server, body, Some(CONTROL)).await;
    assert_eq!(reply.status, 201, "{}", reply.body);
    let answer: Value = serde_json::from_str(&reply.body).unwrap();
    assert_eq!(answer["callSid"], call_sid(n));
    let create = log.lock().unwrap()[0].clone();
    assert_eq!(create.field("To"), ["+15550002222"]);
    assert_eq!(create.field("From"), ["+15550001111"]);
    let webhook = create.field("Url")[0].to_owned();
    assert_eq!(
        webhook,
        server.url("/webhook/incoming_call?p.lead=42+b"),
        "the new call's TwiML is this server's voice webhook"
    );

    // Twilio dials, the callee answers: the signed voice webhook, as Twilio sends it.
    let params = [
        ("AccountSid", ACCOUNT.to_owned()),
        ("CallSid", call_sid(n)),
        ("CallStatus", "in-progress".to_owned()),
        ("Direction", "outbound-api".to_owned()),
        ("From", "+15550001111".to_owned()),
        ("To", "+15550002222".to_owned()),
    ];
    let pairs: Vec<(&str, &str)> = params.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let signature = twilio_sign(TOKEN, &webhook, &pairs);
    let path = webhook.trim_start_matches(&server.url(""));
    let twiml = post_form(&server, path, &pairs, &[("X-Twilio-Signature", &signature)]).await;
    assert_eq!(twiml.status, 200, "{}", twiml.body);
    let target = handset_sim::parse_twiml(&twiml.body).unwrap();
    let parameters: HashMap<_, _> = target.parameters.iter().cloned().collect();
    assert_eq!(parameters["direction"], "outbound-api");
    assert_eq!(parameters["lead"], "42 b");

    // The stream opens; the agent gets its start.
    let tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let mut ws = support::ws_connect(&server, tcp).await;
    ws.send(Message::text(
        r#"{"event":"connected","protocol":"Call","version":"1.0.0"}"#,
    ))
    .await
    .unwrap();
    ws.send(support::start_message(n, &target)).await.unwrap();
    let started = async {
        loop {
            if let Some(start) = starts.lock().unwrap().first().cloned() {
                return start;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let start = tokio::time::timeout(Duration::from_secs(20), started)
        .await
        .expect("the agent gets a start");
    assert_eq!(start["direction"], "outbound-api");
    assert_eq!(start["callSid"], call_sid(n));
    assert_eq!(start["customParameters"]["lead"], "42 b");
    assert!(start["customParameters"].get("streamToken").is_none());
    let _ = ws.close(None).await;
    server.stop().await;
}

#[tokio::test]
async fn post_calls_is_not_found_without_a_control_token() {
    let server = TestServer::start(&[]).await;
    let reply = post_calls(&server, r#"{"to": "+15550002222"}"#, Some(CONTROL)).await;
    assert_eq!(reply.status, 404);
    server.stop().await;
}

/// A fake agent that records every text message of every connection, in order.
async fn agent_log() -> (String, Arc<Mutex<Vec<Value>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/agent", listener.local_addr().unwrap());
    let seen: Arc<Mutex<Vec<Value>>> = Arc::default();
    let shared = Arc::clone(&seen);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let seen = Arc::clone(&shared);
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
                    return;
                };
                while let Some(Ok(msg)) = ws.next().await {
                    if let Message::Text(t) = msg {
                        seen.lock().unwrap().push(serde_json::from_str(&t).unwrap());
                    }
                }
            });
        }
    });
    (url, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_drain_deadline_a_live_call_is_handed_over_to_a_ready_instance() {
    let (api, rest) = fake_twilio(ACCOUNT, TOKEN, call_sid(60), Vec::new(), String::new()).await;
    let (agent_url, seen) = agent_log().await;
    let vars = [
        ("TWILIO_ACCOUNT_SID", ACCOUNT),
        ("TWILIO_API_URL", api.as_str()),
        ("AGENT_URL", agent_url.as_str()),
        ("DRAIN_TIMEOUT", "1"),
    ];
    let mut old = TestServer::start(&vars).await;
    let mut ws = support::open_call(&old, 60).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while old.state.active_calls.count() == 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(old.state.active_calls.count(), 1, "the call is up");

    old.drain();
    // At the deadline Twilio is asked to fetch the voice webhook again, one hop further.
    let update_path = format!("/2010-04-01/Accounts/{ACCOUNT}/Calls/{}.json", call_sid(60));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let update = loop {
        let found = rest
            .lock()
            .unwrap()
            .iter()
            .find(|r| r.path == update_path)
            .cloned();
        if let Some(update) = found {
            break update;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no redirect reached Twilio"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(update.method, "POST");
    assert_eq!(
        update.basic.as_deref(),
        Some(format!("{ACCOUNT}:{TOKEN}").as_str())
    );
    assert_eq!(
        update.field("Url"),
        [old.url("/webhook/incoming_call?hop=1").as_str()]
    );
    assert_eq!(update.field("Method"), ["POST"]);

    // Twilio stops the old stream; its agent hears why.
    ws.send(Message::text(format!(
        r#"{{"event":"stop","sequenceNumber":"9","streamSid":"{}"}}"#,
        support::stream_sid(60)
    )))
    .await
    .unwrap();
    let _ = support::read_to_end(&mut ws, Duration::from_secs(5)).await;
    assert!(old.stopped_within(Duration::from_secs(10)).await);
    let stops: Vec<Value> = seen
        .lock()
        .unwrap()
        .iter()
        .filter(|m| m["type"] == "stop")
        .cloned()
        .collect();
    assert_eq!(stops, [json!({"type": "stop", "reason": "handover"})]);

    // Twilio fetches the redirect (through the load balancer: here, a second instance on the
    // same store) and opens the new stream there; its agent starts with `resumed: true`.
    let new = TestServer::start_with(Options::default().in_dir(old.data_dir.clone()), &vars).await;
    let params = support::voice_params(60);
    let pairs: Vec<(&str, &str)> = params.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let path = "/webhook/incoming_call?hop=1";
    let sig = twilio_sign(TOKEN, &new.url(path), &pairs);
    let reply = post_form(&new, path, &pairs, &[("X-Twilio-Signature", sig.as_str())]).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let target = handset_sim::parse_twiml(&reply.body).unwrap();
    let tcp = tokio::net::TcpStream::connect(new.addr).await.unwrap();
    let mut ws = support::ws_connect(&new, tcp).await;
    ws.send(support::start_message(60, &target)).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let resumed = loop {
        let starts: Vec<Value> = seen
            .lock()
            .unwrap()
            .iter()
            .filter(|m| m["type"] == "start")
            .cloned()
            .collect();
        if starts.len() == 2 {
            break starts[1].clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the new stream's agent starts"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(resumed["resumed"], true, "{resumed}");
    assert_eq!(resumed["callSid"], call_sid(60));
    drop(ws);
    new.stop().await;
}
