#!/usr/bin/env python3
"""Loopback benchmark: one proxy hop, measured side by side in one run.

  direct   client -> mock upstream
  nginx    client -> nginx proxy_pass (keepalive upstream pool) -> mock upstream
  gateway  client -> weaver-gateway -> mock upstream

The hop under test (nginx or the gateway) is pinned to one core with one worker;
the load generator (wrk) and the mock upstream share the other core. For each hop
it prints requests/s at concurrency 64, the hop's CPU time per request (from
/proc, so it does not depend on which side is the bottleneck), added p50/p99
latency at concurrency 1, and for streams the added time to first byte.
Traffic goes to 127.0.0.1 only; every run is bounded in time.

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
KEY = "lw-bench-key"
HOP_CORE, LOAD_CORE = "1", "0"
TICK = os.sysconf("SC_CLK_TCK")

CHAT = json.dumps({"model": "bench-model", "messages": [{"role": "user", "content": "Say hello in five words"}]})
STREAM = json.dumps(
    {"model": "bench-model", "stream": True, "messages": [{"role": "user", "content": "Say hello in five words"}]}
)


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


def wrk(url: str, body: str, connections: int, workdir: Path) -> dict:
    script = workdir / "post.lua"
    script.write_text(
        'wrk.method = "POST"\n'
        f"wrk.body = {json.dumps(body)}\n"
        'wrk.headers["Content-Type"] = "application/json"\n'
        f'wrk.headers["Authorization"] = "Bearer {KEY}"\n'
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


def ttfb(url: str, body: str, n: int = 300) -> tuple[float, int]:
    """Median time to the first byte of a streamed answer, in microseconds, and
    how many requests failed (each a new connection)."""
    samples, failed = [], 0
    for _ in range(n):
        req = urllib.request.Request(
            url, data=body.encode(), headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
        )
        start = time.perf_counter()
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                resp.read(1)
                samples.append((time.perf_counter() - start) * 1e6)
                resp.read()
        except OSError as e:
            failed += 1
            print(f"  {url}: {e}", file=sys.stderr)
    return statistics.median(samples), failed


def main() -> None:
    for tool in ("wrk", "nginx", "taskset"):
        if not shutil.which(tool) and not Path(f"/usr/sbin/{tool}").exists():
            sys.exit(f"{tool} is missing (bench/run installs it)")
    work = Path(tempfile.mkdtemp(prefix="weaver-bench-"))
    procs: list[subprocess.Popen] = []
    try:
        mock_port, nginx_port, gw_port = free_port(), free_port(), free_port()
        procs.append(
            subprocess.Popen(
                ["taskset", "-c", LOAD_CORE, str(BIN / "weaver-mock-upstream"), "--listen", f"127.0.0.1:{mock_port}"],
                stderr=subprocess.DEVNULL,
                env={**os.environ, "TOKIO_WORKER_THREADS": "1"},
            )
        )
        (work / "nginx.conf").write_text(
            f"""
worker_processes 1;
error_log {work}/nginx-error.log;
pid {work}/nginx.pid;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  upstream mock {{ server 127.0.0.1:{mock_port}; keepalive 128; }}
  server {{
    listen 127.0.0.1:{nginx_port};
    location / {{
      proxy_pass http://mock;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
      tcp_nodelay on;
    }}
  }}
}}
"""
        )
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        procs.append(
            subprocess.Popen(
                ["taskset", "-c", HOP_CORE, nginx, "-c", str(work / "nginx.conf"), "-p", str(work), "-g", "daemon off;"]
            )
        )
        manifests = work / "manifests"
        manifests.mkdir()
        (manifests / "bench.yaml").write_text(
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
"""
        )
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
        for port in (mock_port, nginx_port, gw_port, metered_port) + ((pg_port,) if pg_url else ()):
            wait_for_port(port)
        nginx_worker = int(
            subprocess.run(["pgrep", "-P", str(procs[1].pid)], capture_output=True, text=True).stdout.split()[0]
        )
        hops = {
            "direct": (f"http://127.0.0.1:{mock_port}/v1/chat/completions", None),
            "nginx": (f"http://127.0.0.1:{nginx_port}/v1/chat/completions", nginx_worker),
            "gateway": (f"http://127.0.0.1:{gw_port}/v1/chat/completions", gateway.pid),
            "gw+sqlite": (f"http://127.0.0.1:{metered_port}/v1/chat/completions", metered.pid),
        }
        if pg_gateway:
            hops["gw+postgres"] = (f"http://127.0.0.1:{pg_port}/v1/chat/completions", pg_gateway.pid)
        results: dict[str, dict] = {}
        for kind, body in (("plain", CHAT), ("stream", STREAM)):
            for name, (url, pid) in hops.items():
                wrk(url, body, 8, work)  # warm up connections and pools
                before = cpu_seconds(pid) if pid else 0.0
                load = wrk(url, body, 64, work)
                cpu = (cpu_seconds(pid) - before) if pid else 0.0
                single = wrk(url, body, 1, work)
                r = {
                    "rps": load["rps"],
                    "cpu_us": cpu / load["requests"] * 1e6 if pid else 0.0,
                    "p50": single["p50"],
                    "p99": single["p99"],
                }
                if kind == "stream":
                    r["ttfb"], r["failed"] = ttfb(url, body)
                results[f"{kind}/{name}"] = r
        print(f"\nLoopback benchmark, {DURATION} per run; hop pinned to core {HOP_CORE}, load + mock on core {LOAD_CORE}\n")
        print(f"{'':16}{'req/s c=64':>12}{'CPU us/req':>12}{'p50 us c=1':>12}{'p99 us c=1':>12}{'added p50':>11}{'added p99':>11}{'TTFB us':>10}{'added TTFB':>12}")
        for kind in ("plain", "stream"):
            base = results[f"{kind}/direct"]
            for name in hops:
                r = results[f"{kind}/{name}"]
                direct = name == "direct"
                cpu = "-" if direct else f"{r['cpu_us']:.1f}"
                add_p50 = "" if direct else f"{r['p50'] - base['p50']:.0f}"
                add_p99 = "" if direct else f"{r['p99'] - base['p99']:.0f}"
                ttfb_us = f"{r['ttfb']:.0f}" if "ttfb" in r else ""
                add_ttfb = f"{r['ttfb'] - base['ttfb']:.0f}" if "ttfb" in r and not direct else ""
                print(
                    f"{kind + '/' + name:16}{r['rps']:>12.0f}{cpu:>12}{r['p50']:>12.0f}{r['p99']:>12.0f}"
                    f"{add_p50:>11}{add_p99:>11}{ttfb_us:>10}{add_ttfb:>12}"
                )
        for name in hops:
            if results[f"stream/{name}"]["failed"]:
                print(f"{name}: {results[f'stream/{name}']['failed']} of 300 TTFB requests failed")
        for kind in ("plain", "stream"):
            g, n = results[f"{kind}/gateway"], results[f"{kind}/nginx"]
            m = results[f"{kind}/gw+sqlite"]
            if n["cpu_us"] > 0:
                print(f"{kind}: gateway CPU per request = {g['cpu_us'] / n['cpu_us']:.2f}x nginx")
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
