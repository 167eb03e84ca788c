"""A demand-response event during a busy hour, simulated through allocate() with EVs that answer a limit after
1 s and follow it 5-11 s later (hil/bench/bench_dr_event.py): the service stays under the event's level from
its start to its end, and the energy lost is what the level takes from the EVs' allowance."""

from __future__ import annotations

import math

from hil.bench.bench_dr_event import EVENT, V_LN, simulate


def test_the_service_stays_under_the_level_from_the_start_and_the_energy_lost_is_the_allowance_taken() -> None:
    base = simulate(False)
    dr = simulate(True)
    print(f"\nservice max in the event {dr.max_in_event_a:.1f} A (level {dr.level_a:.1f} A), under from "
          f"{EVENT[0] - (dr.under_from_s or math.nan):.0f} s before the start; EV energy {base.delivered_kwh:.2f} -> "
          f"{dr.delivered_kwh:.2f} kWh, lost {base.delivered_kwh - dr.delivered_kwh:.2f} kWh")
    assert dr.max_in_event_a <= dr.level_a
    assert dr.under_from_s is not None and dr.under_from_s <= EVENT[0]
    assert "capped:openadr:dr-1" in dr.reasons and not any("openadr" in r for r in base.reasons)
    # the non-EV load averages 37.5 A over the event (one whole period of its swing): without the event the EVs
    # get 160 - 3 - 37.5 A, with it 57.7 - 3 - 37.5 A, for half an hour
    expected_kwh = ((160 - 3 - 37.5) - (dr.level_a - 3 - 37.5)) * 3 * V_LN / 1000 * (EVENT[1] - EVENT[0]) / 3600
    lost = base.delivered_kwh - dr.delivered_kwh
    assert 0.9 * expected_kwh <= lost <= 1.1 * expected_kwh, (lost, expected_kwh)
