use std::process::ExitCode;

use clap::Parser;
use weaver_gateway::cli::{Args, error_chain, run};

/// mimalloc rather than glibc's malloc: the request path allocates and frees
/// a few dozen small blocks per request, and glibc's free lists
/// (`malloc_consolidate`, `unlink_chunk`) cost more CPU per request than
/// mimalloc's per-thread pages.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    weaver_telemetry::init_logs(args.log_format.is_json());
    match run(args, weaver_telemetry::shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {}", error_chain(&e));
            ExitCode::FAILURE
        }
    }
}
