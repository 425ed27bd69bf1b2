//! `weaver-mock-upstream`: the mock LLM upstream as a process, for benchmarks,
//! the SDK tests and trying the gateway against a "real" upstream by hand.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use weaver_e2e::mock_upstream::{Behaviour, MockUpstream};

/// A mock OpenAI-compatible upstream on loopback.
#[derive(Parser)]
#[command(name = "weaver-mock-upstream")]
struct Args {
    /// Address to listen on (port 0 picks a free one; the address is logged).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Delay before answering.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    latency: Duration,
    /// Completion length in tokens (stream chunks); default quotes the prompt.
    #[arg(long)]
    tokens: Option<usize>,
    /// Delay between stream chunks.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    chunk_delay: Duration,
    /// Answer every request with this HTTP status.
    #[arg(long)]
    error_status: Option<u16>,
    /// Cut streams after this many events.
    #[arg(long)]
    drop_after: Option<usize>,
    /// Require this upstream API key.
    #[arg(long)]
    require_key: Option<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    weaver_telemetry::init_logs(true);
    let a = Args::parse();
    let behaviour = Behaviour {
        latency: a.latency,
        tokens: a.tokens,
        chunk_delay: a.chunk_delay,
        error_status: a.error_status,
        drop_after: a.drop_after,
        require_key: a.require_key,
    };
    let mock = MockUpstream::start_on(a.listen, behaviour).await?;
    tracing::info!(addr = %mock.addr, "listening");
    tokio::select! {
        () = mock.wait() => {}
        () = weaver_telemetry::shutdown_signal() => {}
    }
    Ok(())
}
