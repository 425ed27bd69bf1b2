use super::*;
use crate::api_key::BudgetPeriod;
use crate::compiler::keys::key_digest;
use crate::manifests::parse_into;
use crate::snapshot::{Candidate, KeyDigest, KeySnapshot};

fn compile_yaml(yaml: &str) -> Compiled {
    let mut resources = Resources::default();
    parse_into(yaml, &mut resources).unwrap_or_else(|e| panic!("fixture does not parse: {e}"));
    compile(&resources, 7)
}

/// Compiles the objects as written, without the admission `parse_into` applies:
/// what the operator may get from an API server that stored them under an older
/// CRD. The compiler must fail closed on these too.
fn compile_unadmitted(yaml: &str) -> Compiled {
    use serde::Deserialize;
    fn decode<T: serde::de::DeserializeOwned>(value: serde_yaml::Value) -> T {
        serde_yaml::from_value(value).unwrap_or_else(|e| panic!("fixture does not decode: {e}"))
    }
    let mut resources = Resources::default();
    for doc in serde_yaml::Deserializer::from_str(yaml) {
        let value = serde_yaml::Value::deserialize(doc).unwrap_or_else(|e| panic!("fixture is not YAML: {e}"));
        match value.get("kind").and_then(serde_yaml::Value::as_str) {
            Some("Channel") => resources.channels.push(decode(value)),
            Some("ApiKey") => resources.api_keys.push(decode(value)),
            Some("NamespacePolicy") => resources.namespace_policies.push(decode(value)),
            Some("Secret") => resources.secrets.push(decode(value)),
            _ => {}
        }
    }
    compile(&resources, 7)
}

fn reasons(c: &Compiled) -> Vec<(Kind, &str, ProblemReason)> {
    c.problems.iter().map(|p| (p.kind, p.name.as_str(), p.reason)).collect()
}

fn key<'a>(c: &'a Compiled, name: &str) -> &'a KeySnapshot {
    c.snapshot.keys.iter().find(|k| k.name == name).unwrap_or_else(|| panic!("key {name} missing"))
}

/// Channel names serving `model` for key `name`, with weights.
fn route(c: &Compiled, key_name: &str, model: &str) -> Vec<(String, u32)> {
    let k = key(c, key_name);
    let table = &c.snapshot.route_tables[k.route_table as usize];
    table
        .routes
        .get(model)
        .map(|r| {
            r.candidates
                .iter()
                .map(|cand: &Candidate| (c.snapshot.channels[cand.channel as usize].name.clone(), cand.weight))
                .collect()
        })
        .unwrap_or_default()
}

const SECRETS: &str = r#"
apiVersion: v1
kind: Secret
metadata: {name: openai-credentials, namespace: team-a}
stringData: {apiKey: sk-upstream}
---
apiVersion: v1
kind: Secret
metadata: {name: checkout-llm-key, namespace: team-a}
data: {apiKey: c2stY2hlY2tvdXQK}   # "sk-checkout\n"
"#;

fn channel(name: &str, labels: &str, models: &str, weight: u32) -> String {
    format!(
        r#"
---
apiVersion: llmweaver.io/v1alpha1
kind: Channel
metadata: {{name: {name}, namespace: team-a, labels: {{{labels}}}}}
spec:
  provider: openai
  credentials: {{secretRef: {{name: openai-credentials, key: apiKey}}}}
  models: [{models}]
  weight: {weight}
"#
    )
}

const KEY: &str = r#"
---
apiVersion: llmweaver.io/v1alpha1
kind: ApiKey
metadata: {name: checkout, namespace: team-a}
spec:
  secretRef: {name: checkout-llm-key, key: apiKey}
"#;

