//! The listeners: the client API behind one ordered layer stack, the admin
//! listener (probes, metrics), and serving with graceful shutdown.

mod admin;
mod request_id;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::response::IntoResponse;
use axum::serve::ListenerExt;
use http::{HeaderName, HeaderValue, Method};
use tokio::net::TcpListener;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::cors::{AllowHeaders, AllowOrigin, CorsLayer};

pub(crate) use request_id::RequestId;

use crate::api::{self, ApiError};
use crate::state::Gateway;

/// Browser origins allowed to call the API (CORS); empty: CORS is off.
#[derive(Clone, Debug, Default)]
pub(crate) struct Cors {
    pub origins: Vec<HeaderValue>,
}

impl Cors {
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

/// The client API. Outermost first: a panic anywhere becomes an OpenAI-shaped
/// 500; every request gets an id and a span; CORS answers preflights; the
/// `/v1` routes authenticate as a whole; anything else is 404.
pub(crate) fn client_router(gw: Arc<Gateway>, cors: &Cors) -> Router {
    api::router(gw.clone())
        .fallback(|| async { ApiError::route_not_found() })
        .with_state(gw)
        .layer(tower::util::option_layer(cors.layer()))
        .layer(axum::middleware::from_fn(request_id::layer))
        .layer(CatchPanicLayer::custom(|_| ApiError::internal("The gateway failed on this request.").into_response()))
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
    cors: &Cors,
    shutdown: impl Future<Output = ()> + Send + 'static,
    grace: Duration,
) -> std::io::Result<()> {
    let app = client_router(gw.clone(), cors).into_make_service_with_connect_info::<SocketAddr>();
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
