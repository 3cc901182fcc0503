"""Similarity search: resolve queries to vectors, search the index, filter, return ranked tiles.

A query is a file or a place. A file the database holds (unchanged since ingest) is searched
with its stored vectors and no model is loaded; another file is read and embedded exactly as
ingest would. A multi-tile file is queried by the mean of its tiles unless one tile is picked.
A place (lon, lat) is the indexed tile that contains it. The query's own tiles never appear
among its results. Filters (box, area, dates, distance, other files) and relevance feedback
(tiles marked good or bad) shape what comes back.

With ``search.locate`` a second stage (``geosearch.locate``) registers the query's pixels in the
shortlisted scenes: where its place is found, the tiles covering it lead the results.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import shapely
from pyproj import Transformer
from shapely.geometry import Point, mapping
from shapely.geometry.base import BaseGeometry
from shapely.ops import unary_union

from geosearch.bands import QueryBands
from geosearch.catalog import Catalog
from geosearch.config import FeedbackSettings, SearchSettings, Settings
from geosearch.copies import COPY_POOL, COPY_SHORTLIST, near_copies
from geosearch.errors import ConfigError, DatabaseError, InputError, NotFoundError
from geosearch.feedback import rerank_scores, rocchio
from geosearch.index import VectorIndex, index_for_search
from geosearch.locate import Locator, PlacedTile, Placement, placed_tiles, query_image
from geosearch.orientation import ALL_ORIENTATIONS, IDENTITY
from geosearch.pixels import Window
from geosearch.request import SearchFilters, SearchRequest
from geosearch.sources import canonical_path, file_name_problem
from geosearch.store import Store, TileRecord

# With a filter leaving at most this many tiles, they are scored exactly, directly.
EXACT_SUBSET_LIMIT = 50_000
# A query of several tiles looks at this many nearest tiles of each of its tiles.
SCENE_NEIGHBOURS = 100


@dataclass
class Query:
    """A resolved query: its tiles (with ids when indexed) and the vector searched with."""

    label: str
    path: str
    tiles: list[TileRecord]
    vector: np.ndarray
    indexed: bool
    tile_index: int | None = None  # which of the file's tiles, if one was picked
    lonlat: tuple[float, float] | None = None

    also_exclude: frozenset[int] = frozenset()  # e.g. tiles already marked in a session
    turned: np.ndarray | None = None  # (8, dim): the query under the 8 orientations
    tile_vectors: np.ndarray | None = None  # (tiles, dim) of a query of several tiles
    cnn_alone: np.ndarray | None = None  # (orientations, dim): the CNN block's view of it
    bands: QueryBands | None = None  # how the file's bands map onto the database's
    window: Window | None = None  # the part of the file that is the query (None: all of it)
    compared_on: dict[str, Any] | None = None  # blocks and bands of a partial query

    @property
    def exclude(self) -> set[int]:
        return {t.id for t in self.tiles if t.id is not None} | self.also_exclude

    @property
    def footprint(self) -> BaseGeometry | None:
        shapes = [t.footprint for t in self.tiles if t.footprint is not None]
        return unary_union(shapes) if shapes else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "input": self.label,
            "indexed": self.indexed,
            "tile": self.tile_index,
            "lonlat": list(self.lonlat) if self.lonlat else None,
            "tiles": len(self.tiles),
            "any_orientation": self.turned is not None,
            "ids": sorted(self.exclude),
            "acquired": self.tiles[0].acquired if self.tiles else None,
            "compared_on": self.compared_on,
        }


def similarity_of(cosine: float | np.ndarray) -> float | np.ndarray:
    """Cosines as people read them, 0..1: 1 the same, about 0.5 unrelated (also the maps')."""
    return np.clip((1.0 + np.asarray(cosine)) / 2.0, 0.0, 1.0)


@dataclass
class Match:
    """One result: its rank (1 = most similar), score and tile.

    ``score`` orders the results: the score of the query as searched (expanded toward its
    neighbours, moved by feedback) against the tile's index row (augmented), at least the
    tile's own cosine; for a tile where the second stage found the query's place
    (``located``), 1 + correlation x the share of the query it covers; for a near copy of a
    plain picture (``near_copy``: that correlation), 1 + the thumbnails' correlation.
    ``cosine`` is the tile's own vector's to the query as given; ``similarity`` is what people
    read: that cosine mapped to 0..1.
    """

    rank: int
    score: float
    tile: TileRecord
    preview: str | None = None
    cosine: float | None = None
    located: PlacedTile | None = None
    near_copy: float | None = None  # a plain picture's thumbnails' correlation with the query

    @property
    def similarity(self) -> float:
        """The vectors' cosine as 0..1 for people: 1 the same, about 0.5 unrelated."""
        return float(similarity_of(self.cosine if self.cosine is not None else self.score))

    def to_dict(self) -> dict[str, Any]:
        tile = self.tile
        located = self.located
        return {
            "path": tile.path,
            "id": tile.id,
            "rank": self.rank,
            "score": round(self.score, 6),
            "similarity": round(self.similarity, 4),
            "cosine": round(self.cosine if self.cosine is not None else self.score, 6),
            "located": {
                "correlation": round(located.placement.correlation, 4),
                "coverage": round(located.coverage, 4),
            }
            if located is not None
            else None,
            "near_copy": {"correlation": round(self.near_copy, 4)}
            if self.near_copy is not None
            else None,
            "row": tile.window.row,
            "col": tile.window.col,
            "width": tile.window.width,
            "height": tile.window.height,
            "acquired": tile.acquired,
            "acquired_source": tile.acquired_source,
            "crs": tile.crs,
            "geometry": mapping(tile.footprint) if tile.footprint is not None else None,
            "preview": self.preview,
        }


@dataclass
class SearchResult:
    """A query and its ranked matches (and the feedback session that holds them)."""

    query: Query
    matches: list[Match] = field(default_factory=list)
    query_preview: str | None = None
    session: str | None = None
    feedback: dict[str, list[int]] | None = None  # {"good": ids, "bad": ids} applied
    location: Placement | None = None  # where the query lies, best found (second stage)
    notes: list[str] = field(default_factory=list)  # one line each, for stderr

    def to_dict(self) -> dict[str, Any]:
        query = self.query.to_dict() | {"preview": self.query_preview}
        return {
            "query": query,
            "session": self.session,
            "feedback": self.feedback,
            "location": self.location.to_dict() if self.location is not None else None,
            "notes": self.notes,
            "results": [m.to_dict() for m in self.matches],
        }


@dataclass(frozen=True)
class Feedback:
    """Tile ids marked relevant (good) and not relevant (bad)."""

    good: tuple[int, ...] = ()
    bad: tuple[int, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.good or self.bad)


# -- resolving queries ---------------------------------------------------------------------


def resolve_query(
    catalog: Catalog, path: Path, tile: int | None = None, any_orientation: bool = False
) -> Query:
    """The vector for a query file: stored if the database holds it unchanged, else computed.

    ``any_orientation`` also embeds it under the 8 orientations (pixels read again, even for an
    indexed file: the one case where a query by indexed tiles runs the CNN).
    """
    problem = file_name_problem(Path(path))
    if problem:
        raise InputError(f"{path}: {problem}")
    stored_path = canonical_path(path)  # a scene's folder, MTL or STAC item: the scene
    pixels = None
    if catalog.unchanged_file(stored_path) is not None:
        tiles = catalog.store.tiles_of_file(stored_path)
        if not tiles:
            raise InputError(f"{path}: indexed, but none of its tiles had enough valid pixels")
        vectors = catalog.store.vectors_in_order([t.id for t in tiles])
        bands = QueryBands(catalog.manifest.bands, catalog.manifest)
        indexed = True
    else:
        tiles, pixels, bands = catalog.read_query(stored_path)
        if not tiles:
            raise InputError(f"{path}: no tile has enough valid pixels to search with")
        vectors = None
        indexed = False
    if tile is not None:
        if not 0 <= tile < len(tiles):
            raise ConfigError(
                f"--tile {tile}: {path} has {len(tiles)} tiles; --tile must be 0..{len(tiles) - 1}"
            )
        tiles = [tiles[tile]]
        vectors = vectors[tile : tile + 1] if vectors is not None else None
        pixels = pixels[tile : tile + 1] if pixels is not None else None
    turned, raw = None, []
    if any_orientation:
        if pixels is None:
            _, pixels, _ = catalog.read(stored_path, [t.window for t in tiles])
        all_turns, raw = catalog.compute_orientations(pixels, bands)  # 0 = as it lies
        turned = np.vstack([mean_vector(turn) for turn in all_turns])
        if vectors is None:
            vectors = all_turns[0]
    elif vectors is None:
        vectors, as_is = catalog.compute(pixels, bands)
        raw = [as_is]
    query = Query(str(path), stored_path, tiles, mean_vector(vectors), indexed, tile)
    query.turned = turned
    query.cnn_alone = _block_alone(catalog, bands, raw, "cnn")
    query.tile_vectors = vectors if len(tiles) > 1 else None
    query.bands = bands
    query.window = tiles[0].window if tile is not None else None
    query.compared_on = _compared_on(catalog, bands)
    return query


def _block_alone(
    catalog: Catalog, bands: QueryBands, raw: Sequence[np.ndarray], block: str
) -> np.ndarray | None:
    """Per orientation of ``raw`` (each (tiles, raw_dim)), the query's vector as ``block``
    alone sees it; None without raw features (an indexed query) or without that block."""
    rows = [catalog.block_vectors(part, bands, block) for part in raw]
    if not rows or rows[0] is None:
        return None
    return np.vstack([mean_vector(vectors) for vectors in rows])


def _compared_on(catalog: Catalog, bands: QueryBands) -> dict[str, Any] | None:
    """For a query lacking some of the database's bands: the bands and feature blocks it was
    compared on, and the bands it lacks; None for a query with them all."""
    shared = bands.compared_on()
    if shared is None:
        return None
    blocks = catalog.fusion.blocks_present(catalog.absent_features(bands))
    return shared | {"blocks": blocks}


def resolve_point(
    catalog: Catalog,
    lon: float,
    lat: float,
    date: str | None = None,
    any_orientation: bool = False,
) -> Query:
    """The indexed tile containing a lon/lat point (on ``date`` if given, else the latest)."""
    if not (-180 <= lon <= 180 and -90 <= lat <= 90):
        raise ConfigError(f"--lonlat {lon},{lat}: longitude must be -180..180, latitude -90..90")
    store = catalog.store
    point = Point(lon, lat)
    candidates = store.tiles(sorted(store.ids_in_bbox(lon, lat, lon, lat)))
    containing = [t for t in candidates if t.footprint is not None and t.footprint.covers(point)]
    if not containing:
        raise InputError(f"no indexed tile contains {lon},{lat} in {store.path.name}")
    if date is not None:
        dated = [t for t in containing if t.acquired == date]
        if not dated:
            found = ", ".join(sorted({t.acquired or "undated" for t in containing}))
            raise InputError(f"no tile at {lon},{lat} acquired on {date} (there are: {found})")
        containing = dated
    chosen = max(containing, key=lambda t: (t.acquired or "", t.id))
    query = resolve_tile(catalog, chosen, any_orientation, label=f"{lon},{lat}")
    query.lonlat = (lon, lat)
    return query


def resolve_tile(
    catalog: Catalog, tile: TileRecord, any_orientation: bool = False, label: str | None = None
) -> Query:
    """A query with one indexed tile: its stored vector (no model is loaded), and with
    ``any_orientation`` its pixels read again and embedded under the 8 turns."""
    vector = catalog.store.vectors_in_order([tile.id])[0]
    query = Query(label or f"tile {tile.id}", tile.path, [tile], vector, True)
    query.bands = QueryBands(catalog.manifest.bands, catalog.manifest)
    query.window = tile.window
    if any_orientation:
        _, pixels, _ = catalog.read(tile.path, [tile.window])
        turns, raw = catalog.compute_orientations(pixels)
        query.turned = turns[:, 0, :]
        query.cnn_alone = _block_alone(catalog, query.bands, list(raw), "cnn")
    return query


def resolve_request(catalog: Catalog, request: SearchRequest) -> list[Query]:
    """The queries of a request (``with_defaults`` applied): its files, its stored tile and its
    place, in that order; ConfigError if it has none."""
    turned = bool(request.any_orientation)
    queries = [resolve_query(catalog, path, request.tile_index, turned) for path in request.queries]
    if request.tile_id is not None:
        queries.append(resolve_tile(catalog, stored_tile(catalog, request.tile_id), turned))
    if request.lonlat is not None:
        lon, lat = request.lonlat
        queries.append(resolve_point(catalog, lon, lat, request.date, turned))
    if not queries:
        raise ConfigError("no query: give a query file or --lonlat LON,LAT")
    return queries


def stored_tile(catalog: Catalog, tile_id: int) -> TileRecord:
    """The tile ``tile_id``; NotFoundError if the database has none."""
    found = catalog.store.tiles([tile_id])
    if not found:
        raise NotFoundError(f"no tile {tile_id} in {catalog.name}")
    return found[0]


def check_marked(catalog: Catalog, marked: Sequence[int]) -> None:
    """ConfigError naming the first tile id of ``marked`` the database doesn't hold."""
    found = {t.id for t in catalog.store.tiles(sorted(set(marked)))}
    missing = sorted(set(marked) - found)
    if missing:
        raise ConfigError(f"tile id {missing[0]} is not in {catalog.name}")


def search_marked(
    catalog: Catalog,
    query: Query,
    top: int,
    filters: SearchFilters,
    marks: dict[int, int],
    settings: Settings,
) -> SearchResult:
    """One query searched as a feedback round is: ``marks`` (tile id -> +1 good, -1 bad) move
    it, and the marked tiles are not shown again."""
    feedback = Feedback(
        good=tuple(t for t, label in marks.items() if label > 0),
        bad=tuple(t for t, label in marks.items() if label < 0),
    )
    query.also_exclude = frozenset(marks)
    [result] = search_vectors(
        catalog, [query], top, filters, feedback, settings.feedback,
        settings.search.orientation_bonus, settings.search,
    )  # fmt: skip
    return result


def _unit(vector: np.ndarray) -> np.ndarray:
    return (vector / max(float(np.linalg.norm(vector)), 1e-12)).astype(np.float32)


def mean_vector(vectors: np.ndarray) -> np.ndarray:
    """The query vector of several tiles: their mean, at unit length."""
    return _unit(vectors.mean(axis=0))


def load_area(path: Path) -> BaseGeometry:
    """The union of a vector file's geometries (GeoJSON, GeoPackage, Shapefile...) in lon/lat."""
    from pyogrio.errors import DataSourceError
    from pyogrio.raw import read

    try:
        meta, _, geometries, _ = read(str(path))
    except (DataSourceError, OSError) as exc:
        raise InputError(f"{path}: not a readable vector file ({exc})") from None
    shapes = [shapely.from_wkb(g) for g in geometries if g is not None]
    if not shapes:
        raise InputError(f"{path}: holds no geometry")
    area = unary_union(shapes)
    crs = meta.get("crs") or "EPSG:4326"
    if crs != "EPSG:4326":
        to_lonlat = Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
        area = shapely.transform(
            area, lambda xy: np.column_stack(to_lonlat.transform(xy[:, 0], xy[:, 1]))
        )
    return area


# -- searching -----------------------------------------------------------------------------


def allowed_ids(store: Store, filters: SearchFilters) -> set[int] | None:
    """Tiles the box/area/date filters allow, or None when none of them is set."""
    allowed: set[int] | None = None

    def narrow(ids: set[int]) -> None:
        nonlocal allowed
        allowed = ids if allowed is None else allowed & ids

    if filters.bbox is not None:
        narrow(store.ids_in_bbox(*filters.bbox))
    if filters.within is not None:
        candidates = store.tiles(sorted(store.ids_in_bbox(*filters.within.bounds)))
        area = filters.within
        shapely.prepare(area)
        narrow(
            {t.id for t in candidates if t.footprint is not None and area.intersects(t.footprint)}
        )
    if filters.after is not None or filters.before is not None:
        narrow(store.ids_acquired(filters.after, filters.before))
    return allowed


def _far_enough(query: Query, minimum_metres: float):
    """A predicate on tiles: footprint at least ``minimum_metres`` from the query's."""
    origin = query.footprint
    if origin is None:
        return lambda tile: True
    centre = origin.centroid
    local = Transformer.from_crs(
        "EPSG:4326", f"+proj=aeqd +lat_0={centre.y} +lon_0={centre.x} +units=m", always_xy=True
    )
    project = partial(
        shapely.transform,
        transformation=lambda xy: np.column_stack(local.transform(xy[:, 0], xy[:, 1])),
    )
    origin_m = project(origin)
    return lambda tile: (
        tile.footprint is None or origin_m.distance(project(tile.footprint)) >= minimum_metres
    )


def search_vectors(
    catalog: Catalog,
    queries: Sequence[Query],
    top: int,
    filters: SearchFilters | None = None,
    feedback: Feedback | None = None,
    feedback_settings: FeedbackSettings | None = None,
    orientation_bonus: float = 0.05,
    locate: SearchSettings | None = None,
) -> list[SearchResult]:
    """Top-``top`` matches of each query under the filters and feedback; own tiles left out.

    A query with ``turned`` vectors is searched under all 8 orientations in the same batch;
    each candidate tile scores max(as it lies + ``orientation_bonus``, best orientation): the
    best turn wins, unless the tile as it lies is nearly as good (bench/quality.py measured).

    Unfiltered searches go to FAISS in one batch; when filters leave few tiles they are scored
    exactly; otherwise FAISS is asked for more until enough results pass the filters.

    ``locate`` (search settings with ``locate`` on): the second stage places each query in the
    scenes of its shortlist (not with feedback, which ranks by the marked vectors); tiles that
    cover the placed query come first. In plain-image databases it finds near copies of the
    query picture instead (``geosearch.copies``), which come first.
    """
    filters = filters or SearchFilters()
    feedback = feedback or Feedback()
    feedback_settings = feedback_settings or FeedbackSettings()
    store = catalog.store
    index = index_for_search(store)
    if index.count == 0:
        raise DatabaseError(f"{store.path} holds no tiles yet")
    good = store.vectors_in_order(feedback.good) if feedback.good else np.zeros((0, index.dim))
    bad = store.vectors_in_order(feedback.bad) if feedback.bad else np.zeros((0, index.dim))
    vectors = np.vstack([rocchio(q.vector, good, bad, feedback_settings) for q in queries])
    expansion = locate.expansion if locate is not None and not feedback else 0
    parents, row_vectors = orientation_rows(
        [expanded(index, q, expansion) for q in queries],
        lambda v: rocchio(v, good, bad, feedback_settings),
    )
    allowed = allowed_ids(store, filters)
    reranking = bool(feedback) and feedback_settings.method != "rocchio"
    background = store.vector_sample(feedback_settings.background) if reranking else None
    wanted = max(top, feedback_settings.candidates) if reranking else top

    def passes(query: Query) -> Any:
        near = _far_enough(query, filters.exclude_near) if filters.exclude_near else None

        def check(tile: TileRecord) -> bool:
            if filters.other_files and tile.path == query.path:
                return False
            return near is None or near(tile)

        return check

    checks = [passes(queries[p]) for p in parents]
    second_stage = locate is not None and locate.locate and not feedback
    second_stage &= catalog.manifest.scaling != "none"  # embedding rasters are no pictures
    located = [
        _located(catalog, index, query, locate, allowed, passes(query))
        if second_stage and catalog.manifest.kind == "geo"
        else ([], [])
        for query in queries
    ]
    copy_stage = second_stage and catalog.manifest.kind == "plain"
    copies = [
        _copies(catalog, index, query, allowed, passes(query)) if copy_stage else []
        for query in queries
    ]
    placed_ids = [frozenset(p.tile_id for p in placed) for placed, _ in located]
    row_queries = [
        replace(queries[p], also_exclude=queries[p].also_exclude | placed_ids[p]) for p in parents
    ]
    if allowed is not None and len(allowed) <= EXACT_SUBSET_LIMIT:
        ranked_rows = _exact_subset(
            index, store, row_vectors, row_queries, sorted(allowed), checks, wanted
        )
    else:
        ranked_rows = _faiss_with_growing_k(
            index, store, row_vectors, row_queries, allowed, checks, wanted
        )
    ranked = merge_orientations(index.vectors, parents, row_vectors, ranked_rows, orientation_bonus)
    for number, query in enumerate(queries):
        if is_scene_query(query) and not feedback:
            unplaced = replace(query, also_exclude=query.also_exclude | placed_ids[number])
            ranked[number] = _scene_pairs(index, store, unplaced, allowed, passes(query), wanted)
    results = []
    for query, vector, pairs, (placed, placements), copied in zip(
        queries, vectors, ranked, located, copies, strict=True
    ):
        if reranking and pairs:
            ids = [tile_id for _, tile_id in pairs]
            cosine = np.asarray([score for score, _ in pairs])
            scores = rerank_scores(
                vector, good, bad, background, store.vectors_in_order(ids), cosine,
                feedback_settings,
            )  # fmt: skip
            order = np.argsort(-scores, kind="stable")
            pairs = [(float(scores[i]), ids[i]) for i in order]
        elif not is_scene_query(query):
            pairs = own_vectors_floor(store, query.vector, pairs[:top])
            copy_ids = {tile_id for _, tile_id in copied}
            pairs = copied + [pair for pair in pairs if pair[1] not in copy_ids]
        placed = placed[:top]
        matches = ranked_matches(store, pairs[: top - len(placed)], placed, query.vector)
        correlations = {tile_id: score - 1.0 for score, tile_id in copied}
        for match in matches:
            match.near_copy = correlations.get(match.tile.id)
        applied = {"good": list(feedback.good), "bad": list(feedback.bad)} if feedback else None
        location = placements[0] if placements else None
        results.append(SearchResult(query, matches, feedback=applied, location=location))
    return results


def expanded(index: VectorIndex, query: Query, neighbours: int) -> Query:
    """The query moved toward its ``neighbours`` nearest tiles' rows, each weighted by its score
    (query expansion: label-free, what its neighbourhood agrees on counts more; EuroSAT
    mAP@R 0.400 -> 0.483 at 10, ``bench/quality.py --only semantic --quick``). Queries of
    several tiles and any-orientation queries are searched as they are."""
    if neighbours <= 0 or query.turned is not None or is_scene_query(query):
        return query
    exclude = query.exclude
    scores, ids = index.search(query.vector[None, :], min(neighbours + len(exclude), index.count))
    pairs = [
        (float(score), int(tile_id))
        for score, tile_id in zip(scores[0], ids[0], strict=True)
        if tile_id >= 0 and int(tile_id) not in exclude
    ][:neighbours]
    if not pairs:
        return query
    scores = np.asarray([score for score, _ in pairs], dtype=np.float32)
    neighbourhood = index.vectors([tile_id for _, tile_id in pairs])
    return replace(query, vector=expansion(query.vector, scores, neighbourhood))


def expansion(vector: np.ndarray, scores: np.ndarray, neighbours: np.ndarray) -> np.ndarray:
    """``vector`` plus its ``neighbours`` (rows) weighted by their cosines ``scores`` (those
    below 0 count 0), unit length."""
    weights = np.maximum(scores.astype(np.float32), 0.0)
    return _unit(vector + weights @ neighbours)


def own_vectors_floor(
    store: Store, vector: np.ndarray, pairs: Sequence[tuple[float, int]]
) -> list[tuple[float, int]]:
    """(score, tile id) ``pairs`` scored at least their tiles' own vectors' cosine to the query
    ``vector``, best first. The index ranks augmented rows (each tile moved toward its
    neighbours, ``geosearch.index``); this keeps a stored copy of the query first."""
    if not pairs:
        return []
    ids = [tile_id for _, tile_id in pairs]
    scores = np.maximum([score for score, _ in pairs], store.vectors_in_order(ids) @ vector)
    return [(float(scores[i]), ids[i]) for i in np.argsort(-scores, kind="stable")]


def ranked_matches(
    store: Store,
    pairs: Sequence[tuple[float, int]],
    placed: Sequence[PlacedTile] = (),
    vector: np.ndarray | None = None,
) -> list[Match]:
    """Results, ranked: the tiles where the second stage placed the query (``placed``, scored
    1 + its score) first, then the (score, tile id) ``pairs``; with the query ``vector``, each
    with its cosine to it."""
    ids = [p.tile_id for p in placed] + [tile_id for _, tile_id in pairs]
    scores = [1.0 + p.score for p in placed] + [score for score, _ in pairs]
    records = store.tiles(ids)
    cosines: list[float | None] = [None] * len(ids)
    if vector is not None and ids:
        cosines = [float(cosine) for cosine in store.vectors_in_order(ids) @ vector]
    located = {p.tile_id: p for p in placed}
    return [
        Match(rank, score, record, None, cosine, located.get(record.id))
        for rank, (score, record, cosine) in enumerate(
            zip(scores, records, cosines, strict=True), start=1
        )
    ]


def is_scene_query(query: Query) -> bool:
    """A query of several tiles (a whole scene) searched tile by tile (not any-orientation)."""
    return query.tile_vectors is not None and query.turned is None


def _scene_pairs(
    index: VectorIndex,
    store: Store,
    query: Query,
    allowed: set[int] | None,
    check: Any,
    wanted: int,
) -> list[tuple[float, int]]:
    """A scene query's ranking of scenes (``scene_ranking``) from each of its tiles' nearest
    ``SCENE_NEIGHBOURS`` tiles that the filters allow."""
    k = min(index.count, SCENE_NEIGHBOURS + len(query.exclude))
    scores, ids = index.search(query.tile_vectors.astype(np.float32), k)
    found = sorted({int(i) for i in ids.ravel() if i >= 0} - query.exclude)
    if allowed is not None:
        found = [i for i in found if i in allowed]
    records = {t.id: t for t in store.tiles(found) if check(t)}
    return scene_ranking(scores, ids, records)[:wanted]


def scene_ranking(
    scores: np.ndarray, ids: np.ndarray, tiles: dict[int, TileRecord]
) -> list[tuple[float, int]]:
    """Scenes (files) ranked for a query of several tiles, from each query tile's nearest
    tiles (row r of ``scores``/``ids``; only those in ``tiles`` count): a scene scores the mean,
    over the query's tiles, of its best tile's cosine to that tile (a query tile none of its
    tiles is near contributes that row's farthest score); one (score, tile id) per scene, its
    best-matching tile, best scene first."""
    best: dict[str, dict[int, tuple[float, int]]] = {}
    for row, (row_scores, row_ids) in enumerate(zip(scores, ids, strict=True)):
        for score, tile_id in zip(row_scores, row_ids, strict=True):
            tile = tiles.get(int(tile_id))
            if tile is None:
                continue
            per_row = best.setdefault(tile.path, {})
            if row not in per_row or score > per_row[row][0]:
                per_row[row] = (float(score), int(tile_id))
    floor = scores[:, -1]
    ranked = []
    for per_row in best.values():
        score = np.mean([per_row[r][0] if r in per_row else floor[r] for r in range(len(floor))])
        ranked.append((float(score), max(per_row.values())[1]))
    return sorted(ranked, reverse=True)


def _located(
    catalog: Catalog,
    index: VectorIndex,
    query: Query,
    settings: SearchSettings,
    allowed: set[int] | None,
    check: Any,
) -> tuple[list[PlacedTile], list[Placement]]:
    """The second stage for one query: the tiles covering its placed picture that the filters
    allow (best first), and the placements (best first)."""
    placements = place_query(catalog, query, settings, index)
    placed = [p for p in placed_tiles(catalog.store, placements) if p.tile_id not in query.exclude]
    if allowed is not None:
        placed = [p for p in placed if p.tile_id in allowed]
    passing = {t.id for t in catalog.store.tiles([p.tile_id for p in placed]) if check(t)}
    return [p for p in placed if p.tile_id in passing], placements


def place_query(
    catalog: Catalog, query: Query, settings: SearchSettings, index: VectorIndex | None = None
) -> list[Placement]:
    """Where a query's picture lies in the database's scenes, best first (``geosearch.locate``);
    empty for plain-image databases, queries larger than a placement makes sense for, and
    query files that can no longer be read."""
    if catalog.manifest.kind != "geo" or query.bands is None:
        return []
    try:
        image = query_image(catalog, query.path, query.bands, query.window)
    except InputError:  # an indexed file moved since ingest: searched by vectors only
        return []
    if image is None:
        return []
    index = index or index_for_search(catalog.store)
    shortlist = catalog.store.tiles(_shortlist(catalog, index, query, settings.locate_shortlist))
    any_orientation = query.turned is not None
    with Locator(catalog, image, settings, any_orientation) as locator:
        return locator.place(shortlist)


@dataclass
class LocateResult:
    """Where a query lies: its placements in the database's scenes, best first (none if its
    place was not found)."""

    query: Query
    placements: list[Placement]

    def to_dict(self) -> dict[str, Any]:
        return {
            "query": self.query.to_dict(),
            "located": bool(self.placements),
            "placements": [p.to_dict() for p in self.placements],
        }


def locate(
    catalog: Catalog,
    path: Path,
    settings: SearchSettings,
    tile: int | None = None,
    any_orientation: bool = False,
) -> LocateResult:
    """Where the query file ``path`` (or its tile ``tile``) lies in the database's scenes."""
    query = resolve_query(catalog, path, tile, any_orientation)
    return LocateResult(query, place_query(catalog, query, settings))


def _copies(
    catalog: Catalog, index: VectorIndex, query: Query, allowed: set[int] | None, check: Any
) -> list[tuple[float, int]]:
    """The second stage of plain-image databases: the pictures among the query's
    ``COPY_SHORTLIST`` nearest (by their own vectors, of the index's ``COPY_POOL`` x as many
    nearest) that are near copies of it by their pixels (``geosearch.copies``), as
    (1 + correlation, tile id), best first. An any-orientation query is looked for under each
    of its turns and mirrors."""
    if query.path is None or is_scene_query(query):
        return []
    rows = query.turned if query.turned is not None else query.vector[None, :]
    k = min(index.count, COPY_POOL * COPY_SHORTLIST + len(query.exclude))
    _, found = index.search(rows.astype(np.float32), k)
    ids = list(dict.fromkeys(
        int(i)
        for i in found.T.ravel()  # each row's first, then each row's second...
        if i >= 0 and int(i) not in query.exclude and (allowed is None or int(i) in allowed)
    ))  # fmt: skip
    if ids:  # the nearest by their own vectors: augmented rows rank by kind, copies by the tile
        own = (catalog.store.vectors_in_order(ids) @ rows.T).max(axis=1)
        ids = [ids[i] for i in np.argsort(-own, kind="stable")]
    tiles = [tile for tile in catalog.store.tiles(ids[:COPY_SHORTLIST]) if check(tile)]
    orientations = ALL_ORIENTATIONS if query.turned is not None else (IDENTITY,)
    return [
        (1.0 + correlation, tile_id)
        for correlation, tile_id in near_copies(query.path, tiles, orientations)
    ]


def _shortlist(catalog: Catalog, index: VectorIndex, query: Query, size: int) -> list[int]:
    """Tiles to look for the query's place around, best first: the fused vector's ranking
    interleaved with the CNN block's alone (the most shift-tolerant block; under each of the
    query's orientations; for queries whose raw features were computed), ``size`` in all."""
    rows = [query.vector[None, :]]
    if query.cnn_alone is not None:
        rows.append(query.cnn_alone)
    _, found = index.search(np.vstack(rows).astype(np.float32), min(size, index.count))
    interleaved = found.T.ravel()  # each row's first, then each row's second...
    return list(dict.fromkeys(int(i) for i in interleaved if i >= 0))[:size]


def orientation_rows(queries: Sequence[Query], adjust: Any = None) -> tuple[list[int], np.ndarray]:
    """One search row per query and orientation (8 for any-orientation queries, else 1): the
    query each row belongs to, and the row vectors (``adjust``-ed, e.g. by feedback)."""
    parents, rows = [], []
    for number, query in enumerate(queries):
        for vector in query.turned if query.turned is not None else [query.vector]:
            parents.append(number)
            rows.append(adjust(vector) if adjust else vector)
    return parents, np.vstack(rows).astype(np.float32)


def merge_orientations(
    vectors_of: Callable[[list[int]], np.ndarray],
    parents: list[int],
    row_vectors: np.ndarray,
    ranked_rows: list[list[tuple[float, int]]],
    bonus: float,
) -> list[list[tuple[float, int]]]:
    """Per query: its rows' candidates, rescored exactly under every orientation (from the
    candidates' ``vectors_of``: what their ranking came from), merged."""
    merged = []
    for parent in sorted(set(parents)):
        rows = [i for i, p in enumerate(parents) if p == parent]
        if len(rows) == 1:
            merged.append(ranked_rows[rows[0]])
            continue
        candidates = sorted({tile_id for i in rows for _, tile_id in ranked_rows[i]})
        if not candidates:
            merged.append([])
            continue
        scores = row_vectors[rows] @ vectors_of(candidates).T  # (8, n)
        combined = np.maximum(scores[0] + bonus, scores.max(axis=0))
        order = np.argsort(-combined, kind="stable")
        merged.append([(float(combined[j]), candidates[j]) for j in order])
    return merged


def _exact_subset(
    index: VectorIndex,
    store: Store,
    vectors: np.ndarray,
    queries: Sequence[Query],
    ids: list[int],
    checks: list,
    wanted: int,
) -> list[list[tuple[float, int]]]:
    """Score every allowed tile's index row directly (the filters left few)."""
    if not ids:
        return [[] for _ in queries]
    scores = vectors @ index.vectors(ids).T
    out = []
    for query, row, check in zip(queries, scores, checks, strict=True):
        order = np.argsort(-row, kind="stable")
        pairs = []
        for i in order:
            tile_id = int(ids[i])
            if tile_id in query.exclude:
                continue
            pairs.append((float(row[i]), tile_id))
            if len(pairs) >= wanted * 4 + 16:
                break
        out.append(_keep_passing(store, pairs, check, wanted))
    return out


def _faiss_with_growing_k(
    index: Any,
    store: Store,
    vectors: np.ndarray,
    queries: Sequence[Query],
    allowed: set[int] | None,
    checks: list,
    wanted: int,
) -> list[list[tuple[float, int]]]:
    """One batched FAISS search; queries short of results after filtering ask again for more."""
    out: list[list[tuple[float, int]] | None] = [None] * len(queries)
    pending = list(range(len(queries)))
    k = wanted + max(len(q.exclude) for q in queries)
    while pending:
        k = min(k, index.count)
        scores, ids = index.search(vectors[pending], k)
        still = []
        for slot, row_scores, row_ids in zip(pending, scores, ids, strict=True):
            query = queries[slot]
            pairs = [
                (float(s), int(i))
                for s, i in zip(row_scores, row_ids, strict=True)
                if i >= 0 and int(i) not in query.exclude and (allowed is None or int(i) in allowed)
            ]
            kept = _keep_passing(store, pairs, checks[slot], wanted)
            if len(kept) >= wanted or k >= index.count:
                out[slot] = kept
            else:
                still.append(slot)
        pending = still
        k *= 4
    return [pairs or [] for pairs in out]


def _keep_passing(
    store: Store, pairs: list[tuple[float, int]], check, wanted: int
) -> list[tuple[float, int]]:
    """The first ``wanted`` (score, id) pairs whose tiles pass the per-query check."""
    kept = []
    records = {t.id: t for t in store.tiles([tile_id for _, tile_id in pairs])}
    for score, tile_id in pairs:
        tile = records.get(tile_id)
        if tile is not None and check(tile):
            kept.append((score, tile_id))
            if len(kept) >= wanted:
                break
    return kept


__all__ = [
    "Feedback",
    "Match",
    "Query",
    "SearchFilters",
    "SearchResult",
    "LocateResult",
    "load_area",
    "locate",
    "mean_vector",
    "merge_orientations",
    "orientation_rows",
    "resolve_point",
    "ranked_matches",
    "resolve_query",
    "resolve_request",
    "resolve_tile",
    "search_marked",
    "stored_tile",
    "scene_ranking",
    "is_scene_query",
    "search_vectors",
    "similarity_of",
]
