//! The client API — OpenAI's (chat completions, embeddings, models, the
//! Responses API) and Anthropic's Messages API (`/v1/messages`,
//! `/v1/messages/count_tokens`):
//! the route table, the dispatcher that authenticates every route before its
//! handler, and thin handlers — which take an authenticated
//! [`Caller`](crate::pipeline::Caller), so one cannot be written without
//! authentication. Each route answers errors in its API's shape ([`Dialect`]).

mod body;
mod error;
mod models;
mod response;

use std::convert::Infallible;
use std::future::{Future, Ready, ready};
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::future::Either;
use http::{HeaderValue, Method};
use hyper::body::Incoming;
use tower::Service;

pub(crate) use body::{RequestBody, Rewrite, StreamOptionsEdit, read as read_body};
pub use error::{ApiError, Dialect, Relayed};
pub(crate) use response::{Response, ResponseBody};

use crate::pipeline::authenticate::authenticate;
use crate::pipeline::{self, Caller};
use crate::providers::Operation;
use crate::server::{RequestId, TakesRequestId};
use crate::state::Gateway;

/// Every route of the client API. All of them authenticate; the listener for
/// probes and metrics is separate (see `server::admin`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApiRoute {
    ChatCompletions,
    Embeddings,
    ListModels,
    RetrieveModel,
    /// Anthropic's Messages API.
    Messages,
    /// Anthropic's token counting.
    CountTokens,
    /// OpenAI's Responses API.
    Responses,
}

impl ApiRoute {
    pub const ALL: [ApiRoute; 7] = [
        ApiRoute::ChatCompletions,
        ApiRoute::Embeddings,
        ApiRoute::ListModels,
        ApiRoute::RetrieveModel,
        ApiRoute::Messages,
        ApiRoute::CountTokens,
        ApiRoute::Responses,
    ];

    /// The route's path pattern.
    pub fn path(self) -> &'static str {
        match self {
            ApiRoute::ChatCompletions => "/v1/chat/completions",
            ApiRoute::Embeddings => "/v1/embeddings",
            ApiRoute::ListModels => "/v1/models",
            ApiRoute::RetrieveModel => "/v1/models/{id}",
            ApiRoute::Messages => "/v1/messages",
            ApiRoute::CountTokens => "/v1/messages/count_tokens",
            ApiRoute::Responses => "/v1/responses",
        }
    }

    /// The error shape the route's clients parse.
    pub fn dialect(self) -> Dialect {
        match self {
            ApiRoute::Messages | ApiRoute::CountTokens => Dialect::Anthropic,
            ApiRoute::Responses => Dialect::Responses,
            _ => Dialect::OpenAi,
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
            ApiRoute::ChatCompletions
            | ApiRoute::Embeddings
            | ApiRoute::Messages
            | ApiRoute::CountTokens
            | ApiRoute::Responses => Method::POST,
            ApiRoute::ListModels | ApiRoute::RetrieveModel => Method::GET,
        }
    }

    /// The route a request path would reach, if any.
    pub(crate) fn of_request_path(path: &str) -> Option<Self> {
        match path {
            "/v1/chat/completions" => Some(ApiRoute::ChatCompletions),
            "/v1/embeddings" => Some(ApiRoute::Embeddings),
            "/v1/models" => Some(ApiRoute::ListModels),
            "/v1/messages" => Some(ApiRoute::Messages),
            "/v1/messages/count_tokens" => Some(ApiRoute::CountTokens),
            "/v1/responses" => Some(ApiRoute::Responses),
            _ if path.strip_prefix("/v1/models/").is_some_and(|id| !id.is_empty()) => Some(ApiRoute::RetrieveModel),
            _ => None,
        }
    }

    /// The upstream operation, for routes that go upstream.
    pub(crate) fn operation(self) -> Option<Operation> {
        match self {
            ApiRoute::ChatCompletions => Some(Operation::Chat),
            ApiRoute::Embeddings => Some(Operation::Embeddings),
            ApiRoute::Messages => Some(Operation::Messages),
            ApiRoute::CountTokens => Some(Operation::CountTokens),
            ApiRoute::Responses => Some(Operation::Responses),
            ApiRoute::ListModels | ApiRoute::RetrieveModel => None,
        }
    }

    /// Runs the route's handler for an authenticated caller. Generic over the
    /// body: the client listener's hyper bodies, and the UI playground's
    /// (admin listener) axum bodies.
    async fn handle<B>(self, gw: Arc<Gateway>, caller: Caller, request: http::Request<B>) -> Response
    where
        B: http_body::Body<Data = bytes::Bytes> + Unpin,
        B::Error: std::fmt::Display,
    {
        match self {
            ApiRoute::ChatCompletions
            | ApiRoute::Embeddings
            | ApiRoute::Messages
            | ApiRoute::CountTokens
            | ApiRoute::Responses => {
                let (parts, body) = request.into_parts();
                pipeline::serve(gw, caller, &parts.headers, body).await
            }
            ApiRoute::ListModels => models::list(gw, caller),
            ApiRoute::RetrieveModel => {
                let id = request.uri().path().strip_prefix("/v1/models/").unwrap_or_default();
                models::retrieve(gw, caller, id)
            }
        }
    }
}

