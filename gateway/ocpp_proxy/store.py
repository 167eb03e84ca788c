"""The durable store: the offline queue, 1.6 transaction-id map, token cache, learned capabilities.

SQLite in WAL mode with ``synchronous=FULL``: a row is on disk before the charger is answered.
Queue rows are deleted only after the CMS answered them, so a restart loses nothing.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from gateway.errors import StoreError

log = structlog.get_logger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS queue (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    charger TEXT NOT NULL,
    action TEXT NOT NULL,
    payload TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS queue_charger ON queue (charger, seq);
CREATE TABLE IF NOT EXISTS txmap (
    charger TEXT NOT NULL,
    local_id INTEGER NOT NULL,
    cms_id INTEGER NOT NULL,
    PRIMARY KEY (charger, local_id)
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS tokens (token TEXT PRIMARY KEY, status TEXT NOT NULL, updated REAL NOT NULL);
CREATE TABLE IF NOT EXISTS caps (charger TEXT PRIMARY KEY, data TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS cms_profiles (
    charger TEXT NOT NULL,
    profile_id INTEGER NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (charger, profile_id)
);
"""


@dataclass(frozen=True)
class QueuedMessage:
    seq: int
    charger: str
    action: str
    payload: dict[str, Any]


class Store:
    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self._cms_cache: dict[str, dict[int, dict[str, Any]]] = {}
        try:
            if self.path != ":memory:":
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the OCPP store {self.path}: {exc}") from exc

    def close(self) -> None:
        self._db.close()

    def _tx(self, fn: Any) -> Any:
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                out = fn()
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
            return out
        except sqlite3.Error as exc:
            raise StoreError(f"OCPP store: {exc}") from exc

    # -- queue -----------------------------------------------------------------------
    def enqueue(self, charger: str, action: str, payload: dict[str, Any]) -> int:
        def fn() -> int:
            cur = self._db.execute(
                "INSERT INTO queue (charger, action, payload, created) VALUES (?, ?, ?, ?)",
                (charger, action, json.dumps(payload, separators=(",", ":")), time.time()),
            )
            return int(cur.lastrowid or 0)

        return int(self._tx(fn))

    def enqueue_start_16(self, charger: str, payload: dict[str, Any]) -> int:
        """Queue a 1.6 StartTransaction and allocate its local transaction id (negative), atomically."""

        def fn() -> int:
            row = self._db.execute("SELECT value FROM meta WHERE key = 'next_local_tx'").fetchone()
            nxt = int(row[0]) if row else 1
            self._db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('next_local_tx', ?)", (str(nxt + 1),))
            local_id = -nxt
            body = {**payload, "__local_tx": local_id}
            self._db.execute(
                "INSERT INTO queue (charger, action, payload, created) VALUES (?, ?, ?, ?)",
                (charger, "StartTransaction", json.dumps(body, separators=(",", ":")), time.time()),
            )
            return local_id

        return int(self._tx(fn))

    def pending(self, charger: str, limit: int = 100) -> list[QueuedMessage]:
        rows = self._db.execute(
            "SELECT seq, action, payload FROM queue WHERE charger = ? ORDER BY seq LIMIT ?", (charger, limit)
        ).fetchall()
        return [QueuedMessage(int(s), charger, str(a), json.loads(p)) for s, a, p in rows]

    def has_pending(self, charger: str) -> bool:
        return self._db.execute("SELECT 1 FROM queue WHERE charger = ? LIMIT 1", (charger,)).fetchone() is not None

    def count_pending(self, charger: str | None = None) -> int:
        if charger is None:
            return int(self._db.execute("SELECT COUNT(*) FROM queue").fetchone()[0])
        return int(self._db.execute("SELECT COUNT(*) FROM queue WHERE charger = ?", (charger,)).fetchone()[0])

    def delete(self, seq: int) -> None:
        self._tx(lambda: self._db.execute("DELETE FROM queue WHERE seq = ?", (seq,)))

    # -- 1.6 transaction ids ------------------------------------------------------------
    def map_tx(self, charger: str, local_id: int, cms_id: int, *, delete_seq: int | None = None) -> None:
        def fn() -> None:
            self._db.execute(
                "INSERT OR REPLACE INTO txmap (charger, local_id, cms_id) VALUES (?, ?, ?)",
                (charger, local_id, cms_id),
            )
            if delete_seq is not None:
                self._db.execute("DELETE FROM queue WHERE seq = ?", (delete_seq,))

        self._tx(fn)

    def cms_tx(self, charger: str, local_id: int) -> int | None:
        row = self._db.execute(
            "SELECT cms_id FROM txmap WHERE charger = ? AND local_id = ?", (charger, local_id)
        ).fetchone()
        return None if row is None else int(row[0])

    def local_tx(self, charger: str, cms_id: int) -> int | None:
        row = self._db.execute(
            "SELECT local_id FROM txmap WHERE charger = ? AND cms_id = ?", (charger, cms_id)
        ).fetchone()
        return None if row is None else int(row[0])

    def forget_tx(self, charger: str, local_id: int) -> None:
        self._tx(lambda: self._db.execute("DELETE FROM txmap WHERE charger = ? AND local_id = ?", (charger, local_id)))

    # -- tokens -----------------------------------------------------------------------------
    def remember_token(self, token: str, status: str) -> None:
        self._tx(
            lambda: self._db.execute(
                "INSERT OR REPLACE INTO tokens (token, status, updated) VALUES (?, ?, ?)",
                (token, status, time.time()),
            )
        )

    def token_status(self, token: str) -> str | None:
        row = self._db.execute("SELECT status FROM tokens WHERE token = ?", (token,)).fetchone()
        return None if row is None else str(row[0])

    # -- capabilities ------------------------------------------------------------------------
    def caps(self, charger: str) -> dict[str, Any]:
        row = self._db.execute("SELECT data FROM caps WHERE charger = ?", (charger,)).fetchone()
        if row is None:
            return {}
        data = json.loads(row[0])
        return data if isinstance(data, dict) else {}

    def set_caps(self, charger: str, data: dict[str, Any]) -> None:
        self._tx(
            lambda: self._db.execute(
                "INSERT OR REPLACE INTO caps (charger, data) VALUES (?, ?)", (charger, json.dumps(data))
            )
        )

    # -- the CMS's intercepted station-wide profiles ------------------------------------------
    def cms_profiles(self, charger: str) -> dict[int, dict[str, Any]]:
        """Read on every limit decision: served from memory, the table is its write-through copy."""
        cached = self._cms_cache.get(charger)
        if cached is None:
            rows = self._db.execute(
                "SELECT profile_id, data FROM cms_profiles WHERE charger = ? ORDER BY profile_id", (charger,)
            ).fetchall()
            cached = self._cms_cache[charger] = {int(i): json.loads(d) for i, d in rows}
        return dict(cached)

    def put_cms_profile(self, charger: str, profile_id: int, data: dict[str, Any]) -> None:
        self._tx(
            lambda: self._db.execute(
                "INSERT OR REPLACE INTO cms_profiles (charger, profile_id, data) VALUES (?, ?, ?)",
                (charger, profile_id, json.dumps(data)),
            )
        )
        self._cms_cache.pop(charger, None)

    def delete_cms_profile(self, charger: str, profile_id: int) -> None:
        self._tx(
            lambda: self._db.execute(
                "DELETE FROM cms_profiles WHERE charger = ? AND profile_id = ?", (charger, profile_id)
            )
        )
        self._cms_cache.pop(charger, None)
