//! `POST /calls`: outbound calls through the Twilio REST API.

use super::*;

/// `POST /calls`: starts an outbound call through Twilio's REST API whose TwiML is this
/// server's voice webhook, so it runs the same agent path as an inbound call. 404 while
/// `CONTROL_TOKEN` is unset (the route is off), 401 without `Authorization: Bearer
/// <CONTROL_TOKEN>`, 400 for a bad request, 502 when Twilio refuses; 201 with the CallSid.
///
/// The body is JSON (`{"to": "+1…", "from": "+1…", "params": {"k": "v"}}`) or a form (`to`,
/// `from`, and `param=k=v` for each parameter).
pub(super) async fn create_call(
    state: &AppState,
    req: Request<Incoming>,
    id: u64,
) -> Result<Response<Body>, HttpError> {
    let Some(token) = &state.config.control_token else {
        return Err(HttpError::NotFound);
    };
    let authorization = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .map(HeaderValue::as_bytes);
    if !crate::metrics::authorized(Some(token), authorization) {
        tracing::warn!(id, "outbound call refused: missing or wrong bearer token");
        return Err(HttpError::Unauthorized);
    }
    let (parts, body) = req.into_parts();
    let body = read_body(&parts.headers, body).await?;
    let content_type = content_type(&parts.headers);
    let request = if content_type.starts_with("application/json") {
        serde_json::from_slice::<crate::twilio::Outbound>(&body)
            .map_err(|e| HttpError::BadRequest(format!("json body: {e}")))?
    } else if content_type.starts_with("application/x-www-form-urlencoded") {
        outbound_from_form(&body)?
    } else {
        return Err(HttpError::UnsupportedMediaType);
    };
    let (Some(public_url), Some(client)) = (&state.config.public_url, &state.twilio) else {
        // Configuration refuses CONTROL_TOKEN without both.
        return Err(HttpError::Internal(
            "POST /calls needs PUBLIC_URL and the twilio rest api".to_owned(),
        ));
    };
    let call = request
        .to_new_call(public_url, state.config.twilio.from.as_deref())
        .map_err(|e| HttpError::BadRequest(e.to_string()))?;
    let call_sid = client.create_call(&call).await.map_err(|e| {
        tracing::warn!(id, to = %call.to, error = %e, "outbound call not created");
        HttpError::Upstream(e.to_string())
    })?;
    tracing::info!(id, call_sid = %call_sid, to = %call.to, from = %call.from, params = request.params.len(), "OUTBOUND_CALL created");
    let mut resp = json_response(&serde_json::json!({ "callSid": call_sid }));
    *resp.status_mut() = StatusCode::CREATED;
    Ok(resp)
}
/// An outbound call request from a form: `to`, `from`, `param=k=v` (repeated).
pub(super) fn outbound_from_form(body: &[u8]) -> Result<crate::twilio::Outbound, HttpError> {
    let fields =
        form::decode(body).map_err(|e| HttpError::BadRequest(format!("form body: {e}")))?;
    let mut request = crate::twilio::Outbound::default();
    for (key, value) in fields {
        match key.as_str() {
            "to" => request.to = value,
            "from" => request.from = Some(value),
            "param" => {
                let (k, v) = value.split_once('=').ok_or_else(|| {
                    HttpError::BadRequest(format!("param {value:?} is not name=value"))
                })?;
                request.params.insert(k.to_owned(), v.to_owned());
            }
            other => {
                return Err(HttpError::BadRequest(format!("unknown field {other:?}")));
            }
        }
    }
    Ok(request)
}
