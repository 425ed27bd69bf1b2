//! The listeners: the client API behind one ordered layer stack, the admin
//! listener (probes, metrics), and serving with graceful shutdown.

mod admin;
pub mod channel_test;
mod request_id;
pub(crate) mod ui;
pub(crate) mod usage_api;

use std::convert::Infallible;
use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::future::Either;
use http::{HeaderName, HeaderValue, Method};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tower::{Layer, Service};
use tower_http::cors::{AllowHeaders, AllowOrigin, Cors, CorsLayer};

pub(crate) use admin::{AdminGate, UsageApi};
pub(crate) use request_id::{
    RequestId, TakesRequestId, X_CLIENT_REQUEST_ID, X_REQUEST_ID, client_request_id, new_id as new_request_id,
};

use crate::api::{Api, Response};
use crate::state::Gateway;
use request_id::{Envelope, EnvelopeLayer};

/// Browser origins allowed to call the API (CORS); empty: CORS is off.
#[derive(Clone, Debug, Default)]
pub(crate) struct CorsOrigins {
    pub origins: Vec<HeaderValue>,
}

impl CorsOrigins {
    /// The layer, or `None` when no origin is allowed. `*` allows any origin.
    fn layer(&self) -> Option<CorsLayer> {
        if self.origins.is_empty() {
            return None;
        }
        let origins = if self.origins.iter().any(|o| o == "*") {
            AllowOrigin::any()
        } else {
            AllowOrigin::list(self.origins.iter().cloned())
        };
        let exposed: Vec<HeaderName> = ["x-request-id", "x-client-request-id", "retry-after"]
            .map(HeaderName::from_static)
            .into_iter()
            .chain(crate::limits::HEADER_NAMES)
            .collect();
        Some(
            CorsLayer::new()
                .allow_origin(origins)
                .allow_methods([Method::GET, Method::POST, Method::OPTIONS])
                // Browser SDKs send their own headers (x-stainless-*, openai-beta...).
                .allow_headers(AllowHeaders::mirror_request())
                .expose_headers(exposed)
                .max_age(Duration::from_secs(600)),
        )
    }
}

/// The client API for one connection, one ordered stack. Outermost first:
/// CORS answers preflights for allowed origins (when configured); the
/// envelope (request id, span, panic -> 500); the API dispatcher, which
/// authenticates every route before its handler (404 for unknown URLs).
pub(crate) type ClientService = MaybeCors;

/// The enveloped API, behind the CORS layer when origins are configured.
#[derive(Clone)]
#[expect(
    clippy::large_enum_variant,
    reason = "hyper's adapter clones the service for every request: a box would cost an allocation each time"
)]
pub(crate) enum MaybeCors {
    With(Cors<Envelope<Api>>),
    Without(Envelope<Api>),
}

type Request = http::Request<Incoming>;

impl Service<Request> for MaybeCors {
    type Response = Response;
    type Error = Infallible;
    type Future =
        Either<<Cors<Envelope<Api>> as Service<Request>>::Future, <Envelope<Api> as Service<Request>>::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        match self {
            MaybeCors::With(s) => s.poll_ready(cx),
            MaybeCors::Without(s) => s.poll_ready(cx),
        }
    }

    fn call(&mut self, request: Request) -> Self::Future {
        match self {
            MaybeCors::With(s) => Either::Left(s.call(request)),
            MaybeCors::Without(s) => Either::Right(s.call(request)),
        }
    }
}

/// Makes the client stack for each accepted connection (its peer address is
/// part of it, so no request carries connection info around).
#[derive(Clone)]
pub(crate) struct ClientStack {
    gw: Arc<Gateway>,
    cors: Option<CorsLayer>,
}

impl ClientStack {
    pub fn new(gw: Arc<Gateway>, cors: &CorsOrigins) -> Self {
        Self { gw, cors: cors.layer() }
    }

    pub fn for_peer(&self, peer: IpAddr) -> ClientService {
        let api = EnvelopeLayer.layer(Api::new(self.gw.clone(), peer));
        match &self.cors {
            Some(cors) => MaybeCors::With(cors.layer(api)),
            None => MaybeCors::Without(api),
        }
    }
}

/// The two bound listeners, and what the admin one serves besides probes and metrics.
pub(crate) struct Listeners {
    pub client: TcpListener,
    pub admin: TcpListener,
    pub usage_api: UsageApi,
    /// Guards the admin routes (the channel test); with neither token they are off.
    pub admin_gate: AdminGate,
}

/// Serves until `shutdown` resolves, then stops accepting client connections,
/// lets requests and streams in flight finish for up to `grace`, and returns.
/// The admin listener answers until then (`/readyz` says 503 while draining).
pub(crate) async fn serve(
    listeners: Listeners,
    gw: Arc<Gateway>,
    cors: &CorsOrigins,
    shutdown: impl Future<Output = ()> + Send + 'static,
    grace: Duration,
) -> std::io::Result<()> {
    let admin_done = Arc::new(tokio::sync::Notify::new());
    let admin = {
        let stop = admin_done.clone();
        let app = admin::router(gw.clone(), listeners.usage_api, listeners.admin_gate);
        tokio::spawn(
            // The peer address: the playground's requests are recorded with it.
            axum::serve(listeners.admin, app.into_make_service_with_connect_info::<std::net::SocketAddr>())
                .with_graceful_shutdown(async move { stop.notified().await })
                .into_future(),
        )
    };
    let served = serve_clients(listeners.client, ClientStack::new(gw.clone(), cors), &gw, shutdown, grace).await;
    admin_done.notify_one();
    let _ = admin.await;
    served
}

/// The client listener's accept loop: one HTTP/1.1 connection task each, on
/// hyper directly (requests and responses keep their concrete body types).
async fn serve_clients(
    listener: TcpListener,
    stack: ClientStack,
    gw: &Gateway,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) -> std::io::Result<()> {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut connections = tokio::task::JoinSet::new();
    let http = hyper::server::conn::http1::Builder::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: pause, then go on.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // Without it, replies on kept-alive connections stall ~40 ms on delayed ACKs.
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY not set");
        }
        let service = TowerToHyperService::new(stack.for_peer(peer.ip()));
        let connection = graceful.watch(http.serve_connection(TokioIo::new(tcp), service));
        connections.spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, %peer, "client connection ended with an error");
            }
        });
        // Finished connection tasks are reaped as we go.
        while connections.try_join_next().is_some() {}
    }
    drop(listener);
    gw.start_draining();
    tracing::info!("shutting down: no new connections; finishing requests in flight");
    if tokio::time::timeout(grace, graceful.shutdown()).await.is_err() {
        tracing::warn!(grace = %humantime::format_duration(grace), "grace period over; closing remaining connections");
        connections.abort_all();
    }
    while connections.join_next().await.is_some() {}
    Ok(())
}
