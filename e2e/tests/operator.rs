//! The operator against a real kube-apiserver + etcd, with two gateway
//! processes in cluster mode and the mock upstream. Run with `make e2e`
//! (it starts the control plane and sets WEAVER_E2E_KUBECONFIG).

use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use reqwest::StatusCode;
use serde_json::json;
use weaver_crds::{ApiKey, Channel, NamespacePolicy, RoutingPolicy};
use weaver_e2e::bed::{Bed, Setup, WAIT, store_url};
use weaver_e2e::cluster::Cluster;
use weaver_e2e::gateway::eventually_within;
use weaver_e2e::mock_upstream::{Behaviour, MockUpstream};
use weaver_e2e::records::record;
use weaver_store::{Outcome, Store, StoreOptions, UsageRecord, UsageStore};

#[tokio::test]
#[ignore = "needs the test control plane: run with `make e2e`"]
async fn issued_keys_reach_every_gateway_quickly() -> anyhow::Result<()> {
    let bed = Bed::new().await?;
    let key = bed.issued_key("app").await?;
    assert!(key.starts_with("lw-") && key.len() >= 40, "weak key issued");
    let secret = Api::<Secret>::namespaced(bed.cluster.client.clone(), &bed.ns).get("app-apikey").await?;
    let owner = secret.metadata.owner_references.unwrap_or_default();
    assert_eq!(owner.first().map(|o| (o.kind.as_str(), o.name.as_str())), Some(("ApiKey", "app")));
    bed.until_all(&key, "gpt-4o-mini", StatusCode::OK).await?;

    // The official OpenAI SDK gets an answer through a gateway (in the test
    // environment `make setup` creates; `make e2e` names its python).
    let python = std::env::var_os("WEAVER_E2E_PYTHON").unwrap_or_else(|| "python3".into());
    let out = tokio::process::Command::new(python)
        .arg(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("sdk/chat_once.py"))
        .args([format!("{}/v1", bed.gateway(0)), key.clone(), "gpt-4o-mini".into()])
        .output()
        .await?;
    assert!(out.status.success(), "SDK call failed: {}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("mock channel"));

    // Propagation: from applying an ApiKey to every gateway accepting its key.
    let mut took = Vec::new();
    for i in 0..8 {
        let name = format!("app-{i}");
        let applied = Instant::now();
        bed.cluster
            .apply_yaml(
                &bed.ns,
                &format!("apiVersion: llmweaver.io/v1alpha1\nkind: ApiKey\nmetadata: {{name: {name}}}\nspec: {{}}\n"),
            )
            .await?;
        let key = bed.issued_key(&name).await?;
        bed.until_all(&key, "gpt-4o-mini", StatusCode::OK).await?;
        took.push(applied.elapsed());
    }
    took.sort();
    let worst = took[took.len() - 1];
    println!(
        "apply -> all gateways accept the new key: p50 {:?}, p99 (max of {}) {worst:?}",
        took[took.len() / 2],
        took.len()
    );
    assert!(worst < Duration::from_secs(2), "propagation took {worst:?}");

    // Status shows only a prefix of the key.
    let k = Api::<ApiKey>::namespaced(bed.cluster.client.clone(), &bed.ns).get("app").await?;
    let prefix = k.status.and_then(|s| s.key_prefix).unwrap_or_default();
    assert!(prefix.len() == 7 && key.starts_with(&prefix), "prefix {prefix:?}");
    Ok(())
}

#[tokio::test]
#[ignore = "needs the test control plane: run with `make e2e`"]
async fn channel_changes_reach_both_gateways_without_failed_requests() -> anyhow::Result<()> {
    let (bed, key) = Bed::serving().await?;
    let before = bed.until_converged(0.0).await?;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let traffic = {
        let (http, gateways, key, stop) =
            (bed.http.clone(), [bed.gateway(0), bed.gateway(1)], key.clone(), stop.clone());
        tokio::spawn(async move {
            let mut statuses = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for g in &gateways {
                    let body = json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]});
                    let r = http.post(format!("{g}/v1/chat/completions")).bearer_auth(&key).json(&body).send().await;
                    statuses.push(r.map(|r| r.status().as_u16()).unwrap_or(0));
                }
            }
            statuses
        })
    };
    bed.patch::<Channel>(
        "primary",
        json!({"spec": {"weight": 250, "models": [
            {"name": "gpt-4o-mini", "upstreamModel": "gpt-4o-mini-2024-07-18", "pricing": {"inputPerMillion": "0.15", "outputPerMillion": "0.60"}},
            {"name": "gpt-4o"}
        ]}}),
    )
    .await?;
    let after = bed.until_converged(before).await?;
    println!("version {before} -> {after} acknowledged by both gateways");
    bed.until_all(&key, "gpt-4o", StatusCode::OK).await?;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let statuses = traffic.await?;
    assert!(statuses.len() > 10);
    assert!(statuses.iter().all(|s| *s == 200), "requests failed during the change: {statuses:?}");
    Ok(())
}

