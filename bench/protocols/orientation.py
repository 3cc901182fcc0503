"""Orientation (NAIP 128 px, same place other year): the query chip as it lies ("plain") or
turned 90 degrees and mirrored ("turned"; the database as it lies), scored by four rules from
the chip's 8 orientation vectors, every stored tile scored exactly: as it lies; any orientation
(the search's merge: max(as it lies + orientation bonus, best turn)); best turn (bonus 0); the
D4-mean query vector. For the default fusion, the thumbnail (layout) alone and (full runs, if
Keras imports) a random-weights EfficientNetB0 alone. ms/query through resolve_query +
search_vectors for chips written as new GeoTIFFs, and its ratio to the as-it-lies query."""

from __future__ import annotations

import time
import typing
from pathlib import Path
from typing import Any

import numpy as np

from bench.protocols.common import (
    DEFAULT_WEIGHTS,
    NAIP,
    GroundTruth,
    K,
    emit,
    index_rows,
    ingest_into,
    label_of,
    naip_truth,
    ranking_metrics,
    slug,
    unit_rows,
    weight_overrides,
    weights_of,
    write_raster,
)
from geosearch import GeosearchError
from geosearch.catalog import Catalog, open_database
from geosearch.config import Settings
from geosearch.orientation import Orientation, turned
from geosearch.search import resolve_query, search_vectors
from geosearch.sources import RawTile

QUERY_TURN = Orientation(1, True)  # the "turned" protocol: 90 degrees and mirrored
ORIENTATION_RULES = ("as_is", "any_orientation", "best_turn", "d4_mean_query")
ORIENTATION_TIMED = 20


def query_chips(catalog: Catalog, truth: GroundTruth) -> list[RawTile]:
    """The pixels of every query tile of ``truth``, read again from its file (one read per
    file), in query order."""
    rows_of: dict[str, list[int]] = {}
    for n, row in enumerate(truth.queries):
        rows_of.setdefault(truth.tiles[row].path, []).append(n)
    chips: list[RawTile | None] = [None] * len(truth.queries)
    for path, numbers in rows_of.items():
        windows = [truth.tiles[truth.queries[n]].window for n in numbers]
        _, tiles, skipped = catalog.read(path, windows)
        if skipped:
            raise RuntimeError(f"{path}: {skipped} query tiles too empty on a second read")
        for n, tile in zip(numbers, tiles, strict=True):
            chips[n] = tile
    return typing.cast(list[RawTile], chips)


def rule_scores(turns: np.ndarray, stored: np.ndarray, bonus: float) -> dict[str, np.ndarray]:
    """(queries, tiles) scores per rule from the queries' 8 orientation vectors (8, q, dim),
    every tile's row (``stored``: the index's) scored exactly (no FAISS shortlist): as it
    lies; the search's merge (max(as it lies + bonus, best turn)); the best turn (bonus 0);
    the D4-mean query."""
    turns = unit_rows(turns)
    per_turn = np.einsum("oqd,td->oqt", turns, stored)
    best = per_turn.max(axis=0)
    return {
        "as_is": per_turn[0],
        "any_orientation": np.maximum(per_turn[0] + bonus, best),
        "best_turn": best,
        "d4_mean_query": unit_rows(turns.mean(axis=0)) @ stored.T,
    }


def rule_floors(turns: np.ndarray, stored: np.ndarray) -> dict[str, np.ndarray]:
    """(queries, tiles) per rule: the cosine of the query vector ``similar`` keeps (as it
    lies; the D4 mean) to each tile's own vector, what a result scores at least."""
    turns = unit_rows(turns)
    as_lies = turns[0] @ stored.T
    mean = unit_rows(turns.mean(axis=0)) @ stored.T
    rules = {rule: as_lies for rule in ("as_is", "any_orientation", "best_turn")}
    return rules | {"d4_mean_query": mean}


