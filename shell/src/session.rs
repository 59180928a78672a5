//! Admission of a media stream: once Twilio's `start` has arrived, whether this instance takes
//! the call, and with what agent. The bridge ([`crate::bridge`]) owns the socket loops; this
//! module owns the policy, in this order:
//!
//! 1. a draining instance takes no new stream (the call is redirected to a ready one), checked
//!    before the token so the token is not spent;
//! 2. the single-use stream token must redeem for the `CallSid` (once, fleet-wide);
//! 3. the instance must be below `MAX_CALLS` ([`AppState::at_capacity`], the same check the
//!    voice webhook and `/readyz` make);
//! 4. the agent is the remote one (`AGENT_URL`, OpenAI) or the built-in echo, and the call is
//!    traced when opted in (`trace=1`) or sampled (`TRACE_SAMPLE`).
//!
//! A refusal is a [`CloseReason`]; the bridge stores it with the call and closes the socket.

use std::collections::HashMap;
use std::sync::Arc;

use handset_engine::agent::echo::{EchoAgent, EchoConfig};
use handset_engine::agent::{Agent, CallInfo};

use crate::agent::remote::Shared;
use crate::config::Config;
use crate::media_stream::CloseReason;
use crate::media_stream::StartMeta;
use crate::state::AppState;
use crate::tokens::TOKEN_PARAMETER;

/// A call this instance takes.
pub(crate) struct Admitted {
    /// Who the call is, for the engine and the agent.
    pub(crate) info: CallInfo,
    /// `AccountSid`, from the redeemed token.
    pub(crate) account_sid: String,
    /// The call's agent.
    pub(crate) agent: Box<dyn Agent>,
    /// The remote agent's shared state (its transfer), when the agent is remote.
    pub(crate) control: Option<Arc<Shared>>,
    /// Whether the call's timeline is recorded.
    pub(crate) traced: bool,
}

/// Decides whether this instance takes the stream `meta` started (see the module docs).
/// `draining` is the instance's drain flag as the stream saw it.
pub(crate) async fn admit(
    state: &AppState,
    meta: &StartMeta,
    draining: bool,
    id: u64,
) -> Result<Admitted, CloseReason> {
    let call_sid = meta.call_sid.as_str();
    if draining {
        tracing::info!(
            id,
            call_sid,
            "WS start refused: draining, the call is redirected"
        );
        return Err(CloseReason::Draining);
    }
    let token = meta
        .custom_parameters
        .get(TOKEN_PARAMETER)
        .map_or("", String::as_str);
    let identity = match state.tokens.redeem(token, call_sid).await {
        Ok(Ok(identity)) => identity,
        Ok(Err(e)) => {
            tracing::warn!(id, call_sid, stream_sid = %meta.stream_sid, reason = %e, "WS start refused: stream token");
            return Err(CloseReason::InvalidToken);
        }
        Err(e) => {
            tracing::error!(id, call_sid, error = %e, "WS start refused: store unavailable");
            return Err(CloseReason::StoreUnavailable);
        }
    };
    if state.at_capacity() {
        tracing::warn!(
            id,
            call_sid,
            max = state.config.max_calls,
            "WS start refused: at MAX_CALLS"
        );
        return Err(CloseReason::Busy);
    }
    let info = CallInfo {
        call_sid: meta.call_sid.clone(),
        stream_sid: meta.stream_sid.clone(),
        from: identity.from,
        to: identity.to,
    };
    let (agent, control): (Box<dyn Agent>, _) = match &state.config.agent {
        Some(agent) => {
            let (agent, shared) = crate::agent::start(agent, &info, &meta.custom_parameters, id);
            (Box::new(agent), Some(shared))
        }
        None => (Box::new(EchoAgent::new(EchoConfig::default())), None),
    };
    Ok(Admitted {
        info,
        account_sid: identity.account_sid,
        agent,
        control,
        traced: traced(
            &state.config,
            &meta.custom_parameters,
            rand::random::<f64>(),
        ),
    })
}

/// At the drain deadline, asks Twilio (REST `Calls` update) to fetch the voice webhook again
/// for this call, one hop further, so it goes on on a ready instance. `false` (nothing asked)
/// without REST credentials, without `PUBLIC_URL`, or after the last hop; the bridge then
/// closes the stream and the `<Connect action>` moves the call. The request runs in the
/// background; its failure is logged and the bridge closes the stream shortly after anyway.
pub(crate) fn hand_over(state: &AppState, meta: &StartMeta, id: u64) -> bool {
    let (Some(client), Some(public)) = (&state.twilio, &state.config.public_url) else {
        return false;
    };
    let hop = meta
        .custom_parameters
        .get("hop")
        .and_then(|h| h.parse::<u32>().ok())
        .unwrap_or(0);
    if hop >= crate::ending::MAX_HOPS {
        return false;
    }
    let url = public.http_url(&format!("/webhook/incoming_call?hop={}", hop + 1));
    let client = client.clone();
    let call_sid = meta.call_sid.clone();
    tokio::spawn(async move {
        match client
            .update_call(&call_sid, &crate::twilio::UpdateCall::Redirect(url))
            .await
        {
            Ok(()) => {
                tracing::info!(id, call_sid = %call_sid, hop = hop + 1, "HANDOVER: Twilio moves the call to a ready instance")
            }
            Err(e) => {
                tracing::warn!(id, call_sid = %call_sid, error = %e, "HANDOVER not accepted: the stream is closed instead")
            }
        }
    });
    true
}

/// Whether a call is traced: `TRACE_DIR` is set and the call opted in (`trace=1` among its
/// parameters) or falls in the `TRACE_SAMPLE` share (`draw` uniform in [0, 1)).
fn traced(config: &Config, parameters: &HashMap<String, String>, draw: f64) -> bool {
    config.trace_dir.is_some()
        && (parameters.get("trace").is_some_and(|v| v == "1")
            || (config.trace_sample > 0.0 && draw < config.trace_sample))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_are_traced_when_opted_in_or_sampled_and_never_without_a_trace_dir() {
        let opted = HashMap::from([("trace".to_owned(), "1".to_owned())]);
        let plain = HashMap::new();
        let off = Config::default();
        assert!(!traced(&off, &opted, 0.0));
        let on = Config::from_vars([("TRACE_DIR", "/tmp/t"), ("TRACE_SAMPLE", "0.25")]).unwrap();
        assert!(traced(&on, &opted, 0.99));
        assert!(traced(&on, &plain, 0.10));
        assert!(!traced(&on, &plain, 0.25));
        let unsampled = Config::from_vars([("TRACE_DIR", "/tmp/t")]).unwrap();
        assert!(!traced(&unsampled, &plain, 0.0));
    }
}
