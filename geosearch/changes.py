"""What changed between two dates: the places covered in both periods, ranked by change.

A period is a year, a month or a day (``Period.parse``); a place is a tile position. Places
covered in both periods are paired (``pair_places``): tiles on the same grid (the same CRS and
native footprint), else tiles whose lon/lat footprints overlap by at least half of each. With
several tiles of a place in one period, the one nearest the period's end is taken (the pair
says how many there were; the run's notes say so).

Each pair is first scored from its stored vectors (``vector_change``: (1 - cosine) / 2, 0..1),
chunk by chunk: only the scores are kept. On georeferenced imagery the top pairs then get a
second look at their pixels (``second_look``): the later tile is registered on the earlier one
(a few pixels of misalignment absorbed) and two measures are taken, each 0..1: how much of the
tile's structure the later picture does not keep (``gradient_change``: per band, one minus the
correlation of the gradient images, which ignores each band's gain and offset: season, sensor,
haze) and how much its CNN features moved, each period's features centred on the period's
mean (what every place shares that year is not a change). Their mean is the pair's change.
On the NAIP quarter-quad (2014 against 2015 with 20 planted patches) the stored vectors alone
put 0.55 of the planted places in the top 20, the second look 0.85 (``bench/changes.py``).

Significance is the database's own: a pair is significant when each measure stands above
the spread of this run's pairs (median + ``changes.mad_k`` scaled median absolute deviations:
the vectors over every pair, the pixels' measures over a random sample of pairs looked at the
same way); where the vectors judge alone, above ``changes.vectors_only_mad_k`` of theirs.
A change shows in every measure; the noise of one (a textureless tile's gradients, a CNN's
jitter) does not, so a database where nothing changed flags (almost) nothing.

With the Spark engine (``find_changes(..., spark=(settings, master))``) the pairing by grid
and the vectors' scores are computed on executors (``engines.spark``); the rest is the same
code, so the ranking is the local run's.
"""

from __future__ import annotations

import calendar
import json
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import shapely
from shapely.geometry import box
from shapely.geometry.base import BaseGeometry
from shapely.strtree import STRtree

from geosearch.catalog import Catalog
from geosearch.config import ChangeSettings, MapSettings, SparkSettings
from geosearch.errors import ConfigError, GeosearchError, InputError
from geosearch.features import prepare_batch, raw_features
from geosearch.maps import (
    CHANGE,
    SimilarityMap,
    change_of,
    tile_values,
    write_pixel_change_map,
    write_tile_map,
)
from geosearch.pixels import RawTile, Window
from geosearch.register import best_placement, gradient_image
from geosearch.render import contact_sheet, feature, prepare_output, render_previews, write_bytes
from geosearch.sources import open_source
from geosearch.store import Store, TileRecord

_PERIOD = re.compile(r"(\d{4})(?:-(\d{2})(?:-(\d{2}))?)?")
MAD_TO_SIGMA = 1.4826  # a normal distribution's standard deviation per median absolute deviation
SHIFT = 3  # pixels of misalignment the second look absorbs, each way
SparkRun = tuple[SparkSettings, str | None]  # the Spark engine's settings and master


@dataclass(frozen=True)
class Period:
    """A span of days, first and last (ISO dates), as the user wrote it."""

    text: str
    first: str
    last: str

    @classmethod
    def parse(cls, text: str, option: str = "DATE") -> Period:
        """YYYY (a year), YYYY-MM (a month) or YYYY-MM-DD (a day); ``ConfigError`` otherwise."""
        match = _PERIOD.fullmatch(text.strip())
        try:
            if not match:
                raise ValueError(text)
            year, month, day = (int(part) if part else None for part in match.groups())
            if month is None:
                return cls(text, f"{year:04d}-01-01", f"{year:04d}-12-31")
            last_day = calendar.monthrange(year, month)[1]
            if day is None:
                return cls(
                    text, f"{year:04d}-{month:02d}-01", f"{year:04d}-{month:02d}-{last_day:02d}"
                )
            if not 1 <= day <= last_day:
                raise ValueError(text)
            return cls(text, *[f"{year:04d}-{month:02d}-{day:02d}"] * 2)
        except ValueError:
            raise ConfigError(
                f"{option}: expected a year, a month or a day (2018, 2018-07, 2018-07-20), "
                f"got {text!r}"
            ) from None