/// The API for one client connection: finds the route (404 for none, 405 for
/// the wrong method), authenticates — every route, before its handler — and
/// runs the handler. Dispatch is a plain match: no router state is cloned
/// and nothing is boxed but the handler's future.
#[derive(Clone)]
pub(crate) struct Api {
    gw: Arc<Gateway>,
    /// The connection's peer address.
    peer: IpAddr,
    /// The id of the request about to be called.
    request_id: HeaderValue,
}

impl Api {
    pub fn new(gw: Arc<Gateway>, peer: IpAddr) -> Self {
        Self { gw, peer, request_id: RequestId::none() }
    }
}

impl TakesRequestId for Api {
    fn set_request_id(&mut self, id: HeaderValue) {
        self.request_id = id;
    }
}

type BoxedResponse = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

impl Service<http::Request<Incoming>> for Api {
    type Response = Response;
    type Error = Infallible;
    type Future = Either<Ready<Result<Response, Infallible>>, BoxedResponse>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Incoming>) -> Self::Future {
        let request_id = std::mem::replace(&mut self.request_id, RequestId::none());
        match admit(&self.gw, self.peer, &request, request_id) {
            Err((refusal, dialect)) => Either::Left(ready(Ok(refusal.response_in(dialect)))),
            Ok((route, caller)) => {
                let gw = self.gw.clone();
                // The handler's future is several kilobytes: allocated first
                // and written in place, where `Box::pin(fut)` would build it
                // on the stack and copy all of it into the box.
                let handler = Box::write(Box::new_uninit(), async move { Ok(route.handle(gw, caller, request).await) });
                Either::Right(Box::into_pin(handler))
            }
        }
    }
}

/// Finds the route (404 for none, 405 for the wrong method) and authenticates;
/// a refusal comes back with the shape to answer it in.
fn admit<B>(
    gw: &Arc<Gateway>,
    peer: IpAddr,
    request: &http::Request<B>,
    request_id: HeaderValue,
) -> Result<(ApiRoute, Caller), (ApiError, Dialect)> {
    let Some(route) = ApiRoute::of_request_path(request.uri().path()) else {
        return Err((ApiError::route_not_found(), Dialect::OpenAi));
    };
    if request.method() != route.method() {
        return Err((ApiError::method_not_allowed(request.method()), route.dialect()));
    }
    match authenticate(gw, peer, request.headers(), route, request_id) {
        Ok(caller) => Ok((route, caller)),
        Err(refusal) => Err((refusal, route.dialect())),
    }
}

/// One client API request served in-process, as the client listener would
/// serve it from `peer` (same authentication, limits, routing and metering):
/// the UI playground's calls, made on the admin listener. The answer carries
/// its request id.
pub(crate) async fn serve_one<B>(gw: Arc<Gateway>, peer: IpAddr, request: http::Request<B>) -> Response
where
    B: http_body::Body<Data = bytes::Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let request_id = crate::server::new_request_id();
    let client_request_id = crate::server::client_request_id(request.headers());
    let mut response = match admit(&gw, peer, &request, request_id.clone()) {
        Err((refusal, dialect)) => refusal.response_in(dialect),
        Ok((route, caller)) => route.handle(gw, caller, request).await,
    };
    response.headers_mut().insert(crate::server::X_REQUEST_ID.clone(), request_id);
    if let Some(id) = client_request_id {
        response.headers_mut().insert(crate::server::X_CLIENT_REQUEST_ID.clone(), id);
    }
    response
}
