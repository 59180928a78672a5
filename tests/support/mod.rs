//! Shared helpers for the end-to-end tests over real sockets:
//!
//! - [`server`]: the real server in-process on `127.0.0.1:0` ([`TestServer`]), set up as
//!   Twilio reaches it (its own address as `PUBLIC_URL`, [`TOKEN`] as auth token) or bare;
//! - [`signer`]: Twilio's request signature, written independently of the server's;
//! - [`http`]: requests with a real client, the signed voice webhook, raw HTTP, TwiML values;
//! - [`ws`]: Media Streams WebSockets spoken message by message;
//! - [`sim`]: whole Twilio-emulating calls through the simulator's client and
//!   `handset_sim::PlaybackModel`, and what the caller heard;
//! - [`audio`]: test audio and its comparison;
//! - [`logs`]: the server's log lines captured in memory;
//! - [`fakes`]: what Handset reaches out to (Twilio's media server, an agent).
//!
//! Everything is re-exported here, so tests write `support::TestServer`. All traffic stays on
//! loopback.

#![allow(dead_code, unreachable_pub)]

pub mod audio;
pub mod fakes;
pub mod http;
pub mod logs;
pub mod server;
pub mod signer;
pub mod sim;
pub mod ws;

// The module's surface, flat; each test binary uses a part of it, hence the allows.
#[allow(unused_imports)]
pub use self::http::{
    Reply, header_of, post_form, raw_exchange, read_raw, send, status_of, stream_target, try_send,
    twiml_attr, twiml_parameter,
};
#[allow(unused_imports)]
pub use audio::{after_silence, best_correlation, drum, speech};
#[allow(unused_imports)]
pub use logs::{Logs, pacer_underruns};
#[allow(unused_imports)]
pub use server::{Options, TestServer, temp_dir};
#[allow(unused_imports)]
pub use signer::twilio_sign;
#[allow(unused_imports)]
pub use sim::{clears_at, heard_between, played_bytes, twilio_call};
#[allow(unused_imports)]
pub use ws::{
    Ending, Ws, media, open_call, open_call_over, read_media, read_to_end, silence_payload,
    start_message, ws_connect,
};

/// The auth token of every server not started bare.
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
