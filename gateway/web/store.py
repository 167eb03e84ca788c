"""History and event log on disk: one SQLite file under state_dir, bounded, written off the event loop.

* site samples (every ``history_interval_s``): per service phase the measured current, the allocated current
  and the effective limit, packed as float32 (3 x phases values, ~50 bytes a row);
* charger samples (every ``charger_history_interval_s``): every charger's limit and draw packed as float32
  pairs in one row, in the order of a *layout* (the charger ids, stored once per distinct list);
* events: name, kind and fields (JSON), at most ``MAX_EVENTS`` rows.

Rows older than the retention (``history_hours``) are deleted on every write, so the file never grows
without bound (24 h of 1000 chargers at 60 s: ~12 MB). All SQLite work runs in one daemon thread that owns the
connection; the event loop only queues writes (never blocks: a full queue drops the sample, logged) and awaits
reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import queue
import sqlite3
import struct
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import structlog

log = structlog.get_logger(__name__)

T = TypeVar("T")
MAX_EVENTS = 20_000
_QUEUE_MAX = 1000
_NAN = float("nan")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS site (ts REAL NOT NULL, phases INTEGER NOT NULL, data BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS site_ts ON site (ts);
CREATE TABLE IF NOT EXISTS layout (id INTEGER PRIMARY KEY, ids TEXT NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS chargers (ts REAL NOT NULL, layout INTEGER NOT NULL, data BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS chargers_ts ON chargers (ts);
CREATE TABLE IF NOT EXISTS events (id INTEGER PRIMARY KEY AUTOINCREMENT, ts REAL NOT NULL, kind TEXT NOT NULL,
                                   name TEXT NOT NULL, fields TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS events_ts ON events (ts);
"""


def pack(values: Sequence[float | None]) -> bytes:
    return struct.pack(f"<{len(values)}f", *(_NAN if v is None else v for v in values))


def unpack(data: bytes) -> list[float | None]:
    n = len(data) // 4
    return [None if v != v else round(v, 2) for v in struct.unpack(f"<{n}f", data)]


def _peak(rows: list[list[float | None]], lo: int, hi: int, pick: Any) -> list[float | None]:
    out: list[float | None] = []
    for j in range(lo, hi):
        col = [r[j] for r in rows if r[j] is not None]
        out.append(pick(col) if col else None)
    return out


