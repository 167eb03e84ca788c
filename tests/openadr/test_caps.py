"""The pure side of OpenADR events: a cap per event (lead, ramp-up, randomised start, intervals, end, open-ended
events confirmed by the VTN's contact, max_event_h), the opt policy, the store's persistence; [budget.openadr]
refusals with key paths; check-config's levels in A at the service."""

from __future__ import annotations

import math
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from gateway.budget.openadr import DREvent, Interval, OpenADRStore, decide_opt, event_cap_a, event_end
from gateway.budget.openadr_config import OpenADRConfig
from gateway.budget.openadr_ven import event_of, signal_kind, start_after_s
from gateway.config import ServiceConfig, site_from_dict
from gateway.electrical import service_line_current_a
from gateway.errors import ConfigError
from tests.factories import ac, site_dict

ROOT = Path(__file__).resolve().parents[2]
T0 = 1_800_000_000.0
OADR = {"vtn_url": "http://127.0.0.1:8080/OpenADR2/Simple/2.0b", "ven_name": "depot",
        "level1_kw": 60, "level2_kw": 40, "level3_kw": 20}


def site_d(**openadr: Any) -> dict[str, Any]:
    d = site_dict(limit_a=100, chargers=[ac("A", phases=3)])
    d["budget"] = {"openadr": {**OADR, **openadr}}
    return d


def cfg_svc(**openadr: Any) -> tuple[OpenADRConfig, ServiceConfig]:
    s = site_from_dict(site_d(**openadr))
    assert s.budget.openadr is not None
    return s.budget.openadr, s.service


def amps(svc: ServiceConfig, kw: float) -> float:
    return service_line_current_a(svc, kw * 1000.0)


def ev(start: float = T0, minutes: float = 60, *, level: float = 2, kind: str = "level", **kw: Any) -> DREvent:
    end = math.inf if minutes == 0 else start + minutes * 60
    return DREvent(event_id="e1", source="oadr2", start=start, end=end, received_wall=start - 3600,
                   intervals=(Interval(start, end, kind, level),), **kw)  # type: ignore[arg-type]


class MemWriter:
    def __init__(self) -> None:
        self.files: dict[str, str] = {}

    def put(self, name: str, text: str | None) -> None:
        if text is None:
            self.files.pop(name, None)
        else:
            self.files[name] = text

    def read(self, name: str) -> str | None:
        return self.files.get(name)


def test_levels_map_to_amperes_at_the_service_from_lead_s_before_the_start() -> None:
    cfg, svc = cfg_svc(lead_s=15)
    for level, kw in ((1, 60), (2, 40), (3, 20)):
        assert event_cap_a(ev(level=level), cfg, svc, T0, None) == pytest.approx(amps(svc, kw))
    assert event_cap_a(ev(level=0), cfg, svc, T0, None) is None  # level 0: normal operation
    assert event_cap_a(ev(), cfg, svc, T0 - 15.01, None) is None
    assert event_cap_a(ev(), cfg, svc, T0 - 15, None) == pytest.approx(amps(svc, 40))
    assert event_cap_a(ev(), cfg, svc, T0 + 3600, None) is None  # its end


def test_ramp_up_runs_from_the_service_limit_down_to_the_level() -> None:
    cfg, svc = cfg_svc(lead_s=0)
    e = ev(ramp_up_s=600)
    assert event_cap_a(e, cfg, svc, T0 - 601, None) is None
    assert event_cap_a(e, cfg, svc, T0 - 600, None) == pytest.approx(100.0)
    assert event_cap_a(e, cfg, svc, T0 - 300, None) == pytest.approx((100 + amps(svc, 40)) / 2)
    assert event_cap_a(e, cfg, svc, T0, None) == pytest.approx(amps(svc, 40))


def test_a_deeper_interval_is_reached_lead_s_ahead_a_lighter_one_waits_for_its_start() -> None:
    cfg, svc = cfg_svc(lead_s=15)
    e = DREvent("e1", "oadr2", T0, T0 + 1800, (Interval(T0, T0 + 900, "level", 1),
                                                Interval(T0 + 900, T0 + 1800, "level", 3)), T0 - 60)
    assert event_cap_a(e, cfg, svc, T0 + 100, None) == pytest.approx(amps(svc, 60))
    assert event_cap_a(e, cfg, svc, T0 + 900 - 15, None) == pytest.approx(amps(svc, 20))
    back = DREvent("e2", "oadr2", T0, T0 + 1800, (Interval(T0, T0 + 900, "level", 3),
                                                   Interval(T0 + 900, T0 + 1800, "level", 1)), T0 - 60)
    assert event_cap_a(back, cfg, svc, T0 + 900 - 1, None) == pytest.approx(amps(svc, 20))
    assert event_cap_a(back, cfg, svc, T0 + 900, None) == pytest.approx(amps(svc, 60))


