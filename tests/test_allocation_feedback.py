"""The allocator with actuation feedback (issue 11, finding 3): a limit counts from the charger's acceptance,
what is pending or rejected is not assumed, and an uncontrolled charger keeps what it may draw reserved."""

from __future__ import annotations

from dataclasses import replace

from gateway.allocation import AllocatorState, allocate
from gateway.config import Site
from gateway.model import Actuation, Allocation, ChargerSnapshot, Snapshot
from tests.factories import ac, charging, make_site, snap

CTL = {"ramp_up_a_per_s": 1000.0, "hysteresis_a": 0.0, "ev_response_s": 10.0}


def _with(cs: ChargerSnapshot, **act: object) -> ChargerSnapshot:
    base: dict[str, object] = {"controlled": True, "failsafe_installed": True, "accepted_at": 0.0,
                               "lease_until": 1e9}
    return replace(cs, actuation=Actuation(**{**base, **act}))  # type: ignore[arg-type]


def _run(site: Site, ticks: list[Snapshot]) -> tuple[Allocation, AllocatorState]:
    state: AllocatorState | None = None
    out: Allocation | None = None
    for s in ticks:
        out, state = allocate(s, site, state, s.taken_at)
    assert out is not None and state is not None
    return out, state


def _site() -> Site:
    return make_site(limit_a=40, chargers=[ac("A", phases=3), ac("B", phases=3)], control=CTL)


def test_a_decrease_not_yet_accepted_frees_nothing() -> None:
    # 36 A service: A accepted 32 A; B's EV arrives and A is lowered for it, but A has not answered: B's 6 A
    # minimum does not fit in the 4 A that are free, so B waits at 0 until A has accepted and followed
    site = make_site(limit_a=36, chargers=[ac("A", phases=3), ac("B", phases=3)], control=CTL)
    s0 = snap(100, [_with(charging("A", (32,) * 3), accepted_limit=32.0), charging("B")], {"m-main": (32,) * 3})
    s0 = replace(s0, chargers={**s0.chargers, "B": _with(s0.chargers["B"], accepted_limit=0.0)})
    a, state = allocate(s0, site, None, 100)
    assert a.limits["A"].limit < 32.0  # the decrease is decided at once
    s1 = replace(snap(101, [], {"m-main": (32,) * 3}),
                 chargers={"A": _with(s0.chargers["A"], accepted_limit=32.0, pending_limit=a.limits["A"].limit,
                                       pending_since=100.5),
                           "B": _with(s0.chargers["B"], accepted_limit=0.0)})
    b, _ = allocate(s1, site, state, 101)
    assert b.limits["A"].may_draw_a == 32.0
    assert b.limits["B"].limit == 0.0 and b.limits["B"].reason == "hold:in-flight"
    assert b.circuits["service"].allocated_a[0] <= 36.0 + 1e-9


def test_a_rejected_limit_is_not_assumed() -> None:
    # B was sent 20 A and rejected it: it keeps its accepted 6 A, and the allocator reserves what A accepted
    site = _site()
    s = snap(100, [charging("A"), charging("B")], {"m-main": (0,) * 3})
    s = replace(s, chargers={"A": _with(s.chargers["A"], accepted_limit=20.0),
                             "B": _with(s.chargers["B"], accepted_limit=6.0, rejected_at=99.0)})
    a, _ = _run(site, [s])
    assert a.limits["B"].may_draw_a >= 6.0
    assert a.circuits["service"].allocated_a[0] <= 40.0 + 1e-9


def test_an_uncontrolled_charger_reserves_its_failsafe_and_one_that_refused_its_maximum() -> None:
    site = make_site(limit_a=40, chargers=[ac("A", phases=3, failsafe_current_a=10), ac("B", phases=3)],
                     control=CTL)
    s = snap(100, [charging("A"), charging("B")], {"m-main": (0,) * 3})
    uncontrolled = replace(s, chargers={"A": _with(s.chargers["A"], controlled=False, accepted_limit=None,
                                                   lease_until=None),
                                        "B": _with(s.chargers["B"], accepted_limit=6.0)})
    a, _ = _run(site, [uncontrolled])
    assert a.limits["A"].may_draw_a >= 10.0  # it may run on its persistent fail-safe profile
    refused = replace(s, chargers={"A": _with(s.chargers["A"], controlled=False, failsafe_installed=False,
                                              accepted_limit=None, lease_until=None, rejected_at=99.0),
                                   "B": _with(s.chargers["B"], accepted_limit=6.0)})
    b, _ = _run(site, [refused])
    assert b.limits["A"].may_draw_a == 32.0  # nothing bounds it below its maximum
    assert b.limits["B"].limit <= 8.0  # B gets only what A's maximum leaves


def test_an_offline_charger_keeps_its_lease_reserved_until_it_lapses() -> None:
    site = _site()
    s = snap(100, [charging("A", online=False), charging("B")], {"m-main": (0,) * 3})
    s = replace(s, chargers={"A": _with(s.chargers["A"], controlled=False, accepted_limit=30.0, lease_until=150.0),
                             "B": _with(s.chargers["B"], accepted_limit=6.0)})
    a, _ = _run(site, [s])
    assert a.limits["A"].may_draw_a == 30.0 and a.limits["A"].reason == "offline:reserved"
    late = replace(snap(200, [], {"m-main": (0,) * 3}), chargers=s.chargers)
    b, _ = _run(site, [late])
    assert b.limits["A"].may_draw_a == 0.0  # lapsed (and a response later): its fail-safe (0 A) applies