#[tokio::test]
#[ignore = "needs the test control plane: run with `make e2e`"]
async fn broken_references_are_reported_and_recover() -> anyhow::Result<()> {
    let bed = Bed::new().await?;
    bed.until_condition::<Channel>("primary", "Ready", "True", "Compiled").await?;
    bed.cluster
        .apply_yaml(
            &bed.ns,
            "apiVersion: llmweaver.io/v1alpha1\nkind: Channel\nmetadata: {name: lonely}\nspec:\n  provider: openai\n  credentials: {secretRef: {name: not-there}}\n  models: [{name: m}]\n---\napiVersion: llmweaver.io/v1alpha1\nkind: RoutingPolicy\nmetadata: {name: dangling}\nspec: {models: [\"gpt-4o*\"], channels: [{name: primary}, {name: ghost}]}\n",
        )
        .await?;
    bed.until_condition::<Channel>("lonely", "Ready", "False", "SecretNotFound").await?;
    bed.until_condition::<RoutingPolicy>("dangling", "Ready", "False", "ChannelNotFound").await?;
    assert!(bed.events_for("lonely").await?.contains(&"SecretNotFound".to_owned()));
    assert!(bed.events_for("dangling").await?.contains(&"ChannelNotFound".to_owned()));

    bed.cluster
        .apply_yaml(&bed.ns, "apiVersion: v1\nkind: Secret\nmetadata: {name: not-there}\nstringData: {apiKey: sk-x}\n")
        .await?;
    bed.cluster
        .apply_yaml(
            &bed.ns,
            "apiVersion: llmweaver.io/v1alpha1\nkind: RoutingPolicy\nmetadata: {name: dangling}\nspec: {models: [\"gpt-4o*\"], channels: [{name: primary}]}\n",
        )
        .await?;
    bed.until_condition::<Channel>("lonely", "Ready", "True", "Compiled").await?;
    bed.until_condition::<RoutingPolicy>("dangling", "Ready", "True", "Compiled").await?;
    assert!(bed.events_for("lonely").await?.contains(&"Compiled".to_owned()));
    let secret = Api::<Secret>::namespaced(bed.cluster.client.clone(), &bed.ns).get("not-there").await?;
    assert!(secret.metadata.owner_references.is_none(), "a user's Secret must not be taken over");
    Ok(())
}

#[tokio::test]
#[ignore = "needs the test control plane: run with `make e2e`"]
async fn rotation_keeps_the_old_key_for_the_grace_period_and_disabling_is_immediate() -> anyhow::Result<()> {
    let bed = Bed::new().await?;
    let old = bed.issued_key("app").await?;
    bed.until_all(&old, "gpt-4o-mini", StatusCode::OK).await?;
    bed.patch::<ApiKey>("app", json!({"spec": {"rotationTrigger": "2026-11-26", "rotationGracePeriod": "4s"}})).await?;
    let started = Instant::now();
    let new = eventually_within("the key is rotated", WAIT, Duration::from_millis(50), async || {
        let key = bed.issued_key("app").await?;
        Ok(if key == old { ControlFlow::Continue("the old key".to_owned()) } else { ControlFlow::Break(key) })
    })
    .await?;
    bed.until_all(&new, "gpt-4o-mini", StatusCode::OK).await?;
    assert_eq!(bed.chat(0, &old, "gpt-4o-mini").await, StatusCode::OK, "the old key must work during the grace period");
    let refused = bed.until_all(&old, "gpt-4o-mini", StatusCode::UNAUTHORIZED).await?;
    println!("old key refused {:?} after rotation", started.elapsed());
    println!("refused after the grace: {refused:?}");

    bed.patch::<ApiKey>("app", json!({"spec": {"disabled": true}})).await?;
    let took = bed.until_all(&new, "gpt-4o-mini", StatusCode::FORBIDDEN).await?;
    println!("disabled key refused after {took:?}");
    assert!(took < Duration::from_secs(2), "disabling took {took:?}");
    Ok(())
}

#[tokio::test]
#[ignore = "needs the test control plane: run with `make e2e`"]
async fn gateways_outlive_the_operator_and_restart_from_their_cache() -> anyhow::Result<()> {
    let (mut bed, key) = Bed::serving().await?;
    let before = bed.until_converged(0.0).await?;
    let operator_url = bed.operator_url();
    if let Some(op) = bed.operator.take() {
        op.kill().await?;
    }
    for _ in 0..20 {
        assert_eq!(bed.chat(0, &key, "gpt-4o-mini").await, StatusCode::OK);
        assert_eq!(bed.chat(1, &key, "gpt-4o-mini").await, StatusCode::OK);
    }
    // A gateway restarted while the operator is away serves from its cache.
    if let Some(g) = bed.gateways[1].take() {
        g.kill().await?;
    }
    bed.start_gateway_at(1, &operator_url, "gateway-restarted", "token").await?;
    assert_eq!(bed.chat(1, &key, "gpt-4o-mini").await, StatusCode::OK);
    let mode = std::fs::metadata(bed.path("cache-1.json"))?;
    assert_eq!(std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777, 0o600);

    // The operator comes back at the same address (as behind a Service); the
    // gateways reconnect by themselves and converge on a change made while it
    // was away.
    bed.patch::<Channel>("primary", json!({"spec": {"weight": 7}})).await?;
    bed.operator = Some(bed.operator_process(Some(operator_url.trim_start_matches("https://")), "operator-0").await?);
    bed.until_converged(before).await?;
    bed.until_all(&key, "gpt-4o-mini", StatusCode::OK).await?;
    Ok(())
}

