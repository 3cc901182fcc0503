"""The second stage of plain-image databases: near copies of the query picture, by its pixels.

A gallery has no scenes to place a query in, but the same question comes first: is this
picture already here? The vectors rank pictures by kind (expanded and augmented, see
``geosearch.index``), which can put pictures of the query's kind above a near copy of it (a
little cropped, resized, saved again). So the query's ``COPY_SHORTLIST`` nearest pictures by
its own vector are compared with it by their pixels: grey thumbnails ``THUMB_SIDE`` px a side,
each with its mean removed, at unit length, so that their inner product is their correlation.
Each picture is thumbnailed whole and in parts (``crop_boxes``: ``CROPS`` of each side cut
off, at the centre or toward a side or corner); two pictures correlate as well as one whole
matches some part of the other (either way round). Those at ``COPY_CORRELATION`` or more are
near copies and lead the results, scored 1 + their correlation (bench/README.md, "Near copies
in a plain database", measured them).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from geosearch.store import TileRecord

THUMB_SIDE = 16
CROPS = (0.0, 0.025, 0.05, 0.075, 0.1, 0.125)  # share of each side cut off
COPY_SHORTLIST = 20
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


def thumbnails(path: str | Path) -> np.ndarray | None:
    """(parts, THUMB_SIDE²) a picture's grey thumbnails of each of ``crop_boxes``, the whole
    first (EXIF orientation applied, decoded at about ``8 * THUMB_SIDE`` px), each with its
    mean removed, at unit length; None if it cannot be read or is one flat grey."""
    try:
        with warnings.catch_warnings(), Image.open(path) as image:
            warnings.simplefilter("ignore")  # what Pillow tolerates, decoding decides
            image.draft("L", (8 * THUMB_SIDE, 8 * THUMB_SIDE))  # JPEG: decoded smaller
            grey = ImageOps.exif_transpose(image).convert("L")
            factor = max(grey.size) // (8 * THUMB_SIDE)
            if factor > 1:
                grey = grey.reduce(factor)
            values = _box_means(np.asarray(grey, dtype=np.float64), crop_boxes())
    except (OSError, ValueError, SyntaxError, UnidentifiedImageError, Image.DecompressionBombError):
        return None
    values -= values.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(values, axis=1, keepdims=True)
    if norms[0, 0] <= _FLAT * THUMB_SIDE:
        return None
    return (values / np.maximum(norms, 1e-6)).astype(np.float32)


def _box_means(grey: np.ndarray, boxes: Sequence[tuple[float, float, float]]) -> np.ndarray:
    """(len(boxes), THUMB_SIDE²): each box (left, top, side as shares) of ``grey`` cut into
    THUMB_SIDE x THUMB_SIDE cells, each cell's sum (what a box filter gives, up to a constant
    per box): from the summed-area table, read between pixels by bilinear interpolation, which
    is exact for the area under pixels of constant value."""
    height, width = grey.shape
    table = np.zeros((height + 1, width + 1))
    table[1:, 1:] = grey.cumsum(0).cumsum(1)
    steps = np.linspace(0.0, 1.0, THUMB_SIDE + 1)
    lefts, tops, sides = (np.array(column)[:, None] for column in zip(*boxes, strict=True))
    xs = (lefts + sides * steps) * width  # (boxes, THUMB_SIDE + 1)
    ys = (tops + sides * steps) * height
    x0 = np.minimum(xs.astype(int), width - 1)
    y0 = np.minimum(ys.astype(int), height - 1)
    fx, fy = (xs - x0)[:, None, :], (ys - y0)[:, :, None]
    rows = table[y0] * (1 - fy) + table[y0 + 1] * fy  # (boxes, THUMB_SIDE + 1, width + 1)
    x0 = np.broadcast_to(x0[:, None, :], fx.shape[:1] + (THUMB_SIDE + 1, THUMB_SIDE + 1))
    left = np.take_along_axis(rows, x0, 2)
    right = np.take_along_axis(rows, x0 + 1, 2)
    at = left * (1 - fx) + right * fx  # the table at every cell corner of every box
    cells = at[:, 1:, 1:] - at[:, :-1, 1:] - at[:, 1:, :-1] + at[:, :-1, :-1]
    return cells.reshape(len(boxes), -1)


def near_copies(query: str | Path, candidates: Sequence[TileRecord]) -> list[tuple[float, int]]:
    """(correlation, tile id) of the ``candidates`` whose pictures are near copies of the
    picture at ``query``, best first (none if the query cannot be read)."""
    own = thumbnails(query)
    if own is None:
        return []
    found = []
    for tile in candidates:
        other = thumbnails(tile.path)
        if other is None:
            continue
        correlation = float(max((own[0] @ other.T).max(), (other[0] @ own.T).max()))
        if correlation >= COPY_CORRELATION:
            found.append((correlation, tile.id))
    return sorted(found, reverse=True)
