//! The listeners: the client API behind one ordered layer stack, the admin
//! listener (probes, metrics), and serving with graceful shutdown.

mod admin;
mod request_id;

use std::convert::Infallible;
use std::future::{Future, Ready, ready};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::Request;
use axum::response::Response;
use axum::serve::{IncomingStream, Listener, ListenerExt};
use futures_util::future::Either;
use http::{HeaderName, HeaderValue, Method};
use tokio::net::TcpListener;
use tower::{Layer, Service};
use tower_http::cors::{AllowHeaders, AllowOrigin, Cors, CorsLayer};

pub(crate) use request_id::{RequestId, X_REQUEST_ID};

use crate::api::Api;
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
        let exposed = ["x-request-id", "retry-after"].map(HeaderName::from_static);
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
/// the envelope (request id, span, panic -> 500); CORS answers preflights for
/// allowed origins; the API dispatcher, which authenticates every route
/// before its handler (404 for unknown URLs).
pub(crate) type ClientService = Envelope<MaybeCors>;

/// The API, behind the CORS layer when origins are configured.
#[derive(Clone)]
pub(crate) enum MaybeCors {
    With(Cors<Api>),
    Without(Api),
}

impl Service<Request> for MaybeCors {
    type Response = Response;
    type Error = Infallible;
    type Future = Either<<Cors<Api> as Service<Request>>::Future, <Api as Service<Request>>::Future>;

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
        let api = Api::new(self.gw.clone(), peer);
        let inner = match &self.cors {
            Some(cors) => MaybeCors::With(cors.layer(api)),
            None => MaybeCors::Without(api),
        };
        EnvelopeLayer.layer(inner)
    }
}

impl<'a, L> Service<IncomingStream<'a, L>> for ClientStack
where
    L: Listener<Addr = SocketAddr>,
{
    type Response = ClientService;
    type Error = Infallible;
    type Future = Ready<Result<ClientService, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, stream: IncomingStream<'a, L>) -> Self::Future {
        ready(Ok(self.for_peer(stream.remote_addr().ip())))
    }
}

/// The two bound listeners.
pub(crate) struct Listeners {
    pub client: TcpListener,
    pub admin: TcpListener,
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
    let app = ClientStack::new(gw.clone(), cors);
    let client = listeners.client.tap_io(|tcp| {
        // Without it, replies on kept-alive connections stall ~40 ms on delayed ACKs.
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY not set");
        }
    });
    let admin_done = Arc::new(tokio::sync::Notify::new());
    let admin = {
        let stop = admin_done.clone();
        let app = admin::router(gw.clone());
        tokio::spawn(
            axum::serve(listeners.admin, app)
                .with_graceful_shutdown(async move { stop.notified().await })
                .into_future(),
        )
    };
    let begun = Arc::new(tokio::sync::Notify::new());
    let signal = {
        let begun = begun.clone();
        async move {
            shutdown.await;
            gw.start_draining();
            tracing::info!("shutting down: no new connections; finishing requests in flight");
            begun.notify_one();
        }
    };
    let mut server = tokio::spawn(axum::serve(client, app).with_graceful_shutdown(signal).into_future());
    let served = tokio::select! {
        done = &mut server => done.map_err(std::io::Error::other).and_then(|r| r),
        () = begun.notified() => match tokio::time::timeout(grace, &mut server).await {
            Ok(done) => done.map_err(std::io::Error::other).and_then(|r| r),
            Err(_) => {
                tracing::warn!(grace = %humantime::format_duration(grace), "grace period over; closing remaining connections");
                server.abort();
                Ok(())
            }
        },
    };
    admin_done.notify_one();
    let _ = admin.await;
    served
}
