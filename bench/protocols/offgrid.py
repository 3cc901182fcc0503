"""Off the grid (issue 13): query chips cut anywhere, each written to a file and searched with
``geosearch.similar(db, [chip], top=4)`` exactly as a user would (any second stage included).
NAIP 128 px: each year held out in turn (2015 alone when quick), the database is the other
four; seeded chips of the held-out year on the grid, at a random offset, covering
0.8/1.25/1.5 tiles resampled to 128 px (GeoTIFF with its true footprint), turned (searched
with any orientation), as an RGB PNG screenshot (also at a random zoom), and "absent": cut
east of a database of the west halves. Relevant = a tile covering >= 25 % of the chip's
ground. Sentinel-2 and Landsat 8 against a synthetic second acquisition (a darkened, noisy
copy). One line per dataset, protocol and feature configuration: top-1, P@4, chance, ms of
the call, refusals, and the location's IoU when the result has one."""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.protocols.common import (
    NAIP,
    K,
    emit,
    ingest_into,
    naip_year,
    slug,
    stored_tiles,
    weight_overrides,
    weights_of,
    write_raster,
    write_window,
)
from bench.protocols.satellite import S2_RGB, landsat_scenes, sentinel2_scenes
from geosearch import GeosearchError
from geosearch.config import SearchSettings, Settings
from geosearch.orientation import ALL_ORIENTATIONS
from geosearch.store import Store

RELEVANT_COVER = 0.25  # a result is relevant when it covers this share of the chip's ground
MAX_CHIP_NODATA = 0.1  # a chip is cut only where less of it than this is nodata
NAIP_WEST = 467  # the "absent" database: columns 0..466 of each year (the west half)
OFFGRID_QUERIES = 40  # NAIP query chips per protocol and held-out year
OFFGRID_SMALL_QUERIES = 20  # Sentinel-2 and Landsat, per protocol
OFFGRID_QUICK_QUERIES = 12  # every dataset with --quick


@dataclass(frozen=True)
class ChipProtocol:
    """How a query chip is cut from a scene and handed to ``similar``."""

    name: str
    sides: tuple[float, float] = (1.0, 1.0)  # ground side in tiles, drawn uniformly in range
    on_grid: bool = False  # only whole cells of the database's grid
    turned: bool = False  # a random non-identity rotation/mirror
    screenshot: bool = False  # RGB as a PNG, no georeference
    absent: bool = False  # cut east of the west-half database: nothing is relevant
    search: tuple[tuple[str, Any], ...] = ()  # settings of the similar call


GRID = ChipProtocol("grid", on_grid=True)
OFFSET = ChipProtocol("offset")
SCALED = tuple(ChipProtocol(f"scale {s:g}", (s, s)) for s in (0.8, 1.25, 1.5))
TURNED = ChipProtocol("turned", turned=True, search=(("search.orientations", "any"),))
SCREENSHOT = ChipProtocol("screenshot", screenshot=True)
ZOOMED = ChipProtocol("screenshot zoomed", (0.75, 1.5), screenshot=True)
ABSENT = ChipProtocol("absent", absent=True)


@dataclass(frozen=True)
class SearchConfig:
    """A feature configuration: what its database is ingested with, what searches run with."""

    label: str
    ingest: dict[str, Any]
    search: dict[str, Any]


def offgrid_configs() -> list[SearchConfig]:
    """Default features and the CNN alone, the second stage (``search.locate``) off where the
    setting exists, and the default with it on. A new configuration is one entry here."""
    has_locate = "locate" in SearchSettings.model_fields
    off = {"search.locate": False} if has_locate else {}
    configs = [
        SearchConfig("default", {}, off),
        SearchConfig("cnn alone", weight_overrides(weights_of(cnn=1.0)), off),
    ]
    if has_locate:
        configs.append(SearchConfig("default + locate", {}, {"search.locate": True}))
        # these databases (<= 192 tiles) are too small to project by default: forced here
        projected = {"vectors.min_sample": 2}
        configs.append(
            SearchConfig("default + locate, vectors projected", projected, {"search.locate": True})
        )
    return configs


