//! Pooled upstream HTTP clients. They live outside the snapshot, so a config
//! change does not drop warm connections; one client per distinct connect
//! timeout, since the connector owns that setting.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::TryFutureExt;
use futures_util::future::MapOk;
use http::Uri;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::TokioExecutor;
use tower::Service;

use crate::parts::Parts;

pub(crate) type HttpClient = Client<Quiet<HttpsConnector<HttpConnector>>, Parts>;

#[derive(Default)]
pub(crate) struct ClientPool {
    clients: Mutex<HashMap<u64, HttpClient>>,
}

impl ClientPool {
    /// The client for a connect timeout (built on first use; called per
    /// snapshot, not per request).
    pub fn client(&self, connect_ms: u64) -> HttpClient {
        let mut clients = self.clients.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        clients.entry(connect_ms).or_insert_with(|| build(Duration::from_millis(connect_ms))).clone()
    }
}

fn build(connect_timeout: Duration) -> HttpClient {
    let mut http = HttpConnector::new();
    // Without it, replies on kept-alive connections stall ~40 ms on delayed ACKs.
    http.set_nodelay(true);
    http.set_connect_timeout(Some(connect_timeout));
    http.set_keepalive(Some(Duration::from_secs(60)));
    http.enforce_http(false);
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_webpki_roots()
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(1024)
        .build(Quiet(https))
}

/// A connector whose connections report no extra transport information.
/// hyper-util's TCP connector attaches the peer and local addresses to every
/// response (three allocations a request); nothing here reads them.
#[derive(Clone)]
pub(crate) struct Quiet<C>(C);

impl<C: Service<Uri>> Service<Uri> for Quiet<C> {
    type Response = QuietIo<C::Response>;
    type Error = C::Error;
    type Future = MapOk<C::Future, fn(C::Response) -> QuietIo<C::Response>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), C::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        self.0.call(uri).map_ok(QuietIo)
    }
}

/// A connection, delegating everything but its `connected()` information.
pub(crate) struct QuietIo<T>(T);

impl<T> Connection for QuietIo<T> {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl<T: Read + Unpin> Read for QuietIo<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: ReadBufCursor<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<T: Write + Unpin> Write for QuietIo<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }
}
