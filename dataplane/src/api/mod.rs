//! The OpenAI-compatible API: the route table and thin handlers. Every route
//! here sits behind the `authenticate` layer, so a handler cannot be written
//! without an authenticated [`Caller`](crate::pipeline::Caller).

mod body;
mod error;
mod models;

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::middleware;
use axum::response::Response;
use axum::routing::{MethodRouter, get, post};
use http::{HeaderMap, Method};

pub(crate) use body::{RequestBody, Rewrite, StreamOptionsEdit, read as read_body};
pub use error::{ApiError, Relayed};

use crate::pipeline::{self, Caller, authenticate};
use crate::providers::Operation;
use crate::state::Gateway;

/// Every route of the client API. All of them authenticate; the listener for
/// probes and metrics is separate (see `server::admin`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApiRoute {
    ChatCompletions,
    Embeddings,
    ListModels,
    RetrieveModel,
}

impl ApiRoute {
    pub const ALL: [ApiRoute; 4] =
        [ApiRoute::ChatCompletions, ApiRoute::Embeddings, ApiRoute::ListModels, ApiRoute::RetrieveModel];

    /// The route's path pattern (axum syntax).
    pub fn path(self) -> &'static str {
        match self {
            ApiRoute::ChatCompletions => "/v1/chat/completions",
            ApiRoute::Embeddings => "/v1/embeddings",
            ApiRoute::ListModels => "/v1/models",
            ApiRoute::RetrieveModel => "/v1/models/{*id}",
        }
    }

    /// A concrete path that matches the route (for tests and examples).
    pub fn example_path(self) -> &'static str {
        match self {
            ApiRoute::RetrieveModel => "/v1/models/gpt-4o",
            other => other.path(),
        }
    }

    pub fn method(self) -> Method {
        match self {
            ApiRoute::ChatCompletions | ApiRoute::Embeddings => Method::POST,
            ApiRoute::ListModels | ApiRoute::RetrieveModel => Method::GET,
        }
    }

    pub(crate) fn from_path(pattern: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.path() == pattern)
    }

    /// The upstream operation, for routes that go upstream.
    pub(crate) fn operation(self) -> Option<Operation> {
        match self {
            ApiRoute::ChatCompletions => Some(Operation::Chat),
            ApiRoute::Embeddings => Some(Operation::Embeddings),
            ApiRoute::ListModels | ApiRoute::RetrieveModel => None,
        }
    }

    fn handler(self) -> MethodRouter<Arc<Gateway>> {
        match self {
            ApiRoute::ChatCompletions | ApiRoute::Embeddings => post(upstream),
            ApiRoute::ListModels => get(models::list),
            ApiRoute::RetrieveModel => get(models::retrieve),
        }
    }
}

/// The `/v1` router, authenticated as a whole.
pub(crate) fn router(gw: Arc<Gateway>) -> Router<Arc<Gateway>> {
    ApiRoute::ALL
        .into_iter()
        .fold(Router::new(), |router, route| router.route(route.path(), route.handler()))
        .route_layer(middleware::from_fn_with_state(gw, authenticate::layer))
}

/// Chat completions and embeddings: the pipeline.
async fn upstream(State(gw): State<Arc<Gateway>>, caller: Caller, headers: HeaderMap, body: Body) -> Response {
    pipeline::serve(gw, caller, headers, body).await
}
