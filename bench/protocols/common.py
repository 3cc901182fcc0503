"""What every protocol family of bench/quality.py shares: the data's paths, ground truth
(``GroundTruth`` for NAIP's same place in another year and for shifted copies), ranking
metrics over stored vectors, timing through the real search path, ingest through the public
API, GeoTIFF writing, the feature sets (block weights) measured, and the one way to report
(``emit``: one JSON line)."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from geosearch import ingest
from geosearch.catalog import open_database
from geosearch.config import Settings
from geosearch.index import open_index
from geosearch.search import resolve_query, search_vectors
from geosearch.store import Store, normalise_path

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT.parent / "shared" / "data"
NAIP = DATA / "naip"
K = 4
TIMED_QUERIES = 30


@dataclass
class GroundTruth:
    """Every stored tile (ids, unit vectors, records) and, per query tile, what may be returned
    (candidates), what counts as a hit (relevant) and what counts as the right first result."""

    ids: np.ndarray
    vectors: np.ndarray
    tiles: list
    queries: list[int]  # row numbers in ids
    candidates: list[np.ndarray]  # per query: bool mask over rows
    relevant: list[set[int]]  # per query: rows
    best: list[set[int]]  # per query: rows that make a correct top-1

    def excluded_ids(self, query: int) -> frozenset[int]:
        """Tile ids a search for query ``query`` must leave out to see only its candidates."""
        return frozenset(self.ids[~self.candidates[query]].tolist())


# -- ground truth ---------------------------------------------------------------------------

# -- ground truth ---------------------------------------------------------------------------


def stored_tiles(store: Store) -> tuple[np.ndarray, np.ndarray, list, int]:
    ids, vectors = store.vectors()
    tiles = store.tiles(ids.tolist())
    return ids, vectors, tiles, int(store.meta("settings")["tile_size"])


def naip_truth(store: Store) -> GroundTruth:
    """Same grid position in another year = relevant; candidates = every other-year tile."""
    ids, vectors, tiles, tile_size = stored_tiles(store)
    years = np.array([t.acquired[:4] if t.acquired else t.path for t in tiles])
    places = np.array([f"{t.window.row},{t.window.col}" for t in tiles])
    full = np.array([t.window.width == t.window.height == tile_size for t in tiles])
    truth = GroundTruth(ids, vectors, tiles, [], [], [], [])
    for row in np.flatnonzero(full):
        candidates = years != years[row]
        relevant = set(np.flatnonzero(candidates & full & (places == places[row])).tolist())
        if relevant:
            truth.queries.append(int(row))
            truth.candidates.append(candidates)
            truth.relevant.append(relevant)
            truth.best.append(relevant)
    return truth


def _overlap(start: int, other: int, size: int) -> int:
    """Pixels shared by [start, start + size) and [other, other + size)."""
    return max(0, size - abs(start - other))


def shifted_truth(store: Store, copies: dict[Path, list[Path]], offset: int) -> GroundTruth:
    """Queries: full tiles of each copy (a file shifted by ``offset`` px right and down), whose
    candidates are the tiles of the unshifted files ``copies[copy]``. Relevant: the full
    candidate tiles the query overlaps; top-1 targets: in each candidate file, the tile it
    overlaps most. A query is kept only if it overlaps four full tiles in every candidate file.
    """
    ids, vectors, tiles, tile_size = stored_tiles(store)
    paths = np.array([t.path for t in tiles])
    full = np.array([t.window.width == t.window.height == tile_size for t in tiles])
    grid = {(t.path, t.window.row, t.window.col): row for row, t in enumerate(tiles) if full[row]}
    truth = GroundTruth(ids, vectors, tiles, [], [], [], [])
    for copy, sources in copies.items():
        sources = [normalise_path(source) for source in sources]
        candidates = np.isin(paths, sources)
        for row in np.flatnonzero(full & (paths == normalise_path(copy))):
            top, left = tiles[row].window.row + offset, tiles[row].window.col + offset
            relevant, best = set(), set()
            for source in sources:
                overlaps = {}
                for grid_top in (top - top % tile_size, top - top % tile_size + tile_size):
                    for grid_left in (left - left % tile_size, left - left % tile_size + tile_size):
                        match = grid.get((source, grid_top, grid_left))
                        area = _overlap(top, grid_top, tile_size) * _overlap(
                            left, grid_left, tile_size
                        )
                        if match is not None and area > 0:
                            overlaps[match] = area
                if len(overlaps) < 4:
                    break
                relevant |= set(overlaps)
                best.add(max(overlaps, key=overlaps.get))
            else:
                truth.queries.append(int(row))
                truth.candidates.append(candidates)
                truth.relevant.append(relevant)
                truth.best.append(best)
    return truth


def write_window(source: Path, path: Path, row: int, col: int, width: int = 0) -> None:
    """The part of ``source`` from (row, col) to its bottom (and right edge, or ``width``
    columns) as a GeoTIFF of its own, georeferenced where it lies."""
    import rasterio
    from rasterio.windows import Window as RioWindow

    with rasterio.open(source) as src:
        window = RioWindow(col, row, width or src.width - col, src.height - row)
        pixels = src.read(window=window)
        write_raster(path, src.profile, pixels, src.window_transform(window), src.descriptions)


def write_raster(
    path: Path,
    profile: dict[str, Any],
    pixels: np.ndarray,
    transform: Any,
    names: Sequence[str | None] = (),
) -> None:
    """(bands, rows, cols) pixels as an untiled GeoTIFF with ``profile``'s dtype, CRS and
    nodata, at ``transform``, band descriptions ``names`` (as a crop by GDAL keeps them)."""
    import rasterio

    profile = profile | {
        "driver": "GTiff",
        "count": pixels.shape[0],
        "height": pixels.shape[1],
        "width": pixels.shape[2],
        "transform": transform,
        "photometric": "MINISBLACK",  # plain bands, no alpha, as the sources
        "tiled": False,
    }
    profile.pop("blockxsize", None)
    profile.pop("blockysize", None)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(pixels.astype(profile["dtype"]))
        for n, name in enumerate(names, start=1):
            if name:
                dst.set_band_description(n, name)


# -- measuring ------------------------------------------------------------------------------


def ranking_metrics(
    truth: GroundTruth,
    k: int = K,
    similarity: np.ndarray | None = None,
    floor: np.ndarray | None = None,
) -> tuple[dict[str, Any], list[list[int]]]:
    """Top-1, P@k, their values for a random ranking (chance) over the truth's queries, and
    each query's top-k tile ids. ``similarity``: (queries, tiles) scores to rank by instead of
    the stored query vectors' cosines; ``floor``: (queries, tiles) scores that each of the top
    k is re-ranked at least by, as ``search.own_vectors_floor`` does."""
    if similarity is None:
        similarity = truth.vectors[truth.queries] @ truth.vectors.T
    hits1, precision, chance, chance_p, top_ids = [], [], [], [], []
    for n, scores in enumerate(similarity):
        masked = np.where(truth.candidates[n], scores, -np.inf)
        order = np.argsort(-masked, kind="stable")[:k]
        if floor is not None:
            order = floored_head(order, masked, floor[n], k)
        hits1.append(int(order[0]) in truth.best[n])
        precision.append(len(set(order.tolist()) & truth.relevant[n]) / k)
        chance.append(len(truth.best[n]) / int(truth.candidates[n].sum()))
        chance_p.append(len(truth.relevant[n]) / int(truth.candidates[n].sum()))
        top_ids.append(truth.ids[order].tolist())
    metrics = {
        "top1": round(float(np.mean(hits1)), 4),
        f"p_at_{k}": round(float(np.mean(precision)), 4),
        "queries": len(truth.queries),
        "candidates_per_query": int(np.median([c.sum() for c in truth.candidates])),
        "chance_top1": round(float(np.mean(chance)), 4),
        f"chance_p_at_{k}": round(float(np.mean(chance_p)), 4),
    }
    return metrics, top_ids


def tile_positions(store: Store) -> dict[int, tuple[str, int]]:
    """Tile id -> (file, index among the file's indexed tiles): what ``--tile N`` names."""
    positions = {}
    for record in store.files():
        for n, tile in enumerate(store.tiles_of_file(record.path)):
            positions[tile.id] = (record.path, n)
    return positions


def timed_search(
    db: Path, truth: GroundTruth, expected: list[list[int]], k: int = K, sample: int = 30
) -> dict[str, Any]:
    """ms/query of resolve_query + search_vectors (stored vectors, index loaded by the search)
    for an even sample of queries, and the share whose top k equals the benchmark's."""
    catalog = open_database(db)
    try:
        positions = tile_positions(catalog.store)
        picks = np.linspace(0, len(truth.queries) - 1, min(sample, len(truth.queries))).astype(int)
        picks = sorted(set(picks.tolist()))

        def search(n: int) -> list[int]:
            path, position = positions[int(truth.ids[truth.queries[n]])]
            query = resolve_query(catalog, Path(path), tile=position)
            query.also_exclude = truth.excluded_ids(n)
            return [m.tile.id for m in search_vectors(catalog, [query], k)[0].matches]

        search(picks[0])  # warm-up: imports, page cache
        times, agree = [], []
        for n in picks:
            started = time.perf_counter()
            found = search(n)
            times.append((time.perf_counter() - started) * 1000)
            agree.append(found == expected[n])
    finally:
        catalog.store.close()
    return {
        "ms_per_query": round(float(np.mean(times)), 2),
        "ms_p50": round(float(np.median(times)), 2),
        "timed_queries": len(picks),
        "search_agrees": round(float(np.mean(agree)), 3),
    }


def floored_head(order: np.ndarray, scores: np.ndarray, floor: np.ndarray, k: int) -> np.ndarray:
    """``order`` with its first ``k`` re-ranked by max(score, floor), as
    ``search.own_vectors_floor`` re-ranks a search's results (``scores``, ``floor``: per item)."""
    head = order[:k]
    floored = np.maximum(scores[head], floor[head])
    return np.concatenate([head[np.argsort(-floored, kind="stable")], order[k:]])


def index_rows(db: Path, ids: np.ndarray) -> np.ndarray:
    """The rows the database's index ranks the tiles ``ids`` by (augmented, ``geosearch.index``)."""
    with Store(db) as store:
        return open_index(store).vectors(ids)


def searched_metrics(
    db: Path, truth: GroundTruth, k: int = K
) -> tuple[dict[str, Any], list[list[int]]]:
    """``ranking_metrics`` as ``search_vectors`` ranks (vectors only, no expansion): the stored
    query vectors against the index's rows, the top k at least their own cosines."""
    queries = truth.vectors[truth.queries]
    rows = index_rows(db, truth.ids)
    return ranking_metrics(truth, k, queries @ rows.T, queries @ truth.vectors.T)


def measure(db: Path, truth: GroundTruth) -> dict[str, Any]:
    """Ranking metrics as the search ranks the stored vectors, and timing through the real
    search path (which must agree)."""
    metrics, top_ids = searched_metrics(db, truth)
    return metrics | timed_search(db, truth, top_ids, sample=TIMED_QUERIES)


# -- datasets -------------------------------------------------------------------------------


def ingest_into(db: Path, sources: list[Path], overrides: dict[str, Any]) -> dict[str, Any]:
    """Ingest through the public API; returns tiles and seconds."""
    settings = Settings().with_overrides(overrides)
    started = time.perf_counter()
    report = ingest(sources, db, settings)
    if report.skipped:
        raise RuntimeError(f"ingest skipped files: {report.skipped}")
    return {"tiles": report.tiles_added, "ingest_s": round(time.perf_counter() - started, 2)}


# -- feature sets and reporting -------------------------------------------------------------


def _blocks() -> dict[str, float]:
    """Every feature block the settings know (those with a weight) and its default weight."""
    defaults = Settings().features
    return {
        name: getattr(defaults, name).weight
        for name in type(defaults).model_fields
        if hasattr(getattr(defaults, name), "weight")
    }


DEFAULT_WEIGHTS = _blocks()


def weights_of(**given: float) -> dict[str, float]:
    """Every block's weight: the given ones (blocks this version lacks dropped), others 0."""
    return {name: float(given.get(name, 0.0)) for name in DEFAULT_WEIGHTS}


def label_of(weights: dict[str, float]) -> str:
    """e.g. "band_stats=0.25 layout=1.5 cnn=1", with " (default)" for the default fusion."""
    text = " ".join(f"{name}={w:g}" for name, w in weights.items() if w > 0)
    return text + (" (default)" if weights == DEFAULT_WEIGHTS else "")


def weight_overrides(weights: dict[str, float]) -> dict[str, float]:
    return {f"features.{name}.weight": w for name, w in weights.items()}


# Weights tried around the default, per block (full runs); the CNN stays at 1.
VARIED = {"band_stats": (0.0, 0.1, 0.5, 1.0), "layout": (0.0, 0.5, 0.75, 1.0, 3.0)}


def feature_sets(quick: bool) -> list[dict[str, float]]:
    """Block weights to measure: each block alone, the default fusion and (full runs) each
    weight varied around the default, plus CNN + band statistics alone (the fusion before
    the layout block)."""
    sets = [weights_of(**{name: 1.0}) for name in DEFAULT_WEIGHTS] + [DEFAULT_WEIGHTS]
    if not quick:
        sets += [weights_of(cnn=1.0, band_stats=w) for w in (0.1, 0.25, 0.5, 1.0, 2.0)]
        for name, values in VARIED.items():
            if name in DEFAULT_WEIGHTS:
                sets += [DEFAULT_WEIGHTS | {name: value} for value in values]
    unique = []
    for weights in sets:
        if weights not in unique and any(weights.values()):
            unique.append(weights)
    return unique


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return vectors / np.where(norms > 0, norms, 1.0)


def naip_year(naip: Path) -> str:
    """The acquisition year in a NAIP file name (m_..._20150926.tif)."""
    return naip.stem.rsplit("_", 1)[1][:4]


def slug(label: str) -> str:
    return re.sub(r"[^a-z0-9.]+", "_", label.lower())


def emit(line: dict[str, Any]) -> None:
    print(json.dumps({"bench": "quality"} | line), flush=True)
