"""Loopback load test of ``geosearch serve``: one JSON line on stdout.

Starts the service (uvicorn, one process, read-only) on 127.0.0.1 and a free port in a child
process, then sends ``--requests`` similarity searches (``GET /api/similar?tile=ID&top=K``,
tile ids drawn at random with a fixed seed) from ``--clients`` concurrent keep-alive clients.
Bounded: it stops after that many requests or ``--deadline`` seconds, whichever comes first,
and only ever talks to 127.0.0.1. Prints requests/s and latency percentiles (ms).

    .venv/bin/python bench/serve_load.py                       # sample_tiles/, 1000 x 8
    .venv/bin/python bench/serve_load.py --db demo.gpkg --requests 2000 --clients 16
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

HOST = "127.0.0.1"  # loopback only, by design: no option changes it


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def start_server(db: Path, port: int) -> subprocess.Popen:
    code = f"from geosearch.serve import run; run({str(db)!r}, {HOST!r}, {port})"
    server = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the server stopped: {server.stderr.read()}")
        try:
            connection = http.client.HTTPConnection(HOST, port, timeout=5)
            connection.request("GET", "/api/config")
            if connection.getresponse().status == 200:
                connection.close()
                return server
        except OSError:
            time.sleep(0.2)
    server.kill()
    raise SystemExit("the server did not answer within 120 s")


def tile_ids(port: int) -> list[int]:
    connection = http.client.HTTPConnection(HOST, port, timeout=60)
    connection.request("GET", "/api/tiles?limit=5000")
    page = json.loads(connection.getresponse().read())
    connection.close()
    return [feature["id"] for feature in page["features"]]


def load(port: int, ids: list[int], args: argparse.Namespace) -> dict:
    """Send the requests from ``args.clients`` threads; latencies in ms, errors, seconds."""
    rng = random.Random(args.seed)
    paths = [f"/api/similar?tile={rng.choice(ids)}&top={args.top}" for _ in range(args.requests)]
    lock = threading.Lock()
    next_request = iter(range(args.requests))
    latencies: list[float] = []
    errors: list[str] = []
    stop_at = time.monotonic() + args.deadline

    def client() -> None:
        connection = http.client.HTTPConnection(HOST, port, timeout=60)
        try:
            while time.monotonic() < stop_at:
                with lock:
                    number = next(next_request, None)
                if number is None:
                    return
                started = time.perf_counter()
                try:
                    connection.request("GET", paths[number])
                    response = connection.getresponse()
                    body = response.read()
                    ok = response.status == 200 and body.startswith(b'{"type":"FeatureCollection"')
                except (OSError, http.client.HTTPException) as exc:
                    connection.close()
                    connection = http.client.HTTPConnection(HOST, port, timeout=60)
                    ok, body = False, str(exc).encode()
                elapsed = (time.perf_counter() - started) * 1000
                with lock:
                    latencies.append(elapsed)
                    if not ok:
                        errors.append(body[:200].decode(errors="replace"))
        finally:
            connection.close()

    threads = [threading.Thread(target=client) for _ in range(args.clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {"latencies": latencies, "errors": errors, "seconds": time.perf_counter() - started}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", type=Path, help="database to serve [default: sample_tiles/]")
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--top", type=int, default=10)
    parser.add_argument("--deadline", type=float, default=300, help="seconds, at most")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    if not 1 <= args.clients <= 64 or not 1 <= args.requests <= 100_000:
        parser.error("--clients 1..64 and --requests 1..100000")

    with tempfile.TemporaryDirectory(prefix="geosearch-serve-load-") as work:
        db = args.db
        if db is None:
            import geosearch

            db = Path(work) / "sample.gpkg"
            geosearch.ingest([ROOT / "sample_tiles"], db)
        port = free_port()
        server = start_server(db, port)
        try:
            ids = tile_ids(port)
            for tile in ids[:5]:  # warm up: index loaded once, code paths taken
                connection = http.client.HTTPConnection(HOST, port, timeout=60)
                connection.request("GET", f"/api/similar?tile={tile}&top={args.top}")
                connection.getresponse().read()
                connection.close()
            measured = load(port, ids, args)
        finally:
            server.terminate()
            try:
                server.wait(20)
            except subprocess.TimeoutExpired:
                server.kill()

    latencies = np.asarray(measured["latencies"])
    done = len(latencies)
    print(
        json.dumps(
            {
                "measure": "serve_similar",
                "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
                "endpoint": f"GET /api/similar?tile=ID&top={args.top}",
                "server": "uvicorn, 1 process, read-only, 127.0.0.1",
                "tiles": len(ids),
                "clients": args.clients,
                "requests": done,
                "errors": len(measured["errors"]),
                "first_error": measured["errors"][0] if measured["errors"] else None,
                "seconds": round(measured["seconds"], 2),
                "requests_per_s": round(done / measured["seconds"], 1),
                "latency_ms": {
                    "p50": round(float(np.percentile(latencies, 50)), 1),
                    "p95": round(float(np.percentile(latencies, 95)), 1),
                    "max": round(float(latencies.max()), 1),
                }
                if done
                else None,
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
            }
        ),
        flush=True,
    )
    if measured["errors"] or done < args.requests:
        sys.exit(1)


if __name__ == "__main__":
    main()
