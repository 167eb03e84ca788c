"""Solar surplus caps (gateway/budget/solar.py): unit cases and properties."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.budget.solar import SolarCharger, SolarInputs, SolarState, Surplus, solar_inputs, surplus_caps
from gateway.budget.solar_config import SolarConfig, parse_solar
from gateway.config import site_from_text
from gateway.confkit import Table
from gateway.errors import ConfigError
from gateway.model import ChargerSnapshot, ChargerState, MeterReading

V = 230.0
W3 = 3 * V  # W per line A of a three-phase (wye) charger at 400 V
CFG = SolarConfig(resume_after_s=60.0, resume_margin_w=300.0, smoothing_s=0.0)  # unsmoothed: each tick's estimate
FRESH = SolarState()


def ch(i: str, mode: str = "surplus", *, draw: float | None = None, min_a: float = 6.0, max_a: float = 32.0,
       weight: float = 1.0, active: bool = True, w_per_a: float = W3) -> SolarCharger:
    return SolarCharger(i, mode, weight, w_per_a, min_a, max_a, active, draw)


def run(grid_w: float | None, chargers: list[SolarCharger], state: SolarState = FRESH, now: float = 0.0,
        cfg: SolarConfig = CFG) -> Surplus:
    return surplus_caps(SolarInputs(grid_w, None, tuple(chargers)), cfg, state, now)


def test_export_alone_is_shared_as_the_surplus() -> None:
    s = run(-10 * W3, [ch("a")])  # 10 A per phase exported, nothing drawn yet
    assert s.caps["a"].limit_a == pytest.approx(10.0) and s.caps["a"].reason == "solar:surplus"
    assert s.surplus_w == pytest.approx(10 * W3) and s.export_w == pytest.approx(10 * W3)


def test_the_chargers_own_draw_counts_as_surplus() -> None:
    """A charger drawing 10 A while the site still exports 4 A may go to 14 A, not back to 4 A."""
    prev = SolarState({"a": 10.0})
    s = run(-4 * W3, [ch("a", draw=10.0)], prev)
    assert s.caps["a"].limit_a == pytest.approx(14.0)
    # importing 3 A while it draws 10 A: 7 A
    assert run(3 * W3, [ch("a", draw=10.0)], prev).caps["a"].limit_a == pytest.approx(7.0)


def test_a_charging_charger_counts_its_cap_not_its_lagging_report() -> None:
    """Reports lag: one from before the EV took its new cap (or before it followed a decrease) is not used."""
    s = run(-2 * W3, [ch("a", draw=16.0)], SolarState({"a": 8.0}))
    assert s.caps["a"].limit_a == pytest.approx(10.0)  # 8 A (its cap) + 2 A exported
    resumed = run(-0.5 * W3, [ch("a", draw=0.0)], SolarState({"a": 6.5}))  # resumed, the EV not yet in the report
    assert resumed.caps["a"].limit_a == pytest.approx(7.0) and resumed.caps["a"].reason == "solar:surplus"
    new = run(-2 * W3, [ch("a", draw=5.0)])  # a new session: its report
    assert new.caps["a"].limit_a == pytest.approx(7.0)


def test_pause_after_s_holds_the_minimum_through_a_short_cloud() -> None:
    cfg = SolarConfig(resume_after_s=60.0, pause_after_s=30.0, smoothing_s=0.0)
    st0 = SolarState({"a": 10.0})
    s1 = run(5 * W3, [ch("a", draw=10.0)], st0, now=100.0, cfg=cfg)  # 5 A of surplus left: below the floor
    assert s1.caps["a"] == (6.0, "solar:pausing")
    s2 = run(4 * W3, [ch("a")], s1.state, now=129.0, cfg=cfg)
    assert s2.caps["a"].reason == "solar:pausing"
    assert run(4 * W3, [ch("a")], s2.state, now=130.0, cfg=cfg).caps["a"] == (0.0, "solar:paused")
    back = run(-1 * W3, [ch("a")], s2.state, now=131.0, cfg=cfg)  # 7 A: the cloud passed, the wait forgotten
    assert back.caps["a"].limit_a == pytest.approx(7.0) and not back.state.low_since


def test_below_the_floor_surplus_pauses_and_surplus_min_keeps_the_minimum() -> None:
    s = run(-4 * W3, [ch("a"), ch("b", "surplus+min")])
    assert s.caps["b"].limit_a == pytest.approx(6.0) and s.caps["b"].reason == "solar:surplus+min"
    assert s.caps["a"].limit_a == 0.0 and s.caps["a"].reason == "solar:paused"
    # surplus+min gets its minimum even when the site imports
    assert run(5000.0, [ch("b", "surplus+min")]).caps["b"].limit_a == pytest.approx(6.0)


def test_a_paused_charger_resumes_only_after_the_delay_with_margin() -> None:
    st0 = run(-3 * W3, [ch("a")]).state  # paused
    assert st0.caps_a["a"] == 0.0
    enough = -(6 * W3 + 400)  # the minimum + more than the margin
    s1 = run(enough, [ch("a")], st0, now=10.0)
    assert s1.caps["a"].limit_a == 0.0  # waiting
    s2 = run(enough, [ch("a")], s1.state, now=69.0)
    assert s2.caps["a"].limit_a == 0.0
    s3 = run(enough, [ch("a")], s2.state, now=70.0)
    assert s3.caps["a"].limit_a > 6.0
    # a dip in between restarts the wait
    d = run(-(6 * W3 + 100), [ch("a")], s1.state, now=30.0)  # minimum there, margin not
    assert run(enough, [ch("a")], d.state, now=75.0).caps["a"].limit_a == 0.0


def test_a_cloud_pauses_at_once_but_a_new_session_starts_at_once() -> None:
    s = run(-20 * W3, [ch("a")])
    assert s.caps["a"].limit_a == pytest.approx(20.0)
    cloud = run(-1 * W3, [ch("a", draw=20.0)], s.state, now=1.0)  # 20 A drawn, 1 A exported: 21 A
    assert cloud.caps["a"].limit_a == pytest.approx(21.0)
    dark = run(20 * W3, [ch("a", draw=21.0)], cloud.state, now=2.0)  # importing 20 A: 1 A of surplus left
    assert dark.caps["a"].limit_a == 0.0 and dark.caps["a"].reason == "solar:paused"


def test_running_chargers_keep_their_minimum_first_then_priority() -> None:
    prev = SolarState({"low": 8.0, "high": 0.0})
    s = run(-(0.5 * W3), [ch("low", draw=8.0, weight=1.0), ch("high", draw=0.0, weight=3.0)], prev, now=1.0)
    assert s.caps["low"].limit_a == pytest.approx(8.5) and s.caps["high"].limit_a == 0.0
    # two new sessions, room for one minimum: the heavier class first
    s = run(-(8 * W3), [ch("low", weight=1.0), ch("high", weight=3.0)])
    assert s.caps["high"].limit_a == pytest.approx(8.0) and s.caps["low"].limit_a == 0.0
    # room for both: the rest by weight (3:1)
    s = run(-(20 * W3), [ch("low", weight=1.0), ch("high", weight=3.0)])
    assert s.caps["high"].limit_a == pytest.approx(12.0) and s.caps["low"].limit_a == pytest.approx(8.0)


def test_the_maximum_is_respected_and_the_rest_goes_to_others() -> None:
    s = run(-(40 * W3), [ch("a", max_a=10.0), ch("b")])
    assert s.caps["a"].limit_a == pytest.approx(10.0) and s.caps["b"].limit_a == pytest.approx(30.0)


def test_no_grid_reading_pauses_surplus_and_keeps_minimums() -> None:
    s = run(None, [ch("a", draw=10.0), ch("b", "surplus+min")], SolarState({"a": 10.0}))
    assert s.caps["a"] == (0.0, "solar:no-grid-reading") and s.caps["b"].limit_a == pytest.approx(6.0)
    assert s.surplus_w is None


def test_export_limit_keeps_a_charger_at_its_minimum_rather_than_export_more() -> None:
    cfg = SolarConfig(resume_after_s=60.0, export_limit_w=0.0, smoothing_s=0.0)
    s = run(-(3 * W3), [ch("a")], cfg=cfg)  # 3 A of surplus, below the floor: pausing would export 3 A
    assert s.caps["a"] == (6.0, "solar:export-limit")
    assert run(0.0, [ch("a")], cfg=cfg).caps["a"].limit_a == 0.0  # nothing exported: paused


def test_sessionless_chargers_are_capped_at_zero_and_forgotten() -> None:
    s = run(-(20 * W3), [ch("a", active=False)])
    assert s.caps["a"] == (0.0, "solar:no-session") and "a" not in s.state.caps_a


def test_the_surplus_is_smoothed_over_smoothing_s() -> None:
    cfg = SolarConfig(resume_after_s=0.0, smoothing_s=20.0)
    s0 = run(-(10 * W3), [ch("a")], cfg=cfg, now=0.0)  # the first estimate is taken as it is
    assert s0.caps["a"].limit_a == pytest.approx(10.0)
    # the EV has not followed yet: export unchanged, the raw estimate 20 A; 5 s of 20 s: a quarter of the way
    s1 = run(-(10 * W3), [ch("a")], s0.state, now=5.0, cfg=cfg)
    assert s1.caps["a"].limit_a == pytest.approx(12.5) and s1.surplus_w == pytest.approx(12.5 * W3)
    # a long gap: the estimate as it is
    assert run(0.0, [ch("a")], s1.state, now=100.0, cfg=cfg).caps["a"].limit_a == pytest.approx(12.5)


# ---- properties ----------------------------------------------------------------------------------------------
chargers_st = st.lists(
    st.builds(ch, st.sampled_from("abcdef"), st.sampled_from(("surplus", "surplus+min")),
              draw=st.none() | st.floats(0, 40), min_a=st.floats(1, 16), max_a=st.floats(16, 80),
              weight=st.floats(0.5, 4), active=st.booleans(), w_per_a=st.sampled_from((230.0, 240.0, W3))),
    max_size=6, unique_by=lambda c: c.id)


@settings(max_examples=400, deadline=None)
@given(chargers_st, st.floats(-100_000, 100_000), st.dictionaries(st.sampled_from("abcdef"), st.floats(0, 60)),
       st.floats(0, 1000), st.none() | st.tuples(st.floats(-50_000, 50_000), st.floats(0, 1000)))
def test_caps_never_exceed_surplus_and_respect_minimums(chargers: list[SolarCharger], grid_w: float,
                                                      prev: dict[str, float], now: float,
                                                      smoothed: tuple[float, float] | None) -> None:
    """What is handed out never exceeds the surplus (export + the solar chargers' own draw; smoothed, when a
    previous estimate is given, as the returned surplus_w says), except the surplus+min minimums."""
    cfg = CFG if smoothed is None else SolarConfig(resume_after_s=60.0, smoothing_s=20.0)
    state = SolarState(prev, {}) if smoothed is None else SolarState(prev, {}, {}, smoothed[0], smoothed[1])
    s = run(grid_w, chargers, state, now, cfg)
    assert s.surplus_w is not None
    active = [c for c in chargers if c.active]
    min_w = sum(c.min_a * c.w_per_a for c in active if c.mode == "surplus+min")
    total_w = sum(s.caps[c.id].limit_a * c.w_per_a for c in active)
    # everything handed out: at most the surplus (export + own draws), or the surplus+min minimums if more
    assert total_w <= max(s.surplus_w, min_w) + 1e-6
    surplus_only = [c for c in active if c.mode == "surplus"]
    assert sum(s.caps[c.id].limit_a * c.w_per_a for c in surplus_only) <= max(0.0, s.surplus_w - min_w) + 1e-6
    for c in chargers:
        cap = s.caps[c.id].limit_a
        assert 0.0 <= cap <= c.max_a + 1e-9
        if not c.active:
            assert cap == 0.0
        elif c.mode == "surplus+min":
            assert cap >= c.min_a - 1e-9
        else:
            assert cap == 0.0 or cap >= c.min_a - 1e-9  # never between 0 and the floor


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(-30_000, 10_000), min_size=2, max_size=40))
def test_a_paused_charger_never_resumes_sooner_than_the_delay(grid: list[float]) -> None:
    state = SolarState({"a": 0.0})
    paused_at = 0.0
    for k, g in enumerate(grid):
        now = 10.0 * k
        s = run(g, [ch("a", draw=state.caps_a.get("a"))], state, now)
        was, cap = state.caps_a.get("a", 0.0), s.caps["a"].limit_a
        if was <= 0.0 < cap:
            assert now - paused_at >= CFG.resume_after_s
        if cap <= 0.0 < was:
            paused_at = now
        state = s.state


# ---- config and the site adapter --------------------------------------------------------------------------------
SITE = """
[site]
id = "t"
[service]
voltage_ll_v = 400
limit_a = 100
can_export = true
[[meters]]
id = "main"
circuit = "service"
host = "127.0.0.1"
port = 5020
[[meters]]
id = "pv"
circuit = "service"
map = "sunspec_inverter_int"
role = "pv"
host = "127.0.0.1"
port = 5021
[priorities.guest]
weight = 1
[[chargers]]
id = "c1"
kind = "ac"
circuit = "service"
phases = 3
max_current_a = 32
min_current_a = 6
failsafe_current_a = 6
priority = "guest"
"""


def test_parse_solar_names_bad_keys() -> None:
    cfg = parse_solar(Table({"class_modes": {"guest": "surplus"}, "charger_modes": {"c1": "surplus+min"},
                             "export_limit_w": 0}, "budget.solar"), chargers={"c1"}, classes={"guest"})
    assert cfg.mode_of("c1", "guest") == "surplus+min" and cfg.mode_of("c2", "guest") == "surplus"
    assert cfg.mode_of("c3", "fleet") == "normal" and cfg.enabled and cfg.export_limit_w == 0.0
    with pytest.raises(ConfigError, match=r"budget\.solar\.class_modes\.guest"):
        parse_solar(Table({"class_modes": {"guest": "sun"}}, "budget.solar"))
    with pytest.raises(ConfigError, match=r"budget\.solar\.charger_modes\.c9"):
        parse_solar(Table({"charger_modes": {"c9": "surplus"}}, "budget.solar"), chargers={"c1"})
    with pytest.raises(ConfigError, match=r"budget\.solar\.resume_after_min"):
        parse_solar(Table({"resume_after_min": 2}, "budget.solar"))
    assert not parse_solar(None).enabled


def test_solar_inputs_from_a_site_and_a_snapshot() -> None:
    site = site_from_text(SITE)
    cfg = SolarConfig(class_modes={"guest": "surplus"})
    readings = {"main": MeterReading((5.0,) * 3, at=99.0, total_power_w=-3000.0),
                "pv": MeterReading((10.0,) * 3, at=99.5, total_power_w=6900.0)}
    chargers = {"c1": ChargerSnapshot("c1", True, ChargerState.CHARGING, draw_a=(7.0, 7.0, 7.0), draw_at=90.0)}
    inp = solar_inputs(site, cfg, readings, chargers, now=100.0)
    assert inp.grid_w == -3000.0 and inp.pv_w == 6900.0
    (c,) = inp.chargers
    assert c.active and c.draw_a == 7.0 and c.min_a == 6.0 and c.max_a == 32.0
    assert c.w_per_a == pytest.approx(400 * 3**0.5)
    # a stale grid reading is no reading
    assert solar_inputs(site, cfg, readings, chargers, now=200.0).grid_w is None


def test_the_budget_applies_the_solar_caps() -> None:
    from gateway.budget import Budget
    from gateway.budget.solar import SolarState, with_solar

    text = SITE + "\n[budget.solar.class_modes]\nguest = \"surplus\"\n"
    site = site_from_text(text)
    assert site.budget.solar.enabled and site.budget.active
    readings = {"main": MeterReading((5.0,) * 3, at=99.0, total_power_w=-3000.0)}
    chargers = {"c1": ChargerSnapshot("c1", True, ChargerState.CHARGING, draw_a=(7.0, 7.0, 7.0), draw_at=90.0)}
    b, st = with_solar(Budget(), site, readings, chargers, SolarState(), 100.0)
    w = 400 * 3**0.5
    assert b.charger_caps["c1"].limit_a == pytest.approx(7.0 + 3000.0 / w) and st.caps_a["c1"] > 0
    assert b.solar is not None and b.solar.export_w == 3000.0 and b.solar.surplus_w == pytest.approx(3000 + 7 * w)


def test_solar_names_are_checked_against_the_site() -> None:
    with pytest.raises(ConfigError, match=r"budget\.solar\.charger_modes\.nope"):
        site_from_text(SITE + '\n[budget.solar.charger_modes]\nnope = "surplus"\n')
    with pytest.raises(ConfigError, match=r"service\.can_export"):
        site_from_text(SITE.replace("can_export = true\n", "") + '\n[budget.solar.class_modes]\nguest = "surplus"\n')
