"""[[meters]] configuration."""

from __future__ import annotations

import pytest

from gateway.errors import ConfigError
from tests.meters.conftest import make_site, rtu_meter, tcp_meter


def test_defaults_and_phase_map() -> None:
    site = make_site(tcp_meter("m", 1502, phase_map=["L2", "L3", "L1"], ct_ratio=80, invert=True))
    m = site.meters["m"]
    assert m.phase_map == (1, 2, 0)
    assert (m.poll_interval_s, m.stale_after_s, m.ct_ratio, m.invert) == (1.0, 3.0, 80.0, True)
    assert site.circuits["service"].meter == "m"


def test_rtu_settings_and_char_time() -> None:
    site = make_site(rtu_meter("m", "/dev/ttyUSB0", 3, baud_rate=19200, parity="E", stop_bits=1, bus_gap_s=0.1))
    m = site.meters["m"]
    assert m.bus_key == "rtu:/dev/ttyUSB0"
    assert m.char_time_s() == pytest.approx(11 / 19200)


@pytest.mark.parametrize(("entry", "match"), [
    (tcp_meter("m", 502, device="/dev/ttyS0"), "only for transport"),
    (tcp_meter("m", 502, phase_map=["L1", "L1", "L2"]), "twice"),
    (tcp_meter("m", 502, phase_map=["L1", "L4", "L2"]), "unknown phase"),
    (tcp_meter("m", 502, stale_after_s=0.5), "longer than poll_interval_s"),
    (tcp_meter("m", 502, map_name="nope"), "unknown register map"),
    (tcp_meter("m", 502, timeout_ms=5), "unknown key"),
    ('id = "m"\ncircuit = "service"\n', "host"),
])
def test_bad_entries_are_refused_with_the_key(entry: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        make_site(entry)


def test_meters_sharing_a_bus_must_agree() -> None:
    with pytest.raises(ConfigError, match="line settings"):
        make_site(rtu_meter("a", "/dev/ttyS1", 1, baud_rate=9600), rtu_meter("b", "/dev/ttyS1", 2, circuit="sub",
                                                                            baud_rate=19200))
    with pytest.raises(ConfigError, match="already uses device_id"):
        make_site(rtu_meter("a", "/dev/ttyS1", 1), rtu_meter("b", "/dev/ttyS1", 1, circuit="sub"))