#[tokio::test]
#[ignore = "needs the test control plane: run with `make e2e`"]
async fn usage_and_health_flow_into_status() -> anyhow::Result<()> {
    let (bed, key) = Bed::serving().await?;
    let sent_before = bed.upstream.requests().len();
    for i in 0..20 {
        assert_eq!(bed.chat(i % 2, &key, "gpt-4o-mini").await, StatusCode::OK);
    }
    // Every upstream request was this key's, including the probes above.
    let expected = bed.upstream.requests().len() as u64;
    assert!(expected >= 20 + sent_before as u64);
    let keys: Api<ApiKey> = Api::namespaced(bed.cluster.client.clone(), &bed.ns);
    let what = format!("ApiKey app's usage counts all {expected} requests");
    let usage = eventually_within(&what, WAIT, Duration::from_millis(200), async || {
        Ok(match keys.get("app").await?.status.and_then(|s| s.usage) {
            Some(usage) if usage.requests == expected => ControlFlow::Break(usage),
            usage => ControlFlow::Continue(format!("{usage:?}")),
        })
    })
    .await?;
    assert!(usage.input_tokens > 0 && usage.output_tokens > 0);
    assert_ne!(usage.cost, "0.00");
    let channels: Api<Channel> = Api::namespaced(bed.cluster.client.clone(), &bed.ns);
    eventually_within("health in Channel primary's status", WAIT, Duration::from_millis(200), async || {
        let status = channels.get("primary").await?.status.unwrap_or_default();
        let healthy = status.latency.as_ref().is_some_and(|l| l.p95.is_some())
            && status.success_rate.as_deref() == Some("100.0%");
        Ok(if healthy { ControlFlow::Break(()) } else { ControlFlow::Continue(format!("{status:?}")) })
    })
    .await?;
    bed.until_condition::<Channel>("primary", "Healthy", "True", "UpstreamAnswering").await?;
    Ok(())
}

/// Steady passing health checks write no status: a Channel's status changes
/// with what a user acts on (the `Healthy` condition, how many gateways pass,
/// a new probe result), not with every probe's time and latency.
#[tokio::test]
#[ignore = "needs the test control plane: run with `make e2e`"]
async fn steady_health_checks_do_not_rewrite_channel_status() -> anyhow::Result<()> {
    let bed = Bed::new().await?;
    bed.patch::<Channel>("primary", json!({"spec": {"healthCheck": {"interval": "200ms", "timeout": "5s"}}})).await?;
    bed.until_condition::<Channel>("primary", "Healthy", "True", "ProbeSucceeding").await?;
    let channels: Api<Channel> = Api::namespaced(bed.cluster.client.clone(), &bed.ns);
    let every = Duration::from_millis(100);
    eventually_within("both gateways' probes pass in lastProbe", WAIT, every, async || {
        let probe = channels.get("primary").await?.status.and_then(|s| s.last_probe);
        Ok(match probe {
            Some(p) if p.gateways_healthy.as_deref() == Some("2/2") => ControlFlow::Break(()),
            probe => ControlFlow::Continue(format!("{probe:?}")),
        })
    })
    .await?;

    // Counted from here: status writes (the operator's counter, and the
    // Channel's resourceVersion, which every write that changes it moves),
    // over probes (each gateway's) and status passes (the operator's).
    let op = bed.operator_metrics();
    let writes = "weaver_operator_status_writes_total";
    let passes = "weaver_operator_status_pass_seconds_count";
    let probes =
        format!("weaver_gateway_health_checks_total{{namespace=\"{}\",channel=\"primary\",result=\"ok\"}}", bed.ns);
    let counts = async || {
        let mut probed = Vec::new();
        for i in 0..bed.gateways.len() {
            probed.push(bed.metric(&bed.gateway_admin(i), &probes).await);
        }
        (bed.metric(&op, writes).await, bed.metric(&op, passes).await, probed)
    };
    let version = async || anyhow::Ok(channels.get("primary").await?.metadata.resource_version);
    let (writes_before, passes_before, probed_before) = counts().await;
    let version_before = version().await?;
    // 20 probe intervals, reported every 500 ms, and 10 status passes.
    let (writes_after, passes_after, probed_after) =
        eventually_within("20 more probes on each gateway and 10 more status passes", WAIT, every, async || {
            let (w, p, probed) = counts().await;
            let probed_enough = probed.iter().zip(&probed_before).all(|(now, then)| now - then >= 20.0);
            Ok(if probed_enough && p - passes_before >= 10.0 {
                ControlFlow::Break((w, p, probed))
            } else {
                ControlFlow::Continue(format!(
                    "{probed:?} probes (from {probed_before:?}), {p} passes (from {passes_before})"
                ))
            })
        })
        .await?;
    let version_after = version().await?;
    let written = writes_after - writes_before;
    let over = format!(
        "{} status passes and {:?} probes",
        passes_after - passes_before,
        probed_after.iter().zip(&probed_before).map(|(now, then)| now - then).collect::<Vec<_>>()
    );
    println!("status writes over {over}: {written}");
    assert_eq!(written, 0.0, "{written} status writes over {over}");
    assert_eq!(version_after, version_before, "Channel status rewritten over {over}");

    // A probe result a user acts on is still written.
    bed.upstream.set(Behaviour { error_status: Some(500), ..Behaviour::default() });
    bed.until_condition::<Channel>("primary", "Healthy", "False", "ProbeFailing").await?;
    let probe = channels.get("primary").await?.status.and_then(|s| s.last_probe);
    assert_eq!(
        probe.as_ref().map(|p| (p.succeeded, p.gateways_healthy.as_deref())),
        Some((false, Some("0/2"))),
        "{probe:?}"
    );
    Ok(())
}

