#!/usr/bin/env python3
"""CPU work per request as instruction counts: nginx's proxy hop vs the gateway.

bench/loopback.py measures CPU time per request, which a shared, noisy machine
inflates unevenly (cache and scheduler contention differ between runs). This
script counts the instructions each hop executes per request under Valgrind's
callgrind instead: the count does not depend on machine load, so the ratio is
the same on a busy CI box and an idle laptop.

Both hops run under callgrind, one worker each (nginx `master_process off`, the
gateway with one Tokio worker thread), in front of the same mock upstream (not
instrumented). For each request kind and hop: 200 warm-up requests, counters
zeroed, N sequential keep-alive requests with instrumentation on, counters
dumped. Rows: `nginx`, `gateway` (one channel), `gw+3ch` (a RoutingPolicy over
three channels, strategy `weighted`, retries on) and `gw+anthropic` (the request
and every streamed event translated to and from Anthropic's Messages API).
Instruction counts are not time (a cache miss costs more than an add), but both
hops are measured alike, so their ratio is a load-independent stand-in for the
CPU-time ratio that loopback.py prints.

Usage: bench/instructions.py [N]   (default N = 1000)
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from loopback import BIN, HEADERS, KEY, NGINX, bodies, free_port, wait_for_port, write_manifests, write_nginx_conf  # noqa: E402

WARMUP = 200


def callgrind(args: list[str], out: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}.%p", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, **(env or {})},
    )


def control(pid: int, *args: str) -> None:
    subprocess.run(["callgrind_control", *args, str(pid)], check=True, capture_output=True)


def load(port: int, body: str, n: int) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    for _ in range(n):
        conn.request("POST", "/v1/chat/completions", body, HEADERS)
        response = conn.getresponse()
        response.read()
        if response.status != 200:
            raise RuntimeError(f"port {port} answered {response.status}")
    conn.close()


def totals(out: Path, pid: int, before: set[Path]) -> int:
    """The instruction count of the dump callgrind wrote since `before`."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        new = set(out.parent.glob(f"{out.name}.{pid}.*")) - before
        for dump in new:
            for line in dump.read_text().splitlines():
                if line.startswith("totals:"):
                    return int(line.split()[1])
        time.sleep(0.2)
    raise RuntimeError(f"callgrind wrote no dump for {pid}")


def measure(pid: int, port: int, body: str, n: int, out: Path) -> float:
    load(port, body, WARMUP)
    before = set(out.parent.glob(f"{out.name}.{pid}.*"))
    control(pid, "-z")
    control(pid, "-i", "on")
    load(port, body, n)
    control(pid, "-i", "off")
    control(pid, "-d")
    return totals(out, pid, before) / n


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    for tool in ("valgrind", "callgrind_control"):
        if not shutil.which(tool):
            sys.exit(f"{tool} is missing (bench/run installs it)")
    work = Path(tempfile.mkdtemp(prefix="weaver-instructions-"))
    procs: list[subprocess.Popen] = []
    try:
        mock_port, nginx_port, gw_port = free_port(), free_port(), free_port()
        procs.append(
            subprocess.Popen(
                [str(BIN / "weaver-mock-upstream"), "--listen", f"127.0.0.1:{mock_port}"],
                stderr=subprocess.DEVNULL,
                env={**os.environ, "TOKIO_WORKER_THREADS": "1"},
            )
        )
        conf = write_nginx_conf(work, nginx_port, mock_port)
        nginx_proc = callgrind(
            [NGINX, "-c", str(conf), "-p", str(work), "-g", "daemon off; master_process off;"],
            work / "nginx",
        )
        procs.append(nginx_proc)
        manifests = work / "manifests"
        manifests.mkdir()
        write_manifests(manifests, mock_port)
        gateway = callgrind(
            [
                str(BIN / "weaver-gateway"),
                "--manifests", str(manifests), "--listen", f"127.0.0.1:{gw_port}", "--admin-listen", "127.0.0.1:0",
                "--store", "off", "--data-dir", str(work / "data"), "--log-format", "json",
            ],
            work / "gateway",
            {"TOKIO_WORKER_THREADS": "1", "RUST_LOG": "warn"},
        )
        procs.append(gateway)
        for port in (mock_port, nginx_port, gw_port):
            wait_for_port(port, timeout=120)
        hops = {
            "nginx": (nginx_proc.pid, nginx_port, work / "nginx", "bench-model"),
            "gateway": (gateway.pid, gw_port, work / "gateway", "bench-model"),
            "gw+3ch": (gateway.pid, gw_port, work / "gateway", "bench-3ch"),
            "gw+anthropic": (gateway.pid, gw_port, work / "gateway", "bench-claude"),
        }
        results: dict[tuple[str, str], float] = {}
        for kind in ("plain", "stream"):
            for name, (pid, port, out, model) in hops.items():
                results[(kind, name)] = measure(pid, port, bodies(model)[kind], n, out)
        print(f"\nInstructions per request (callgrind, {n} sequential keep-alive requests per row, key {KEY})\n")
        print(f"{'':16}{'plain':>14}{'stream':>14}")
        for name in hops:
            print(f"{name:16}{results[('plain', name)]:>14,.0f}{results[('stream', name)]:>14,.0f}")
        for kind in ("plain", "stream"):
            base = results[(kind, "nginx")]
            ratios = ", ".join(f"{name} {results[(kind, name)] / base:.2f}x" for name in hops if name != "nginx")
            print(f"{kind}: instructions per request vs nginx: {ratios}")
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
