//! The manifests tests build, in one place. Every fixture is whole YAML
//! documents, each opened by `---`, so fixtures concatenate with `+`; all live
//! in namespace [`NAMESPACE`].

use weaver_crds::Snapshot;
use weaver_crds::compiler::{Resources, compile};
use weaver_crds::manifests::parse_into;

/// The namespace every fixture lives in.
pub const NAMESPACE: &str = "team-a";

/// The client key of [`openai_namespace`].
pub const KEY: &str = "lw-test-key";

/// A namespace with one OpenAI channel `primary` pointing at `upstream`,
/// serving public model `gpt-4o-mini` as `gpt-4o-mini-2024-07-18` (and
/// `text-embedding-3-small` unmapped), and the test key [`KEY`] as ApiKey
/// `checkout`; `key_spec` is extra lines of that ApiKey's spec.
pub fn openai_namespace(upstream: &str, key_spec: &str) -> String {
    format!(
        r#"---
apiVersion: v1
kind: Secret
metadata: {{name: upstream-creds, namespace: {NAMESPACE}}}
stringData: {{apiKey: sk-upstream-secret}}
---
apiVersion: llmweaver.io/v1alpha1
kind: Channel
metadata: {{name: primary, namespace: {NAMESPACE}}}
spec:
  provider: openai
  baseUrl: {upstream}
  credentials: {{secretRef: {{name: upstream-creds}}}}
  models:
    - name: gpt-4o-mini
      upstreamModel: gpt-4o-mini-2024-07-18
      pricing: {{inputPerMillion: "0.15", outputPerMillion: "0.60"}}
    - name: text-embedding-3-small
  timeouts: {{firstByte: 1s, total: 5s}}
  headers: {{OpenAI-Organization: org-123}}
---
apiVersion: v1
kind: Secret
metadata: {{name: client-key, namespace: {NAMESPACE}}}
stringData: {{apiKey: {KEY}}}
---
apiVersion: llmweaver.io/v1alpha1
kind: ApiKey
metadata: {{name: checkout, namespace: {NAMESPACE}}}
spec:
  secretRef: {{name: client-key}}
  {key_spec}
"#
    )
}

/// A second OpenAI channel `secondary` pointing at `upstream` with weight 300,
/// serving `gpt-4o-mini` unmapped; it shares [`openai_namespace`]'s upstream
/// credentials.
pub fn secondary_openai_channel(upstream: &str) -> String {
    format!(
        r#"---
apiVersion: llmweaver.io/v1alpha1
kind: Channel
metadata: {{name: secondary, namespace: {NAMESPACE}}}
spec:
  provider: openai
  baseUrl: {upstream}
  credentials: {{secretRef: {{name: upstream-creds}}}}
  models: [{{name: gpt-4o-mini}}]
  weight: 300
"#
    )
}

/// An Anthropic channel `claude` whose API root is `root` (e.g.
/// `http://127.0.0.1:1234`, no `/v1`), serving public model `claude-test` as
/// `claude-sonnet-4-6` at 3 / 15 / 0.30 / 3.75 USD per million input, output,
/// cached and cache-write tokens; it shares [`openai_namespace`]'s upstream
/// credentials.
pub fn anthropic_channel(root: &str) -> String {
    format!(
        r#"---
apiVersion: llmweaver.io/v1alpha1
kind: Channel
metadata: {{name: claude, namespace: {NAMESPACE}}}
spec:
  provider: anthropic
  baseUrl: {root}
  credentials: {{secretRef: {{name: upstream-creds}}}}
  models:
    - name: claude-test
      upstreamModel: claude-sonnet-4-6
      pricing: {{inputPerMillion: "3", outputPerMillion: "15", cachedInputPerMillion: "0.30", cacheWriteInputPerMillion: "3.75"}}
  timeouts: {{firstByte: 5s, total: 10s}}
"#
    )
}

/// A Gemini channel `gemini` whose API root is `root` (e.g.
/// `http://127.0.0.1:1234/v1beta`), serving public models `gemini-test` as
/// `gemini-2.5-flash` at 0.30 / 2.50 / 0.03 USD per million input, output
/// and cached tokens, and `gemini-embed` as `gemini-embedding-001`; it
/// shares [`openai_namespace`]'s upstream credentials.
pub fn gemini_channel(root: &str) -> String {
    format!(
        r#"---
apiVersion: llmweaver.io/v1alpha1
kind: Channel
metadata: {{name: gemini, namespace: {NAMESPACE}}}
spec:
  provider: gemini
  baseUrl: {root}
  credentials: {{secretRef: {{name: upstream-creds}}}}
  models:
    - name: gemini-test
      upstreamModel: gemini-2.5-flash
      pricing: {{inputPerMillion: "0.30", outputPerMillion: "2.50", cachedInputPerMillion: "0.03"}}
    - name: gemini-embed
      upstreamModel: gemini-embedding-001
  timeouts: {{firstByte: 5s, total: 10s}}
"#
    )
}

/// A Cohere channel `cohere` whose API root is `root` (e.g.
/// `http://127.0.0.1:1234/v2`), serving public models `command-test` as
/// `command-a-03-2025` at 2.50 / 10 USD per million input and output
/// tokens, and `cohere-embed` as `embed-v4.0`; it shares
/// [`openai_namespace`]'s upstream credentials.
pub fn cohere_channel(root: &str) -> String {
    format!(
        r#"---
apiVersion: llmweaver.io/v1alpha1
kind: Channel
metadata: {{name: cohere, namespace: {NAMESPACE}}}
spec:
  provider: cohere
  baseUrl: {root}
  credentials: {{secretRef: {{name: upstream-creds}}}}
  models:
    - name: command-test
      upstreamModel: command-a-03-2025
      pricing: {{inputPerMillion: "2.50", outputPerMillion: "10"}}
    - name: cohere-embed
      upstreamModel: embed-v4.0
  timeouts: {{firstByte: 5s, total: 10s}}
"#
    )
}

/// A `mock` channel `demo` (answers locally, no upstream) serving `demo-chat`.
pub fn mock_channel() -> String {
    format!(
        r#"---
apiVersion: llmweaver.io/v1alpha1
kind: Channel
metadata: {{name: demo, namespace: {NAMESPACE}}}
spec:
  provider: mock
  models:
    - name: demo-chat
      pricing: {{inputPerMillion: "0.15", outputPerMillion: "0.60"}}
"#
    )
}

/// ApiKey `name` with client key `key`, in its default Secret `<name>-apikey`.
pub fn api_key(name: &str, key: &str) -> String {
    format!(
        r#"---
apiVersion: v1
kind: Secret
metadata: {{name: {name}-apikey, namespace: {NAMESPACE}}}
stringData: {{apiKey: {key}}}
---
apiVersion: llmweaver.io/v1alpha1
kind: ApiKey
metadata: {{name: {name}, namespace: {NAMESPACE}}}
spec: {{}}
"#
    )
}

/// Compiles `yaml` into the snapshot the operator would serve as `version`;
/// fails on any problem the compiler reports.
pub fn snapshot(yaml: &str, version: u64) -> anyhow::Result<Snapshot> {
    let mut resources = Resources::default();
    parse_into(yaml, &mut resources)?;
    let compiled = compile(&resources, version);
    anyhow::ensure!(compiled.problems.is_empty(), "problems: {:?}", compiled.problems);
    Ok(compiled.snapshot)
}
