"""Durable telemetry state: events awaiting their PUBACK (and a remote cap kept by versions before the budget
service, handed over to it once at start).

SQLite in WAL mode with ``synchronous=NORMAL``: a commit is a write into the WAL without an
fsync, so an event survives a gateway crash or restart (the OS has the page) at a cost of
tens of microseconds, cheap enough to call from the control loop. Events are deleted once
the broker acknowledged them (PUBACK), so the table holds only what is still owed.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from pathlib import Path

import structlog

from gateway.errors import StoreError

log = structlog.get_logger(__name__)

EVENTS_FILE = "events.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS kv (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""


class EventStore:
    """Pending events keyed by an increasing integer; ``path=None`` keeps them in memory only."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.durable = path is not None
        try:
            self._db = self._open(path)
        except (sqlite3.Error, OSError) as exc:
            log.error("mqtt_event_store_unavailable", path=str(path), error=str(exc))
            self._db = self._open(None)
            self.durable = False

    @staticmethod
    def _open(path: Path | None) -> sqlite3.Connection:
        if path is None:
            db = sqlite3.connect(":memory:", isolation_level=None)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(str(path), isolation_level=None, timeout=1.0)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            # no checkpoint (and its fsync) inside a control-loop insert: checkpoint() does it
            db.execute("PRAGMA wal_autocheckpoint=0")
        db.executescript(_SCHEMA)
        return db

    def add(self, topic: str, payload: bytes) -> int:
        try:
            cur = self._db.execute("INSERT INTO events (topic, payload) VALUES (?, ?)", (topic, payload))
        except sqlite3.Error as exc:
            raise StoreError(f"cannot persist event: {exc}") from exc
        key = cur.lastrowid
        assert key is not None
        return key

    def delete(self, keys: Iterable[int]) -> None:
        ks = [(k,) for k in keys]
        if not ks:
            return
        try:
            self._db.execute("BEGIN")
            self._db.executemany("DELETE FROM events WHERE id = ?", ks)
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise StoreError(f"cannot delete delivered events: {exc}") from exc

    def load(self, after: int, limit: int) -> list[tuple[int, str, bytes]]:
        try:
            rows = self._db.execute(
                "SELECT id, topic, payload FROM events WHERE id > ? ORDER BY id LIMIT ?", (after, limit)
            ).fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"cannot load events: {exc}") from exc
        return [(int(r[0]), str(r[1]), bytes(r[2])) for r in rows]

    def count(self) -> int:
        row = self._db.execute("SELECT COUNT(*) FROM events").fetchone()
        return int(row[0])

    def get(self, key: str) -> str | None:
        try:
            row = self._db.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read {key!r}: {exc}") from exc
        return None if row is None else str(row[0])

    def put(self, key: str, value: str | None) -> None:
        try:
            if value is None:
                self._db.execute("DELETE FROM kv WHERE key = ?", (key,))
            else:
                self._db.execute("INSERT OR REPLACE INTO kv (key, value) VALUES (?, ?)", (key, value))
        except sqlite3.Error as exc:
            raise StoreError(f"cannot write {key!r}: {exc}") from exc

    def checkpoint(self) -> None:
        """Fold the WAL back into the database; blocking (fsync): call it from a worker thread."""
        if self.path is None or not self.durable:
            return
        try:
            db = sqlite3.connect(str(self.path), timeout=5.0)
            try:
                db.execute("PRAGMA wal_checkpoint(PASSIVE)")
            finally:
                db.close()
        except sqlite3.Error as exc:
            log.warning("mqtt_event_store_checkpoint_failed", error=str(exc))

    def close(self) -> None:
        self._db.close()
