"""Any orientation: the dihedral group itself, and a turned chip found with --any-orientation."""

from __future__ import annotations

import itertools
import json

import numpy as np
import rasterio
from rasterio.windows import Window

import geosearch
from geosearch.orientation import ALL_ORIENTATIONS, IDENTITY, Orientation
from tests.conftest import SAMPLE_TILES, run_cli

NAIP_2012 = SAMPLE_TILES / "naip" / "m_4709963_se_14_1_20120731.tif"


def test_the_eight_orientations_are_the_dihedral_group():
    grid = np.arange(12).reshape(3, 4)  # no symmetry: every transform gives another array
    images = [o.apply(grid) for o in ALL_ORIENTATIONS]
    assert len({a.tobytes() + bytes(a.shape) for a in images}) == 8
    assert ALL_ORIENTATIONS[0] == IDENTITY
    for o in ALL_ORIENTATIONS:
        assert np.array_equal(o.inverse().apply(o.apply(grid)), grid)
    for a, b in itertools.product(ALL_ORIENTATIONS, repeat=2):  # closed under composition
        composed = b.apply(a.apply(grid))
        assert any(np.array_equal(composed, image) for image in images)
    bands = np.stack([grid, grid + 100])  # (bands, h, w): the same turn on every band
    turned = Orientation(1, True).apply(bands)
    assert np.array_equal(turned[1] - 100, turned[0])


def _turned_chip(path, tmp_path):
    """Tile 1 (row 0, col 256) of the 2012 sample, turned 90 degrees and mirrored."""
    with rasterio.open(NAIP_2012) as src:
        window = Window(256, 0, 256, 256)
        pixels = Orientation(1, True).apply(src.read(window=window))
        profile = src.profile | {"width": 256, "height": 256, "photometric": "MINISBLACK",
                                 "transform": src.window_transform(window)}  # fmt: skip
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(pixels)
    return path


def test_turned_chip_finds_its_original_only_with_any_orientation(naip_db, tmp_path):
    chip = _turned_chip(tmp_path / "turned.tif", tmp_path)
    [plain] = geosearch.similar(naip_db, [chip], top=20)
    [turned] = geosearch.similar(naip_db, [chip], top=20, any_orientation=True)

    def original(result):
        for match in result.matches:
            where = (match.tile.window.row, match.tile.window.col)
            if match.tile.path.endswith("20120731.tif") and where == (0, 256):
                return match
        return None

    without, found = original(plain), original(turned)
    print(f"original tile without --any-orientation: rank {without and without.rank}, "
          f"score {without and round(without.score, 3)}; with: rank {found.rank}, "
          f"score {found.score:.3f}")  # fmt: skip
    assert found.rank == 1 and found.score > 0.99  # turned back, the very same pixels
    assert without is None or without.score < 0.9  # as it lies, a poor match


def test_any_orientation_from_the_cli_for_an_indexed_tile(naip_db, tmp_path):
    result = run_cli("similar", str(NAIP_2012), "--tile", "1", "--any-orientation", "--json",
                     "--db", str(naip_db), "--out", str(tmp_path / "o"))  # fmt: skip
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert answer["query"]["any_orientation"] and answer["query"]["indexed"]
    assert len(answer["results"]) == 5
    first = answer["results"][0]
    assert (first["row"], first["col"]) == (0, 256)  # the same place in another year
