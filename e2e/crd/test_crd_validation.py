"""The llmweaver.io CRDs (crds/manifests/*.yaml) against a real kube-apiserver.

* every CRD is accepted and becomes Established (conftest.crds);
* every Channel/ApiKey/RoutingPolicy/NamespacePolicy in config/samples/*.yaml is accepted as written;
* a minimal valid object of each kind is accepted;
* every manifest in invalid-manifests.yaml is rejected with HTTP 422 and exactly
  the causes (field and message) listed there, the same list standalone loading
  is tested against (crds/tests/admission.rs).

Run: make e2e, or on its own with the test environment `make setup` creates:
  ${WEAVER_CACHE:-~/.cache/llm-weaver}/venv/bin/python -m pytest e2e/crd
(the first run builds kube-apiserver + etcd; see e2e/control-plane).
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from conftest import GROUP, PLURALS, SAMPLES_DIR, VERSION, describe, resource_path

API_VERSION = f"{GROUP}/{VERSION}"

MINIMAL = {
    "Channel": {"provider": "openai", "models": [{"name": "gpt-4o-mini"}]},
    "ApiKey": {},
    "RoutingPolicy": {"models": ["gpt-4o*"], "channels": [{"name": "x"}]},
    "NamespacePolicy": {},
}
# A NamespacePolicy must be named default (at most one per namespace).
MINIMAL_NAME = {"NamespacePolicy": "default"}


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
    resp = create(api, namespace, manifest(kind, copy.deepcopy(MINIMAL[kind]), MINIMAL_NAME.get(kind, "test")))
    assert resp.status_code == 201, describe(resp)


# --- invalid objects ----------------------------------------------------------------------------

# One list for both modes: crds/tests/admission.rs loads the same manifests the way
# standalone mode does and asserts the same errors.
INVALID_FILE = Path(__file__).with_name("invalid-manifests.yaml")
INVALID = yaml.safe_load(INVALID_FILE.read_text())


def causes(errors: list) -> list:
    return sorted((e["field"], e["message"]) for e in errors)


@pytest.mark.parametrize("case", [pytest.param(c, id=c["id"]) for c in INVALID])
def test_invalid_object_is_rejected(api, namespace, case):
    resp = create(api, namespace, case["manifest"])
    assert resp.status_code == 422, f"expected 422 for {case['manifest']}, got {describe(resp)}"
    body = resp.json()
    assert body.get("reason") == "Invalid", describe(resp)
    got = causes(body.get("details", {}).get("causes", []))
    assert got == causes(case["errors"]), f"{INVALID_FILE.name} {case['id']}: the API server answered {got}"


def test_unknown_fields_are_refused_with_strict_field_validation(api, namespace):
    # kubectl asks for strict field validation by default; standalone loading
    # refuses the same fields with the same words (crds/src/validation/mod.rs,
    # unknown_fields_are_refused_as_strict_field_validation_does).
    obj = manifest("ApiKey", {"budgte": {"limit": "1"}, "ratelimit": {}})
    obj["metadata"]["lables"] = {}
    obj["metadata"]["namespace"] = namespace
    resp = api.post(resource_path(namespace, "ApiKey") + "?fieldValidation=Strict", obj)
    assert resp.status_code == 400, describe(resp)
    assert resp.json()["message"] == (
        'ApiKey in version "v1alpha1" cannot be handled as a ApiKey: strict decoding error: '
        'unknown field "metadata.lables", unknown field "spec.budgte", unknown field "spec.ratelimit"'
    ), describe(resp)
