"""Query benchmark of geosearch's vector index: one JSON line per measurement on stdout.

For each size: synthetic tile vectors made like the stored ones (``bench/synthetic_tiles.py``:
128 dimensions after the database's projection, calibrated against the real NAIP vectors),
streamed to a float16 file on disk as the database stores them; 200 held-out queries (a new
date of a place the data holds); the exact top 10 over the float16 vectors as ground truth.
Each index is built streaming from that file (trained on a sample, filled in batches), saved,
then loaded and queried in a fresh process, so its peak RSS is that of a query process.
Measured: ms/query (p50, p95) one query at a time and in batches, recall@10 against exact
search, build time, file sizes. The baselines run in the same invocation: exact FAISS (flat)
at every size, the batched brute force that makes the ground truth, and at 10k vectors the
naive per-item loop over sklearn's ``cosine_similarity``.

    .venv/bin/python bench/query.py                        # 10k, 100k, 1M
    .venv/bin/python bench/query.py --sizes 10000000       # 10M: ~1 h, 8 GB RAM, 12 GB disk
    .venv/bin/python bench/query.py --sizes 1000000 --kinds ivfpq --nprobe 200,400 --rerank 500,1000
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from synthetic_tiles import DIM, tiles  # noqa: E402

K = 10
NAIVE_SIZE = 10_000
CHUNK_ROWS = 262_144  # rows read from the vectors file at once


def synthetic_file(n: int, queries: int, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(vectors, queries): ``n`` synthetic tile vectors written to ``path`` at float16 (a
    read-only memory map is returned) and ``queries`` held-out query vectors (float32). The
    place number of each row and each query go to ``<path>.places.npy`` and
    ``<path>.query_places.npy``."""
    data = tiles(n, queries=queries, seed=1)
    held_out, query_places = next(data) if queries else (np.zeros((0, DIM), np.float32), [])
    stored = np.lib.format.open_memmap(path, mode="w+", dtype="<f2", shape=(n, DIM))
    places = np.empty(n, dtype=np.int32)
    start = 0
    for vectors, numbers in data:
        stored[start : start + len(vectors)] = vectors
        places[start : start + len(vectors)] = numbers
        start += len(vectors)
    stored.flush()
    del stored
    np.save(places_path(path), places)
    np.save(places_path(path, "query_places"), np.asarray(query_places, dtype=np.int32))
    return np.load(path, mmap_mode="r"), held_out


def places_path(path: Path, name: str = "places") -> Path:
    return path.with_name(f"{path.stem}.{name}.npy")


def same_place(found: np.ndarray, places: np.ndarray, query_places: np.ndarray) -> np.ndarray:
    """How many of each query's results (ids count from 1) show its place (another date)."""
    rows = np.maximum(found, 1) - 1
    return ((places[rows] == query_places[:, None]) & (found > 0)).sum(axis=1)


def chunks(vectors: np.ndarray) -> Any:
    """(ids, float32 rows) of ``vectors`` ``CHUNK_ROWS`` at a time; ids count from 1."""
    for start in range(0, len(vectors), CHUNK_ROWS):
        part = np.asarray(vectors[start : start + CHUNK_ROWS], dtype=np.float32)
        yield np.arange(start + 1, start + 1 + len(part), dtype=np.int64), part


def exact_top(batches: Any, queries: np.ndarray, k: int) -> tuple[np.ndarray, float]:
    """(ids of each query's exact top ``k``, ms per query): FAISS brute force over the
    (ids, rows) ``batches`` (e.g. ``chunks`` of the float16 vectors), all queries at once (the
    exact baseline's speed)."""
    import faiss

    started = time.perf_counter()
    best_scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
    best_ids = np.zeros((len(queries), k), dtype=np.int64)
    for ids, part in batches:
        scores, rows = faiss.knn(queries, part, k, metric=faiss.METRIC_INNER_PRODUCT)
        scores = np.hstack([best_scores, scores])
        found = np.hstack([best_ids, ids[rows]])
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        best_scores = np.take_along_axis(scores, order, 1)
        best_ids = np.take_along_axis(found, order, 1)
    return best_ids, (time.perf_counter() - started) * 1000 / len(queries)


