//! Twilio's callbacks: recordings (a job for the recording worker), call status and stream
//! status, each stored once.

use super::*;

pub(super) async fn handle_recording(
    state: &AppState,
    hook: &Webhook,
    id: u64,
) -> Result<Response<Body>, HttpError> {
    let Some(url) = hook.field("RecordingUrl").filter(|u| !u.is_empty()) else {
        tracing::warn!(
            id,
            call_sid = hook.field("CallSid").unwrap_or(""),
            "recording callback without RecordingUrl"
        );
        return Ok(xml_response(twiml::hangup()));
    };
    let event = RecordingEvent {
        received_unix_ms: clock::unix_ms(),
        call_sid: hook.field_or_empty("CallSid"),
        account_sid: hook.field_or_empty("AccountSid"),
        recording_sid: hook.field_or_empty("RecordingSid"),
        recording_url: url.to_owned(),
        duration_secs: hook
            .field("RecordingDuration")
            .and_then(|d| d.trim().parse().ok()),
        digits: hook
            .field("Digits")
            .filter(|d| !d.is_empty())
            .map(str::to_owned),
    };
    // A RecordingSid that is present was checked with the other identifiers (`check_sids`).
    if event.recording_sid.is_empty() {
        return Err(HttpError::BadRequest("missing RecordingSid".to_owned()));
    }
    let new = state
        .store
        .insert_recording(&event, clock::unix_ms())
        .await?;
    tracing::info!(id, call_sid = %event.call_sid, recording_sid = %event.recording_sid, duration_secs = ?event.duration_secs, new, "recording stored");
    state.recording_stored.notify_one();
    Ok(xml_response(twiml::hangup()))
}
pub(super) async fn call_status(
    state: &AppState,
    hook: &Webhook,
    id: u64,
) -> Result<Response<Body>, HttpError> {
    let event = CallStatusEvent {
        received_unix_ms: clock::unix_ms(),
        call_sid: hook.field_or_empty("CallSid"),
        call_status: hook.field_or_empty("CallStatus"),
        sequence_number: hook
            .field("SequenceNumber")
            .and_then(|s| s.trim().parse().ok()),
        duration_secs: hook
            .field("CallDuration")
            .and_then(|s| s.trim().parse().ok()),
    };
    let new = state.store.insert_call_status(&event).await?;
    tracing::info!(id, call_sid = %event.call_sid, call_status = %event.call_status, sequence = ?event.sequence_number, new, "call status");
    Ok(text_response(
        StatusCode::OK,
        "text/plain; charset=utf-8",
        String::new(),
    ))
}
pub(super) async fn stream_status(
    state: &AppState,
    hook: &Webhook,
    id: u64,
) -> Result<Response<Body>, HttpError> {
    let event = StreamStatusEvent {
        received_unix_ms: clock::unix_ms(),
        stream_sid: hook.field_or_empty("StreamSid"),
        stream_event: hook.field_or_empty("StreamEvent"),
        call_sid: hook.field_or_empty("CallSid"),
        stream_error: hook.field("StreamError").map(str::to_owned),
    };
    let new = state.store.insert_stream_status(&event).await?;
    let (call_sid, stream_sid, event_name) =
        (&event.call_sid, &event.stream_sid, &event.stream_event);
    match &event.stream_error {
        Some(error) => {
            tracing::warn!(id, %call_sid, %stream_sid, event = %event_name, %error, new, "stream status")
        }
        None => {
            tracing::info!(id, %call_sid, %stream_sid, event = %event_name, new, "stream status")
        }
    }
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = StatusCode::NO_CONTENT;
    Ok(resp)
}
