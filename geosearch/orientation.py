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