def periods(date_from: str, date_to: str) -> tuple[Period, Period]:
    """The two periods compared; ``ConfigError`` if one does not parse or --from starts after
    --to."""
    before, after = Period.parse(date_from, "--from"), Period.parse(date_to, "--to")
    if before.first > after.first:
        raise ConfigError(f"--from {before.text} starts after --to {after.text}")
    return before, after


@dataclass(frozen=True)
class PlacePair:
    """One place seen in both periods: the tile taken in each, and how many there were."""

    before: TileRecord
    after: TileRecord
    before_choices: int = 1
    after_choices: int = 1
    paired_by: str = "grid"  # "grid" (same native footprint) or "overlap"


@dataclass
class PlaceChange:
    """A pair scored: ``change`` 0..1 (the second look's where there was one), significant."""

    pair: PlacePair
    change: float
    vector_change: float
    looked: Look | None  # the second look at its pixels, if it had one
    significant: bool
    rank: int = 0

    def to_dict(self) -> dict[str, Any]:
        before, after = self.pair.before, self.pair.after
        return {
            "rank": self.rank,
            "change": round(self.change, 4),
            "significant": self.significant,
            "vector_change": round(self.vector_change, 4),
            "structure_change": _rounded(self.looked and self.looked.structure),
            "cnn_change": _rounded(self.looked and self.looked.cnn),
            "before_id": before.id,
            "after_id": after.id,
            "before_file": before.path,
            "after_file": after.path,
            "before_date": before.acquired,
            "after_date": after.acquired,
            "before_tiles": self.pair.before_choices,
            "after_tiles": self.pair.after_choices,
            "paired_by": self.pair.paired_by,
            "window": [before.window.row, before.window.col, before.window.width,
                       before.window.height],
        }  # fmt: skip


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


@dataclass(frozen=True)
class Look:
    """The second look at a pair's pixels: how much of its structure changed
    (``gradient_change``) and how much its CNN features did (None without a CNN), 0..1."""

    structure: float
    cnn: float | None

    @property
    def change(self) -> float:
        """Their mean: the pair's change."""
        return self.structure if self.cnn is None else (self.structure + self.cnn) / 2.0


@dataclass
class ChangeResult:
    """The top places by change, and what the run saw."""

    before: Period
    after: Period
    places: list[PlaceChange]
    pairs: int
    thresholds: dict[str, float]  # what stands out, per measure: vectors, structure, cnn
    notes: list[str] = field(default_factory=list)
    all_pairs: list[PlacePair] = field(default_factory=list, repr=False)  # every pair scored
    scores: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32), repr=False)
    # per pair of all_pairs: significant (a looked-at place by its own flag, others by vectors)
    flags: np.ndarray = field(default_factory=lambda: np.zeros(0, bool), repr=False)

    @property
    def significant(self) -> int:
        """How many pairs are significant."""
        return int(self.flags.sum())

    def to_dict(self) -> dict[str, Any]:
        return {
            "from": self.before.text, "to": self.after.text, "pairs": self.pairs,
            "significant": self.significant,
            "thresholds": {name: round(value, 4) for name, value in self.thresholds.items()},
        }  # fmt: skip


# -- pairing ---------------------------------------------------------------------------------


def _latest(tiles: Iterable[TileRecord], key: Any) -> dict[Any, tuple[TileRecord, int]]:
    """Per place (``key`` of a tile): the tile acquired last (then the highest id), and how
    many the place had."""
    chosen: dict[Any, tuple[TileRecord, int]] = {}
    for tile in tiles:
        place = key(tile)
        held = chosen.get(place)
        if held is None:
            chosen[place] = (tile, 1)
        else:
            best = max(held[0], tile, key=lambda t: (t.acquired or "", t.id or 0))
            chosen[place] = (best, held[1] + 1)
    return chosen


