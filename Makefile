# One entry point for humans and CI. `make help` lists the recipes.
SHELL := bash
.SHELLFLAGS := -euo pipefail -c
PYTHON ?= python3
PORT ?= 8080

.PHONY: help run test setup fmt lint unit e2e crds bench control-plane-up control-plane-down

help:
	@echo "make run     - the standalone gateway with the demo config (config/dev) on 127.0.0.1:$(PORT)"
	@echo "make test    - everything CI runs: set-up, fmt, clippy, unit + integration tests, SDK and CRD e2e"
	@echo "make crds    - regenerate crds/manifests from the Rust types"
	@echo "make bench   - loopback benchmark: direct vs nginx vs gateway (not part of CI)"

run:
	cargo run --release -p weaver-gateway -- --manifests config/dev --listen 127.0.0.1:$(PORT)

test: setup lint unit e2e

# Installs what the tests need on a fresh machine (idempotent).
setup:
	$(PYTHON) -m pip install --quiet --disable-pip-version-check -r e2e/requirements.txt
	command -v openssl >/dev/null || (apt-get update -qq && apt-get install -y -qq openssl)

fmt:
	cargo fmt --all

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings

PG ?= $(or $(TMPDIR),/tmp)/llm-weaver-unit-postgres
unit:
	cargo build --workspace --bins
	e2e/postgres down $(PG) >/dev/null 2>&1 || true
	pg_env=$$(e2e/postgres up $(PG)); eval "$$pg_env"; \
	  trap 'e2e/postgres down $(PG) >/dev/null' EXIT; \
	  cargo test --workspace
	cargo run -q -p weaver-gateway -- --check config/dev
	cargo run -q -p weaver-gateway -- --check config/samples

# The official OpenAI SDK against the real binaries; the CRDs and the operator
# (with two gateways in cluster mode) against a real kube-apiserver + etcd,
# built from Go modules on first use (~4 min) and thrown away afterwards.
PLANE ?= $(or $(TMPDIR),/tmp)/llm-weaver-e2e-plane
e2e:
	cargo build --workspace --bins
	e2e/control-plane build
	e2e/control-plane down $(PLANE) >/dev/null 2>&1 || true
	e2e/control-plane up $(PLANE) >/dev/null
	trap 'e2e/control-plane down $(PLANE) >/dev/null' EXIT; \
	  WEAVER_E2E_KUBECONFIG=$(PLANE)/kubeconfig cargo test -p weaver-e2e --test operator -- --ignored --test-threads 4 && \
	  $(PYTHON) -m pytest e2e/sdk e2e/crd -q

crds:
	WEAVER_BLESS=1 cargo test -p weaver-crds --lib crdgen

bench:
	bench/run

control-plane-up:
	e2e/control-plane up

control-plane-down:
	e2e/control-plane down
