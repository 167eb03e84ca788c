"""The planner's targets applied through allocate() never break the safety invariant (tests/safety_world.py),
whatever the targets say, and follow the plan where the room allows."""

from __future__ import annotations

import dataclasses
import random

from hypothesis import HealthCheck, given, reject, settings
from hypothesis import strategies as st

from gateway.allocation import allocate
from gateway.config import Site, site_from_dict
from gateway.errors import ConfigError
from gateway.model import Allocation, ChargerSnapshot, ChargerState, ChargerTarget, MeterReading, Session, Snapshot
from tests.factories import ac, site_dict
from tests.safety_world import World, WorldSpec
from tests.test_safety_over_time import worlds

REASONS = ("plan:deadline", "plan:cheap-period")


class PlannedWorld(World):
    """The safety world with random planner targets in every snapshot (new ones every few ticks)."""

    def __init__(self, spec: WorldSpec, seed: int, hold_share: float) -> None:
        super().__init__(spec)
        self.trng = random.Random(seed)
        self.hold_share = hold_share
        self.targets: dict[str, ChargerTarget] = {}
        self.n = 0

    def snapshot(self, t: float) -> Snapshot:
        snap = super().snapshot(t)
        if self.n % 3 == 0:
            self.targets = {}
            for c in self.spec.chargers:
                if self.trng.random() < 0.8:
                    hold = self.trng.random() < self.hold_share
                    top = c.max_limit * 2.0 if c.kind == "ac" else 200.0
                    self.targets[c.id] = ChargerTarget(self.trng.uniform(0.0, top), REASONS[hold], hold)
        self.n += 1
        return dataclasses.replace(snap, targets=dict(self.targets))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(worlds(), st.integers(0, 2**31 - 1), st.sampled_from([0.0, 0.3, 1.0]))
def test_targets_never_break_the_invariant(spec: WorldSpec, seed: int, hold_share: float) -> None:
    try:
        w = PlannedWorld(spec, seed, hold_share)
    except ConfigError:
        reject()
    w.run()
    v = w.first_violation()
    assert v is None, f"{v}; {len(w.violations)} violating samples"


def _snapshot(targets: dict[str, ChargerTarget], t: float = 10.0) -> Snapshot:
    chargers = {
        cid: ChargerSnapshot(id=cid, online=True, state=ChargerState.CHARGING,
                             session=Session(started_at=0.0))
        for cid in ("A", "B", "C")
    }
    return Snapshot(taken_at=t, meters={"m": MeterReading(current_a=(0.0,) * 3, at=t)}, chargers=chargers,
                    targets=targets)


def _twice(targets: dict[str, ChargerTarget]) -> Allocation:
    """Two ticks (the first starts every session at its minimum: the ramp from nothing)."""
    site = _site()
    _, state = allocate(_snapshot(targets, 10.0), site, None, 10.0)
    alloc, _ = allocate(_snapshot(targets, 20.0), site, state, 20.0)
    return alloc


def _site() -> Site:
    d = site_dict(limit_a=48.0, chargers=[ac(x, phases=3, min_current_a=6.0) for x in "ABC"],
                  meters=[{"id": "m", "circuit": "service"}],
                  control={"ramp_up_a_per_s": 1000.0})
    return site_from_dict(d)


def test_a_deadline_target_gets_its_share_first_and_the_rest_is_shared() -> None:
    alloc = _twice({"A": ChargerTarget(30.0, "plan:deadline")})
    a, b, c = (alloc.limits[x] for x in "ABC")
    assert a.limit >= 30.0 - 0.1 and a.reason == "plan:deadline"
    assert b.limit == c.limit and a.limit + b.limit + c.limit <= 48.0 + 1e-6
    # without targets: max-min fairness
    alloc0 = _twice({})
    assert {alloc0.limits[x].limit for x in "ABC"} == {16.0}


def test_a_held_target_caps_and_below_half_the_minimum_pauses() -> None:
    alloc = _twice({"A": ChargerTarget(10.0, "plan:cheap-period", True),
                    "B": ChargerTarget(2.0, "plan:cheap-period", True)})
    assert alloc.limits["A"].limit == 10.0 and alloc.limits["A"].reason == "plan:cheap-period"
    assert alloc.limits["B"].limit == 0.0 and alloc.limits["B"].reason == "plan:cheap-period"
    assert alloc.limits["C"].limit == 32.0  # the room the plan left: C up to its maximum


def test_a_target_above_the_safe_cap_is_not_granted() -> None:
    alloc = _twice({x: ChargerTarget(1000.0, "plan:deadline") for x in "ABC"})
    assert sum(alloc.limits[x].limit for x in "ABC") <= 48.0 + 1e-6
    assert all(alloc.limits[x].limit <= 32.0 for x in "ABC")
