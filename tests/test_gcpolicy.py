"""The daemon's collector settings (gateway/gcpolicy.py): frozen once started, refreshed only when due."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from gateway import gcpolicy
from gateway.model import Allocation, Snapshot


@pytest.fixture
def restore_gc() -> Iterator[None]:
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


def test_start_freezes_what_exists_and_raises_the_young_threshold(restore_gc: None) -> None:
    kept = [object() for _ in range(3)]
    policy = gcpolicy.GcPolicy(clock=lambda: 0.0, refresh_s=10.0)
    policy.start()
    assert gc.get_freeze_count() >= len(kept)
    assert gc.get_threshold()[0] == gcpolicy.GEN0
    assert policy.next_at == 10.0


def test_a_tick_refreshes_only_once_due(restore_gc: None) -> None:
    now = [0.0]
    policy = gcpolicy.GcPolicy(clock=lambda: now[0], refresh_s=10.0)
    tick = (Snapshot(taken_at=0.0, meters={}, chargers={}), Allocation(at=0.0, limits={}))
    policy(*tick)  # not started: nothing happens
    assert policy.next_at is None and gc.get_freeze_count() == 0
    policy.start()
    now[0] = 5.0
    policy(*tick)
    assert policy.next_at == 10.0  # not due yet
    now[0] = 12.0
    policy(*tick)
    assert policy.next_at == 22.0 and gc.get_freeze_count() > 0
