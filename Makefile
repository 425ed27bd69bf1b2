# One entry point for humans and CI. `make help` lists the recipes.
SHELL := bash
.SHELLFLAGS := -euo pipefail -c
PORT ?= 8080
# Build outputs, the control plane binaries and the Python test environment live
# here (.ci/run sets the same default).
WEAVER_CACHE ?= $(HOME)/.cache/llm-weaver
export WEAVER_CACHE
# The Python that creates the test environment; the tests run in the environment.
HOST_PYTHON ?= python3
VENV := $(WEAVER_CACHE)/venv
PYTHON := $(VENV)/bin/python
# apt-get needs root: run as root, or with sudo.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT_INSTALL := $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq --no-install-recommends

.PHONY: help run test setup npm-ci ui ui-test ui-bench fmt lint unit rules e2e crds bench bench-export control-plane-up control-plane-down

help:
	@echo "make help                - this list"
	@echo "make run                 - the standalone gateway with the demo config (config/dev) on 127.0.0.1:$(PORT), its UI on http://127.0.0.1:9090/ui/"
	@echo "make test                - everything CI runs: setup, ui, lint, unit, rules, ui-test, e2e"
	@echo "make setup               - openssl, curl, lua5.4, prometheus, chromium and a Chinese font (apt-get if missing), the Python test packages in $(VENV), the UI's npm packages"
	@echo "make npm-ci              - the UI's npm packages as package-lock.json pins them (skipped when it is unchanged)"
	@echo "make ui                  - type-check and build the usage UI (dashboard/) into dashboard/dist, which the gateway embeds"
	@echo "make ui-test             - the UI's Vitest unit tests and browser tests (Chromium) against a real gateway (after make ui)"
	@echo "make ui-bench            - the usage UI on 1,000,000 usage records (SQLite): overview load, logs next page in Chromium, JS per chunk (not part of CI)"
	@echo "make fmt                 - format the Rust code"
	@echo "make lint                - cargo fmt --check, clippy -D warnings, hadolint on docker/Dockerfile"
	@echo "make unit                - build the binaries, cargo test (unit and integration tests)"
	@echo "make rules               - promtool check rules and promtool test rules on config/prometheus (the alert rules)"
	@echo "make e2e                 - operator, replicas, Helm chart, dashboards (real Prometheus), OpenAI SDK and CRD tests against the binaries and a real API server"
	@echo "make crds                - regenerate crds/manifests from the Rust types"
	@echo "make bench               - loopback benchmark (direct vs nginx vs gateway) and allocations per request (not part of CI)"
	@echo "make bench-export        - the usage export of 100,000 records through the gateway: records/s, peak RSS (not part of CI)"
	@echo "make control-plane-up    - start a kube-apiserver + etcd for your own experiments (prints the KUBECONFIG line)"
	@echo "make control-plane-down  - stop it"

run: ui
	cargo run --release -p weaver-gateway -- --manifests config/dev --listen 127.0.0.1:$(PORT) --data-dir .weaver

test: setup ui lint unit rules ui-test e2e

# Installs what the tests need on a fresh machine (idempotent): openssl and curl
# for the control plane, lua5.4 for the Argo CD health script's test,
# Prometheus (Debian's package, with promtool) for the alert rule tests and
# the dashboard e2e test, and the pinned Python packages in a virtual environment
# under $(WEAVER_CACHE), so no Python of yours is changed (Debian's python3 needs
# python3-venv for that: it is installed when venv fails). The environment is
# rebuilt when e2e/requirements.txt changes.
setup:
	command -v openssl >/dev/null && command -v curl >/dev/null && command -v lua5.4 >/dev/null || \
	  ($(APT_INSTALL) openssl curl lua5.4)
	command -v prometheus >/dev/null && command -v promtool >/dev/null || ($(APT_INSTALL) prometheus)
	command -v chromium >/dev/null && fc-list :lang=zh | grep -q . || ($(APT_INSTALL) chromium fonts-wqy-microhei)
	$(MAKE) --no-print-directory npm-ci
	cmp -s e2e/requirements.txt $(VENV)/requirements.txt || { \
	  { $(HOST_PYTHON) -m venv --clear $(VENV) || \
	    { $(APT_INSTALL) python3-venv && $(HOST_PYTHON) -m venv --clear $(VENV); }; } && \
	  $(PYTHON) -m pip install --quiet --disable-pip-version-check -r e2e/requirements.txt && \
	  cp e2e/requirements.txt $(VENV)/requirements.txt; }

# The UI's npm packages, exactly as package-lock.json pins them; skipped when
# the lock file has not changed since the last install.
UI_STAMP := dashboard/node_modules/.weaver-package-lock.json
npm-ci:
	cmp -s dashboard/package-lock.json $(UI_STAMP) || { \
	  (cd dashboard && npm ci --no-audit --no-fund) && cp dashboard/package-lock.json $(UI_STAMP); }