#[tokio::test]
#[ignore = "needs the test control plane: run with `make e2e`"]
async fn a_gateway_with_the_wrong_service_account_is_refused() -> anyhow::Result<()> {
    let bed = Bed::new().await?;
    let stranger = bed.cluster.gateway_token(&bed.ns, "stranger", false).await?;
    let ca = reqwest::Certificate::from_pem(std::fs::read(bed.path("ca.pem"))?.as_slice())?;
    let client = reqwest::Client::builder().add_root_certificate(ca).build()?;
    let url = format!("{}/v1/snapshots", bed.operator_url());
    let refused = client.get(&url).bearer_auth(&stranger).send().await?;
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    let anonymous = client.get(&url).send().await?;
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    let forged = client.get(&url).bearer_auth("not-a-token").send().await?;
    assert_eq!(forged.status(), StatusCode::UNAUTHORIZED);
    let allowed = client.get(&url).bearer_auth(std::fs::read_to_string(bed.path("token"))?).send().await?;
    assert_eq!(allowed.status(), StatusCode::OK);
    // Without --store the operator serves no usage API, and says so.
    let off = client.get(format!("{}/admin/v1/usage/records", bed.operator_url())).send().await?;
    assert_eq!(off.status(), StatusCode::NOT_FOUND);
    let body: serde_json::Value = off.json().await?;
    assert_eq!(body["error"]["code"], "usage_api_off", "{body}");
    Ok(())
}

#[tokio::test]
#[ignore = "needs the test control plane: run with `make e2e`"]
async fn a_standby_replica_forwards_reports_and_takes_over_when_the_leader_dies() -> anyhow::Result<()> {
    let mut bed = Bed::new().await?;
    let key = bed.issued_key("app").await?;
    bed.until_leader("operator-0").await?;
    let standby = bed.operator_process(None, "operator-1").await?;
    let standby_url = format!("https://{}", standby.addr("addr"));
    bed.standby = Some(standby);
    // Gateway 1 talks to the standby only.
    if let Some(g) = bed.gateways[1].take() {
        g.kill().await?;
    }
    bed.start_gateway_at(1, &standby_url, "via-standby", "token").await?;
    bed.until_all(&key, "gpt-4o-mini", StatusCode::OK).await?;
    for _ in 0..10 {
        assert_eq!(bed.chat(1, &key, "gpt-4o-mini").await, StatusCode::OK);
    }
    // The standby passes gateway 1's reports to the leader, which counts them.
    let expected = bed.upstream.requests().len() as u64;
    let keys: Api<ApiKey> = Api::namespaced(bed.cluster.client.clone(), &bed.ns);
    eventually_within("usage via the standby arrives", WAIT, Duration::from_millis(200), async || {
        let requests = keys.get("app").await?.status.and_then(|s| s.usage).map_or(0, |u| u.requests);
        Ok(if requests == expected {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(format!("{requests} of {expected} requests"))
        })
    })
    .await?;

    // The leader dies; the standby takes the lease and writes from then on.
    if let Some(op) = bed.operator.take() {
        op.kill().await?;
    }
    let failover = bed.until_leader("operator-1").await?;
    println!("standby took over after {failover:?}");
    assert_eq!(bed.chat(0, &key, "gpt-4o-mini").await, StatusCode::OK, "gateways keep serving during the failover");
    bed.patch::<ApiKey>("app", json!({"spec": {"disabled": true}})).await?;
    bed.until_condition::<ApiKey>("app", "Ready", "False", "Disabled").await?;
    eventually_within("the new leader's change reaches gateway 1", WAIT, Duration::from_millis(50), async || {
        Ok(match bed.chat(1, &key, "gpt-4o-mini").await {
            StatusCode::FORBIDDEN => ControlFlow::Break(()),
            status => ControlFlow::Continue(format!("gateway 1 answered {status}")),
        })
    })
    .await?;
    // Gateway 0's operator is gone, so it keeps serving its last snapshot.
    assert_eq!(bed.chat(0, &key, "gpt-4o-mini").await, StatusCode::OK);
    Ok(())
}