def _grid_key(tile: TileRecord) -> str:
    """Tiles on the same grid share their CRS and native footprint (else: their own id)."""
    if tile.crs is None or tile.footprint_native is None:
        return f"tile|{tile.id}"
    return f"{tile.crs}|{tile.footprint_native}"


def period_ids(store: Store, period: Period, allowed: set[int] | None) -> list[int]:
    """Tiles acquired in ``period`` that the filters allow, in id order."""
    ids = store.ids_acquired(period.first, period.last)
    return sorted(ids if allowed is None else ids & allowed)


Held = tuple[TileRecord, int]  # the tile taken for a place in one period, of how many


def pair_places(
    before: Sequence[TileRecord], after: Sequence[TileRecord], spark: SparkRun | None = None
) -> list[PlacePair]:
    """Every place covered in both periods: same grid first, else footprints overlapping by at
    least half of each; the tile nearest each period's end per place. ``spark`` (settings,
    master): the grid's places are taken and joined on Spark executors."""
    if spark is None or not before or not after:  # (a period without tiles pairs nothing)
        earlier, later = _latest(before, _grid_key), _latest(after, _grid_key)
        places = [(earlier.get(key), later.get(key)) for key in earlier.keys() | later.keys()]
    else:
        places = _spark_places(before, after, spark)
    pairs = [PlacePair(b[0], a[0], b[1], a[1]) for b, a in places if b and a]
    left = sorted((b for b, a in places if b and not a), key=lambda held: held[0].id or 0)
    right = sorted((a for b, a in places if a and not b), key=lambda held: held[0].id or 0)
    pairs += _overlap_pairs(left, right)
    pairs.sort(key=lambda pair: pair.before.id or 0)
    return pairs


def _spark_places(
    before: Sequence[TileRecord], after: Sequence[TileRecord], spark: SparkRun
) -> list[tuple[Held | None, Held | None]]:
    """Each grid place's tile in each period (None where the period has none), as ``_latest``
    takes them, chosen and joined on Spark (``engines.spark.spark_latest_pairs``)."""
    from geosearch.engines.spark import spark_latest_pairs, spark_session

    rows = [(tile.id, side, _grid_key(tile), tile.acquired or "")
            for side, tiles in enumerate((before, after)) for tile in tiles]  # fmt: skip
    records = {tile.id: tile for tiles in (before, after) for tile in tiles}
    return [
        (
            (records[b], nb) if b is not None else None,
            (records[a], na) if a is not None else None,
        )
        for b, a, nb, na in spark_latest_pairs(spark_session(*spark), rows)
    ]


def _overlap_pairs(before: list[Held], after: list[Held]) -> list[PlacePair]:
    """Pairs of places on different grids whose footprints overlap by at least half of each;
    each place in one pair at most, the largest overlaps first."""
    before = [held for held in before if held[0].footprint is not None]
    after = [held for held in after if held[0].footprint is not None]
    if not before or not after:
        return []
    shapes = [held[0].footprint for held in after]
    tree = STRtree(shapes)
    candidates = []
    for i, (tile, _) in enumerate(before):
        for j in tree.query(tile.footprint, predicate="intersects"):
            other = shapes[j]
            common = shapely.area(shapely.intersection(tile.footprint, other))
            if common >= 0.5 * max(tile.footprint.area, other.area):
                candidates.append((common, i, int(j)))
    used_before: set[int] = set()
    used_after: set[int] = set()
    pairs = []
    for _, i, j in sorted(candidates, reverse=True):
        if i in used_before or j in used_after:
            continue
        used_before.add(i)
        used_after.add(j)
        (b, nb), (a, na) = before[i], after[j]
        pairs.append(PlacePair(b, a, nb, na, "overlap"))
    return pairs


# -- scoring ---------------------------------------------------------------------------------


