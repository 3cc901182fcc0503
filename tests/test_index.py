"""The vector index with real FAISS: approximate kinds against exact search, files, open_index."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from geosearch.index import (
    IndexState,
    VectorIndex,
    choose_kind,
    index_path,
    open_index,
    vectors_path,
)
from geosearch.pixels import Window
from geosearch.store import Store, TileRecord
from tests.conftest import ROOT

# IVF re-ranks from float16 rows: a cosine of unit vectors moves by at most about this.
FLOAT16_ROUNDING = 3e-4
DIM = 256
APPROXIMATE = ("ivfpq",)
KINDS = ("flat", *APPROXIMATE)


def clustered(n: int, seed: int) -> np.ndarray:
    """Unit vectors like pooled CNN features: 40 clusters, 8 latent dimensions, ReLU."""
    structure = np.random.default_rng(7)
    basis = structure.standard_normal((8, DIM)).astype(np.float32)
    centres = structure.standard_normal((40, 8)).astype(np.float32)
    rng = np.random.default_rng(seed)
    points = centres[rng.integers(0, 40, n)] + 0.5 * rng.standard_normal((n, 8))
    vectors = np.maximum(points.astype(np.float32) @ basis, 0)
    vectors += 0.01 * np.abs(rng.standard_normal((n, DIM)))
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(tile ids, 4000 vectors, 50 held-out queries); ids are not row numbers."""
    return np.arange(4000, dtype=np.int64) * 7 + 3, clustered(4000, 1), clustered(50, 2)


def recall_at_10(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth, strict=True)]))


def test_kind_follows_count_and_thresholds():
    assert [choose_kind(n) for n in (10, 100_000, 100_001)] == ["flat", "flat", "ivfpq"]
    assert [choose_kind(n, exact_max=100) for n in (100, 101)] == ["flat", "ivfpq"]


@pytest.mark.parametrize(
    ("thresholds", "kind"),
    [({"exact_max": 1000}, "ivfpq")],
)
def test_approximate_recall_against_exact(data, thresholds, kind):
    ids, vectors, queries = data
    exact = VectorIndex.build(ids, vectors)
    approximate = VectorIndex.build(ids, vectors, **thresholds)
    assert (exact.kind, approximate.kind) == ("flat", kind)
    exact_scores, exact_ids = exact.search(queries, 10)
    scores, found = approximate.search(queries, 10)
    assert recall_at_10(found, exact_ids) >= 0.99
    # scores are the cosines, best first (IVF re-ranks from the float16
    # rows the database stores: within float16's rounding)
    by_id = dict(zip(ids.tolist(), vectors, strict=True))
    expected = np.array(
        [[by_id[i] @ q for i in row] for row, q in zip(found, queries, strict=True)]
    )
    np.testing.assert_allclose(scores, expected, atol=FLOAT16_ROUNDING if kind == "ivfpq" else 1e-5)
    assert (np.diff(scores, axis=1) <= 1e-6).all()


