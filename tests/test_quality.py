"""Retrieval quality regressions, measured by bench/quality.py (its families in bench/protocols/)
on the five NAIP years: a full 128 px tile of one year should find the same grid cell in the
other four years."""

from __future__ import annotations

from pathlib import Path

import pytest

import geosearch
from bench.protocols import common, orientation, same_place
from geosearch.config import Settings
from tests.conftest import shared

# Measured 2026-11-25 at 128 px, full tiles only, 175 queries (chance 4/192 = 0.021): default
# features (band_stats 0.25, layout 1.0, cnn 1) top-1 0.971, P@4 0.763. Without the layout
# block (band_stats 0.25 + cnn) it was 0.566 (0.625 over every tile, edge tiles included, as
# tests/test_retrieval.py counts: partial edge tiles are easy to match).
MIN_TOP1 = 0.90


@pytest.fixture(scope="module")
def naip128(tmp_path_factory: pytest.TempPathFactory) -> Path:
    db = tmp_path_factory.mktemp("quality") / "naip128.gpkg"
    report = geosearch.ingest([shared("naip")], db, Settings().with_overrides({"tile_size": 128}))
    assert report.tiles_added == 240 and not report.skipped
    return db


def test_default_features_find_the_same_place_in_other_years(naip128):
    measured = same_place.evaluate(naip128)
    assert measured["queries"] == 175  # 7 x 5 full tiles in each of 5 years
    assert measured["top1"] >= MIN_TOP1, measured
    assert measured["p_at_4"] > 10 * measured["chance_p_at_4"], measured


def test_one_round_of_feedback_does_not_lower_precision(naip128):
    settings = Settings().feedback
    rounds = same_place.feedback_rounds(naip128, settings, rounds=1)
    first = rounds[1]
    assert first["rounds"] == 1 and first["queries"] >= 50  # queries with a tile left to find
    # Residual ranking: marked tiles are excluded from both the feedback and the plain search.
    assert first["p_at_4"] >= first["baseline_p_at_4"], (settings.method, first)


def test_any_orientation_finds_a_turned_query_chip(naip128):
    """A query chip turned 90 degrees and mirrored: lost as it lies, found under the search's
    any-orientation rule (measured 2026-11-25 on all 175 queries, default features: top-1
    0.27 as it lies, 0.90 any orientation, 0.97 for the chip as it lies)."""
    from dataclasses import replace

    from geosearch.catalog import open_database
    from geosearch.orientation import turned

    catalog = open_database(naip128)
    try:
        truth = common.naip_truth(catalog.store)
        picks = slice(0, None, 5)  # 35 of the 175 queries
        truth = replace(
            truth,
            queries=truth.queries[picks],
            candidates=truth.candidates[picks],
            relevant=truth.relevant[picks],
            best=truth.best[picks],
        )
        chips = orientation.query_chips(catalog, truth)
        top1 = {}
        for protocol, oriented in (
            ("plain", chips),
            ("turned", [turned(chip, orientation.QUERY_TURN) for chip in chips]),
        ):
            scores = orientation.rule_scores(
                catalog.compute_orientations(oriented)[0], truth.vectors, 0.05
            )
            for rule, similarity in scores.items():
                top1[protocol, rule] = common.ranking_metrics(truth, 4, similarity)[0]["top1"]
    finally:
        catalog.store.close()
    # The eight orientations of a turned chip are those of the chip: same best turn.
    assert top1["plain", "best_turn"] == top1["turned", "best_turn"], top1
    assert top1["turned", "as_is"] < 0.5, top1
    assert top1["turned", "any_orientation"] >= 0.8, top1
    assert top1["plain", "any_orientation"] >= MIN_TOP1 - 0.05, top1


def test_kinds_metrics_on_a_ranking_worked_by_hand():
    """bench/quality.py --only semantic: mAP@R, P@10 and the AP after marks, pinned."""
    import numpy as np

    from bench.protocols import kinds

    labels = np.array(["a", "a", "a", "b", "b"])
    # Query 0 (class a, R = 2) ranks 3, 1, 4, 2: hits at 2 and 4.
    # mAP@R: within the first 2 one hit, at 2 (precision 1/2): 0.5 / 2 = 0.25.
    # AP over the whole ranking: (1/2 + 2/4) / 2 = 0.5.
    hits = labels[[3, 1, 4, 2]] == "a"
    assert kinds.map_at_r(hits, 2) == pytest.approx(0.25)
    assert kinds.average_precision(hits, 2) == pytest.approx(0.5)
    # A relevant item never ranked counts 0: one hit at 1 of 2 relevant = 0.5.
    assert kinds.average_precision(np.array([True, False]), 2) == pytest.approx(0.5)
    # Query 3 (class b, R = 1) ranks 4 first: mAP@R 1. P@10 counts hits / 10: 2 and 1.
    measured = kinds.kinds_metrics([np.array([3, 1, 4, 2]), np.array([4, 0, 1, 2])], labels, [0, 3])
    assert measured == {"map_at_r": 0.625, "p_at_10": 0.15, "queries": 2}
    # After marks: query 0 of a a a a b b, marked 1 (good) and 4 (bad); the ranking
    # 0 1 5 2 4 3 leaves 5 2 3 (hits at 2 and 3) of 2 relevant: (1/2 + 2/3) / 2.
    six = np.array(["a", "a", "a", "a", "b", "b"])
    order = np.array([0, 1, 5, 2, 4, 3])
    assert kinds.unmarked_ap(order, six, 0, {1, 4}) == pytest.approx((1 / 2 + 2 / 3) / 2)
    # The numpy rankings leave the query out and put the nearest first.
    vectors = np.array([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]])
    assert [r.tolist() for r in kinds.cosine_rankings(vectors, [0, 2])] == [[1, 2], [1, 0]]
