//! The WebSocket upgrade family (`ws_upgrade::`): handshakes on the media path that are
//! refused with a status, unsigned, forged, or a plain `GET` without the upgrade.

use crate::case::{Case, Expect, Input, Observed, case, http};
use crate::support::{TOKEN, TestServer, twilio_sign};

/// The family's rows of the matrix.
pub(crate) static CASES: &[Case] = &[
    case(
        "ws_upgrade::without_signature",
        Input::UpgradeUnsigned,
        Expect::Status(403),
    ),
    case(
        "ws_upgrade::forged_signature",
        Input::UpgradeForged,
        Expect::Status(403),
    ),
    case(
        "ws_upgrade::plain_get_on_the_media_path",
        Input::PlainGetOnMediaPath,
        Expect::Status(400),
    ),
];

/// Sends a WebSocket upgrade `input` and returns what was observed.
pub(crate) async fn run_case(server: &TestServer, input: Input) -> Observed {
    match input {
        Input::UpgradeUnsigned | Input::UpgradeForged => {
            let sig_header = match input {
                Input::UpgradeForged => format!(
                    "X-Twilio-Signature: {}\r\n",
                    twilio_sign("not-the-token", &server.stream_url(), &[])
                ),
                _ => String::new(),
            };
            let req = format!(
                "GET /ws/twilio-media HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{sig_header}\r\n",
                server.addr
            );
            http(server, req.as_bytes()).await
        }
        Input::PlainGetOnMediaPath => {
            let sig = twilio_sign(TOKEN, &server.stream_url(), &[]);
            let req = format!(
                "GET /ws/twilio-media HTTP/1.1\r\nHost: {}\r\nX-Twilio-Signature: {sig}\r\nConnection: close\r\n\r\n",
                server.addr
            );
            http(server, req.as_bytes()).await
        }
        other => unreachable!("not a WebSocket upgrade input: {other:?}"),
    }
}
