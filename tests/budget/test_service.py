"""The budget service: the demand state persisted under state_dir and restored after a restart (same interval:
its energy kept; a new one: fresh, the month's peak kept), events to the listeners, the remote cap's expiry."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from gateway.budget.service import DEMAND_FILE, BudgetService
from gateway.config import Site, site_from_dict
from gateway.model import ChargerSnapshot, MeterReading
from tests.factories import ac, charging, site_dict

TZ = ZoneInfo("Europe/Berlin")
V_PER_A = 3 * 400 / 3**0.5


def make(target_kw: float | None = 20.0) -> Site:
    d = site_dict(limit_a=100, chargers=[ac("A", phases=3)])
    if target_kw is not None:
        d["budget"] = {"timezone": "Europe/Berlin", "demand": {"target_kw": target_kw}}
    return site_from_dict(d)


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


class Listener:
    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, object]]] = []
        self.changed: list[str] = []

    def event(self, name: str, **fields: object) -> None:
        self.events.append((name, fields))

    def budget_changed(self, what: str) -> None:
        self.changed.append(what)


def feed(svc: BudgetService, mono: Clock, wall: Clock, seconds: int, power_w: float, reg: list[float],
         ev_a: float = 0.0) -> None:
    for _ in range(seconds):
        mono.t += 1
        wall.t += 1
        reg[0] += power_w / 3600
        rd = MeterReading(current_a=(power_w / V_PER_A,) * 3, at=mono.t, total_power_w=power_w,
                          energy_import_wh=reg[0])
        chargers: dict[str, ChargerSnapshot] = {"A": charging("A", (ev_a,) * 3)}
        svc.tick({"m-main": rd}, chargers, mono.t)


def test_restart_mid_interval_keeps_the_intervals_energy(tmp_path: Path) -> None:
    site = make()
    start = datetime(2026, 6, 1, 12, 0, tzinfo=TZ).timestamp()
    mono, wall, reg = Clock(1000.0), Clock(start), [50_000.0]
    svc = BudgetService(site, clock=mono, wall_clock=wall, state_dir=tmp_path)
    feed(svc, mono, wall, 200, 18_000.0, reg)
    assert svc.last is not None and svc.last.demand is not None
    before = svc.last.demand.energy_wh
    svc.close()
    saved = json.loads((tmp_path / "budget" / DEMAND_FILE).read_text())
    assert saved["interval_start"] == start and saved["energy_wh"] > 0 and "last_mono" not in saved
    # down for 100 s while the site drew 18 kW; a reboot restarts the monotonic clock
    wall.t += 100
    reg[0] += 18_000 * 100 / 3600
    mono2 = Clock(5.0)
    again = BudgetService(site, clock=mono2, wall_clock=wall, state_dir=tmp_path)
    feed(again, mono2, wall, 1, 18_000.0, reg)
    assert again.last is not None and again.last.demand is not None
    d = again.last.demand
    assert d.interval_start == start
    assert d.energy_wh == pytest.approx(18_000 * 301 / 3600, rel=1e-3)  # 200 s + 100 s down + 1 s
    # the register counted through the restart: only the first run's first second (it started 1 s into the
    # interval) is an estimate
    assert d.energy_wh > before and d.estimated_s == 1.0
    again.close()


def test_restart_in_a_new_interval_starts_fresh_with_the_months_peak(tmp_path: Path) -> None:
    site = make()
    start = datetime(2026, 6, 1, 12, 0, tzinfo=TZ).timestamp()
    mono, wall, reg = Clock(1000.0), Clock(start), [0.0]
    svc = BudgetService(site, clock=mono, wall_clock=wall, state_dir=tmp_path)
    ears = Listener()
    svc.listen(ears)
    feed(svc, mono, wall, 905, 25_000.0, reg)  # over the 20 kW target all interval
    over = [f for n, f in ears.events if n == "demand_interval_over"]
    assert len(over) == 1 and over[0]["interval_start"] == "2026-06-01T10:00:00Z"
    assert any(n == "demand_projected_over" for n, _ in ears.events)
    svc.close()
    wall.t += 1800  # back 30 minutes later
    mono2 = Clock(1.0)
    again = BudgetService(site, clock=mono2, wall_clock=wall, state_dir=tmp_path)
    feed(again, mono2, wall, 1, 5_000.0, reg)
    assert again.last is not None and again.last.demand is not None
    d = again.last.demand
    assert d.interval_start == datetime(2026, 6, 1, 12, 45, tzinfo=TZ).timestamp()
    assert d.month_peak_kw == pytest.approx(25.0, rel=1e-2) and d.estimated_s > 0
    again.close()


def test_an_unreadable_state_file_starts_fresh(tmp_path: Path) -> None:
    (tmp_path / "budget").mkdir()
    (tmp_path / "budget" / DEMAND_FILE).write_text("{not json")
    site = make()
    mono, wall = Clock(1.0), Clock(datetime(2026, 6, 1, 12, 3, tzinfo=TZ).timestamp())
    svc = BudgetService(site, clock=mono, wall_clock=wall, state_dir=tmp_path)
    feed(svc, mono, wall, 1, 1_000.0, [0.0])
    assert svc.last is not None and svc.last.demand is not None and svc.last.demand.estimated_s == 181
    svc.close()


async def test_remote_cap_expires_on_time_without_ticks(tmp_path: Path) -> None:
    site = make(None)
    svc = BudgetService(site, state_dir=tmp_path)
    ears = Listener()
    svc.listen(ears)
    r = svc.command("site_limit", b'{"id": "dr-9", "limit_a": 50, "duration_s": 1.0}', retained=False,
                    require_ts=False)
    assert r["ok"] is True and svc.remote_state()["source"] == "remote:dr-9"
    b = svc.tick({}, {}, time.monotonic())
    assert [c.name for c in b.caps] == ["remote:dr-9"] and b.caps[0].limit_a == (50.0, 50.0, 50.0)
    for _ in range(100):
        if any(n == "site_cap_expired" for n, _ in ears.events):
            break
        await asyncio.sleep(0.05)
    assert [n for n, _ in ears.events] == ["site_cap_set", "site_cap_expired"]
    assert ears.changed == ["remote", "remote"] and svc.remote_state() == {"active": False}
    svc.close()