class HistoryStore:
    def __init__(self, path: str | Path, *, retention_s: float = 86_400.0) -> None:
        self.path = Path(path)
        self.retention_s = retention_s
        self._q: queue.Queue[Callable[[sqlite3.Connection], None] | None] = queue.Queue(maxsize=_QUEUE_MAX)
        self._layouts: dict[tuple[str, ...], int] = {}
        self.dropped = 0
        self._thread = threading.Thread(target=self._run, name="web-history", daemon=True)
        self._ready = threading.Event()
        self._open_error: BaseException | None = None
        self._thread.start()
        self._ready.wait(10)

    # -- the thread -------------------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            db = sqlite3.connect(self.path, check_same_thread=False)
            db.executescript(_SCHEMA)
        except sqlite3.DatabaseError as exc:  # a corrupt file: keep it aside, start afresh
            log.error("web_history_unreadable", file=str(self.path), error=str(exc))
            with contextlib.suppress(OSError):
                self.path.replace(self.path.with_suffix(".corrupt"))
            db = sqlite3.connect(self.path, check_same_thread=False)
            db.executescript(_SCHEMA)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        return db

    def _run(self) -> None:
        try:
            db = self._connect()
        except Exception as exc:
            log.error("web_history_disabled", file=str(self.path), error=str(exc))
            self._open_error = exc
            db = sqlite3.connect(":memory:", check_same_thread=False)
            db.executescript(_SCHEMA)
        self._ready.set()
        while True:
            job = self._q.get()
            if job is None:
                break
            try:
                job(db)
            except Exception as exc:
                log.warning("web_history_job_failed", error=repr(exc))
        db.close()

    def _submit(self, job: Callable[[sqlite3.Connection], None]) -> bool:
        try:
            self._q.put_nowait(job)
            return True
        except queue.Full:
            self.dropped += 1
            return False

    async def _call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()

        def settle(ok: bool, v: Any) -> None:
            if not fut.done():
                fut.set_result(v) if ok else fut.set_exception(v)

        def job(db: sqlite3.Connection) -> None:
            try:
                res: Any = fn(db)
                ok = True
            except Exception as exc:
                res, ok = exc, False
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(settle, ok, res)

        try:
            self._q.put_nowait(job)
        except queue.Full:  # a read waits for room (off the loop); only writes are ever dropped
            await asyncio.to_thread(self._q.put, job, True, 10.0)
        return await fut

    def close(self) -> None:
        with contextlib.suppress(queue.Full):
            self._q.put(None, timeout=2)
        self._thread.join(timeout=5)

    # -- writes (from the loop; never block) -----------------------------------------------
    def _prune(self, db: sqlite3.Connection, ts: float) -> None:
        cut = ts - self.retention_s
        db.execute("DELETE FROM site WHERE ts < ?", (cut,))
        db.execute("DELETE FROM chargers WHERE ts < ?", (cut,))

    def add_site(self, ts: float, phases: int, values: Sequence[float | None]) -> None:
        data = pack(values)

        def job(db: sqlite3.Connection) -> None:
            with db:
                db.execute("INSERT INTO site VALUES (?, ?, ?)", (ts, phases, data))
                self._prune(db, ts)

        self._submit(job)

    def add_chargers(self, ts: float, ids: tuple[str, ...], values: Sequence[float | None]) -> None:
        data = pack(values)

        def job(db: sqlite3.Connection) -> None:
            with db:
                lid = self._layouts.get(ids)
                if lid is None:
                    text = json.dumps(ids)
                    db.execute("INSERT OR IGNORE INTO layout (ids) VALUES (?)", (text,))
                    lid = int(db.execute("SELECT id FROM layout WHERE ids = ?", (text,)).fetchone()[0])
                    self._layouts[ids] = lid
                db.execute("INSERT INTO chargers VALUES (?, ?, ?)", (ts, lid, data))
                db.execute("DELETE FROM layout WHERE id NOT IN (SELECT DISTINCT layout FROM chargers)")
                if len(self._layouts) > 1:
                    self._layouts = {k: v for k, v in self._layouts.items() if v == lid}

        self._submit(job)

    def add_event(self, ts: float, kind: str, name: str, fields: dict[str, Any]) -> None:
        text = json.dumps(fields, default=str)[:4000]

        def job(db: sqlite3.Connection) -> None:
            with db:
                cur = db.execute("INSERT INTO events (ts, kind, name, fields) VALUES (?, ?, ?, ?)",
                                 (ts, kind, name, text))
                last = cur.lastrowid or 0
                if last % 100 == 0:
                    db.execute("DELETE FROM events WHERE id <= ?", (last - MAX_EVENTS,))

        self._submit(job)

    # -- reads (awaited) ---------------------------------------------------------------------
    async def site_history(self, since: float, max_points: int = 2000) -> list[dict[str, Any]]:
        """Samples since ``since``; more than ``max_points`` are merged in buckets that keep the peaks (the
        highest measured and allocated current, the lowest limit), so a chart never hides an excursion."""
        def q(db: sqlite3.Connection) -> list[dict[str, Any]]:
            rows = db.execute("SELECT ts, phases, data FROM site WHERE ts >= ? ORDER BY ts", (since,)).fetchall()
            step = max(1, -(-len(rows) // max_points))
            out = []
            for i in range(0, len(rows), step):
                chunk = rows[i:i + step]
                p = chunk[-1][1]
                vals = [unpack(d) for _, ph, d in chunk if ph == p]
                out.append({"ts": chunk[-1][0], "measured_a": _peak(vals, 0, p, max),
                            "allocated_a": _peak(vals, p, 2 * p, max), "limit_a": _peak(vals, 2 * p, 3 * p, min)})
            return out

        return await self._call(q)

    async def charger_history(self, charger_id: str, since: float) -> list[dict[str, Any]]:
        def q(db: sqlite3.Connection) -> list[dict[str, Any]]:
            layouts = {lid: json.loads(ids) for lid, ids in db.execute("SELECT id, ids FROM layout")}
            slot = {lid: ids.index(charger_id) for lid, ids in layouts.items() if charger_id in ids}
            out = []
            for ts, lid, data in db.execute(
                "SELECT ts, layout, data FROM chargers WHERE ts >= ? ORDER BY ts", (since,)
            ):
                i = slot.get(lid)
                if i is None:
                    continue
                lim, draw = struct.unpack_from("<2f", data, 8 * i)
                out.append({"ts": ts, "limit": None if lim != lim else round(lim, 2),
                            "draw": None if draw != draw else round(draw, 2)})
            return out

        return await self._call(q)

    async def events(self, *, since: float = 0.0, kinds: Sequence[str] = (), text: str = "",
                     limit: int = 200) -> list[dict[str, Any]]:
        def q(db: sqlite3.Connection) -> list[dict[str, Any]]:
            sql = "SELECT id, ts, kind, name, fields FROM events WHERE ts >= ?"
            args: list[Any] = [since]
            if kinds:
                sql += f" AND kind IN ({','.join('?' * len(kinds))})"
                args += list(kinds)
            if text:
                sql += " AND (name LIKE ? OR fields LIKE ?)"
                args += [f"%{text}%", f"%{text}%"]
            sql += " ORDER BY id DESC LIMIT ?"
            args.append(limit)
            return [{"id": i, "ts": ts, "kind": k, "name": n, "fields": json.loads(f)}
                    for i, ts, k, n, f in db.execute(sql, args)]

        return await self._call(q)

    async def flush(self) -> None:
        """Wait until every queued write is done (tests, shutdown)."""
        await self._call(lambda db: None)
