"""Similarity search: resolve queries to vectors, search the index, return ranked tiles.

A query is a file. If the database holds it (unchanged since ingest), its stored vectors are
used and no model is loaded; otherwise it is read and embedded exactly as ingest would. A
multi-tile file is queried by the mean of its tiles unless one tile is picked. The query's own
tiles never appear among its results.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from shapely.geometry import mapping
from shapely.geometry.base import BaseGeometry
from shapely.ops import unary_union

from geosearch.catalog import Catalog, open_catalog
from geosearch.config import Settings
from geosearch.errors import DatabaseError, InputError
from geosearch.index import open_index
from geosearch.store import Store, TileRecord, normalise_path


@dataclass
class Query:
    """A resolved query: its tiles (with ids when indexed) and the vector searched with."""

    label: str
    path: str
    tiles: list[TileRecord]
    vector: np.ndarray
    indexed: bool
    tile: int | None = None  # which of the file's tiles, if one was picked

    @property
    def exclude(self) -> set[int]:
        return {t.id for t in self.tiles if t.id is not None}

    @property
    def footprint(self) -> BaseGeometry | None:
        shapes = [t.footprint for t in self.tiles if t.footprint is not None]
        return unary_union(shapes) if shapes else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "input": self.label,
            "indexed": self.indexed,
            "tile": self.tile,
            "tiles": len(self.tiles),
            "ids": sorted(self.exclude),
            "acquired": self.tiles[0].acquired if self.tiles else None,
        }


@dataclass
class Match:
    """One result: its rank (1 = most similar), cosine score and tile."""

    rank: int
    score: float
    tile: TileRecord
    preview: str | None = None

    def to_dict(self) -> dict[str, Any]:
        tile = self.tile
        return {
            "path": tile.path,
            "id": tile.id,
            "rank": self.rank,
            "score": round(self.score, 6),
            "row": tile.window.row,
            "col": tile.window.col,
            "width": tile.window.width,
            "height": tile.window.height,
            "acquired": tile.acquired,
            "crs": tile.crs,
            "geometry": mapping(tile.footprint) if tile.footprint is not None else None,
            "preview": self.preview,
        }


@dataclass
class SearchResult:
    """A query and its ranked matches."""

    query: Query
    matches: list[Match] = field(default_factory=list)
    query_preview: str | None = None

    def to_dict(self) -> dict[str, Any]:
        query = self.query.to_dict() | {"preview": self.query_preview}
        return {"query": query, "results": [m.to_dict() for m in self.matches]}


def resolve_query(catalog: Catalog, path: Path, tile: int | None = None) -> Query:
    """The vector for a query file: stored if the database holds it unchanged, else computed."""
    stored_path = normalise_path(path)
    record = catalog.store.file_record(stored_path)
    tiles: list[TileRecord]
    if record is not None and record.status == "done" and _unchanged(stored_path, record):
        tiles = catalog.store.tiles_of_file(stored_path)
        if not tiles:
            raise InputError(f"{path}: indexed, but none of its tiles had enough valid pixels")
        ids, vectors = catalog.store.vectors([t.id for t in tiles])
        order = {tid: i for i, tid in enumerate(ids)}
        vectors = vectors[[order[t.id] for t in tiles]]
        indexed = True
    else:
        embedded = catalog.embed(stored_path)
        if not embedded.records:
            raise InputError(f"{path}: no tile has enough valid pixels to search with")
        tiles, vectors = embedded.records, embedded.vectors
        indexed = False
    if tile is not None:
        if not 0 <= tile < len(tiles):
            raise InputError(f"{path}: has {len(tiles)} tiles; --tile must be 0..{len(tiles) - 1}")
        tiles, vectors = [tiles[tile]], vectors[tile : tile + 1]
    vector = vectors.mean(axis=0)
    vector /= max(float(np.linalg.norm(vector)), 1e-12)
    return Query(str(path), stored_path, tiles, vector.astype(np.float32), indexed, tile)


def _unchanged(path: str, record: Any) -> bool:
    try:
        stat = os.stat(path)
    except OSError:
        return True  # gone from disk: the database still knows it
    return (stat.st_size, stat.st_mtime_ns) == (record.size, record.mtime_ns)


def search_vectors(catalog: Catalog, queries: Sequence[Query], top: int) -> list[SearchResult]:
    """Top-``top`` matches of each query, its own tiles left out; one batched FAISS search."""
    index = open_index(catalog.store)
    if index.count == 0:
        raise DatabaseError(f"{catalog.store.path} holds no tiles yet")
    extra = max(len(q.exclude) for q in queries)
    matrix = np.vstack([q.vector for q in queries])
    scores, ids = index.search(matrix, top + extra)
    results = []
    for query, row_scores, row_ids in zip(queries, scores, ids, strict=True):
        kept = [
            (float(s), int(i))
            for s, i in zip(row_scores, row_ids, strict=True)
            if i >= 0 and int(i) not in query.exclude
        ][:top]
        records = catalog.store.tiles([tid for _, tid in kept])
        matches = [
            Match(rank, score, record)
            for rank, ((score, _), record) in enumerate(zip(kept, records, strict=True), start=1)
        ]
        results.append(SearchResult(query, matches))
    return results


def open_database(db: Path, settings: Settings | None = None) -> Catalog:
    """An existing, initialised database ready for search."""
    store = Store(db)
    catalog = open_catalog(store, settings or Settings())
    if catalog is None:
        store.close()
        raise DatabaseError(f"{db} holds no tiles yet: run 'geosearch ingest FOLDER --db {db}'")
    return catalog


def similar(
    db: Path,
    queries: Sequence[Path],
    top: int = 5,
    *,
    tile: int | None = None,
    settings: Settings | None = None,
) -> list[SearchResult]:
    """The ``top`` tiles most similar to each query file, best first."""
    catalog = open_database(db, settings)
    try:
        resolved = [resolve_query(catalog, Path(q), tile) for q in queries]
        return search_vectors(catalog, resolved, top)
    finally:
        catalog.store.close()