#[test]
fn the_issue_examples_compile_cleanly() {
    let yaml = include_str!("../../../config/samples/team-a.yaml");
    let c = compile_yaml(yaml);
    assert_eq!(reasons(&c), vec![], "{:#?}", c.problems);
    assert_eq!(c.snapshot.version, 7);
    let primary = c.snapshot.channels.iter().find(|ch| ch.name == "openai-primary");
    let primary = primary.unwrap_or_else(|| panic!("openai-primary missing"));
    assert_eq!(primary.base_url, "https://api.openai.com/v1");
    assert_eq!(primary.models[0].upstream, "gpt-4o-mini-2024-07-18");
    assert_eq!(primary.models[0].prices.cached_input, 75_000_000);
    assert_eq!(primary.models[0].prices.cache_write_input, None, "cache writes at the input price");
    let claude = c.snapshot.channels.iter().find(|ch| ch.name == "anthropic");
    let claude = claude.unwrap_or_else(|| panic!("the anthropic channel is missing"));
    assert_eq!(claude.base_url, "https://api.anthropic.com");
    assert_eq!(claude.models[0].prices.cache_write_input, Some(3_750_000_000));
    assert_eq!(primary.timeouts.first_byte_ms, 60_000);
    assert_eq!(primary.headers, vec![("OpenAI-Organization".to_owned(), "org-123".to_owned())]);
    let k = key(&c, "checkout");
    assert_eq!(k.digests.len(), 1);
    assert_eq!(k.ip_allowlist.len(), 2);
    assert_eq!(k.expires_at, Some(1_893_456_000));
    assert_eq!(k.budget.map(|b| b.amount.to_string()), Some("50.00".to_owned()));
    let ns = c.snapshot.namespaces.iter().map(|n| (n.namespace.as_str(), n.budget.map(|b| b.amount.to_string())));
    assert_eq!(ns.collect::<Vec<_>>(), vec![("team-a", Some("500.00".to_owned()))]);
}

#[test]
fn body_logging_is_off_unless_asked_and_takes_the_default_cap() {
    let base = format!("{SECRETS}{}", channel("a", "", "{name: m}", 1));
    assert_eq!(key(&compile_yaml(&format!("{base}{KEY}")), "checkout").log_bodies, None);
    let on = KEY.to_owned() + "  logging: {bodies: true}\n";
    assert_eq!(key(&compile_yaml(&format!("{base}{on}")), "checkout").log_bodies, Some(16_384));
    let capped = KEY.to_owned() + "  logging: {bodies: true, maxBodyBytes: 100}\n";
    assert_eq!(key(&compile_yaml(&format!("{base}{capped}")), "checkout").log_bodies, Some(100));
    let off = KEY.to_owned() + "  logging: {bodies: false}\n";
    assert_eq!(key(&compile_yaml(&format!("{base}{off}")), "checkout").log_bodies, None);
}

#[test]
fn key_digest_is_of_the_trimmed_secret_value_and_no_plaintext_is_kept() {
    let c = compile_yaml(&format!("{SECRETS}{}{KEY}", channel("a", "", "{name: m}", 1)));
    let k = key(&c, "checkout");
    assert_eq!(k.digests, vec![KeyDigest { sha256: key_digest("sk-checkout"), expires_at: None }]);
    let dump = format!("{:?}", c.snapshot);
    assert!(!dump.contains("sk-checkout"), "key plaintext leaked into the snapshot");
    assert!(!dump.contains("sk-upstream"), "upstream credential visible in Debug output");
}

#[test]
fn without_a_policy_every_channel_of_the_namespace_serving_the_model_is_a_candidate() {
    let yaml = format!(
        "{SECRETS}{}{}{}{KEY}",
        channel("a", "", "{name: gpt-4o}, {name: gpt-4o-mini}", 30),
        channel("b", "", "{name: gpt-4o}", 70),
        channel("c", "", "{name: other}", 1)
    );
    let c = compile_yaml(&yaml);
    assert_eq!(route(&c, "checkout", "gpt-4o"), vec![("a".into(), 30), ("b".into(), 70)]);
    assert_eq!(route(&c, "checkout", "gpt-4o-mini"), vec![("a".into(), 30)]);
}

#[test]
fn channels_of_other_namespaces_are_never_candidates() {
    let other_ns = channel("foreign", "", "{name: gpt-4o}", 50).replace("team-a", "team-b")
        + "\n---\napiVersion: v1\nkind: Secret\nmetadata: {name: openai-credentials, namespace: team-b}\nstringData: {apiKey: x}\n";
    let c = compile_yaml(&format!("{SECRETS}{}{other_ns}{KEY}", channel("a", "", "{name: gpt-4o}", 1)));
    assert_eq!(route(&c, "checkout", "gpt-4o"), vec![("a".into(), 1)]);
}