def vector_change(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    """(n,) float32 change of row pairs of unit vectors: (1 - cosine) / 2, 0 the same."""
    dots = np.einsum("ij,ij->i", before.astype(np.float32), after.astype(np.float32))
    return change_of(dots).astype(np.float32)


def score_chunks(chunks: Iterable[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """Change of every pair, chunk by chunk (only the scores are kept: 4 bytes a pair)."""
    parts = [vector_change(before, after) for before, after in chunks]
    return np.concatenate(parts) if parts else np.zeros(0, np.float32)


def side_by_side_change(rows: np.ndarray) -> np.ndarray:
    """``vector_change`` of rows holding a pair's two vectors side by side (before | after)."""
    half = rows.shape[1] // 2
    return vector_change(np.ascontiguousarray(rows[:, :half]), np.ascontiguousarray(rows[:, half:]))


def score_pairs(
    store: Store, pairs: Sequence[PlacePair], spark: SparkRun | None = None
) -> np.ndarray:
    """Change of every pair from its stored vectors, in the pairs' order; ``spark`` (settings,
    master): the pairs' vectors go side by side into Parquet shards scored on Spark executors
    (``engines.spark.spark_row_scores``)."""
    chunks = _stored_vector_chunks(store, pairs)
    if spark is None:
        return score_chunks(chunks)
    from geosearch.engines.spark import spark_row_scores, spark_session

    def side_by_side() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        start = 0
        for before, after in chunks:
            yield np.arange(start, start + len(before)), np.hstack([before, after])
            start += len(before)

    rows, scores = spark_row_scores(
        spark_session(*spark), side_by_side(), 2 * store.vector_dim(), side_by_side_change,
        spark[0].partitions,
    )  # fmt: skip
    return scores[np.argsort(rows, kind="stable")].astype(np.float32)


def top_order(scores: np.ndarray, count: int) -> np.ndarray:
    """Indexes of the ``count`` highest scores, highest first (a partial sort)."""
    count = min(count, len(scores))
    if count <= 0:
        return np.zeros(0, np.int64)
    chosen = np.argpartition(-scores, count - 1)[:count]
    return chosen[np.argsort(-scores[chosen], kind="stable")]


def spread_threshold(scores: np.ndarray, k: float) -> float:
    """What stands out of a set of scores: median + ``k`` scaled median absolute deviations
    (robust: the changed places themselves barely move it)."""
    if not len(scores):
        return float("inf")
    middle = float(np.median(scores))
    spread = float(np.median(np.abs(scores - middle))) * MAD_TO_SIGMA
    return middle + k * max(spread, 1e-6)


def _stored_vector_chunks(
    store: Store, pairs: Sequence[PlacePair], size: int = 16_384
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(before, after) vectors of the pairs, ``size`` pairs at a time."""
    for start in range(0, len(pairs), size):
        chunk = pairs[start : start + size]
        yield (
            store.vectors_in_order([pair.before.id for pair in chunk]),
            store.vectors_in_order([pair.after.id for pair in chunk]),
        )


# -- the second look: pixels -----------------------------------------------------------------


def _read_values(catalog: Catalog, tile: TileRecord, margin: int) -> tuple[np.ndarray, np.ndarray]:
    """(bands, h, w) float32 values as stored (not scaled: a brighter year is not clipped at
    the database's scaling range) and validity of a tile's window grown by ``margin`` pixels
    (clipped to the file)."""
    with open_source(Path(tile.path)) as source:
        bands = catalog.manifest.query_bands(source, catalog.name)
        read = [band for band in bands.read if band is not None]
        w = tile.window
        top, left = max(0, w.row - margin), max(0, w.col - margin)
        bottom = min(source.height, w.row + w.height + margin)
        right = min(source.width, w.col + w.width + margin)
        raw = source.read(Window(top, left, right - left, bottom - top), read)
        values = np.nan_to_num(raw.pixels.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
        return values, raw.valid


def registered(
    before: np.ndarray, after: np.ndarray, after_valid: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The part of ``after`` (read a few pixels wider) that best matches ``before``: the shift
    maximising the correlation of their gradient images."""
    height, width = before.shape[1:]
    if after.shape[1] < height or after.shape[2] < width:
        return after, after_valid
    template = gradient_image(before.mean(axis=0))
    scene = gradient_image(after.mean(axis=0), after_valid)
    _, _, row, col = best_placement(template, scene, None)
    rows, cols = slice(row, row + height), slice(col, col + width)
    return after[:, rows, cols], after_valid[rows, cols]


def gradient_change(before: np.ndarray, after: np.ndarray, valid: np.ndarray) -> float:
    """How much of a tile's structure the later picture does not keep: per band, (1 -
    correlation of the two gradient-magnitude images) / 2, averaged. A correlation ignores
    each band's gain and offset (season, sensor, haze); the gradients' blur absorbs a pixel
    of misalignment; a new pit or field brings edges the earlier picture does not have."""
    changes = []
    for band in range(before.shape[0]):
        x = gradient_image(before[band], valid)[valid]
        y = gradient_image(after[band], valid)[valid]
        x, y = x - x.mean(), y - y.mean()
        norm = float(np.sqrt((x @ x) * (y @ y)))
        changes.append((1.0 - float(x @ y) / norm) / 2.0 if norm > 0 else 0.0)
    return float(np.mean(changes)) if changes else 0.0


def _pixel_pair(catalog: Catalog, pair: PlacePair) -> tuple[float, RawTile, RawTile] | None:
    """``gradient_change`` of a registered pair and both tiles' raw pixels; None when a file
    cannot be read any more or the windows do not match."""
    try:
        before, before_valid = _read_values(catalog, pair.before, 0)
        after, after_valid = _read_values(catalog, pair.after, SHIFT)
        raw = [catalog.read(tile.path, [tile.window])[1] for tile in (pair.before, pair.after)]
    except (GeosearchError, OSError):
        return None
    after, after_valid = registered(before, after, after_valid)
    if after.shape != before.shape or not raw[0] or not raw[1]:
        return None
    return gradient_change(before, after, before_valid & after_valid), raw[0][0], raw[1][0]


def second_look(catalog: Catalog, pairs: Sequence[PlacePair], reference: int) -> list[Look | None]:
    """The second look at each pair's pixels: ``gradient_change`` after registration, and the
    CNN's change, (1 - cosine) / 2 of the two tiles' CNN features with each period's features
    centred on its mean over the first ``reference`` pairs (a random sample: what the period
    looks like, so that a season or sensor shared by every place is not a change). None where
    the pixels could not be read."""
    looked = [_pixel_pair(catalog, pair) for pair in pairs]
    read = [n for n, found in enumerate(looked) if found is not None]
    cnn_changes: list[float | None] = [None] * len(read)
    with_cnn = catalog.features.cnn.weight > 0
    cnn = [e for e in catalog.extractors() if e.name == "cnn"] if with_cnn and read else []
    if cnn:
        sides = []
        sample = [i for i, n in enumerate(read) if n < reference] or list(range(len(read)))
        for side in (1, 2):
            tiles = [looked[n][side] for n in read]
            batch = prepare_batch(tiles, catalog.manifest, catalog.pad_to())
            features = raw_features(batch, cnn).astype(np.float64)
            sides.append(features - features[sample].mean(axis=0))
        norms = np.linalg.norm(sides[0], axis=1) * np.linalg.norm(sides[1], axis=1)
        cosines = np.einsum("ij,ij->i", *sides) / np.maximum(norms, 1e-12)
        cnn_changes = change_of(cosines).tolist()
    looks: list[Look | None] = [None] * len(pairs)
    for n, cnn_change in zip(read, cnn_changes, strict=True):
        looks[n] = Look(looked[n][0], cnn_change)
    return looks


# -- the whole run ---------------------------------------------------------------------------


def find_changes(
    catalog: Catalog,
    before: Period,
    after: Period,
    allowed: set[int] | None,
    top: int,
    settings: ChangeSettings,
    spark: SparkRun | None = None,
) -> ChangeResult:
    """The ``top`` places that changed most from ``before`` to ``after`` (see the module);
    ``spark`` (settings, master): pairs and their vectors' scores on Spark executors."""
    store = catalog.store
    earlier = store.tiles(period_ids(store, before, allowed))
    later = store.tiles(period_ids(store, after, allowed))
    pairs = pair_places(earlier, later, spark)
    if not pairs:
        raise InputError(
            f"no place is covered in both periods: {before.text} holds {_holds(earlier)}, "
            f"{after.text} holds {_holds(later)}"
        )
    scores = score_pairs(store, pairs, spark)
    thresholds = {"vectors": spread_threshold(scores, settings.mad_k)}
    looks = settings.second_look if catalog.manifest.scaling != "none" else 0
    looks = min(looks, len(pairs))
    order = top_order(scores, max(top, looks))
    looked: dict[int, Look] = {}
    if looks:
        reference = _reference_sample(len(pairs), settings.reference_pairs).tolist()
        chosen = list(dict.fromkeys([*reference, *order[:looks].tolist()]))
        found = second_look(catalog, [pairs[i] for i in chosen], len(reference))
        looked = {i: look for i, look in zip(chosen, found, strict=True) if look is not None}
        sample = [looked[i] for i in reference if i in looked]
        if sample:
            thresholds["structure"] = spread_threshold(
                np.array([look.structure for look in sample]), settings.mad_k
            )
        if sample and sample[0].cnn is not None:
            thresholds["cnn"] = spread_threshold(
                np.array([look.cnn for look in sample]), settings.mad_k
            )
    looked = {i: looked[i] for i in order[:looks].tolist() if i in looked}
    vector_k = settings.vectors_only_mad_k
    vectors_alone = spread_threshold(scores, vector_k)

    def significant(index: int) -> bool:
        """Above every measure's threshold where it was looked at; else the vectors' own."""
        look = looked.get(index)
        if look is None or "structure" not in thresholds:
            return bool(scores[index] > vectors_alone)
        return bool(
            scores[index] > thresholds["vectors"]
            and look.structure > thresholds["structure"]
            and (look.cnn is None or look.cnn > thresholds.get("cnn", -1.0))
        )

    places = [
        PlaceChange(
            pairs[i],
            looked[i].change if i in looked else float(scores[i]),
            float(scores[i]),
            looked.get(i),
            significant(i),
        )  # fmt: skip
        for i in order.tolist()
    ]
    places.sort(key=lambda place: (place.looked is None, -place.change))
    places = places[:top]
    for rank, place in enumerate(places, start=1):
        place.rank = rank
    flags = scores > vectors_alone
    for i in looked:
        flags[i] = significant(i)
    if vector_k != settings.mad_k:
        thresholds["vectors_alone"] = vectors_alone
    return ChangeResult(before, after, places, len(pairs), thresholds,
                        _notes(pairs, before, after), list(pairs), scores, flags)  # fmt: skip


def _reference_sample(count: int, size: int, seed: int = 0) -> np.ndarray:
    """Pairs drawn at random (all when fewer): what an ordinary place scores on the pixels."""
    if count <= size:
        return np.arange(count)
    return np.sort(np.random.default_rng(seed).choice(count, size, replace=False))


def _holds(tiles: Sequence[TileRecord]) -> str:
    """What a period holds: "no tile", or "12 tiles of 2 files (2014-07-20..2014-07-20)"."""
    if not tiles:
        return "no tile"
    dates = sorted(t.acquired for t in tiles if t.acquired)
    files = len({t.path for t in tiles})
    return f"{len(tiles)} tiles of {files} file{'s' * (files != 1)} ({dates[0]}..{dates[-1]})"


def _notes(pairs: Sequence[PlacePair], before: Period, after: Period) -> list[str]:
    """What the user should know of the pairing."""
    notes = []
    for period, side in ((before, "before"), (after, "after")):
        several = sum(getattr(pair, f"{side}_choices") > 1 for pair in pairs)
        if several:
            notes.append(
                f"{several} places have several tiles in {period.text}: the one nearest "
                f"{period.last} was taken"
            )
    overlapped = sum(pair.paired_by == "overlap" for pair in pairs)
    if overlapped:
        notes.append(f"{overlapped} places paired by footprint overlap (other grids)")
    return notes


# -- what a run leaves on disk ---------------------------------------------------------------

GEOJSON_NAME = "changes.geojson"
SHEET_NAME = "contact_sheet.png"


@dataclass
class ChangeFiles:
    """Paths written for a run of ``changes``."""

    geojson: Path
    contact_sheet: Path | None
    previews: list[Path]
    maps: list[SimilarityMap] = field(default_factory=list)


def change_collection(result: ChangeResult) -> dict[str, Any]:
    """RFC 7946 FeatureCollection: each place's footprint (the earlier tile's) and its change."""
    features = [
        feature(place.pair.before.footprint or place.pair.after.footprint, place.to_dict())
        for place in result.places
    ]
    return {"type": "FeatureCollection", "features": features}


def write_changes(
    result: ChangeResult, catalog: Catalog, out_dir: Path, preview_size: int
) -> ChangeFiles:
    """``changes.geojson``, before and after previews of each place and a contact sheet of
    the pairs (a row each, labelled) in ``out_dir``."""
    previews_dir = prepare_output(out_dir)
    keys = [(tile.path, tile.window) for place in result.places
            for tile in (place.pair.before, place.pair.after)]  # fmt: skip
    rendered = render_previews(catalog, keys, preview_size)
    rows, written = [], []
    for place in result.places:
        cells = []
        for side, tile in (("before", place.pair.before), ("after", place.pair.after)):
            png = rendered[(tile.path, tile.window)]
            if png is not None:
                path = previews_dir / f"change{place.rank}_{side}.png"
                write_bytes(path, png)
                written.append(path)
            label = [f"#{place.rank} {side}" + (
                f"  change {place.change:.2f}{' *' * place.significant}" if side == "before"
                else ""), tile.acquired or "", Path(tile.path).name]  # fmt: skip
            cells.append((png, label))
        rows.append(cells)
    sheet = None
    if rows:
        sheet = Path(out_dir) / SHEET_NAME
        cell = min(preview_size, max(128, catalog.tile_size))  # previews are never enlarged
        write_bytes(sheet, contact_sheet(rows, cell))
    geojson = Path(out_dir) / GEOJSON_NAME
    write_bytes(geojson, json.dumps(change_collection(result), indent=1).encode())
    return ChangeFiles(geojson, sheet, written)


def change_maps(
    result: ChangeResult,
    catalog: Catalog,
    tiles: Path | None,
    pixels: Path | None,
    area: BaseGeometry | None,
    settings: MapSettings,
) -> list[SimilarityMap]:
    """``tiles``: every pair's change from its vectors on the tile grid (at the earlier tile's
    cell); ``pixels`` (embedding databases): every pixel's change over ``area`` (default: the
    places paired)."""
    written = []
    if tiles is not None:
        ids = np.array([pair.before.id for pair in result.all_pairs], np.int64)
        grid, values, count = tile_values(catalog.store, ids, result.scores, catalog.tile_size)
        written.append(write_tile_map(tiles, grid, values, count, CHANGE))
    if pixels is not None:
        pairs = result.all_pairs
        if area is None:
            bounds = [p.before.footprint.bounds for p in pairs if p.before.footprint is not None]
            if not bounds:
                raise InputError("the places paired have no footprint: no pixel map")
            corners = np.array(bounds)
            area = box(*corners[:, :2].min(axis=0), *corners[:, 2:].max(axis=0))
        before = sorted({pair.before.path for pair in pairs})
        after = sorted({pair.after.path for pair in pairs} - set(before))
        threads = settings.threads or os.cpu_count() or 1
        written.append(
            write_pixel_change_map(catalog, before, after, area, pixels, settings.window, threads)
        )
    return written
