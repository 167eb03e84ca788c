"""The durable store: the offline queue, 1.6 transaction-id map, token cache, learned capabilities, and
the limit leases the chargers may still hold (read by the next life after a restart).

SQLite in WAL mode with ``synchronous=FULL``. Every write goes to ONE writer thread that commits
whatever has accumulated in one transaction (group commit: one disk sync for all the messages of
all chargers that arrived meanwhile); the event loop never waits for a disk sync. Writes whose
durability matters (a queued message before the charger is answered, the CMS's answer before the
next replayed message needs it) are awaited; the others (capabilities, CMS profiles, tokens) are
served from memory at once and written behind, in order.

The queue keeps each CALL exactly as the charger sent it (its raw text and message id). When the
CMS answers a replayed row, the answer is recorded on the row; answered rows are never sent again
and are deleted in batches, so a crash between the answer and the delete sends nothing twice.

Bounded: past ``max_messages`` rows (or when the disk refuses the write), periodic messages are
dropped and counted; transaction begin/end messages may still use a reserve of a tenth of the
limit; past that they are refused (:class:`QueueFull`) so that the charger keeps and retries them.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import json
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import structlog

from gateway.errors import StoreError

log = structlog.get_logger(__name__)
T = TypeVar("T")

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
CREATE TABLE IF NOT EXISTS leases (
    charger TEXT PRIMARY KEY,
    limit_value REAL NOT NULL,
    lease_until_wall REAL NOT NULL,
    failsafe INTEGER NOT NULL
);
"""
# columns added since the first schema (older stores are migrated in place)
_ADDED = {
    "queue": (
        ("message_id", "TEXT"),
        ("raw", "TEXT"),
        ("local_tx", "INTEGER"),
        ("answer", "TEXT"),
    ),
    "tokens": (("expires", "REAL"),),
}
_BATCH = 256  # most writes in one commit
_memdb = itertools.count()


class QueueFull(StoreError):
    """The queue's limit is reached or the disk refused the row: the message is not kept."""


@dataclass(frozen=True)
class QueuedMessage:
    seq: int
    charger: str
    action: str
    message_id: str | None  # None: a row from a store older than raw-text queuing
    raw: str | None  # the CALL exactly as the charger sent it
    payload: dict[str, Any]  # parsed from raw (or the legacy payload column)
    local_tx: int | None  # 1.6 StartTransaction: the local transaction id the charger was given


@dataclass(frozen=True)
class QueueLimits:
    max_messages: int = 500_000

    @property
    def hard_max(self) -> int:
        return self.max_messages + max(1, self.max_messages // 10)


class _Job:
    __slots__ = ("fn", "fut")

    def __init__(self, fn: Callable[[sqlite3.Connection], Any]) -> None:
        self.fn = fn
        self.fut: concurrent.futures.Future[Any] = concurrent.futures.Future()


def _connect(path: str, uri: bool) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, uri=uri)
    db.execute("PRAGMA busy_timeout=5000")
    return db


