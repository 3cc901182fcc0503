"""False placements of the second stage (``search.locate``): how often a query is said to lie
where it does not. One JSON line per dataset and protocol, then a summary line.

Query chips are cut as in ``bench/quality.py --only offgrid`` (its ``cut_chips``, seeded the
same way) and searched with ``geosearch.similar(db, [chip], top=4)``. A placement is false when
the query's place is in the database and the location covers less than ``RELEVANT_COVER`` of
the chip's true ground, or when the place is not in the database ("absent") and anything is
placed at all. Also: top-1 and P@4 (relevant = a tile covering >= 25 % of the chip's ground),
the share placed, ms of the call (p50), and with ``--compare`` the same search without the
second stage.

Datasets: NAIP 128 px (2015 held out; ``--years all``: each year in turn), Sentinel-2 128 px
and Landsat 8 64 px against their synthetic second acquisition (a darkened noisy copy), with
"absent" queries cut east of a database of the scene's west half. Landsat adds real cloudy and
changed places: chips where the scene's BQA marks cloud over >= 30 % (its clouds are in the
database too), chips with a 32 px block of elsewhere pasted in, and chips whose R,G,B hold
B5,B6,B7 (another look of the same ground: NIR and SWIR edges).

    .venv/bin/python -m bench.protocols.placements --quick --compare
    .venv/bin/python -m bench.protocols.placements --set search.locate_margin_sigmas=2

Hook into the quality runner: ``run_placements(work, quick)`` has ``run_offgrid``'s shape; one
line in ``bench/quality.py``'s ``run`` (and ``placements`` in ``--only``) adds it.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.protocols.common import (
    NAIP,
    K,
    ingest_into,
    write_raster,
    write_window,
)
from bench.protocols.common import naip_year as _year
from bench.protocols.common import slug as _slug
from bench.protocols.offgrid import (
    ABSENT,
    GRID,
    OFFSET,
    RELEVANT_COVER,
    SCALED,
    SCREENSHOT,
    TURNED,
    Chip,
    ChipProtocol,
    cut_chips,
    tile_footprints,
)
from bench.protocols.satellite import LANDSAT, S2_RGB, landsat_scenes, sentinel2_scenes
from geosearch import GeosearchError, similar
from geosearch.config import Settings

CLOUDY = ChipProtocol("cloudy (BQA)")
PASTED = ChipProtocol("block pasted")
OTHER_BANDS = ChipProtocol("B5,B6,B7 as R,G,B")
CLOUD_SHARE = 0.3  # a "cloudy" chip has at least this share of BQA cloud
PASTE_SIDE = 32


@dataclass(frozen=True)
class Round:
    """A database, the scene query chips are cut from, and the protocols."""

    dataset: str
    tile_size: int
    scene: Path
    database: list[Path]
    protocols: tuple[ChipProtocol, ...]
    rgb: tuple[int, int, int]
    min_col: int = 0


def rounds(folder: Path, years: str, only: str = "") -> list[Round]:
    """NAIP (2015 held out, or every year), Sentinel-2 and Landsat 8 (64 px) rounds; ``only``:
    those whose dataset starts with it (the others' scenes are not written)."""
    return [
        round_
        for dataset, make in (
            ("naip", lambda: naip_rounds(folder, years)),
            ("sentinel2", lambda: sentinel2_rounds(folder)),
            ("landsat8", lambda: landsat_rounds(folder)),
        )
        if dataset.startswith(only) or only.startswith(dataset)
        for round_ in make()
        if round_.dataset.startswith(only)
    ]


def naip_rounds(folder: Path, years: str) -> list[Round]:
    """NAIP 128 px: each held-out year against the other four, and its absent chips."""
    naip = sorted(NAIP.glob("*.tif"))
    held_out = naip if years == "all" else [y for y in naip if _year(y) == years]
    out = []
    for scene in held_out:
        others = [y for y in naip if y != scene]
        west = [_west(y, folder, 467) for y in others]
        present = (OFFSET, SCALED[1], TURNED, SCREENSHOT)
        out += [
            Round(f"naip {_year(scene)}", 128, scene, others, present, (1, 2, 3)),
            Round(f"naip {_year(scene)}", 128, scene, west, (ABSENT,), (1, 2, 3), 467 + 32),
        ]
    return out


def sentinel2_rounds(folder: Path) -> list[Round]:
    """Sentinel-2 128 px against its synthetic second date, and its absent chips."""
    s2_folder = folder / "sentinel2"
    s2_folder.mkdir(exist_ok=True)
    s2_original, s2_copies, shift = sentinel2_scenes(s2_folder, 128)
    s2_copy = s2_copies["shift+gain+noise"]
    s2_west = _west(s2_original, folder, 549)
    return [
        Round("sentinel2", 128, s2_copy, [s2_original], (OFFSET, SCALED[1]), tuple(S2_RGB)),
        Round("sentinel2", 128, s2_copy, [s2_west], (ABSENT,), tuple(S2_RGB), 549 + 32 - shift),
    ]


def landsat_rounds(folder: Path) -> list[Round]:
    """Landsat 8 at 64 px against its synthetic second date (with cloudy and changed places),
    and its absent chips."""
    l8_original, l8_copy = landsat_scenes(folder)
    l8_west = _west(l8_original, folder, 128)
    l8_present = (GRID, OFFSET, SCALED[1], TURNED, SCREENSHOT, CLOUDY, PASTED, OTHER_BANDS)
    return [
        Round("landsat8 64px", 64, l8_copy, [l8_original], l8_present, (4, 3, 2)),
        Round("landsat8 64px", 64, l8_copy, [l8_west], (ABSENT,), (4, 3, 2), 128 + 16),
    ]


def _west(scene: Path, folder: Path, columns: int) -> Path:
    path = folder / f"{scene.stem}_west.tif"
    if not path.exists():
        write_window(scene, path, 0, 0, columns)
    return path


def chips_of(round_: Round, protocol: ChipProtocol, count: int, folder: Path) -> list[Chip]:
    """Query chips: ``quality.cut_chips``, or for the Landsat cloud/changed protocols an
    offset chip altered (cloudy ones at places the BQA marks cloudy)."""
    seed = zlib.crc32(f"{round_.dataset} {protocol.name}".encode())
    rng = np.random.default_rng(seed)
    where = folder / f"{_slug(round_.dataset)}_{_slug(protocol.name)}"
    if protocol not in (CLOUDY, PASTED, OTHER_BANDS):
        return cut_chips(
            round_.scene, protocol, count, round_.tile_size, round_.rgb, where, rng, round_.min_col
        )
    import rasterio

    pool = cut_chips(round_.scene, OFFSET, count * 8, round_.tile_size, round_.rgb, where, rng)
    cloud = _bqa_cloud()
    chips = []
    for chip in pool:
        with rasterio.open(chip.path) as src:
            pixels, profile, names = src.read(), src.profile, src.descriptions
            col, row = (~_scene_transform(round_.scene)) * (src.transform.c, src.transform.f)
            row, col = round(row), round(col)
        side = round_.tile_size
        if protocol is CLOUDY:
            if cloud[row : row + side, col : col + side].mean() < CLOUD_SHARE:
                continue
        elif protocol is PASTED:
            pixels = pixels.copy()
            source = cut_chips(round_.scene, OFFSET, 1, side, round_.rgb, where / "from", rng)[0]
            with rasterio.open(source.path) as other:
                block = other.read()[:, :PASTE_SIDE, :PASTE_SIDE]
            top, left = rng.integers(0, side - PASTE_SIDE, size=2)
            pixels[:, top : top + PASTE_SIDE, left : left + PASTE_SIDE] = block
        else:  # B5,B6,B7 where B4,B3,B2 were
            pixels = pixels.copy()
            pixels[[3, 2, 1]] = pixels[[4, 5, 6]]
        write_raster(chip.path, profile, pixels, profile["transform"], names)
        chips.append(chip)
        if len(chips) == count:
            break
    return chips


def _bqa_cloud() -> np.ndarray:
    """The Landsat scene's BQA cloud bit (bit 4), on the grid of its bands."""
    import rasterio

    with rasterio.open(LANDSAT / "BQA.TIF") as src:
        return ((src.read(1) >> 4) & 1).astype(np.float64)


def _scene_transform(path: Path) -> Any:
    import rasterio

    with rasterio.open(path) as src:
        return src.transform


def search(db: Path, chip: Chip, settings: Settings, shapes: Any) -> dict[str, Any]:
    """One chip through ``similar``: hit, precision, whether and how well it was placed."""
    import shapely

    ids, footprints = shapes
    cover = shapely.area(shapely.intersection(footprints, chip.footprint)) / chip.footprint.area
    relevant = set(ids[cover >= RELEVANT_COVER].tolist())
    started = time.perf_counter()
    try:
        [result] = similar(db, [chip.path], top=K, settings=settings)
    except GeosearchError as exc:
        return {"refused": str(exc)}
    ms = (time.perf_counter() - started) * 1000
    found = [m.tile.id for m in result.matches]
    line = {"hit1": bool(found) and found[0] in relevant, "ms": ms}
    line["precision"] = len(relevant & set(found)) / K
    location = result.location
    line["located"] = location is not None
    if location is not None:
        covered = location.footprint.intersection(chip.lonlat).area / chip.lonlat.area
        line |= {"covered": covered, "correlation": location.correlation}
        for name in ("sigmas", "independent_pixels", "elsewhere", "margin"):
            line[name] = getattr(location, name, None)  # None: a library before these
    return line


def summarise(lines: list[dict[str, Any]], absent: bool) -> dict[str, Any]:
    done = [line for line in lines if "refused" not in line]
    placed = [line for line in done if line["located"]]
    false = [line for line in placed if absent or line["covered"] < RELEVANT_COVER]
    return {
        "queries": len(lines),
        "refused": len(lines) - len(done),
        "top1": round(float(np.mean([line["hit1"] for line in done])), 4),
        f"p_at_{K}": round(float(np.mean([line["precision"] for line in done])), 4),
        "located_share": round(len(placed) / max(1, len(done)), 4),
        "false_placements": len(false),
        "false_share": round(len(false) / max(1, len(done)), 4),
        "false_correlations": sorted(round(line["correlation"], 3) for line in false),
        "ms_p50": round(float(np.median([line["ms"] for line in done])), 1),
    }


def run_placements(
    work: Path,
    quick: bool,
    overrides: dict[str, Any] | None = None,
    compare: bool = False,
    years: str = "2015",
    record: Path | None = None,
    only: str = "",
) -> None:
    """Every round's chips searched with the second stage (``overrides`` on the defaults),
    false placements counted; ``compare``: also without it; ``record``: every query's line."""
    started = time.perf_counter()
    folder = work / "placements"
    folder.mkdir(exist_ok=True)
    count = 12 if quick else 40
    settings = Settings().with_overrides({"search.locate": True} | (overrides or {}))
    vectors_only = settings.with_overrides({"search.locate": False})
    totals: dict[str, list[int]] = {"present": [0, 0], "absent": [0, 0]}
    records = []
    for round_ in rounds(folder, years, only):
        db = folder / f"{_slug(round_.dataset)}_{round_.database[0].stem}.gpkg"
        if not db.exists():
            ingest_into(db, round_.database, {"tile_size": round_.tile_size})
        shapes = tile_footprints(db)
        for protocol in round_.protocols:
            chips = chips_of(round_, protocol, count, folder)
            searched = settings.with_overrides(dict(protocol.search))
            lines = [search(db, chip, searched, shapes) for chip in chips]
            summary = summarise(lines, protocol.absent)
            kind = "absent" if protocol.absent else "present"
            totals[kind][0] += summary["false_placements"]
            totals[kind][1] += summary["queries"] - summary["refused"]
            if compare:
                plain = vectors_only.with_overrides(dict(protocol.search))
                before = summarise([search(db, c, plain, shapes) for c in chips], protocol.absent)
                summary["vectors_only"] = {k: before[k] for k in ("top1", f"p_at_{K}", "ms_p50")}
            print(
                json.dumps(
                    {"bench": "placements", "dataset": round_.dataset, "protocol": protocol.name}
                    | summary
                ),
                flush=True,
            )
            records += [
                {"dataset": round_.dataset, "protocol": protocol.name} | line for line in lines
            ]
    if record is not None:
        record.write_text("\n".join(json.dumps(line) for line in records) + "\n")
    print(
        json.dumps(
            {"bench": "placements", "summary": "false placements / queries", "settings": overrides}
            | {kind: f"{false}/{n}" for kind, (false, n) in totals.items()}
            | {"seconds": round(time.perf_counter() - started, 1)}
        ),
        flush=True,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="12 chips per protocol, not 40")
    parser.add_argument("--workdir", type=Path, help="keep databases and chips here")
    parser.add_argument("--compare", action="store_true", help="also without the second stage")
    parser.add_argument("--years", default="2015", help="NAIP year held out, or 'all'")
    parser.add_argument("--record", type=Path, help="write every query's line (JSON lines)")
    parser.add_argument("--only", default="", help="datasets starting with this: naip, landsat8")
    parser.add_argument(
        "--set", action="append", default=[], help="a setting KEY=VALUE (repeatable)"
    )
    args = parser.parse_args(argv)
    overrides = {key: json.loads(value) for key, value in (s.split("=", 1) for s in args.set)}
    run = (args.quick, overrides, args.compare, args.years, args.record, args.only)
    if args.workdir:
        args.workdir.mkdir(parents=True, exist_ok=True)
        run_placements(args.workdir, *run)
    else:  # databases and chips are thrown away afterwards
        with tempfile.TemporaryDirectory() as work:
            run_placements(Path(work), *run)


if __name__ == "__main__":
    main()
