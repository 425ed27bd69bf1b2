//! Command line.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Parser, Subcommand};
use weaver_telemetry::LogFormat;

/// LLM Weaver operator. With only KUBECONFIG (or in-cluster config) it runs
/// with defaults; `weaver-operator crd` prints the CRDs.
#[derive(Debug, Parser)]
#[command(name = "weaver-operator", version)]
pub struct Args {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Where gateways connect (HTTPS): the snapshot stream and reports.
    #[arg(long, env = "WEAVER_OPERATOR_LISTEN", default_value = "0.0.0.0:8443")]
    pub listen: SocketAddr,
    /// Plain HTTP for /metrics, /healthz and /readyz.
    #[arg(long, env = "WEAVER_METRICS_LISTEN", default_value = "0.0.0.0:9090")]
    pub metrics_listen: SocketAddr,
    /// The operator's own namespace (Lease and TLS Secret live here); defaults
    /// to the pod's namespace, else the kubeconfig's current namespace.
    #[arg(long, env = "POD_NAMESPACE")]
    pub namespace: Option<String>,
    /// Only watch this namespace (default: all namespaces).
    #[arg(long, env = "WEAVER_WATCH_NAMESPACE")]
    pub watch_namespace: Option<String>,
    /// This replica's name in the leader Lease; defaults to the host name.
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// URL other replicas use to reach this one when it leads (reports are
    /// forwarded to the leader); defaults to https://$POD_IP:<listen port>.
    #[arg(long, env = "WEAVER_ADVERTISE_URL")]
    pub advertise_url: Option<String>,
    /// Secret holding the CA and serving certificate (created when missing).
    #[arg(long, env = "WEAVER_TLS_SECRET", default_value = "llm-weaver-operator-tls")]
    pub tls_secret: String,
    /// Names and addresses the serving certificate covers (comma-separated);
    /// defaults to the in-cluster Service names, localhost and 127.0.0.1.
    #[arg(long, env = "WEAVER_TLS_SANS", value_delimiter = ',')]
    pub tls_san: Vec<String>,
    /// Quiet time before a burst of changes is compiled into one snapshot.
    #[arg(long, env = "WEAVER_DEBOUNCE", default_value = "100ms", value_parser = humantime::parse_duration)]
    pub debounce: Duration,
    /// How often usage and health are written into status.
    #[arg(long, env = "WEAVER_STATUS_INTERVAL", default_value = "2s", value_parser = humantime::parse_duration)]
    pub status_interval: Duration,
    /// A gateway that has not reported for this long no longer counts as live.
    #[arg(long, env = "WEAVER_GATEWAY_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub gateway_timeout: Duration,
    /// Leader lease duration.
    #[arg(long, env = "WEAVER_LEASE_DURATION", default_value = "15s", value_parser = humantime::parse_duration)]
    pub lease_duration: Duration,
    /// The usage store the gateways write (`postgres://...`; `sqlite://PATH`
    /// for a single machine). With it, ApiKey and Channel usage in status is
    /// read from the store's rollups; without it, summed from the gateways'
    /// reports.
    #[arg(long, env = "WEAVER_STORE")]
    pub store: Option<String>,
    /// How long usage before today (UTC) read from the store is reused; today's
    /// is read every status interval. Records of earlier days that reach the
    /// store late (a gateway replaying its spool) show within this time.
    #[arg(long, env = "WEAVER_STORE_HISTORY_REFRESH", default_value = "5m", value_parser = humantime::parse_duration)]
    pub store_history_refresh: Duration,
    /// Sidecar mode: serve the mutating admission webhook at `/inject`, adding
    /// the gateway container this template (JSON, rendered by the Helm chart)
    /// describes to pods annotated `llmweaver.io/inject: "true"`.
    #[arg(long, env = "WEAVER_INJECT_TEMPLATE", value_name = "PATH")]
    pub inject_template: Option<std::path::PathBuf>,
    /// The MutatingWebhookConfiguration whose caBundle the operator keeps
    /// equal to its CA (with the self-managed CA; cert-manager's CA injector
    /// does it otherwise).
    #[arg(long, env = "WEAVER_WEBHOOK_CONFIGURATION", value_name = "NAME")]
    pub webhook_configuration: Option<String>,
    /// The gateway Service's client API (`http://llm-weaver-gateway.NS.svc`,
    /// without `/v1`): where the UI's Playground sends its requests, with
    /// the API key the user pastes. Unset: no Playground.
    #[arg(long, env = "WEAVER_GATEWAY_URL")]
    pub gateway_url: Option<String>,
    /// The gateway Service's admin port (`http://llm-weaver-gateway.NS.svc:9090`):
    /// where the UI's channel test runs. Unset: no channel test.
    #[arg(long, env = "WEAVER_GATEWAY_ADMIN_URL")]
    pub gateway_admin_url: Option<String>,
    /// Log format: `auto` is human-readable on a terminal and JSON otherwise.
    #[arg(long, env = "WEAVER_LOG_FORMAT", value_enum, default_value_t = LogFormat::Auto)]
    pub log_format: LogFormat,
    #[command(flatten)]
    pub oidc: OidcArgs,
}

