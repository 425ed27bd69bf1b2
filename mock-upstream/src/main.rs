//! `weaver-mock-upstream`: the mock LLM upstream as a process, for benchmarks,
//! the SDK tests and trying the gateway against a "real" upstream by hand.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use weaver_mock_upstream::{Behaviour, ErrorFormat, JsonForStream, MockUpstream};
use weaver_telemetry::LogFormat;

/// A mock OpenAI-compatible upstream. Logs `listening` with its address.
#[derive(Parser)]
#[command(name = "weaver-mock-upstream")]
struct Args {
    /// Address to listen on (port 0 picks a free one; the address is logged).
    #[arg(long, env = "WEAVER_MOCK_LISTEN", default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Log format: auto (JSON unless stderr is a terminal), json or text.
    #[arg(long, env = "WEAVER_MOCK_LOG_FORMAT", value_enum, default_value_t = LogFormat::Auto)]
    log_format: LogFormat,
    /// Delay before answering.
    #[arg(long, env = "WEAVER_MOCK_LATENCY", default_value = "0s", value_parser = humantime::parse_duration)]
    latency: Duration,
    /// Completion length in tokens (stream chunks); default quotes the prompt.
    #[arg(long, env = "WEAVER_MOCK_TOKENS")]
    tokens: Option<usize>,
    /// Delay between stream chunks.
    #[arg(long, env = "WEAVER_MOCK_CHUNK_DELAY", default_value = "0s", value_parser = humantime::parse_duration)]
    chunk_delay: Duration,
    /// Answer every request with this HTTP status.
    #[arg(long, env = "WEAVER_MOCK_ERROR_STATUS")]
    error_status: Option<u16>,
    /// With --error-status 429: send `Retry-After` with these seconds.
    #[arg(long, env = "WEAVER_MOCK_RETRY_AFTER")]
    retry_after: Option<u64>,
    /// With --error-status: pad the error body to this many bytes.
    #[arg(long, env = "WEAVER_MOCK_ERROR_BODY_BYTES")]
    error_body_bytes: Option<usize>,
    /// Shape of error bodies.
    #[arg(long, env = "WEAVER_MOCK_ERROR_FORMAT", value_enum, default_value_t = ErrorFormat::OpenAi)]
    error_format: ErrorFormat,
    /// Cut streams after this many events.
    #[arg(long, env = "WEAVER_MOCK_DROP_AFTER")]
    drop_after: Option<usize>,
    /// Require this upstream API key.
    #[arg(long, env = "WEAVER_MOCK_REQUIRE_KEY")]
    require_key: Option<String>,
    /// Send null usage details (`cached_tokens: null`, `completion_tokens_details: null`).
    #[arg(long, env = "WEAVER_MOCK_NULL_USAGE_DETAILS")]
    null_usage_details: bool,
    /// Never report usage (no `usage` in answers, no usage chunk in streams).
    #[arg(long, env = "WEAVER_MOCK_OMIT_USAGE")]
    omit_usage: bool,
    /// Answer `"stream": true` with 200 application/json: an error object or a whole completion.
    #[arg(long, env = "WEAVER_MOCK_JSON_FOR_STREAM", value_enum)]
    json_for_stream: Option<JsonForStream>,
    /// Reject bodies with `stream_options` (400), like Azure OpenAI api-version 2024-02-01.
    #[arg(long, env = "WEAVER_MOCK_REJECT_STREAM_OPTIONS")]
    reject_stream_options: bool,
    /// Simulate a prompt cache: report a repeated prompt prefix as cached tokens.
    #[arg(long, env = "WEAVER_MOCK_PREFIX_CACHE")]
    prefix_cache: bool,
    /// Stream the content as one SSE event of this many bytes.
    #[arg(long, env = "WEAVER_MOCK_BIG_EVENT_BYTES")]
    big_event_bytes: Option<usize>,
    /// With --big-event-bytes: deliver the event in body frames of this many bytes.
    #[arg(long, env = "WEAVER_MOCK_BIG_EVENT_PIECE_BYTES", default_value_t = 16 * 1024)]
    big_event_piece_bytes: usize,
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let a = Args::parse();
    weaver_telemetry::init_logs(a.log_format.is_json());
    let behaviour = Behaviour {
        latency: a.latency,
        tokens: a.tokens,
        chunk_delay: a.chunk_delay,
        error_status: a.error_status,
        retry_after: a.retry_after,
        error_body_bytes: a.error_body_bytes,
        error_format: a.error_format,
        drop_after: a.drop_after,
        require_key: a.require_key,
        null_usage_details: a.null_usage_details,
        omit_usage: a.omit_usage,
        json_for_stream: a.json_for_stream,
        reject_stream_options: a.reject_stream_options,
        prefix_cache: a.prefix_cache,
        big_event: a.big_event_bytes.map(|total| (total, a.big_event_piece_bytes)),
        // A process has nobody to release a held stream.
        hold_after: None,
    };
    let mock = MockUpstream::start_on(a.listen, behaviour).await?;
    mock.keep_no_requests();
    tracing::info!(addr = %mock.addr, "listening");
    tokio::select! {
        () = mock.wait() => {}
        () = weaver_telemetry::shutdown_signal() => {}
    }
    Ok(())
}
