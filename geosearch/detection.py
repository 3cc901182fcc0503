"""Find every place like these: a classifier of a session's marks run over the whole database.

``detect`` trains ``geosearch.classifier`` on a feedback session's marks (plus tiles marked by
id or by area for this run, saved to the session), scores every tile the filters allow, streamed
from the index's copy of the vectors a block at a time, and keeps the tiles at or above the
threshold.
Adjacent detected tiles of one date are merged into one detection (a polygon with the
probability's max and mean, the tile count, the date and the tile ids). ``review`` picks the
tiles whose label would teach the classifier most: the most uncertain (probability nearest
0.5), spread over the area (or, without geometry, over the vectors).

What it writes (``write_detections``): ``detections.gpkg`` (layer ``detections``),
``detections.geojson`` (RFC 7946), ``probability.tif`` with its ``.qml`` (every tile's
probability on the tile grid, as ``similar --map`` writes similarity) and a contact sheet of the
best detections; plain-image databases get the GeoJSON (null geometries) and the sheet.
"""

from __future__ import annotations

import importlib
import json
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import shapely
from shapely.errors import GEOSException
from shapely.geometry import MultiPolygon
from shapely.geometry.base import BaseGeometry

from geosearch.catalog import Catalog
from geosearch.classifier import TileClassifier, probability, train_classifier
from geosearch.config import DetectSettings, SparkSettings
from geosearch.errors import ConfigError, GeosearchError, InputError, OutputError
from geosearch.index import VectorIndex, index_for_search
from geosearch.maps import PROBABILITY, SimilarityMap, tile_values, write_tile_map
from geosearch.render import (
    collection_text,
    contact_sheet,
    feature_texts,
    render_previews,
    write_bytes,
    write_layer,
)
from geosearch.request import SearchFilters, SearchRequest
from geosearch.search import allowed_ids, check_marked, resolve_request
from geosearch.store import Store, TileRecord

GPKG_NAME = "detections.gpkg"
GEOJSON_NAME = "detections.geojson"
MAP_NAME = "probability.tif"
SHEET_NAME = "contact_sheet.png"
LAYER = "detections"
SHEET_TILES = 20  # the best tiles shown on the contact sheet, SHEET_COLUMNS a row
SHEET_COLUMNS = 5
REVIEW_POOL = 10  # review N: spread over the N * REVIEW_POOL most uncertain unmarked tiles

# Self-training helps a classifier of few marks; with many, 4 weak positives a mark can
# outnumber what is left of the kind (EuroSAT, 2,000 pictures, 100 + 100 random marks: AP 0.83,
# 0.89 with this cap, 0.92 without self-training; the analyst's loop of bench/detect.py, up to
# ~50 marks, is the same with it): weak positives for at most this many good marks.
SELF_TRAINING_MARKS = 40


@dataclass
class Detection:
    """Adjacent detected tiles of one date (one tile where there is no geometry)."""

    tile_ids: list[int]
    prob_max: float
    prob_mean: float
    dates: list[str]
    geometry: BaseGeometry | None  # lon/lat (MultiPolygon); None for plain images
    paths: list[str]
    _properties: dict[str, Any] | None = field(default=None, repr=False, compare=False)

    def properties(self) -> dict[str, Any]:
        """What the GeoPackage and GeoJSON say of it (made once: both write it)."""
        if self._properties is None:
            self._properties = {
                "prob_max": round(self.prob_max, 4),
                "prob_mean": round(self.prob_mean, 4),
                "tiles": len(self.tile_ids),
                "dates": ",".join(self.dates),
                "tile_ids": ",".join(map(str, self.tile_ids)),
                "paths": ",".join(self.paths),
            }
        return self._properties


@dataclass
class ReviewTile:
    """A tile to mark next: its record, probability and preview (relative to the output)."""

    tile: TileRecord
    probability: float
    preview: str | None = None

    def to_dict(self) -> dict[str, Any]:
        window = self.tile.window
        return {
            "id": self.tile.id, "probability": round(self.probability, 4),
            "path": self.tile.path, "row": window.row, "col": window.col,
            "acquired": self.tile.acquired, "preview": self.preview,
        }  # fmt: skip


