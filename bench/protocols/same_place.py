"""Same place, other year (NAIP, ``../shared/data/naip``): the same quarter-quad in five
years, cut into one grid. A full tile of one year should find the tile at the same grid
position in the four other years (4 relevant items per query). Candidates are the tiles of the
other years (edge tiles included); queries and relevant items are full tiles only (width ==
height == tile_size). Measured per feature set (block weights) and tile size: top-1 and
precision@4 from the stored unit vectors (cosine = dot product), ms/query through the real
search path (``resolve_query`` + ``search_vectors``) for a sample of queries, and whether that
path returns the same top 4. Full runs repeat it with queries off the grid: each year shifted
by a quarter tile (and at 128 px by 1/32 and 1/8) is ingested too; its tiles query the other
years' unshifted tiles, relevant = the 16 they overlap, top-1 target = the tile overlapping
most in any other year.

Relevance feedback (simulated, residual ranking): the top 4 results are marked good/bad from
the ground truth, then the query is searched again through ``search_vectors`` with that
feedback and the marked tiles excluded; P@4 is scored on the new results and compared with the
query searched without feedback on the same residual collection."""

from __future__ import annotations

import time
import typing
from pathlib import Path
from typing import Any

import numpy as np

from bench.protocols.common import (
    DEFAULT_WEIGHTS,
    NAIP,
    K,
    emit,
    feature_sets,
    ingest_into,
    label_of,
    measure,
    naip_truth,
    ranking_metrics,
    shifted_truth,
    slug,
    tile_positions,
    weight_overrides,
    weights_of,
    write_window,
)
from geosearch import GeosearchError
from geosearch.catalog import open_database
from geosearch.config import CnnSettings, FeedbackSettings
from geosearch.search import Feedback, resolve_query, search_vectors
from geosearch.store import Store


def naip_shifted(folder: Path, offset: int) -> dict[Path, list[Path]]:
    """Each NAIP year shifted by ``offset`` px right and down, written in ``folder`` once (same
    name + ``_shift``): copy -> the other years' files, its candidates."""
    folder.mkdir(exist_ok=True)
    originals = sorted(NAIP.glob("*.tif"))
    copies = {}
    for source in originals:
        copy = folder / f"{source.stem}_shift.tif"
        copies[copy] = [other for other in originals if other != source]
        if not copy.exists():
            write_window(source, copy, offset, offset)
    return copies


def evaluate(db: Path | str, k: int = K) -> dict[str, Any]:
    """NAIP same place, other year: top-1 and P@k of the database's stored vectors."""
    with Store(Path(db)) as store:
        metrics, _ = ranking_metrics(naip_truth(store), k)
    return metrics


def feedback_rounds(
    db: Path | str,
    feedback: FeedbackSettings,
    rounds: int = 2,
    k: int = K,
    limit: int | None = None,
) -> list[dict[str, Any]]:
    """Simulated relevance feedback on NAIP (residual ranking), through ``search_vectors``.

    Round 0 is the plain search. In each round the user marks every shown result good
    (same place, other year) or bad; the next search uses all marks so far and excludes the
    marked tiles. Its P@k is compared with the plain query on the same residual collection
    (the marked tiles excluded too), over the queries with a relevant tile left to find.
    """
    catalog = open_database(Path(db))
    try:
        truth = naip_truth(catalog.store)
        positions = tile_positions(catalog.store)
        picks = range(len(truth.queries))[:limit]
        initial = []
        per_round: list[list[tuple[float, float]]] = [[] for _ in range(rounds)]
        seconds: list[list[float]] = [[] for _ in range(rounds)]
        for n in picks:
            relevant = {int(truth.ids[row]) for row in truth.relevant[n]}
            path, position = positions[int(truth.ids[truth.queries[n]])]
            query = resolve_query(catalog, Path(path), tile=position)
            outside = truth.excluded_ids(n)
            query.also_exclude = outside
            shown = [m.tile.id for m in search_vectors(catalog, [query], k)[0].matches]
            initial.append(len(relevant & set(shown)) / k)
            good, bad = [], []
            for r in range(rounds):
                good += [i for i in shown if i in relevant]
                bad += [i for i in shown if i not in relevant]
                if not relevant - set(good):
                    break  # nothing left to find: this query leaves the residual collection
                query.also_exclude = outside | frozenset(good + bad)
                marks = Feedback(good=tuple(good), bad=tuple(bad))
                started = time.perf_counter()
                found = search_vectors(catalog, [query], k, None, marks, feedback)[0]
                seconds[r].append(time.perf_counter() - started)
                shown = [m.tile.id for m in found.matches]
                plain = [m.tile.id for m in search_vectors(catalog, [query], k)[0].matches]
                per_round[r].append(
                    (len(relevant & set(shown)) / k, len(relevant & set(plain)) / k)
                )
    finally:
        catalog.store.close()
    lines = [{"rounds": 0, f"p_at_{k}": round(float(np.mean(initial)), 4), "queries": len(initial)}]
    for r, pairs in enumerate(per_round, start=1):
        if not pairs:  # every query found all its relevant tiles before this round
            lines.append({"rounds": r, "queries": 0})
            continue
        with_feedback, plain = (np.array(values) for values in zip(*pairs, strict=True))
        lines.append(
            {
                "rounds": r,
                f"p_at_{k}": round(float(with_feedback.mean()), 4),
                f"baseline_p_at_{k}": round(float(plain.mean()), 4),
                "gain": round(float((with_feedback - plain).mean()), 4),
                "queries": len(pairs),
                "worse": int((with_feedback < plain).sum()),
                "better": int((with_feedback > plain).sum()),
                "ms_per_search": round(float(np.mean(seconds[r - 1])) * 1000, 2),
            }
        )
    return lines


