"""The second stage of plain-image databases: near copies of the query picture, by its pixels.

A gallery has no scenes to place a query in, but the same question comes first: is this
picture already here? The vectors rank pictures by kind (expanded and augmented, see
``geosearch.index``), which can put pictures of the query's kind above a near copy of it (a
little cropped, resized, saved again). So ``COPY_SHORTLIST`` pictures are compared with it by
their pixels, those of the index's ``COPY_POOL`` x as many nearest whose own vectors (not
augmented) are nearest the query's: grey thumbnails ``THUMB_SIDE`` px a side,
each with its mean removed, at unit length, so that their inner product is their correlation.
Each picture is read as ``BASE`` x ``BASE`` grey (a box filter) and thumbnailed whole and in
parts (``crop_boxes``: ``CROPS`` of each side cut off, at the centre or toward a side or
corner), all pictures at once from their summed-area tables; two pictures correlate as well
as one whole matches some part of the other (either way round). Those at ``COPY_CORRELATION``
or more are near copies and lead the results, scored 1 + their correlation (bench/README.md,
"Kinds of places", measured them). An any-orientation query is compared under its eight
turns and mirrors, the best of them counting.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from geosearch.orientation import IDENTITY, Orientation
from geosearch.store import TileRecord

THUMB_SIDE = 16
BASE = 64  # px a side each picture is read at before its parts are cut
CROPS = (0.0, 0.025, 0.05, 0.075, 0.1, 0.125)  # share of each side cut off
COPY_SHORTLIST = 20
COPY_POOL = 5  # the shortlist: the 20 of the index's 100 nearest whose own vectors are nearest
COPY_CORRELATION = 0.9
_FLAT = 1e-3  # a thumbnail with less contrast than this (0..255 grey) has no pattern to match


def crop_boxes() -> list[tuple[float, float, float]]:
    """(left, top, side) of each part thumbnailed, as shares of the picture: the whole, then for
    each of ``CROPS`` a part that much smaller on each side, at the centre and toward every
    side and corner (a copy cut off-centre is one of these)."""
    boxes = [(0.0, 0.0, 1.0)]
    for crop in CROPS[1:]:
        shifts = (0.0, crop, 2 * crop)
        boxes += [(x, y, 1 - 2 * crop) for y in shifts for x in shifts]
    return boxes


def grey(path: str | Path) -> np.ndarray | None:
    """A picture as (BASE, BASE) float grey (EXIF orientation applied, JPEGs decoded at a
    reduced size, then a box filter), or None if it cannot be read."""
    try:
        with warnings.catch_warnings(), Image.open(path) as image:
            warnings.simplefilter("ignore")  # what Pillow tolerates, decoding decides
            image.draft("L", (2 * BASE, 2 * BASE))  # JPEG: decoded smaller
            picture = ImageOps.exif_transpose(image).convert("L")
            small = picture.resize((BASE, BASE), Image.Resampling.BOX)
    except (OSError, ValueError, SyntaxError, UnidentifiedImageError, Image.DecompressionBombError):
        return None
    return np.asarray(small, dtype=np.float64)


def thumbnails(greys: np.ndarray) -> np.ndarray:
    """(pictures, parts, THUMB_SIDE²) of (pictures, BASE, BASE) grey pictures: each part of
    ``crop_boxes`` cut into THUMB_SIDE x THUMB_SIDE cells, each cell's sum, then each
    thumbnail's mean removed, at unit length (a flat one stays zero). Cell sums come from the
    pictures' summed-area tables read between pixels by bilinear interpolation (exact for the
    area under pixels of constant value): first along rows for each distinct run of rows the
    parts have, then along columns, part by part, in one gather."""
    tables = np.zeros((len(greys), BASE + 1, BASE + 1), dtype=np.float32)
    tables[:, 1:, 1:] = greys.cumsum(1).cumsum(2)
    (y0, fy, part_rows), (x0, fx, part_columns) = _corners()
    fy = fy[None, :, :, None]
    across = tables[:, y0] * (1 - fy) + tables[:, y0 + 1] * fy  # (n, row runs, S + 1, BASE + 1)
    runs = part_rows[:, None, None]
    lines = np.arange(THUMB_SIDE + 1)[None, :, None]
    columns = x0[part_columns][:, None, :]  # (parts, 1, S + 1)
    share = fx[part_columns][None, :, None, :]
    left = across[:, runs, lines, columns]  # (n, parts, S + 1, S + 1)
    right = across[:, runs, lines, columns + 1]
    at = left * (1 - share) + right * share  # the tables at every cell corner of every part
    cells = at[..., 1:, 1:] - at[..., :-1, 1:] - at[..., 1:, :-1] + at[..., :-1, :-1]
    values = cells.reshape(len(greys), len(part_rows), -1)
    values -= values.mean(axis=2, keepdims=True)
    norms = np.linalg.norm(values, axis=2, keepdims=True)
    return values / np.where(norms > _FLAT * THUMB_SIDE, norms, np.inf)


@cache
def _corners() -> tuple[tuple[np.ndarray, np.ndarray, np.ndarray], ...]:
    """Where the parts' cell corners fall in a BASE-px picture, for rows then columns: the
    distinct runs' whole pixels and the share beyond them, each (runs, THUMB_SIDE + 1), and
    each part's run."""
    steps = np.linspace(0.0, 1.0, THUMB_SIDE + 1)
    out = []
    for axis in (1, 0):  # rows: the parts' tops; columns: their lefts
        runs = sorted({(box[axis], box[2]) for box in crop_boxes()})
        starts, sides = (np.array(column)[:, None] for column in zip(*runs, strict=True))
        at = (starts + sides * steps) * BASE
        whole = np.minimum(at.astype(int), BASE - 1)
        run_of = np.array([runs.index((box[axis], box[2])) for box in crop_boxes()])
        out.append((whole, (at - whole).astype(np.float32), run_of))
    return tuple(out)


def near_copies(
    query: str | Path,
    candidates: Sequence[TileRecord],
    orientations: Sequence[Orientation] = (IDENTITY,),
) -> list[tuple[float, int]]:
    """(correlation, tile id) of the ``candidates`` whose pictures are near copies of the
    picture at ``query`` under any of its ``orientations`` (all eight: turned or mirrored
    copies too), best first (none if the query cannot be read)."""
    own = grey(query)
    read = [(tile.id, picture) for tile in candidates if (picture := grey(tile.path)) is not None]
    if own is None or not read:
        return []
    views = [orientation.apply(own) for orientation in orientations]
    parts = thumbnails(np.stack(views + [picture for _, picture in read]))
    mine, theirs = parts[: len(views)], parts[len(views) :]
    # each view whole against each candidate's parts, each candidate whole against the views'
    correlation = np.maximum(
        np.einsum("cps,vs->cvp", theirs, mine[:, 0]).max(axis=(1, 2)),
        np.einsum("cs,vps->cvp", theirs[:, 0], mine).max(axis=(1, 2)),
    )
    found = [
        (float(c), tile_id)
        for c, (tile_id, _) in zip(correlation, read, strict=True)
        if c >= COPY_CORRELATION
    ]
    return sorted(found, reverse=True)
