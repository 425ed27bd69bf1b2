use clap::Parser;
use weaver_operator::cli::{Args, Command};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(Command::Crd) = args.command {
        for (i, (_, crd)) in weaver_crds::crdgen::crds().iter().enumerate() {
            if i > 0 {
                println!("---");
            }
            print!("{}", weaver_crds::crdgen::to_yaml(crd)?);
        }
        return Ok(());
    }
    weaver_telemetry::init_logs(args.log_format.is_json());
    let started = weaver_operator::run::start(args).await?;
    tokio::select! {
        result = started.wait() => result?,
        () = weaver_telemetry::shutdown_signal() => tracing::info!("shutting down"),
    }
    Ok(())
}