#[test]
fn a_namespace_policy_takes_over_the_models_it_matches() {
    let policy = r#"
---
apiVersion: llmweaver.io/v1alpha1
kind: RoutingPolicy
metadata: {name: default, namespace: team-a}
spec:
  models: ["gpt-4o*"]
  channels:
    - selector: {matchLabels: {tier: primary}}
    - name: backup
      weight: 10
"#;
    let yaml = format!(
        "{SECRETS}{}{}{}{policy}{KEY}",
        channel("primary", "tier: primary", "{name: gpt-4o}, {name: embed}", 100),
        channel("backup", "tier: backup", "{name: gpt-4o}", 100),
        channel("unlisted", "", "{name: gpt-4o}, {name: embed}", 100)
    );
    let c = compile_yaml(&yaml);
    assert_eq!(reasons(&c), vec![]);
    assert_eq!(route(&c, "checkout", "gpt-4o"), vec![("backup".into(), 10), ("primary".into(), 100)]);
    assert_eq!(
        c.resolved.get(&("team-a".into(), "default".into())),
        Some(&vec!["backup".to_owned(), "primary".to_owned()])
    );
    // Models the policy does not match keep the namespace default.
    assert_eq!(route(&c, "checkout", "embed"), vec![("primary".into(), 100), ("unlisted".into(), 100)]);
}

#[test]
fn a_key_naming_a_policy_uses_it_and_a_missing_one_is_reported() {
    let policy = r#"
---
apiVersion: llmweaver.io/v1alpha1
kind: RoutingPolicy
metadata: {name: cheap, namespace: team-a}
spec: {models: ["*"], channels: [{name: b}]}
"#;
    let keys = r#"
---
apiVersion: llmweaver.io/v1alpha1
kind: ApiKey
metadata: {name: named, namespace: team-a}
spec: {secretRef: {name: checkout-llm-key}, routingPolicy: cheap}
---
apiVersion: v1
kind: Secret
metadata: {name: dangling-apikey, namespace: team-a}
stringData: {apiKey: sk-other}
---
apiVersion: llmweaver.io/v1alpha1
kind: ApiKey
metadata: {name: dangling, namespace: team-a}
spec: {routingPolicy: nope}
"#;
    let yaml =
        format!("{SECRETS}{}{}{policy}{keys}", channel("a", "", "{name: m}", 1), channel("b", "", "{name: m}", 1));
    let c = compile_yaml(&yaml);
    assert_eq!(route(&c, "named", "m"), vec![("b".into(), 1)]);
    assert_eq!(reasons(&c), vec![(Kind::ApiKey, "dangling", ProblemReason::RoutingPolicyNotFound)]);
    // The namespace policy `cheap` matches `*`, so it is also the default.
    assert_eq!(route(&c, "dangling", "m"), vec![("b".into(), 1)]);
}

#[test]
fn a_channel_without_its_secret_is_left_out_and_reported() {
    let broken = channel("broken", "", "{name: m}", 1).replace("openai-credentials", "missing");
    let no_key = channel("nokey", "", "{name: m}", 1).replace("key: apiKey", "key: token");
    let c = compile_yaml(&format!("{SECRETS}{broken}{no_key}{}{KEY}", channel("ok", "", "{name: m}", 1)));
    assert_eq!(
        reasons(&c),
        vec![
            (Kind::Channel, "broken", ProblemReason::SecretNotFound),
            (Kind::Channel, "nokey", ProblemReason::SecretKeyNotFound),
        ]
    );
    assert_eq!(c.snapshot.channels.iter().map(|ch| ch.name.as_str()).collect::<Vec<_>>(), vec!["ok"]);
    assert!(c.problems[0].message.contains("team-a/missing"));
}

#[test]
fn credentials_are_required_only_where_the_provider_needs_them() {
    let yaml = r#"
apiVersion: llmweaver.io/v1alpha1
kind: Channel
metadata: {name: needs, namespace: team-a}
spec: {provider: mistral, models: [{name: m}]}
---
apiVersion: llmweaver.io/v1alpha1
kind: Channel
metadata: {name: local, namespace: team-a}
spec: {provider: ollama, models: [{name: llama3}]}
"#;
    let c = compile_yaml(yaml);
    assert_eq!(reasons(&c), vec![(Kind::Channel, "needs", ProblemReason::MissingCredentials)]);
    assert_eq!(c.snapshot.channels[0].base_url, "http://localhost:11434/v1");
    assert_eq!(c.snapshot.channels[0].credential, None);
}

