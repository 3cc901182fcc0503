"""The eight orientations of a tile: rotations by 0/90/180/270 degrees and their mirrors.

Overhead imagery has no "up": the dihedral group D4 acting on the pixel grid. Each transform
is applied to a (bands, h, w) array and to its (h, w) validity mask alike.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from geosearch.pixels import RawTile


@dataclass(frozen=True)
class Orientation:
    """Turn by ``quarter_turns`` x 90 degrees counter-clockwise, after mirroring if asked."""

    quarter_turns: int
    mirrored: bool

    @property
    def name(self) -> str:
        return f"{'mirror+' if self.mirrored else ''}rot{90 * self.quarter_turns}"

    def apply(self, array: np.ndarray) -> np.ndarray:
        """The transform on the last two axes (rows, columns)."""
        if self.mirrored:
            array = array[..., ::-1]
        return np.ascontiguousarray(np.rot90(array, self.quarter_turns, axes=(-2, -1)))

    def inverse(self) -> Orientation:
        return self if self.mirrored else Orientation((4 - self.quarter_turns) % 4, False)


IDENTITY = Orientation(0, False)
ALL_ORIENTATIONS = tuple(
    Orientation(turns, mirror) for mirror in (False, True) for turns in range(4)
)


def turned(tile: RawTile, orientation: Orientation) -> RawTile:
    """The tile's pixels and mask under ``orientation``."""
    return RawTile(pixels=orientation.apply(tile.pixels), valid=orientation.apply(tile.valid))


def zoomed(tile: RawTile, share: float) -> RawTile:
    """The central ``share`` of the tile, enlarged back to its size (nearest pixel)."""
    height, width = tile.valid.shape
    rows = ((np.arange(height) + 0.5) * share + height * (1 - share) / 2).astype(int)
    cols = ((np.arange(width) + 0.5) * share + width * (1 - share) / 2).astype(int)
    return RawTile(pixels=tile.pixels[:, rows][:, :, cols], valid=tile.valid[rows][:, cols])


# What the vectors should not see as a difference: a turn, a mirror, a closer look.
COPY_TRANSFORMS = (Orientation(1, False), Orientation(2, False), Orientation(0, True))
COPY_ZOOM = 0.75


def invariance_copies(tile: RawTile) -> list[RawTile]:
    """Copies of a tile showing the same place: turned by 90 and 180 degrees, mirrored, and its
    central 75 % enlarged; the projection learns to discount how they differ from it."""
    return [turned(tile, o) for o in COPY_TRANSFORMS] + [zoomed(tile, COPY_ZOOM)]
