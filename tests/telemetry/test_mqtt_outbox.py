"""Config parsing, per-charger rate limiting, heartbeats and the bounded outbox (no broker needed)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from gateway.config import Site, load_site, site_from_text
from gateway.errors import ConfigError
from gateway.model import Allocation, ChargerLimit, ChargerSnapshot, ChargerState, Snapshot
from gateway.telemetry.config import MqttTlsConfig
from gateway.telemetry.mqtt import Telemetry
from tests.telemetry.conftest import SITE_TOML, FakeClock, mqtt_cfg, tick

REPO = Path(__file__).resolve().parents[2]


def values(tel: Telemetry) -> dict[str, dict[str, object]]:
    """Drain the value queue as the link task would: topic -> payload."""
    out = {}
    while tel.outbox.values:
        topic, m = tel.outbox.values.popitem(last=False)
        out[topic] = json.loads(m.payload) if m.payload else {}
    return out


def events(tel: Telemetry) -> list[dict[str, object]]:
    out = []
    while (m := tel.outbox.next_msg()) is not None:
        if m.event_key is not None:
            out.append(json.loads(m.payload))
    return out


# ---------------------------------------------------------------------------- config
def test_config_defaults_and_all_keys(tmp_path: Path) -> None:
    site = site_from_text(SITE_TOML + '\n[mqtt]\nhost = "broker.example"\n')
    c = site.mqtt
    assert c is not None and c.host == "broker.example" and c.port == 1883 and c.protocol == "5"
    assert c.root_for(site.id) == "ems/t-site/" and c.client_id_for(site.id) == "ems-gateway-t-site"
    full = SITE_TOML + """
