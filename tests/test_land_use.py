"""Kinds of places: a EuroSAT picture finds more of its land-use class, and marks find the rest.

The benchmark (``bench/quality.py --only semantic``) measures the same on all ten classes; here
five distinct classes x 60 pictures keep the database small, and the bars sit well below the
benchmark's figures so that only a real loss fails them.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image

import geosearch
from bench.protocols.kinds import NEAR_COPY_KINDS, NEAR_COPY_QUALITY
from geosearch.config import Settings
from geosearch.engines.base import SilentProgress
from geosearch.ingest import create_catalog, plan_files
from geosearch.store import Store
from tests.conftest import EUROSAT_CLASSES as CLASSES
from tests.conftest import EUROSAT_PER_CLASS as PER_CLASS
from tests.conftest import shared

QUERIES_PER_CLASS = 4
# bench/quality.py --only semantic, ten classes: P@10 0.85; a majority of 10 is 6
MIN_PRECISION_AT_10 = 0.6


def label_of(path: str) -> str:
    return Path(path).parent.name


def average_precision(relevant: list[bool]) -> float:
    hits = np.cumsum(relevant)
    ranks = np.flatnonzero(relevant) + 1
    return float((hits[np.asarray(relevant)] / ranks).sum() / max(1, sum(relevant)))


def test_a_picture_finds_its_kind_of_place(eurosat_db):
    db, pictures = eurosat_db
    precision = {}
    for name in CLASSES:
        queries = pictures[name][:: PER_CLASS // QUERIES_PER_CLASS][:QUERIES_PER_CLASS]
        results = geosearch.similar(db, queries, top=10)
        found = [label_of(m.tile.path) == name for r in results for m in r.matches]
        precision[name] = float(np.mean(found))
    print("P@10 per class:", precision)
    assert np.mean(list(precision.values())) >= MIN_PRECISION_AT_10
    assert min(precision.values()) >= 0.4


def test_twenty_marks_find_more_of_the_class_over_the_whole_database(eurosat_db):
    db, pictures = eurosat_db
    name = "PermanentCrop"
    query = pictures[name][7]
    everything = len(CLASSES) * PER_CLASS
    [plain] = geosearch.similar(db, [query], top=everything)

    [first] = geosearch.similar(db, [query], top=10)
    marked = {m.tile.id for m in first.matches}
    good = [m.rank for m in first.matches if label_of(m.tile.path) == name]
    bad = [m.rank for m in first.matches if label_of(m.tile.path) != name]
    second = geosearch.feedback(db, first.session, good, bad, top=10)
    marked |= {m.tile.id for m in second.matches}
    good = [m.rank for m in second.matches if label_of(m.tile.path) == name]
    bad = [m.rank for m in second.matches if label_of(m.tile.path) != name]
    geosearch.feedback(db, first.session, good, bad, top=10)
    marked_result = geosearch.feedback(db, first.session, top=everything)

    def unmarked_ap(result) -> float:
        return average_precision(
            [label_of(m.tile.path) == name for m in result.matches if m.tile.id not in marked]
        )

    before, after = unmarked_ap(plain), unmarked_ap(marked_result)
    print(f"AP of {name} over the unmarked pictures: {before:.3f} -> {after:.3f} (20 marks)")
    assert len(marked) == 20
    assert after > before + 0.02


def test_the_creation_sample_is_embedded_once_with_the_vectors_computed_afresh(tmp_path):
    """A new plain database's creation sample is its pictures themselves: ingest reuses the
    sample's features for them, and gets the vectors it would compute anew."""
    pictures = [
        path for name in CLASSES for path in sorted(shared("eurosat", name).glob("*.jpg"))[:2]
    ]
    settings = Settings().with_overrides({"workers": 1})
    with Store(tmp_path / "db.gpkg", create=True) as store:
        plans = plan_files([str(path) for path in pictures], store)
        catalog, unreadable = create_catalog(store, settings, plans, SilentProgress())
        assert catalog is not None and not unreadable
        afresh = replace(catalog, sample_features=None)
        for path in map(str, pictures):
            reused, computed = catalog.embed(path), afresh.embed(path)
            [window] = [record.window for record in reused.records]
            _, [tile], _ = catalog.read(path)
            assert catalog.sample_features.get(path, window, tile) is not None
            assert np.array_equal(reused.raw, computed.raw)
            assert np.array_equal(reused.vectors, computed.vectors)
        tile.pixels[0, 0, 0] ^= 1  # other pixels at the same place: computed, not reused
        assert catalog.sample_features.get(path, window, tile) is None