/// The burst of [`a_burst_of_applies_is_compiled_a_few_times_not_once_per_apply`]:
/// ApiKeys with a Secret each.
const BURST: usize = 200;

#[tokio::test]
#[ignore = "needs the test control plane: run with `make e2e`"]
async fn a_burst_of_applies_is_compiled_a_few_times_not_once_per_apply() -> anyhow::Result<()> {
    use futures_util::{StreamExt, TryStreamExt};
    // One gateway, so the replica count the snapshot carries never changes:
    // only the resources make the operator compile.
    let mut setup = Setup::new(MockUpstream::start(Behaviour::default()).await?);
    setup.gateways = 1;
    let bed = Bed::start(setup).await?;
    let operator = bed.operator.as_ref().ok_or_else(|| anyhow::anyhow!("no operator"))?;
    // The gateway serving the issued key means the last change of the
    // start-up (issuing it) is compiled; the status writes that follow
    // compile nothing.
    let app = bed.issued_key("app").await?;
    bed.until_all(&app, "gpt-4o-mini", StatusCode::OK).await?;
    let metrics = bed.operator_metrics();
    let compiles = || bed.metric(&metrics, "weaver_operator_compiles_total");
    let before = compiles().await;

    // The operator is paused while the burst is applied, so it finds the
    // whole burst waiting however long the applies take on a loaded machine
    // (as an operator throttled by its CPU limit during a GitOps sync): what
    // is counted is how it coalesces a burst, not how fast the burst came.
    operator.pause().await?;
    let applied = futures_util::stream::iter(0..BURST)
        .map(|i| {
            let (cluster, ns) = (bed.cluster.clone(), bed.ns.clone());
            async move {
                let yaml = format!(
                    "apiVersion: v1\nkind: Secret\nmetadata: {{name: burst-{i}}}\nstringData: {{apiKey: lw-burst-{i:04}-0123456789abcdef}}\n---\napiVersion: llmweaver.io/v1alpha1\nkind: ApiKey\nmetadata: {{name: burst-{i}}}\nspec: {{secretRef: {{name: burst-{i}}}}}\n"
                );
                cluster.apply_yaml(&ns, &yaml).await
            }
        })
        .buffer_unordered(32)
        .try_collect::<Vec<_>>()
        .await;
    operator.resume().await?;
    applied?;
    bed.until_all(&format!("lw-burst-{:04}-0123456789abcdef", BURST - 1), "gpt-4o-mini", StatusCode::OK).await?;
    // The leader writes every new ApiKey's status: watch events too.
    let keys: Api<ApiKey> = Api::namespaced(bed.cluster.client.clone(), &bed.ns);
    eventually_within("every burst ApiKey is ready", WAIT, Duration::from_millis(100), async || {
        let ready = keys
            .list(&Default::default())
            .await?
            .items
            .iter()
            .filter(|k| k.metadata.name.as_deref().is_some_and(|n| n.starts_with("burst-")))
            .filter(|k| {
                let conditions = k.status.as_ref().map(|s| s.conditions.as_slice()).unwrap_or_default();
                conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True")
            })
            .count();
        Ok(if ready == BURST {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(format!("{ready} of {BURST} ApiKeys ready"))
        })
    })
    .await?;

    // One compilation for the burst; at most one more for each of the two
    // watches (Secrets, ApiKeys) the API server may have cut while the
    // operator did not read, which resume a moment later.
    let compiles = compiles().await - before;
    println!("{} applies -> {compiles} compilations", 2 * BURST);
    assert!(compiles <= 3.0, "{compiles} compilations for one burst of {} applies", 2 * BURST);
    Ok(())
}

/// The usage store `make e2e` starts, migrated, and a bed whose operator
/// reads it, with `yaml` applied to the bed's namespace.
async fn bed_on_store(yaml: &str) -> anyhow::Result<(Store, Bed)> {
    let store = Store::connect(&store_url()?, StoreOptions::default())?;
    store.migrate().await?;
    let bed = Bed::with_store(Some(store_url()?)).await?;
    bed.cluster.apply_yaml(&bed.ns, yaml).await?;
    Ok((store, bed))
}

