"""How much analysts' heavy SQL slows the rest of the API.

Starts ``phobos serve`` on a fresh embedded store, then measures the latency
of ``/readyz`` and of a one-record ``POST /api/v1/ingest`` twice: on an idle
server, and while three clients keep heavy queries running (each a full scan
of ``numbers_mt`` that only the time limit stops). Two of the three run at a
time (``PHOBOS_SQL_CONCURRENCY``), the third is answered 429 and retries.
Prints medians, p95s and the loaded/idle ratio, all measured in this run.

    .venv/bin/python tests/bench/bench_sql_isolation.py [--requests 60] [--sql-seconds 10]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from factories import connection  # noqa: E402

HEAVY = "SELECT count() FROM system.numbers_mt WHERE sipHash64(number) = 1"


def request(port: int, path: str, body: object | None = None) -> tuple[int, float]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data,
                                 headers={"Content-Type": "application/json"}, method="POST" if data else "GET")
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(req, timeout=120) as response:
            response.read()
            status = response.status
    except urllib.error.HTTPError as err:
        err.read()
        status = err.code
    return status, time.perf_counter() - started


def measure(port: int, n: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {"readyz": [], "ingest": []}
    for i in range(n):
        status, seconds = request(port, "/readyz")
        assert status == 200, status
        out["readyz"].append(seconds)
        status, seconds = request(port, "/api/v1/ingest", {"connections": [connection(pid=10_000 + i)]})
        assert status == 200, status
        out["ingest"].append(seconds)
        time.sleep(0.05)
    return out


def summary(values: list[float]) -> str:
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))]
    return f"median {statistics.median(ordered) * 1000:7.1f} ms   p95 {p95 * 1000:7.1f} ms"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=60, help="requests of each kind per phase")
    parser.add_argument("--sql-seconds", type=float, default=10, help="the analysts' time limit")
    parser.add_argument("--port", type=int, default=19431)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, PHOBOS_SQL_MAX_SECONDS=str(args.sql_seconds), PHOBOS_CACHE_SECONDS="0")
        proc = subprocess.Popen([sys.executable, "-m", "api.commands.phobos", "serve", "--store", f"chdb://{tmp}/s",
                                 "--port", str(args.port), "--migrate"], cwd=ROOT, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.time() + 60
            while True:
                try:
                    if request(args.port, "/readyz")[0] == 200:
                        break
                except OSError:
                    pass
                if time.time() > deadline or proc.poll() is not None:
                    raise SystemExit("phobos serve did not start")
                time.sleep(0.3)
            idle = measure(args.port, args.requests)

            stop = threading.Event()
            answers: dict[int, int] = {}

            def analyst() -> None:
                while not stop.is_set():
                    status, _ = request(args.port, "/api/v1/sql", {"query": HEAVY})
                    answers[status] = answers.get(status, 0) + 1
                    if status == 429:
                        time.sleep(0.5)

            threads = [threading.Thread(target=analyst, daemon=True) for _ in range(3)]
            for thread in threads:
                thread.start()
            time.sleep(1.0)  # the heavy queries are running
            loaded = measure(args.port, args.requests)
            stop.set()
            for thread in threads:
                thread.join(args.sql_seconds + 30)
        finally:
            proc.terminate()
            proc.wait(30)
    print(f"phobos serve, embedded store, {os.cpu_count()} cores; heavy SQL time limit {args.sql_seconds:g} s")
    for what in ("readyz", "ingest"):
        print(f"{what:7s} idle                 {summary(idle[what])}")
        print(f"{what:7s} 3 heavy SQL clients  {summary(loaded[what])}   "
              f"median ratio {statistics.median(loaded[what]) / statistics.median(idle[what]):.2f}")
    print(f"analysts' answers while loaded: {dict(sorted(answers.items()))} (400 = time limit hit, 429 = pool full)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