@dataclass(frozen=True)
class OffgridRound:
    """One database (``database`` files) and the scene its query chips are cut from."""

    held_out: str  # what the line aggregates over, e.g. the NAIP year
    name: str  # names its databases and chip folders
    scene: Path
    database: list[Path]
    protocols: tuple[ChipProtocol, ...]
    min_col: int = 0  # chips start at this column or right of it


@dataclass(frozen=True)
class OffgridSet:
    """A dataset of the off-grid part: tile size, query chips per protocol and round, the RGB
    bands a screenshot shows (1-based) and its rounds."""

    name: str
    tile_size: int
    queries: int
    rgb: tuple[int, int, int]
    rounds: list[OffgridRound]
    note: str = ""


@dataclass(frozen=True)
class Chip:
    """A query file as a user would have it and the ground it truly covers (scene CRS and
    lon/lat)."""

    path: Path
    footprint: Any  # shapely Polygon
    lonlat: Any


@dataclass(frozen=True)
class Outcome:
    """What one query chip's ``similar`` call gave."""

    held_out: str
    hit1: bool
    precision: float
    relevant: int
    candidates: int
    ms: float | None = None  # None: refused
    score1: float | None = None
    refused: str | None = None
    located: bool = False
    iou: float | None = None  # of the location with the chip's ground (lon/lat)
    changed_by_locate: bool | None = None  # top K differs from the search without locate


def chip_positions(
    invalid: np.ndarray, side: int, step: int, min_col: int, count: int, rng: np.random.Generator
) -> list[tuple[int, int]]:
    """Up to ``count`` distinct (row, col), uniformly drawn, of side x side windows lying wholly
    inside the raster with < MAX_CHIP_NODATA nodata, at multiples of ``step``, from column
    ``min_col`` on. ``invalid``: summed-area table of the nodata mask, zero-padded."""
    inside = (invalid[side:, side:] - invalid[:-side, side:] - invalid[side:, :-side]) + invalid[
        :-side, :-side
    ]
    allowed = np.zeros(inside.shape, dtype=bool)
    allowed[::step, ::step] = True
    allowed[:, :min_col] = False
    rows, cols = np.nonzero(allowed & (inside < MAX_CHIP_NODATA * side * side))
    picks = rng.choice(len(rows), size=min(count, len(rows)), replace=False)
    return [(int(rows[p]), int(cols[p])) for p in picks]


