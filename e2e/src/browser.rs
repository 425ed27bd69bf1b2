//! The browser checks in `dashboard/e2e/` (Debian's Chromium through
//! playwright-core), run from Rust tests once their servers are up.

use std::time::Duration;

/// Runs `node dashboard/e2e/<script>` with `envs`, printing its output; an
/// error when it fails or takes over two minutes. Needs the built UI and its
/// npm packages (`make ui`, which `make e2e` runs first).
pub async fn run_script(script: &str, envs: &[(&str, &str)]) -> anyhow::Result<()> {
    let dashboard = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../dashboard");
    anyhow::ensure!(
        dashboard.join("dist/index.html").exists() && dashboard.join("node_modules/playwright-core").exists(),
        "the browser check needs the built UI and its npm packages: run `make ui` first"
    );
    let run = tokio::process::Command::new("node")
        .arg(format!("e2e/{script}"))
        .current_dir(&dashboard)
        .envs(envs.iter().copied())
        .output();
    let out = tokio::time::timeout(Duration::from_secs(120), run).await??;
    println!("{}", String::from_utf8_lossy(&out.stdout));
    anyhow::ensure!(
        out.status.success(),
        "the browser check {script} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}
