//! `admit`: whether this key may make this request now: the key's model
//! allowlist, and whether its usage can be kept (a full usage queue and spool
//! refuse with 503 rather than serve unmetered traffic). Rate limits,
//! concurrency and budget reservations are decided here too, against state
//! in the registry, before any upstream is called.

use super::Context;
use crate::api::{ApiError, RequestBody};
use crate::state::Runtime;

pub(super) fn admit(ctx: &Context, rt: &Runtime, request: &RequestBody<'_>) -> Result<(), ApiError> {
    if ctx.gw.usage.as_ref().is_some_and(|sink| sink.refuses()) {
        return Err(ApiError::unavailable(
            "metering_unavailable",
            "The gateway cannot record usage right now (its usage store and spool are full); try again shortly.",
        ));
    }
    let model = request.model.as_ref();
    if !rt.model_allowed(ctx.key, model) {
        return Err(ApiError::forbidden("model_not_allowed", format!("This API key may not use the model `{model}`.")));
    }
    Ok(())
}