def display_range(src: Any, rgb: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Per RGB band, the 2nd and 98th percentiles of the scene's valid pixels: the stretch a
    viewer would show (and screenshot) a non-8-bit scene with."""
    valid = src.dataset_mask() > 0
    values = [band[valid] for band in src.read(list(rgb))]
    low, high = np.array([np.percentile(v, (2, 98)) for v in values]).T
    return low[:, None, None], high[:, None, None]


def cut_chips(
    scene: Path,
    protocol: ChipProtocol,
    count: int,
    tile_size: int,
    rgb: tuple[int, int, int],
    folder: Path,
    rng: np.random.Generator,
    min_col: int = 0,
) -> list[Chip]:
    """Query chips of ``scene`` written in ``folder`` as ``protocol`` says: a GeoTIFF of
    tile_size px whose transform gives its true footprint (resampled: average when shrinking,
    bilinear when enlarging; turned), or an RGB PNG without georeference (Pillow, bilinear)."""
    import rasterio
    import shapely
    from PIL import Image
    from rasterio.enums import Resampling
    from rasterio.warp import transform_geom
    from rasterio.windows import Window as RioWindow
    from rasterio.windows import bounds

    folder.mkdir(parents=True, exist_ok=True)
    step = tile_size if protocol.on_grid else 1
    chips = []
    with rasterio.open(scene) as src:
        invalid = np.pad((src.dataset_mask() == 0).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
        low_side, high_side = protocol.sides
        if low_side == high_side:
            side = round(tile_size * low_side)
            picks = [(side, *at) for at in chip_positions(invalid, side, step, min_col, count, rng)]
        else:  # a side per chip, then a place for it
            picks = []
            for _ in range(count):
                side = round(tile_size * rng.uniform(low_side, high_side))
                picks += [(side, *chip_positions(invalid, side, step, min_col, 1, rng)[0])]
        stretch = None
        if protocol.screenshot and src.dtypes[0] != "uint8":
            stretch = display_range(src, rgb)
        for n, (side, row, col) in enumerate(picks):
            window = RioWindow(col, row, side, side)
            footprint = shapely.box(*bounds(window, src.transform))
            lonlat = shapely.geometry.shape(
                transform_geom(src.crs, "EPSG:4326", shapely.geometry.mapping(footprint))
            )
            if protocol.screenshot:
                pixels = src.read(list(rgb), window=window).astype(np.float64)
                if stretch is not None:
                    low, high = stretch
                    pixels = np.clip((pixels - low) / (high - low), 0, 1) * 255
                picture = Image.fromarray(np.moveaxis(np.rint(pixels), 0, -1).astype(np.uint8))
                if side != tile_size:
                    picture = picture.resize((tile_size, tile_size), Image.Resampling.BILINEAR)
                path = folder / f"chip_{n:03d}.png"
                picture.save(path)
            else:
                shrink = Resampling.average if side > tile_size else Resampling.bilinear
                pixels = src.read(
                    window=window, out_shape=(src.count, tile_size, tile_size), resampling=shrink
                )
                if protocol.turned:
                    turns = ALL_ORIENTATIONS[1:]
                    pixels = turns[int(rng.integers(len(turns)))].apply(pixels)
                where = src.window_transform(window) * rasterio.Affine.scale(side / tile_size)
                path = folder / f"chip_{n:03d}.tif"
                write_raster(path, src.profile, pixels, where, src.descriptions)
            chips.append(Chip(path, footprint, lonlat))
    return chips


def tile_footprints(db: Path) -> tuple[np.ndarray, np.ndarray]:
    """Every stored tile's id and footprint (shapely, from ``footprint_native``)."""
    import shapely

    with Store(db) as store:
        ids, _, tiles, _ = stored_tiles(store)
    return ids, shapely.from_wkt([tile.footprint_native for tile in tiles])


def search_chips(
    db: Path,
    chips: list[Chip],
    settings: Settings,
    footprints: tuple[np.ndarray, np.ndarray],
    held_out: str,
    compare: Settings | None = None,
) -> list[Outcome]:
    """Each chip through ``geosearch.similar`` (top K, after one warm-up call), scored against
    the tiles covering >= RELEVANT_COVER of its ground; ``compare``: settings of a second,
    untimed search whose top K is compared (the second stage switched off)."""
    import shapely

    from geosearch import similar

    ids, shapes = footprints
    with contextlib.suppress(GeosearchError):  # a refusal is counted below, chip by chip
        similar(db, [chips[0].path], top=K, settings=settings)  # warm-up: model, page cache
    outcomes = []
    for chip in chips:
        cover = shapely.area(shapely.intersection(shapes, chip.footprint)) / chip.footprint.area
        relevant = set(ids[cover >= RELEVANT_COVER].tolist())
        given = {"held_out": held_out, "relevant": len(relevant), "candidates": len(ids)}
        started = time.perf_counter()
        try:
            result = similar(db, [chip.path], top=K, settings=settings)[0]
        except GeosearchError as exc:
            outcomes.append(Outcome(hit1=False, precision=0.0, refused=str(exc), **given))
            continue
        ms = (time.perf_counter() - started) * 1000
        found = [match.tile.id for match in result.matches]
        location = getattr(result, "location", None)
        where = getattr(location, "footprint", None)
        iou = None
        if where is not None:
            union = where.union(chip.lonlat).area
            iou = where.intersection(chip.lonlat).area / union if union else 0.0
        changed = None
        if compare is not None:
            plain = similar(db, [chip.path], top=K, settings=compare)[0]
            changed = [match.tile.id for match in plain.matches] != found
        outcomes.append(
            Outcome(
                hit1=bool(found) and found[0] in relevant,
                precision=len(relevant & set(found)) / K,
                ms=ms,
                score1=result.matches[0].score if result.matches else None,
                located=location is not None,
                iou=iou,
                changed_by_locate=changed,
                **given,
            )
        )
    return outcomes


def summarise(outcomes: list[Outcome], absent: bool) -> dict[str, Any]:
    """One line's figures over its queries (every held-out scene): top-1, P@K, chance (relevant
    / candidate tiles: a random ranking's expected top-1 and P@K alike), the best P@K possible
    (fewer than K relevant tiles caps it), ms of the similar call, refusals, and the location's
    share and IoU (for places in the database)."""
    times = [o.ms for o in outcomes if o.ms is not None]
    refused = [o.refused for o in outcomes if o.refused]
    chance = round(float(np.mean([o.relevant / o.candidates for o in outcomes])), 4)
    line: dict[str, Any] = {
        "top1": round(float(np.mean([o.hit1 for o in outcomes])), 4),
        f"p_at_{K}": round(float(np.mean([o.precision for o in outcomes])), 4),
        "queries": len(outcomes),
        "chance_top1": chance,
        f"chance_p_at_{K}": chance,
        f"p_at_{K}_ceiling": round(float(np.mean([min(o.relevant, K) / K for o in outcomes])), 4),
        "relevant_per_query": float(np.median([o.relevant for o in outcomes])),
        "candidates_per_query": int(np.median([o.candidates for o in outcomes])),
        "ms_p50": round(float(np.median(times)), 2) if times else None,
        "ms_mean": round(float(np.mean(times)), 2) if times else None,
        "score1_median": _median([o.score1 for o in outcomes if o.score1 is not None]),
        "refused": len(refused),
    }
    if refused:
        line["refused_message"] = refused[0]
    line["located_share"] = round(float(np.mean([o.located for o in outcomes])), 4)
    if absent:
        compared = [o.changed_by_locate for o in outcomes if o.changed_by_locate is not None]
        line["changed_by_locate"] = round(float(np.mean(compared)), 4) if compared else None
    else:
        ious = [o.iou for o in outcomes if o.iou is not None]
        line["iou_median"] = _median(ious)
        line["iou_ge_0.7"] = round(sum(iou >= 0.7 for iou in ious) / len(outcomes), 4)
    held_out = sorted({o.held_out for o in outcomes})
    if len(held_out) > 1:
        line["top1_by_held_out"] = {
            label: round(float(np.mean([o.hit1 for o in outcomes if o.held_out == label])), 4)
            for label in held_out
        }
    return line


def _median(values: list[float]) -> float | None:
    return round(float(np.median(values)), 4) if values else None


def offgrid_sets(folder: Path, quick: bool) -> list[OffgridSet]:
    """NAIP with each year held out in turn (2015 alone when quick): the database is the other
    four years, and for "absent" their west halves, queried east of them; Sentinel-2 and
    Landsat 8 against a synthetic second acquisition."""
    years = sorted(NAIP.glob("*.tif"))
    west = {}
    for year in years:
        west[year] = folder / f"{year.stem}_west.tif"
        if not west[year].exists():
            write_window(year, west[year], 0, 0, NAIP_WEST)
    naip_rounds = []
    present = (GRID, OFFSET, *SCALED, TURNED, SCREENSHOT, ZOOMED)
    for scene in [y for y in years if naip_year(y) == "2015"] if quick else years:
        others = [year for year in years if year != scene]
        held_out = naip_year(scene)
        naip_rounds += [
            OffgridRound(held_out, held_out, scene, others, present),
            OffgridRound(
                held_out,
                f"{held_out}_west",
                scene,
                [west[year] for year in others],
                (ABSENT,),
                min_col=NAIP_WEST + 128 // 4,
            ),
        ]
    small = OFFGRID_QUICK_QUERIES if quick else OFFGRID_SMALL_QUERIES
    s2_folder = folder / "sentinel2"
    s2_folder.mkdir(exist_ok=True)
    s2_original, s2_copies, _ = sentinel2_scenes(s2_folder, 128)
    l8_original, l8_copy = landsat_scenes(folder)
    synthetic = "synthetic second acquisition (one date exists): queries are cut from a copy"
    return [
        OffgridSet(
            "naip",
            128,
            OFFGRID_QUICK_QUERIES if quick else OFFGRID_QUERIES,
            (1, 2, 3),
            naip_rounds,
        ),
        OffgridSet(
            "sentinel2",
            128,
            small,
            tuple(S2_RGB),
            [
                OffgridRound(
                    "shift+gain+noise",
                    "s2",
                    s2_copies["shift+gain+noise"],
                    [s2_original],
                    (OFFSET, SCALED[1]),
                )
            ],
            f"{synthetic} shifted 1/4 tile, darkened 10 %, 1 % noise; database: the original",
        ),
        OffgridSet(
            "landsat8",
            64,
            small,
            (4, 3, 2),
            [OffgridRound("dark+noise", "l8", l8_copy, [l8_original], (GRID, OFFSET, SCREENSHOT))],
            f"{synthetic} darkened 10 %, 1 % noise; database: the original",
        ),
    ]


def run_offgrid(work: Path, quick: bool) -> None:
    """Query chips cut anywhere (on the grid, off it, scaled, turned, as screenshots, or where
    the database has nothing) searched through ``geosearch.similar`` as a user would."""
    import zlib

    started = time.perf_counter()
    folder = work / "offgrid"
    folder.mkdir(exist_ok=True)
    configs = offgrid_configs()
    table: dict[str, dict[str, dict[str, list[float]]]] = {}
    ingest_s = 0.0
    for dataset in offgrid_sets(folder, quick):
        protocols = {p.name: p for r in dataset.rounds for p in r.protocols}
        outcomes: dict[tuple[str, str], list[Outcome]] = {}
        for round_ in dataset.rounds:
            chips = {}
            for protocol in round_.protocols:
                seed = zlib.crc32(f"{dataset.name} {protocol.name} {round_.held_out}".encode())
                chips[protocol.name] = cut_chips(
                    round_.scene,
                    protocol,
                    dataset.queries,
                    dataset.tile_size,
                    dataset.rgb,
                    folder / f"{dataset.name}_{round_.name}_{slug(protocol.name)}",
                    np.random.default_rng(seed),
                    round_.min_col,
                )
            databases: dict[str, tuple[Path, tuple[np.ndarray, np.ndarray]]] = {}
            for config in configs:
                key = json.dumps(config.ingest, sort_keys=True)
                if key not in databases:
                    db = folder / f"{dataset.name}_{round_.name}_{slug(config.label)}.gpkg"
                    overrides = {"tile_size": dataset.tile_size} | config.ingest
                    ingest_s += ingest_into(db, round_.database, overrides)["ingest_s"]
                    databases[key] = (db, tile_footprints(db))
                db, footprints = databases[key]
                for protocol in round_.protocols:
                    search = config.search | dict(protocol.search)
                    settings = Settings().with_overrides(search)
                    compare = None
                    if protocol.absent and search.get("search.locate"):
                        compare = settings.with_overrides({"search.locate": False})
                    outcomes.setdefault((protocol.name, config.label), []).extend(
                        search_chips(
                            db, chips[protocol.name], settings, footprints, round_.held_out, compare
                        )
                    )
        for name, protocol in protocols.items():
            for config in configs:
                line = summarise(outcomes[name, config.label], protocol.absent)
                emit(
                    {"part": "offgrid", "dataset": dataset.name, "protocol": name}
                    | {"features": config.label, "settings": config.ingest | config.search}
                    | {"search": dict(protocol.search), "tile_size": dataset.tile_size}
                    | {"held_out": sorted({r.held_out for r in dataset.rounds})}
                    | line
                    | ({"note": dataset.note} if dataset.note else {})
                )
                table.setdefault(dataset.name, {}).setdefault(name, {})[config.label] = [
                    line["top1"],
                    line[f"p_at_{K}"],
                ]
    emit(
        {"part": "offgrid", "summary": f"top1, p_at_{K} per dataset, protocol, features"}
        | {"table": table, "ingest_s": round(ingest_s, 1)}
        | {"seconds": round(time.perf_counter() - started, 1)}
    )


# -- the run --------------------------------------------------------------------------------