def timed_orientation_queries(
    catalog: Catalog,
    truth: GroundTruth,
    folder: Path,
    turn: Orientation | None,
    expected: dict[str, list[list[int]]],
    bonus: float,
    sample: int,
) -> dict[str, dict[str, Any]]:
    """Per rule: ms/query through the real path for new files (a query chip, turned by ``turn``
    if given, written as a GeoTIFF): ``resolve_query`` + ``search_vectors`` for top K over the
    whole database (as a user would), the same restricted to the benchmark's candidates, and
    the share of restricted searches whose top K equals the exact scoring's (``expected``).
    d4_mean_query has no search option: it is timed as resolve_query(any_orientation) + a
    search with the mean vector."""
    import rasterio

    folder.mkdir(exist_ok=True)
    picks = np.linspace(0, len(truth.queries) - 1, min(sample, len(truth.queries))).astype(int)
    picks = sorted(set(picks.tolist()))
    files = {}
    for n in picks:
        record = truth.tiles[truth.queries[n]]
        window = record.window.as_rasterio()
        files[n] = folder / f"query_{n:03d}.tif"
        with rasterio.open(record.path) as src:
            data = src.read(window=window)
            if turn is not None:
                data = turn.apply(data)
            where = src.window_transform(window)  # the same footprint turned: square tiles
            write_raster(files[n], src.profile, data, where, src.descriptions)

    def search(n: int, rule: str, restricted: bool) -> list[int]:
        query = resolve_query(catalog, files[n], None, rule != "as_is")
        if rule == "d4_mean_query":
            query.vector = unit_rows(query.turned.mean(axis=0))
            query.turned = None
        if restricted:  # the benchmark's candidates only (other years)
            query.also_exclude = truth.excluded_ids(n)
        rule_bonus = 0.0 if rule == "best_turn" else bonus
        found = search_vectors(catalog, [query], K, orientation_bonus=rule_bonus)[0]
        return [m.tile.id for m in found.matches]

    def timed(n: int, rule: str, restricted: bool) -> tuple[float, list[int]]:
        started = time.perf_counter()
        found = search(n, rule, restricted)
        return (time.perf_counter() - started) * 1000, found

    out = {}
    for rule in ORIENTATION_RULES:
        search(picks[0], rule, False)  # warm-up: models, page cache
        # As a user's query (nothing excluded), then restricted to the candidates, whose top K
        # must equal the exact scoring's. Restricting excludes ~1/5 of the tiles, so FAISS is
        # asked for more rows and the orientation merge rescores many more candidates.
        plain = [timed(n, rule, False)[0] for n in picks]
        restricted = [timed(n, rule, True) for n in picks]
        out[rule] = {
            "ms_per_query": round(float(np.mean(plain)), 2),
            "ms_p50": round(float(np.median(plain)), 2),
            "ms_per_query_restricted": round(float(np.mean([t for t, _ in restricted])), 2),
            "timed_queries": len(picks),
            "search_agrees": round(
                float(
                    np.mean(
                        [
                            found == expected[rule][n]
                            for n, (_, found) in zip(picks, restricted, strict=True)
                        ]
                    )
                ),
                3,
            ),
        }
    return out


def random_cnn_weights(folder: Path) -> Path:
    """EfficientNetB0 without ImageNet weights (seeded random init), saved for
    ``features.cnn.weights``: what the CNN block gives with no training at all."""
    import keras

    from geosearch.features.cnn import INPUT_SIZE

    path = folder / "efficientnetb0_random.weights.h5"
    if not path.exists():
        keras.utils.set_random_seed(0)
        network = keras.applications.EfficientNetB0(
            include_top=False, weights=None, pooling="avg", input_shape=(INPUT_SIZE, INPUT_SIZE, 3)
        )
        network.save_weights(str(path))
    return path


