//! Pooled upstream HTTP clients. They live outside the snapshot, so a config
//! change does not drop warm connections; one client per distinct connect
//! timeout, since the connector owns that setting.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

pub(crate) type HttpClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

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
        .build(https)
}
