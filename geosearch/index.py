"""The FAISS index over the stored vectors: ids are tile ids, scores are cosine similarities.

The index file lives beside the database (``<db>.faiss``) with a small JSON state file saying
which database generation it reflects. ``open_index`` compares that with the database: in sync
it is used as is; behind by additions only it is caught up from the new rows; otherwise
(deletions, a missing, damaged or mismatched file) it is rebuilt from the GeoPackage.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from geosearch.store import Store


@dataclass(frozen=True)
class IndexState:
    """What an index file holds: the database generation, last tile id and count it reflects."""

    generation: int
    max_id: int
    count: int
    dim: int


class VectorIndex:
    """Exact inner-product search over unit vectors, addressed by tile id."""

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self._index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))

    @property
    def count(self) -> int:
        return int(self._index.ntotal)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        if len(ids):
            self._index.add_with_ids(
                np.ascontiguousarray(vectors, dtype=np.float32), np.asarray(ids, dtype=np.int64)
            )

    def remove(self, ids: list[int] | np.ndarray) -> None:
        if len(ids):
            self._index.remove_ids(np.asarray(ids, dtype=np.int64))

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids), each (n_queries, k'), best first; k' = min(k, count)."""
        k = min(k, self.count)
        if k == 0:
            empty = np.zeros((len(queries), 0))
            return empty.astype(np.float32), empty.astype(np.int64)
        scores, ids = self._index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
        return scores, ids

    def save(self, path: Path, state: IndexState) -> None:
        """Write index then state, each atomically (a reader never sees half a file)."""
        temporary = path.with_name(path.name + f".tmp{os.getpid()}")
        faiss.write_index(self._index, str(temporary))
        os.replace(temporary, path)
        state_path = _state_path(path)
        temporary_state = state_path.with_name(state_path.name + f".tmp{os.getpid()}")
        temporary_state.write_text(json.dumps(state.__dict__))
        os.replace(temporary_state, state_path)

    @classmethod
    def load(cls, path: Path) -> tuple[VectorIndex, IndexState] | None:
        """The saved index and its state, or None if either is missing or unreadable."""
        try:
            state = IndexState(**json.loads(_state_path(path).read_text()))
            loaded = faiss.read_index(str(path))
        except (OSError, ValueError, TypeError, RuntimeError):
            return None
        index = cls(loaded.d)
        index._index = loaded
        if index.count != state.count or index.dim != state.dim:
            return None
        return index, state


def index_path(db_path: Path) -> Path:
    return Path(db_path).with_name(Path(db_path).name + ".faiss")


def _state_path(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def open_index(store: Store, save: bool = True) -> VectorIndex:
    """The index in sync with ``store``: loaded, caught up, or rebuilt (and saved if it changed)."""
    path = index_path(store.path)
    generation = store.generation
    loaded = VectorIndex.load(path)
    if loaded is not None:
        index, state = loaded
        if state.generation == generation:
            return index
        if store.meta("last_delete_generation", 0) <= state.generation:
            ids, vectors = store.vectors(after_id=state.max_id)
            if not len(ids) or vectors.shape[1] == index.dim:
                index.add(ids, vectors)
                max_id = int(ids.max()) if len(ids) else state.max_id
                _save_quietly(
                    index, path, IndexState(generation, max_id, index.count, index.dim), save
                )
                return index
    ids, vectors = store.vectors()
    index = VectorIndex(vectors.shape[1] if len(ids) else 0)
    index.add(ids, vectors)
    max_id = int(ids.max()) if len(ids) else 0
    _save_quietly(index, path, IndexState(generation, max_id, index.count, index.dim), save)
    return index


def _save_quietly(index: VectorIndex, path: Path, state: IndexState, save: bool) -> None:
    """Save if allowed and possible; a read-only folder only costs a rebuild next time."""
    if save:
        with contextlib.suppress(OSError, RuntimeError):
            index.save(path, state)