def test_randomised_start_shifts_the_whole_event() -> None:
    cfg, svc = cfg_svc(lead_s=0)
    e = ev(offset_s=120)
    assert event_cap_a(e, cfg, svc, T0 + 119, None) is None
    assert event_cap_a(e, cfg, svc, T0 + 120, None) == pytest.approx(amps(svc, 40))
    assert event_cap_a(e, cfg, svc, T0 + 3600 + 119, None) is not None
    assert event_cap_a(e, cfg, svc, T0 + 3600 + 120, None) is None


def test_open_ended_events_need_the_vtn_and_no_event_outlasts_max_event_h() -> None:
    cfg, svc = cfg_svc(confirm_s=600, max_event_h=2)
    e = ev(minutes=0)
    assert event_end(e, cfg, None) == T0 + 600  # received before its start: counted from the start
    assert event_end(e, cfg, T0 + 3000) == T0 + 3600
    assert event_end(e, cfg, T0 + 99_000) == T0 + 7200  # contact or not, max_event_h
    assert event_end(ev(minutes=600), cfg, T0 + 10) == T0 + 7200
    assert event_cap_a(e, cfg, svc, T0 + 599, None) is not None
    assert event_cap_a(e, cfg, svc, T0 + 600, None) is None


def test_signals_in_kw_fractions_and_deltas() -> None:
    cfg, svc = cfg_svc()
    capacity_kw = 3 * 230.94 * 100 / 1000
    assert event_cap_a(ev(kind="kw", level=30), cfg, svc, T0, None) == pytest.approx(amps(svc, 30))
    assert event_cap_a(ev(kind="kw", level=500), cfg, svc, T0, None) == 100.0  # never above the service
    assert event_cap_a(ev(kind="capacity_fraction", level=0.5), cfg, svc, T0, None) == pytest.approx(
        amps(svc, capacity_kw / 2), rel=1e-3)
    assert event_cap_a(ev(kind="delta_kw", level=10, baseline_kw=50), cfg, svc, T0, None) == pytest.approx(
        amps(svc, 40))
    assert event_cap_a(ev(kind="baseline_fraction", level=0.5, baseline_kw=50), cfg, svc, T0, None) == (
        pytest.approx(amps(svc, 25)))
    assert event_cap_a(ev(kind="delta_kw", level=1e6, baseline_kw=50), cfg, svc, T0, None) == 0.0


def test_opted_out_or_cancelled_events_give_no_cap() -> None:
    cfg, svc = cfg_svc()
    assert event_cap_a(ev(opt="optOut"), cfg, svc, T0, None) is None
    assert event_cap_a(ev(cancelled=True), cfg, svc, T0, None) is None


def test_opt_policy() -> None:
    cfg, _ = cfg_svc(opt_policy="opt-out-if-sessions-at-risk")
    assert decide_opt(cfg, ev(), True) == ("optOut", "sessions would miss their departure")
    assert decide_opt(cfg, ev(), False)[0] == "optIn"
    assert decide_opt(cfg, ev(), None) == ("optIn", "no fleet hook: sessions unknown")
    always, _ = cfg_svc()
    assert decide_opt(always, ev(), True)[0] == "optIn"
    empty = DREvent("e1", "oadr2", T0, T0 + 60, (), T0)
    assert decide_opt(always, empty, None)[0] == "optOut"  # nothing this gateway can follow


def test_store_persists_events_and_the_relative_baseline() -> None:
    cfg, svc = cfg_svc(lead_s=0)
    w = MemWriter()
    store = OpenADRStore(w, cfg)
    assert store.offer(ev(kind="delta_kw", level=10)) == "optIn"
    assert store.caps(svc, T0 - 10, 50_000.0) == ()
    caps = store.caps(svc, T0, 50_000.0)  # the baseline is the import when the event began
    assert [c.name for c in caps] == ["openadr:e1"] and list(caps[0].limit_a) == pytest.approx([amps(svc, 40)] * 3)
    again = OpenADRStore(w, cfg)  # a restart
    assert again.events["e1"].baseline_kw == 50.0
    assert again.caps(svc, T0 + 60, 80_000.0)[0].limit_a[0] == pytest.approx(amps(svc, 40))
    assert again.caps(svc, T0 + 3600, 80_000.0) == () and again.events == {}
    assert OpenADRStore(w, cfg).events == {}  # the end was persisted


def test_a_corrupt_state_file_starts_empty() -> None:
    cfg, _ = cfg_svc()
    w = MemWriter()
    w.put("openadr.json", '{"ven": {}, "events": [{"event_id": 1}]}')
    assert OpenADRStore(w, cfg).events == {}