def naive_loop_ms(vectors: np.ndarray, queries: np.ndarray) -> float:
    """ms per query of the naive search: sklearn ``cosine_similarity`` per stored vector."""
    from sklearn.metrics.pairwise import cosine_similarity

    vectors = np.asarray(vectors, dtype=np.float32)
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
    vectors_file = Path(args.queries_file).with_name("vectors.npy")
    places = np.load(places_path(vectors_file), mmap_mode="r")
    query_places = np.load(places_path(vectors_file, "query_places"))
    exact_same = same_place(truth, places, query_places)
    rss_before = rss_bytes()
    started = time.perf_counter()
    loaded = VectorIndex.load(Path(args.child))
    if loaded is None:
        raise SystemExit(f"{args.child}: could not be loaded")
    index, _ = loaded
    load_s = time.perf_counter() - started
    rss_loaded = rss_bytes()
    settings = [{}]
    if index.kind == "ivfpq":
        settings = [
            {"nprobe": nprobe, "rerank": rerank} for nprobe in args.nprobe for rerank in args.rerank
        ]
    defaults = {name: getattr(index, name) for choice in settings for name in choice}
    for choice in settings:
        for name, value in choice.items():
            setattr(index, name, value or defaults[name])
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
        found_same = same_place(np.vstack(found), places, query_places)
        print(
            json.dumps(
                {
                    "settings": index.describe()["settings"],
                    "single_ms": percentiles(single),
                    "batched_ms_per_query": percentiles(batched) | {"batch": args.batch},
                    "recall_at_10": round(float(recall), 4),
                    # other dates of the query's place in the top 10, as a share of exact's
                    "same_place_recall": round(float(found_same.sum() / exact_same.sum()), 4),
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
    vectors: np.ndarray,
    folder: Path,
    args: argparse.Namespace,
) -> list[dict[str, Any]]:
    """Build (streaming from ``vectors``) and save one index here, query it in a fresh
    process; its JSON records."""
    from geosearch.index import IndexState, VectorIndex, vectors_path

    def sample(size: int) -> np.ndarray:
        rows = np.sort(np.random.default_rng(0).choice(len(vectors), size, replace=False))
        return np.asarray(vectors[rows], dtype=np.float32)

    path = folder / f"{kind}.faiss"
    started = time.perf_counter()
    index = VectorIndex.build_from(
        len(vectors), DIM, lambda: chunks(vectors), sample,
        kind=kind, spill=path, augment=args.augment,
    )  # fmt: skip
    build_s = time.perf_counter() - started
    index.save(path, IndexState(0, len(vectors), index.count, index.dim))
    truth_file = folder / "truth.npy"
    if args.augment:  # recall of the index's search of its own (augmented) rows
        queries = np.load(folder / "queries.npy")
        truth_file = folder / f"truth_{kind}_rows.npy"
        np.save(truth_file, exact_top(index.row_batches(), queries, K)[0])
    del index
    files = {"index_file_bytes": path.stat().st_size}
    if vectors_path(path).exists():
        files["vectors_file_bytes"] = vectors_path(path).stat().st_size
    command = [sys.executable, __file__, "--child", str(path), "--batch", str(args.batch)]
    command += ["--queries-file", str(folder / "queries.npy")]
    command += ["--truth-file", str(truth_file)]
    command += ["--nprobe", ",".join(map(str, args.nprobe))]
    command += ["--rerank", ",".join(map(str, args.rerank))]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    base = {"measure": "query", "n": len(vectors), "kind": kind, "role": role}
    base["augment"] = args.augment
    return [
        base | {"build_s": round(build_s, 1)} | files | json.loads(line)
        for line in output.splitlines()
    ]


def emit(record: dict[str, Any]) -> None:
    print(json.dumps(record), flush=True)


def run(args: argparse.Namespace) -> None:
    import faiss

    from geosearch.index import (
        AUGMENT_NEIGHBOURS,
        EXACT_MAX_VECTORS,
        PQ_MAX_SHARE,
        PQ_MIN_SHARE,
        PQ_RERANK_CANDIDATES,
        PQ_SCAN_CODES,
        choose_kind,
    )

    if args.augment is None:
        args.augment = AUGMENT_NEIGHBOURS
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
            "exact_max": EXACT_MAX_VECTORS,
            "ivf_defaults": {
                "scan_codes": PQ_SCAN_CODES,
                "share": [PQ_MIN_SHARE, PQ_MAX_SHARE],
                "rerank": PQ_RERANK_CANDIDATES,
            },
        }
    )
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="geosearch-bench-"))
    try:
        naive_ms = None
        if args.naive_queries:
            folder = workdir / "naive"
            folder.mkdir(parents=True, exist_ok=True)
            vectors, queries = synthetic_file(NAIVE_SIZE, args.naive_queries, folder / "v.npy")
            naive_ms = naive_loop_ms(vectors, queries)
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
        for n in args.sizes:
            folder = workdir / str(n)
            folder.mkdir(parents=True, exist_ok=True)
            started = time.perf_counter()
            vectors, queries = synthetic_file(n, args.queries, folder / "vectors.npy")
            made_s = time.perf_counter() - started
            truth, exact_ms = exact_top(chunks(vectors), queries, K)
            emit(
                {
                    "measure": "exact_brute_force",
                    "n": n,
                    "make_vectors_s": round(made_s, 1),
                    "vectors_file_bytes": (folder / "vectors.npy").stat().st_size,
                    "batched_ms_per_query": round(exact_ms, 2),
                    "batch": args.queries,
                }
            )
            np.save(folder / "queries.npy", queries)
            np.save(folder / "truth.npy", truth)
            chosen = choose_kind(n)
            kinds = {"flat": "exact baseline"}
            kinds[chosen] = "default" if chosen != "flat" else "default = exact baseline"
            if args.kinds:
                kinds = {kind: kinds.get(kind, "forced") for kind in args.kinds}
            for kind, role in kinds.items():
                for record in measure_kind(kind, role, vectors, folder, args):
                    if naive_ms and n == NAIVE_SIZE:
                        record["speedup_vs_naive_p50"] = round(
                            naive_ms / record["single_ms"]["p50"]
                        )
                    emit(record)
                if not args.workdir:
                    for file in folder.glob(f"{kind}.faiss*"):
                        file.unlink()
            del vectors
            if not args.workdir:
                shutil.rmtree(folder, ignore_errors=True)
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)


