"""Query benchmark of geosearch's vector index: one JSON line per measurement on stdout.

For each size: synthetic clustered vectors of the fused dimension (1084), 200 held-out queries,
the exact top 10 as ground truth. Each index is built here, saved, then loaded and queried in
a fresh process, so its peak RSS is that of a query process. Measured: ms/query (p50, p95) one
query at a time and in batches, recall@10 against exact search, build time, file sizes. The
baselines run in the same invocation: exact FAISS (flat) at every size, and at 10k vectors the
naive per-item loop over sklearn's ``cosine_similarity``.

    .venv/bin/python bench/query.py                       # 10k, 100k, 1M (1M: ~15 GB RAM)
    .venv/bin/python bench/query.py --sizes 10000,100000  # quick
    .venv/bin/python bench/query.py --sizes 100000 --kinds hnsw,ivf --ef-search 32,64 --nprobe 8,16
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

DIM = 1084  # 4 × 15 band statistics + 1024 MobileNet
K = 10
NAIVE_SIZE = 10_000


def clustered_vectors(n: int, seed: int, dim: int = DIM) -> np.ndarray:
    """Unit vectors like pooled CNN features: 300 clusters in a 16-dimensional latent space,
    mapped to ``dim`` non-negative features (ReLU; about half are zero), plus a little noise.

    The clusters are the same for every ``seed`` (queries come from the data's distribution);
    ``seed`` draws the points. Built in chunks: 1M vectors need only their own 4.3 GB."""
    structure = np.random.default_rng(7)
    latent, clusters = 16, 300
    basis = structure.standard_normal((latent, dim)).astype(np.float32) / np.sqrt(latent)
    centres = structure.standard_normal((clusters, latent)).astype(np.float32)
    spreads = structure.uniform(0.3, 0.8, clusters).astype(np.float32)
    rng = np.random.default_rng(seed)
    vectors = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 100_000):
        rows = min(100_000, n - start)
        cluster = rng.integers(0, clusters, rows)
        points = centres[cluster] + (
            rng.standard_normal((rows, latent), dtype=np.float32) * spreads[cluster, None]
        )
        chunk = np.maximum(points @ basis, 0)
        chunk += np.abs(rng.standard_normal((rows, dim), dtype=np.float32)) * 0.01
        chunk /= np.linalg.norm(chunk, axis=1, keepdims=True)
        vectors[start : start + rows] = chunk
    return vectors


def exact_top(vectors: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Row numbers of each query's exact top ``k`` (FAISS brute force, no index copy)."""
    import faiss

    return faiss.knn(queries, vectors, k, metric=faiss.METRIC_INNER_PRODUCT)[1]


def naive_loop_ms(vectors: np.ndarray, queries: np.ndarray) -> float:
    """ms per query of the naive search: sklearn ``cosine_similarity`` per stored vector."""
    from sklearn.metrics.pairwise import cosine_similarity

    started = time.perf_counter()
    for query in queries:
        query = query[None, :]
        scores = [cosine_similarity(query, vector[None, :])[0, 0] for vector in vectors]
        np.argsort(scores)[-K:]
    return (time.perf_counter() - started) * 1000 / len(queries)


def percentiles(values: list[float]) -> dict[str, float]:
    return {
        "p50": round(float(np.percentile(values, 50)), 3),
        "p95": round(float(np.percentile(values, 95)), 3),
    }


def rss_bytes(field: str = "VmRSS") -> int:
    """This process's resident memory now (VmRSS) or at its peak (VmHWM), from /proc.

    Not ``resource.getrusage``: on Linux its ``ru_maxrss`` survives fork and exec, so in a
    child of this (large) benchmark process it reports the parent's peak."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise OSError(f"no {field} in /proc/self/status")


def query_process(args: argparse.Namespace) -> None:
    """(Child) load the index, time single and batched queries, recall and RSS: JSON lines."""
    from geosearch.index import VectorIndex

    queries = np.load(args.queries_file)
    truth = np.load(args.truth_file)
    rss_before = rss_bytes()
    started = time.perf_counter()
    loaded = VectorIndex.load(Path(args.child))
    if loaded is None:
        raise SystemExit(f"{args.child}: could not be loaded")
    index, _ = loaded
    load_s = time.perf_counter() - started
    rss_loaded = rss_bytes()
    settings = {"hnsw": ("ef_search", args.ef_search), "ivf": ("nprobe", args.nprobe)}
    name, values = settings.get(index.kind, (None, [None]))
    for value in values:
        if name and value:
            setattr(index, name, value)
        for query in queries[:10]:  # warm up
            index.search(query[None, :], K)
        single, found = [], []
        for query in queries:
            started = time.perf_counter()
            _, ids = index.search(query[None, :], K)
            single.append((time.perf_counter() - started) * 1000)
            found.append(ids[0])
        batched, batch_ids = [], []
        repeats = max(1, math.ceil(10 * args.batch / len(queries)))
        for _ in range(repeats):
            for start in range(0, len(queries), args.batch):
                batch = queries[start : start + args.batch]
                started = time.perf_counter()
                _, ids = index.search(batch, K)
                batched.append((time.perf_counter() - started) * 1000 / len(batch))
                batch_ids.append(ids)
        batch_ids = np.vstack(batch_ids[: math.ceil(len(queries) / args.batch)])
        recall = np.mean([len(set(f) & set(t)) / K for f, t in zip(found, truth, strict=True)])
        print(
            json.dumps(
                {
                    "settings": index.describe()["settings"],
                    "single_ms": percentiles(single),
                    "batched_ms_per_query": percentiles(batched) | {"batch": args.batch},
                    "recall_at_10": round(float(recall), 4),
                    "batched_equals_single": bool((batch_ids == np.vstack(found)).all()),
                    "load_s": round(load_s, 2),
                    "rss_before_load_bytes": rss_before,
                    "rss_after_load_bytes": rss_loaded,
                    "peak_rss_bytes": rss_bytes("VmHWM"),
                    "describe": index.describe(),
                }
            ),
            flush=True,
        )


def measure_kind(
    kind: str,
    role: str,
    ids: np.ndarray,
    vectors: np.ndarray,
    folder: Path,
    args: argparse.Namespace,
) -> list[dict[str, Any]]:
    """Build and save one index here, query it in a fresh process; its JSON records."""
    from geosearch.index import IndexState, VectorIndex, vectors_path

    started = time.perf_counter()
    index = VectorIndex.build(ids, vectors, kind=kind)
    build_s = time.perf_counter() - started
    path = folder / f"{kind}.faiss"
    index.save(path, IndexState(0, int(ids.max()), index.count, index.dim))
    del index
    files = {"index_file_bytes": path.stat().st_size}
    if vectors_path(path).exists():
        files["vectors_file_bytes"] = vectors_path(path).stat().st_size
    command = [sys.executable, __file__, "--child", str(path), "--batch", str(args.batch)]
    command += ["--queries-file", str(folder / "queries.npy")]
    command += ["--truth-file", str(folder / "truth.npy")]
    command += ["--nprobe", ",".join(map(str, args.nprobe))]
    command += ["--ef-search", ",".join(map(str, args.ef_search))]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    base = {"measure": "query", "n": len(ids), "kind": kind, "role": role}
    return [
        base | {"build_s": round(build_s, 1)} | files | json.loads(line)
        for line in output.splitlines()
    ]


def emit(record: dict[str, Any]) -> None:
    print(json.dumps(record), flush=True)


def run(args: argparse.Namespace) -> None:
    import faiss

    from geosearch.index import EXACT_MAX_VECTORS, HNSW_MAX_VECTORS, choose_kind

    emit(
        {
            "measure": "environment",
            "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
            "cpus": os.cpu_count(),
            "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30),
            "python": platform.python_version(),
            "faiss": faiss.__version__,
            "numpy": np.__version__,
            "dim": DIM,
            "queries": args.queries,
            "thresholds": {"exact_max": EXACT_MAX_VECTORS, "hnsw_max": HNSW_MAX_VECTORS},
        }
    )
    queries = clustered_vectors(args.queries, seed=2)
    naive_ms = None
    if args.naive_queries:
        naive_ms = naive_loop_ms(
            clustered_vectors(NAIVE_SIZE, seed=1), queries[: args.naive_queries]
        )
        emit(
            {
                "measure": "naive_sklearn_loop",
                "n": NAIVE_SIZE,
                "queries": args.naive_queries,
                "ms_per_query": round(naive_ms, 1),
                "extrapolated_ms_per_query": {
                    str(n): round(naive_ms * n / NAIVE_SIZE) for n in (100_000, 1_000_000)
                },
            }
        )
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="geosearch-bench-"))
    try:
        for n in args.sizes:
            folder = workdir / str(n)
            folder.mkdir(parents=True, exist_ok=True)
            vectors = clustered_vectors(n, seed=1)
            ids = np.arange(1, n + 1, dtype=np.int64)
            np.save(folder / "queries.npy", queries)
            np.save(folder / "truth.npy", ids[exact_top(vectors, queries, K)])
            chosen = choose_kind(n)
            kinds = {"flat": "exact baseline"}
            kinds[chosen] = "default" if chosen != "flat" else "default = exact baseline"
            if args.kinds:
                kinds = {kind: kinds.get(kind, "forced") for kind in args.kinds}
            for kind, role in kinds.items():
                for record in measure_kind(kind, role, ids, vectors, folder, args):
                    if naive_ms and n == NAIVE_SIZE:
                        record["speedup_vs_naive_p50"] = round(
                            naive_ms / record["single_ms"]["p50"]
                        )
                    emit(record)
                if not args.workdir:
                    for file in folder.glob(f"{kind}.faiss*"):
                        file.unlink()
            del vectors
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)


def integers(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=integers, default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--batch", type=int, default=50, help="queries per batched search")
    parser.add_argument(
        "--kinds",
        type=lambda s: s.split(","),
        help="index kinds to measure (default: flat, the exact baseline, and the default kind)",
    )
    parser.add_argument("--nprobe", type=integers, default=[0], help="IVF nprobe (0: default)")
    parser.add_argument(
        "--ef-search", type=integers, default=[0], help="HNSW efSearch (0: default)"
    )
    parser.add_argument("--naive-queries", type=int, default=3, help="0 to skip the naive loop")
    parser.add_argument("--workdir", help="keep index files here (default: a temporary folder)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--queries-file", help=argparse.SUPPRESS)
    parser.add_argument("--truth-file", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        query_process(args)
    else:
        run(args)


if __name__ == "__main__":
    main()
