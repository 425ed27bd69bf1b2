//! Set-up shared by the LLM Weaver binaries, so the gateway and the operator
//! log and stop the same way.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Installs the global log subscriber on stderr: JSON when `json` is true,
/// else human-readable (coloured on a terminal). `RUST_LOG` filters; the
/// default is `info`.
pub fn init_logs(json: bool) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    if json {
        logs.json().flatten_event(true).init();
    } else {
        logs.init();
    }
}

/// `--log-format`: `auto` is human-readable on a terminal and JSON otherwise.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Auto,
    Json,
    Text,
}

impl LogFormat {
    pub fn is_json(self) -> bool {
        match self {
            LogFormat::Json => true,
            LogFormat::Text => false,
            LogFormat::Auto => !std::io::stderr().is_terminal(),
        }
    }
}

/// Resolves on SIGTERM (Kubernetes stopping the pod) or Ctrl-C.
pub async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
}

/// The media type of [`encode_metrics`]'s output (OpenMetrics 1.0 text).
pub const OPENMETRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The OpenMetrics text exposition of `registry`, as every binary serves it
/// on `/metrics` (with [`OPENMETRICS_CONTENT_TYPE`]).
pub fn encode_metrics(registry: &prometheus_client::registry::Registry) -> String {
    let mut out = String::with_capacity(16 * 1024);
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, registry) {
        tracing::error!(error = %e, "metrics encoding failed");
        out.clear();
    }
    out
}
