"""Benchmark of the OCPP controller's per-tick snapshot (state, draws, actuation feedback).

N two-connector stations (default 1000), each with a limit accepted; per tick a fraction of them
get a MeterValues report (default 10 %). Prints the snapshot time per tick, unchanged and with reports.

    python hil/bench/bench_snapshot.py [--chargers 1000] [--ticks 200] [--changed 0.1]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from datetime import UTC, datetime

from gateway.config import site_from_text
from gateway.ocpp_proxy.controller import OcppController
from gateway.ocpp_proxy.limits import ACCEPTED


def site_toml(state_dir: str, n: int) -> str:
    head = f"""
[site]
id = "bench"
state_dir = "{state_dir}"
[service]
voltage_ll_v = 400
phases = 3
limit_a = 100000
worst_case_non_ev_a = 0
[[circuits]]
id = "p1"
parent = "service"
limit_a = 100000
[ocpp]
listen_host = "127.0.0.1"
listen_port = 0
"""
    ch = "".join(
        f'[[chargers]]\nid = "B{i:04d}"\nocpp_version = "1.6J"\ncircuit = "p1"\nphases = 3\nconnectors = 2\n'
        f"max_current_a = 32\nfailsafe_current_a = 6\n"
        for i in range(n)
    )
    return head + ch


def meter(conn: int, amps: float) -> dict[str, object]:
    stamp = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    sv = [{"value": str(amps), "measurand": "Current.Import", "phase": f"L{i}", "unit": "A"} for i in (1, 2, 3)]
    return {"connectorId": conn, "meterValue": [{"timestamp": stamp, "sampledValue": sv}]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--chargers", type=int, default=1000)
    ap.add_argument("--ticks", type=int, default=200)
    ap.add_argument("--changed", type=float, default=0.1)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        site = site_from_text(site_toml(tmp, args.chargers))
        ctrl = OcppController(site)
        now = time.monotonic()
        ids = list(site.chargers)
        for cid in ids:
            tr = ctrl.tracker(cid)
            tr.online = True
            for conn in (1, 2):
                tr.on_status_16({"connectorId": conn, "status": "Charging"})
                tr.on_meter_values_16(meter(conn, 16.0))
            ls = ctrl.limit_state(cid)
            ls.connected()
            ls.installing(True)
            ls.failsafe_answered(True)
            ls.queued("m", 16.0, now)
            ls.answered("m", 16.0, now, now + 3600.0, ACCEPTED, now)
        ctrl.snapshot()
        t0 = time.perf_counter()
        for _ in range(args.ticks):
            ctrl.snapshot()
        idle_ms = (time.perf_counter() - t0) / args.ticks * 1000
        per_tick = max(1, int(args.chargers * args.changed))
        k = 0
        busy = 0.0
        for _ in range(args.ticks):
            for _ in range(per_tick):
                ctrl.tracker(ids[k % len(ids)]).on_meter_values_16(meter(1 + k % 2, 15.0 + k % 3))
                k += 1
            t0 = time.perf_counter()
            snap = ctrl.snapshot()
            busy += time.perf_counter() - t0
        ctrl.store.close()
        assert all(s.actuation is not None and s.actuation.controlled for s in snap.values())
        print(f"chargers={args.chargers} connectors=2 ticks={args.ticks}")
        print(f"snapshot unchanged: {idle_ms:.3f} ms/tick")
        busy_ms = busy / args.ticks * 1000
        print(f"snapshot with {per_tick} reports per tick: {busy_ms:.3f} ms/tick (parsing the reports not included)")


if __name__ == "__main__":
    main()
