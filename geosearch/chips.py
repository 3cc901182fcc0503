"""Training data out: a feedback session's marked tiles (and background negatives) as chips.

``export_chips`` writes each tile's pixels as read by ingest (every band of the database's
manifest, in the file's dtype): a GeoTIFF with the file's CRS and the window's geotransform for
rasters, a PNG for pictures. The layout is the one torchvision's ``ImageFolder`` reads, a folder
per class: ``DIR/good/`` (tiles marked good) and ``DIR/bad/`` (tiles marked bad and the
background negatives drawn at random from the unmarked tiles). Beside them, ``labels.csv`` (a
row per chip) and, for georeferenced databases, ``chips.gpkg``: the chips' footprints (layer
``chips``) with the same columns.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import rasterio.windows
from rasterio.errors import RasterioError

from geosearch.catalog import Catalog
from geosearch.errors import GeosearchError, OutputError
from geosearch.pixels import RawTile
from geosearch.render import png_bytes, write_bytes, write_layer
from geosearch.sources import open_source
from geosearch.store import TileRecord

LABELS_NAME = "labels.csv"
FOOTPRINTS_NAME = "chips.gpkg"
COLUMNS = ("chip", "label", "origin", "tile_id", "source_file", "row", "col", "width", "height",
           "acquired", "crs", "marked_at", "marked_by")  # fmt: skip


@dataclass
class ChipExport:
    """What ``export_chips`` wrote: chips per class, the files beside them, tiles unreadable."""

    out: Path
    good: int = 0
    bad: int = 0
    background: int = 0
    files: list[Path] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def summary(self) -> str:
        skipped = f"; {len(self.skipped)} unreadable tiles left out" if self.skipped else ""
        return (
            f"wrote {self.good} good and {self.bad + self.background} bad chips "
            f"({self.background} of them background) to {self.out}, with "
            + ", ".join(path.name for path in self.files)
            + skipped
        )


def export_chips(
    catalog: Catalog, session: dict[str, Any], out_dir: Path, negatives: int, seed: int = 0
) -> ChipExport:
    """Chips of every tile marked in ``session`` (as ``sessions.session_marks`` gives it) and
    of ``negatives`` unmarked tiles drawn at random, under ``out_dir``."""
    marked = [(m["tile"], m) for m in session["marks"] if m.get("tile") is not None]
    leave_out = {tile.id for tile, _ in marked}
    background = catalog.store.tiles(catalog.store.sample_ids(negatives, seed, leave_out))
    chips = [(tile, "good" if m["label"] > 0 else "bad", "marked", m) for tile, m in marked]
    chips += [(tile, "bad", "background", {}) for tile in background]
    result = ChipExport(Path(out_dir))
    try:
        for label in ("good", "bad"):
            (result.out / label).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot write to {out_dir}: {exc.strerror or exc}") from None
    rows, footprints = [], []
    for tile, label, origin, mark in sorted(chips, key=lambda c: (c[0].path, c[0].id)):
        try:
            chip = _write_chip(catalog, tile, result.out / label)
        except GeosearchError as exc:
            result.skipped.append(f"tile {tile.id}: {exc}")
            continue
        if origin == "background":
            result.background += 1
        elif label == "good":
            result.good += 1
        else:
            result.bad += 1
        window = tile.window
        rows.append({
            "chip": chip.relative_to(result.out).as_posix(), "label": label, "origin": origin,
            "tile_id": tile.id, "source_file": tile.path, "row": window.row, "col": window.col,
            "width": window.width, "height": window.height, "acquired": tile.acquired or "",
            "crs": tile.crs or "", "marked_at": mark.get("marked_at") or "",
            "marked_by": mark.get("marked_by") or "",
        })  # fmt: skip
        footprints.append(tile.footprint)
    labels = result.out / LABELS_NAME
    try:
        with labels.open("w", newline="", encoding="utf-8") as stream:
            writer = csv.DictWriter(stream, COLUMNS)
            writer.writeheader()
            writer.writerows(rows)
    except OSError as exc:
        raise OutputError(f"cannot write {labels}: {exc.strerror or exc}") from None
    result.files.append(labels)
    if any(footprint is not None for footprint in footprints):
        columns = {name: np.array([row[name] for row in rows], dtype=object) for name in COLUMNS}
        for name in ("tile_id", "row", "col", "width", "height"):
            columns[name] = columns[name].astype(np.int64)
        result.files.append(write_layer(result.out / FOOTPRINTS_NAME, "chips", footprints, columns))
    return result


def _write_chip(catalog: Catalog, tile: TileRecord, folder: Path) -> Path:
    """One tile's pixels as ``folder/tileID.tif`` (rasters) or ``.png`` (pictures)."""
    with open_source(Path(tile.path)) as source:
        bands = catalog.manifest.bands_for(source, None, catalog.name)
        raw = source.read(tile.window, bands)
        if source.kind == "plain":
            return _write_png(raw, folder / f"tile{tile.id}.png")
        transform = source.transform
        crs = source.crs_wkt
        names = [source.band_names[b - 1] for b in bands]
    path = folder / f"tile{tile.id}.tif"
    bands_count, height, width = raw.pixels.shape
    profile = {
        "driver": "GTiff", "width": width, "height": height, "count": bands_count,
        "dtype": raw.pixels.dtype, "crs": crs, "photometric": "MINISBLACK",
        "transform": rasterio.windows.transform(tile.window.as_rasterio(), transform)
        if transform is not None else None,
    }  # fmt: skip
    try:
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(raw.pixels)
            dst.descriptions = tuple(names)
            if not raw.valid.all():
                dst.write_mask(raw.valid.astype(np.uint8) * 255)
    except (RasterioError, OSError) as exc:
        raise OutputError(f"cannot write {path}: {exc}") from None
    return path


def _write_png(raw: RawTile, path: Path) -> Path:
    pixels = np.moveaxis(raw.pixels, 0, -1)
    if not raw.valid.all():
        pixels = np.dstack([pixels, raw.valid.astype(np.uint8) * 255])
    write_bytes(path, png_bytes(pixels))
    return path