#[test]
fn translated_providers_compile_with_their_default_roots() {
    let gemini = channel("gemini", "", "{name: gemini}", 1).replace("provider: openai", "provider: gemini");
    let cohere = channel("cohere", "", "{name: command}", 1).replace("provider: openai", "provider: cohere");
    let c = compile_yaml(&format!("{SECRETS}{gemini}{cohere}"));
    assert!(reasons(&c).is_empty(), "{:?}", reasons(&c));
    let mut roots: Vec<&str> = c.snapshot.channels.iter().map(|ch| ch.base_url.as_str()).collect();
    roots.sort_unstable();
    assert_eq!(roots, ["https://api.cohere.com/v2", "https://generativelanguage.googleapis.com/v1beta"]);
}

#[test]
fn dangling_references_and_unserved_models_are_reported_but_the_rest_routes() {
    let policy = r#"
---
apiVersion: llmweaver.io/v1alpha1
kind: RoutingPolicy
metadata: {name: p, namespace: team-a}
spec:
  models: ["m", "claude-*"]
  channels: [{name: a}, {name: ghost}]
"#;
    let c = compile_yaml(&format!("{SECRETS}{}{policy}{KEY}", channel("a", "", "{name: m}", 5)));
    assert_eq!(
        reasons(&c),
        vec![
            (Kind::RoutingPolicy, "p", ProblemReason::ChannelNotFound),
            (Kind::RoutingPolicy, "p", ProblemReason::NoChannelForModel),
        ]
    );
    assert_eq!(route(&c, "checkout", "m"), vec![("a".into(), 5)]);
}

#[test]
fn duplicate_models_and_duplicate_keys_are_reported() {
    let twin = KEY.replace("name: checkout,", "name: twin,");
    // Duplicate model names are refused at admission (`x-kubernetes-list-type: map`).
    let c = compile_unadmitted(&format!(
        "{SECRETS}{}{KEY}{twin}",
        channel("a", "", "{name: m}, {name: m, upstreamModel: x}", 1)
    ));
    assert_eq!(
        reasons(&c),
        vec![(Kind::Channel, "a", ProblemReason::DuplicateModel), (Kind::ApiKey, "twin", ProblemReason::DuplicateKey),]
    );
    assert_eq!(c.snapshot.channels[0].models.len(), 1);
    assert_eq!(c.snapshot.channels[0].models[0].upstream, "m");
}

#[test]
fn invalid_fields_that_bypass_the_schema_fail_closed() {
    // Admission refuses these in both modes; an object stored under an older
    // CRD may still carry them, so the compiler re-checks what would otherwise
    // open a key or mis-bill.
    let bad_cidr = KEY.replace("secretRef:", "ipAllowlist: [\"10.0.0.0/33\"]\n  secretRef:");
    let c = compile_unadmitted(&format!("{SECRETS}{}{bad_cidr}", channel("a", "", "{name: m}", 1)));
    assert_eq!(reasons(&c), vec![(Kind::ApiKey, "checkout", ProblemReason::InvalidField)]);
    assert!(c.snapshot.keys.is_empty());

    let bad_price = channel("p", "", "{name: m, pricing: {inputPerMillion: \"cheap\"}}", 1);
    let bad_timeout =
        channel("t", "", "{name: m}", 1).replace("weight: 1", "weight: 1\n  timeouts: {connect: 5 parsecs}");
    let c = compile_unadmitted(&format!("{SECRETS}{bad_price}{bad_timeout}"));
    assert_eq!(
        reasons(&c),
        vec![(Kind::Channel, "p", ProblemReason::InvalidField), (Kind::Channel, "t", ProblemReason::InvalidField)]
    );
}

#[test]
fn disabled_channels_are_not_candidates_and_not_problems() {
    let off = channel("off", "", "{name: m}", 1).replace("weight: 1", "weight: 1\n  disabled: true");
    let c = compile_yaml(&format!("{SECRETS}{off}{}{KEY}", channel("on", "", "{name: m}", 1)));
    assert_eq!(reasons(&c), vec![]);
    assert_eq!(route(&c, "checkout", "m"), vec![("on".into(), 1)]);
}

