//! End-to-end: `X-Twilio-Signature` enforcement over real TCP, with requests signed by the
//! independent signer in `support::signer` (itself checked against Twilio's official vectors
//! here), on servers started bare so that each test sets its own token and public URL.

mod support;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;

use support::{Options, TestServer, post_form, send, twilio_sign};

const TOKEN: &str = "12345";
const PUBLIC: &str = "https://voice.example.com";

/// The parameters of Twilio's official signature vectors.
fn vector_params() -> Vec<(&'static str, &'static str)> {
    vec![
        ("CallSid", "CA1234567890ABCDE"),
        ("Caller", "+14158675309"),
        ("Digits", "1234"),
        ("From", "+14158675309"),
        ("To", "+18005551212"),
    ]
}

/// [`vector_params`] with a well-formed `CallSid` (the vectors' `CA1234567890ABCDE` is short,
/// and the server refuses it before anything else).
fn base_params() -> Vec<(&'static str, &'static str)> {
    let mut params = vector_params();
    params[0].1 = "CA1234567890abcdef1234567890abcdef";
    params
}

#[test]
fn test_signer_reproduces_official_vectors() {
    let url = "https://mycompany.com/myapp.php?foo=1&bar=2";
    assert_eq!(
        twilio_sign(TOKEN, url, &vector_params()),
        "RSOYDt4T1cUTdK1PDd93/VVr8B8="
    );
    assert_eq!(
        twilio_sign(
            TOKEN,
            "https://mycompany.com:443/myapp.php?foo=1&bar=2",
            &vector_params()
        ),
        "kvajT1Ptam85bY51eRf/AJRuM3w="
    );
    let repeated = [
        ("Sid", "CA123"),
        ("SidAccount", "AC123"),
        ("Digits", "5678"),
        ("Digits", "1234"),
        ("Digits", "1234"),
    ];
    assert_eq!(
        twilio_sign(TOKEN, url, &repeated),
        "IK+Dwps556ElfBT0I3Rgjkr1wJU="
    );
    assert_eq!(
        twilio_sign(TOKEN, "wss://mycompany.com/media-stream", &[]),
        "N2Y//FHA042H22oVtTOPT1X3yoU="
    );
}

#[tokio::test]
async fn valid_signature_is_accepted_and_tampered_or_missing_is_403() {
    let server = TestServer::start_with(
        Options::bare(),
        &[("TWILIO_AUTH_TOKEN", TOKEN), ("PUBLIC_URL", PUBLIC)],
    )
    .await;
    let path = "/webhook/incoming_call";
    let sig = twilio_sign(TOKEN, &format!("{PUBLIC}{path}"), &base_params());

    let ok = post_form(
        &server,
        path,
        &base_params(),
        &[("x-twilio-signature", &sig)],
    )
    .await;
    assert_eq!(ok.status, StatusCode::OK);

    let mut tampered = base_params();
    tampered[2].1 = "9999";
    let reply = post_form(&server, path, &tampered, &[("x-twilio-signature", &sig)]).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    assert_eq!(
        reply.body.trim(),
        "forbidden",
        "403 must not say which check failed"
    );

    let reply = post_form(&server, path, &base_params(), &[]).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    assert_eq!(reply.body.trim(), "forbidden");

    let wrong_token = twilio_sign("other-token", &format!("{PUBLIC}{path}"), &base_params());
    let reply = post_form(
        &server,
        path,
        &base_params(),
        &[("x-twilio-signature", &wrong_token)],
    )
    .await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);

    // Signed for a different route: refused.
    let other = twilio_sign(
        TOKEN,
        &format!("{PUBLIC}/webhook/call_status"),
        &base_params(),
    );
    let reply = post_form(
        &server,
        path,
        &base_params(),
        &[("x-twilio-signature", &other)],
    )
    .await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    server.stop().await;
}

#[tokio::test]
async fn signature_with_default_port_is_accepted() {
    let server = TestServer::start_with(
        Options::bare(),
        &[("TWILIO_AUTH_TOKEN", TOKEN), ("PUBLIC_URL", PUBLIC)],
    )
    .await;
    let path = "/webhook/stream_status";
    let sig = twilio_sign(
        TOKEN,
        &format!("https://voice.example.com:443{path}"),
        &base_params(),
    );
    let reply = post_form(
        &server,
        path,
        &base_params(),
        &[("x-twilio-signature", &sig)],
    )
    .await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT);
    let sig = twilio_sign(
        TOKEN,
        &format!("https://voice.example.com:8443{path}"),
        &base_params(),
    );
    let reply = post_form(
        &server,
        path,
        &base_params(),
        &[("x-twilio-signature", &sig)],
    )
    .await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    server.stop().await;
}

