"""The llmweaver.io CRDs (crds/manifests/*.yaml) against a real kube-apiserver.

* every CRD is accepted and becomes Established (conftest.crds);
* every Channel/ApiKey/RoutingPolicy in config/samples/*.yaml is accepted as written;
* a minimal valid object of each kind is accepted, and each invalid case below,
  built by changing exactly one thing in that minimal object, is rejected with
  HTTP 422 and a message containing the given substring.

Run: python3 -m pytest e2e/crd   (the first run builds kube-apiserver + etcd; see
e2e/control-plane).
"""

from __future__ import annotations

import copy

import pytest
import yaml

from conftest import GROUP, PLURALS, SAMPLES_DIR, VERSION, describe, resource_path

API_VERSION = f"{GROUP}/{VERSION}"

MINIMAL = {
    "Channel": {"provider": "openai", "models": [{"name": "gpt-4o-mini"}]},
    "ApiKey": {},
    "RoutingPolicy": {"models": ["gpt-4o*"], "channels": [{"name": "x"}]},
}


def manifest(kind: str, spec: dict, name: str = "test") -> dict:
    return {"apiVersion": API_VERSION, "kind": kind, "metadata": {"name": name}, "spec": spec}


def create(api, namespace: str, obj: dict):
    obj = copy.deepcopy(obj)
    obj["metadata"]["namespace"] = namespace
    return api.post(resource_path(namespace, obj["kind"]), obj)


# --- samples ------------------------------------------------------------------------------


def load_samples() -> list:
    params = []
    for path in sorted(SAMPLES_DIR.glob("*.yaml")):
        for i, doc in enumerate(yaml.safe_load_all(path.read_text())):
            if not doc or doc.get("kind") not in PLURALS:
                continue
            name = doc.get("metadata", {}).get("name", "?")
            params.append(pytest.param(path.name, doc, id=f"{path.name}#{i}:{doc['kind']}/{name}"))
    return params


SAMPLES = load_samples()


def test_crds_cover_all_kinds(crds):
    kinds = {c["spec"]["names"]["kind"]: c for c in crds}
    for kind, plural in PLURALS.items():
        assert kind in kinds, f"no CRD for kind {kind}; got {sorted(kinds)}"
        spec = kinds[kind]["spec"]
        assert spec["group"] == GROUP
        assert spec["names"]["plural"] == plural
        assert spec["scope"] == "Namespaced"
        assert VERSION in [v["name"] for v in spec["versions"] if v.get("served")]


def test_samples_cover_all_kinds():
    found = {doc["kind"] for _, doc in (p.values for p in SAMPLES)}
    missing = sorted(set(PLURALS) - found)
    assert not missing, f"{SAMPLES_DIR}/*.yaml has no sample of kind(s) {missing}"


@pytest.mark.parametrize(("filename", "doc"), SAMPLES)
def test_sample_is_accepted(api, namespace, filename, doc):
    assert doc.get("apiVersion") == API_VERSION, f"{filename}: apiVersion {doc.get('apiVersion')!r}"
    resp = create(api, namespace, doc)
    assert resp.status_code == 201, f"{filename} {doc['kind']}/{doc['metadata'].get('name')}: {describe(resp)}"


# --- minimal valid objects ----------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(MINIMAL))
def test_minimal_object_is_accepted(api, namespace, kind):
    resp = create(api, namespace, manifest(kind, copy.deepcopy(MINIMAL[kind])))
    assert resp.status_code == 201, describe(resp)


# --- invalid objects ----------------------------------------------------------------------------


def with_model_pricing(pricing: dict) -> dict:
    return {"models": [{"name": "gpt-4o-mini", "pricing": pricing}]}


# (id, kind, fields merged into the minimal spec, substring(s) expected in the message).
# Field paths are asserted where the rule itself gives no wording, so that a case
# cannot pass because some other field was rejected.
INVALID = [
    ("channel-provider-bogus", "Channel", {"provider": "bogus"}, ("spec.provider", "Unsupported value")),
    ("channel-weight-too-big", "Channel", {"weight": 10001}, "spec.weight"),
    ("channel-weight-negative", "Channel", {"weight": -1}, "spec.weight"),
    ("channel-azure-without-baseUrl", "Channel", {"provider": "azure-openai"}, "baseUrl"),
    ("channel-timeout-not-a-duration", "Channel", {"timeouts": {"connect": "5 parsecs"}}, "duration"),
    ("channel-price-negative", "Channel", with_model_pricing({"inputPerMillion": "-1"}), "spec.models[0].pricing.inputPerMillion"),
    ("channel-price-not-a-number", "Channel", with_model_pricing({"inputPerMillion": "abc"}), "spec.models[0].pricing.inputPerMillion"),
    ("channel-no-models", "Channel", {"models": []}, "spec.models"),
    ("apikey-cidr-prefix-too-long", "ApiKey", {"ipAllowlist": ["10.0.0.0/33"]}, "CIDR"),
    ("apikey-cidr-not-an-ip", "ApiKey", {"ipAllowlist": ["not-an-ip"]}, "CIDR"),
    ("apikey-budget-zero", "ApiKey", {"budget": {"amount": "0", "period": "monthly"}}, "spec.budget.amount"),
    ("apikey-budget-not-a-number", "ApiKey", {"budget": {"amount": "ten", "period": "monthly"}}, "spec.budget.amount"),
    ("apikey-budget-period-yearly", "ApiKey", {"budget": {"amount": "10", "period": "yearly"}}, "spec.budget.period"),
    ("policy-strategy-fastest", "RoutingPolicy", {"strategy": "fastest"}, "spec.strategy"),
    ("policy-retry-on-418", "RoutingPolicy", {"retry": {"attempts": 3, "retryOn": ["418"]}}, "spec.retry.retryOn"),
    (
        "policy-channel-name-and-selector",
        "RoutingPolicy",
        {"channels": [{"name": "x", "selector": {"matchLabels": {"tier": "cheap"}}}]},
        "exactly one of name or selector",
    ),
    ("policy-channel-neither-name-nor-selector", "RoutingPolicy", {"channels": [{}]}, "exactly one of name or selector"),
]


@pytest.mark.parametrize(
    ("kind", "change", "expected"),
    [pytest.param(kind, change, expected, id=case_id) for case_id, kind, change, expected in INVALID],
)
def test_invalid_object_is_rejected(api, namespace, kind, change, expected):
    spec = {**copy.deepcopy(MINIMAL[kind]), **copy.deepcopy(change)}
    resp = create(api, namespace, manifest(kind, spec))
    assert resp.status_code == 422, f"expected 422 for spec {spec}, got {describe(resp)}"
    body = resp.json()
    assert body.get("reason") == "Invalid", describe(resp)
    message = body.get("message", "")
    for want in (expected,) if isinstance(expected, str) else expected:
        assert want in message, f"{want!r} not in message: {message!r}"
