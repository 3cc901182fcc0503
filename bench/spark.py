"""Spark engine throughput: tiles/s for local[1] vs local[2] vs the local engine, same files.

Corpus: ../shared/data/naip linked ``--copies`` times (see bench/ingest.py). Default features
(band statistics + CNN), 256 px tiles. One JSON line per run; each run in a fresh process.
Run: ``.venv/bin/python bench/spark.py [--copies 10]``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ingest import NAIP, make_corpus  # noqa: E402


def run_one(corpus: str, engine: str, master: str | None, workers: int) -> dict:
    import geosearch
    from geosearch.config import Settings

    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    db = tempfile.mktemp(suffix=".gpkg", dir=Path(corpus).parent)
    settings = Settings().with_overrides({"workers": workers})
    if engine == "spark":  # start Spark first: its start-up is not per-tile work
        from geosearch.engines.spark import spark_session

        spark_session(settings.spark, master)
    started = time.perf_counter()
    report = geosearch.ingest([corpus], db, settings, engine=engine, master=master)
    seconds = time.perf_counter() - started
    return {
        "bench": "spark",
        "engine": report.engine,
        "workers": workers if engine == "local" else None,
        "tiles": report.tiles_added,
        "seconds": round(seconds, 2),
        "tiles_per_s": round(report.tiles_added / seconds, 1),
        "remote_chunks": report.remote_chunks,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--copies", type=int, default=10)
    parser.add_argument("--one", nargs=4, metavar=("CORPUS", "ENGINE", "MASTER", "WORKERS"))
    args = parser.parse_args()
    if args.one:
        corpus, engine, master, workers = args.one
        print(json.dumps(run_one(corpus, engine, None if master == "-" else master, int(workers))))
        return
    if not NAIP.is_dir():
        sys.exit(f"{NAIP} not found: bench/ needs ../shared/data beside the project")
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus"
        files = make_corpus(corpus, args.copies)
        print(json.dumps({"bench": "spark", "corpus": f"{files} NAIP files",
                          "cores": os.cpu_count(), "date": time.strftime("%Y-%m-%d")}))  # fmt: skip
        for engine, master, workers in (
            ("local", "-", 1), ("local", "-", os.cpu_count() or 1),
            ("spark", "local[1]", 0), ("spark", "local[2]", 0),
        ):  # fmt: skip
            child = subprocess.run(
                [sys.executable, __file__, "--one", str(corpus), engine, master, str(workers)],
                capture_output=True, text=True, check=False,
            )  # fmt: skip
            lines = [line for line in child.stdout.splitlines() if line.startswith("{")]
            print(lines[-1] if lines else json.dumps({"error": child.stderr[-400:]}), flush=True)
            for leftover in Path(tmp).glob("*.gpkg*"):
                leftover.unlink()


if __name__ == "__main__":
    main()