@dataclass
class DetectResult:
    """What a detect run found, and where it wrote it."""

    session: str
    threshold: float
    classifier: TileClassifier
    scored: int
    detected: int  # tiles at or above the threshold
    detections: list[Detection]
    review: list[ReviewTile] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)
    probability_map: SimilarityMap | None = None
    seconds: dict[str, float] = field(default_factory=dict)  # per stage
    # every scored tile's id and probability, for the map (1M tiles: 12 MB)
    ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64), repr=False)
    probabilities: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32), repr=False)
    _features: list[str] | None = field(default=None, repr=False)

    def summary(self) -> str:
        """The one line the CLI prints."""
        c = self.classifier
        made = ", ".join(path.name for path in self.files)
        return (
            f"session {self.session}: classifier of {c.positives} good, {c.negatives} bad and "
            f"{c.background} background tiles; {self.scored} tiles scored, {self.detected} at "
            f"probability >= {self.threshold:g} in {len(self.detections)} detections"
            + (f"; wrote {made}" if made else "")
        )

    def feature_texts(self) -> list[str]:
        """The detections as RFC 7946 Features (JSON text), numbered from 1 (made once)."""
        if self._features is None:
            self._features = feature_texts(
                [d.geometry for d in self.detections],
                [d.properties() for d in self.detections],
                range(1, len(self.detections) + 1),
            )
        return self._features

    def to_dict(self) -> dict[str, Any]:
        return {
            "session": self.session,
            "threshold": self.threshold,
            "marks": {
                "good": self.classifier.positives,
                "bad": self.classifier.negatives,
                "background": self.classifier.background,
            },  # fmt: skip
            "scored": self.scored,
            "detected_tiles": self.detected,
            "detections": [json.loads(text) for text in self.feature_texts()],
            "review": [tile.to_dict() for tile in self.review],
            "files": [str(path) for path in self.files],
            "seconds": {stage: round(value, 3) for stage, value in self.seconds.items()},
        }


# -- training --------------------------------------------------------------------------------


def area_tiles(store: Store, area: BaseGeometry) -> list[int]:
    """Tiles whose footprint meets a lon/lat area (points or polygons)."""
    return sorted(allowed_ids(store, SearchFilters(within=area)) or ())


@dataclass
class TrainingSet:
    """What a session's classifier learns from: the query and the tiles marked good, the tiles
    marked bad, a background sample; and the marked tile ids."""

    positives: np.ndarray
    negatives: np.ndarray
    background: np.ndarray
    marked: set[int]

    def train(
        self, settings: DetectSettings, weak_positives: np.ndarray | None = None
    ) -> TileClassifier:
        return train_classifier(
            self.positives, self.negatives, self.background,
            background_weight=settings.background_weight, c=settings.c,
            weak_positives=weak_positives, weak_weight=settings.self_training_weight,
        )  # fmt: skip


def session_training(
    catalog: Catalog,
    session: str,
    marks: dict[int, int],
    settings: DetectSettings,
) -> TrainingSet:
    """The training set of a session's marks (``marks``: new ones, saved to the session first
    where the database can be written), its query counted as good."""
    store = catalog.store
    saved = store.sessions.get(session)
    if saved is None:
        known = ", ".join(store.sessions.names()[-5:]) or "none yet"
        raise InputError(f"no feedback session '{session}' in {store.path} (latest: {known})")
    check_marked(catalog, list(marks))
    if marks and not store.readonly:
        from geosearch.sessions import current_user

        store.sessions.mark(session, marks, current_user())
        saved = store.sessions.get(session)
    labels = {m["tile_id"]: m["label"] for m in saved["marks"]} | marks
    good = sorted(t for t, label in labels.items() if label > 0)
    bad = sorted(t for t, label in labels.items() if label < 0)
    if not good:
        raise ConfigError(
            f"session {session} has no tile marked good: mark some with --good IDS, "
            "--good-within AREA or 'geosearch feedback SESSION --good RANKS'"
        )
    index = index_for_search(store)
    positives = _rows(index, good)
    query = _query_row(catalog, index, saved["query"])
    if query is not None:
        positives = np.vstack([query, positives])
    sample = store.sample_ids(settings.background) if settings.background else []
    background = _rows(index, sample, positives.shape[1])
    if len(background) <= len(labels):  # nothing but the marks
        background = np.zeros((0, positives.shape[1]), np.float32)
    negatives = _rows(index, bad, positives.shape[1])
    if not len(negatives) and not len(background):  # train_classifier's error, before scoring
        train_classifier(positives, negatives, background)
    return TrainingSet(positives, negatives, background, set(labels))


