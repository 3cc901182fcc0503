"""Ingest throughput on real imagery (tiles/s, peak memory) against one-tile-at-a-time.

Corpus: the five NAIP years in ../shared/data/naip (4-band uint8, 934 x 723 px), linked
``--copies`` times under distinct names so the ingest has enough tiles to measure. Prints
one JSON line per measurement. Run: ``.venv/bin/python bench/ingest.py [--copies 20]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NAIP = ROOT.parent / "shared" / "data" / "naip"


def make_corpus(folder: Path, copies: int) -> int:
    """Symlink the NAIP files ``copies`` times; returns how many files."""
    folder.mkdir(parents=True, exist_ok=True)
    count = 0
    for copy in range(copies):
        for source in sorted(NAIP.glob("*.tif")):
            (folder / f"c{copy:03d}_{source.name}").symlink_to(source)
            count += 1
    return count


def _peak_rss_mb() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return round(max(own, children) / 1024, 1)


def run_one(mode: str, corpus: str, db: str, tile_size: int, workers: int, cnn: bool) -> dict:
    """One measurement, in this (fresh) process."""
    import geosearch
    from geosearch.config import Settings

    settings = Settings().with_overrides(
        {"tile_size": tile_size, "workers": workers, "features.cnn.weight": 1.0 if cnn else 0.0}
    )
    started = time.perf_counter()
    if mode == "geosearch":
        report = geosearch.ingest([corpus], db, settings)
        tiles = report.tiles_added
    else:
        tiles = _one_tile_at_a_time(Path(corpus), Path(db), settings)
    seconds = time.perf_counter() - started
    return {
        "bench": "ingest",
        "mode": mode,
        "features": "band_stats+cnn" if cnn else "band_stats",
        "tile_size": tile_size,
        "workers": workers,
        "tiles": tiles,
        "seconds": round(seconds, 2),
        "tiles_per_s": round(tiles / seconds, 1),
        "peak_rss_mb": _peak_rss_mb(),
    }


def _one_tile_at_a_time(corpus: Path, db: Path, settings) -> int:
    """The naive recipe: read a tile, run the features on it alone, commit it, repeat."""
    from geosearch.ingest import SilentProgress, create_catalog, discover, plan_files
    from geosearch.sources import open_source
    from geosearch.store import Store

    files = discover([corpus])
    tiles = 0
    with Store(db, create=True) as store:
        catalog, _ = create_catalog(store, settings, plan_files(files, store), SilentProgress())
        for path in files:
            with open_source(Path(path)) as source:
                for window in catalog.windows(source):
                    embedded = catalog.embed(path, [window])
                    store.write_batch(
                        list(zip(embedded.records, embedded.vectors, embedded.raw, strict=True))
                    )
                    tiles += len(embedded.records)
    return tiles


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--copies", type=int, default=20, help="copies of the 5 NAIP files")
    parser.add_argument("--tile-size", type=int, default=256)
    parser.add_argument("--one", nargs=4, metavar=("MODE", "CORPUS", "WORKERS", "CNN"))
    args = parser.parse_args()
    if args.one:  # a single measurement in a child process (clean peak RSS)
        mode, corpus, workers, cnn = args.one
        db = tempfile.mktemp(suffix=".gpkg", dir=Path(corpus).parent)
        print(json.dumps(run_one(mode, corpus, db, args.tile_size, int(workers), cnn == "1")))
        return
    if not NAIP.is_dir():
        sys.exit(f"{NAIP} not found: bench/ needs ../shared/data beside the project")
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus"
        files = make_corpus(corpus, args.copies)
        print(json.dumps({"bench": "ingest", "corpus": f"{files} NAIP files (symlinks)",
                          "machine": f"{platform.machine()}, {cores} cores",
                          "date": time.strftime("%Y-%m-%d")}))  # fmt: skip
        runs = [
            ("baseline", 1, "0"), ("geosearch", 1, "0"), ("geosearch", cores, "0"),
            ("baseline", 1, "1"), ("geosearch", 1, "1"), ("geosearch", cores, "1"),
        ]  # fmt: skip
        for mode, workers, cnn in runs:
            child = subprocess.run(
                [sys.executable, __file__, "--tile-size", str(args.tile_size),
                 "--one", mode, str(corpus), str(workers), cnn],
                capture_output=True, text=True, check=False,
            )  # fmt: skip
            line = child.stdout.strip().splitlines()[-1] if child.stdout.strip() else ""
            print(line or json.dumps({"error": child.stderr.strip()[-300:]}), flush=True)
            for leftover in Path(tmp).glob("*.gpkg*"):
                leftover.unlink()
        shutil.rmtree(corpus)


if __name__ == "__main__":
    main()
