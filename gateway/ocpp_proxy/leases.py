"""The limit leases across a restart: what each charger may still hold from the gateway's earlier life.

A charger keeps the limit profile the previous life installed until its lease lapses (``lease_s`` after it
was built), then its persistent fail-safe profile. Per charger, the highest limit it may hold and when that
lapses (wall clock) are written to the store whenever they change (written behind, never awaited by the
control loop); a decrease is written only ``ev_response_s`` after it landed (the EV may draw the earlier
limit meanwhile). The next life restores each charger's :class:`LimitState` from it before the first
allocation; a charger without a record (a first start, an upgrade) may hold its maximum for a lease.
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
        self._later: dict[str, asyncio.TimerHandle] = {}

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
        lease = Lease(limit, until - self.clock() + self.wall(), ls.failsafe_ever)
        old = self._written.get(cid)
        pending = self._later.pop(cid, None)
        if pending is not None:
            pending.cancel()
        decrease = old is not None and lease.limit < old.limit - 1e-9 and old.until_wall > self.wall()
        if decrease and self.ev_response_s > 0:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                loop = None
            if loop is not None:
                self._later[cid] = loop.call_later(self.ev_response_s, self._write, cid, lease)
                return
        self._write(cid, lease)

    def _write(self, cid: str, lease: Lease) -> None:
        self._later.pop(cid, None)
        self._written[cid] = lease
        self.store.put_lease(cid, lease)