#[tokio::test]
async fn behind_a_proxy_the_forwarded_url_is_verified() {
    let server = TestServer::start_with(Options::bare(), &[("TWILIO_AUTH_TOKEN", TOKEN)]).await;
    let path = "/webhook/call_status";
    let sig = twilio_sign(
        TOKEN,
        &format!("https://voice.example.com{path}"),
        &base_params(),
    );
    let forwarded = [
        ("x-forwarded-proto", "https"),
        ("x-forwarded-host", "voice.example.com, 10.0.0.7"),
        ("x-twilio-signature", sig.as_str()),
    ];
    let reply = post_form(&server, path, &base_params(), &forwarded).await;
    assert_eq!(reply.status, StatusCode::OK);
    // Same signature without the forwarded headers: the server sees http://127.0.0.1:port.
    let reply = post_form(
        &server,
        path,
        &base_params(),
        &[("x-twilio-signature", &sig)],
    )
    .await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    server.stop().await;
}

#[tokio::test]
async fn non_ascii_and_repeated_parameters_verify() {
    let server = TestServer::start_with(
        Options::bare(),
        &[("TWILIO_AUTH_TOKEN", TOKEN), ("PUBLIC_URL", PUBLIC)],
    )
    .await;
    let path = "/webhook/call_status";
    let params = [
        ("CallSid", "CA00000000000000000000000000000001"),
        ("CallStatus", "completed"),
        ("CallerName", "José Ñúñez ✓ 日本"),
        ("StatusCallbackEvent", "ringing"),
        ("StatusCallbackEvent", "answered"),
        ("StatusCallbackEvent", "answered"),
        ("Body", "It's a & b = c + d"),
    ];
    let sig = twilio_sign(TOKEN, &format!("{PUBLIC}{path}"), &params);
    let reply = post_form(&server, path, &params, &[("x-twilio-signature", &sig)]).await;
    assert_eq!(reply.status, StatusCode::OK);
    let mut changed = params;
    changed[2].1 = "Jose Nunez";
    let reply = post_form(&server, path, &changed, &[("x-twilio-signature", &sig)]).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    server.stop().await;
}

#[tokio::test]
async fn get_with_query_string_is_signed_over_the_full_url() {
    let server = TestServer::start_with(
        Options::bare(),
        &[("TWILIO_AUTH_TOKEN", TOKEN), ("PUBLIC_URL", PUBLIC)],
    )
    .await;
    let path_and_query =
        "/webhook/incoming_call?CallSid=CA00000000000000000000000000000077&From=%2B1555";
    let sig = twilio_sign(TOKEN, &format!("{PUBLIC}{path_and_query}"), &[]);
    let req = Request::get(server.url(path_and_query))
        .header("x-twilio-signature", &sig)
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(send(req).await.status, StatusCode::OK);
    let req = Request::get(
        server
            .url("/webhook/incoming_call?CallSid=CA00000000000000000000000000000078&From=%2B1555"),
    )
    .header("x-twilio-signature", &sig)
    .body(Full::new(Bytes::new()))
    .unwrap();
    assert_eq!(send(req).await.status, StatusCode::FORBIDDEN);
    server.stop().await;
}

#[tokio::test]
async fn json_body_is_verified_through_body_sha256() {
    let server = TestServer::start_with(
        Options::bare(),
        &[("TWILIO_AUTH_TOKEN", TOKEN), ("PUBLIC_URL", PUBLIC)],
    )
    .await;
    // Body and hash from Twilio's official vector V6.
    let hash = "0a1ff7634d9ab3b95db5c9a2dfe9416e41502b283a80c7cf19632632f96e6620";
    let path = format!("/webhook/call_status?bodySHA256={hash}");
    let sig = twilio_sign(TOKEN, &format!("{PUBLIC}{path}"), &[]);
    let post = |body: &'static str| {
        Request::post(server.url(&path))
            .header("content-type", "application/json")
            .header("x-twilio-signature", &sig)
            .body(Full::new(Bytes::from_static(body.as_bytes())))
            .unwrap()
    };
    assert_eq!(
        send(post(r#"{"property": "value", "boolean": true}"#))
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        send(post(r#"{"property": "value", "boolean": false}"#))
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    server.stop().await;
}

#[tokio::test]
async fn health_and_version_need_no_signature() {
    let server = TestServer::start_with(
        Options::bare(),
        &[("TWILIO_AUTH_TOKEN", TOKEN), ("PUBLIC_URL", PUBLIC)],
    )
    .await;
    for path in ["/healthz", "/version"] {
        let req = Request::get(server.url(path))
            .body(Full::new(Bytes::new()))
            .unwrap();
        assert_eq!(send(req).await.status, StatusCode::OK, "{path}");
    }
    server.stop().await;
}
