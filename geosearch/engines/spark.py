"""The Spark engine: the same per-chunk work on Apache Spark executors (``geosearch[spark]``).

Ingest: the driver plans files and windows exactly as the local engine does; chunks are
spread over Spark partitions, executors run ``embed_chunk`` (the catalog — manifest, fusion,
extractor settings — is broadcast once; each Python worker loads the model once and reuses
it), and results stream back in chunk order to the same writer, so the GeoPackage and index
are the ones the local engine makes.

Batch search: the database's vectors are written as a Parquet dataset of shards; executors
build an exact FAISS index per shard and search a broadcast block of query vectors; the
driver merges the per-shard top-k. Queries the database holds use their stored vectors; new
query files are embedded on the executors.

Scores of rows (``spark_row_scores``): the same Parquet shards, each row scored by a broadcast
function (``detect``: a linear classifier's log-odds; ``changes``: a pair's two vectors side by
side). ``changes`` also pairs places on Spark (``spark_latest_pairs``: the latest tile per place
and period, the two periods joined).
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from geosearch.catalog import Catalog, EmbeddedTiles
from geosearch.config import Settings, SparkSettings
from geosearch.engines.base import (
    Chunk,
    ChunkFailure,
    embed_chunk,
)
from geosearch.errors import ConfigError

# Rows per Parquet shard of database vectors in batch search, and query rows per broadcast.
SHARD_ROWS = 200_000
QUERY_BLOCK_ROWS = 50_000


def spark_session(settings: SparkSettings, master: str | None = None) -> Any:
    """A SparkSession for geosearch (pyspark imported here only); clear error without it."""
    try:
        from pyspark.sql import SparkSession
    except ImportError:
        raise ConfigError(
            "the Spark engine needs pyspark (and Java 17): pip install 'geosearch[spark]'"
        ) from None
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    builder = (
        SparkSession.builder.master(master or settings.master)
        .appName("geosearch")
        .config("spark.executor.memory", settings.executor_memory)
        .config("spark.driver.memory", settings.driver_memory)
        .config("spark.ui.enabled", "false")
        .config("spark.python.worker.reuse", "true")
        .config("spark.ui.showConsoleProgress", "false")
    )
    try:
        session = builder.getOrCreate()
    except Exception as exc:  # Java missing, bad master URL...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(
            f"Spark could not start with master {master or settings.master!r}: {first} "
            "(is Java 17 installed and JAVA_HOME set?)"
        ) from None
    session.sparkContext.setLogLevel("ERROR")
    return session


class SparkScheduler:
    """Runs chunks on Spark executors; yields results back in chunk order."""

    def __init__(self, settings: SparkSettings, master: str | None = None) -> None:
        self.settings = settings
        self.master = master or settings.master
        self.label = f"spark {self.master}"
        self.remote_chunks = 0  # chunks whose work ran outside this (driver) process

    def run(
        self, catalog: Catalog, chunks: Iterator[Chunk], bands: Sequence[int] | None
    ) -> Iterator[tuple[Chunk, EmbeddedTiles | ChunkFailure]]:
        planned = list(chunks)
        if not planned:
            return
        session = spark_session(self.settings, self.master)
        context = session.sparkContext
        shared = context.broadcast(catalog.for_workers(1))  # one task per executor core
        partitions = self.settings.partitions or min(len(planned), 4 * context.defaultParallelism)
        work = [(i, c.plan.path, c.windows) for i, c in enumerate(planned)]
        select = list(bands) if bands else None

        def embed_partition(items: Iterator[tuple]) -> Iterator[tuple]:
            worker_catalog = shared.value
            for i, path, windows in items:
                yield i, embed_chunk(worker_catalog, path, windows, select), os.getpid()

        driver = os.getpid()
        rdd = context.parallelize(work, max(1, partitions)).mapPartitions(embed_partition)
        for i, result, pid in _ordered_results(context, rdd):
            self.remote_chunks += pid != driver
            yield planned[i], result


def _ordered_results(context: Any, rdd: Any) -> Iterator[Any]:
    """An RDD's elements in order, computed a group of partitions at a time in parallel (one
    Spark job per group), so the driver holds at most one group's results."""
    group = max(1, 2 * context.defaultParallelism)
    count = rdd.getNumPartitions()
    for start in range(0, count, group):
        partitions = list(range(start, min(start + group, count)))
        yield from context.runJob(rdd, lambda items: items, partitions)


