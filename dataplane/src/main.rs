use clap::Parser;
use weaver_gateway::cli::{Args, run};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    weaver_telemetry::init_logs(args.log_format.is_json());
    run(args, weaver_telemetry::shutdown_signal()).await?;
    Ok(())
}