/// OIDC sign-in for the usage UI (authorization code + PKCE). The claim
/// flags mean what the API server's `--oidc-*` flags of the same names mean,
/// so RoleBindings written for `kubectl` users name the same users and groups.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct OidcArgs {
    /// The issuer (exactly as its discovery document names it); unset: no
    /// OIDC sign-in, only Kubernetes tokens.
    #[arg(long, env = "WEAVER_OIDC_ISSUER_URL")]
    pub oidc_issuer_url: Option<String>,
    /// This operator's client id at the issuer (also the ID token's audience).
    #[arg(long, env = "WEAVER_OIDC_CLIENT_ID")]
    pub oidc_client_id: Option<String>,
    /// A file holding the client secret (confidential clients); without it the
    /// operator is a public client and PKCE alone binds the code.
    #[arg(long, env = "WEAVER_OIDC_CLIENT_SECRET_FILE", value_name = "PATH")]
    pub oidc_client_secret_file: Option<std::path::PathBuf>,
    /// The callback as the browser reaches it, registered at the issuer:
    /// `https://<operator's UI host>/ui/api/oidc/callback`.
    #[arg(long, env = "WEAVER_OIDC_REDIRECT_URL")]
    pub oidc_redirect_url: Option<String>,
    /// Scopes to ask for (comma-separated; `openid` is always asked); add
    /// the one your issuer needs for a groups claim (Dex: `groups`).
    #[arg(long, env = "WEAVER_OIDC_SCOPES", value_delimiter = ',', default_value = "openid,profile,email")]
    pub oidc_scopes: Vec<String>,
    /// The ID token claim that names the user.
    #[arg(long, env = "WEAVER_OIDC_USERNAME_CLAIM", default_value = "sub")]
    pub oidc_username_claim: String,
    /// Put before usernames; default `<issuer>#` unless the claim is `email`;
    /// `-` for none.
    #[arg(long, env = "WEAVER_OIDC_USERNAME_PREFIX", allow_hyphen_values = true)]
    pub oidc_username_prefix: Option<String>,
    /// The ID token claim that lists the user's groups (a string or a list).
    #[arg(long, env = "WEAVER_OIDC_GROUPS_CLAIM")]
    pub oidc_groups_claim: Option<String>,
    /// Put before every group name.
    #[arg(long, env = "WEAVER_OIDC_GROUPS_PREFIX")]
    pub oidc_groups_prefix: Option<String>,
    /// CA certificates (PEM) for the issuer's HTTPS, beside the public roots.
    #[arg(long, env = "WEAVER_OIDC_CA_FILE", value_name = "PATH")]
    pub oidc_ca_file: Option<std::path::PathBuf>,
    /// What the login page's button names ("Sign in with ..."); defaults to
    /// the issuer's host.
    #[arg(long, env = "WEAVER_OIDC_PROVIDER_NAME")]
    pub oidc_provider_name: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print the CustomResourceDefinitions (the same as crds/manifests/).
    Crd,
}