def real_check(db: Path) -> list[dict[str, Any]]:
    """Whether the synthetic vectors are as hard for IVF as a real database's stored ones, at
    the size the bench data reach (about a thousand tiles; the index's own settings are
    trivial there: a re-rank of 1000 is every tile). What is compared is what limits IVF's
    recall at any size: the share of the true top 10 inside the lists probed (IVFFlat, nlist
    4·√N, every tile a query, itself left out) at 3, 7 and 15 % of the lists probed, and the
    neighbours' cosines (``synthetic_tiles.statistics``; synthetic: mean of 3 seeds)."""
    from synthetic_tiles import DATES, statistics, synthetic_sample

    from geosearch.store import Store

    with Store(db) as store:
        ids, stored = store.vectors()
        places = store.tiles(ids.tolist())
    real = np.asarray(stored, dtype=np.float32)
    # a place: the same window of a scene whatever its date (names differ by _YYYYMMDD)
    keys = [(re.sub(r"_\d{8}", "", t.path), t.window.row, t.window.col) for t in places]
    numbers = {key: number for number, key in enumerate(sorted(set(keys)))}
    real_stats = statistics(real, np.array([numbers[key] for key in keys]))
    size = len(real) - len(real) % DATES
    model = [statistics(*synthetic_sample(size, seed), seed=seed) for seed in range(3)]
    model_stats = {key: float(np.mean([m[key] for m in model])) for key in model[0]}
    return [
        {"measure": "real_check", "db": db.name, "data": label}
        | {key: round(value, 4) for key, value in stats.items()}
        for label, stats in (("real", real_stats), ("synthetic", model_stats))
    ]


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
        "--rerank", type=integers, default=[0], help="IVF re-ranked candidates (0: default)"
    )
    parser.add_argument(
        "--augment", type=int, help="neighbours a row is augmented by (default: the index's)"
    )
    parser.add_argument("--naive-queries", type=int, default=3, help="0 to skip the naive loop")
    parser.add_argument("--workdir", help="keep index files here (default: a temporary folder)")
    parser.add_argument(
        "--real",
        type=Path,
        nargs="+",
        help="instead: how hard these databases' vectors are for IVF, beside synthetic ones",
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--queries-file", help=argparse.SUPPRESS)
    parser.add_argument("--truth-file", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.real:
        for db in args.real:
            for record in real_check(db):
                emit(record)
        return
    if args.child:
        query_process(args)
    else:
        run(args)


if __name__ == "__main__":
    main()