#[tokio::test]
#[ignore = "needs the test control plane and Postgres: run with `make e2e`"]
async fn usage_comes_from_the_store_across_leader_changes_and_budget_alerts_fire_once() -> anyhow::Result<()> {
    use weaver_crds::money::Usd;
    let (store, mut bed) = bed_on_store(
        "apiVersion: llmweaver.io/v1alpha1\nkind: ApiKey\nmetadata: {name: budgeted}\n\
         spec: {budget: {amount: \"1.00\", period: total, alertThresholds: [50, 100]}}\n",
    )
    .await?;
    let ns = bed.ns.clone();
    let (ok, failed, refused) = (Outcome::Ok, Outcome::UpstreamError, Outcome::Rejected);
    // Two days ago: `app` (no budget) and the channel count all time, and
    // earlier days are read apart from today.
    let earlier = UsageRecord {
        time: weaver_store::now_ms() - 2 * weaver_store::DAY_MS,
        ..record(&ns, "app", Some("primary"), "a1", ok, (1_000, 200), 1_234_567)
    };
    store
        .insert_batch(&[
            earlier,
            record(&ns, "app", Some("primary"), "a2", failed, (10, 0), 0),
            record(&ns, "app", None, "a3", refused, (0, 0), 0),
            record(&ns, "budgeted", Some("primary"), "b1", ok, (5_000, 1_000), 550_000_000),
        ])
        .await?;
    let app = |requests, input, cost, errors| (requests, input, 200, Usd(cost).to_string(), Some(errors));
    let channel =
        |requests, input, output, cost, errors| (requests, input, output, Usd(cost).to_string(), Some(errors));
    bed.until_usage("app", &app(3, 1_010, 1_234_567, 2), "primary", &channel(3, 6_010, 1_200, 551_234_567, 1)).await?;
    let budgeted = (1, 5_000, 1_000, "0.55".to_owned(), Some(0));
    // Applied just before the records: its first status may come a pass later.
    bed.until_usage("budgeted", &budgeted, "primary", &channel(3, 6_010, 1_200, 551_234_567, 1)).await?;
    let events = bed.until_budget_events("budgeted", 1).await?;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].0, "Normal");
    assert!(events[0].1.contains("Spent 0.55 USD of the 1.00 USD budget (55%), crossing 50%"), "{events:?}");
    let alerts = |t: u32| format!("weaver_operator_budget_alerts_total{{namespace=\"{ns}\",threshold=\"{t}\"}}");
    assert_eq!(bed.metric(&bed.operator_metrics(), &alerts(50)).await, 1.0);
    bed.until_condition::<ApiKey>("budgeted", "BudgetExceeded", "False", "WithinBudget").await?;

    // A leader change: the new leader reads the same store, so a record
    // written after it took over shows up once and nothing before it twice.
    bed.replace_operator("operator-1", Some(store_url()?)).await?;
    store.insert_batch(&[record(&ns, "app", Some("primary"), "a4", ok, (5, 0), 1_000)]).await?;
    bed.until_usage("app", &app(4, 1_015, 1_235_567, 2), "primary", &channel(4, 6_015, 1_200, 551_235_567, 1)).await?;
    assert_eq!(bed.key_usage("budgeted").await, Some(budgeted));
    assert_eq!(bed.budget_events("budgeted").await?.len(), 1, "the new leader announced 50% again");

    // Exactly at the budget: 100% is crossed, once, as a Warning.
    store.insert_batch(&[record(&ns, "budgeted", Some("primary"), "b2", ok, (0, 0), 450_000_000)]).await?;
    let events = bed.until_budget_events("budgeted", 2).await?;
    bed.until_condition::<ApiKey>("budgeted", "BudgetExceeded", "True", "OverBudget").await?;
    // One more pass after it (a record of another key) adds no Event.
    store.insert_batch(&[record(&ns, "app", Some("primary"), "a5", ok, (5, 0), 1_000)]).await?;
    bed.until_usage("app", &app(5, 1_020, 1_236_567, 2), "primary", &channel(6, 6_020, 1_200, 1_001_236_567, 1))
        .await?;
    assert_eq!(bed.budget_events("budgeted").await?, events);
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!(events[1].0, "Warning", "{events:?}");
    assert!(events[1].1.contains("Spent 1.00 USD of the 1.00 USD budget (100%), crossing 100%"), "{events:?}");
    assert_eq!(bed.metric(&bed.operator_metrics(), &alerts(100)).await, 1.0);
    assert_eq!(bed.metric(&bed.operator_metrics(), &alerts(50)).await, -1.0, "50% was the old leader's");
    let keys: Api<ApiKey> = Api::namespaced(bed.cluster.client.clone(), &ns);
    let alert = keys.get("budgeted").await?.status.and_then(|s| s.budget_alert);
    assert_eq!(alert.map(|a| (a.threshold, a.period_start.0.as_second())), Some((100, 0)));

    // A leader whose store does not answer keeps the status it finds: no
    // zeroed usage, an error counted on every pass.
    let before = (bed.key_usage("app").await, bed.channel_usage("primary").await, bed.key_usage("budgeted").await);
    bed.replace_operator("operator-2", Some("postgres://weaver@127.0.0.1:1/nothing".into())).await?;
    // Two failed passes: the first one's writes are done when the second starts.
    bed.until_metric("weaver_operator_errors_total{category=\"store\"}", 2.0).await?;
    let after = (bed.key_usage("app").await, bed.channel_usage("primary").await, bed.key_usage("budgeted").await);
    assert_eq!(after, before);
    assert_eq!(bed.budget_events("budgeted").await?, events);
    bed.until_condition::<ApiKey>("budgeted", "BudgetExceeded", "True", "OverBudget").await?;
    Ok(())
}

/// The request ids of a records page.
fn record_ids(page: &serde_json::Value) -> std::collections::BTreeSet<String> {
    page["data"].as_array().into_iter().flatten().filter_map(|r| r["request_id"].as_str().map(str::to_owned)).collect()
}

