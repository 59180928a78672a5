//! `/healthz`, `/readyz`, `/metrics` and `/version`.

use super::*;

/// `GET /healthz`: alive (liveness). Always 200 while the process serves; the body says
/// whether the store takes writes (`store_error` says why not) and whether the instance is
/// draining.
pub(super) async fn healthz(state: &AppState) -> Response<Body> {
    let checks = state.verifier.is_some();
    let store = state.store.check(STORE_CHECK_TIMEOUT).await;
    let mut body = serde_json::json!({
        "status": if store.is_ok() { "ok" } else { "degraded" },
        "store": if store.is_ok() { "ok" } else { "degraded" },
        "database": match state.store.dialect() {
            crate::store::Dialect::Postgres => "postgres",
            crate::store::Dialect::Sqlite => "sqlite",
        },
        "instance": state.config.instance_id,
        "draining": *state.draining.borrow(),
        "active_calls": state.active_calls.count(),
        "engine_calls": state.engine.counters().active_calls.load(std::sync::atomic::Ordering::Relaxed),
        "engine_workers": state.engine.workers(),
        "signature_checks": checks,
    });
    if let Err(trouble) = store {
        body["store_error"] = trouble.label().into();
    }
    if !checks {
        body["warning"] = "signature checks are off: TWILIO_AUTH_TOKEN is not set".into();
    }
    json_response(&body)
}
/// `GET /readyz`: 200 when this instance takes new calls (not draining, the store takes
/// writes, below `MAX_CALLS`), else 503 with the reason. Load balancers route new calls by it.
pub(super) async fn readyz(state: &AppState) -> Response<Body> {
    let store = state.store.check(STORE_CHECK_TIMEOUT).await;
    match state.ready() {
        Ok(()) => json_response(&serde_json::json!({ "status": "ready" })),
        Err(reason) => {
            let mut body = serde_json::json!({
                "status": "not ready",
                "reason": reason,
            });
            if let Err(trouble) = store {
                body["store_error"] = trouble.label().into();
            }
            let mut resp = json_response(&body);
            *resp.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            resp
        }
    }
}
/// Longest a health or readiness check waits for the store to answer a ping. (Whether it
/// takes writes is the latest write's outcome: the webhooks' and the periodic probe's,
/// [`crate::store::keep_probing`].)
pub(super) const STORE_CHECK_TIMEOUT: Duration = Duration::from_secs(2);
/// `GET /metrics`: the counters in the OpenMetrics text format, behind `METRICS_TOKEN` when set.
pub(super) fn metrics(state: &AppState, headers: &HeaderMap) -> Result<Response<Body>, HttpError> {
    let authorization = headers
        .get(http::header::AUTHORIZATION)
        .map(HeaderValue::as_bytes);
    if !crate::metrics::authorized(state.config.metrics_token.as_ref(), authorization) {
        tracing::warn!("metrics scrape refused: missing or wrong bearer token");
        return Err(HttpError::Unauthorized);
    }
    Ok(text_response(
        StatusCode::OK,
        crate::metrics::CONTENT_TYPE,
        crate::metrics::encode(&state.metrics_registry),
    ))
}
pub(super) fn version(state: &AppState) -> Response<Body> {
    let commit = option_env!("HANDSET_BUILD_COMMIT")
        .map(str::to_owned)
        .or_else(|| state.config.build_commit.clone());
    json_response(&serde_json::json!({
        "package": env!("CARGO_PKG_NAME"),
        "version": env!("CARGO_PKG_VERSION"),
        "deploy_id": state.config.deploy_id,
        "commit": commit,
    }))
}
