//! `weaver-gateway channel-test`: asks a gateway's admin listener to test
//! one channel (see `server::channel_test`) and prints what came back.

use std::path::PathBuf;

use reqwest::Url;

use crate::cli::AdminTokenText;
use crate::server::channel_test::{TestReport, TestRequest};

/// Test one channel through a running gateway: one real request, its
/// status, latency and the answer's first tokens. Exits non-zero when the
/// channel failed the test.
#[derive(Debug, clap::Args)]
pub struct ChannelTestArgs {
    /// The channel, as NAMESPACE/NAME.
    #[arg(value_name = "NAMESPACE/NAME")]
    pub channel: String,
    /// The gateway's admin listener.
    #[arg(long, env = "WEAVER_ADMIN_URL", default_value = "http://127.0.0.1:9090")]
    pub admin: Url,
    /// The gateway's admin token. Prefer the environment variable or
    /// --token-file: a flag's value shows in the process list.
    #[arg(long, env = "WEAVER_ADMIN_TOKEN", hide_env_values = true, conflicts_with = "token_file")]
    pub token: Option<AdminTokenText>,
    /// File holding the admin token (a standalone gateway keeps a generated
    /// one in <data-dir>/admin-token).
    #[arg(long, env = "WEAVER_ADMIN_TOKEN_FILE", value_name = "PATH")]
    pub token_file: Option<PathBuf>,
    /// The model to ask, by the name clients send (default: the channel's first).
    #[arg(long)]
    pub model: Option<String>,
    /// The prompt (default: a short greeting request).
    #[arg(long)]
    pub prompt: Option<String>,
    /// The answer's output limit, in tokens (default 16).
    #[arg(long)]
    pub max_tokens: Option<u32>,
    /// Print the gateway's report as JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Why the test could not be run, or what it found.
#[derive(Debug, thiserror::Error)]
pub enum ChannelTestError {
    #[error("{0}")]
    Usage(String),
    #[error("cannot read the admin token file {path}: {source}")]
    TokenFile { path: PathBuf, source: std::io::Error },
    #[error("the gateway did not answer: {0}")]
    Request(#[from] reqwest::Error),
    #[error("the gateway refused the test ({status}): {message}")]
    Refused { status: u16, message: String },
    #[error("channel {0} failed the test")]
    Failed(String),
}

/// Runs the test and prints the report (text, or JSON with `--json`).
pub async fn run(args: ChannelTestArgs) -> Result<TestReport, ChannelTestError> {
    let (namespace, name) = args
        .channel
        .split_once('/')
        .filter(|(ns, name)| !ns.is_empty() && !name.is_empty() && !name.contains('/'))
        .ok_or_else(|| {
            ChannelTestError::Usage(format!("name the channel as NAMESPACE/NAME, not {:?}", args.channel))
        })?;
    let token = match (&args.token, &args.token_file) {
        (Some(token), _) => token.text().trim().to_owned(),
        (None, Some(path)) => std::fs::read_to_string(path)
            .map_err(|source| ChannelTestError::TokenFile { path: path.clone(), source })?
            .trim()
            .to_owned(),
        (None, None) => {
            return Err(ChannelTestError::Usage(
                "give the admin token: WEAVER_ADMIN_TOKEN, --token or --token-file".to_owned(),
            ));
        }
    };
    let mut url = args.admin.clone();
    url.path_segments_mut()
        .map_err(|()| ChannelTestError::Usage(format!("{} cannot be an admin URL", args.admin)))?
        .pop_if_empty()
        .extend(["admin", "v1", "channels", namespace, name, "test"]);
    let request = TestRequest { model: args.model.clone(), prompt: args.prompt.clone(), max_tokens: args.max_tokens };
    // The operator connection's TLS set-up (ring, webpki roots), for an
    // https admin URL.
    let tls = crate::config::cluster::tls_config(None).map_err(|e| ChannelTestError::Usage(e.to_string()))?;
    let client = reqwest::Client::builder().use_preconfigured_tls(tls).build()?;
    let response = client.post(url).bearer_auth(token).json(&request).send().await?;
    let status = response.status();
    if !status.is_success() {
        let body: serde_json::Value = response.json().await.unwrap_or_default();
        let message = body.pointer("/error/message").and_then(|m| m.as_str()).unwrap_or("no error message").to_owned();
        return Err(ChannelTestError::Refused { status: status.as_u16(), message });
    }
    let report: TestReport = response.json().await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report).unwrap_or_default());
    } else {
        print!("{}", text(&report));
    }
    if report.ok { Ok(report) } else { Err(ChannelTestError::Failed(args.channel)) }
}

/// The report for people.
fn text(r: &TestReport) -> String {
    let verdict = if r.ok { "ok" } else { "FAILED" };
    let mut out = format!(
        "channel  {}/{}\nmodel    {}\nresult   {verdict}: status {}, {} ms\nrouting  {} (health check: {})\n",
        r.namespace, r.channel, r.model, r.status, r.latency_ms, r.state, r.probe
    );
    if let Some(answer) = &r.first_tokens {
        out.push_str(&format!("answer   {answer:?}\n"));
    }
    if let Some(error) = &r.error {
        out.push_str(&format!("error    {} ({})\n", error.message, error.code));
    }
    out
}