def orientation_feature_sets(work: Path, quick: bool) -> list[tuple[str, dict[str, Any] | str]]:
    """(label, overrides or why skipped): the default fusion; the thumbnail (pixel layout)
    alone; in full runs a CNN with random weights alone (if Keras imports)."""
    sets: list[tuple[str, dict[str, Any] | str]] = [
        (label_of(DEFAULT_WEIGHTS), weight_overrides(DEFAULT_WEIGHTS)),
        (
            f"thumbnail only: {label_of(weights_of(layout=1.0))}",
            weight_overrides(weights_of(layout=1.0)),
        ),
    ]
    if quick:
        return sets
    label = "cnn random weights: efficientnetb0 (weights=None), layout=0 band_stats=0"
    try:
        import keras  # noqa: F401
    except ImportError as exc:
        sets.append((label, f"keras does not import: {exc}"))
        return sets
    overrides = weight_overrides(weights_of(cnn=1.0)) | {
        "features.cnn.model": "efficientnetb0",
        "features.cnn.weights": str(random_cnn_weights(work)),
        "features.cnn.download": False,
    }
    sets.append((label, overrides))
    return sets


def run_orientation(work: Path, quick: bool) -> None:
    """NAIP 128 px, same place other year: the query chip as it lies ("plain") or turned by
    QUERY_TURN ("turned"; the database as it lies), scored by each orientation rule."""
    tile_size = 128
    bonus = Settings().search.orientation_bonus
    base = {"dataset": "naip", "tile_size": tile_size, "part": "orientation"}
    base |= {"query_turn": QUERY_TURN.name, "orientation_bonus": bonus}
    sample = 8 if quick else ORIENTATION_TIMED
    for label, overrides in orientation_feature_sets(work, quick):
        if isinstance(overrides, str):
            emit(base | {"features": label, "skipped": overrides})
            continue
        # run_naip names its databases by the weights' label: reuse one if it made it.
        weights_label = label.split(": ", 1)[-1]
        db = work / f"naip{tile_size}_{slug(weights_label)}.gpkg"
        ingested: dict[str, Any] = {}
        try:
            if not db.exists():
                ingested = ingest_into(db, [NAIP], {"tile_size": tile_size} | overrides)
            catalog = open_database(db, Settings().with_overrides(overrides))
        except GeosearchError as exc:
            emit(base | {"features": label, "skipped": str(exc)})
            continue
        try:
            truth = naip_truth(catalog.store)
            chips = query_chips(catalog, truth)
            ratios = {}
            for protocol, turn in (("plain", None), ("turned", QUERY_TURN)):
                oriented = chips if turn is None else [turned(chip, turn) for chip in chips]
                turns = catalog.compute_orientations(oriented)[0]
                scores = rule_scores(turns, index_rows(db, truth.ids), bonus)
                floors = rule_floors(turns, truth.vectors)
                measured, expected = {}, {}
                for rule, similarity in scores.items():
                    measured[rule], expected[rule] = ranking_metrics(
                        truth, K, similarity, floors[rule]
                    )
                folder = work / f"orientation_{slug(weights_label)}_{protocol}"
                timing = timed_orientation_queries(
                    catalog, truth, folder, turn, expected, bonus, sample
                )
                as_is_ms = timing["as_is"]["ms_per_query"]
                for rule in ORIENTATION_RULES:
                    ratio = round(timing[rule]["ms_per_query"] / as_is_ms, 2)
                    emit(
                        base
                        | {"features": label, "protocol": protocol, "rule": rule}
                        | measured[rule]
                        | timing[rule]
                        | {"time_vs_as_is": ratio}
                        | ingested
                    )
                ratios[protocol] = round(timing["any_orientation"]["ms_per_query"] / as_is_ms, 2)
            emit(
                base
                | {"features": label, "summary": "any_orientation ms / as_is ms (new files)"}
                | {"ratio": ratios, "target_max": 3.0, "meets_target": max(ratios.values()) <= 3}
            )
        finally:
            catalog.store.close()
