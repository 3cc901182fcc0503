"""A similar kind of place (issue 21): EuroSAT RGB (``../shared/data/eurosat``, 10 class folders
of 500 64 x 64 JPEGs), a seeded sample of N a class (100, and all 500 in full runs). Every
picture is a query, the rest of the sample the candidates, relevant = the same folder.

- geosearch: a plain-image database ingested through the public API (default settings, or the
  dotted overrides given), each stored picture ranked against every other by its stored vector
  moved as ``similar`` moves it (query expansion, ``search.expansion``) against the rows of
  the database's index (augmented: each stored vector plus its 5 nearest, weighted by cosine)
  in numpy; ``similar`` does the same: a sample is checked through it and timed. Beside it the
  index rows without expansion, the stored vectors alone, and the stored vectors augmented
  exactly by 0 (as before the index was augmented) and 10 neighbours, the query expanded;
- baselines in the same run: the shipped MobileNet's raw 1024-d output (the database's cnn
  extractor, before any standardisation) with plain cosine, and the same centred (the
  collection's mean subtracted);
- 20 simulated marks, for a seeded sample of queries: the first 10 results marked good/bad by
  label, the next 10 shown by a ``feedback`` round marked too, then ``feedback`` over the whole
  database with the 20 marks: AP of the class over the unmarked pictures. Beside it, Rocchio
  (1, 0.75, 0.25) with the same marks on the raw output;
- near copies (the same picture, not its kind): a seeded sample of pictures made into near
  copies three ways (``NEAR_COPY_KINDS``: cropped a little about the centre, cut off at one
  corner, halved and brightened), searched through ``geosearch.similar``; top-1 / in the top
  10 = its original found there; the first way also without the copy stage (the vectors
  alone). And near copies of pictures the database does not hold: the share named a copy;
- a geo variant: the pictures written as GeoTIFFs (EPSG:32633, 10 m pixels), one per place,
  10 km apart, ingested as a geo database and queried through ``geosearch.similar`` (second
  stage included), own tile excluded.

mAP@R: per query, the precision at each relevant item within the first R results, summed and
divided by R (R = the other items of its class); averaged over queries. Costs beside each:
ingest tiles/s, bytes a tile (database + index files), a query's p50 ms.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageEnhance

from bench.protocols.common import (
    DATA,
    emit,
    floored_head,
    index_rows,
    ingest_into,
    slug,
    unit_rows,
    write_raster,
)
from geosearch import GeosearchError
from geosearch.catalog import open_database
from geosearch.config import FeedbackSettings, Settings
from geosearch.features import prepare_batch
from geosearch.feedback import rocchio
from geosearch.orientation import ALL_ORIENTATIONS
from geosearch.search import expansion
from geosearch.store import Store, normalise_path

EUROSAT = DATA / "eurosat"
PER_CLASS = (100, 500)  # pictures a class: --quick runs the first only
SAMPLE_SEED = 21
TOP = 10  # P@10, and the page of results a user marks
FEEDBACK_PER_CLASS = 10  # queries a class for the simulated marks
ROCCHIO = (1.0, 0.75, 0.25)  # alpha, beta, gamma of the baseline's feedback
TIMED_QUERIES = 30  # similar calls timed (and checked against the numpy ranking)
GEO_CRS = "EPSG:32633"
GEO_PIXEL_M = 10.0
GEO_SPACING_M = 10_000.0  # between places: no two footprints touch
AUGMENT = (0, 10)  # database-side augmentation by other neighbour counts (the index: 5), exactly
GEO_QUERIES = 300  # similar calls per geo database: a seeded sample of its pictures
NEAR_COPIES = 200  # pictures of the sample searched as near copies of themselves
NEAR_COPY_CROP = 3  # px cut from each side of a near copy before it is resized back
NEAR_COPY_QUALITY = 75  # its JPEG quality


@dataclass(frozen=True)
class KindsSet:
    """The pictures of one sample and the set's name; a picture's label is its class folder."""

    name: str
    paths: list[Path]

    @property
    def labels(self) -> np.ndarray:
        return np.array([path.parent.name for path in self.paths])


def eurosat_sample(per_class: int, seed: int = SAMPLE_SEED) -> KindsSet:
    """``per_class`` pictures of each class folder, drawn with a fixed seed (all if fewer)."""
    rng = np.random.default_rng(seed)
    paths = []
    for folder in sorted(p for p in EUROSAT.iterdir() if p.is_dir()):
        files = sorted(folder.glob("*.jpg"))
        picks = rng.choice(len(files), size=min(per_class, len(files)), replace=False)
        paths += [files[i] for i in sorted(picks)]
    return KindsSet(f"eurosat, {per_class} a class", paths)


# -- metrics --------------------------------------------------------------------------------


def map_at_r(hits: np.ndarray, relevant: int) -> float:
    """mAP@R of one ranking: ``hits`` (bool, best first) over at least its first R = ``relevant``
    places; the precision at each hit within the first R, summed, divided by R."""
    if relevant == 0:
        return 0.0
    first = np.asarray(hits[:relevant], dtype=bool)
    precision = np.cumsum(first) / np.arange(1, len(first) + 1)
    return float(precision[first].sum() / relevant)


def average_precision(hits: np.ndarray, relevant: int) -> float:
    """AP of one whole ranking: the mean precision at each relevant item, those never ranked
    counting 0 (``relevant``: how many there are)."""
    if relevant == 0:
        return 0.0
    hits = np.asarray(hits, dtype=bool)
    precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float(precision[hits].sum() / relevant)


def kinds_metrics(
    rankings: Sequence[np.ndarray], labels: np.ndarray, queries: Sequence[int]
) -> dict[str, Any]:
    """mAP@R and P@10 over ``queries`` (rows), each with its ranking of the other rows."""
    maps, precisions = [], []
    for row, order in zip(queries, rankings, strict=True):
        hits = labels[order] == labels[row]
        relevant = int((labels == labels[row]).sum()) - 1
        maps.append(map_at_r(hits, relevant))
        precisions.append(float(hits[:TOP].sum()) / TOP)
    return {
        "map_at_r": round(float(np.mean(maps)), 4),
        f"p_at_{TOP}": round(float(np.mean(precisions)), 4),
        "queries": len(maps),
    }


def cosine_rankings(
    vectors: np.ndarray,
    rows: Sequence[int],
    chunk: int = 500,
    candidates: np.ndarray | None = None,
) -> list[np.ndarray]:
    """Each row's ranking of every other row by cosine (unit rows: dot product), best first;
    scored against ``candidates`` (the rows' augmented form, say) if given."""
    candidates = vectors if candidates is None else candidates
    rankings = []
    rows = list(rows)
    for start in range(0, len(rows), chunk):
        part = rows[start : start + chunk]
        scores = vectors[part] @ candidates.T
        scores[np.arange(len(part)), part] = -np.inf
        order = np.argsort(-scores, axis=1, kind="stable")
        rankings += [ranked[:-1] for ranked in order]  # the query itself sorts last
    return rankings


def expanded_rankings(
    vectors: np.ndarray,
    rows: Sequence[int],
    neighbours: int,
    chunk: int = 500,
    candidates: np.ndarray | None = None,
    top: int = 0,
) -> list[np.ndarray]:
    """Each row's ranking of every other row as ``similar`` searches it: the row as it is,
    moved toward its ``neighbours`` nearest other rows (``geosearch.search.expansion``), scored
    against ``candidates`` (default: the rows; a database's index rows are augmented). With
    ``top``, the first ``top`` are re-ranked as ``similar(top=top)`` returns them, each scored
    at least its own row's cosine (``geosearch.search.own_vectors_floor``)."""
    candidates = vectors if candidates is None else candidates
    first = cosine_rankings(vectors, rows, chunk, candidates) if neighbours > 0 else None
    rankings = []
    rows = list(rows)
    for start in range(0, len(rows), chunk):
        part = rows[start : start + chunk]
        moved = vectors[part]
        if first is not None:
            nearest = [first[start + n][:neighbours] for n in range(len(part))]
            moved = np.stack([
                expansion(vectors[row], candidates[near] @ vectors[row], candidates[near])
                for row, near in zip(part, nearest, strict=True)
            ])  # fmt: skip
        scores = moved @ candidates.T
        scores[np.arange(len(part)), part] = -np.inf
        order = np.argsort(-scores, axis=1, kind="stable")
        if top:
            own = vectors[part] @ vectors.T
            order = [floored_head(ranked, scores[n], own[n], top) for n, ranked in enumerate(order)]
        rankings += [ranked[:-1] for ranked in order]
    return rankings


def augmented(vectors: np.ndarray, neighbours: int) -> np.ndarray:
    """Database-side augmentation (DBA): each unit row plus its ``neighbours`` nearest other
    rows weighted by their cosine (negative counted 0), back to unit length, exactly (what
    ``geosearch.index`` builds, at other neighbour counts)."""
    scores = vectors @ vectors.T
    np.fill_diagonal(scores, -np.inf)
    near = np.argsort(-scores, axis=1)[:, :neighbours]
    weights = np.take_along_axis(scores, near, axis=1).clip(0)
    return unit_rows(vectors + (vectors[near] * weights[:, :, None]).sum(axis=1))


# -- databases ------------------------------------------------------------------------------


def fresh_db(path: Path) -> Path:
    """``path`` with no database (nor index files) left from an earlier run."""
    for old in path.parent.glob(path.name + "*"):
        old.unlink()
    return path


def bytes_per_tile(db: Path, tiles: int) -> int:
    """The database file and its index files (``<db>.faiss*``), per tile."""
    files = [db, *db.parent.glob(db.name + ".faiss*")]
    return round(sum(f.stat().st_size for f in files if f.is_file()) / tiles)


def stored(db: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(ids, unit vectors as float32, file paths) of every stored tile, by id."""
    with Store(db) as store:
        ids, vectors = store.vectors()
        paths = [tile.path for tile in store.tiles(ids.tolist())]
    return ids, unit_rows(vectors.astype(np.float32)), paths


def rows_by_path(paths: Sequence[Path], stored_paths: Sequence[str]) -> np.ndarray:
    """For each picture, its row among the stored tiles (one tile a picture)."""
    row_of = {path: n for n, path in enumerate(stored_paths)}
    return np.array([row_of[normalise_path(path)] for path in paths])


def raw_cnn(db: Path, paths: Sequence[Path], batch: int = 64) -> tuple[np.ndarray, float]:
    """The cnn extractor's raw output for each picture, read and prepared as the database
    reads it, and the seconds it took."""
    started = time.perf_counter()
    with open_database(db) as catalog:
        [cnn] = [e for e in catalog.extractors() if e.name == "cnn"]
        out = []
        for start in range(0, len(paths), batch):
            tiles = []
            for path in paths[start : start + batch]:
                _, read, _ = catalog.read(str(path))
                tiles += read
            out.append(cnn.extract(prepare_batch(tiles, catalog.manifest, catalog.pad_to())))
    return np.vstack(out), time.perf_counter() - started


def timed_similar(
    db: Path, paths: Sequence[Path], rankings: Sequence[np.ndarray], tile_ids: np.ndarray
) -> dict[str, Any]:
    """ms of ``geosearch.similar(db, [picture], top=10)`` for an even sample of TIMED_QUERIES
    pictures, and the share whose top 10 equals the numpy ranking's (``rankings``: per picture,
    the other pictures best first; ``tile_ids``: each picture's tile id)."""
    from geosearch import similar

    picks = sorted(set(np.linspace(0, len(paths) - 1, TIMED_QUERIES).astype(int).tolist()))
    similar(db, [paths[picks[0]]], top=TOP)  # warm-up: model, index, page cache
    times, agree = [], []
    for n in picks:
        started = time.perf_counter()
        [result] = similar(db, [paths[n]], top=TOP)
        times.append((time.perf_counter() - started) * 1000)
        found = [match.tile.id for match in result.matches]
        agree.append(found == tile_ids[rankings[n][:TOP]].tolist())
    return {
        "query_ms_p50": round(float(np.median(times)), 2),
        "timed_queries": len(picks),
        "search_agrees": round(float(np.mean(agree)), 3),
    }


def _cropped_centre(picture: Any, _number: int = 0) -> Any:
    w, h, cut = picture.width, picture.height, NEAR_COPY_CROP
    return picture.crop((cut, cut, w - cut, h - cut)).resize((w, h), Image.Resampling.BILINEAR)


def _cropped_corner(picture: Any, _number: int = 0) -> Any:
    w, h = picture.width, picture.height
    kept = picture.crop((0, 0, round(0.92 * w), round(0.92 * h)))
    return kept.resize((w, h), Image.Resampling.BILINEAR)


def _halved_brighter(picture: Any, _number: int = 0) -> Any:
    half = picture.resize((picture.width // 2, picture.height // 2), Image.Resampling.BILINEAR)
    return ImageEnhance.Brightness(half).enhance(1.2)


def _turned_cropped(picture: Any, number: int) -> Any:
    """Cropped as the first kind, then turned or mirrored: each of the seven ways that are not
    the identity in turn (by the picture's number)."""
    orientation = ALL_ORIENTATIONS[1 + number % 7]
    bands_first = np.moveaxis(np.asarray(_cropped_centre(picture)), -1, 0)
    return Image.fromarray(np.moveaxis(orientation.apply(bands_first), 0, -1))


# How near copies are made: (name, transformation, file suffix, settings searched with). A copy
# stage tuned to one would be caught by the others.
NEAR_COPY_KINDS = (
    (f"cropped {NEAR_COPY_CROP} px a side, resized back, JPEG q{NEAR_COPY_QUALITY}",
     _cropped_centre, ".jpg", {}),
    (f"8 % cut off right and bottom, resized back, JPEG q{NEAR_COPY_QUALITY}",
     _cropped_corner, ".jpg", {}),
    ("half size, 20 % brighter, PNG", _halved_brighter, ".png", {}),
    (f"cropped {NEAR_COPY_CROP} px a side, turned or mirrored, JPEG q{NEAR_COPY_QUALITY}; "
     "searched with any orientation", _turned_cropped, ".jpg", {"search.orientations": "any"}),
)  # fmt: skip


def near_copies(
    paths: Sequence[Path], folder: Path, kind: int = 0, count: int = NEAR_COPIES
) -> list[tuple[Path, Path]]:
    """(copy, original) for ``count`` seeded pictures of ``paths``, each made into a near copy
    in ``folder`` the way ``NEAR_COPY_KINDS[kind]`` says."""
    _, transform, suffix, _ = NEAR_COPY_KINDS[kind]
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(SAMPLE_SEED)
    picks = sorted(rng.choice(len(paths), min(count, len(paths)), replace=False))
    pairs = []
    for n in picks:
        original = paths[n]
        copy = folder / f"{kind}_{n:05d}_{original.stem}{suffix}"
        with Image.open(original) as picture:
            transform(picture.convert("RGB"), int(n)).save(copy, quality=NEAR_COPY_QUALITY)
        pairs.append((copy, original))
    return pairs


def near_copy_metrics(
    db: Path, pairs: Sequence[tuple[Path, Path]], overrides: dict[str, Any], kind: int = 0
) -> dict[str, Any]:
    """Share of near copies whose original ``geosearch.similar`` ranks first, and within the
    top 10, searched with the dotted settings ``overrides``."""
    from geosearch import similar

    settings = Settings().with_overrides(overrides | NEAR_COPY_KINDS[kind][3])
    results = similar(db, [copy for copy, _ in pairs], top=TOP, settings=settings)
    ranks = []
    for (_, original), result in zip(pairs, results, strict=True):
        found = [match.tile.path for match in result.matches] + [normalise_path(original)]
        ranks.append(min(found.index(normalise_path(original)), TOP))  # TOP: not in the top
    ranks_array = np.array(ranks)
    return {
        "near_copy_top1": round(float((ranks_array == 0).mean()), 4),
        f"near_copy_top{TOP}": round(float((ranks_array < TOP).mean()), 4),
        "queries": len(ranks),
        "near_copy": NEAR_COPY_KINDS[kind][0],
    }


def false_copies(db: Path, kinds: KindsSet, folder: Path, kind: int = 0) -> dict[str, Any]:
    """Near copies (made the ``kind`` way) of pictures of the set that the database does not
    hold: the share whose results name a copy anyway (a score above 1: the copy stage's)."""
    from geosearch import similar

    held = set(kinds.paths)
    others = [p for p in eurosat_sample(PER_CLASS[-1]).paths if p not in held]
    if not others:  # the sample is the whole set
        return {"false_copy_share": None, "queries": 0, "note": "no picture left out"}
    pairs = near_copies(others, folder, kind)
    settings = Settings().with_overrides(NEAR_COPY_KINDS[kind][3])
    results = similar(db, [copy for copy, _ in pairs], top=TOP, settings=settings)
    named = [bool(r.matches) and r.matches[0].score > 1.0 for r in results]
    return {
        "false_copy_share": round(float(np.mean(named)), 4),
        "queries": len(pairs),
        "near_copy": NEAR_COPY_KINDS[kind][0],
    }


# -- 20 simulated marks ---------------------------------------------------------------------


def feedback_queries(labels: np.ndarray, per_class: int = FEEDBACK_PER_CLASS) -> list[int]:
    """A seeded sample of ``per_class`` rows of each class."""
    rng = np.random.default_rng(SAMPLE_SEED)
    rows = []
    for label in sorted(set(labels.tolist())):
        members = np.flatnonzero(labels == label)
        rows += sorted(rng.choice(members, size=min(per_class, len(members)), replace=False))
    return [int(row) for row in rows]


def rocchio_ranking(vectors: np.ndarray, row: int, good: list[int], bad: list[int]) -> np.ndarray:
    """Every row ranked by geosearch's Rocchio query (ROCCHIO weights) on unit ``vectors``."""
    alpha, beta, gamma = ROCCHIO
    weights = FeedbackSettings(method="rocchio", alpha=alpha, beta=beta, gamma=gamma)
    moved = rocchio(vectors[row], vectors[good], vectors[bad], weights)
    return np.argsort(-(vectors @ moved), kind="stable")


def unmarked_ap(order: np.ndarray, labels: np.ndarray, row: int, marked: set[int]) -> float:
    """AP of the query's class over a ranking of rows, the query and the marked rows left out."""
    left = [r for r in order.tolist() if r != row and r not in marked]
    hits = labels[left] == labels[row]
    relevant = int((labels == labels[row]).sum()) - 1
    relevant -= sum(1 for r in marked if labels[r] == labels[row])
    return average_precision(hits, relevant)


def simulated_marks(
    db: Path,
    kinds: KindsSet,
    rows: np.ndarray,
    ids: np.ndarray,
    vectors: np.ndarray,
    raw: np.ndarray,
    queries: Sequence[int],
) -> dict[str, dict[str, Any]]:
    """Per method, AP over the unmarked pictures after 20 marks (and before: the plain ranking
    over the same pictures). geosearch: ``similar`` (top 10), a ``feedback`` round with those
    10 marked (the next 10), then ``feedback`` with all 20 over the whole database. Rocchio
    on the raw output with the same marks. ``rows``: each picture's stored row; ``vectors``
    and ``raw``: unit rows in picture order."""
    from geosearch import feedback, similar

    labels = kinds.labels
    picture_of = {int(ids[stored_row]): n for n, stored_row in enumerate(rows)}
    figures: dict[str, list[float]] = {
        "geosearch before": [],
        "geosearch after": [],
        "raw before": [],
        "raw after": [],
    }
    seconds = []
    for number, row in enumerate(queries):
        session = f"kinds-{number}"

        def marks(shown: list[int], row: int = row) -> tuple[list[int], list[int], list[int]]:
            """(good ranks, bad ranks, pictures) of a page of results, marked by label."""
            pictures = [picture_of[tile_id] for tile_id in shown]
            good = [r for r, p in enumerate(pictures, start=1) if labels[p] == labels[row]]
            bad = [r for r, p in enumerate(pictures, start=1) if labels[p] != labels[row]]
            return good, bad, pictures

        [first] = similar(db, [kinds.paths[row]], top=TOP, session=session)
        good, bad, page1 = marks([m.tile.id for m in first.matches])
        second = feedback(db, session, good, bad, top=TOP)
        good, bad, page2 = marks([m.tile.id for m in second.matches])
        started = time.perf_counter()
        whole = feedback(db, session, good, bad, top=len(ids))
        seconds.append(time.perf_counter() - started)
        marked = set(page1 + page2)
        ranked = np.array([picture_of[m.tile.id] for m in whole.matches], dtype=int)
        figures["geosearch after"].append(unmarked_ap(ranked, labels, row, marked))
        plain = np.argsort(-(vectors @ vectors[row]), kind="stable")
        figures["geosearch before"].append(unmarked_ap(plain, labels, row, marked))
        good_rows = [p for p in marked if labels[p] == labels[row]]
        bad_rows = [p for p in marked if labels[p] != labels[row]]
        raw_plain = np.argsort(-(raw @ raw[row]), kind="stable")
        figures["raw before"].append(unmarked_ap(raw_plain, labels, row, marked))
        moved = rocchio_ranking(raw, row, good_rows, bad_rows)
        figures["raw after"].append(unmarked_ap(moved, labels, row, marked))
    common = {"marks": 2 * TOP, "queries": len(queries)}
    return {
        "geosearch feedback, 20 marks": common
        | {
            "ap_after_marks": round(float(np.mean(figures["geosearch after"])), 4),
            "ap_before_marks": round(float(np.mean(figures["geosearch before"])), 4),
            "whole_db_round_ms_p50": round(float(np.median(seconds)) * 1000, 1),
        },
        "mobilenet raw, rocchio 1/0.75/0.25, 20 marks": common
        | {
            "ap_after_marks": round(float(np.mean(figures["raw after"])), 4),
            "ap_before_marks": round(float(np.mean(figures["raw before"])), 4),
        },
    }


# -- the geo variant ------------------------------------------------------------------------


def write_geo_pictures(kinds: KindsSet, folder: Path) -> KindsSet:
    """Each picture as a GeoTIFF of its own place (GEO_CRS, GEO_PIXEL_M pixels) on a grid
    GEO_SPACING_M apart, in a folder named by its class (its label), written once."""
    import rasterio
    from PIL import Image

    side = int(np.ceil(np.sqrt(len(kinds.paths))))
    paths = []
    for n, picture in enumerate(kinds.paths):
        path = folder / picture.parent.name / f"{picture.stem}.tif"
        paths.append(path)
        if path.exists():
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        pixels = np.moveaxis(np.asarray(Image.open(picture).convert("RGB")), -1, 0)
        west = 300_000.0 + (n % side) * GEO_SPACING_M
        north = 5_000_000.0 - (n // side) * GEO_SPACING_M
        transform = rasterio.transform.from_origin(west, north, GEO_PIXEL_M, GEO_PIXEL_M)
        profile = {"dtype": "uint8", "crs": GEO_CRS, "nodata": None}
        write_raster(path, profile, pixels, transform, ("red", "green", "blue"))
    return KindsSet(f"{kinds.name}, georeferenced", paths)


def geo_variant(
    work: Path, kinds: KindsSet, overrides: dict[str, Any], label: str
) -> dict[str, dict[str, Any]]:
    """The pictures as far-apart GeoTIFFs in a geo database (``overrides``), each queried
    through ``geosearch.similar`` (top R, second stage included) for a seeded sample of
    GEO_QUERIES, and the stored vectors ranked alone (numpy) for comparison."""
    from geosearch import similar

    geo = write_geo_pictures(kinds, work / "kinds_geotiffs")
    db = fresh_db(work / f"kinds_geo{len(kinds.paths)}_{slug(label)}.gpkg")
    ingested = ingest_into(db, geo.paths, overrides)
    costs = {
        "ingest_tiles_per_s": round(ingested["tiles"] / ingested["ingest_s"], 1),
        "bytes_per_tile": bytes_per_tile(db, ingested["tiles"]),
    } | ingested
    ids, vectors, paths = stored(db)
    rows = rows_by_path(geo.paths, paths)
    labels = geo.labels
    relevant = int(np.max(np.unique(labels, return_counts=True)[1])) - 1
    queries = np.arange(len(geo.paths))
    if len(queries) > GEO_QUERIES:
        queries = np.sort(np.random.default_rng(SAMPLE_SEED).choice(queries, GEO_QUERIES, False))
    settings = Settings().with_overrides(overrides)
    picture_of = {int(ids[stored_row]): n for n, stored_row in enumerate(rows)}
    similar(db, [geo.paths[0]], top=relevant, settings=settings)  # warm-up
    rankings, times, located = [], [], []
    for row in queries:
        started = time.perf_counter()
        try:
            [result] = similar(db, [geo.paths[row]], top=relevant, settings=settings)
        except GeosearchError as exc:
            raise RuntimeError(f"{geo.paths[row]}: {exc}") from exc
        times.append((time.perf_counter() - started) * 1000)
        rankings.append(np.array([picture_of[m.tile.id] for m in result.matches], dtype=int))
        located.append(result.location is not None)
    searched = kinds_metrics(rankings, labels, queries.tolist())
    vectors_alone = kinds_metrics(
        cosine_rankings(vectors[rows], queries.tolist()), labels, queries.tolist()
    )
    return {
        f"{label}, similar (second stage)": searched
        | costs
        | {"query_ms_p50": round(float(np.median(times)), 2)}
        | {"located_share": round(float(np.mean(located)), 4)},
        f"{label}, stored vectors alone": vectors_alone
        | {"bytes_per_tile": costs["bytes_per_tile"]},
    }


# -- the family -----------------------------------------------------------------------------


def kinds_figures(
    work: Path,
    overrides: dict[str, Any] | None = None,
    per_class: int = 100,
    label: str = "geosearch default",
    baselines: bool = True,
    marks: bool = True,
    geo: bool = False,
    geo_overrides: dict[str, Any] | None = None,
) -> dict[str, dict[str, Any]]:
    """Figures per method on the EuroSAT sample of ``per_class`` a class, for a plain-image
    database ingested with ``overrides`` (dotted settings, e.g.
    ``{"features.band_stats.weight": 0}``): mAP@R, P@10 and costs; with ``baselines`` the raw
    and centred MobileNet output; with ``marks`` AP after 20 simulated marks (and Rocchio on
    the raw output); with ``geo`` the georeferenced variant (``geo_overrides`` added)."""
    overrides = overrides or {}
    kinds = eurosat_sample(per_class)
    labels = kinds.labels
    db = fresh_db(work / f"kinds_eurosat{per_class}_{slug(label)}.gpkg")
    ingested = ingest_into(db, kinds.paths, overrides)
    ids, stored_vectors, paths = stored(db)
    rows = rows_by_path(kinds.paths, paths)
    vectors = stored_vectors[rows]  # in picture order
    everyone = list(range(len(kinds.paths)))
    neighbours = overrides.get("search.expansion", Settings().search.expansion)
    candidates = index_rows(db, ids[rows])
    rankings = expanded_rankings(  # a user asking for R results: R = the others of a class
        vectors, everyone, neighbours, candidates=candidates, top=per_class - 1
    )
    page = expanded_rankings(vectors, everyone, neighbours, candidates=candidates, top=TOP)
    out = {
        label: kinds_metrics(rankings, labels, everyone)
        | {"expansion": neighbours}
        | {"ingest_tiles_per_s": round(ingested["tiles"] / ingested["ingest_s"], 1)}
        | {"bytes_per_tile": bytes_per_tile(db, ingested["tiles"]), "dim": vectors.shape[1]}
        | timed_similar(db, kinds.paths, page, ids[rows])
        | ingested
    }
    if neighbours:
        out[f"{label}, index rows without expansion"] = kinds_metrics(
            cosine_rankings(vectors, everyone, candidates=candidates), labels, everyone
        )
    out[f"{label}, stored vectors alone (no augmentation, no expansion)"] = kinds_metrics(
        cosine_rankings(vectors, everyone), labels, everyone
    )
    for kind in range(len(NEAR_COPY_KINDS)):
        copies = near_copies(kinds.paths, work / f"near_copies{per_class}", kind)
        name = "near copies" if kind == 0 else f"near copies ({kind})"
        out[f"{label}, {name}"] = near_copy_metrics(db, copies, overrides, kind)
        if kind == 0:  # what the copy stage adds to the vectors
            out[f"{label}, {name} without the copy stage"] = near_copy_metrics(
                db, copies, overrides | {"search.locate": False}, kind
            )
    for kind in (0, len(NEAR_COPY_KINDS) - 1):  # as they are, and turned
        name = "" if kind == 0 else f" ({kind})"
        out[f"{label}, near copies{name} of pictures it does not hold"] = false_copies(
            db, kinds, work / f"absent_copies{per_class}", kind
        )
    for augment in AUGMENT:  # 0: the index before it was augmented
        exact = augmented(vectors, augment)
        name = f"exact DBA {augment}" if augment else "no augmentation (as before)"
        out[f"{label}, stored vectors, {name}"] = kinds_metrics(
            expanded_rankings(vectors, everyone, neighbours, candidates=exact), labels, everyone
        ) | {"augment": augment, "expansion": neighbours}
    raw = None
    if baselines or marks:
        raw_values, seconds = raw_cnn(db, kinds.paths)
        raw = unit_rows(raw_values)
    if baselines:
        embed = {"embed_tiles_per_s": round(len(kinds.paths) / seconds, 1)}
        bytes_raw = {"bytes_per_tile": raw_values.shape[1] * 4, "dim": raw_values.shape[1]}
        for method, values in (
            ("mobilenet raw, cosine", raw),
            ("mobilenet raw centred, cosine", unit_rows(raw_values - raw_values.mean(axis=0))),
        ):
            started = time.perf_counter()
            ranked = cosine_rankings(values, everyone)
            ms = (time.perf_counter() - started) * 1000 / len(everyone)
            out[method] = (
                kinds_metrics(ranked, labels, everyone)
                | embed
                | bytes_raw
                | {"query_ms_mean": round(ms, 2), "query_note": "numpy brute force, chunked"}
            )
    if marks:
        queries = feedback_queries(labels)
        out |= simulated_marks(db, kinds, rows, ids, vectors, raw, queries)
    if geo:
        out |= geo_variant(work, kinds, overrides | (geo_overrides or {}), label)
    return out


def run_kinds(work: Path, quick: bool) -> None:
    """The default settings and the baselines on EuroSAT at 100 a class (and, in full runs, at
    500), 20 marks at both, the geo variant at 100 a class (default tile size, and a tile = a
    picture)."""
    for per_class in PER_CLASS[:1] if quick else PER_CLASS:
        started = time.perf_counter()
        figures = kinds_figures(work, per_class=per_class, geo=per_class == PER_CLASS[0])
        if per_class == PER_CLASS[0]:
            figures |= geo_variant(
                work, eurosat_sample(per_class), {"tile_size": 64}, "geosearch, tile_size 64"
            )
        for method, line in figures.items():
            emit(
                {"part": "kinds", "dataset": "eurosat", "per_class": per_class, "method": method}
                | line
            )
        emit(
            {"part": "kinds", "summary": "seconds", "per_class": per_class}
            | {"seconds": round(time.perf_counter() - started, 1)}
        )
