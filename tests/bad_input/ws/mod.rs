//! The Media Streams WebSocket (the `ws::` cases), in three families: [`start`], before and at
//! `start`; [`messages`], messages a running call drops while it goes on; [`connection`],
//! frames and the connection itself under a running call. Here, what they share: a running
//! call, and how a case finishes once its bad input is sent, the call going on
//! ([`finish_continuing`]) or being closed ([`finish_closed`]).

pub(crate) mod connection;
pub(crate) mod messages;
pub(crate) mod start;

use futures_util::{SinkExt as _, StreamExt as _};
use tokio_tungstenite::tungstenite::Message;

use crate::case::Observed;
use crate::support::{self, Logs, TestServer, Ws, call_sid, open_call, read_to_end, stream_sid};
use crate::{PATIENCE, greeting_frames};

/// Sends a ping and reads until its pong (true) or the stream ends.
async fn ping_through(ws: &mut Ws, media: &mut u64) -> bool {
    if ws
        .send(Message::Ping(b"after".to_vec().into()))
        .await
        .is_err()
    {
        return false;
    }
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Ok(Some(Ok(Message::Pong(p)))) if p.as_ref() == b"after" => return true,
            Ok(Some(Ok(Message::Text(t)))) => {
                if t.contains(r#""event":"media""#) {
                    *media += 1;
                }
            }
            Ok(Some(Ok(Message::Close(_)))) | Ok(None) | Ok(Some(Err(_))) | Err(_) => {
                return false;
            }
            Ok(Some(Ok(_))) => {}
        }
    }
}

/// After the bad input: ping through, wait for the whole greeting, `stop`, read to the end.
pub(crate) async fn finish_continuing(mut ws: Ws, n: u32) -> Observed {
    let mut media_before = 0;
    let pong = ping_through(&mut ws, &mut media_before).await;
    let mut media_after = 0;
    while media_before + media_after < greeting_frames() {
        match tokio::time::timeout(PATIENCE, ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => {
                if t.contains(r#""event":"media""#) {
                    media_after += 1;
                }
            }
            Ok(Some(Ok(_))) => {}
            _ => break,
        }
    }
    let sid = stream_sid(n);
    let _ = ws
        .send(Message::text(format!(
            r#"{{"event":"stop","streamSid":"{sid}"}}"#
        )))
        .await;
    let mut ending = read_to_end(&mut ws, PATIENCE).await;
    ending.media += media_before + media_after;
    Observed {
        ending: Some(ending),
        pong_after_input: pong,
        call_released: released(n).await,
        ..Observed::default()
    }
}

/// Reads to the end; `call` is the call started on the socket, if any (`None`: the server
/// refused before any call existed, so there is nothing to release).
pub(crate) async fn finish_closed(mut ws: Ws, call: Option<u32>) -> Observed {
    let ending = read_to_end(&mut ws, PATIENCE).await;
    Observed {
        ending: Some(ending),
        call_released: match call {
            Some(n) => released(n).await,
            None => true,
        },
        ..Observed::default()
    }
}

/// Whether the server finished with call `n` (its `WS closed` line, the last thing it logs
/// for a call, after the engine call and the socket are gone).
pub(crate) async fn released(n: u32) -> bool {
    !Logs::capture()
        .wait_for("WS closed", &call_sid(n), PATIENCE)
        .await
        .is_empty()
}

/// Opens a call and waits for its first server media (the call is running).
pub(crate) async fn running_call(server: &TestServer, n: u32) -> Ws {
    let mut ws = open_call(server, n).await;
    assert!(
        support::read_media(&mut ws, 1, PATIENCE).await,
        "call {n} started"
    );
    ws
}
