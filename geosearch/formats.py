"""File kinds by name: which suffixes are georeferenced rasters and which plain pictures."""

from __future__ import annotations

import os

GEO_SUFFIXES = frozenset({".tif", ".tiff", ".gtiff", ".vrt", ".jp2", ".img"})
PLAIN_SUFFIXES = frozenset({".jpg", ".jpeg", ".png"})
IMAGE_SUFFIXES = GEO_SUFFIXES | PLAIN_SUFFIXES
KINDS = {"geo": "georeferenced rasters", "plain": "plain images (JPEG/PNG)"}


def kind_of(path: str | os.PathLike[str]) -> str:
    """ "plain" for a JPEG/PNG picture, "geo" for anything else (rasters, scenes)."""
    return "plain" if os.path.splitext(os.fspath(path))[1].lower() in PLAIN_SUFFIXES else "geo"


def is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES
