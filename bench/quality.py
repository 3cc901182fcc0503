"""Retrieval quality on real imagery with honest ground truth: one JSON line per measurement.

One module per protocol family in ``bench/protocols/`` (each says what it measures):
``same_place`` (NAIP, the same place in other years, shifted copies, feedback rounds),
``satellite`` (Sentinel-2 shifted copies, band statistics on 12 bands or RGB), ``orientation``
(turned query chips), ``offgrid`` (query chips cut anywhere, searched as a user would),
``scenes`` (whole scenes as queries), ``compact`` (projected vectors) and ``kinds`` (a similar
kind of place on EuroSAT: ``--only semantic``); ``common`` holds the ground truth, the
metrics, ingest and ``emit``.

    .venv/bin/python bench/quality.py --quick    # 128 px, each block alone + default (< 60 s)
    .venv/bin/python bench/quality.py            # 128 and 256 px, every config, off the grid
    .venv/bin/python bench/quality.py --only orientation  # that part alone (~2 min)
    .venv/bin/python bench/quality.py --only offgrid --quick  # off the grid, 2015 only (~1 min)
    .venv/bin/python bench/quality.py --only semantic --quick  # EuroSAT kinds, 100 a class
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.protocols.common import emit  # noqa: E402
from bench.protocols.compact import run_compact  # noqa: E402
from bench.protocols.kinds import run_kinds  # noqa: E402
from bench.protocols.offgrid import run_offgrid  # noqa: E402
from bench.protocols.orientation import run_orientation  # noqa: E402
from bench.protocols.placements import run_placements  # noqa: E402
from bench.protocols.same_place import run_naip  # noqa: E402
from bench.protocols.satellite import run_sentinel2  # noqa: E402
from bench.protocols.scenes import run_scenes  # noqa: E402


def run(work: Path, quick: bool, only: str | None = None) -> None:
    if only == "compact":
        run_compact(work, quick)
        return
    if only == "orientation":
        run_orientation(work, quick)
        return
    if only == "offgrid":
        run_offgrid(work, quick)
        return
    if only == "scenes":
        run_scenes(work, quick)
        return
    if only == "semantic":
        run_kinds(work, quick)
        return
    if only == "placements":
        run_placements(work, quick, compare=True)
        return
    for tile_size in (128,) if quick else (128, 256):
        run_naip(work, tile_size, quick)
        run_sentinel2(work, tile_size, quick)
        if tile_size == 128:
            run_orientation(work, quick)  # reuses the 128 px databases run_naip made
    run_scenes(work, quick)
    run_compact(work, quick)
    if not quick:
        run_offgrid(work, quick)
        run_placements(work, quick, compare=True)
        run_kinds(work, quick)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="128 px only, fewer configs")
    parser.add_argument("--workdir", type=Path, help="keep the databases here (default: temp)")
    parser.add_argument(
        "--only",
        choices=["orientation", "offgrid", "placements", "scenes", "compact", "semantic"],
        help="run only this part: NAIP 128 px orientation, queries cut anywhere (offgrid), "
        "false placements of the second stage (placements), whole scenes as queries, compact "
        "vectors, or kinds of places on EuroSAT (semantic)",
    )
    args = parser.parse_args(argv)
    started = time.perf_counter()
    if args.workdir:
        args.workdir.mkdir(parents=True, exist_ok=True)
        run(args.workdir, args.quick, args.only)
    else:
        with tempfile.TemporaryDirectory(prefix="geosearch-quality-") as work:
            run(Path(work), args.quick, args.only)
    done = {"done": True, "quick": args.quick, "only": args.only}
    emit(done | {"seconds": round(time.perf_counter() - started, 1)})


if __name__ == "__main__":
    main()
