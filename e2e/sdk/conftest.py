"""Fixtures: the real `weaver-gateway` and `weaver-mock-upstream` binaries on
free loopback ports, the way a user runs them.

The binaries come from `cargo build` (the Makefile's `test` recipe builds them
first); set WEAVER_BIN_DIR to use others.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TARGET = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
BIN_DIR = Path(os.environ.get("WEAVER_BIN_DIR", TARGET / "debug"))

CLIENT_KEY = "lw-sdk-test-key"
UPSTREAM_KEY = "sk-upstream-for-sdk"


class Process:
    """A child process that logs JSON lines to stderr; reads its `listening` address."""

    def __init__(self, argv: list[str], log: Path) -> None:
        self.log_path = log
        self.log = open(log, "w")
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=self.log, text=True)
        self.addr = self._wait_for_address()

    def _wait_for_address(self, timeout: float = 20.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.proc.args[0]} exited: {self.log_path.read_text()}")
            for line in self.log_path.read_text().splitlines():
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if entry.get("message") == "listening":
                    return entry["addr"]
            time.sleep(0.05)
        raise RuntimeError(f"{self.proc.args[0]} did not start: {self.log_path.read_text()}")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def binary(name: str) -> str:
    path = BIN_DIR / name
    if not path.exists():
        pytest.fail(f"{path} is missing: run `cargo build` (or `make test`) first")
    return str(path)


MANIFESTS = """
apiVersion: llmweaver.io/v1alpha1
kind: Channel
metadata: {{name: local-mock, namespace: sdk}}
spec:
  provider: mock
  models: [{{name: demo-chat}}, {{name: demo-embed}}]
---
apiVersion: v1
kind: Secret
metadata: {{name: upstream, namespace: sdk}}
stringData: {{apiKey: {upstream_key}}}
---
apiVersion: llmweaver.io/v1alpha1
kind: Channel
metadata: {{name: mock-openai, namespace: sdk}}
spec:
  provider: openai
  baseUrl: {upstream_url}
  credentials: {{secretRef: {{name: upstream}}}}
  models:
    - name: gpt-4o-mini
      upstreamModel: gpt-4o-mini-2024-07-18
    - name: text-embedding-3-small
    - name: secret-model
---
apiVersion: llmweaver.io/v1alpha1
kind: Channel
metadata: {{name: mock-anthropic, namespace: sdk}}
spec:
  provider: anthropic
  baseUrl: {anthropic_url}
  credentials: {{secretRef: {{name: upstream}}}}
  models:
    - name: claude-mock
      upstreamModel: claude-sonnet-4-6
---
apiVersion: llmweaver.io/v1alpha1
kind: Channel
metadata: {{name: mock-gemini, namespace: sdk}}
spec:
  provider: gemini
  baseUrl: {gemini_url}
  credentials: {{secretRef: {{name: upstream}}}}
  models:
    - name: gemini-mock
      upstreamModel: gemini-2.5-flash
---
apiVersion: llmweaver.io/v1alpha1
kind: Channel
metadata: {{name: mock-cohere, namespace: sdk}}
spec:
  provider: cohere
  baseUrl: {cohere_url}
  credentials: {{secretRef: {{name: upstream}}}}
  models:
    - name: command-mock
      upstreamModel: command-a-03-2025
---
apiVersion: v1
kind: Secret
metadata: {{name: sdk-apikey, namespace: sdk}}
stringData: {{apiKey: {client_key}}}
---
apiVersion: llmweaver.io/v1alpha1
kind: ApiKey
metadata: {{name: sdk, namespace: sdk}}
spec:
  allowedModels: ["demo-*", "gpt-4o*", "text-embedding-*", "claude-*", "gemini-*", "command-*"]
"""


@pytest.fixture(scope="session")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Process:
    logs = tmp_path_factory.mktemp("upstream")
    proc = Process(
        [binary("weaver-mock-upstream"), "--listen", "127.0.0.1:0", "--require-key", UPSTREAM_KEY],
        logs / "upstream.log",
    )
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def gateway(tmp_path_factory: pytest.TempPathFactory, upstream: Process) -> Process:
    folder = tmp_path_factory.mktemp("manifests")
    (folder / "sdk.yaml").write_text(
        MANIFESTS.format(
            upstream_key=UPSTREAM_KEY,
            upstream_url=f"http://{upstream.addr}/v1",
            anthropic_url=f"http://{upstream.addr}",
            gemini_url=f"http://{upstream.addr}/v1beta",
            cohere_url=f"http://{upstream.addr}/v2",
            client_key=CLIENT_KEY,
        )
    )
    proc = Process(
        [
            binary("weaver-gateway"), "--manifests", str(folder), "--listen", "127.0.0.1:0",
            "--admin-listen", "127.0.0.1:0", "--data-dir", str(folder / ".data"), "--log-format", "json",
        ],
        folder / "gateway.log",
    )
    proc.client_key = CLIENT_KEY
    yield proc
    proc.stop()
