"""The local engine: worker processes on this machine read and embed chunks of tiles.

Chunks go to ``workers`` processes (or run in this process when ``workers`` is 1), at most two
per worker in flight, so memory stays bounded whatever the archive size; results come back in
submission order to the shared writer (``engines.base``).
"""

from __future__ import annotations

import multiprocessing
import os
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from geosearch.catalog import Catalog, EmbeddedTiles
from geosearch.config import Settings
from geosearch.engines.base import (
    Chunk,
    ChunkFailure,
    embed_chunk,
)
from geosearch.errors import GeosearchError
from geosearch.pixels import Window
from geosearch.sources import gdal_messages

_worker_catalog: Catalog | None = None


def _start_worker(catalog: Catalog) -> None:
    global _worker_catalog
    _worker_catalog = catalog
    gdal_messages()  # as the parent process shows them


def _embed_in_worker(
    path: str, windows: list[Window] | None, select: Sequence[int] | None
) -> EmbeddedTiles | ChunkFailure:
    assert _worker_catalog is not None
    return embed_chunk(_worker_catalog, path, windows, select)


def worker_count(settings: Settings) -> int:
    return settings.workers or os.cpu_count() or 1


class LocalScheduler:
    """Chunks in ``workers`` processes (forkserver), or inline when ``workers`` is 1."""

    label = "local"
    remote_chunks = 0

    def __init__(self, workers: int) -> None:
        self.workers = workers

    def run(
        self, catalog: Catalog, chunks: Iterator[Chunk], bands: Sequence[int] | None
    ) -> Iterator[tuple[Chunk, EmbeddedTiles | ChunkFailure]]:
        if self.workers <= 1:
            for chunk in chunks:
                yield chunk, embed_chunk(catalog, chunk.plan.path, chunk.windows, bands)
            return
        pool = _pool(catalog, self.workers)
        in_flight: deque[tuple[Chunk, Future]] = deque()
        try:
            yield from self._stream(pool, in_flight, chunks, bands)
        except BrokenProcessPool:
            raise GeosearchError(
                "a worker process died (out of memory, killed, or a script calling geosearch "
                "without an 'if __name__ == \"__main__\":' guard); committed work is kept, "
                "run again to resume (or use --workers 1)"
            ) from None
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def _stream(
        self,
        pool: ProcessPoolExecutor,
        in_flight: deque[tuple[Chunk, Future]],
        chunks: Iterator[Chunk],
        bands: Sequence[int] | None,
    ) -> Iterator[tuple[Chunk, EmbeddedTiles | ChunkFailure]]:
        """Submit chunks, at most two per worker ahead; yield results in submission order."""
        for chunk in chunks:
            future = pool.submit(_embed_in_worker, chunk.plan.path, chunk.windows, bands)
            in_flight.append((chunk, future))
            while len(in_flight) > 2 * self.workers:
                done, oldest = in_flight.popleft()
                yield done, oldest.result()
        while in_flight:
            done, oldest = in_flight.popleft()
            yield done, oldest.result()


def scheduler(settings: Settings, master: str | None = None) -> LocalScheduler:
    """This engine's scheduler: this machine's cores (``master``: unused)."""
    return LocalScheduler(worker_count(settings))


def _pool(catalog: Catalog, workers: int) -> ProcessPoolExecutor:
    """Worker processes, each with the catalog (no database) and its share of the CPU threads."""
    worker_catalog = catalog.for_workers(max(1, (os.cpu_count() or 1) // workers))
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["geosearch.engines.local"])
    return ProcessPoolExecutor(
        workers, mp_context=context, initializer=_start_worker, initargs=(worker_catalog,)
    )
