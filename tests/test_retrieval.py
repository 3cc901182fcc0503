"""Real-world retrieval: a NAIP chip of one year finds the same place in the other years."""

from __future__ import annotations

import numpy as np

import geosearch
from geosearch.config import Settings
from geosearch.store import Store
from tests.conftest import shared

# Measured 2026-11-25 with the default features (band_stats + layout + cnn) at 128 px:
# top-1 0.975 over all 240 tiles (chance: 4/239 = 0.017).
MIN_TOP1 = 0.93


def test_naip_same_place_other_year_top1(tmp_path):
    db = tmp_path / "naip128.gpkg"
    geosearch.ingest([shared("naip")], db, Settings().with_overrides({"tile_size": 128}))
    with Store(db) as store:
        ids, vectors = store.vectors()
        tiles = store.tiles(ids.tolist())
    years = np.array([t.acquired[:4] for t in tiles])
    places = np.array([f"{t.window.row},{t.window.col}" for t in tiles])
    similarity = vectors @ vectors.T
    hits = []
    for i in range(len(tiles)):
        other_years = years != years[i]
        best = np.argmax(np.where(other_years, similarity[i], -np.inf))
        hits.append(places[best] == places[i])
    top1 = float(np.mean(hits))
    print(f"NAIP 128 px same-place top-1 over {len(tiles)} tiles: {top1:.3f}")
    assert top1 >= MIN_TOP1