#[test]
fn output_does_not_depend_on_input_order() {
    let parts =
        [SECRETS.to_owned(), channel("a", "", "{name: m}", 1), channel("b", "", "{name: m}", 2), KEY.to_owned()];
    let forward = compile_yaml(&parts.join("\n---\n")).snapshot;
    let reversed: Vec<String> = parts.iter().rev().cloned().collect();
    let backward = compile_yaml(&reversed.join("\n---\n")).snapshot;
    assert_eq!(forward, backward);
}

#[test]
fn a_rotated_out_key_is_accepted_until_its_deadline() {
    let rotated = r#"
---
apiVersion: v1
kind: Secret
metadata:
  name: checkout-apikey
  namespace: team-a
  annotations: {llmweaver.io/previous-key-expires-at: "1900000000"}
data: {apiKey: bmV3LWtleQ==, apiKey.previous: b2xkLWtleQ==}   # new-key, old-key
---
apiVersion: llmweaver.io/v1alpha1
kind: ApiKey
metadata: {name: checkout, namespace: team-a}
spec: {}
"#;
    let c = compile_yaml(&format!("{}{rotated}", channel("a", "", "{name: m}", 1)));
    assert_eq!(
        key(&c, "checkout").digests,
        vec![
            KeyDigest { sha256: key_digest("new-key"), expires_at: None },
            KeyDigest { sha256: key_digest("old-key"), expires_at: Some(1_900_000_000) },
        ]
    );
}

#[test]
fn a_policy_whose_channels_are_all_unusable_does_not_fall_back_to_others() {
    let policy = r#"
---
apiVersion: llmweaver.io/v1alpha1
kind: RoutingPolicy
metadata: {name: eu-only, namespace: team-a}
spec: {models: ["gpt-4o"], channels: [{name: eu}]}
"#;
    let eu = channel("eu", "", "{name: gpt-4o}", 1).replace("weight: 1", "weight: 1\n  disabled: true");
    let c = compile_yaml(&format!("{SECRETS}{eu}{}{policy}{KEY}", channel("us", "", "{name: gpt-4o}", 1)));
    // The model stays routed to nothing, so the gateway answers 503, rather
    // than quietly going to `us`.
    assert_eq!(route(&c, "checkout", "gpt-4o"), vec![]);
    let k = key(&c, "checkout");
    let routed = c.snapshot.route_tables[k.route_table as usize].routes.get("gpt-4o");
    assert_eq!(routed.map(|r| r.candidates.len()), Some(0));
}

/// (channel, model, priority, fallback level) of each candidate, in order.
fn tiers(c: &Compiled, key_name: &str, model: &str) -> Vec<(String, String, i32, u8)> {
    let k = key(c, key_name);
    let route = &c.snapshot.route_tables[k.route_table as usize].routes[model];
    route
        .candidates
        .iter()
        .map(|cand| {
            let ch = &c.snapshot.channels[cand.channel as usize];
            (ch.name.clone(), ch.models[cand.model as usize].name.clone(), cand.priority, cand.fallback)
        })
        .collect()
}

#[test]
fn priorities_and_fallback_models_order_the_candidates_in_tiers() {
    let policy = r#"
---
apiVersion: llmweaver.io/v1alpha1
kind: RoutingPolicy
metadata: {name: resilient, namespace: team-a}
spec:
  models: ["gpt-4o"]
  channels:
    - name: backup
      priority: 5
    - name: main
  fallback: [{model: gpt-4o-mini}, {model: gpt-4o}]
"#;
    let yaml = format!(
        "{SECRETS}{}{}{}{policy}{KEY}",
        channel("backup", "", "{name: gpt-4o}", 1),
        channel("main", "", "{name: gpt-4o}", 1),
        channel("small", "", "{name: gpt-4o-mini}", 1).replace("weight: 1", "weight: 1\n  priority: -3"),
    );
    let c = compile_yaml(&yaml);
    assert_eq!(reasons(&c), vec![]);
    assert_eq!(
        tiers(&c, "checkout", "gpt-4o"),
        vec![
            ("main".into(), "gpt-4o".into(), 0, 0),
            ("backup".into(), "gpt-4o".into(), 5, 0),
            ("small".into(), "gpt-4o-mini".into(), -3, 1),
        ],
        "the policy's priority override, then the fallback model (never itself again)"
    );
    // The fallback model's own route has no fallback of its own.
    assert_eq!(tiers(&c, "checkout", "gpt-4o-mini"), vec![("small".into(), "gpt-4o-mini".into(), -3, 0)]);
}

