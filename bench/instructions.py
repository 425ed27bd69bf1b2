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

With WEAVER_TEST_POSTGRES_URL set (bench/run starts a throwaway Postgres) a
second gateway meters every request into that database: row `gw+postgres`, so
`gw+postgres - gateway` is what metering into Postgres costs per request, the
batch writer included (it runs in the gateway process, so callgrind counts
it; Postgres's own work is another process and is not counted). That gateway
cuts batches by size only (a batch interval of an hour), as it does under
load: its warm-up and its measured requests are whole batches (N rounded up
to a multiple of BATCH), and the window closes once Postgres holds the
measured batches, so each window holds exactly N records' writing.
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
# The writer's batch size (weaver_store::WriterConfig).
BATCH = 1000
PSQL = sorted(Path("/usr/lib/postgresql").glob("*/bin/psql"))


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


def stored(url: str) -> int:
    """Usage events in the database at `url`."""
    psql = str(PSQL[-1]) if PSQL else "psql"
    out = subprocess.run([psql, url, "-tAc", "SELECT count(*) FROM usage_events"], capture_output=True, text=True)
    return int(out.stdout.strip()) if out.returncode == 0 else -1


def until_stored(url: str, count: int) -> None:
    deadline = time.monotonic() + 300
    while (have := stored(url)) < count:
        if time.monotonic() > deadline:
            raise RuntimeError(f"Postgres holds {have} usage events, not {count}")
        time.sleep(0.2)


def measure(pid: int, port: int, body: str, n: int, out: Path, pg_url: str | None = None) -> float:
    """Instructions per request of `n` requests; with `pg_url`, of `n`
    requests and the writing of `n` records there (whole batches)."""
    warmup = BATCH if pg_url else WARMUP
    first = stored(pg_url) if pg_url else 0
    load(port, body, warmup)
    if pg_url:
        until_stored(pg_url, first + warmup)
    before = set(out.parent.glob(f"{out.name}.{pid}.*"))
    control(pid, "-z")
    control(pid, "-i", "on")
    load(port, body, n)
    if pg_url:
        until_stored(pg_url, first + warmup + n)
        # The writer drops the batch (frees its records) right after the
        # commit that made the rows visible.
        time.sleep(0.5)
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
        # No paced rows here (their cost is per event, counted by the stream
        # rows): the paced routes point at the same mock and are not used.
        conf = write_nginx_conf(work, nginx_port, mock_port, mock_port)
        nginx_proc = callgrind(
            [NGINX, "-c", str(conf), "-p", str(work), "-g", "daemon off; master_process off;"],
            work / "nginx",
        )
        procs.append(nginx_proc)
        manifests = work / "manifests"
        manifests.mkdir()
        write_manifests(manifests, mock_port, mock_port)
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
        pg_url = os.environ.get("WEAVER_TEST_POSTGRES_URL")
        pg_port = free_port()
        if pg_url:
            pg_gateway = callgrind(
                [
                    str(BIN / "weaver-gateway"),
                    "--manifests", str(manifests), "--listen", f"127.0.0.1:{pg_port}", "--admin-listen", "127.0.0.1:0",
                    "--store", pg_url, "--usage-batch-interval", "1h",
                    "--data-dir", str(work / "data-pg"), "--log-format", "json",
                ],
                work / "gw-pg",
                {"TOKIO_WORKER_THREADS": "1", "RUST_LOG": "warn"},
            )
            procs.append(pg_gateway)
        for port in (mock_port, nginx_port, gw_port) + ((pg_port,) if pg_url else ()):
            wait_for_port(port, timeout=120)
        hops = {
            "nginx": (nginx_proc.pid, nginx_port, work / "nginx", "bench-model"),
            "gateway": (gateway.pid, gw_port, work / "gateway", "bench-model"),
            "gw+3ch": (gateway.pid, gw_port, work / "gateway", "bench-3ch"),
            "gw+anthropic": (gateway.pid, gw_port, work / "gateway", "bench-claude"),
        }
        if pg_url:
            hops["gw+postgres"] = (pg_gateway.pid, pg_port, work / "gw-pg", "bench-model")
        pg_n = -(-n // BATCH) * BATCH
        results: dict[tuple[str, str], float] = {}
        for kind in ("plain", "stream"):
            for name, (pid, port, out, model) in hops.items():
                metered = name == "gw+postgres"
                results[(kind, name)] = measure(
                    pid, port, bodies(model)[kind], pg_n if metered else n, out, pg_url if metered else None
                )
        print(f"\nInstructions per request (callgrind, {n} sequential keep-alive requests per row, key {KEY})\n")
        print(f"{'':16}{'plain':>14}{'stream':>14}")
        for name in hops:
            print(f"{name:16}{results[('plain', name)]:>14,.0f}{results[('stream', name)]:>14,.0f}")
        for kind in ("plain", "stream"):
            base = results[(kind, "nginx")]
            ratios = ", ".join(f"{name} {results[(kind, name)] / base:.2f}x" for name in hops if name != "nginx")
            print(f"{kind}: instructions per request vs nginx: {ratios}")
        if pg_url:
            print(f"gw+postgres: {pg_n} requests per row, written in batches of {BATCH}")
            for kind in ("plain", "stream"):
                added = results[(kind, "gw+postgres")] - results[(kind, "gateway")]
                print(f"{kind}: metering into Postgres adds {added:,.0f} instructions per request")
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