def keras_backbones() -> list[tuple[str, str | None]]:
    """(model, None if its weights are available offline, else why not) for Keras models."""
    from geosearch.features.cnn import cnn_extractor

    models = typing.get_args(CnnSettings.model_fields["model"].annotation)
    found = []
    for model in models:
        if model == "mobilenet_v1":
            continue
        try:
            cnn_extractor(model, None, False, 0, 32)
            found.append((model, None))
        except GeosearchError as exc:
            found.append((model, str(exc)))
    return found


def feedback_settings(quick: bool) -> list[FeedbackSettings]:
    """Every feedback method with the default weights; in full runs, other Rocchio weights
    (alone and under the classifier + cosine blend)."""
    methods = typing.get_args(FeedbackSettings.model_fields["method"].annotation)
    default = FeedbackSettings()
    chosen = [default.model_copy(update={"method": m}) for m in methods]
    if not quick:
        for method, alpha, beta, gamma in (
            ("rocchio", 1.0, 0.5, 0.1),
            ("rocchio", 1.0, 1.0, 0.5),
            ("rocchio", 1.0, 0.75, 0.0),
            ("both", 1.0, 1.0, 0.5),
        ):
            update = {"method": method, "alpha": alpha, "beta": beta, "gamma": gamma}
            if default.model_copy(update=update) not in chosen:
                chosen.append(default.model_copy(update=update))
    return chosen


def shifts(tile_size: int, weights: dict[str, float]) -> list[int]:
    """Offsets (px) of the off-grid NAIP protocol: a quarter tile for every feature set; at
    128 px also 1/32 and 1/8 of a tile for each block alone and the default fusion."""
    offsets = [tile_size // 4]
    alone = sum(w > 0 for w in weights.values()) == 1
    if tile_size == 128 and (alone or weights == DEFAULT_WEIGHTS):
        offsets = [tile_size // 32, tile_size // 8, *offsets]
    return offsets


def run_naip(work: Path, tile_size: int, quick: bool) -> None:
    """Every NAIP feature set, the Keras backbones (or why not), then feedback on the default."""
    naip = {"dataset": "naip", "protocol": "same place, other year", "tile_size": tile_size}
    runs = [(label_of(w), w, weight_overrides(w)) for w in feature_sets(quick)]
    if not quick:
        for model, reason in keras_backbones():
            label = f"{label_of(DEFAULT_WEIGHTS)} cnn model {model}"
            if reason:
                emit(naip | {"features": label, "skipped": reason})
            else:
                cnn = {"features.cnn.model": model, "features.cnn.download": False}
                runs.append((label, DEFAULT_WEIGHTS, cnn))
    # Feedback runs on the default fusion; full runs also on CNN + band statistics alone.
    feedback_on = [DEFAULT_WEIGHTS]
    plain = weights_of(band_stats=DEFAULT_WEIGHTS["band_stats"], cnn=DEFAULT_WEIGHTS["cnn"])
    if not quick and plain != DEFAULT_WEIGHTS:
        feedback_on.append(plain)
    feedback_dbs = {}
    for label, weights, overrides in runs:
        db = work / f"naip{tile_size}_{slug(label)}.gpkg"
        try:
            ingested = ingest_into(db, [NAIP], {"tile_size": tile_size} | overrides)
        except GeosearchError as exc:  # e.g. a Keras model without TensorFlow
            emit(naip | {"features": label, "skipped": str(exc)})
            continue
        with Store(db) as store:
            truth = naip_truth(store)
        emit(naip | {"features": label, "weights": weights} | measure(db, truth) | ingested)
        if label in map(label_of, feedback_on):
            feedback_dbs[label] = db
        for offset in [] if quick else shifts(tile_size, weights):
            folder = work / f"naip_shifted_{offset}px"
            copies = naip_shifted(folder, offset)
            shifted_db = work / f"naip{tile_size}_{slug(label)}_shift{offset}.gpkg"
            ingested = ingest_into(shifted_db, [NAIP, folder], {"tile_size": tile_size} | overrides)
            with Store(shifted_db) as store:
                truth = shifted_truth(store, copies, offset)
            emit(
                naip
                | {"protocol": f"same place, other year, query shifted {offset} px"}
                | {"features": label, "weights": weights}
                | measure(shifted_db, truth)
                | ingested
            )
    for label, db in feedback_dbs.items():
        for settings in feedback_settings(quick):
            method = {
                "feedback_method": settings.method,
                "alpha": settings.alpha,
                "beta": settings.beta,
                "gamma": settings.gamma,
            }
            for line in feedback_rounds(db, settings, rounds=2):
                feedback = {"features": label, "protocol": "feedback, residual ranking"}
                emit(naip | feedback | method | line)
