"""The limit leases across a restart: what each charger may still hold from the gateway's earlier life.

A charger keeps the limit profile the previous life installed until its lease lapses (``lease_s`` after it
was built), then its persistent fail-safe profile. Per charger, the highest limit it may hold and when that
lapses (wall clock) are written to the store whenever they change (batched: one store job for all the
chargers whose bound changed in a loop iteration, so a tick that changes 1000 limits costs one commit); a
decrease is written only ``ev_response_s`` after it landed (the EV may draw the earlier limit meanwhile),
while the longer lease its profile brings is written at once under the earlier, higher limit.

A frame that raises a charger's limit or lengthens its lease waits until the record covering it is committed
(:meth:`LeaseKeeper.durable`): a gateway killed between the two would otherwise restart believing the charger
holds less than it does, and hand the difference to others. A decrease never waits; only the longer lease
its profile brings can be lost with a kill in the few milliseconds before its commit.

The next life restores each charger's :class:`LimitState` from the store before the first allocation; a
charger without a record (a first start, an upgrade) may hold its maximum for a lease.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import time
from collections.abc import Callable, Mapping

import structlog

from gateway.config import ChargerConfig
from gateway.ocpp_proxy.limits import LimitState
from gateway.ocpp_proxy.store import Lease, Store

log = structlog.get_logger(__name__)

RETRY_S = 5.0  # a failed commit is written again after this
SLACK_S = 0.01  # the wall and monotonic clocks read a few microseconds apart (or slewed a little)


class LeaseKeeper:
    def __init__(
        self,
        store: Store,
        clock: Callable[[], float],
        *,
        lease_s: float,
        ev_response_s: float,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.clock = clock
        self.wall = wall
        self.lease_s = lease_s
        self.ev_response_s = ev_response_s
        self._written: dict[str, Lease] = {}  # handed to the store (maybe not committed yet)
        self._durable: dict[str, Lease] = {}  # committed
        self._due: dict[str, tuple[float, Lease]] = {}  # not yet written: (when, what); a newer bound replaces
        self._bridge: dict[str, Lease] = {}  # a decrease's longer lease, under the earlier limit: written at once
        self._next: asyncio.Future[None] | None = None  # done when the next flush is committed
        self._commit_of: dict[str, asyncio.Future[None]] = {}  # the commit that will hold a charger's newest record
        self._flush_at: float | None = None
        self._handle: asyncio.TimerHandle | asyncio.Handle | None = None

    def restore_all(self, chargers: Mapping[str, ChargerConfig], state: Callable[[str], LimitState]) -> None:
        """At start: every configured charger's bound from the store (its maximum for a lease without)."""
        stored = self.store.leases()
        now, wall = self.clock(), self.wall()
        for cid, cfg in chargers.items():
            lease = stored.get(cid)
            ls = state(cid)
            if lease is None:
                ls.restore(cfg.max_limit, now + self.lease_s, False, now)
            else:
                ls.restore(lease.limit, lease.until_wall - wall + now, lease.failsafe, now)
                self._written[cid] = self._durable[cid] = lease

    def changed(self, cid: str, ls: LimitState) -> None:
        """``LimitState.on_bound``: persist the new bound (a decrease after the EV's response)."""
        if ls.bound is not None:
            self._record(cid, ls)

    def _record(self, cid: str, ls: LimitState, *, now_too: bool = False) -> None:
        """Queue ``ls``'s bound for the store: at once, or, a decrease, after the EV's response (its longer lease
        at once under the earlier limit; with ``now_too`` the earlier limit is written again even without)."""
        assert ls.bound is not None
        limit, until = ls.bound
        now = self.clock()
        lease = Lease(limit, until - now + self.wall(), ls.failsafe_ever)
        old = self._written.get(cid)
        self._bridge.pop(cid, None)
        if old is not None and lease.limit < old.limit - 1e-9 and old.until_wall > self.wall():  # a decrease
            self._due[cid] = (now + self.ev_response_s, lease)
            if now_too or lease.until_wall > old.until_wall:
                self._bridge[cid] = Lease(old.limit, max(lease.until_wall, old.until_wall), lease.failsafe)
            else:
                self._commit_of.pop(cid, None)
                self._schedule(now + self.ev_response_s, now)
                return
        else:
            self._due[cid] = (now, lease)
        nxt = self._next_commit()
        if nxt is not None:
            self._commit_of[cid] = nxt
        self._schedule(now, now)

    def durable(
        self, cid: str, ls: LimitState, limit: float, until: float, *, decrease: bool = False
    ) -> asyncio.Future[None] | None:
        """Whether a frame giving ``limit`` until ``until`` (clock()) may go out: None when the committed record
        covers it, else the future of the commit that will hold ``ls``'s bound (which covers it: the frame
        widened it first). An exception in that future: the commit failed, the frame must not go. A
        ``decrease`` goes at once when the record covers its limit and is live (its longer lease follows)."""
        d = self._durable.get(cid)
        if d is not None and d.limit >= limit - 1e-9:
            wall = self.wall()
            if d.until_wall >= until - self.clock() + wall - SLACK_S or (decrease and d.until_wall > wall):
                return None
        fut = self._commit_of.get(cid)
        if fut is None and ls.bound is not None:  # a commit that failed, or a bound never written (a first start)
            self._record(cid, ls, now_too=True)
            fut = self._commit_of.get(cid)
        return fut

    def _next_commit(self) -> asyncio.Future[None] | None:
        if self._next is None:
            try:
                self._next = asyncio.get_running_loop().create_future()
            except RuntimeError:  # no loop (a test): the write is made at once
                return None
        return self._next

    def _schedule(self, at: float, now: float) -> None:
        """Flush by ``at`` (a flush already due by then covers it: O(1) per change)."""
        if self._handle is not None and self._flush_at is not None and self._flush_at <= at:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (a test, shutdown): write at once
            self.flush(force=True, wait=True)
            return
        if self._handle is not None:
            self._handle.cancel()
        self._flush_at = at
        self._handle = loop.call_soon(self.flush) if at <= now else loop.call_later(at - now, self.flush)

    def flush(self, *, force: bool = False, wait: bool = False) -> None:
        """Write every bound that is due (all of them with ``force``) in one store job; ``wait``: until it is
        committed (no event loop)."""
        self._handle = self._flush_at = None
        now = self.clock()
        ready = dict(self._bridge)
        self._bridge.clear()
        for cid, (due, lease) in list(self._due.items()):
            if force or due <= now:
                del self._due[cid]
                ready[cid] = lease
        committed, self._next = self._next, None
        self._written.update(ready)
        if ready:
            fut = self.store.put_leases(ready)
            if wait:
                with contextlib.suppress(Exception):
                    fut.result()
            self._on_commit(fut, ready, committed)
        elif committed is not None:
            committed.set_result(None)
        if self._due:
            self._schedule(min(due for due, _ in self._due.values()), now)

    def _on_commit(
        self, fut: concurrent.futures.Future[None], ready: dict[str, Lease], waiter: asyncio.Future[None] | None
    ) -> None:
        """When the store committed (or failed): the records count as durable, the frames waiting go out."""
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None

        def landed(f: concurrent.futures.Future[None]) -> None:
            exc = f.exception()
            for cid in ready:
                if waiter is not None and self._commit_of.get(cid) is waiter:
                    del self._commit_of[cid]
            if exc is None:
                self._durable.update(ready)
            else:  # written again later; the frames waiting do not go (their increase is retried)
                log.error("lease_not_durable", chargers=len(ready), error=str(exc))
                now = self.clock()
                for cid, lease in ready.items():
                    self._due.setdefault(cid, (now + RETRY_S, lease))
                self._schedule(now + RETRY_S, now)
            if waiter is not None and not waiter.done():
                if exc is None:
                    waiter.set_result(None)
                else:
                    waiter.set_exception(exc)
                    waiter.exception()  # retrieved: nobody need be waiting

        if loop is None or fut.done():
            landed(fut)
        else:
            fut.add_done_callback(lambda f: _call_soon(loop, landed, f))


def _call_soon(loop: asyncio.AbstractEventLoop, fn: Callable[[concurrent.futures.Future[None]], None],
               f: concurrent.futures.Future[None]) -> None:
    with contextlib.suppress(RuntimeError):  # the loop closed meanwhile (shutdown): nobody waits
        loop.call_soon_threadsafe(fn, f)
