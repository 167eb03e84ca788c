"""Step 2, meter wiring: sign, CT ratio plausibility and phase identification (the analyses, pure).

The phase test (see :func:`gateway.commission.runner.phase_test`) holds one single-phase charger low,
then lets it rise again, and records the meter's per-phase currents before, during and after; here
the phase that moved is compared with the phase the charger is configured on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gateway.commission.loadtest import line_draw_a

MIN_STEP_A = 3.0  # a charger step smaller than this identifies nothing
CT_RATIO_TOLERANCE = 0.2  # meter step / charger step outside 1 +- this: the CT ratio is suspect


@dataclass
class Finding:
    meter: str
    check: str  # "sign" | "ct_ratio" | "phase"
    ok: bool
    detail: str
    fix: str = ""
    charger: str = ""


def metered_circuit(site: dict[str, Any], circuit: str) -> tuple[str, str] | None:
    """(circuit, meter) of the nearest metered circuit at or above ``circuit``."""
    by_id = {c["id"]: c for c in site["circuits"]}
    c: dict[str, Any] | None = by_id.get(circuit)
    while c is not None:
        if c.get("meter"):
            return c["id"], c["meter"]
        c = by_id.get(c["parent"]) if c.get("parent") else None
    return None


def charger_line_a(ch: dict[str, Any], st: dict[str, Any]) -> float:
    """The largest per-phase line current a charger draws (A)."""
    return max(line_draw_a(ch, st, 3), default=0.0)


def sign_checks(site: dict[str, Any], status: dict[str, Any]) -> list[Finding]:
    """Import vs export: a meter reading export while the chargers beneath it draw has its CT turned round."""
    out = []
    chargers = {c["id"]: c for c in site["chargers"]}
    for c in site["circuits"]:
        mid = c.get("meter")
        if not mid:
            continue
        r = status["meters"].get(mid)
        ev_a = sum(charger_line_a(chargers[k], status["chargers"].get(k, {})) for k in c["chargers"])
        if r is None:
            out.append(Finding(mid, "sign", False, "no reading", "check the meter's bus and address"))
            continue
        fix = (f"set invert = true for meter {mid} (or turn its CTs round: the arrow points to the load)")
        if not r["valid"] and "export_on_non_exporting_circuit" in r.get("reason", ""):
            out.append(Finding(mid, "sign", False, f"reads export on a circuit that cannot export ({r['reason']}) "
                               f"while the chargers beneath draw {ev_a:.1f} A", fix))
            continue
        power = r.get("power_w") or []
        currents = r["current_a"]
        neg = [i for i, p in enumerate(power) if p < 0 and i < len(currents) and currents[i] > 1.0]
        if ev_a > MIN_STEP_A and neg:
            names = ", ".join(site["phases"][i] for i in neg)
            hint = "" if not c["can_export"] else " (unless the site exports that much)"
            out.append(Finding(mid, "sign", False, f"reads export on {names} while the chargers beneath draw "
                               f"{ev_a:.1f} A{hint}", fix))
        elif ev_a > MIN_STEP_A:
            out.append(Finding(mid, "sign", True, f"import while the chargers beneath draw {ev_a:.1f} A"))
        else:
            out.append(Finding(mid, "sign", True, "no charger draws beneath: sign not confirmed", ""))
    return out


@dataclass
class PhaseStep:
    """One charger held low: the meter's per-phase current before, low and after, and the charger's draw."""

    charger: str
    meter: str
    expected: int  # the site phase the charger is configured on
    high_a: list[float]  # meter, per site phase (mean of before and after)
    low_a: list[float]
    charger_step_a: float  # the charger's own reported draw change
    note: str = ""
    moved: list[float] = field(default_factory=list)


def analyse_phase_steps(site: dict[str, Any], steps: list[PhaseStep]) -> list[Finding]:
    names = site["phases"]
    meters = {m["id"]: m for m in site["meters"]}
    out: list[Finding] = []
    by_meter: dict[str, list[tuple[PhaseStep, int]]] = {}
    for s in steps:
        delta = [h - lo for h, lo in zip(s.high_a, s.low_a, strict=True)]
        s.moved = delta
        if s.note:
            out.append(Finding(s.meter, "phase", False, f"{s.charger}: {s.note}", charger=s.charger))
            continue
        if s.charger_step_a < MIN_STEP_A:
            out.append(Finding(s.meter, "phase", True, f"{s.charger}: it drew too little ({s.charger_step_a:.1f} A) "
                               "to identify its phase: repeat with an EV charging", charger=s.charger))
            continue
        observed = max(range(len(delta)), key=lambda i: delta[i])
        by_meter.setdefault(s.meter, []).append((s, observed))
        ratio = delta[observed] / s.charger_step_a
        if abs(ratio - 1.0) > CT_RATIO_TOLERANCE:
            m = meters[s.meter]
            new = m["ct_ratio"] / ratio if ratio > 0 else m["ct_ratio"]
            out.append(Finding(s.meter, "ct_ratio", False,
                               f"{s.charger} stepped {s.charger_step_a:.1f} A, the meter saw {delta[observed]:.1f} A "
                               f"(x{ratio:.2f})", f"check the CTs' ratio: ct_ratio = {new:.4g} for meter {s.meter} "
                               f"(configured {m['ct_ratio']:g})", charger=s.charger))
        else:
            out.append(Finding(s.meter, "ct_ratio", True, f"{s.charger} stepped {s.charger_step_a:.1f} A, the meter "
                               f"saw {delta[observed]:.1f} A (x{ratio:.2f})", charger=s.charger))
    for mid, seen in by_meter.items():
        out.extend(_phase_findings(mid, meters[mid], seen, names))
    return out


def _phase_findings(mid: str, meter: dict[str, Any], seen: list[tuple[PhaseStep, int]],
                    names: list[str]) -> list[Finding]:
    out = []
    cfg_map = [names.index(p) for p in meter["phase_map"]]  # meter input i -> site phase
    wrong = [(s, o) for s, o in seen if o != s.expected]
    right_phases = {s.expected for s, o in seen if o == s.expected}
    # the meter is wrong when every charger on the phases concerned disagrees; a lone charger otherwise
    meter_fix = list(meter["phase_map"])
    meter_wrong = bool(wrong) and all(s.expected not in right_phases for s, _ in wrong)
    for s, o in wrong:
        if o in cfg_map:
            meter_fix[cfg_map.index(o)] = names[s.expected]
    for s, o in seen:
        if o == s.expected:
            out.append(Finding(mid, "phase", True, f"{s.charger} is on {names[o]} as configured", charger=s.charger))
            continue
        detail = f"{s.charger} is configured on {names[s.expected]} but the meter's {names[o]} moved"
        if meter_wrong and sorted(meter_fix) == sorted(meter["phase_map"]):
            fix = (f"meter {mid}: its CTs are on other lines than configured: set phase_map = "
                   f"{meter_fix} (or move the CTs)")
        else:
            fix = f'charger {s.charger}: it is connected to {names[o]}: set phase_rotation = "{names[o]}" (or rewire)'
        out.append(Finding(mid, "phase", False, detail, fix, charger=s.charger))
    return out