#[test]
fn policy_settings_are_compiled_with_defaults_and_checked() {
    use crate::routing_policy::{RetryOn, Strategy};
    let policy = r#"
---
apiVersion: llmweaver.io/v1alpha1
kind: RoutingPolicy
metadata: {name: tuned, namespace: team-a}
spec:
  models: ["m"]
  channels: [{name: a}]
  strategy: cache-aware
  cacheAware: {prefixMessages: 2}
  fallback: [{model: nowhere}]
  retry:
    attempts: 3
    retryOn: [timeout, "5xx"]
    backoff: {base: 2s, max: 1s}
    perTryTimeout: 10s
    timeout: 30s
    budget: {percent: 50}
  outlierDetection: {consecutiveFailures: 2, baseEjectionTime: 1s, panicThresholdPercent: 30}
"#;
    let c = compile_yaml(&format!("{SECRETS}{}{policy}{KEY}", channel("a", "", "{name: m}, {name: n}", 1)));
    assert_eq!(
        reasons(&c),
        vec![
            (Kind::RoutingPolicy, "tuned", ProblemReason::InvalidField),
            (Kind::RoutingPolicy, "tuned", ProblemReason::NoChannelForModel),
        ]
    );
    let route = |model: &str| &c.snapshot.route_tables[key(&c, "checkout").route_table as usize].routes[model];
    let p = &c.snapshot.policies[route("m").policy as usize];
    assert_eq!(
        (p.name.as_deref(), p.strategy, p.cache_aware.prefix_messages),
        (Some("tuned"), Strategy::CacheAware, 2)
    );
    assert_eq!(p.cache_aware.load_factor_percent, 125);
    assert_eq!((p.retry.attempts, p.retry.retry_on.clone()), (3, vec![RetryOn::ServerError, RetryOn::Timeout]));
    assert_eq!((p.retry.backoff_base_ms, p.retry.backoff_max_ms), (1000, 1000), "base above max is cut to max");
    assert_eq!((p.retry.per_try_timeout_ms, p.retry.timeout_ms), (Some(10_000), Some(30_000)));
    assert_eq!((p.retry.budget_percent, p.retry.budget_min_per_second), (50, 10));
    assert_eq!(
        (p.outlier.consecutive_failures, p.outlier.base_ejection_ms, p.outlier.max_ejection_ms),
        (2, 1000, 300_000)
    );
    assert_eq!(p.outlier.panic_threshold_percent, 30);
    // A model no policy claims gets the namespace's defaults.
    let d = &c.snapshot.policies[route("n").policy as usize];
    assert_eq!((d.name.as_deref(), d.namespace.as_str()), (None, "team-a"));
    assert_eq!(d.retry, crate::snapshot::RetrySnapshot::default());
}

#[test]
fn channel_caps_reach_the_snapshot() {
    let capped = channel("a", "", "{name: m}", 1)
        .replace("weight: 1", "weight: 1\n  maxConcurrency: 8\n  requestsPerMinute: 600\n  queueTimeout: 250ms");
    let c = compile_yaml(&format!("{SECRETS}{capped}{}{KEY}", channel("b", "", "{name: m}", 1)));
    let limits: Vec<_> = c.snapshot.channels.iter().map(|ch| ch.limits).collect();
    assert_eq!(
        limits,
        vec![
            crate::snapshot::ChannelLimits {
                max_concurrency: Some(8),
                requests_per_minute: Some(600),
                queue_timeout_ms: 250
            },
            crate::snapshot::ChannelLimits::default(),
        ]
    );
}

