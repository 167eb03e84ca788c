"""The limit leases across a restart: what each charger may still hold from the gateway's earlier life.

A charger keeps the limit profile the previous life installed until its lease lapses (``lease_s`` after it
was built), then its persistent fail-safe profile. Per charger, the highest limit it may hold and when that
lapses (wall clock) are written to the store whenever they change (written behind, never awaited by the
control loop, and batched: one store job for all the chargers whose bound changed in a loop iteration, so
a tick that changes 1000 limits costs one write); a decrease is written only ``ev_response_s`` after it
landed (the EV may draw the earlier limit meanwhile). The next life restores each charger's
:class:`LimitState` from it before the first allocation; a charger without a record (a first start, an
upgrade) may hold its maximum for a lease.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping

from gateway.config import ChargerConfig
from gateway.ocpp_proxy.limits import LimitState
from gateway.ocpp_proxy.store import Lease, Store


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
        self._written: dict[str, Lease] = {}
        self._due: dict[str, tuple[float, Lease]] = {}  # not yet written: (when, what); a newer bound replaces
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
                self._written[cid] = lease

    def changed(self, cid: str, ls: LimitState) -> None:
        """``LimitState.on_bound``: persist the new bound (a decrease after the EV's response)."""
        if ls.bound is None:
            return
        limit, until = ls.bound
        now = self.clock()
        lease = Lease(limit, until - now + self.wall(), ls.failsafe_ever)
        old = self._written.get(cid)
        decrease = old is not None and lease.limit < old.limit - 1e-9 and old.until_wall > self.wall()
        due = now + self.ev_response_s if decrease else now
        self._due[cid] = (due, lease)
        self._schedule(due, now)

    def _schedule(self, at: float, now: float) -> None:
        """Flush by ``at`` (a flush already due by then covers it: O(1) per change)."""
        if self._handle is not None and self._flush_at is not None and self._flush_at <= at:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (a test, shutdown): write at once
            self.flush(force=True)
            return
        if self._handle is not None:
            self._handle.cancel()
        self._flush_at = at
        self._handle = loop.call_soon(self.flush) if at <= now else loop.call_later(at - now, self.flush)

    def flush(self, *, force: bool = False) -> None:
        """Write every bound that is due (all of them with ``force``) in one store job."""
        self._handle = self._flush_at = None
        now = self.clock()
        ready = {cid: lease for cid, (due, lease) in self._due.items() if force or due <= now}
        for cid, lease in ready.items():
            del self._due[cid]
            self._written[cid] = lease
        if ready:
            self.store.put_leases(ready)
        if self._due:
            self._schedule(min(due for due, _ in self._due.values()), now)
