//! Shared helpers for end-to-end tests over real sockets:
//!
//! - [`server`]: the real server in-process on `127.0.0.1:0` ([`TestServer`]);
//! - [`http`]: requests with a real client, the signed voice webhook, raw HTTP;
//! - [`ws`]: Media Streams WebSockets spoken message by message;
//! - [`sim`]: whole Twilio-emulating calls through the simulator's client and
//!   `handset_engine::sim::PlaybackModel`, and what the caller heard;
//! - [`audio`]: test audio and its comparison;
//! - [`logs`]: the server's log lines captured in memory;
//! - [`fakes`]: what Handset reaches out to (Twilio's media server, an agent).
//!
//! Requests are signed like Twilio with a signer written independently of the server's.
//! Everything is re-exported here, so tests write `support::TestServer`.
//!
//! Assumptions: loopback only; every server gets a fresh temporary `DATA_DIR` (with `TRACE_DIR`
//! inside it), `PUBLIC_URL` set to its own address and [`TOKEN`] as its auth token, so
//! signatures are always checked.

#![allow(dead_code, unreachable_pub)]

pub mod audio;
pub mod fakes;
pub mod http;
pub mod logs;
pub mod server;
pub mod sim;
pub mod ws;

// The independent Twilio signer, checked against Twilio's official vectors in
// tests/http_signatures.rs: one copy for every end-to-end test.
#[path = "../http_common/mod.rs"]
mod http_common;

// The module's surface, flat; each test binary uses a part of it, hence the allows.
#[allow(unused_imports)]
pub use self::http::{
    Reply, header_of, post_form, raw_exchange, read_raw, send, status_of, stream_target, try_send,
};
#[allow(unused_imports)]
pub use audio::{after_silence, best_correlation, drum, speech};
pub use http_common::twilio_sign;
#[allow(unused_imports)]
pub use logs::{Logs, pacer_underruns};
#[allow(unused_imports)]
pub use server::{TestServer, temp_dir};
#[allow(unused_imports)]
pub use sim::{clears_at, heard_between, played_bytes, twilio_call};
#[allow(unused_imports)]
pub use ws::{
    Ending, Ws, media, open_call, open_call_over, read_media, read_to_end, silence_payload,
    start_message, ws_connect,
};

/// The auth token every test server is configured with.
pub const TOKEN: &str = "support-auth-token";

/// The AccountSid of every test call.
pub const ACCOUNT_SID: &str = "AC00000000000000000000000000000000";

/// A CallSid for test call number `n`.
pub fn call_sid(n: u32) -> String {
    format!("CA{n:032x}")
}

/// A StreamSid for test call number `n`.
pub fn stream_sid(n: u32) -> String {
    format!("MZ{n:032x}")
}

/// The voice webhook's form parameters for call `n`, as Twilio sends them.
pub fn voice_params(n: u32) -> Vec<(&'static str, String)> {
    vec![
        ("AccountSid", ACCOUNT_SID.to_owned()),
        ("CallSid", call_sid(n)),
        ("CallStatus", "ringing".to_owned()),
        ("From", "+15550001111".to_owned()),
        ("To", "+15550002222".to_owned()),
    ]
}
