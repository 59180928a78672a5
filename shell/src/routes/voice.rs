//! The voice webhook and where a call goes after its stream: the TwiML that opens the
//! stream, the `<Connect action>` (the ending table), the end of a transfer, the fallback.

use super::*;

pub(super) async fn incoming_call(
    state: &AppState,
    hook: &Webhook,
    id: u64,
) -> Result<Response<Body>, HttpError> {
    let call_sid = hook
        .field("CallSid")
        .filter(|s| !s.is_empty())
        .ok_or_else(|| HttpError::BadRequest("missing CallSid".to_owned()))?;
    let identity = CallIdentity {
        call_sid: call_sid.to_owned(),
        account_sid: hook.field_or_empty("AccountSid"),
        from: hook.field_or_empty("From"),
        to: hook.field_or_empty("To"),
    };
    if state.at_capacity() {
        let max = state.config.max_calls;
        tracing::warn!(id, call_sid = %identity.call_sid, active = state.active_calls.count(), max, "CALL_REJECTED: at MAX_CALLS");
        return Ok(xml_response(twiml::say_and_hangup(&twiml::Say {
            text: &state.config.busy_prompt,
            voice: state.config.greeting.voice.as_deref(),
            language: Some(&state.config.greeting.language),
        })));
    }
    let hop = hop(hook);
    // In the shared store: the stream may open on any instance. A call gets one token per hop:
    // the same webhook again is a replay (Twilio requests it once), so it gets none.
    let Some(token) = state.tokens.issue(&identity, hop).await? else {
        tracing::warn!(id, call_sid = %identity.call_sid, hop, "voice webhook refused: this call already has a stream token from this hop (a replayed webhook)");
        return Err(HttpError::Conflict(
            "a stream token was already issued for this call",
        ));
    };
    let config = &state.config;
    // A call moved here from a draining instance has been greeted already.
    let greeting = (!config.greeting.text.is_empty() && hop == 0).then(|| twiml::Say {
        text: &config.greeting.text,
        voice: config.greeting.voice.as_deref(),
        language: Some(&config.greeting.language),
    });
    let action = if hop == 0 {
        hook.origin.http_url("/webhook/stream_ended")
    } else {
        hook.origin
            .http_url(&format!("/webhook/stream_ended?hop={hop}"))
    };
    let status_callback = hook.origin.http_url("/webhook/stream_status");
    let stream_url = hook.origin.ws_url(MEDIA_STREAM_PATH);
    let mut parameters = vec![
        ("callSid", identity.call_sid.as_str()),
        ("accountSid", identity.account_sid.as_str()),
        ("from", identity.from.as_str()),
        ("to", identity.to.as_str()),
        (TOKEN_PARAMETER, token.as_str()),
    ];
    // Per-call opt-in to a timeline: `?trace=1` on the voice webhook URL.
    if hook.field("trace") == Some("1") {
        parameters.push(("trace", "1"));
    }
    // Which way the call goes (`inbound`, `outbound-api`, …), for the agent's `start`.
    if let Some(direction) = hook.field("Direction").filter(|d| !d.is_empty()) {
        parameters.push(("direction", direction));
    }
    // A call moved here from a draining instance: its agent's `start` says `resumed`, and a
    // second drain moves it one hop further.
    let hop_text = hop.to_string();
    if hop > 0 {
        parameters.push(("hop", hop_text.as_str()));
    }
    // An outbound call's extra parameters, written by `POST /calls` into this URL.
    for (key, value) in &hook.query {
        if let Some(name) = key.strip_prefix(crate::twilio::PARAM_PREFIX)
            && crate::twilio::is_param_name(name)
            && parameters.len() < 8 + crate::twilio::MAX_PARAMS
        {
            parameters.push((name, value.as_str()));
        }
    }
    let xml = twiml::connect_stream(&twiml::ConnectStream {
        greeting,
        action: &action,
        stream_url: &stream_url,
        status_callback: &status_callback,
        parameters: &parameters,
    });
    tracing::info!(id, call_sid = %identity.call_sid, status = hook.field("CallStatus").unwrap_or(""), hop, "incoming call");
    Ok(xml_response(xml))
}
/// `<Connect action>`: the stream has ended. How the call goes on is decided from why it
/// ended, as stored by whichever instance ran the stream ([`crate::ending`]).
pub(super) async fn stream_ended(state: &AppState, hook: &Webhook, id: u64) -> Response<Body> {
    let call_sid = hook.field("CallSid").unwrap_or("");
    let hop = hop(hook);
    let record = match state.store.call(call_sid).await {
        Ok(record) => record,
        Err(e) => {
            tracing::error!(id, call_sid, error = %e, "stream ended: store unavailable, taking the fallback");
            None
        }
    };
    let reason = record
        .as_ref()
        .and_then(|r| r.end_reason.as_deref())
        .unwrap_or("unknown");
    match crate::ending::decide(
        record.as_ref().map(CallRecord::stream_end),
        hook.field("CallStatus"),
        hop,
    ) {
        Ending::Hangup => {
            tracing::info!(id, call_sid, reason, "stream ended: hanging up");
            xml_response(twiml::hangup())
        }
        Ending::Dial(transfer) => {
            tracing::info!(id, call_sid, target = %crate::ending::masked(transfer.to.as_str()), "stream ended: transferring");
            let action = hook.origin.http_url("/webhook/dial_ended");
            xml_response(twiml::dial(&twiml::Dial {
                target: &transfer.to,
                caller_id: transfer.caller_id.as_deref(),
                timeout_s: transfer.timeout_s,
                action: &action,
            }))
        }
        Ending::Redirect { next } => {
            tracing::info!(
                id,
                call_sid,
                reason,
                hop = next,
                "stream ended: instance draining, call redirected"
            );
            let url = hook
                .origin
                .http_url(&format!("/webhook/incoming_call?hop={next}"));
            xml_response(twiml::redirect(&url))
        }
        Ending::Fallback(why) => {
            tracing::info!(
                id,
                call_sid,
                reason,
                why,
                hop,
                "stream ended: recording a message"
            );
            fallback(state, hook)
        }
    }
}
/// `<Dial action>`: a transfer has ended. Its outcome is stored; a transfer that was not
/// answered takes the fallback, one that was ends the call.
pub(super) async fn dial_ended(
    state: &AppState,
    hook: &Webhook,
    id: u64,
) -> Result<Response<Body>, HttpError> {
    let call_sid = hook.field("CallSid").unwrap_or("");
    let status = hook.field("DialCallStatus").unwrap_or("");
    if !status.bytes().all(|b| b.is_ascii_lowercase() || b == b'-') || status.len() > 32 {
        return Err(HttpError::BadRequest("invalid DialCallStatus".to_owned()));
    }
    state.store.transfer_ended(call_sid, status).await?;
    if matches!(status, "completed" | "answered") {
        tracing::info!(id, call_sid, status, "transfer ended");
        return Ok(xml_response(twiml::hangup()));
    }
    tracing::warn!(id, call_sid, status, "transfer failed: recording a message");
    Ok(fallback(state, hook))
}
/// The apology, then `<Record>`.
pub(super) fn fallback(state: &AppState, hook: &Webhook) -> Response<Body> {
    let config = &state.config;
    let action = hook.origin.http_url("/webhook/handle_recording");
    xml_response(twiml::record_fallback(&twiml::RecordFallback {
        prompt: twiml::Say {
            text: &config.fallback_prompt,
            voice: config.greeting.voice.as_deref(),
            language: Some(&config.greeting.language),
        },
        action: &action,
        max_length_secs: config.record_max_length.as_secs(),
    }))
}