def test_openleadr_event_dicts() -> None:
    from datetime import UTC, datetime, timedelta

    start = datetime.fromtimestamp(T0, UTC)
    raw = {
        "event_descriptor": {"event_id": "x", "modification_number": 2, "event_status": "far",
                             "market_context": "oadr://dr"},
        "active_period": {"dtstart": start, "duration": timedelta(hours=1), "ramp_up": timedelta(minutes=5),
                          "tolerance": {"tolerate": {"startafter": timedelta(minutes=2)}}},
        "event_signals": [
            {"signal_name": "LOAD_DISPATCH", "signal_type": "setpoint", "measurement": {"unit": "W", "scale": "none"},
             "intervals": [{"dtstart": start, "duration": timedelta(minutes=30), "signal_payload": 25_000.0}]},
            {"signal_name": "ELECTRICITY_PRICE", "signal_type": "price",
             "intervals": [{"dtstart": start, "duration": timedelta(hours=1), "signal_payload": 0.5}]},
        ],
    }
    e, status = event_of(raw, T0 - 60, 30.0)
    assert status == "far" and e.modification == 2 and e.ramp_up_s == 300 and e.offset_s == 30
    assert e.intervals == (Interval(T0, T0 + 1800, "kw", 25.0),) and e.signal == "LOAD_DISPATCH/setpoint"
    assert start_after_s(raw) == 120
    assert signal_kind("LOAD_CONTROL", "x-loadControlPercentOffset") is not None
    pct = signal_kind("LOAD_CONTROL", "x-loadControlPercentOffset")
    assert pct is not None and pct[0] == "baseline_fraction" and pct[1](25) == 0.75
    assert signal_kind("ELECTRICITY_PRICE", "price") is None


@pytest.mark.parametrize(("change", "path"), [
    ({"vtn_url": "http://vtn.example.com/OpenADR2"}, "budget.openadr.vtn_url"),
    ({"vtn_url": "ftp://127.0.0.1/"}, "budget.openadr.vtn_url"),
    ({"vtn_url": "https://vtn.example.com/OpenADR2"}, "budget.openadr.cert_file"),
    ({"level2_kw": 70}, "budget.openadr.level2_kw"),
    ({"level1_kw": 500}, "budget.openadr.level1_kw"),
    ({"level1_w": 500}, "budget.openadr.level1_w"),
    ({"cert_file": "/nonexistent/ven.crt", "key_file": "/nonexistent/ven.key"}, "budget.openadr.cert_file"),
    ({"vtn_fingerprint": "AB:CD"}, "budget.openadr.vtn_fingerprint"),
    ({"opt_policy": "maybe"}, "budget.openadr.opt_policy"),
    ({"poll_interval_s": 60, "confirm_s": 100}, "budget.openadr.confirm_s"),
    ({"client_id": "x"}, "budget.openadr.client_id"),
    ({"protocol": "3.0", "client_id": "x"}, "budget.openadr.client_secret_file"),
    ({"ven_name": ""}, "budget.openadr.ven_name"),
    ({"surprise": 1}, "budget.openadr.surprise"),
])
def test_refusals_name_the_key(change: dict[str, Any], path: str) -> None:
    with pytest.raises(ConfigError) as ei:
        site_from_dict(site_d(**change))
    assert ei.value.path == path, str(ei.value)


def test_https_with_certificates_is_accepted(tmp_path: Path) -> None:
    for n in ("ven.crt", "ven.key", "ca.crt"):
        (tmp_path / n).write_text("x")
    cfg, _ = cfg_svc(vtn_url="https://vtn.example.com/OpenADR2/Simple/2.0b", cert_file=str(tmp_path / "ven.crt"),
                     key_file=str(tmp_path / "ven.key"), ca_file=str(tmp_path / "ca.crt"),
                     vtn_fingerprint="ab:cd:ef:01:23:45:67:89:aa:bb")
    assert cfg.vtn_fingerprint == "AB:CD:EF:01:23:45:67:89:AA:BB" and cfg.protocol == "2.0b"


def test_check_config_shows_each_level_in_amperes(tmp_path: Path) -> None:
    f = tmp_path / "site.toml"
    f.write_text(f"""
[site]
id = "depot"
state_dir = "{tmp_path / 'state'}"
[service]
voltage_ll_v = 400
phases = 3
limit_a = 100
margin_a = 2
worst_case_non_ev_a = 0
[[meters]]
id = "m-main"
circuit = "service"
host = "127.0.0.1"
[[chargers]]
id = "A"
circuit = "service"
phases = 3
max_current_a = 32
failsafe_current_a = 6
[budget.openadr]
vtn_url = "http://127.0.0.1:8080/OpenADR2/Simple/2.0b"
ven_name = "depot"
level1_kw = 60
level2_kw = 41.569
level3_kw = 0
""")
    r = subprocess.run([sys.executable, "-m", "gateway", "check-config", str(f)], capture_output=True, text=True,
                       cwd=ROOT, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "level 2: 41.569 kW = 60.0 A per line at the service (60% of its 100 A)" in r.stdout
    assert "level 3: 0 kW = 0.0 A per line" in r.stdout
    assert "openadr 2.0b VEN 'depot'" in r.stdout


def test_a_flood_of_events_never_drops_one_that_caps_now() -> None:
    cfg, svc = cfg_svc(lead_s=0)
    store = OpenADRStore(MemWriter(), cfg)
    store.offer(ev(start=T0, minutes=60))  # active now
    for k in range(80):
        store.offer(replace(ev(start=T0 + 7200 + 60 * k, minutes=10), event_id=f"later-{k}"))
    assert len(store.events) == 64 and "e1" in store.events
    assert "later-79" not in store.events and "later-0" in store.events
    assert [c.name for c in store.caps(svc, T0 + 10, None)] == ["openadr:e1"]
