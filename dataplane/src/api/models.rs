//! `GET /v1/models` and `GET /v1/models/{id}`: the models the key may use
//! (<https://platform.openai.com/docs/api-reference/models>).

use std::sync::Arc;

use http::StatusCode;
use serde_json::json;

use super::ApiError;
use super::response::{Response, ResponseBody, json as json_response_of};
use crate::pipeline::{Caller, Context};
use crate::state::Gateway;

fn model_object(id: &str) -> serde_json::Value {
    json!({"id": id, "object": "model", "created": 0, "owned_by": "llm-weaver"})
}

fn json_response(body: serde_json::Value) -> Response {
    json_response_of(StatusCode::OK, ResponseBody::whole(serde_json::to_vec(&body).unwrap_or_default()))
}

pub(super) fn list(gw: Arc<Gateway>, caller: Caller) -> Response {
    let mut ctx = Context::new(gw, caller);
    let data: Vec<_> = ctx.rt.models_for(ctx.key).into_iter().map(model_object).collect();
    ctx.record.status = StatusCode::OK.as_u16();
    json_response(json!({"object": "list", "data": data}))
}

pub(super) fn retrieve(gw: Arc<Gateway>, caller: Caller, id: &str) -> Response {
    let mut ctx = Context::new(gw, caller);
    let response = if ctx.rt.models_for(ctx.key).contains(&id) {
        json_response(model_object(id))
    } else {
        ApiError::model_not_found(id).response()
    };
    ctx.record.status = response.status().as_u16();
    response
}