[mqtt]
host = "broker.example"
protocol = "3.1.1"
username = "gw"
password = "secret"
topic_root = "acme/sites/t"
qos = 0
keepalive_s = 20
charger_min_interval_s = 2
heartbeat_s = 30
queue_max = 500
reconnect_max_s = 60
[mqtt.tls]
ca_file = "{d}/ca.pem"
cert_file = "{d}/client.pem"
key_file = "{d}/client.key"
""".replace("{d}", str(tmp_path))
    for name in ("ca.pem", "client.pem", "client.key"):
        (tmp_path / name).write_text("PEM\n")  # readable; loaded (and judged) when the link starts
    c = site_from_text(full).mqtt
    assert c is not None
    assert c.port == 8883  # TLS default port
    assert c.tls == MqttTlsConfig(f"{tmp_path}/ca.pem", f"{tmp_path}/client.pem", f"{tmp_path}/client.key")
    missing = full.replace(f"{tmp_path}/ca.pem", f"{tmp_path}/absent.pem")
    with pytest.raises(ConfigError) as e:
        site_from_text(missing)
    assert e.value.path == "mqtt.tls.ca_file" and "cannot read" in e.value.reason
    assert c.topic_root == "acme/sites/t/" and c.protocol == "3.1.1" and c.qos == 0
    assert (c.charger_min_interval_s, c.heartbeat_s, c.queue_max, c.reconnect_max_s) == (2, 30, 500, 60)
    assert site_from_text(SITE_TOML).mqtt is None  # no [mqtt]: telemetry off


@pytest.mark.parametrize(
    ("extra", "path", "reason"),
    [
        ('host = "h"\nprotocol = "4"', "mqtt.protocol", "must be one of"),
        ('host = "h"\ntopic_root = "ems/#"', "mqtt.topic_root", "wildcards"),
        ('host = "h"\nheart_beat_s = 5', "mqtt.heart_beat_s", "did you mean 'heartbeat_s'"),
        ('host = "h"\nkeepalive_ms = 5', "mqtt.keepalive_ms", "wrong unit"),
        ('host = "h"\nqos = 2', "mqtt.qos", "must be <= 1"),
        ('host = "h"\npassword = "x"', "mqtt.password", "needs a username"),
        ('host = "h"\nheartbeat_s = 1\ncharger_min_interval_s = 5', "mqtt.heartbeat_s", ">= charger_min"),
        ('host = "h"\n[mqtt.tls]\ncert_file = "c.pem"', "mqtt.tls.key_file", "both cert_file and key_file"),
        ("port = 1883", "mqtt.host", "required"),
    ],
)
def test_config_errors(extra: str, path: str, reason: str) -> None:
    with pytest.raises(ConfigError) as ei:
        site_from_text(SITE_TOML + "\n[mqtt]\n" + extra + "\n")
    assert ei.value.path == path and reason in ei.value.reason


def test_reference_site_config_still_loads() -> None:
    site = load_site(REPO / "etc" / "gateway.toml")
    assert site.id


# ---------------------------------------------------------------------------- chargers
def test_charger_rate_limit_deadband_and_heartbeat(site: Site, tmp_path: Path) -> None:
    clock = FakeClock(0.0)
    tel = Telemetry(mqtt_cfg(charger_min_interval_s=5.0, heartbeat_s=30.0), site, clock=clock, state_dir=tmp_path)
    snap, alloc = tick(0.0)
    tel.publish_tick(snap, alloc)
    v = values(tel)
    assert {"ems/t-site/charger/AC-1", "ems/t-site/charger/DC-1", "ems/t-site/site"} <= set(v)

    def chargers_at(t: float, s: Snapshot, a: Allocation) -> set[str]:
        clock.t = t
        tel.publish_tick(s, a)
        return {k.rsplit("/", 1)[1] for k in values(tel) if "/charger/" in k}

    assert chargers_at(1.0, snap, alloc) == set()  # unchanged
    s2, a2 = tick(2.0, ac_limit=20.0)  # a new limit, but within the minimum interval
    assert chargers_at(2.0, s2, a2) == set()
    assert chargers_at(4.9, s2, a2) == set()
    clock.t = 5.0
    tel.publish_tick(s2, a2)
    v = values(tel)
    assert v["ems/t-site/charger/AC-1"]["limit_a"] == 20.0  # the change, once the interval passed
    assert "ems/t-site/charger/DC-1" not in v  # new objects, same values: no change
    # draw moves within the deadband: no publication; beyond it: one
    assert chargers_at(11.0, *tick(11.0, ac_limit=20.0, ac_draw=15.5, dc_draw_w=19500.0)) == set()
    assert chargers_at(12.0, *tick(12.0, ac_limit=20.0, ac_draw=17.0)) == {"AC-1"}
    # nothing changes for a while: heartbeat after heartbeat_s
    s3, a3 = tick(13.0, ac_limit=20.0, ac_draw=17.0)
    assert chargers_at(13.0, s3, a3) == set()
    assert chargers_at(41.9, s3, a3) == {"DC-1"}  # DC-1 last published at 0.0: heartbeat due since 30.0
    assert chargers_at(42.0, s3, a3) == {"AC-1"}  # AC-1 at 12.0 + 30 s
    tel.close()


def test_thousand_unchanged_chargers_publish_nothing(site: Site, tmp_path: Path) -> None:
    clock = FakeClock(0.0)
    tel = Telemetry(mqtt_cfg(charger_min_interval_s=5.0, heartbeat_s=60.0), site, clock=clock, state_dir=tmp_path)
    chs = {f"C{i}": ChargerSnapshot(f"C{i}", True, ChargerState.CHARGING, draw_a=(10.0, 10.0, 10.0))
           for i in range(1000)}
    lims = {k: ChargerLimit(16.0, 16.0, "fair-share") for k in chs}
    snap = Snapshot(0.0, {}, chs)
    alloc = Allocation(0.0, lims)
    tel.publish_tick(snap, alloc)
    assert sum("/charger/" in k for k in values(tel)) == 1000
    for t in range(1, 60):
        clock.t = float(t)
        tel.publish_tick(snap, alloc)
        assert not any("/charger/" in k for k in values(tel))
    clock.t = 60.0
    tel.publish_tick(snap, alloc)
    assert sum("/charger/" in k for k in values(tel)) == 1000  # the heartbeat
    tel.close()


# ---------------------------------------------------------------------------- outbox
def test_value_queue_keeps_latest_per_topic_and_is_bounded(site: Site, tmp_path: Path) -> None:
    tel = Telemetry(mqtt_cfg(queue_max=10), site, state_dir=tmp_path)
    values(tel)
    for i in range(15):
        tel.outbox.put_value(f"ems/t-site/x/{i}", b"%d" % i)
    tel.outbox.put_value("ems/t-site/x/14", b"latest")
    assert list(tel.outbox.values) == [f"ems/t-site/x/{i}" for i in range(5, 15)]  # the oldest went
    assert tel.outbox.values["ems/t-site/x/14"].payload == b"latest"
    assert tel.stats().dropped_values == 5
    tel.close()


def test_events_are_never_dropped_and_keep_their_order(site: Site, tmp_path: Path) -> None:
    tel = Telemetry(mqtt_cfg(queue_max=10), site, state_dir=tmp_path)
    for i in range(35):  # more than fit in memory: the rest wait on disk
        tel.event("test_seq", n=i)
    assert len(tel.outbox.events) <= 10
    assert [e["n"] for e in events(tel)] == list(range(35))
    tel.close()
    # not acknowledged: a new instance on the same state_dir still owes all of them
    tel2 = Telemetry(mqtt_cfg(queue_max=10), site, state_dir=tmp_path)
    assert tel2.stats().queued_events == 35
    tel2.event("test_seq", n=35)
    assert [e["n"] for e in events(tel2)] == list(range(36))
    tel2.close()


def test_event_never_raises(site: Site, tmp_path: Path) -> None:
    tel = Telemetry(mqtt_cfg(), site, state_dir=tmp_path)
    tel.event("Bad Name!", value=float("nan"), obj=object(), nested={"a": (1, float("inf"))})
    (e,) = events(tel)
    assert e["event"] == "bad_name_" and e["value"] is None and e["nested"] == {"a": [1, None]}
    assert isinstance(e["obj"], str)
    tel.close()


def test_update_site_forgets_removed_chargers(site: Site, tmp_path: Path) -> None:
    tel = Telemetry(mqtt_cfg(), site, state_dir=tmp_path)
    tel.publish_tick(*tick(0.0))
    values(tel)
    events(tel)
    smaller = dataclasses.replace(site, chargers={"AC-1": site.chargers["AC-1"]})
    tel.update_site(smaller)
    v = values(tel)
    assert v == {"ems/t-site/charger/DC-1": {}}  # its retained topic is cleared
    (e,) = events(tel)
    assert e["event"] == "config_reloaded" and e["chargers"] == 1
    tel.close()
