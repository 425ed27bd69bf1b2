#!/usr/bin/env python3
"""Loopback benchmark: one proxy hop, measured side by side in one run.

  direct   client -> mock upstream
  nginx    client -> nginx proxy_pass (keepalive upstream pool) -> mock upstream
  gateway  client -> weaver-gateway -> mock upstream

The gateway also serves two more public models, measured on the same process:
`gw+3ch` (a RoutingPolicy over three channels, strategy `weighted`, retries on:
the router's share of the hop) and `gw+anthropic` (an Anthropic channel: the
request and every streamed event translated). Its added time to first byte is
against `direct-anthropic`, the mock's own Messages API.

Two shapes of stream: `stream` rows get every event of an answer at once (the
mock writes them back to back, so a hop reads the whole answer in one or two
socket reads), `paced` rows get them PACE apart from a second mock, as a
model's tokens arrive (OpenAI and Anthropic stream a token every few to tens
of milliseconds), so each event is read and written on its own, by nginx too.

The hop under test (nginx or the gateway) is pinned to one core with one worker;
the load generator (wrk) and the mock upstream share the other core. For each hop
it prints requests/s at concurrency 64, the hop's CPU time per request (from
/proc, so it does not depend on which side is the bottleneck), added p50/p99
latency at concurrency 1, and for streams the added time to first byte.
Traffic goes to 127.0.0.1 only; every run is bounded in time.

CPU per request on a shared machine moves by a third between runs of the same
binary (other tenants, caches, frequency), so the concurrency-64 runs go in
BENCH_ROUNDS rounds (default 3), each round every hop once, one after the
other. A hop's CPU per request and requests/s are its medians over the rounds,
and a ratio to nginx is the median of the rounds' own ratios (each taken
between runs seconds apart), printed with its spread.

bench/run follows this with the heap allocations per gateway request
(bench/allocs: a counting allocator, the gateway in-process), which this
script does not measure.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target")) / "release"
DURATION = os.environ.get("BENCH_DURATION", "10s")
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
# The gap between a paced stream's events (the mock's --chunk-delay).
PACE = "2ms"
KEY = "lw-bench-key"
HOP_CORE, LOAD_CORE = "1", "0"
TICK = os.sysconf("SC_CLK_TCK")

PROMPT = [{"role": "user", "content": "Say hello in five words"}]


def bodies(model: str, messages_api: bool = False) -> dict[str, str]:
    """The plain and the streamed request for `model`; `messages_api` gives
    Anthropic's Messages API shape (which requires `max_tokens`)."""
    extra = {"max_tokens": 64} if messages_api else {}
    return {
        "plain": json.dumps({"model": model, "messages": PROMPT, **extra}),
        "stream": json.dumps({"model": model, "stream": True, "messages": PROMPT, **extra}),
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


HEADERS = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
ANTHROPIC_HEADERS = {"x-api-key": KEY, "anthropic-version": "2023-06-01", "Content-Type": "application/json"}


def wrk(url: str, body: str, connections: int, workdir: Path, headers: dict[str, str]) -> dict:
    script = workdir / "post.lua"
    script.write_text(
        'wrk.method = "POST"\n'
        f"wrk.body = {json.dumps(body)}\n"
        + "".join(f"wrk.headers[{json.dumps(k)}] = {json.dumps(v)}\n" for k, v in headers.items())
    )
    out = subprocess.run(
        ["taskset", "-c", LOAD_CORE, "wrk", "-t1", f"-c{connections}", f"-d{DURATION}", "--latency", "-s", str(script), url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    if "Non-2xx" in out:
        raise RuntimeError(f"errors during the run:\n{out}")

    def latency(pct: str) -> float:
        m = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s)", out, re.M)
        if not m:
            raise RuntimeError(out)
        return float(m.group(1)) * {"us": 1.0, "ms": 1e3, "s": 1e6}[m.group(2)]

    requests = int(re.search(r"(\d+) requests in", out).group(1))
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    return {"requests": requests, "rps": rps, "p50": latency("50"), "p99": latency("99")}


def ttfb(url: str, body: str, headers: dict[str, str], n: int = 300) -> tuple[float, int]:
    """Median time to the first byte of a streamed answer, in microseconds, and
    how many requests failed (each a new connection). Raises when every one
    failed: a hop that answers nothing has no time to first byte."""
    samples, failed = [], 0
    for _ in range(n):
        req = urllib.request.Request(url, data=body.encode(), headers=headers)
        start = time.perf_counter()
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                resp.read(1)
                samples.append((time.perf_counter() - start) * 1e6)
                resp.read()
        except OSError as e:
            failed += 1
            print(f"  {url}: {e}", file=sys.stderr)
    if not samples:
        raise RuntimeError(f"all {n} streamed requests to {url} failed")
    return statistics.median(samples), failed


NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


def write_nginx_conf(work: Path, nginx_port: int, mock_port: int, paced_port: int) -> Path:
    """nginx as the reference hop: one worker, `proxy_pass` to the mock at
    `mock_port` over a keep-alive upstream pool, unbuffered (streams pass as
    they come), listening on `nginx_port`; `/paced/...` goes to the pacing
    mock at `paced_port`; logs and pid under `work`."""
    conf = work / "nginx.conf"
    conf.write_text(
        f"""
worker_processes 1;
error_log {work}/nginx-error.log;
pid {work}/nginx.pid;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  upstream mock {{ server 127.0.0.1:{mock_port}; keepalive 128; }}
  upstream paced {{ server 127.0.0.1:{paced_port}; keepalive 128; }}
  proxy_http_version 1.1;
  proxy_set_header Connection "";
  proxy_buffering off;
  tcp_nodelay on;
  server {{
    listen 127.0.0.1:{nginx_port};
    location / {{ proxy_pass http://mock; }}
    location /paced/ {{ proxy_pass http://paced/; }}
  }}
}}
"""
    )
    return conf


def write_manifests(directory: Path, mock_port: int, paced_port: int) -> None:
    """The gateway's config: public model `bench-model` on one OpenAI-compatible
    channel, `bench-3ch` on three behind a RoutingPolicy, `bench-claude` on an
    Anthropic channel, all served by the mock upstream at `mock_port`; the same
    two OpenAI-compatible shapes on the pacing mock at `paced_port` as
    `bench-paced` and `bench-3ch-paced`; key `KEY` may use them all."""
    pools = (("pool", mock_port, "bench-3ch"), ("paced", paced_port, "bench-3ch-paced"))
    # Per pool: three channels and a RoutingPolicy over them.
    pool = "".join(
        "".join(
            f"""---
apiVersion: llmweaver.io/v1alpha1
kind: Channel
metadata: {{name: {name}-{n}, namespace: bench, labels: {{pool: {name}}}}}
spec:
  provider: openai-compatible
  baseUrl: http://127.0.0.1:{port}/v1
  models: [{{name: {model}}}]
"""
            for n in "abc"
        )
        + f"""---
apiVersion: llmweaver.io/v1alpha1
kind: RoutingPolicy
metadata: {{name: {name}, namespace: bench}}
spec:
  models: ["{model}"]
  channels: [{{selector: {{matchLabels: {{pool: {name}}}}}}}]
  strategy: weighted
  retry: {{attempts: 3, retryOn: ["429", "5xx", "timeout", "connect"]}}
"""
        for name, port, model in pools
    )
    (directory / "bench.yaml").write_text(
        f"""
apiVersion: llmweaver.io/v1alpha1
kind: Channel
metadata: {{name: mock, namespace: bench}}
spec:
  provider: openai-compatible
  baseUrl: http://127.0.0.1:{mock_port}/v1
  models: [{{name: bench-model}}]
---
apiVersion: v1
kind: Secret
metadata: {{name: bench-apikey, namespace: bench}}
stringData: {{apiKey: {KEY}}}
---
apiVersion: llmweaver.io/v1alpha1
kind: ApiKey
metadata: {{name: bench, namespace: bench}}
spec: {{allowedModels: ["bench-*"]}}
---
apiVersion: v1
kind: Secret
metadata: {{name: bench-upstream, namespace: bench}}
stringData: {{apiKey: {KEY}}}
---
apiVersion: llmweaver.io/v1alpha1
kind: Channel
metadata: {{name: claude, namespace: bench}}
spec:
  provider: anthropic
  baseUrl: http://127.0.0.1:{mock_port}
  credentials: {{secretRef: {{name: bench-upstream}}}}
  models: [{{name: bench-claude, upstreamModel: claude-sonnet-4-6}}]
{pool}---
apiVersion: llmweaver.io/v1alpha1
kind: Channel
metadata: {{name: paced, namespace: bench}}
spec:
  provider: openai-compatible
  baseUrl: http://127.0.0.1:{paced_port}/v1
  models: [{{name: bench-paced}}]
"""
    )


def main() -> None:
    for tool in ("wrk", "nginx", "taskset"):
        if not shutil.which(tool) and not Path(f"/usr/sbin/{tool}").exists():
            sys.exit(f"{tool} is missing (bench/run installs it)")
    work = Path(tempfile.mkdtemp(prefix="weaver-bench-"))
    procs: list[subprocess.Popen] = []
    try:
        mock_port, paced_port, nginx_port, gw_port = free_port(), free_port(), free_port(), free_port()
        for port, extra in ((mock_port, []), (paced_port, ["--chunk-delay", PACE])):
            procs.append(
                subprocess.Popen(
                    ["taskset", "-c", LOAD_CORE, str(BIN / "weaver-mock-upstream"), "--listen", f"127.0.0.1:{port}", *extra],
                    stderr=subprocess.DEVNULL,
                    env={**os.environ, "TOKIO_WORKER_THREADS": "1"},
                )
            )
        nginx = len(procs)
        conf = write_nginx_conf(work, nginx_port, mock_port, paced_port)
        procs.append(
            subprocess.Popen(["taskset", "-c", HOP_CORE, NGINX, "-c", str(conf), "-p", str(work), "-g", "daemon off;"])
        )
        manifests = work / "manifests"
        manifests.mkdir()
        write_manifests(manifests, mock_port, paced_port)
        def start_gateway(port: int, store: str) -> subprocess.Popen:
            proc = subprocess.Popen(
                [
                    "taskset", "-c", HOP_CORE, str(BIN / "weaver-gateway"),
                    "--manifests", str(manifests), "--listen", f"127.0.0.1:{port}", "--admin-listen", "127.0.0.1:0",
                    "--store", store, "--data-dir", str(work / f"data-{port}"), "--log-format", "json",
                ],
                stderr=subprocess.DEVNULL,
                env={**os.environ, "TOKIO_WORKER_THREADS": "1", "RUST_LOG": "warn"},
            )
            procs.append(proc)
            return proc

        # The relay alone, and the same with every request metered into SQLite
        # (in-process) and into Postgres (another process: what the gateway
        # spends is the record, the queue and the batch encoding).
        gateway = start_gateway(gw_port, "off")
        metered_port = free_port()
        metered = start_gateway(metered_port, f"sqlite://{work}/usage-{metered_port}.db")
        pg_url = os.environ.get("WEAVER_TEST_POSTGRES_URL")
        pg_port = free_port()
        pg_gateway = start_gateway(pg_port, pg_url) if pg_url else None
        for port in (mock_port, paced_port, nginx_port, gw_port, metered_port) + ((pg_port,) if pg_url else ()):
            wait_for_port(port)
        nginx_worker = int(
            subprocess.run(["pgrep", "-P", str(procs[nginx].pid)], capture_output=True, text=True).stdout.split()[0]
        )
        def chat(port: int) -> str:
            return f"http://127.0.0.1:{port}/v1/chat/completions"

        openai = (HEADERS, bodies("bench-model"))
        # name -> (url, the process whose CPU is counted, headers, bodies)
        hops = {
            "direct": (chat(mock_port), None, *openai),
            "direct-anthropic": (
                f"http://127.0.0.1:{mock_port}/v1/messages",
                None,
                ANTHROPIC_HEADERS,
                bodies("claude-sonnet-4-6", messages_api=True),
            ),
            "nginx": (chat(nginx_port), nginx_worker, *openai),
            "gateway": (chat(gw_port), gateway.pid, *openai),
            "gw+3ch": (chat(gw_port), gateway.pid, HEADERS, bodies("bench-3ch")),
            "gw+anthropic": (chat(gw_port), gateway.pid, HEADERS, bodies("bench-claude")),
            "gw+sqlite": (chat(metered_port), metered.pid, *openai),
        }
        if pg_gateway:
            hops["gw+postgres"] = (chat(pg_port), pg_gateway.pid, *openai)
        paced = bodies("bench-paced")
        paced_hops = {
            "direct": (chat(paced_port), None, HEADERS, paced),
            "nginx": (f"http://127.0.0.1:{nginx_port}/paced/v1/chat/completions", nginx_worker, HEADERS, paced),
            "gateway": (chat(gw_port), gateway.pid, HEADERS, paced),
            "gw+3ch": (chat(gw_port), gateway.pid, HEADERS, bodies("bench-3ch-paced")),
        }
        # kind -> (its hops, which body they send)
        kinds = {"plain": (hops, "plain"), "stream": (hops, "stream"), "paced": (paced_hops, "stream")}
        results: dict[str, dict] = {}
        # kind -> hop -> CPU us per request in each round
        rounds: dict[str, dict[str, list[float]]] = {}
        for kind, (hops, shape) in kinds.items():
            for url, _, headers, body in hops.values():
                wrk(url, body[shape], 8, work, headers)  # warm up connections and pools
            cpu_rounds = rounds[kind] = {name: [] for name in hops}
            rps_rounds: dict[str, list[float]] = {name: [] for name in hops}
            for _ in range(ROUNDS):
                for name, (url, pid, headers, body) in hops.items():
                    before = cpu_seconds(pid) if pid else 0.0
                    load = wrk(url, body[shape], 64, work, headers)
                    cpu = (cpu_seconds(pid) - before) if pid else 0.0
                    cpu_rounds[name].append(cpu / load["requests"] * 1e6 if pid else 0.0)
                    rps_rounds[name].append(load["rps"])
            for name, (url, pid, headers, body) in hops.items():
                single = wrk(url, body[shape], 1, work, headers)
                r = {
                    "rps": statistics.median(rps_rounds[name]),
                    "cpu_us": statistics.median(cpu_rounds[name]),
                    "p50": single["p50"],
                    "p99": single["p99"],
                }
                if kind == "stream":
                    r["ttfb"], r["failed"] = ttfb(url, body[shape], headers)
                results[f"{kind}/{name}"] = r

        def ratio_to_nginx(kind: str, name: str) -> str:
            """The median of the rounds' CPU ratios hop ÷ nginx, and their spread."""
            per_round = [h / n for h, n in zip(rounds[kind][name], rounds[kind]["nginx"]) if n > 0]
            if not per_round:
                return "-"
            return f"{statistics.median(per_round):.2f}x nginx (rounds {min(per_round):.2f}-{max(per_round):.2f}x)"

        print(
            f"\nLoopback benchmark, {DURATION} per run, {ROUNDS} rounds (medians);"
            f" hop pinned to core {HOP_CORE}, load + mock on core {LOAD_CORE}\n"
        )
        print(f"{'':24}{'req/s c=64':>12}{'CPU us/req':>12}{'p50 us c=1':>12}{'p99 us c=1':>12}{'added p50':>11}{'added p99':>11}{'TTFB us':>10}{'added TTFB':>12}")
        for kind, (hops, _) in kinds.items():
            for name in hops:
                base = results[f"{kind}/{'direct-anthropic' if name == 'gw+anthropic' else 'direct'}"]
                r = results[f"{kind}/{name}"]
                direct = name.startswith("direct")
                cpu = "-" if direct else f"{r['cpu_us']:.1f}"
                add_p50 = "" if direct else f"{r['p50'] - base['p50']:.0f}"
                add_p99 = "" if direct else f"{r['p99'] - base['p99']:.0f}"
                ttfb_us = f"{r['ttfb']:.0f}" if "ttfb" in r else ""
                add_ttfb = f"{r['ttfb'] - base['ttfb']:.0f}" if "ttfb" in r and not direct else ""
                print(
                    f"{kind + '/' + name:24}{r['rps']:>12.0f}{cpu:>12}{r['p50']:>12.0f}{r['p99']:>12.0f}"
                    f"{add_p50:>11}{add_p99:>11}{ttfb_us:>10}{add_ttfb:>12}"
                )
        for name in kinds["stream"][0]:
            if results[f"stream/{name}"]["failed"]:
                print(f"{name}: {results[f'stream/{name}']['failed']} of 300 TTFB requests failed")
        added = {
            name: results[f"stream/{name}"]["ttfb"] - results[f"stream/{base}"]["ttfb"]
            for name, base in (("gateway", "direct"), ("gw+anthropic", "direct-anthropic"))
        }
        if added["gateway"] > 0:
            print(
                f"stream: added time to first byte, anthropic channel = {added['gw+anthropic'] / added['gateway']:.2f}x"
                " the openai passthrough's"
            )
        print(f"paced: gateway CPU per request = {ratio_to_nginx('paced', 'gateway')}")
        print(f"paced: gateway CPU per request, three-channel policy = {ratio_to_nginx('paced', 'gw+3ch')}")
        for kind in ("plain", "stream"):
            g = results[f"{kind}/gateway"]
            m = results[f"{kind}/gw+sqlite"]
            print(f"{kind}: gateway CPU per request = {ratio_to_nginx(kind, 'gateway')}")
            print(f"{kind}: gateway CPU per request, three-channel policy = {ratio_to_nginx(kind, 'gw+3ch')}")
            print(f"{kind}: metering into SQLite adds {m['cpu_us'] - g['cpu_us']:.1f} us CPU per request")
            if pg_gateway:
                p = results[f"{kind}/gw+postgres"]
                print(f"{kind}: metering into Postgres adds {p['cpu_us'] - g['cpu_us']:.1f} us CPU per request (gateway process)")
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
