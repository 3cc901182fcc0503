"""The FAISS index over the stored vectors: ids are tile ids, scores are cosine similarities.

Which index depends on how many vectors there are (measured in bench/README.md, on synthetic
vectors made like the stored ones and checked against the real ones):

- up to ``EXACT_MAX_VECTORS``: ``flat``, exact inner product;
- above: ``ivfpq``, IVF (nlist ≈ 4·√N) whose lists hold 4-bit product-quantisation codes
  (FAISS fast scan, ``dim / 4`` bytes a vector, in memory); a query scans about
  ``PQ_SCAN_CODES`` codes (a share of the lists between ``PQ_MIN_SHARE`` and ``PQ_MAX_SHARE``:
  half the lists up to 700k vectors, 8 % from 4.4M up) and re-scores its
  ``PQ_RERANK_CANDIDATES`` best candidates exactly from a float16 copy of the vectors on disk
  (``<db>.faiss.vectors``, read with ``os.pread``: page cache, not process memory). Scores are
  the cosines of the vectors at float16, the precision the database stores them at.

Graphs (HNSW) and 8-bit IVF were measured too and lost on such vectors (neighbours at cosine
0.3–0.6, a nearly flat spectrum): HNSW32 reached recall@10 0.82 at 1M, and 8-bit codes gave
IVF the same recall as 4-bit fast-scan codes at twice the time. An index file of another kind
(made by an older geosearch) is rebuilt.

The kind is chosen when the index is built; ``open_index`` rebuilds when the count has crossed
the threshold, an IVF index has outgrown its training (``IVF_RETRAIN_GROWTH``), or more than
``MAX_REMOVED_FRACTION`` of its rows are removed. Removal: both kinds drop the vectors
(``remove_ids``); IVF's removed rows stay, unused, in the vectors file until that rebuild.

Rows are augmented (database-side augmentation, DBA): each tile's row is its vector plus its
``AUGMENT_NEIGHBOURS`` nearest other tiles' vectors, weighted by their cosines, back to unit
length. What a neighbourhood agrees on counts more, so more of a place's kind is found
(bench/README.md, "Kinds of places"); the database keeps each tile's own vector, and a result's
cosine is to that vector. A build makes a plain index first, finds every row's neighbours in it,
and fills the index with the augmented rows; rows added later are augmented against the rows
already indexed, and a new pass runs once the rows have grown by ``AUGMENT_REFRESH``.

Files beside the database:

- ``<db>.faiss``: our header (kind, settings, row count), each row's tile id (-1 once removed),
  then the FAISS index; FAISS's own ids are row numbers;
- ``<db>.faiss.vectors`` (IVF only): a header with a random token named by ``<db>.faiss``, then
  one float16 row per row; saves append to it in place, or write a new file when another
  process has appended since this index was loaded;
- ``<db>.faiss.json``: which database generation the index reflects (``IndexState``);
- ``<db>.faiss.lock``: serialises saves between processes.

``open_index`` compares the state with the database: in sync it is used as is; behind by
additions only it is caught up from the new rows; otherwise (deletions, a missing, damaged or
mismatched file) it is rebuilt from the GeoPackage.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import mmap
import os
import secrets
import struct
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import faiss
import numpy as np

from geosearch.errors import DatabaseError
from geosearch.store import Store

EXACT_MAX_VECTORS = 100_000  # flat search of 128-d vectors: p50 2.3 ms at 100k, one thread
IVF_LISTS_PER_SQRT = 4  # nlist = 4·√N ...
IVF_MIN_POINTS_PER_LIST = 39  # ... but at most N / 39 (FAISS's minimum for training)
IVF_TRAIN_POINTS_PER_LIST = 40  # k-means sample: 40·nlist vectors
IVF_DIM_MULTIPLE = 16  # padded with zeros to a multiple of 16: 4-bit codes pair dimensions
# Lists probed (bench/README.md, "Which index"): enough for about PQ_SCAN_CODES codes, as a
# share of nlist within [PQ_MIN_SHARE, PQ_MAX_SHARE]. Recall@10 of vectors like the stored ones
# follows the share (1M: 0.94 at 10 %, 0.988 at 30 %, 0.9905 at 35 %; 10M: 0.952 at 8 %) and
# time the codes scanned.
PQ_SCAN_CODES = 350_000
PQ_MIN_SHARE = 0.08
PQ_MAX_SHARE = 0.5
PQ_RERANK_CANDIDATES = 1000
IVF_RETRAIN_GROWTH = 4  # retrain once the count is 4× what the lists were trained on
MAX_REMOVED_FRACTION = 0.2  # compact once this fraction of IVF rows are removed
AUGMENT_NEIGHBOURS = 5  # DBA: each row plus its 5 nearest others (bench/README.md measured 5, 10)
AUGMENT_REFRESH = 1.5  # a new augmentation pass once the rows are 1.5x those of the last pass
AUGMENT_LISTS = 16  # IVF lists probed to find a row's neighbours in a pass ...
AUGMENT_CANDIDATES = 64  # ... and candidates re-ranked exactly
KINDS = ("flat", "ivfpq")

_MAGIC = b"GSINDEX1"
_PREFIX = struct.Struct("<8sQQQ")  # magic, header JSON bytes, row-id bytes, FAISS bytes
_VECTORS_MAGIC = b"GSVECT02"  # 01 held float32 rows: such a file is rebuilt
_VECTORS_HEADER = struct.Struct("<8s16sQ")  # magic, token, dim
_RERANK_DTYPE = np.dtype("<f2")  # the re-rank rows: float16, as the database stores vectors
_COPY_ROWS = 8192  # rows per chunk when copying a vectors file
_ADD_ROWS = 65_536  # rows per chunk when padding vectors into an IVF index
_SCORE_ROWS = 16_384  # rows scored at once by score_all (70 MB of 1084-d vectors)
_RERANK_BATCH = 64  # queries re-ranked together (bounds the gathered candidates' memory)
_LOAD_ATTEMPTS = 3  # a writer may be replacing the index and its vectors file


class IndexFileError(DatabaseError):
    """An index file is truncated, damaged, or does not belong with its vectors file."""


@dataclass(frozen=True)
class IndexState:
    """What an index file holds: the database generation, last tile id and count it reflects."""

    generation: int
    max_id: int
    count: int
    dim: int


def choose_kind(count: int, exact_max: int = EXACT_MAX_VECTORS) -> str:
    """The index kind for ``count`` vectors: flat up to ``exact_max``, IVF-PQ above."""
    return "flat" if count <= exact_max else "ivfpq"


def ivf_lists(count: int) -> int:
    """nlist for ``count`` vectors: 4·√N, capped so that k-means has 39 points per list."""
    lists = round(IVF_LISTS_PER_SQRT * math.sqrt(count))
    return max(1, min(lists, count // IVF_MIN_POINTS_PER_LIST))


class VectorIndex:
    """Inner-product search over unit vectors, addressed by tile id (see the module docstring).

    ``nprobe`` (None: from the count, see ``PQ_SCAN_CODES``) and ``rerank`` are IVF's
    query-time settings; they are not saved.
    """

    def __init__(self, dim: int, *, kind: str = "flat", nlist: int | None = None) -> None:
        if kind not in KINDS:
            raise ValueError(f"index kind {kind!r}: expected one of {', '.join(KINDS)}")
        self.dim = dim
        self.kind = kind
        self.rerank = PQ_RERANK_CANDIDATES
        self.trained_on = 0  # IVF: how many vectors the lists were trained for
        self._row_id_parts: list[np.ndarray] = []  # FAISS row → tile id, -1 once removed
        self._removed_rows = 0  # IVF's rows marked removed; flat drops them
        self.augment = 0  # rows hold each vector plus this many neighbours (0: the vectors)
        self.augmented_rows = 0  # rows at the last augmentation pass
        self._vectors = _RerankVectors(dim) if kind == "ivfpq" else None
        if kind == "flat":
            self._index = faiss.IndexFlatIP(dim)
        else:
            self.nlist = nlist or 1
            self.nprobe: int | None = None
            self._index = faiss.index_factory(
                _padded_dim(dim), f"IVF{self.nlist},{_pq_codes(dim)}", faiss.METRIC_INNER_PRODUCT
            )

    @classmethod
    def build(
        cls,
        ids: np.ndarray,
        vectors: np.ndarray,
        *,
        exact_max: int = EXACT_MAX_VECTORS,
        kind: str | None = None,
        augment: int = 0,
    ) -> VectorIndex:
        """An index of the kind that suits ``len(ids)`` (or ``kind``), trained and filled with
        the vectors, or with rows augmented by ``augment`` neighbours."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)

        def sample(size: int) -> np.ndarray:
            rows = np.random.default_rng(0).choice(len(vectors), size, replace=False)
            return vectors[np.sort(rows)]

        return cls.build_from(
            len(ids), vectors.shape[1], lambda: [(ids, vectors)], sample,
            exact_max=exact_max, kind=kind, augment=augment,
        )  # fmt: skip

    @classmethod
    def build_from(
        cls,
        count: int,
        dim: int,
        batches: Callable[[], Iterable[tuple[np.ndarray, np.ndarray]]],
        sample: Callable[[int], np.ndarray],
        *,
        exact_max: int = EXACT_MAX_VECTORS,
        kind: str | None = None,
        spill: Path | None = None,
        augment: int = 0,
    ) -> VectorIndex:
        """An index of ``count`` vectors built without holding them all at once: an IVF index is
        trained on ``sample(n)`` (n random vectors), then every kind is filled from
        ``batches()`` of (ids, vectors). ``spill``: where the index will be saved; an IVF
        index then writes its re-rank rows to that vectors file as they come, not to memory.
        ``augment``: the rows are augmented by that many neighbours, found in a plain index
        built first (``batches`` is read twice)."""
        kind = kind or choose_kind(count, exact_max)
        if augment:
            with tempfile.TemporaryDirectory(prefix="geosearch-index-") as folder:
                plain = cls.build_from(
                    count, dim, batches, sample,
                    kind=kind, spill=Path(folder) / "plain", augment=0,
                )  # fmt: skip
                try:
                    index = cls.build_from(
                        count, dim,
                        lambda: ((i, plain.augmented(v, augment, i)) for i, v in batches()),
                        lambda size: plain.augmented(sample(size), augment),
                        kind=kind, spill=spill, augment=0,
                    )  # fmt: skip
                finally:
                    plain.close()
            index.augment, index.augmented_rows = augment, index._rows
            return index
        index = cls(dim, kind=kind, nlist=ivf_lists(count))
        if kind == "ivfpq":
            size = min(count, IVF_TRAIN_POINTS_PER_LIST * index.nlist)
            index._index.train(_pad(sample(size)))
            index.trained_on = count
            if spill is not None:
                index._vectors = _RerankVectors.create(vectors_path(spill), dim)
        for ids, vectors in batches():
            index.add(ids, vectors)
        return index

    @property
    def count(self) -> int:
        return int(self._index.ntotal)

    @property
    def _row_ids(self) -> np.ndarray:
        if len(self._row_id_parts) != 1:
            parts = self._row_id_parts or [np.zeros(0, dtype=np.int64)]
            self._row_id_parts = [np.concatenate(parts)]
        return self._row_id_parts[0]

    @property
    def _rows(self) -> int:
        return sum(len(part) for part in self._row_id_parts)

    def add(self, ids: np.ndarray | list[int], vectors: np.ndarray) -> None:
        """Add tile ids with their unit vectors, augmented against the rows already indexed
        when the index is augmented. IVF keeps the rows themselves (no copy) for the re-rank
        until the next save writes them to the vectors file."""
        if not len(ids):
            return
        ids = np.asarray(ids, dtype=np.int64)
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if self.augment and self.count:
            vectors = self.augmented(vectors, self.augment, ids)
        if self.kind == "ivfpq":
            for start in range(0, len(ids), _ADD_ROWS):
                part = vectors[start : start + _ADD_ROWS]
                rows = np.arange(len(part), dtype=np.int64) + self._rows + start
                self._index.add_with_ids(_pad(part), rows)
            self._vectors.append(vectors)
        else:
            self._index.add(vectors)
        self._row_id_parts.append(ids.copy())

    def remove(self, ids: list[int] | np.ndarray) -> None:
        """Remove tile ids (unknown ids are ignored)."""
        rows = self._rows_of(np.asarray(ids, dtype=np.int64))
        if not len(rows):
            return
        if self.kind == "flat":  # compacts, keeping the order of the remaining rows
            self._index.remove_ids(faiss.IDSelectorBatch(rows))
            self._row_id_parts = [np.delete(self._row_ids, rows)]
            return
        self._index.remove_ids(faiss.IDSelectorBatch(rows))
        self._row_ids[rows] = -1  # the row stays in the vectors file until a rebuild
        self._removed_rows += len(rows)

    def _rows_of(self, ids: np.ndarray) -> np.ndarray:
        """The rows holding ``ids`` (unknown or removed ids left out)."""
        rows, found = self._positions(ids)
        return np.unique(rows[found])

    def _positions(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Each of ``ids``'s row, in order, and whether the index holds it there."""
        row_ids = self._row_ids
        if not len(ids) or not len(row_ids):
            return np.zeros(len(ids), dtype=np.int64), np.zeros(len(ids), dtype=bool)
        order = np.argsort(row_ids, kind="stable")
        rows = order[np.minimum(np.searchsorted(row_ids, ids, sorter=order), len(order) - 1)]
        return rows, row_ids[rows] == ids

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids), each (n_queries, k'), best first; k' = min(k, count).

        One FAISS batch search for all queries; a single query runs on one OpenMP thread (one
        thread is faster than two for one query; the cores serve concurrent queries instead).
        """
        queries = np.ascontiguousarray(queries, dtype=np.float32).reshape(-1, self.dim)
        k = min(k, self.count)
        if k == 0:
            empty = np.zeros((len(queries), 0))
            return empty.astype(np.float32), empty.astype(np.int64)
        candidates = max(k, self.rerank)
        with _faiss_threads(1 if len(queries) == 1 else None):
            scores, rows = self._search_rows(queries, k, candidates, None)
        return scores, self._ids_of_rows(rows)

    def _search_rows(
        self, queries: np.ndarray, k: int, candidates: int, nprobe: int | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(scores, rows) of each query's ``k`` best rows (-1: none); IVF re-ranks its best
        ``candidates`` from ``nprobe`` lists (None: ``_nprobe_for``) exactly."""
        if self.kind == "flat":
            return self._index.search(queries, k)
        nprobe = min(self.nlist, nprobe or self._nprobe_for(candidates))
        params = faiss.SearchParametersIVF(nprobe=nprobe)
        _, rows = self._index.search(_pad(queries), max(k, candidates), params=params)
        return self._rerank(queries, rows, k)

    def _ids_of_rows(self, rows: np.ndarray) -> np.ndarray:
        return np.where(rows >= 0, self._row_ids[np.maximum(rows, 0)], -1)

    def augmented(
        self, vectors: np.ndarray, neighbours: int, ids: np.ndarray | None = None
    ) -> np.ndarray:
        """Each of the unit ``vectors`` plus its ``neighbours`` nearest rows of this index,
        weighted by their cosines (those below 0 count 0), back to unit length. A vector's own
        tile (``ids``; an id the index does not hold, 0 say, has none; without ``ids``, each
        vector's nearest row: the vectors are indexed) is not its neighbour. IVF finds the
        neighbours in ``AUGMENT_LISTS`` lists."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1, self.dim)
        k = min(neighbours + 1, self.count)
        if not len(vectors) or k == 0:
            return vectors
        scores, rows = self._search_rows(vectors, k, AUGMENT_CANDIDATES, AUGMENT_LISTS)
        if ids is None:
            own = np.arange(k) == 0
        else:
            own = self._ids_of_rows(rows) == np.asarray(ids, dtype=np.int64)[:, None]
        kept = (rows >= 0) & ~own
        first = np.argsort(~kept, axis=1, kind="stable")[:, :neighbours]  # kept rows first
        rows = np.take_along_axis(rows, first, 1)
        weights = np.where(
            np.take_along_axis(kept, first, 1), np.take_along_axis(scores, first, 1), 0.0
        ).clip(0)
        near = self._row_vectors(np.maximum(rows, 0).ravel()).reshape(*rows.shape, self.dim)
        summed = vectors + np.einsum("rk,rkd->rd", weights.astype(np.float32), near)
        return summed / np.maximum(np.linalg.norm(summed, axis=1, keepdims=True), 1e-12)

    def _row_vectors(self, rows: np.ndarray) -> np.ndarray:
        """(len(rows), dim) float32 of the index's ``rows``."""
        if self.kind == "ivfpq":
            return self._vectors.read(rows)
        if not len(rows):
            return np.zeros((0, self.dim), np.float32)
        return self._index.reconstruct_batch(np.asarray(rows, dtype=np.int64))

    def vectors(self, ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """(len(ids), dim) the rows this index ranks ``ids`` by, in the order given (the
        augmented vectors; the database keeps each tile's own)."""
        rows, found = self._positions(np.asarray(ids, dtype=np.int64))
        if not found.all():
            raise DatabaseError("the index does not hold every tile asked for; run geosearch check")
        return self._row_vectors(rows)

    def score_all(self, query: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(ids, scores): every indexed tile's exact inner product with ``query``, computed
        from the index's rows ``_SCORE_ROWS`` at a time (no search)."""
        query = np.asarray(query, dtype=np.float32).reshape(-1)
        row_ids = self._row_ids
        scores = np.empty(len(row_ids), dtype=np.float32)
        for start in range(0, len(row_ids), _SCORE_ROWS):
            stop = min(len(row_ids), start + _SCORE_ROWS)
            if self.kind == "ivfpq":
                scores[start:stop] = self._vectors.dot(query, start, stop)
            else:  # flat keeps its float32 rows
                scores[start:stop] = self._index.reconstruct_n(start, stop - start) @ query
        kept = row_ids >= 0  # rows marked removed (IVF) are left out
        return row_ids[kept], scores[kept]

    def row_batches(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(ids, rows) of every indexed tile, ``_SCORE_ROWS`` at a time: what the index ranks
        by, for scoring elsewhere (Spark) as ``score_all`` scores here."""
        row_ids = self._row_ids
        for start in range(0, len(row_ids), _SCORE_ROWS):
            rows = np.arange(start, min(len(row_ids), start + _SCORE_ROWS))
            rows = rows[row_ids[rows] >= 0]
            yield row_ids[rows], self._row_vectors(rows)

    @property
    def lists_probed(self) -> int:
        """``nprobe``, or the lists that hold about ``PQ_SCAN_CODES`` codes (see above)."""
        if self.nprobe:
            return self.nprobe
        share = min(PQ_MAX_SHARE, max(PQ_MIN_SHARE, PQ_SCAN_CODES / max(1, self.count)))
        return max(1, round(share * self.nlist))

    def _nprobe_for(self, candidates: int) -> int:
        """``lists_probed``, raised so that the lists probed hold about twice ``candidates`` (a
        filtered search asks for many)."""
        enough = math.ceil(2 * candidates * self.nlist / max(1, self.count))
        return min(self.nlist, max(self.lists_probed, enough))

    def _rerank(
        self, queries: np.ndarray, rows: np.ndarray, k: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Exact scores of the candidate ``rows`` from the float16 vectors; the best ``k``.

        Each query's candidates are gathered as FAISS returned them (a query's rows are
        distinct; -1, no candidate, reads row 0 and scores lowest). The dot products go through
        ``np.einsum``, which does not call BLAS: no BLAS threads to compete with FAISS's OpenMP
        threads, and no thread limit to set."""
        lowest = -np.finfo(np.float32).max
        scores = np.empty(rows.shape, dtype=np.float32)
        for start in range(0, len(queries), _RERANK_BATCH):
            part = slice(start, start + _RERANK_BATCH)
            found = rows[part] >= 0
            gathered = self._vectors.read(np.where(found, rows[part], 0).ravel())
            candidates = gathered.reshape(*found.shape, self.dim)
            exact = np.einsum("qcd,qd->qc", candidates, queries[part])
            scores[part] = np.where(found, exact, lowest)
        best = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(scores, best, 1), np.take_along_axis(rows, best, 1)

    def needs_rebuild(
        self, exact_max: int = EXACT_MAX_VECTORS, augment: int = AUGMENT_NEIGHBOURS
    ) -> bool:
        """Whether a rebuild would change the kind, retrain IVF lists, compact removed rows or
        augment the rows again (another ``augment``, or grown by ``AUGMENT_REFRESH``)."""
        return (
            self.kind != choose_kind(self.count, exact_max)
            or (self.kind == "ivfpq" and self.count > IVF_RETRAIN_GROWTH * self.trained_on)
            or self._removed_rows > MAX_REMOVED_FRACTION * max(1, self._rows)
            or (self.count > 0 and self.augment != augment)
            or (augment > 0 and self._rows > AUGMENT_REFRESH * self.augmented_rows)
        )

    def describe(self) -> dict[str, Any]:
        """Kind, settings and memory for ``geosearch info``.

        ``bytes_per_million`` is the process memory per million vectors of this kind, computed
        from FAISS's layouts (bench/query.py checks it against measured RSS);
        ``disk_bytes_per_million`` adds what stays on disk (IVF's float16 vectors file)."""
        row = 4 * self.dim
        settings: dict[str, Any]
        if self.kind == "flat":
            name = "flat inner product (exact)"
            settings = {}
            per_vector = row + 8  # float32 vector + tile id
            on_disk = per_vector
        else:
            name = (
                f"IVF{self.nlist},{_pq_codes(self.dim)} + exact re-rank of {self.rerank} "
                "(float16 vectors file, mapped)"
            )
            settings = {
                "nlist": self.nlist,
                "nprobe": self.lists_probed,
                "rerank": self.rerank,
                "trained_on": self.trained_on,
            }
            # code (4 bits per pair of dimensions) + row number in its list + tile id; the
            # lists' centroids for 1M vectors
            padded = _padded_dim(self.dim)
            per_vector = padded // 4 + 8 + 8 + ivf_lists(1_000_000) * 4 * padded / 1_000_000
            on_disk = per_vector + _RERANK_DTYPE.itemsize * self.dim
        return {
            "kind": self.kind,
            "type": name,
            "vectors": self.count,
            "dim": self.dim,
            "settings": settings,
            "removed_rows": self._removed_rows,
            "augmented_with": self.augment,
            "bytes_per_million": round(per_vector * 1_000_000),
            "disk_bytes_per_million": round(on_disk * 1_000_000),
        }

    # -- files -----------------------------------------------------------------------------

    def save(self, path: Path, state: IndexState) -> None:
        """Write vectors file, index and state, each atomically (a reader never sees half a
        file; it sees an index with the vectors file it names, or retries)."""
        path = Path(path)
        with _save_lock(path):
            header = {
                "kind": self.kind,
                "dim": self.dim,
                "rows": self._rows,
                "trained_on": self.trained_on,
                "augment": self.augment,
                "augmented_rows": self.augmented_rows,
            }
            if self._vectors is not None:
                header |= {"nlist": self.nlist, "token": self._vectors.save(path, self._rows)}
            else:
                vectors_path(path).unlink(missing_ok=True)
            _write_atomically(path, lambda f: self._write(f, header))
            _write_atomically(
                _state_path(path), lambda f: f.write(json.dumps(state.__dict__).encode())
            )

    def _write(self, f: BinaryIO, header: dict[str, Any]) -> None:
        meta = json.dumps(header).encode()
        row_ids = self._row_ids.astype("<i8", copy=False)
        f.write(_PREFIX.pack(_MAGIC, 0, 0, 0))
        f.write(meta)
        f.write(memoryview(row_ids).cast("B"))
        start = f.tell()
        faiss.write_index(self._index, faiss.PyCallbackIOWriter(f.write))
        faiss_bytes = f.tell() - start
        f.seek(0)
        f.write(_PREFIX.pack(_MAGIC, len(meta), row_ids.nbytes, faiss_bytes))

    @classmethod
    def load(cls, path: Path) -> tuple[VectorIndex, IndexState] | None:
        """The saved index and its state, or None if missing, damaged or out of step."""
        path = Path(path)
        for attempt in range(_LOAD_ATTEMPTS):
            if attempt:
                time.sleep(0.05)  # perhaps caught mid-save by another process: read again
            try:
                state = IndexState(**json.loads(_state_path(path).read_text()))
                index = cls._read(path)
            except (OSError, ValueError, TypeError, KeyError, RuntimeError, struct.error):
                continue
            if index.count == state.count and index.dim == state.dim:
                return index, state
            index.close()
        return None

    @classmethod
    def _read(cls, path: Path) -> VectorIndex:
        with open(path, "rb") as f:
            prefix = f.read(_PREFIX.size)
            magic, meta_bytes, id_bytes, faiss_bytes = _PREFIX.unpack(prefix)
            if magic != _MAGIC:
                raise IndexFileError(f"{path}: not a geosearch index file")
            if os.fstat(f.fileno()).st_size != _PREFIX.size + meta_bytes + id_bytes + faiss_bytes:
                raise IndexFileError(f"{path}: truncated or damaged")
            header = json.loads(f.read(meta_bytes))
            row_ids = np.empty(header["rows"], dtype="<i8")
            if row_ids.nbytes != id_bytes or f.readinto(memoryview(row_ids).cast("B")) != id_bytes:
                raise IndexFileError(f"{path}: truncated or damaged")
            loaded = faiss.read_index(faiss.PyCallbackIOReader(f.read))
        index = cls(header["dim"], kind=header["kind"], nlist=header.get("nlist"))
        removed = int(np.count_nonzero(row_ids < 0))
        if loaded.d != index._index.d or loaded.ntotal != len(row_ids) - (
            removed if index.kind == "ivfpq" else 0
        ):
            raise IndexFileError(f"{path}: index and its row ids disagree")
        index._index = loaded
        index.trained_on = header["trained_on"]
        index.augment = header.get("augment", 0)
        index.augmented_rows = header.get("augmented_rows", 0)
        index._row_id_parts = [row_ids.astype(np.int64, copy=False)]
        index._removed_rows = removed
        if index.kind == "ivfpq":
            index._vectors = _RerankVectors.open(
                vectors_path(path), header["token"], index.dim, index._rows
            )
        return index

    def close(self) -> None:
        """Close the vectors file (IVF); the index is unusable for search afterwards."""
        if self._vectors is not None:
            self._vectors.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()


class _RerankVectors:
    """IVF's float16 rows for the exact re-rank: rows in a file, mapped once and gathered
    from the map (a query's 1000 rows: about 0.3 ms, against 2.7 ms for one ``os.pread`` a
    row; the pages touched are file-backed, the kernel's to drop, though counted in RSS), plus
    rows added since the file was written, in memory until the next save."""

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self.row_bytes = _RERANK_DTYPE.itemsize * dim
        self.fd: int | None = None
        self.path: Path | None = None
        self.token: str | None = None
        self.file_rows = 0
        self.writing = False  # a file being made by a streamed build (``create``)
        self._tail: list[np.ndarray] = []
        self._map: mmap.mmap | None = None  # the file's rows, mapped by ``_mapped_rows``
        self._mapped: np.ndarray | None = None

    @classmethod
    def create(cls, path: Path, dim: int) -> _RerankVectors:
        """A new, empty vectors file at ``path`` (a fresh token) that ``append`` writes to."""
        vectors = cls(dim)
        token = secrets.token_hex(16)
        temporary = path.with_name(path.name + f".tmp{os.getpid()}")
        with open(temporary, "wb") as f:
            f.write(_VECTORS_HEADER.pack(_VECTORS_MAGIC, bytes.fromhex(token), dim))
        vectors.fd = os.open(temporary, os.O_RDWR)
        vectors.token, vectors.path, vectors.writing = token, temporary, True
        return vectors

    @classmethod
    def open(cls, path: Path, token: str, dim: int, rows: int) -> _RerankVectors:
        """The vectors file ``token`` names, holding at least ``rows`` rows."""
        vectors = cls(dim)
        fd = os.open(path, os.O_RDONLY)
        try:
            magic, file_token, file_dim = _VECTORS_HEADER.unpack(
                os.pread(fd, _VECTORS_HEADER.size, 0)
            )
            if (magic, file_token.hex(), file_dim) != (_VECTORS_MAGIC, token, dim):
                raise IndexFileError(f"{path}: not the vectors file of this index")
            if os.fstat(fd).st_size < _VECTORS_HEADER.size + rows * vectors.row_bytes:
                raise IndexFileError(f"{path}: truncated")
        except BaseException:
            os.close(fd)
            raise
        vectors.fd, vectors.token, vectors.file_rows, vectors.path = fd, token, rows, path
        return vectors

    def append(self, rows: np.ndarray) -> None:
        """Rows added to the index: written to the file being made (``create``), else kept in
        memory until the next save."""
        rows = np.asarray(rows, dtype=_RERANK_DTYPE)
        if self.writing:
            offset = _VECTORS_HEADER.size + self.file_rows * self.row_bytes
            os.pwrite(self.fd, np.ascontiguousarray(rows).tobytes(), offset)
            self.file_rows += len(rows)
        else:
            self._tail.append(rows)

    def _tail_rows(self) -> np.ndarray:
        if len(self._tail) != 1:
            empty = np.zeros((0, self.dim), _RERANK_DTYPE)
            self._tail = [np.concatenate(self._tail or [empty])]
        return self._tail[0]

    def read(self, rows: np.ndarray) -> np.ndarray:
        """(len(rows), dim) float32 of ``rows``, in any order (repeats allowed)."""
        in_file = rows < self.file_rows
        if len(rows) and in_file.all():
            return _float32(self._mapped_rows()[rows])
        out = np.empty((len(rows), self.dim), dtype=np.float32)
        if in_file.any():
            out[in_file] = _float32(self._mapped_rows()[rows[in_file]])
        out[~in_file] = self._tail_rows()[rows[~in_file] - self.file_rows]
        return out

    def _mapped_rows(self) -> np.ndarray:
        """The file's ``file_rows`` rows, (file_rows, dim), from a read-only map of the file
        made at the first read (again after an append in place or a new file)."""
        if self._mapped is None or len(self._mapped) != self.file_rows:
            self._unmap()
            length = _VECTORS_HEADER.size + self.file_rows * self.row_bytes
            try:
                self._map = mmap.mmap(self.fd, length, access=mmap.ACCESS_READ)
            except ValueError:  # "mmap length is greater than file size"
                raise IndexFileError(
                    f"{self.path} was truncated while in use; run the command again "
                    "(the index is then rebuilt)"
                ) from None
            rows = np.frombuffer(self._map, _RERANK_DTYPE, self.file_rows * self.dim,
                                 _VECTORS_HEADER.size)  # fmt: skip
            self._mapped = rows.reshape(self.file_rows, self.dim)
        return self._mapped

    def _unmap(self) -> None:
        self._mapped = None  # the map closes only once no array uses it
        if self._map is not None:
            with contextlib.suppress(BufferError):  # a caller still holds rows: GC closes it
                self._map.close()
            self._map = None

    def dot(self, query: np.ndarray, start: int, stop: int) -> np.ndarray:
        """Inner products of the consecutive rows ``start`` to ``stop`` with ``query``. Rows in
        the file are mapped, not copied (several times faster than ``pread`` for gigabytes),
        and unmapped straight after, so the process's RSS does not grow with the file. The
        float16 rows are decoded by ``_float32`` on one thread (its OpenMP threads made it 3
        times slower on a busy 2-core machine) and multiplied by ``np.einsum``, which does not
        call BLAS (BLAS's threads made the matrix-vector product 4-20 times slower there)."""
        out = np.empty(stop - start, dtype=np.float32)
        in_file = max(0, min(stop, self.file_rows) - start)
        if in_file:
            first = _VECTORS_HEADER.size + start * self.row_bytes
            aligned = first - first % mmap.ALLOCATIONGRANULARITY
            length = first - aligned + in_file * self.row_bytes
            with mmap.mmap(self.fd, length, offset=aligned, access=mmap.ACCESS_READ) as mapped:
                stored = np.frombuffer(mapped, _RERANK_DTYPE, in_file * self.dim, first - aligned)
                with _faiss_threads(1):
                    rows = _float32(stored.reshape(in_file, self.dim))
                del stored  # the map closes only once no array uses it
            out[:in_file] = np.einsum("rd,d->r", rows, query)
        if in_file < stop - start:
            tail = np.arange(start + in_file, stop) - self.file_rows
            out[in_file:] = np.einsum("rd,d->r", self._tail_rows()[tail].astype(np.float32), query)
        return out

    def save(self, index_file: Path, rows: int) -> str:
        """Write the rows beside ``index_file`` (caller holds the save lock); the file token.

        Appends in place when the index file there is ours as loaded (same token and rows: no
        one has appended since), else writes a whole new file and replaces the old one."""
        path = vectors_path(index_file)
        if self.writing:  # made by a streamed build: complete, put in place once
            os.fsync(self.fd)
            os.replace(self.path, path)
            self.path, self.writing = path, False
            return self.token
        tail = self._tail_rows()
        if self._append_in_place(index_file, path, tail):
            self.file_rows, self._tail = rows, []
            return self.token
        token = secrets.token_hex(16)
        temporary = path.with_name(path.name + f".tmp{os.getpid()}")
        try:
            with open(temporary, "wb") as f:
                f.write(_VECTORS_HEADER.pack(_VECTORS_MAGIC, bytes.fromhex(token), self.dim))
                for start in range(0, self.file_rows, _COPY_ROWS):
                    count = min(_COPY_ROWS, self.file_rows - start)
                    offset = _VECTORS_HEADER.size + start * self.row_bytes
                    f.write(os.pread(self.fd, count * self.row_bytes, offset))
                _write_rows(f, tail)
                f.flush()
                os.fsync(f.fileno())
            fd = os.open(temporary, os.O_RDONLY)
            os.replace(temporary, path)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
        self.close()
        self.fd, self.token, self.file_rows, self._tail = fd, token, rows, []
        self.path = path
        return token

    def _append_in_place(self, index_file: Path, path: Path, tail: np.ndarray) -> bool:
        """Append ``tail`` to the file this index was loaded with, if it is still the saved
        one and no one has appended to it since; whether it was."""
        if self.token is None or _saved_header(index_file) != (self.token, self.file_rows):
            return False
        try:
            f = open(path, "r+b")  # noqa: SIM115 (closed below)
        except OSError:
            return False
        with f:
            header = f.read(_VECTORS_HEADER.size)
            if header[:24] != _VECTORS_MAGIC + bytes.fromhex(self.token):
                return False  # replaced by a save that did not get as far as the index
            f.seek(_VECTORS_HEADER.size + self.file_rows * self.row_bytes)
            _write_rows(f, tail)
            f.truncate()
            f.flush()
            os.fsync(f.fileno())
        return True

    def close(self) -> None:
        self._unmap()
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        if self.writing:  # a streamed build never saved: its file is not wanted
            Path(self.path).unlink(missing_ok=True)
            self.writing = False


def _float32(rows: np.ndarray) -> np.ndarray:
    """float16 ``rows`` as float32, decoded by FAISS's SIMD fp16 decoder (numpy's own cast is
    about 3x slower: 0.21 against 0.07 ms for a query's 1000 rows of 128)."""
    if not len(rows):
        return rows.astype(np.float32)
    decoder = faiss.ScalarQuantizer(rows.shape[1], faiss.ScalarQuantizer.QT_fp16)
    return decoder.decode(np.ascontiguousarray(rows).view(np.uint8))


def _pq_codes(dim: int) -> str:
    """FAISS's name for the codes: one 4-bit code per pair of (padded) dimensions, fast scan."""
    return f"PQ{_padded_dim(dim) // 2}x4fs"


def _padded_dim(dim: int) -> int:
    return -(-dim // IVF_DIM_MULTIPLE) * IVF_DIM_MULTIPLE


def _pad(vectors: np.ndarray) -> np.ndarray:
    """``vectors`` with zero columns up to ``_padded_dim``: inner products are unchanged."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    missing = _padded_dim(vectors.shape[1]) - vectors.shape[1]
    return np.pad(vectors, ((0, 0), (0, missing))) if missing else vectors


def _write_rows(f: BinaryIO, rows: np.ndarray) -> None:
    for start in range(0, len(rows), _COPY_ROWS):
        part = rows[start : start + _COPY_ROWS]
        f.write(memoryview(np.ascontiguousarray(part, _RERANK_DTYPE)))


def _saved_header(path: Path) -> tuple[str, int] | None:
    """(token, rows) of the index file at ``path``, or None if it has none or is unreadable."""
    try:
        with open(path, "rb") as f:
            magic, meta_bytes, _, _ = _PREFIX.unpack(f.read(_PREFIX.size))
            header = json.loads(f.read(meta_bytes)) if magic == _MAGIC else {}
    except (OSError, ValueError, struct.error):
        return None
    return (header["token"], header["rows"]) if "token" in header else None


def _write_atomically(path: Path, write: Any) -> None:
    temporary = path.with_name(path.name + f".tmp{os.getpid()}")
    try:
        with open(temporary, "wb") as f:
            write(f)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def _save_lock(path: Path) -> Iterator[None]:
    """Exclusive between processes saving the same index (readers need no lock)."""
    with open(path.with_name(path.name + ".lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def _faiss_threads(threads: int | None) -> Iterator[None]:
    """FAISS's OpenMP threads for this thread's searches (None: leave as is)."""
    if threads is None:
        yield
        return
    previous = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(threads)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(previous)


def index_path(db_path: Path) -> Path:
    return Path(db_path).with_name(Path(db_path).name + ".faiss")


def vectors_path(path: Path) -> Path:
    """The float16 re-rank vectors file of an IVF index at ``path``."""
    return path.with_name(path.name + ".vectors")


def _state_path(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def open_index(
    store: Store,
    save: bool = True,
    *,
    exact_max: int = EXACT_MAX_VECTORS,
    augment: int = AUGMENT_NEIGHBOURS,
) -> VectorIndex:
    """The index in sync with ``store``: loaded, caught up, or rebuilt (and saved if it changed),
    its rows augmented by ``augment`` neighbours.

    A rebuild also happens when the index no longer suits its size (``needs_rebuild``): this is
    where flat becomes IVF as the database grows."""
    path = index_path(store.path)
    save = save and not store.readonly  # a read-only database: the index is kept in memory
    generation = store.generation
    loaded = VectorIndex.load(path)
    if loaded is not None:
        index, state = loaded
        changed = False
        if state.generation != generation and (
            store.meta("last_delete_generation", 0) <= state.generation
        ):
            ids, vectors = store.vectors(after_id=state.max_id)
            if not len(ids) or vectors.shape[1] == index.dim:
                index.add(ids, vectors)
                max_id = int(ids.max()) if len(ids) else state.max_id
                state = IndexState(generation, max_id, index.count, index.dim)
                changed = True
        if state.generation == generation and not index.needs_rebuild(exact_max, augment):
            if changed:
                _save_quietly(index, path, state, save)
            return index
        index.close()
    count, max_id, dim = store.tile_count(), store.max_tile_id(), store.vector_dim()
    if count and dim:  # streamed: never every vector in memory at once
        index = VectorIndex.build_from(
            count, dim, store.vector_batches, store.vector_sample,
            exact_max=exact_max, spill=path if save else None, augment=augment,
        )  # fmt: skip
    else:
        index = VectorIndex(0)
    _save_quietly(index, path, IndexState(generation, max_id, index.count, index.dim), save)
    return index


# Indexes kept loaded between searches in one process (``geosearch serve``), per database.
_SEARCH_CACHE: dict[str, tuple[int, VectorIndex]] = {}
_SEARCH_CACHE_SIZE = 4


def index_for_search(store: Store) -> VectorIndex:
    """``open_index`` for searching: kept in memory while the database's generation is the same,
    so a long-running process does not reload the index file for every query."""
    key = f"{Path(store.path).resolve()}:{os.stat(store.path).st_ino}"  # a new file: a new key
    generation = store.generation
    cached = _SEARCH_CACHE.get(key)
    if cached is not None and cached[0] == generation:
        return cached[1]
    index = open_index(store)
    if key not in _SEARCH_CACHE and len(_SEARCH_CACHE) >= _SEARCH_CACHE_SIZE:
        _SEARCH_CACHE.pop(next(iter(_SEARCH_CACHE)))
    _SEARCH_CACHE[key] = (generation, index)
    return index


def _save_quietly(index: VectorIndex, path: Path, state: IndexState, save: bool) -> None:
    """Save if allowed and possible; a read-only folder only costs a rebuild next time."""
    if save:
        with contextlib.suppress(OSError, RuntimeError):
            index.save(path, state)
