"""Batch similarity search on Apache Spark: many queries at once (``similar --engine spark``).

Queries are files (a folder's worth, say) or every indexed tile (``all_tiles``: near-duplicate
detection). Files the database holds use their stored vectors; other files are embedded on the
executors with the ingest code. The search itself is exact and sharded (``engines.spark``).
Results are the same ``SearchResult`` objects as the local search, so the same GeoJSON and
the Parquet table can be written from them.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from geosearch.catalog import open_database
from geosearch.config import Settings
from geosearch.engines.base import Chunk, ChunkFailure, FilePlan
from geosearch.engines.spark import SparkScheduler, spark_session, spark_top_k
from geosearch.errors import ConfigError, DatabaseError, InputError
from geosearch.index import index_for_search
from geosearch.ingest import discover
from geosearch.search import (
    SCENE_NEIGHBOURS,
    Query,
    SearchResult,
    is_scene_query,
    mean_vector,
    merge_orientations,
    orientation_rows,
    own_vectors_floor,
    ranked_matches,
    resolve_query,
    scene_ranking,
)
from geosearch.store import Store, normalise_path


def similar_spark(
    db: Path,
    queries: Sequence[Path],
    top: int,
    *,
    all_tiles: bool = False,
    master: str | None = None,
    any_orientation: bool = False,
    settings: Settings | None = None,
) -> list[SearchResult]:
    """The ``top`` most similar tiles to each query file (folders expanded) or to every tile.

    ``any_orientation``: each query file is searched under its 8 orientations (as locally).
    """
    settings = settings or Settings()
    with open_database(db, settings) as catalog:
        store = catalog.store
        session = spark_session(settings.spark, master)
        resolved: list[Query] = []
        if all_tiles:
            ids, vectors = store.vectors()
            for tile, vector in zip(store.tiles(ids.tolist()), vectors, strict=True):
                resolved.append(Query(str(tile.id), tile.path, [tile], vector, True))
        files = discover(queries) if queries else []
        new_files = []
        for path in files:
            record = store.file_record(path)
            if record is not None and record.status == "done" or any_orientation:
                resolved.append(resolve_query(catalog, Path(path), None, any_orientation))
            else:
                new_files.append(path)
        resolved += _embed_on_executors(catalog, new_files, settings, master)
        if not resolved:
            raise ConfigError("no query: give query files or folders, or --all-tiles")
        index = index_for_search(store)  # searched as the local search does: the index's rows
        if index.count == 0:
            raise DatabaseError(f"{store.path} holds no tiles yet")
        ids, vectors = (np.concatenate(part) for part in zip(*index.row_batches(), strict=True))
        parents, matrix = orientation_rows(resolved)
        extra = max(len(query.exclude) for query in resolved)
        scores, found = spark_top_k(
            session, ids, vectors, matrix, top + extra, settings.spark.partitions
        )
        ranked_rows = [
            [
                (float(score), int(tile_id))
                for score, tile_id in zip(row_scores, row_ids, strict=True)
                if tile_id >= 0 and int(tile_id) not in resolved[parent].exclude
            ]
            for parent, row_scores, row_ids in zip(parents, scores, found, strict=True)
        ]
        bonus = settings.search.orientation_bonus
        ranked = merge_orientations(index.vectors, parents, matrix, ranked_rows, bonus)
        scenes = [n for n, query in enumerate(resolved) if is_scene_query(query)]
        if scenes:  # as the local search: scenes ranked by how well their tiles match
            for n, pairs in zip(
                scenes,
                _scene_rankings(session, catalog, resolved, scenes, ids, vectors, settings),
                strict=True,
            ):
                ranked[n] = pairs
        return [
            SearchResult(query, ranked_matches(store, _floored(store, query, pairs[:top])))
            for query, pairs in zip(resolved, ranked, strict=True)
        ]


def _floored(store: Store, query: Query, pairs: list[tuple[float, int]]) -> list[tuple[float, int]]:
    """As the local search ranks results (``own_vectors_floor``), scenes aside."""
    return pairs if is_scene_query(query) else own_vectors_floor(store, query.vector, pairs)


def _scene_rankings(
    session, catalog, resolved: list[Query], scenes: list[int], ids, vectors, settings: Settings
) -> list[list[tuple[float, int]]]:
    """``scene_ranking`` for the queries ``scenes`` (numbers in ``resolved``), their tiles'
    nearest tiles found on the executors as the local search finds them."""
    rows = np.vstack([resolved[n].tile_vectors for n in scenes]).astype(np.float32)
    owners = np.repeat(scenes, [len(resolved[n].tile_vectors) for n in scenes])
    extra = max(len(resolved[n].exclude) for n in scenes)
    scores, found = spark_top_k(
        session, ids, vectors, rows, SCENE_NEIGHBOURS + extra, settings.spark.partitions
    )
    tiles = {
        t.id: t for t in catalog.store.tiles(sorted({int(i) for i in found.ravel() if i >= 0}))
    }
    rankings = []
    for n in scenes:
        query = resolved[n]
        k = min(len(ids), SCENE_NEIGHBOURS + len(query.exclude))  # as the local search's
        mine = {i: t for i, t in tiles.items() if i not in query.exclude}
        rankings.append(scene_ranking(scores[owners == n, :k], found[owners == n, :k], mine))
    return rankings


def _embed_on_executors(
    catalog, paths: list[str], settings: Settings, master: str | None
) -> list[Query]:
    """Queries for files the database doesn't hold, embedded by Spark executors."""
    if not paths:
        return []
    chunks = [
        Chunk(FilePlan(normalise_path(path), 0, 0, "new"), None, first=True, last=True, share=1.0)
        for path in paths
    ]
    queries = []
    for chunk, result in SparkScheduler(settings.spark, master).run(catalog, iter(chunks), None):
        path = chunk.plan.path
        if isinstance(result, ChunkFailure):
            raise InputError(f"{path}: {result.reason}")
        if not result.records:
            raise InputError(f"{path}: no tile has enough valid pixels to search with")
        vector = mean_vector(result.vectors)
        query = Query(os.path.relpath(path), path, result.records, vector, False)
        query.tile_vectors = result.vectors if len(result.records) > 1 else None
        queries.append(query)
    return queries
