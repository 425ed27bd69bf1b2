//! A real Prometheus (Debian's `prometheus` package, which `make setup`
//! installs) on a free loopback port, scraping the processes a test names
//! every second, and its HTTP query API.

use std::ops::ControlFlow;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context as _;
use serde_json::Value;
use tokio::process::{Child, Command};

use crate::gateway::eventually_within;

/// How often targets are scraped: short, so a test sees data within seconds.
pub const SCRAPE_INTERVAL: &str = "1s";

/// How long Prometheus may take to answer `/-/ready`: generous, as the
/// test machine is loaded.
const READY_WITHIN: Duration = Duration::from_secs(60);

/// A running Prometheus; killed when dropped.
pub struct Prometheus {
    pub url: String,
    http: reqwest::Client,
    child: Child,
}

impl Prometheus {
    /// Starts `prometheus` with its data in `dir`, scraping `/metrics` of each
    /// `(job, host:port)` target (a job may have several); returns once it is
    /// ready (within 60 s).
    pub async fn start(dir: &Path, targets: &[(&str, String)]) -> anyhow::Result<Self> {
        let mut config =
            format!("global:\n  scrape_interval: {SCRAPE_INTERVAL}\n  evaluation_interval: 1s\nscrape_configs:\n");
        let mut jobs: std::collections::BTreeMap<&str, Vec<&str>> = std::collections::BTreeMap::new();
        for (job, addr) in targets {
            jobs.entry(job).or_default().push(addr);
        }
        for (job, addrs) in jobs {
            config.push_str(&format!("  - job_name: {job:?}\n    static_configs: [{{targets: {addrs:?}}}]\n"));
        }
        let config_file = dir.join("prometheus.yml");
        std::fs::write(&config_file, config)?;
        // A free port: taken and released, then Prometheus binds it (a race
        // with another process is possible but harmless: start fails loudly).
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let log = std::fs::File::create(dir.join("prometheus.log"))?;
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config_file.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .context("cannot run `prometheus` (Debian's package; `make setup` installs it)")?;
        let mut prometheus = Self { url: format!("http://127.0.0.1:{port}"), http: reqwest::Client::new(), child };
        let ready =
            eventually_within("prometheus to get ready", READY_WITHIN, Duration::from_millis(100), async || {
                let seen = match prometheus.http.get(format!("{}/-/ready", prometheus.url)).send().await {
                    Ok(r) if r.status().is_success() => return Ok(ControlFlow::Break(())),
                    Ok(r) => format!("/-/ready answered {}", r.status()),
                    Err(e) => format!("/-/ready: {e}"),
                };
                if let Some(status) = prometheus.child.try_wait()? {
                    anyhow::bail!("prometheus exited ({status})");
                }
                Ok(ControlFlow::Continue(seen))
            })
            .await;
        if let Err(e) = ready {
            let log = std::fs::read_to_string(dir.join("prometheus.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(10).collect();
            anyhow::bail!("{e}; its log ends:\n{}", tail.join("\n"));
        }
        Ok(prometheus)
    }

    /// The result of an instant query: one entry per series (`metric`, `value`).
    pub async fn query(&self, expr: &str) -> anyhow::Result<Vec<Value>> {
        let answer: Value =
            self.http.get(format!("{}/api/v1/query", self.url)).query(&[("query", expr)]).send().await?.json().await?;
        anyhow::ensure!(answer["status"] == "success", "query {expr} failed: {answer}");
        Ok(match &answer["data"]["result"] {
            Value::Array(series) => series.clone(),
            // A scalar or string result is one value.
            other => vec![other.clone()],
        })
    }

    /// The values a label takes in the series of `metric` (a Grafana
    /// `label_values(metric, label)` variable).
    pub async fn label_values(&self, metric: &str, label: &str) -> anyhow::Result<Vec<String>> {
        let answer: Value = self
            .http
            .get(format!("{}/api/v1/label/{label}/values", self.url))
            .query(&[("match[]", metric)])
            .send()
            .await?
            .json()
            .await?;
        anyhow::ensure!(answer["status"] == "success", "label values of {label} failed: {answer}");
        Ok(answer["data"].as_array().into_iter().flatten().filter_map(|v| v.as_str().map(str::to_owned)).collect())
    }

    /// The health of each scrape target (`up`/`down`), by job.
    pub async fn targets(&self) -> anyhow::Result<Vec<(String, String)>> {
        let answer: Value = self.http.get(format!("{}/api/v1/targets", self.url)).send().await?.json().await?;
        Ok(answer["data"]["activeTargets"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|t| {
                let job = t["labels"]["job"].as_str().unwrap_or_default().to_owned();
                (job, t["health"].as_str().unwrap_or_default().to_owned())
            })
            .collect())
    }
}
