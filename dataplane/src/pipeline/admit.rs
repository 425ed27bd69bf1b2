//! `admit`: whether this key may make this request now. Today: the key's model
//! allowlist. Rate limits, concurrency and budget reservations are decided
//! here too, against state in the registry, before any upstream is called.

use super::Context;
use crate::api::{ApiError, RequestBody};
use crate::state::Runtime;

pub(super) fn admit(ctx: &Context, rt: &Runtime, request: &RequestBody<'_>) -> Result<(), ApiError> {
    let model = request.model.as_ref();
    if !rt.model_allowed(ctx.key, model) {
        return Err(ApiError::forbidden("model_not_allowed", format!("This API key may not use the model `{model}`.")));
    }
    Ok(())
}