@pytest.mark.parametrize("kind", KINDS)
def test_batched_search_equals_single_searches(data, kind):
    ids, vectors, queries = data
    index = VectorIndex.build(ids, vectors, kind=kind)
    scores, found = index.search(queries, 10)
    singles = [index.search(query[None, :], 10) for query in queries]
    np.testing.assert_array_equal(found, np.vstack([f for _, f in singles]))
    np.testing.assert_allclose(scores, np.vstack([s for s, _ in singles]), rtol=1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_add_remove_save_load_round_trip(tmp_path, data, kind):
    ids, vectors, queries = data
    index = VectorIndex.build(ids[:3000], vectors[:3000], kind=kind)
    removed = ids[:3000:3]
    index.remove(removed)
    index.remove([999_999])  # unknown: ignored
    index.add(ids[3000:], vectors[3000:])
    live = np.setdiff1d(ids, removed)
    assert index.count == len(live)
    scores, found = index.search(queries, 10)
    assert not np.isin(found, removed).any()
    assert np.isin(found, live).all()

    path = tmp_path / "db.gpkg.faiss"
    index.save(path, IndexState(generation=3, max_id=int(ids.max()), count=index.count, dim=DIM))
    loaded = VectorIndex.load(path)
    assert loaded is not None
    again, state = loaded
    assert (again.kind, again.count, again.dim, state.generation) == (kind, len(live), DIM, 3)
    np.testing.assert_array_equal(again.search(queries, 10)[1], found)
    np.testing.assert_allclose(again.search(queries, 10)[0], scores, rtol=1e-6)
    assert vectors_path(path).exists() == (kind == "ivfpq")

    # a removed tile comes back (new vectors), then everything goes through a second save
    again.add(removed[:5], vectors[np.searchsorted(ids, removed[:5])])
    again.remove(ids[1:3])
    again.save(path, IndexState(4, int(ids.max()), again.count, DIM))
    third, _ = VectorIndex.load(path)
    assert third.count == len(live) + 5 - 2
    target = vectors[np.searchsorted(ids, removed[0])]
    top_scores, top_ids = third.search(target[None, :], 1)
    assert top_ids[0, 0] == removed[0]
    assert top_scores[0, 0] == pytest.approx(1.0, abs=FLOAT16_ROUNDING)
    assert not np.isin(third.search(queries, 20)[1], ids[1:3]).any()


def test_truncated_or_mismatched_files_are_detected(tmp_path, data):
    ids, vectors, _ = data
    for kind in KINDS:
        index = VectorIndex.build(ids, vectors, kind=kind)
        path = tmp_path / f"{kind}.faiss"
        index.save(path, IndexState(1, int(ids.max()), index.count, DIM))
        assert VectorIndex.load(path) is not None
        whole = path.read_bytes()
        path.write_bytes(whole[:-100])  # truncated
        assert VectorIndex.load(path) is None
        path.write_bytes(whole[:1000])
        assert VectorIndex.load(path) is None
        path.write_bytes(whole)
        assert VectorIndex.load(path) is not None
        if kind == "ivfpq":
            with open(vectors_path(path), "r+b") as f:
                f.truncate(f.seek(0, 2) - 4)
            assert VectorIndex.load(path) is None
        path.with_name(path.name + ".json").write_text('{"generation": 1}')
        assert VectorIndex.load(path) is None
    assert VectorIndex.load(tmp_path / "missing.faiss") is None


def test_concurrent_savers_never_overwrite_saved_vectors(tmp_path, data):
    """Two copies of one IVF index (two processes) each add different rows and save. The
    second may not append where the first appended: a reader of the first's save would then
    re-rank with the second's vectors. It writes a whole new vectors file instead."""
    ids, vectors, queries = data
    path = tmp_path / "db.gpkg.faiss"
    index = VectorIndex.build(ids[:3000], vectors[:3000], kind="ivfpq")
    index.save(path, IndexState(1, 0, index.count, DIM))
    first, _ = VectorIndex.load(path)
    second, _ = VectorIndex.load(path)
    first.add(ids[3000:3500], vectors[3000:3500])
    first.save(path, IndexState(2, 0, first.count, DIM))
    reader, _ = VectorIndex.load(path)
    added = vectors[3000:3010]
    before = reader.search(added, 1)
    np.testing.assert_allclose(before[0], 1.0, atol=FLOAT16_ROUNDING)  # each finds itself

    second.add(ids[3500:], vectors[3500:])
    second.save(path, IndexState(2, 0, second.count, DIM))
    after = reader.search(added, 1)
    np.testing.assert_array_equal(after[1], before[1])
    np.testing.assert_allclose(after[0], before[0], rtol=1e-6)
    last, _ = VectorIndex.load(path)
    np.testing.assert_array_equal(last.search(queries, 10)[1], second.search(queries, 10)[1])
    assert last.count == 3500 and not np.isin(last.search(added, 10)[1], ids[3000:3500]).any()


def write_tiles(store: Store, path: str, vectors: np.ndarray) -> list[int]:
    records = [
        (TileRecord(None, path, Window(i, 0, 1, 1), None, None, None, None, 0.0), v, v)
        for i, v in enumerate(vectors)
    ]
    return store.write_batch(records).added


def test_open_index_catches_up_and_switches_kind_at_thresholds(tmp_path, data):
    _, vectors, queries = data
    thresholds = {"exact_max": 500, "augment": 0}  # the rows are the vectors: exact truth below
    with Store(tmp_path / "db.gpkg", create=True) as store:
        write_tiles(store, "a.tif", vectors[:400])
        assert open_index(store, **thresholds).kind == "flat"
        write_tiles(store, "b.tif", vectors[400:1000])
        index = open_index(store, **thresholds)  # caught up past exact_max: rebuilt as IVF
        assert (index.kind, index.count) == ("ivfpq", 1000)
        write_tiles(store, "c.tif", vectors[1000:1100])
        index = open_index(store, **thresholds)  # caught up, same kind
        assert (index.kind, index.count) == ("ivfpq", 1100)
        write_tiles(store, "d.tif", vectors[1100:2000])
        index = open_index(store, **thresholds)
        assert (index.kind, index.count) == ("ivfpq", 2000)
        assert vectors_path(index_path(store.path)).exists()
        ids, stored = store.vectors()
        truth = ids[np.argsort(-(queries @ stored.T), axis=1)[:, :10]]
        assert recall_at_10(index.search(queries, 10)[1], truth) >= 0.99

        removed = store.remove_files(["b.tif", "d.tif"])  # deleted: rebuilt from the database
        index = open_index(store, **thresholds)
        assert (index.kind, index.count) == ("flat", 500)
        assert not np.isin(index.search(queries, 50)[1], removed).any()
        assert not vectors_path(index_path(store.path)).exists()
        loaded, state = VectorIndex.load(index_path(store.path))
        assert (loaded.kind, state.generation) == ("flat", store.generation)


def test_describe_reports_kind_settings_and_memory(data):
    ids, vectors, _ = data
    described = {kind: VectorIndex.build(ids, vectors, kind=kind).describe() for kind in KINDS}
    assert described["flat"]["bytes_per_million"] == (4 * DIM + 8) * 1_000_000
    assert described["ivfpq"]["settings"]["nprobe"] >= 1
    for kind, facts in described.items():
        assert (facts["kind"], facts["vectors"], facts["dim"]) == (kind, len(ids), DIM)
    # IVF keeps 8-bit codes in memory and the float16 rows on disk
    assert described["ivfpq"]["bytes_per_million"] < described["flat"]["bytes_per_million"] / 3
    on_disk = described["ivfpq"]["disk_bytes_per_million"] - described["ivfpq"]["bytes_per_million"]
    assert on_disk == 2 * DIM * 1_000_000


@pytest.mark.parametrize("kind", KINDS)
def test_asking_for_every_tile_returns_each_live_tile_once(data, kind):
    """Filtered searches grow k up to the count: IVF then probes more lists."""
    ids, vectors, queries = data
    index = VectorIndex.build(ids, vectors, kind=kind)
    index.remove(ids[:500])
    scores, found = index.search(queries[:2], index.count)
    for row_scores, row in zip(scores, found, strict=True):
        assert sorted(row.tolist()) == ids[500:].tolist()
        assert (np.diff(row_scores) <= 1e-6).all()


@pytest.mark.parametrize("kind", KINDS)
def test_score_all_is_every_live_tiles_exact_score(data, kind, tmp_path):
    """What tile similarity maps read: one exact score per tile, removed tiles left out, from
    memory and (IVF) from the vectors file and the rows added since it was saved."""
    ids, vectors, queries = data
    index = VectorIndex.build(ids[:3000], vectors[:3000], kind=kind)
    if kind == "ivfpq":  # the saved file's rows plus rows added after loading it
        index.save(tmp_path / "x.faiss", IndexState(1, int(ids[2999]), 3000, DIM))
        index, _ = VectorIndex.load(tmp_path / "x.faiss")
    index.add(ids[3000:], vectors[3000:])
    index.remove(ids[::5])
    found, scores = index.score_all(queries[0])
    live = np.ones(len(ids), dtype=bool)
    live[::5] = False
    order = np.argsort(found)
    assert np.array_equal(found[order], ids[live])
    tolerance = FLOAT16_ROUNDING if kind == "ivfpq" else 1e-5
    np.testing.assert_allclose(scores[order], vectors[live] @ queries[0], atol=tolerance)


def test_a_streamed_build_equals_the_whole_build(tmp_path, data):
    """build_from never holds all vectors: IVF trains on a sample, is filled batch by batch and
    writes its re-rank rows straight to the vectors file it is saved with."""
    ids, vectors, queries = data
    whole = VectorIndex.build(ids, vectors, kind="ivfpq")
    path = tmp_path / "db.gpkg.faiss"

    def batches():
        for start in range(0, len(ids), 700):
            yield ids[start : start + 700], vectors[start : start + 700]

    def sample(size):
        return vectors[np.sort(np.random.default_rng(0).choice(len(ids), size, replace=False))]

    streamed = VectorIndex.build_from(len(ids), DIM, batches, sample, kind="ivfpq", spill=path)
    assert not streamed._vectors._tail  # nothing kept in memory
    np.testing.assert_array_equal(streamed.search(queries, 10)[1], whole.search(queries, 10)[1])
    streamed.save(path, IndexState(1, int(ids.max()), streamed.count, DIM))
    loaded, _ = VectorIndex.load(path)
    np.testing.assert_array_equal(loaded.search(queries, 10)[1], whole.search(queries, 10)[1])
    assert not list(tmp_path.glob("*.tmp*"))


def test_a_build_killed_half_way_leaves_no_index_or_a_whole_one(tmp_path, data):
    """kill -9 while an IVF index is being built and saved: the next search finds the old
    index, or none and builds it again, never half of one."""
    ids, vectors, queries = data
    db = tmp_path / "db.gpkg"
    with Store(db, create=True) as store:
        write_tiles(store, "a.tif", vectors)
    build = f"from geosearch.index import open_index\nfrom geosearch.store import Store\n" \
            f"open_index(Store({str(db)!r}), exact_max=500)"  # fmt: skip
    process = subprocess.Popen([sys.executable, "-c", build], cwd=ROOT)
    deadline = time.monotonic() + 120
    while process.poll() is None and time.monotonic() < deadline:
        if list(tmp_path.glob("db.gpkg.faiss*.tmp*")):  # the build is writing its files
            break
        time.sleep(0.002)
    assert process.poll() is None, "the build finished before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert VectorIndex.load(index_path(db)) is None  # nothing saved half-way
    with Store(db) as store:
        index = open_index(store, exact_max=500)
        stored_ids = store.vectors()[0]
    assert (index.kind, index.count) == ("ivfpq", 4000)
    rows = index.vectors(stored_ids)  # augmented: what the index ranks by
    truth = stored_ids[np.argsort(-(queries @ rows.T), axis=1)[:, :10]]
    assert recall_at_10(index.search(queries, 10)[1], truth) >= 0.95


def augmented_by_hand(vectors: np.ndarray, neighbours: int) -> np.ndarray:
    """Each vector plus its ``neighbours`` nearest others weighted by cosine, unit length."""
    scores = vectors @ vectors.T
    np.fill_diagonal(scores, -np.inf)
    near = np.argsort(-scores, axis=1)[:, :neighbours]
    weights = np.take_along_axis(scores, near, 1).clip(0)
    summed = vectors + np.einsum("rk,rkd->rd", weights, vectors[near])
    return summed / np.linalg.norm(summed, axis=1, keepdims=True)


@pytest.mark.parametrize("kind", KINDS)
def test_a_databases_index_ranks_each_vector_with_its_nearest_neighbours(tmp_path, data, kind):
    """Database-side augmentation: open_index's rows are each stored vector plus its 5 nearest
    others (exact for flat; IVF finds them in a few lists: most rows the same), the database
    keeps the vectors themselves, and tiles added later are augmented against the indexed rows
    until the rows have grown 1.5x, when they are all augmented again."""
    _, vectors, _ = data
    exact_max = 5000 if kind == "flat" else 500
    with Store(tmp_path / "db.gpkg", create=True) as store:
        write_tiles(store, "a.tif", vectors[:2000])
        index = open_index(store, exact_max=exact_max)
        ids, stored = store.vectors()
        assert (index.kind, index.augment, index.augmented_rows) == (kind, 5, 2000)
        expected = augmented_by_hand(stored, 5)
        same = np.isclose(index.vectors(ids), expected, atol=2e-3).all(axis=1)
        assert same.mean() == 1.0 if kind == "flat" else same.mean() > 0.8
        assert not np.isclose(stored, expected, atol=2e-3).all(axis=1).any()

        write_tiles(store, "b.tif", vectors[2000:2500])  # caught up: augmented as added
        index = open_index(store, exact_max=exact_max)
        new_ids, new = store.vectors(after_id=int(ids.max()))
        assert (index.count, index.augmented_rows) == (2500, 2000)
        rows = index.vectors(new_ids)
        assert np.allclose(np.linalg.norm(rows, axis=1), 1, atol=1e-3)
        assert (np.sum(rows * new, axis=1) < 0.999).all()  # moved toward their neighbours

        write_tiles(store, "c.tif", vectors[2500:3100])  # 3100 > 1.5 x 2000: a new pass
        index = open_index(store, exact_max=exact_max)
        assert (index.count, index.augmented_rows) == (3100, 3100)
        loaded, _ = VectorIndex.load(index_path(store.path))
        assert (loaded.augment, loaded.augmented_rows) == (5, 3100)