class Store:
    def __init__(self, path: str | Path, limits: QueueLimits | None = None) -> None:
        self.path = str(path)
        self.limits = limits or QueueLimits()
        self._cms_cache: dict[str, dict[int, dict[str, Any]]] = {}
        self._caps: dict[str, dict[str, Any]] = {}
        # verdicts written behind and not yet committed: read before the table (a token the CMS accepted just
        # before it went away is known offline at once)
        self._tokens: dict[str, tuple[str, float, float | None]] = {}
        self._tokens_lock = threading.Lock()  # the writer thread drops an entry only if it is still the one it wrote
        self._tx: dict[str, dict[int, int]] = {}  # charger -> local id -> CMS id
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self.commits = 0  # commits made (a group commit counts once)
        self.dropped = 0  # periodic messages not kept (limit or disk)
        uri = self.path == ":memory:"
        target = f"file:ocppstore{next(_memdb)}?mode=memory&cache=shared" if uri else self.path
        try:
            if not uri:
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            self._wdb = _connect(target, uri)  # the writer thread's
            if not uri:
                self._wdb.execute("PRAGMA journal_mode=WAL")
            self._wdb.execute("PRAGMA synchronous=FULL")
            self._wdb.executescript(_SCHEMA)
            self._migrate(self._wdb)
            self._db = _connect(target, uri)  # reads, on the event loop (WAL: never blocked by the writer)
            self._rows = int(self._db.execute("SELECT COUNT(*) FROM queue WHERE answer IS NULL").fetchone()[0])
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the OCPP store {self.path}: {exc}") from exc
        self._thread = threading.Thread(target=self._writer, name="ocpp-store", daemon=True)
        self._thread.start()

    @staticmethod
    def _migrate(db: sqlite3.Connection) -> None:
        for table, cols in _ADDED.items():
            have = {str(r[1]) for r in db.execute(f"PRAGMA table_info({table})")}
            for name, kind in cols:
                if name not in have:
                    db.execute(f"ALTER TABLE {table} ADD COLUMN {name} {kind}")
        db.execute("CREATE INDEX IF NOT EXISTS queue_open ON queue (charger, answer, seq)")

    def close(self) -> None:
        if self._thread.is_alive():
            self._jobs.put(None)
            self._thread.join()
        self._db.close()
        self._wdb.close()

    # -- the writer thread --------------------------------------------------------------------
    def _writer(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            batch = [job]
            stop = False
            while len(batch) < _BATCH:
                try:
                    nxt = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                batch.append(nxt)
            self._commit(batch)
            if stop:
                return

    def _commit(self, batch: list[_Job]) -> None:
        db = self._wdb
        results: list[tuple[_Job, Any, BaseException | None]] = []
        try:
            db.execute("BEGIN IMMEDIATE")
            for job in batch:
                db.execute("SAVEPOINT job")
                try:
                    out = job.fn(db)
                except (sqlite3.Error, StoreError) as exc:
                    db.execute("ROLLBACK TO job")
                    db.execute("RELEASE job")
                    results.append((job, None, exc))
                    continue
                db.execute("RELEASE job")
                results.append((job, out, None))
            db.execute("COMMIT")
            self.commits += 1
        except sqlite3.Error as exc:  # the commit itself failed (disk full, I/O error): nothing is kept
            if db.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
            err = QueueFull(f"OCPP store: {exc}") if _is_full(exc) else StoreError(f"OCPP store: {exc}")
            results = [(job, None, err) for job in batch]
            log.error("ocpp_store_commit_failed", error=str(exc), writes=len(batch))
        for job, out, failure in results:
            # the waiter may have been cancelled meanwhile (shutdown): the write is kept, nobody wants the answer
            with contextlib.suppress(concurrent.futures.InvalidStateError):
                if failure is None:
                    job.fut.set_result(out)
                else:
                    job.fut.set_exception(_store_error(failure))

    def submit(self, fn: Callable[[sqlite3.Connection], T]) -> concurrent.futures.Future[T]:
        """Run ``fn`` in the writer thread, inside the next group commit."""
        job = _Job(fn)
        self._jobs.put(job)
        return job.fut

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return await asyncio.wrap_future(self.submit(fn))

    def _behind(self, what: str, fn: Callable[[sqlite3.Connection], Any]) -> None:
        """Written behind: failures are logged, the in-memory value stays authoritative."""

        def done(f: concurrent.futures.Future[Any]) -> None:
            if f.exception() is not None:
                log.error("ocpp_store_write_failed", what=what, error=str(f.exception()))

        self.submit(fn).add_done_callback(done)

    def flush(self) -> None:
        """Block until everything submitted so far is committed (tests, shutdown)."""
        self.submit(lambda db: None).result()

    # -- queue -----------------------------------------------------------------------
    def _admit(self, essential: bool) -> None:
        """In the writer: may one more row be written?"""
        if self._rows >= (self.limits.hard_max if essential else self.limits.max_messages):
            raise QueueFull(f"offline queue holds {self._rows} messages (limit {self.limits.max_messages})")

    async def enqueue(self, charger: str, action: str, message_id: str, raw: str, *, essential: bool) -> int:
        """Queue a CALL as received; returns once the row is on disk. Raises QueueFull / StoreError."""

        def fn(db: sqlite3.Connection) -> int:
            self._admit(essential)
            cur = db.execute(
                "INSERT INTO queue (charger, action, payload, created, message_id, raw) VALUES (?, ?, '', ?, ?, ?)",
                (charger, action, time.time(), message_id, raw),
            )
            self._rows += 1
            return int(cur.lastrowid or 0)

        return await self._run(fn)

    async def enqueue_start_16(self, charger: str, message_id: str, raw: str) -> int:
        """Queue a 1.6 StartTransaction and allocate its local transaction id (negative), atomically."""

        def fn(db: sqlite3.Connection) -> int:
            self._admit(True)
            row = db.execute("SELECT value FROM meta WHERE key = 'next_local_tx'").fetchone()
            nxt = int(row[0]) if row else 1
            db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('next_local_tx', ?)", (str(nxt + 1),))
            db.execute(
                "INSERT INTO queue (charger, action, payload, created, message_id, raw, local_tx)"
                " VALUES (?, 'StartTransaction', '', ?, ?, ?, ?)",
                (charger, time.time(), message_id, raw, -nxt),
            )
            self._rows += 1
            return -nxt

        return await self._run(fn)

    def pending(self, charger: str, limit: int = 100) -> list[QueuedMessage]:
        """The oldest rows the CMS has not answered yet, in order."""
        rows = self._db.execute(
            "SELECT seq, action, payload, message_id, raw, local_tx FROM queue"
            " WHERE charger = ? AND answer IS NULL ORDER BY seq LIMIT ?",
            (charger, limit),
        ).fetchall()
        out = []
        for seq, action, payload, mid, raw, local_tx in rows:
            body: Any = json.loads(raw)[3] if raw else json.loads(payload)
            if not isinstance(body, dict):
                body = {}
            if raw is None and isinstance(body.get("__local_tx"), int):
                local_tx = body.pop("__local_tx")
            out.append(QueuedMessage(int(seq), charger, str(action), mid, raw, body, local_tx))
        return out

    def has_pending(self, charger: str) -> bool:
        q = "SELECT 1 FROM queue WHERE charger = ? AND answer IS NULL LIMIT 1"
        return self._db.execute(q, (charger,)).fetchone() is not None

    def count_pending(self, charger: str | None = None) -> int:
        """Rows the CMS has not answered yet."""
        if charger is None:
            return int(self._db.execute("SELECT COUNT(*) FROM queue WHERE answer IS NULL").fetchone()[0])
        q = "SELECT COUNT(*) FROM queue WHERE charger = ? AND answer IS NULL"
        return int(self._db.execute(q, (charger,)).fetchone()[0])

    def count_rows(self) -> int:
        """All rows, answered ones not yet deleted included."""
        return int(self._db.execute("SELECT COUNT(*) FROM queue").fetchone()[0])

    def answered(self, seq: int, answer: str) -> concurrent.futures.Future[None]:
        """Record the CMS's answer to a replayed row: it is never sent again (deleted in a later batch)."""

        def fn(db: sqlite3.Connection) -> None:
            if db.execute("UPDATE queue SET answer = ? WHERE seq = ? AND answer IS NULL", (answer, seq)).rowcount:
                self._rows -= 1

        return self.submit(fn)

    async def delete_answered(self, charger: str) -> int:
        """Delete the rows the CMS answered, in one statement."""

        def fn(db: sqlite3.Connection) -> int:
            return int(db.execute("DELETE FROM queue WHERE charger = ? AND answer IS NOT NULL", (charger,)).rowcount)

        return await self._run(fn)

    async def delete(self, seq: int) -> None:
        def fn(db: sqlite3.Connection) -> None:
            if db.execute("DELETE FROM queue WHERE seq = ? AND answer IS NULL", (seq,)).rowcount:
                self._rows -= 1
            else:
                db.execute("DELETE FROM queue WHERE seq = ?", (seq,))

        await self._run(fn)

    # -- 1.6 transaction ids ------------------------------------------------------------
    def _txmap(self, charger: str) -> dict[int, int]:
        m = self._tx.get(charger)
        if m is None:
            rows = self._db.execute("SELECT local_id, cms_id FROM txmap WHERE charger = ?", (charger,)).fetchall()
            m = self._tx[charger] = {int(a): int(b) for a, b in rows}
        return m

    async def map_tx(self, charger: str, local_id: int, cms_id: int, *, seq: int, answer: str) -> None:
        """The CMS's id for a replayed StartTransaction, recorded with its answer in one commit."""
        self._txmap(charger)[local_id] = cms_id

        def fn(db: sqlite3.Connection) -> None:
            db.execute(
                "INSERT OR REPLACE INTO txmap (charger, local_id, cms_id) VALUES (?, ?, ?)", (charger, local_id, cms_id)
            )
            if db.execute("UPDATE queue SET answer = ? WHERE seq = ? AND answer IS NULL", (answer, seq)).rowcount:
                self._rows -= 1

        await self._run(fn)

    def cms_tx(self, charger: str, local_id: int) -> int | None:
        return self._txmap(charger).get(local_id)

    def local_tx(self, charger: str, cms_id: int) -> int | None:
        for local, cms in self._txmap(charger).items():
            if cms == cms_id:
                return local
        return None

    def forget_tx(self, charger: str, local_id: int) -> None:
        self._txmap(charger).pop(local_id, None)
        q = "DELETE FROM txmap WHERE charger = ? AND local_id = ?"
        self._behind("txmap", lambda db: db.execute(q, (charger, local_id)))

    # -- tokens -----------------------------------------------------------------------------
    def remember_token(
        self, token: str, status: str, *, expires: float | None = None, max_entries: int = 10_000
    ) -> None:
        """Cache the CMS's verdict (``expires``: its idTagInfo expiryDate, epoch s); the oldest entries
        beyond ``max_entries`` are forgotten."""

        row = (status, time.time(), expires)
        with self._tokens_lock:
            self._tokens[token] = row

        def fn(db: sqlite3.Connection) -> None:
            db.execute(
                "INSERT OR REPLACE INTO tokens (token, status, updated, expires) VALUES (?, ?, ?, ?)", (token, *row)
            )
            excess = int(db.execute("SELECT COUNT(*) FROM tokens").fetchone()[0]) - max_entries
            if excess > 0:
                db.execute(
                    "DELETE FROM tokens WHERE token IN (SELECT token FROM tokens ORDER BY updated LIMIT ?)", (excess,)
                )

        def committed(_: concurrent.futures.Future[Any]) -> None:
            with self._tokens_lock:
                if self._tokens.get(token) is row:
                    del self._tokens[token]

        self._behind("token", fn)
        self.submit(lambda db: None).add_done_callback(committed)  # committed with fn or after it

    def token_status(self, token: str, *, now: float | None = None, max_age_s: float | None = None) -> str | None:
        """The cached verdict, or None when unknown, older than ``max_age_s`` or past the CMS's expiry."""
        row = self._tokens.get(token) or self._db.execute(
            "SELECT status, updated, expires FROM tokens WHERE token = ?", (token,)
        ).fetchone()
        if row is None:
            return None
        now = time.time() if now is None else now
        status, updated, expires = str(row[0]), float(row[1]), row[2]
        if max_age_s is not None and now - updated > max_age_s:
            return None
        if expires is not None and now >= float(expires):
            return None
        return status

    # -- capabilities ------------------------------------------------------------------------
    def caps(self, charger: str) -> dict[str, Any]:
        cached = self._caps.get(charger)
        if cached is None:
            row = self._db.execute("SELECT data FROM caps WHERE charger = ?", (charger,)).fetchone()
            data = json.loads(row[0]) if row is not None else {}
            cached = self._caps[charger] = data if isinstance(data, dict) else {}
        return dict(cached)

    def set_caps(self, charger: str, data: dict[str, Any]) -> None:
        self._caps[charger] = dict(data)
        text = json.dumps(data)
        q = "INSERT OR REPLACE INTO caps (charger, data) VALUES (?, ?)"
        self._behind("caps", lambda db: db.execute(q, (charger, text)))

    # -- the CMS's intercepted station-wide profiles ------------------------------------------
    def cms_profiles(self, charger: str) -> dict[int, dict[str, Any]]:
        """Read on every limit decision: served from memory, the table is its write-behind copy."""
        return dict(self._cms_of(charger))

    def has_cms_profiles(self, charger: str) -> bool:
        """Whether the CMS's profiles hold any for ``charger`` (asked for every charger on every tick: no copy)."""
        return bool(self._cms_of(charger))

    def _cms_of(self, charger: str) -> dict[int, dict[str, Any]]:
        """The cached profiles of ``charger`` (loaded from the table on first use); the store's own, not a copy."""
        cached = self._cms_cache.get(charger)
        if cached is None:
            rows = self._db.execute(
                "SELECT profile_id, data FROM cms_profiles WHERE charger = ? ORDER BY profile_id", (charger,)
            ).fetchall()
            cached = self._cms_cache[charger] = {int(i): json.loads(d) for i, d in rows}
        return cached

    def put_cms_profile(self, charger: str, profile_id: int, data: dict[str, Any]) -> None:
        self._cms_of(charger)[profile_id] = data
        text = json.dumps(data)
        q = "INSERT OR REPLACE INTO cms_profiles (charger, profile_id, data) VALUES (?, ?, ?)"
        self._behind("cms_profile", lambda db: db.execute(q, (charger, profile_id, text)))

    def delete_cms_profile(self, charger: str, profile_id: int) -> None:
        self._cms_of(charger).pop(profile_id, None)
        q = "DELETE FROM cms_profiles WHERE charger = ? AND profile_id = ?"
        self._behind("cms_profile", lambda db: db.execute(q, (charger, profile_id)))

    # -- the limit leases the chargers may hold (for the next life) ----------------------------
    def leases(self) -> dict[str, Lease]:
        """Per charger, the highest limit it may hold from the gateway and when that lapses (epoch s)."""
        rows = self._db.execute("SELECT charger, limit_value, lease_until_wall, failsafe FROM leases").fetchall()
        return {str(c): Lease(float(lim), float(until), bool(fs)) for c, lim, until, fs in rows}

    def put_leases(self, leases: Mapping[str, Lease]) -> concurrent.futures.Future[None]:
        """Written behind, all in one job of the writer thread's next group commit; the future tells when
        they are on disk."""
        q = "INSERT OR REPLACE INTO leases (charger, limit_value, lease_until_wall, failsafe) VALUES (?, ?, ?, ?)"
        rows = [(cid, x.limit, x.until_wall, int(x.failsafe)) for cid, x in leases.items()]

        def fn(db: sqlite3.Connection) -> None:
            db.executemany(q, rows)

        fut = self.submit(fn)

        def done(f: concurrent.futures.Future[None]) -> None:
            if f.exception() is not None:
                log.error("ocpp_store_write_failed", what="lease", error=str(f.exception()))

        fut.add_done_callback(done)
        return fut

    def put_lease(self, charger: str, lease: Lease) -> concurrent.futures.Future[None]:
        return self.put_leases({charger: lease})


@dataclass(frozen=True)
class Lease:
    """The highest limit (charger unit) a charger may hold from the gateway, until ``until_wall`` (epoch s),
    and whether it ever accepted the gateway's fail-safe profile."""

    limit: float
    until_wall: float
    failsafe: bool


def _is_full(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    return code == sqlite3.SQLITE_FULL or "full" in str(exc).lower()


def _store_error(exc: BaseException) -> BaseException:
    if isinstance(exc, StoreError):
        return exc
    if isinstance(exc, sqlite3.Error) and _is_full(exc):
        return QueueFull(f"OCPP store: {exc}")
    return StoreError(f"OCPP store: {exc}")