#[tokio::test]
#[ignore = "needs the test control plane and Postgres: run with `make e2e`"]
async fn the_usage_api_shows_each_caller_the_namespaces_its_rbac_allows() -> anyhow::Result<()> {
    use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use weaver_crds::money::Usd;
    use weaver_e2e::cluster::service_account_subject;
    use weaver_e2e::usage_reader::{UsageReader, role_ref, rules, team_token};

    let cluster = Cluster::connect().await?;
    let (a, b, home) = (
        cluster.namespace("usage-a").await?,
        cluster.namespace("usage-b").await?,
        cluster.namespace("usage-op").await?,
    );
    // ApiKeys make A and B namespaces a request naming none may come to.
    let key = |spec: &str| {
        format!("apiVersion: llmweaver.io/v1alpha1\nkind: ApiKey\nmetadata: {{name: app}}\nspec: {spec}\n")
    };
    cluster.apply_yaml(&a, &key("{budget: {amount: \"2.00\", period: monthly}}")).await?;
    cluster.apply_yaml(&b, &key("{}")).await?;
    let store = Store::connect(&store_url()?, StoreOptions::default())?;
    store.migrate().await?;
    let written = [
        record(&a, "app", Some("primary"), "1", Outcome::Ok, (100, 10), 1_000),
        record(&a, "app", Some("primary"), "2", Outcome::Ok, (200, 20), 2_000),
        record(&a, "gone", None, "3", Outcome::Rejected, (0, 0), 0),
        record(&b, "app", Some("primary"), "4", Outcome::Ok, (300, 30), 30_000),
        record(&b, "app", Some("primary"), "5", Outcome::Ok, (400, 40), 40_000),
    ];
    store.insert_batch(&written).await?;
    let ids = |namespaces: &[&str]| -> std::collections::BTreeSet<String> {
        written.iter().filter(|r| namespaces.contains(&r.namespace.as_str())).map(|r| r.request_id.clone()).collect()
    };

    // Team A's ServiceAccount may read usage and ApiKeys in A (a Role); the
    // auditor everywhere (a ClusterRole); nobody nothing.
    let team = team_token(&cluster, &a, "team").await?;
    let meta = |name: &str| ObjectMeta { name: Some(name.into()), ..Default::default() };
    let auditor_role = format!("{home}-usage-reader");
    cluster
        .apply_cluster(&ClusterRole { metadata: meta(&auditor_role), rules: Some(rules()), ..Default::default() })
        .await?;
    let binding = ClusterRoleBinding {
        metadata: meta(&auditor_role),
        role_ref: role_ref("ClusterRole", &auditor_role),
        subjects: Some(vec![service_account_subject(&home, "auditor")]),
    };
    cluster.apply_cluster(&binding).await?;
    // As `kubectl create token` issues them: for the API server's audiences.
    let auditor = cluster.token(&home, "auditor", &[]).await?;
    let nobody = cluster.token(&home, "nobody", &[]).await?;
    let for_gateways = cluster.token(&home, "auditor", &[weaver_crds::protocol::TOKEN_AUDIENCE]).await?;

    // Another replica holds the Lease throughout, so this one (watching every
    // namespace) writes nothing into other tests' namespaces: serving the
    // usage API takes no leadership.
    cluster.lease_held_elsewhere(&home).await?;
    let dir = tempfile::tempdir()?;
    let args = ["--listen".to_owned(), "127.0.0.1:0".to_owned(), "--store".to_owned(), store_url()?];
    let operator = cluster.operator(&home, "usage-api", &args, dir.path().join("operator.log")).await?;
    let api =
        UsageReader::new(&format!("https://{}", operator.addr("addr")), cluster.operator_ca(&home).await?.as_bytes())?;

    // Team A asking for everything gets A's records, exactly as written.
    let page = api.until(&team, "/usage/records", |p| record_ids(p) == ids(&[&a])).await?;
    for r in page["data"].as_array().into_iter().flatten() {
        let sent = written
            .iter()
            .find(|w| r["request_id"] == w.request_id.as_str())
            .ok_or_else(|| anyhow::anyhow!("a record nobody wrote: {r}"))?;
        assert_eq!((r["namespace"].as_str(), r["api_key"].as_str()), (Some(a.as_str()), Some(sent.api_key.as_str())));
        assert_eq!(r["input_tokens"], sent.input_tokens);
        assert_eq!(r["cost_usd"], Usd(sent.cost_nanos).to_string());
    }
    let (status, summary) = api.get(Some(&team), "/usage/summary").await?;
    assert_eq!(status, StatusCode::OK, "{summary}");
    assert_eq!(
        (&summary["data"][0]["requests"], &summary["data"][0]["cost_usd"]),
        (&json!(3), &json!(Usd(3_000).to_string()))
    );
    // ... and a 403 naming the namespace and the RBAC it lacks for B.
    for path in [format!("/usage/records?namespace={b}"), format!("/usage/export?namespace={a},{b}")] {
        let (status, body) = api.get(Some(&team), &path).await?;
        assert_eq!(status, StatusCode::FORBIDDEN, "{path}: {body}");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(
            message.contains(&format!(
                "cannot get resource \"apikeys/usage\" in API group \"llmweaver.io\" in the namespace \"{b}\""
            )),
            "{message}"
        );
    }
    // A key's budget needs `get` on that ApiKey.
    let (status, body) = api.get(Some(&team), &format!("/keys/{a}/app")).await?;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["budget"]["limit_usd"], "2.00".parse::<Usd>()?.to_string());
    assert_eq!((&body["usage"]["requests"], &body["usage"]["cost_usd"]), (&json!(2), &json!(Usd(3_000).to_string())));
    assert!(body["budget"]["ledger"].is_object(), "{body}");
    let (status, body) = api.get(Some(&team), &format!("/keys/{b}/app")).await?;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (status, body) = api.get(Some(&team), &format!("/keys/{a}/missing")).await?;
    assert_eq!((status, &body["error"]["code"]), (StatusCode::NOT_FOUND, &json!("key_not_found")));

    // The cluster-wide reader sees both namespaces, asked by name or not.
    let both = format!("/usage/records?namespace={a},{b}");
    api.until(&auditor, &both, |p| record_ids(p) == ids(&[&a, &b])).await?;
    let (status, summary) = api.get(Some(&auditor), "/usage/summary?group_by=key").await?;
    assert_eq!(status, StatusCode::OK, "{summary}");
    let requests = |ns: &str, key: &str| {
        summary["data"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|row| row["namespace"] == ns && row["api_key"] == key)
            .map(|row| row["requests"].clone())
    };
    assert_eq!((requests(&a, "app"), requests(&b, "app")), (Some(json!(2)), Some(json!(2))), "{summary}");

    // Authenticated without any grant: 403 for usage, the document is open.
    let (status, body) = api.get(Some(&nobody), "/usage/records").await?;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(body["error"]["message"].as_str().is_some_and(|m| m.contains("nor in any namespace that has ApiKeys")));
    assert_eq!(api.get(Some(&nobody), "/openapi.yaml").await?.0, StatusCode::OK);
    // No token, a bad one, one for the gateways' audience: 401.
    for token in [None, Some("not-a-token"), Some(for_gateways.as_str())] {
        let (status, body) = api.get(token, "/usage/records").await?;
        assert_eq!((status, &body["error"]["code"]), (StatusCode::UNAUTHORIZED, &json!("invalid_admin_token")));
    }
    Ok(())
}