# `npm run build` type-checks (vue-tsc) before it builds. `make test` builds
# the UI before the Rust steps, so their binaries have it.
ui: npm-ci
	cd dashboard && npm run build

# Unit tests, then the browser tests: Debian's Chromium against the debug
# gateway binary, which reads dashboard/dist from disk (build it first: `make ui`).
ui-test: ui
	cd dashboard && npx vitest run
	cargo build -p weaver-gateway --bin weaver-gateway
	cd dashboard && CARGO_TARGET_DIR="$${CARGO_TARGET_DIR:-$(CURDIR)/target}" node --test e2e/

# The million-record timings: the release gateway on a SQLite store filled
# by weaver-bench-export --fill (RECORDS=... for another count); figures
# printed, nothing asserted.
ui-bench: ui
	cargo build --release -p weaver-gateway -p weaver-bench-export
	cd dashboard && CARGO_TARGET_DIR="$${CARGO_TARGET_DIR:-$(CURDIR)/target}" node bench/million.mjs

fmt:
	cargo fmt --all

lint: setup
	@for t in $$(sed -n 's/^\.PHONY: //p' Makefile); do \
	  grep -q "^	@echo \"make $$t " Makefile || { echo "make help does not list $$t"; exit 1; }; done
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings
	$(VENV)/bin/hadolint docker/Dockerfile

PG ?= $(or $(TMPDIR),/tmp)/llm-weaver-unit-postgres
unit:
	cargo build --workspace --bins
	e2e/postgres down $(PG) >/dev/null 2>&1 || true
	pg_env=$$(e2e/postgres up $(PG)); eval "$$pg_env"; \
	  trap 'e2e/postgres down $(PG) >/dev/null' EXIT; \
	  cargo test --workspace
	cargo run -q -p weaver-gateway -- --check config/dev
	cargo run -q -p weaver-gateway -- --check config/samples

# The alert rules: valid, and each alert fires (and stays quiet) as its
# unit test says.
rules: setup
	promtool check rules config/prometheus/*.yaml
	promtool test rules config/prometheus/tests/*.yaml

# The official OpenAI SDK against the real binaries; the CRDs and the operator
# (with two gateways in cluster mode) against a real kube-apiserver + etcd,
# and a throwaway Postgres as the operator's usage store; usage and rate
# limits across gateway and operator replicas (the rate-limit test hammers
# for two minutes); the Helm chart (lint, template, applied to the plane, its
# RBAC and sidecar webhook; helm is built from Go modules like the plane);
# every Grafana dashboard query against a real Prometheus scraping the
# operator and two gateways under load. The
# control plane binaries are built from Go modules on first use (about 5 min on
# a cold, otherwise idle 2-core machine) and cached; each plane is thrown away
# afterwards.
PLANE ?= $(or $(TMPDIR),/tmp)/llm-weaver-e2e-plane
# The usage store the operator tests read (`--store`).
E2E_PG ?= $(or $(TMPDIR),/tmp)/llm-weaver-e2e-postgres
e2e: setup ui
	cargo build --workspace --bins
	e2e/control-plane build
	e2e/control-plane build-helm
	e2e/control-plane down $(PLANE) >/dev/null 2>&1 || true
	e2e/control-plane up $(PLANE) >/dev/null
	e2e/postgres down $(E2E_PG) >/dev/null 2>&1 || true
	pg_env=$$(e2e/postgres up $(E2E_PG)); eval "$$pg_env"; \
	  trap 'e2e/control-plane down $(PLANE) >/dev/null; e2e/postgres down $(E2E_PG) >/dev/null' EXIT; \
	  WEAVER_E2E_KUBECONFIG=$(PLANE)/kubeconfig WEAVER_E2E_PYTHON=$(PYTHON) WEAVER_E2E_HELM=$$(e2e/control-plane helm-bin) \
	  cargo test -p weaver-e2e --test operator --test cluster_ui --test cluster_oidc --test replicas --test chart --test observability -- --ignored --test-threads 4 && \
	  $(PYTHON) -m pytest e2e/sdk e2e/crd -q

crds:
	WEAVER_BLESS=1 cargo test -p weaver-crds --lib crdgen

bench:
	bench/run

# A throwaway Postgres for the export benchmark; SQLite needs nothing.
BENCH_PG ?= $(or $(TMPDIR),/tmp)/llm-weaver-bench-postgres
bench-export:
	cargo build --release -p weaver-gateway -p weaver-bench-export
	e2e/postgres down $(BENCH_PG) >/dev/null 2>&1 || true
	pg_env=$$(e2e/postgres up $(BENCH_PG)); eval "$$pg_env"; \
	  trap 'e2e/postgres down $(BENCH_PG) >/dev/null' EXIT; \
	  "$${CARGO_TARGET_DIR:-target}/release/weaver-bench-export"

control-plane-up:
	e2e/control-plane up

control-plane-down:
	e2e/control-plane down
