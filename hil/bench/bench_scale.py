"""Benchmark: the gateway process's CPU and RSS on the 1000-charger HIL scenario (hil/scenarios/scale-1000.toml).

Runs the real ``ems-gateway run`` against 1000 simulated OCPP chargers, 21 Modbus TCP meters and a CMS for
one scenario hour at 60x (about a minute of wall time plus start-up) and prints the figures. The rig
itself runs in this process; on a 2-core machine it competes with the gateway for the second core.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from hil.rig import run_scenario
from hil.scenario import load_scenario
from hil.scorecard import scorecard

SCENARIO = Path(__file__).resolve().parents[1] / "scenarios" / "scale-1000.toml"


def main() -> int:
    sc = load_scenario(sys.argv[1] if len(sys.argv) > 1 else SCENARIO)
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as d:
        rec = run_scenario(sc, Path(d))
    card = scorecard(rec)
    gp = card["gateway_process"]
    print(f"{sc.name}: {card['chargers']} chargers, {card['sessions']} sessions, {sc.wall_duration_s:.0f} s wall")
    print(f"  gateway CPU: {gp['cpu_pct']} % of one core ({gp['cpu_s']} s over {gp['wall_s']} s)")
    print(f"  gateway RSS: peak {gp['rss_peak_mb']} MB, mean {gp['rss_mean_mb']} MB")
    print(f"  overload episodes: {card['overload_episodes']} (beyond window {card['overload_episodes_beyond_window']}),"
          f" messages lost: {card['messages_lost']}, energy {card['energy_kwh']} kWh")
    return 0


if __name__ == "__main__":
    sys.exit(main())
