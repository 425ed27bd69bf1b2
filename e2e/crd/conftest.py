"""Fixtures for validating the llmweaver.io CRDs against a real kube-apiserver.

A session-scoped fixture builds (if needed) and starts a throwaway control plane
with ``e2e/control-plane`` in a temporary directory and always tears it down.
The tests talk to the API server over HTTPS with ``requests`` using the admin
client certificate that ``control-plane up`` leaves in that directory.

Environment:
  WEAVER_CRD_DIR      directory of CRD manifests (default: <repo>/crds/manifests)
  WEAVER_SAMPLES_DIR  directory of sample manifests (default: <repo>/config/samples)
  WEAVER_CONTROL_PLANE_TIMEOUT  passed through to control-plane up
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import pytest
import requests
import yaml

REPO = Path(__file__).resolve().parents[2]
CONTROL_PLANE = REPO / "e2e" / "control-plane"
CRD_DIR = Path(os.environ.get("WEAVER_CRD_DIR", REPO / "crds" / "manifests"))
SAMPLES_DIR = Path(os.environ.get("WEAVER_SAMPLES_DIR", REPO / "config" / "samples"))

GROUP = "llmweaver.io"
VERSION = "v1alpha1"
PLURALS = {
    "Channel": "channels",
    "ApiKey": "apikeys",
    "RoutingPolicy": "routingpolicies",
    "NamespacePolicy": "namespacepolicies",
}

ESTABLISH_TIMEOUT = 60.0


class Api:
    """A tiny Kubernetes REST client: JSON over HTTPS with the admin client cert."""

    def __init__(self, server: str, ca: Path, cert: Path, key: Path) -> None:
        self.server = server.rstrip("/")
        self.session = requests.Session()
        # Ignore REQUESTS_CA_BUNDLE/*_PROXY etc.: they would override `verify` and
        # could route loopback traffic through a proxy.
        self.session.trust_env = False
        self.session.verify = str(ca)
        self.session.cert = (str(cert), str(key))

    def request(self, method: str, path: str, body: dict | None = None) -> requests.Response:
        return self.session.request(method, self.server + path, json=body, timeout=30)

    def get(self, path: str) -> requests.Response:
        return self.request("GET", path)

    def post(self, path: str, body: dict) -> requests.Response:
        return self.request("POST", path, body)


def describe(resp: requests.Response) -> str:
    """HTTP status plus the Status message (or raw body) for assertion messages."""
    try:
        body = resp.json()
        msg = body.get("message", body)
    except ValueError:
        msg = resp.text
    return f"HTTP {resp.status_code}: {msg}"


def poll(what: str, timeout: float, check) -> None:
    deadline = time.monotonic() + timeout
    last = None
    while True:
        ok, last = check()
        if ok:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}; last: {last}")
        time.sleep(0.25)


def _run(*args: str) -> None:
    subprocess.run([str(CONTROL_PLANE), *args], check=True, stdin=subprocess.DEVNULL)


@pytest.fixture(scope="session")
def plane_dir():
    """Build and start the control plane in a temp dir; always stop and remove it."""
    base = Path(tempfile.mkdtemp(prefix="llm-weaver-crd-test-"))
    plane = base / "plane"
    try:
        _run("build")
        _run("up", str(plane))
        yield plane
    finally:
        # `down` also cleans up after a failed `up` (it keeps the logs in DIR until then).
        subprocess.run([str(CONTROL_PLANE), "down", str(plane)], check=False, stdin=subprocess.DEVNULL)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def api(plane_dir: Path) -> Api:
    server = (plane_dir / "server").read_text().strip()
    return Api(server, plane_dir / "ca.crt", plane_dir / "admin.crt", plane_dir / "admin.key")


def crd_files() -> list[Path]:
    return sorted(CRD_DIR.glob("*.yaml"))


@pytest.fixture(scope="session")
def crds(api: Api) -> list[dict]:
    """Create every CRD in CRD_DIR and wait until each is Established and served."""
    files = crd_files()
    if not files:
        pytest.fail(f"no CRD manifests found in {CRD_DIR}/*.yaml")
    created = []
    for path in files:
        for crd in yaml.safe_load_all(path.read_text()):
            if not crd:
                continue
            assert crd.get("kind") == "CustomResourceDefinition", f"{path}: not a CRD"
            resp = api.post("/apis/apiextensions.k8s.io/v1/customresourcedefinitions", crd)
            assert resp.status_code == 201, f"creating CRD from {path.name}: {describe(resp)}"
            created.append(crd)

    for crd in created:
        name = crd["metadata"]["name"]

        def established(name=name):
            resp = api.get(f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}")
            if resp.status_code != 200:
                return False, describe(resp)
            conds = resp.json().get("status", {}).get("conditions", [])
            ok = any(c.get("type") == "Established" and c.get("status") == "True" for c in conds)
            return ok, conds

        poll(f"CRD {name} to become Established", ESTABLISH_TIMEOUT, established)

        # Established means the handler is installed; also wait until it actually serves.
        group, plural = crd["spec"]["group"], crd["spec"]["names"]["plural"]
        for version in (v["name"] for v in crd["spec"]["versions"] if v.get("served")):
            path = f"/apis/{group}/{version}/{plural}"

            def served(path=path):
                resp = api.get(path)
                return resp.status_code == 200, describe(resp)

            poll(f"{path} to be served", ESTABLISH_TIMEOUT, served)
    return created


@pytest.fixture
def namespace(api: Api, crds) -> str:
    """A fresh namespace per test. Nothing deletes it: there is no namespace
    controller in this control plane and the whole plane is thrown away."""
    name = f"crd-test-{uuid.uuid4().hex[:10]}"
    resp = api.post("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    assert resp.status_code == 201, f"creating namespace {name}: {describe(resp)}"
    return name


def resource_path(namespace: str, kind: str) -> str:
    return f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURALS[kind]}"