def _rows(index: VectorIndex, ids: Sequence[int], dim: int = 0) -> np.ndarray:
    """The index's rows of ``ids`` (what it scores: see ``score_tiles``); (0, dim) if none."""
    return index.vectors(ids) if len(ids) else np.zeros((0, dim), np.float32)


def _query_row(catalog: Catalog, index: VectorIndex, saved: dict[str, Any]) -> np.ndarray | None:
    """(1, dim): the session's query (no orientations) as the index holds or would hold it: an
    indexed tile's own row, else its vector augmented as an added tile's is; None if it can no
    longer be resolved (its file gone): the marks still teach the classifier."""
    request = SearchRequest.from_saved(saved).model_copy(update={"any_orientation": False})
    try:
        [query] = resolve_request(catalog, request)
    except GeosearchError:
        return None
    if query.indexed and len(query.tiles) == 1:
        return index.vectors([query.tiles[0].id])
    not_indexed = np.zeros(1, np.int64)  # no tile's id: none of its neighbours is its own row
    return index.augmented(query.vector[None, :], index.augment, not_indexed)


# -- scoring ---------------------------------------------------------------------------------


def score_tiles(
    store: Store,
    classifier: TileClassifier,
    allowed: set[int] | None,
    spark: tuple[SparkSettings, str | None] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(ids, log-odds) of every tile ``allowed`` (None: all), in id order. The classifier being
    linear, its log-odds are the index's exact inner products with its weights (streamed from
    the index's rows a block at a time, as similarity maps do: the rows it searches, augmented,
    and SQLite reads the vector BLOBs about twice as slowly) plus its bias; only ids and one
    float a tile are kept. ``spark`` (settings, master): the same rows are streamed into shards
    scored on Spark executors instead (``engines.spark``)."""
    if spark is not None:
        from geosearch.engines.spark import spark_linear_scores, spark_session

        session = spark_session(*spark)
        ids, logits = spark_linear_scores(
            session, index_for_search(store).row_batches(), classifier.weights, classifier.bias,
            spark[0].partitions,
        )  # fmt: skip
    else:
        ids, dots = index_for_search(store).score_all(classifier.weights)
        logits = dots + np.float32(classifier.bias)
    order = np.argsort(ids, kind="stable")
    ids, logits = ids[order], logits[order]
    if allowed is not None:
        keep = np.isin(ids, np.fromiter(allowed, np.int64, len(allowed)))
        ids, logits = ids[keep], logits[keep]
    return ids, logits


def check_threshold(threshold: float) -> float:
    if not 0.0 <= threshold <= 1.0:
        raise ConfigError(f"--threshold {threshold:g}: a probability, 0..1")
    return threshold


# -- detections ------------------------------------------------------------------------------


def merge_detections(tiles: Sequence[TileRecord], probabilities: np.ndarray) -> list[Detection]:
    """Detected tiles as detections, best first: tiles of one date whose footprints share an
    edge (or overlap) are merged into one polygon; tiles without a footprint stay one a
    detection."""
    groups: dict[str | None, list[int]] = {}
    alone: list[list[int]] = []
    for row, tile in enumerate(tiles):
        if tile.footprint is None:
            alone.append([row])
        else:
            groups.setdefault(tile.acquired, []).append(row)
    parts = list(alone)
    for rows in groups.values():
        shapes = np.array([tiles[row].footprint for row in rows], dtype=object)
        left, right = shapely.STRtree(shapes).query(shapes, predicate="intersects")
        pair = left < right  # each pair once; a tile with itself says nothing
        left, right = left[pair], right[pair]
        # adjacent: sharing an edge (boundaries meet along a line) or overlapping, not a corner
        sharing = shapely.relate_pattern(shapes[left], shapes[right], "****1****")
        sharing |= shapely.relate_pattern(shapes[left], shapes[right], "T********")
        component = connected_groups(len(rows), left[sharing], right[sharing])
        count = int(component.max()) + 1 if len(component) else 0
        order = np.argsort(component, kind="stable")
        bounds = np.searchsorted(component[order], np.arange(count + 1))
        parts += [
            [rows[i] for i in order[a:b]] for a, b in zip(bounds[:-1], bounds[1:], strict=True)
        ]
    probability_of = probabilities.tolist()
    detections = []
    for rows in parts:
        members = [tiles[row] for row in rows]
        if len(rows) == 1:  # most detections: no numpy call for them (~30 us each)
            high = mean = probability_of[rows[0]]
        else:
            values = probabilities[rows]
            high, mean = float(values.max()), float(values.mean())
        geometry = None
        if len(members) == 1 and isinstance(members[0].footprint, MultiPolygon):
            geometry = members[0].footprint
        elif members[0].footprint is not None:
            union = _union([tile.footprint for tile in members])
            geometry = union if isinstance(union, MultiPolygon) else MultiPolygon([union])
        detections.append(
            Detection(
                sorted(tile.id for tile in members), high, mean,
                sorted({tile.acquired for tile in members if tile.acquired}), geometry,
                sorted({tile.path for tile in members}),
            )
        )  # fmt: skip
    detections.sort(key=lambda d: (-d.prob_max, d.tile_ids[0]))
    return detections


def _union(footprints: list[BaseGeometry]) -> BaseGeometry:
    """The union of adjacent footprints; made valid first where GEOS cannot join them as they
    are (a lon/lat ring across the antimeridian or a pole crosses itself)."""
    try:
        return shapely.union_all(footprints)
    except GEOSException:
        return shapely.union_all(shapely.make_valid(np.array(footprints, dtype=object)))


def connected_groups(count: int, left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """The group (0, 1, ... in order of each group's lowest node) of each of ``count`` nodes
    joined by the edges ``left[i]``-``right[i]``: union-find over arrays, each round hooking
    every edge's higher root under its lower one, then shortening every path to its root."""
    parent = np.arange(count)
    while True:
        low, high = np.minimum(parent[left], parent[right]), np.maximum(parent[left], parent[right])
        joined = low != high
        if not joined.any():
            break
        np.minimum.at(parent, high[joined], low[joined])
        while not np.array_equal(grand := parent[parent], parent):
            parent = grand
    return np.unique(parent, return_inverse=True)[1].reshape(-1)


def review_tiles(
    store: Store,
    ids: np.ndarray,
    logits: np.ndarray,
    marked: set[int],
    count: int,
) -> list[ReviewTile]:
    """``count`` unmarked tiles to mark next: among the ``count * REVIEW_POOL`` with the
    probability nearest 0.5, the most uncertain first, then each the farthest from those
    chosen (by footprint centre, or by vector without geometry)."""
    if count <= 0 or not len(ids):
        return []
    unmarked = ~np.isin(ids, np.fromiter(marked, np.int64, len(marked)))
    pool_ids, pool_logits = ids[unmarked], np.abs(logits[unmarked])
    size = min(len(pool_ids), count * REVIEW_POOL)
    if not size:
        return []
    nearest = np.argpartition(pool_logits, size - 1)[:size]
    nearest = nearest[np.argsort(pool_logits[nearest], kind="stable")]
    pool = store.tiles(pool_ids[nearest].tolist())
    if all(tile.footprint is not None for tile in pool):
        points = np.array([[*tile.footprint.centroid.coords[0]] for tile in pool])
    else:
        points = _rows(index_for_search(store), [tile.id for tile in pool])
    chosen = [0]
    distance = np.linalg.norm(points - points[0], axis=1)
    while len(chosen) < min(count, len(pool)):
        best = int(np.argmax(distance))
        chosen.append(best)
        distance = np.minimum(distance, np.linalg.norm(points - points[best], axis=1))
    by_id = dict(
        zip(
            ids[unmarked][nearest].tolist(),
            probability(logits[unmarked][nearest]).tolist(),
            strict=True,
        )
    )
    return [ReviewTile(pool[i], by_id[pool[i].id]) for i in chosen]


def detect(
    catalog: Catalog,
    session: str,
    marks: dict[int, int],
    filters: SearchFilters,
    threshold: float,
    review: int,
    settings: DetectSettings,
    spark: tuple[SparkSettings, str | None] | None = None,
) -> DetectResult:
    """Train on the session's marks, score every allowed tile and merge the detected ones (the
    result keeps every scored tile's id and probability, for the map). ``spark`` (settings,
    master): scored on Spark (``detect --engine spark``)."""
    check_threshold(threshold)
    lap = Laps()
    _import_in_background("pyogrio.raw")  # what write_detections writes the GeoPackage with
    store = catalog.store
    training = session_training(catalog, session, marks, settings)
    marked = training.marked
    classifier = training.train(settings)
    allowed = allowed_ids(store, filters)
    lap("training")
    ids, logits = score_tiles(store, classifier, allowed, spark)
    lap("scoring")
    if settings.self_training:  # again, the unmarked tiles it was surest of as weak positives
        count = settings.self_training * min(len(training.positives), SELF_TRAINING_MARKS)
        unmarked = ~np.isin(ids, np.fromiter(marked, np.int64, len(marked)))
        surest = largest(np.where(unmarked, logits, -np.inf), count)
        surest = surest[unmarked[surest]]
        surest_rows = _rows(index_for_search(store), sorted(ids[surest].tolist()))
        classifier = training.train(settings, surest_rows)
        lap("training")
        ids, logits = score_tiles(store, classifier, allowed, spark)
        lap("scoring")
    probabilities = probability(logits)
    hit = probabilities >= threshold
    hit_ids = ids[hit].tolist()
    tiles = store.tiles(hit_ids)
    found = dict(zip(hit_ids, probabilities[hit].tolist(), strict=True))
    detections = merge_detections(tiles, np.array([found[t.id] for t in tiles], np.float32))
    result = DetectResult(session, threshold, classifier, len(ids), len(hit_ids), detections)
    result.ids, result.probabilities = ids, probabilities
    lap("merging")
    result.review = review_tiles(store, ids, logits, marked, review)
    lap("review")
    result.seconds = lap.seconds
    return result


def largest(values: np.ndarray, count: int) -> np.ndarray:
    """Indices of the ``count`` largest ``values``, largest first, ties in index order: what
    ``np.argsort(-values, kind="stable")[:count]`` gives, without sorting them all (10M: 1.5 s)."""
    count = min(count, len(values))
    if count <= 0:
        return np.zeros(0, np.int64)
    kth = np.partition(values, len(values) - count)[len(values) - count]
    above = np.flatnonzero(values > kth)
    chosen = np.concatenate([above, np.flatnonzero(values == kth)[: count - len(above)]])
    return chosen[np.argsort(-values[chosen], kind="stable")]


class Laps:
    """Seconds per stage of a run: each lap adds the time since the one before to its stage."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._last = time.perf_counter()

    def __call__(self, stage: str) -> None:
        now = time.perf_counter()
        self.seconds[stage] = self.seconds.get(stage, 0.0) + now - self._last
        self._last = now


def _import_in_background(module: str) -> None:
    """Import ``module`` on a thread of its own. pyogrio's package imports pandas and geopandas
    where they are installed (1-2 s on a busy machine): started with the run, its import
    overlaps the scoring (FAISS and numpy release the GIL) instead of following it."""
    threading.Thread(target=importlib.import_module, args=(module,), daemon=True).start()


# -- writing ---------------------------------------------------------------------------------


def write_detections(
    result: DetectResult,
    catalog: Catalog,
    out_dir: Path,
    preview_size: int,
) -> DetectResult:
    """Write the GeoPackage, GeoJSON, probability map, contact sheet and review previews."""
    lap = Laps()
    ids, probabilities = result.ids, result.probabilities
    out_dir = Path(out_dir)
    previews = out_dir / "previews"
    try:
        previews.mkdir(parents=True, exist_ok=True)
        for earlier in [
            *previews.glob("review_*.png"),
            *(out_dir / n for n in (GPKG_NAME, MAP_NAME)),
        ]:
            earlier.unlink(missing_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot write to {out_dir}: {exc.strerror or exc}") from None
    geo = any(d.geometry is not None for d in result.detections) or georeferenced(catalog)
    files = []
    if geo:
        files.append(_write_gpkg(result.detections, out_dir / GPKG_NAME))
        lap("gpkg")
    write_bytes(out_dir / GEOJSON_NAME, collection_text(result.feature_texts()).encode())
    files.append(out_dir / GEOJSON_NAME)
    lap("geojson")
    if geo and len(ids):
        grid, cells, placed = tile_values(catalog.store, ids, probabilities, catalog.tile_size)
        result.probability_map = write_tile_map(
            out_dir / MAP_NAME, grid, cells, placed, PROBABILITY
        )
        files.append(result.probability_map.path)
        lap("probability_tif")
    best = _best_tiles(catalog.store, ids, probabilities)
    wanted = [(tile.path, tile.window) for tile, _ in best] + [
        (r.tile.path, r.tile.window) for r in result.review
    ]
    rendered = render_previews(catalog, wanted, preview_size)
    if best:
        cells = [
            (rendered[(tile.path, tile.window)], [f"#{n} p {p:.2f}", tile.acquired or "undated",
                                                  Path(tile.path).name])
            for n, (tile, p) in enumerate(best, start=1)
        ]  # fmt: skip
        rows = [cells[i : i + SHEET_COLUMNS] for i in range(0, len(cells), SHEET_COLUMNS)]
        write_bytes(out_dir / SHEET_NAME, contact_sheet(rows, min(preview_size, 256)))
        files.append(out_dir / SHEET_NAME)
    for tile in result.review:
        png = rendered[(tile.tile.path, tile.tile.window)]
        if png is not None:
            path = previews / f"review_tile{tile.tile.id}.png"
            write_bytes(path, png)
            tile.preview = path.relative_to(out_dir).as_posix()
    lap("contact_sheet")
    result.files = files
    result.seconds |= lap.seconds
    return result


def georeferenced(catalog: Catalog) -> bool:
    """Whether the database's tiles have footprints (a GeoPackage and a map are written)."""
    return any(tile.footprint is not None for tile in catalog.store.first_tile_of_each_file()[:1])


def _best_tiles(
    store: Store, ids: np.ndarray, probabilities: np.ndarray
) -> list[tuple[TileRecord, float]]:
    """The SHEET_TILES most probable tiles, best first."""
    size = min(SHEET_TILES, len(ids))
    if not size:
        return []
    top = np.argpartition(-probabilities, size - 1)[:size]
    top = top[np.argsort(-probabilities[top], kind="stable")]
    records = {t.id: t for t in store.tiles(ids[top].tolist())}
    return [(records[int(i)], float(p)) for i, p in zip(ids[top], probabilities[top], strict=True)]


def _write_gpkg(detections: Sequence[Detection], path: Path) -> Path:
    """``detections`` as the layer ``detections`` of a GeoPackage."""
    rows = [d for d in detections if d.geometry is not None]
    columns: dict[str, Any] = {
        "prob_max": np.array([d.prob_max for d in rows], np.float64),
        "prob_mean": np.array([d.prob_mean for d in rows], np.float64),
        "tiles": np.array([len(d.tile_ids) for d in rows], np.int32),
    }
    properties = [d.properties() for d in rows]
    for name in ("dates", "tile_ids", "paths"):
        columns[name] = np.array([p[name] for p in properties], dtype=object)
    return write_layer(path, LAYER, [d.geometry for d in rows], columns)
