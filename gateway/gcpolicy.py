"""The daemon's garbage collector: start-up frozen, young collections rare, a full one only right after a tick.

At 1000 chargers CPython's defaults cost the loop: the young generation is collected every 700 net new
container objects (a tick at 1000 chargers makes and drops thousands, so a collection ran in most ticks,
sometimes inside the allocator), and a full collection walks every object the daemon holds (the modules, the
site, 1000 sessions and their sockets): tens of ms at a moment the collector picks, maybe while an overload
reading waits. So, once the daemon is READY:

* everything made during start-up is frozen (``gc.freeze``: never walked again);
* the young generation is collected after ``GEN0`` net new container objects instead of 700;
* every ``REFRESH_S``, right after a tick (a tick subscriber), everything is unfrozen, collected once (cyclic
  garbage among frozen objects, e.g. a closed session's, is freed) and frozen again, so that the automatic
  collections in between walk only what was made since. The pause is logged (``gc_refreshed``).

The daemon's entry point opts in (``App(tune_gc=True)``); tests and embedders keep CPython's defaults.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable

import structlog

from gateway.model import Allocation, Snapshot

log = structlog.get_logger(__name__)

GEN0 = 10_000  # net new container objects between young collections (CPython: 700)
REFRESH_S = 900.0  # a full collection, then everything frozen again, this often (right after a tick)


def settle() -> float:
    """Collect once, freeze what survives, raise the young threshold; returns the pause (s)."""
    t0 = time.perf_counter()
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GEN0, gen1, gen2)
    return time.perf_counter() - t0


class GcPolicy:
    """A tick subscriber: ``settle()`` once started (``start``), then a refresh every ``refresh_s``."""

    def __init__(self, clock: Callable[[], float], refresh_s: float = REFRESH_S) -> None:
        self.clock = clock
        self.refresh_s = refresh_s
        self.next_at: float | None = None  # None: not started

    def start(self) -> None:
        pause = settle()
        self.next_at = self.clock() + self.refresh_s
        log.info("gc_settled", pause_ms=round(pause * 1000, 3), frozen=gc.get_freeze_count(), gen0=GEN0)

    def __call__(self, snapshot: Snapshot, allocation: Allocation) -> None:
        if self.next_at is None or self.clock() < self.next_at:
            return
        gc.unfreeze()
        pause = settle()
        self.next_at = self.clock() + self.refresh_s
        log.info("gc_refreshed", pause_ms=round(pause * 1000, 3), frozen=gc.get_freeze_count())