def near_copy(picture: Path, folder: Path, kind: int, number: int = 0) -> Path:
    """A near copy of ``picture`` in ``folder``, made as the benchmark makes its ``kind``
    (``bench.protocols.kinds.NEAR_COPY_KINDS``: cropped a little, cut off-centre, halved and
    brightened, cropped and turned the ``number``-th way)."""
    _, transform, suffix, _ = NEAR_COPY_KINDS[kind]
    with Image.open(picture) as image:
        copy = transform(image.convert("RGB"), number)
    path = folder / f"{picture.stem}_{kind}_{number}{suffix}"
    copy.save(path, quality=NEAR_COPY_QUALITY)
    return path


def test_a_near_copy_of_a_stored_picture_comes_first_by_its_pixels(eurosat_db, tmp_path):
    """The copy stage of plain databases: the vectors rank kinds (expanded, augmented) and let
    pictures of the same kind pass a near copy's original; its pixels put it back first. A
    near copy of a picture the database does not hold is named no copy."""
    db, pictures = eurosat_db
    originals = [pictures[name][n] for name in CLASSES for n in (3, 29, 51)]
    copies = [near_copy(p, tmp_path, n % 3) for n, p in enumerate(originals)]

    def first_is_original(settings: Settings) -> list[bool]:
        results = geosearch.similar(db, copies, top=5, settings=settings)
        return [
            r.matches[0].tile.path == str(original)
            for r, original in zip(results, originals, strict=True)
        ]

    with_stage = first_is_original(Settings())
    vectors_alone = first_is_original(Settings().with_overrides({"search.locate": False}))
    print("first with the copy stage:", sum(with_stage), "vectors alone:", sum(vectors_alone))
    assert sum(with_stage) >= 13 and sum(with_stage) >= sum(vectors_alone) + 3

    absent = [
        near_copy(sorted(shared("eurosat", name).glob("*.jpg"))[-1], tmp_path, 0)
        for name in CLASSES
    ]
    for result in geosearch.similar(db, absent, top=5):
        assert result.matches[0].score < 1.0  # no copy named: ranked by the vectors
        assert all(match.near_copy is None for match in result.matches)


def test_a_turned_near_copy_is_found_first_when_any_orientation_is_asked(eurosat_db, tmp_path):
    """A copy turned or mirrored (each of the seven ways) is compared under the query's eight
    orientations with ``any_orientation``, comes first and is named a near copy in the results
    and their JSON; searched as it is, the same copy is no near copy."""
    db, pictures = eurosat_db
    originals = [pictures[name][n] for name in CLASSES for n in (7, 40)][:7]
    turned = len(NEAR_COPY_KINDS) - 1  # cropped, then each of the seven turns and mirrors
    copies = [near_copy(original, tmp_path, turned, n) for n, original in enumerate(originals)]

    turned_results = geosearch.similar(db, copies, top=5, any_orientation=True)
    firsts = [
        r.matches[0].tile.path == str(original)
        for r, original in zip(turned_results, originals, strict=True)
    ]
    assert sum(firsts) >= 6
    for result, first in zip(turned_results, firsts, strict=True):
        if first:
            best = result.matches[0]
            assert best.near_copy is not None and best.near_copy >= 0.9
            assert best.to_dict()["near_copy"] == {"correlation": round(best.near_copy, 4)}
            assert result.matches[1].near_copy is None
    as_they_are = geosearch.similar(db, copies, top=5, any_orientation=False)
    assert all(m.near_copy is None for r in as_they_are for m in r.matches)
