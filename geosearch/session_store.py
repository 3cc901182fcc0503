"""Feedback sessions as stored: tables ``feedback_sessions`` (a query and the ids of its last
results) and ``feedback_marks`` (tiles marked relevant, +1, or not, -1), in the database.

The tables are made with the database (``create_tables``); a database made by an older
geosearch gets them at its first write. What a session means is ``geosearch.sessions``'.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

from geosearch.geopackage import SQL_NOW, add_attributes_table

TABLES = ("feedback_sessions", "feedback_marks")


def create_tables(db: sqlite3.Connection) -> None:
    """The feedback tables, listed in gpkg_contents (no-op where they exist)."""
    db.execute(
        "CREATE TABLE IF NOT EXISTS feedback_sessions (id INTEGER PRIMARY KEY AUTOINCREMENT, "
        "name TEXT UNIQUE NOT NULL, created DATETIME NOT NULL, created_by TEXT, "
        "query TEXT NOT NULL, last_results TEXT NOT NULL)"
    )
    db.execute(
        "CREATE TABLE IF NOT EXISTS feedback_marks (session_id INTEGER NOT NULL, "
        "tile_id INTEGER NOT NULL, label INTEGER NOT NULL, marked_at DATETIME NOT NULL, "
        "marked_by TEXT, PRIMARY KEY (session_id, tile_id))"
    )
    add_attributes_table(db, "feedback_sessions", "geosearch relevance-feedback sessions")
    add_attributes_table(db, "feedback_marks", "tiles marked relevant (1) or not (-1), per session")


class SessionStore:
    """The feedback sessions of one open database (``Store.sessions``)."""

    def __init__(
        self,
        connection: sqlite3.Connection,
        transaction: Callable[[], AbstractContextManager[sqlite3.Connection]],
    ) -> None:
        self._connection = connection
        self._transaction = transaction

    def save(self, name: str, user: str, query: dict, last_results: list[int]) -> None:
        """Create or update a session: its query and the ids of its last results."""
        with self._transaction() as db:
            db.execute(
                "INSERT INTO feedback_sessions (name, created, created_by, query, last_results) "
                f"VALUES (?, {SQL_NOW}, ?, ?, ?) ON CONFLICT(name) DO UPDATE SET "
                "query = excluded.query, last_results = excluded.last_results",
                (name, user, json.dumps(query), json.dumps(last_results)),
            )

    def get(self, name: str) -> dict[str, Any] | None:
        """A session's query, last results and marks ({tile id: +1 or -1}), or None."""
        try:
            row = self._connection.execute(
                "SELECT id, name, created, created_by, query, last_results "
                "FROM feedback_sessions WHERE name = ?",
                (name,),
            ).fetchone()
        except sqlite3.OperationalError:  # a database from before sessions, never written to
            return None
        if row is None:
            return None
        marks = self._connection.execute(
            "SELECT tile_id, label, marked_at, marked_by FROM feedback_marks "
            "WHERE session_id = ? ORDER BY marked_at, tile_id",
            (row[0],),
        ).fetchall()
        return {
            "name": row[1],
            "created": row[2],
            "created_by": row[3],
            "query": json.loads(row[4]),
            "last_results": json.loads(row[5]),
            "marks": [
                {"tile_id": t, "label": label, "marked_at": at, "marked_by": by}
                for t, label, at, by in marks
            ],
        }

    def names(self) -> list[str]:
        """Every session's name, oldest first."""
        try:
            rows = self._connection.execute("SELECT name FROM feedback_sessions ORDER BY id")
        except sqlite3.OperationalError:
            return []
        return [row[0] for row in rows]

    def mark(self, name: str, labels: dict[int, int], user: str) -> None:
        """Record tiles as relevant (+1) or not (-1) in a session; a new mark replaces an old."""
        with self._transaction() as db:
            (session_id,) = db.execute(
                "SELECT id FROM feedback_sessions WHERE name = ?", (name,)
            ).fetchone()
            for tile_id, label in labels.items():
                db.execute(
                    f"INSERT OR REPLACE INTO feedback_marks VALUES (?, ?, ?, {SQL_NOW}, ?)",
                    (session_id, tile_id, label, user),
                )