def scheduler(settings: Settings, master: str | None = None) -> SparkScheduler:
    """This engine's scheduler: Spark executors at ``master`` (default: ``spark.master``)."""
    return SparkScheduler(settings.spark, master)


def spark_top_k(
    session: Any,
    ids: np.ndarray,
    vectors: np.ndarray,
    queries: np.ndarray,
    k: int,
    partitions: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` inner-product search of ``queries`` over sharded ``vectors`` on Spark.

    Returns (scores, ids), each (len(queries), k), best first (-1 ids where fewer exist).
    """
    context = session.sparkContext
    dim = vectors.shape[1]
    with tempfile.TemporaryDirectory(prefix="geosearch-shards-") as folder:
        rows = range(0, len(ids), SHARD_ROWS)
        shard_paths = _write_shards(
            Path(folder), ((ids[s : s + SHARD_ROWS], vectors[s : s + SHARD_ROWS]) for s in rows)
        )
        best_scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
        best_ids = np.full((len(queries), k), -1, dtype=np.int64)
        for start in range(0, len(queries), QUERY_BLOCK_ROWS):
            block = np.ascontiguousarray(queries[start : start + QUERY_BLOCK_ROWS], np.float32)
            shared = context.broadcast(block)

            def search_shard(paths: Iterator[str], shared: Any = shared) -> Iterator[tuple]:
                import faiss
                import pyarrow.parquet as parquet

                for shard in paths:
                    shard_ids, matrix = _read_shard(parquet.read_table(shard), dim)
                    index = faiss.IndexFlatIP(dim)
                    index.add(matrix)
                    scores, rows = index.search(shared.value, min(k, len(shard_ids)))
                    found = np.where(rows >= 0, shard_ids[np.maximum(rows, 0)], -1)
                    yield scores, found

            count = partitions or len(shard_paths)
            searched = context.parallelize(shard_paths, count).mapPartitions(search_shard)
            for scores, found in _ordered_results(context, searched):
                _merge_top_k(best_scores[start : start + len(block)],
                             best_ids[start : start + len(block)], scores, found)  # fmt: skip
            shared.unpersist()
    return best_scores, best_ids


def spark_linear_scores(
    session: Any,
    batches: Iterator[tuple[np.ndarray, np.ndarray]],
    weights: np.ndarray,
    bias: float,
    partitions: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """(ids, vectors . weights + bias) of every vector of ``batches`` (each (ids, vectors), as
    ``Store.vector_batches`` streams them), computed on Spark executors shard by shard (a linear
    classifier's log-odds: ``detect --engine spark``). Ids in the order streamed."""
    linear = partial(_linear, np.asarray(weights, np.float32), np.float32(bias))
    return spark_row_scores(session, batches, len(weights), linear, partitions)


def _linear(weights: np.ndarray, bias: np.float32, matrix: np.ndarray) -> np.ndarray:
    return matrix @ weights + bias


def spark_row_scores(
    session: Any,
    batches: Iterator[tuple[np.ndarray, np.ndarray]],
    dim: int,
    score: Callable[[np.ndarray], np.ndarray],
    partitions: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """(ids, ``score(rows)``) of every row of ``batches`` (each (ids, (n, ``dim``) rows)),
    computed on Spark executors shard by shard (``score``: a module-level function or a
    ``partial`` of one, broadcast to them). Ids in the order streamed."""
    context = session.sparkContext
    with tempfile.TemporaryDirectory(prefix="geosearch-shards-") as folder:
        shard_paths = _write_shards(Path(folder), batches)
        if not shard_paths:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        shared = context.broadcast(score)

        def score_shard(paths: Iterator[str], shared: Any = shared) -> Iterator[tuple]:
            import pyarrow.parquet as parquet

            for shard in paths:
                shard_ids, matrix = _read_shard(parquet.read_table(shard), dim)
                yield shard_ids, shared.value(matrix)

        count = partitions or len(shard_paths)
        scored = context.parallelize(shard_paths, count).mapPartitions(score_shard)
        parts = list(_ordered_results(context, scored))
        shared.unpersist()
    return np.concatenate([i for i, _ in parts]), np.concatenate([v for _, v in parts])


def spark_latest_pairs(
    session: Any, rows: Sequence[tuple[int, int, str, str]]
) -> list[tuple[int | None, int | None, int, int]]:
    """Places seen from two sides, paired on Spark executors. ``rows``: (id, side 0 or 1,
    place, order). Per side and place the row of highest (order, id) is taken, and counted;
    the two sides are joined on the place (a full outer join: a place one side holds alone
    comes back with None on the other). Rows (id 0, id 1, count 0, count 1)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from pyspark.sql import functions as F

    ids, sides, places, orders = zip(*rows, strict=True) if rows else ([], [], [], [])
    table = pa.table({
        "id": pa.array(ids, pa.int64()), "side": pa.array(sides, pa.int8()),
        "place": pa.array(places, pa.string()), "order": pa.array(orders, pa.string()),
    })  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="geosearch-places-") as folder:
        pq.write_table(table, str(Path(folder) / "places.parquet"))
        chosen = (
            session.read.parquet(folder)
            .groupBy("side", "place")
            .agg(F.max(F.struct("order", "id")).alias("best"), F.count("*").alias("count"))
        )
        side = [
            chosen.where(F.col("side") == n).select(
                "place", F.col("best.id").alias(f"id{n}"), F.col("count").alias(f"count{n}")
            )
            for n in (0, 1)
        ]
        joined = side[0].join(side[1], "place", "full_outer").drop("place").toArrow()
    columns = [joined.column(name).to_pylist() for name in ("id0", "id1", "count0", "count1")]
    return [(a, b, na or 0, nb or 0) for a, b, na, nb in zip(*columns, strict=True)]


def _write_shards(folder: Path, batches: Iterator[tuple[np.ndarray, np.ndarray]]) -> list[str]:
    """Vectors (float32) as Parquet shards of about SHARD_ROWS rows (id, vector bytes) in
    ``folder``, written as the batches come; the shards' paths."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    paths: list[str] = []
    pending: list[tuple[np.ndarray, np.ndarray]] = []

    def flush() -> None:
        ids = np.concatenate([i for i, _ in pending])
        vectors = np.vstack([v for _, v in pending]).astype(np.float32)
        blobs = pa.array([row.tobytes() for row in vectors], pa.binary())
        table = pa.table({"id": pa.array(ids, pa.int64()), "vector": blobs})
        path = str(folder / f"shard-{len(paths):05d}.parquet")
        pq.write_table(table, path)
        paths.append(path)
        pending.clear()

    for ids, vectors in batches:
        pending.append((ids, vectors))
        if sum(len(i) for i, _ in pending) >= SHARD_ROWS:
            flush()
    if pending and sum(len(i) for i, _ in pending):
        flush()
    return paths


def _read_shard(table: Any, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """(ids, (n, dim) float32 vectors) of a shard written by ``_write_shards``."""
    blobs = table.column("vector").to_pylist()
    return table.column("id").to_numpy(), np.frombuffer(b"".join(blobs), np.float32).reshape(
        -1, dim
    )


def _merge_top_k(
    best_scores: np.ndarray, best_ids: np.ndarray, scores: np.ndarray, ids: np.ndarray
) -> None:
    """Merge a shard's (scores, ids) into the running best, in place."""
    k = best_scores.shape[1]
    all_scores = np.hstack([best_scores, scores])
    all_ids = np.hstack([best_ids, ids])
    order = np.argsort(-all_scores, axis=1, kind="stable")[:, :k]
    best_scores[:] = np.take_along_axis(all_scores, order, axis=1)
    best_ids[:] = np.take_along_axis(all_ids, order, axis=1)
