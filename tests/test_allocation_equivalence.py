"""The allocator gives what it gave before it was made fast: the same limits, reasons, reserves, circuit
statuses and memory as the frozen copy in tests/alloc_reference (gateway/allocation at cefe4dc).

Both run on the same snapshots, each fed its own state, over random sites and tick sequences:

* the safety world (tests/safety_world.py, its random worlds): circuit trees, three-phase, single-phase and
  split-phase services, AC three-phase, line-to-neutral and line-to-line, DC, two-connector stations,
  priorities, stale and invalid meters, limits accepted late or rejected, reports every 1-60 s or never;
  each snapshot is then perturbed at random (offline, non-compliant, uncontrolled, lapsed or rejected
  profiles, pending limits, no actuation feedback, session priorities, old reports, a site cap);
* the property cases (tests/test_allocation_properties.py): one snapshot, then ticks after it;
* the benchmark's tree (hil/bench/sites.py) at a few dozen chargers, busy and perturbed, and with the charger
  snapshots kept from tick to tick as the daemon keeps them (the allocator reads again only the new ones).

Floats must agree within 1e-9; everything else exactly (mapping order included).
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Mapping
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, Phase, given, reject, settings
from hypothesis import strategies as st

import tests.alloc_reference as reference
from gateway.allocation import AllocatorState, allocate
from gateway.allocation.inputs import MIN_KEPT
from gateway.config import Site
from gateway.errors import ConfigError
from gateway.model import Actuation, Allocation, BudgetCap, ChargerSnapshot, ChargerState, Session, Snapshot
from hil.bench.sites import busy_snapshot, consistent_meters, next_snapshot, tree_site
from tests.safety_world import World, WorldSpec
from tests.test_allocation_properties import Case, cases
from tests.test_safety_over_time import worlds

FLOAT_TOL = 1e-9
FAST = settings(deadline=None, derandomize=True, database=None, phases=(Phase.explicit, Phase.generate),
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large])


def assert_same(new: object, ref: object, where: str = "") -> None:
    """Structural equality: floats within FLOAT_TOL, mappings in the same order, dataclasses and named tuples
    field by field (the reference has its own copies of the allocator's classes)."""
    if isinstance(new, float) or isinstance(ref, float):
        assert isinstance(new, int | float) and isinstance(ref, int | float), f"{where}: {new!r} vs {ref!r}"
        same = new == ref or (math.isnan(new) and math.isnan(ref))
        assert same or math.isclose(new, ref, rel_tol=FLOAT_TOL, abs_tol=FLOAT_TOL), f"{where}: {new!r} vs {ref!r}"
    elif isinstance(new, Mapping):
        assert isinstance(ref, Mapping), f"{where}: {ref!r} is not a mapping"
        assert list(new) == list(ref), f"{where}: keys {list(new)} vs {list(ref)}"
        for k in new:
            assert_same(new[k], ref[k], f"{where}[{k!r}]")
    elif isinstance(new, tuple):
        assert isinstance(ref, tuple) and len(new) == len(ref), f"{where}: {new!r} vs {ref!r}"
        assert getattr(new, "_fields", None) == getattr(ref, "_fields", None), f"{where}: fields differ"
        for i, (a, b) in enumerate(zip(new, ref, strict=True)):
            assert_same(a, b, f"{where}[{i}]")
    elif dataclasses.is_dataclass(new) and not isinstance(new, type):
        names = [f.name for f in dataclasses.fields(new)]
        assert dataclasses.is_dataclass(ref) and names == [f.name for f in dataclasses.fields(ref)], where
        for name in names:
            assert_same(getattr(new, name), getattr(ref, name), f"{where}.{name}")
    else:
        assert type(new) is type(ref) and new == ref, f"{where}: {new!r} vs {ref!r}"


def assert_same_state(new: AllocatorState, ref: reference.AllocatorState, where: str) -> None:
    assert_same(new.at, ref.at, f"{where} state.at")
    assert_same(new.chargers, ref.chargers, f"{where} state.chargers")
    assert_same(new.circuits, ref.circuits, f"{where} state.circuits")


class Twins:
    """The allocator and its reference, each with its own state, on the same snapshots."""

    def __init__(self, site: Site) -> None:
        self.site = site
        self.state: AllocatorState | None = None
        self.ref_state: reference.AllocatorState | None = None
        self.ticks = 0

    def step(self, snapshot: Snapshot, now: float) -> Allocation:
        if self.state is not None and self.ticks % 10 == 9:
            # now and then a state rebuilt from its per-charger view (as a reload's ``keeping`` makes one)
            self.state = AllocatorState(self.state.at, dict(self.state.chargers), dict(self.state.circuits))
        ref, self.ref_state = reference.allocate(snapshot, self.site, self.ref_state, now)
        new, self.state = allocate(snapshot, self.site, self.state, now)
        where = f"tick {self.ticks} at {now}"
        assert_same(new, ref, where)
        assert_same_state(self.state, self.ref_state, where)
        self.ticks += 1
        return new


# ---- random perturbations of a snapshot ------------------------------------------------------------
def _actuation(rng: random.Random, cs: ChargerSnapshot, limit: float, now: float) -> Actuation | None:
    act = cs.actuation or Actuation(controlled=True, failsafe_installed=True, accepted_limit=limit,
                                    accepted_at=now - rng.choice([0.0, 3.0, 30.0]), lease_until=now + 60.0)
    r = rng.random()
    if r < 0.15:
        return None  # no feedback: the decided limit counts as accepted
    if r < 0.3:
        return replace(act, controlled=False, lease_until=now + rng.choice([-30.0, -5.0, 5.0]))
    if r < 0.4:
        return replace(act, controlled=False, failsafe_installed=False, rejected_at=now - 1.0)
    if r < 0.55:
        return replace(act, pending_limit=limit * rng.choice([0.0, 0.5, 1.5]), pending_since=now - 1.0)
    if r < 0.65:
        return replace(act, accepted_at=now + 2.0)  # a clock a little ahead
    return act


def perturb(snapshot: Snapshot, site: Site, rng: random.Random, now: float, share: float = 0.3) -> Snapshot:
    chargers: dict[str, ChargerSnapshot] = {}
    for cid, cs in snapshot.chargers.items():
        if rng.random() >= share:
            chargers[cid] = cs
            continue
        ch = site.chargers[cid]
        r = rng.random()
        if r < 0.12:
            cs = replace(cs, online=False)
        elif r < 0.2:
            cs = replace(cs, noncompliant=True)
        elif r < 0.3 and cs.session is not None:
            prio = rng.choice(["fleet", "guest", "default", "unknown", None])
            cs = replace(cs, session=replace(cs.session, priority=prio, departure_at=now + rng.uniform(-60, 3600)))
        elif r < 0.4:
            cs = replace(cs, state=rng.choice(list(ChargerState)), state_changed_at=now - rng.choice([0.0, 4.0, 40.0]),
                         session=cs.session or Session(started_at=now - 100.0))
        elif r < 0.5:
            cs = replace(cs, active_connectors=rng.choice([0, 2, 3]))
        elif r < 0.6 and cs.draw_at is not None:
            cs = replace(cs, draw_at=cs.draw_at - rng.choice([5.0, 100.0, 121.0, 130.0]))
        elif r < 0.65 and ch.kind == "ac":
            cs = replace(cs, draw_a=tuple(rng.choice([math.nan, -1.0, ch.max_limit * 1.5])
                                          for _ in range(site.service.phases)), draw_at=now)
        chargers[cid] = replace(cs, actuation=_actuation(rng, cs, rng.choice([0.0, ch.min_limit, ch.max_limit]), now))
    r = rng.random()
    if r < 0.1 and chargers:  # a charger the snapshot lacks (offline to the allocator)
        del chargers[rng.choice(sorted(chargers))]
    elif r < 0.2:  # another order than the site's
        chargers = dict(reversed(list(chargers.items())))
    # a budget cap on every phase of the service, named as the reference named its one remote cap (a negative
    # cap, which the budget counts as 0 A and the reference ignored, is left out)
    cap = rng.choice([None, None, None, site.circuits[site.root].limit_a * rng.uniform(0.2, 1.1), math.inf])
    caps = () if cap is None else (BudgetCap("site-cap", (cap,) * site.service.phases),)
    return replace(snapshot, chargers=chargers, caps=caps)


# ---- the safety world, both allocators on its snapshots ---------------------------------------------
class TwinWorld(World):
    def __init__(self, spec: WorldSpec, share: float) -> None:
        super().__init__(spec)
        self.twins = Twins(self.site)
        self.perturb_rng = random.Random(spec.seed)
        self.share = share

    def tick(self, t: float) -> Allocation:
        s = self.snapshot(t)
        if self.share > 0:
            s = perturb(s, self.site, self.perturb_rng, t, self.share)
        alloc = self.twins.step(s, t)
        self.allocations.append(alloc)
        for cid, ch in self.chargers.items():
            lim = alloc.limit_of(cid)
            if lim is not None:
                self.send(ch, lim, t)
        return alloc


@settings(FAST, max_examples=60)
@given(worlds(), st.sampled_from([0.0, 0.1, 0.4]))
def test_same_as_reference_in_the_safety_world(spec: WorldSpec, share: float) -> None:
    try:
        w = TwinWorld(replace(spec, duration_s=120.0), share)
    except ConfigError:
        reject()
    w.run()
    assert w.twins.ticks == 120


# ---- the property cases: one snapshot, then the ticks after it ---------------------------------------
@settings(FAST, max_examples=200)
@given(cases(allow_stale=True), st.integers(0, 2**16))
def test_same_as_reference_on_random_sites(case: Case, seed: int) -> None:
    rng = random.Random(seed)
    twins = Twins(case.site)
    now = case.snapshot.taken_at
    twins.step(case.snapshot, now)
    for k in range(1, 6):
        t = now + k * rng.choice([0.5, 1.0, 7.0])
        twins.step(perturb(replace(case.snapshot, taken_at=t), case.site, rng, t), t)
    assert twins.ticks == 6


# ---- the benchmark's tree -------------------------------------------------------------------------
@pytest.mark.parametrize(("n", "factor", "share"), [(30, 0.45, 0.0), (60, 0.25, 0.0), (45, 0.3, 0.3)])
def test_same_as_reference_on_the_benchmark_tree(n: int, factor: float, share: float) -> None:
    site = tree_site(n, factor)
    rng = random.Random(n)
    twins = Twins(site)
    prev: Allocation | None = None
    now = 1000.0
    seen: set[str] = set()
    for k in range(40):
        now += 9.0 if k % 7 == 6 else 1.0
        s = busy_snapshot(site, now, rng, limits=prev)
        prev = twins.step(perturb(s, site, rng, now, share) if share else s, now)
        seen |= {lim.reason.split(":")[0] for lim in prev.limits.values()}
    assert {"capped", "ramp", "idle", "hold"} <= seen, seen  # the sequence went through the allocator's cases


@pytest.mark.parametrize(("n", "factor"), [(MIN_KEPT, 0.45), (MIN_KEPT + 20, 0.25)])
def test_same_as_reference_with_snapshots_kept(n: int, factor: float) -> None:
    """The daemon hands over the same ChargerSnapshot object until it changes: none, some or most of them new
    (from MIN_KEPT chargers on, the last tick's rows and limits are kept for those that did not change)."""
    site = tree_site(n, factor)
    rng = random.Random(n)
    twins = Twins(site)
    now = 1000.0
    s = busy_snapshot(site, now, rng)
    prev, last = twins.step(s, now), None
    news: set[str] = set()
    for k in range(60):
        now += 1.0
        if k % 6 == 5:  # nothing new: the same charger snapshots, fresh meter readings
            s, new = replace(s, taken_at=now, meters=consistent_meters(site, s.chargers, now, 50.0)), 0
        else:
            s, new = next_snapshot(site, now, rng, s, prev, last)
        news.add("none" if new == 0 else "some" if 2 * new <= n else "most")
        last, prev = prev, twins.step(s, now)
    assert {"none", "some"} <= news, news