#[tokio::test]
#[ignore = "needs the test control plane and Postgres: run with `make e2e`"]
async fn a_namespace_policy_shows_its_keys_spend_together_and_alerts_on_its_budget() -> anyhow::Result<()> {
    use weaver_crds::money::Usd;
    let (store, bed) = bed_on_store(
        "apiVersion: llmweaver.io/v1alpha1\nkind: NamespacePolicy\nmetadata: {name: default}\n\
         spec: {budget: {amount: \"1.00\", period: total, alertThresholds: [50, 100]}}\n",
    )
    .await?;
    let ns = bed.ns.clone();
    bed.until_condition::<NamespacePolicy>("default", "Ready", "True", "Compiled").await?;
    // Two keys' spend (the second has no ApiKey: usage counts all the same).
    let ok = Outcome::Ok;
    store
        .insert_batch(&[
            record(&ns, "app", Some("primary"), "n1", ok, (1_000, 100), 300_000_000),
            record(&ns, "other", Some("primary"), "n2", ok, (2_000, 200), 300_000_000),
        ])
        .await?;
    let policies: Api<NamespacePolicy> = Api::namespaced(bed.cluster.client.clone(), &ns);
    let status = || async { policies.get("default").await.ok().and_then(|p| p.status).unwrap_or_default() };
    let want = Some((2, 3_000, 300, Usd(600_000_000).to_string(), Some(0)));
    eventually_within("the namespace usage in status", WAIT, Duration::from_millis(100), async || {
        let usage = bed.namespace_usage().await;
        Ok(if usage == want {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(format!("usage {usage:?}; status {:?}", status().await))
        })
    })
    .await?;
    assert_eq!(status().await.remaining.as_deref(), Some("0.40"));
    bed.until_condition::<NamespacePolicy>("default", "BudgetExceeded", "False", "WithinBudget").await?;
    let events = bed.until_budget_events("default", 1).await?;
    assert!(events[0].1.contains("Spent 0.60 USD of the 1.00 USD budget (60%), crossing 50%"), "{events:?}");

    store.insert_batch(&[record(&ns, "app", Some("primary"), "n3", ok, (0, 0), 400_000_000)]).await?;
    bed.until_condition::<NamespacePolicy>("default", "BudgetExceeded", "True", "OverBudget").await?;
    let events = bed.until_budget_events("default", 2).await?;
    assert_eq!(events[1].0, "Warning", "{events:?}");
    assert_eq!(status().await.remaining.as_deref(), Some("0.00"));
    let alerts = format!("weaver_operator_budget_alerts_total{{namespace=\"{ns}\",threshold=\"100\"}}");
    assert_eq!(bed.metric(&bed.operator_metrics(), &alerts).await, 1.0);
    Ok(())
}