#[test]
fn health_checks_reach_the_snapshot_with_defaults_and_a_checked_model() {
    let checked = channel("a", "", "{name: m}, {name: n}", 1)
        .replace("weight: 1", "weight: 1\n  healthCheck: {interval: 5s, model: n, unhealthyThreshold: 3}");
    let plain = channel("b", "", "{name: m}", 1).replace("weight: 1", "weight: 1\n  healthCheck: {}");
    let c = compile_yaml(&format!("{SECRETS}{checked}{plain}{KEY}"));
    let checks: Vec<_> = c.snapshot.channels.iter().map(|ch| ch.health_check.clone()).collect();
    let defaults = crate::snapshot::HealthCheckSnapshot {
        interval_ms: 30_000,
        timeout_ms: 10_000,
        model: 0,
        prompt: "ping".into(),
        max_tokens: 1,
        unhealthy_threshold: 2,
        healthy_threshold: 1,
    };
    let tuned = crate::snapshot::HealthCheckSnapshot {
        interval_ms: 5_000,
        model: 1,
        unhealthy_threshold: 3,
        ..defaults.clone()
    };
    assert_eq!(checks, vec![Some(tuned), Some(defaults)]);
    // A model the channel does not serve leaves the channel out, reported.
    let wrong = channel("a", "", "{name: m}", 1).replace("weight: 1", "weight: 1\n  healthCheck: {model: other}");
    let c = compile_yaml(&format!("{SECRETS}{wrong}{KEY}"));
    assert!(c.snapshot.channels.is_empty());
    assert!(reasons(&c).contains(&(Kind::Channel, "a", ProblemReason::InvalidField)), "{:?}", reasons(&c));
}

fn namespace_policy(name: &str, spec: &str) -> String {
    format!(
        r#"
---
apiVersion: llmweaver.io/v1alpha1
kind: NamespacePolicy
metadata: {{name: {name}, namespace: team-a}}
spec: {spec}
"#
    )
}

#[test]
fn a_namespace_policy_becomes_the_namespaces_budget_and_logging_default() {
    let base = format!("{SECRETS}{}", channel("a", "", "{name: m}", 1));
    let policy = namespace_policy(
        "default",
        r#"{budget: {amount: "100", period: monthly}, logging: {bodies: true, maxBodyBytes: 512}}"#,
    );
    let quiet = KEY.replace("name: checkout,", "name: quiet,").replace("checkout-llm-key", "quiet-key")
        + "  logging: {bodies: false}\n"
        + "---\napiVersion: v1\nkind: Secret\nmetadata: {name: quiet-key, namespace: team-a}\nstringData: {apiKey: q}\n";
    let c = compile_yaml(&format!("{base}{policy}{KEY}{quiet}"));
    assert_eq!(reasons(&c), vec![]);
    assert_eq!(c.snapshot.namespaces.len(), 1);
    let ns = &c.snapshot.namespaces[0];
    assert_eq!(ns.namespace, "team-a");
    assert_eq!(ns.budget.map(|b| (b.amount.to_string(), b.period)), Some(("100.00".to_owned(), BudgetPeriod::Monthly)));
    assert_eq!(key(&c, "checkout").budget, None, "the namespace's budget is its own, not copied into keys");
    assert_eq!(key(&c, "checkout").log_bodies, Some(512), "a key without logging takes the namespace's");
    assert_eq!(key(&c, "quiet").log_bodies, None, "a key's own logging wins, even when off");
    // Logging alone puts no entry into the snapshot: there is nothing to enforce.
    let logging_only = namespace_policy("default", "{logging: {bodies: true}}");
    let c = compile_yaml(&format!("{base}{logging_only}{KEY}"));
    assert!(c.snapshot.namespaces.is_empty());
    assert_eq!(key(&c, "checkout").log_bodies, Some(16_384));
}

#[test]
fn only_the_policy_named_default_applies_and_a_broken_budget_fails_closed() {
    // Admission refuses other names (a CEL rule); the compiler must not pick one anyway.
    let other = namespace_policy("team", r#"{budget: {amount: "1", period: daily}, logging: {bodies: true}}"#);
    let c = compile_unadmitted(&format!("{SECRETS}{other}{KEY}"));
    assert_eq!(reasons(&c), vec![(Kind::NamespacePolicy, "team", ProblemReason::InvalidField)]);
    assert!(c.snapshot.namespaces.is_empty());
    assert_eq!(key(&c, "checkout").log_bodies, None);
    // An amount beyond what nano-dollars hold passes the schema's pattern, not the compiler.
    let huge = namespace_policy("default", r#"{budget: {amount: "99999999999999999999", period: daily}}"#);
    let c = compile_yaml(&format!("{SECRETS}{huge}{KEY}"));
    assert_eq!(reasons(&c), vec![(Kind::NamespacePolicy, "default", ProblemReason::InvalidField)]);
    assert_eq!(c.snapshot.namespaces[0].budget.map(|b| b.amount.0), Some(0), "refused, never uncapped");
    assert!(key(&c, "checkout").budget.is_none());
}
