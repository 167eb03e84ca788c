"""``ems-gateway check-config FILE``: validate a site config and print its tree and budgets."""

from __future__ import annotations

import argparse
from typing import Any

from gateway import electrical
from gateway.budget.config import describe as describe_budget
from gateway.config import PHASES, ChargerConfig, Site, load_site


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "check-config",
        help="validate a site config; print the circuit tree, chargers and fail-safe budget",
        description="Validate a site configuration. Prints the circuit tree with its limits, the "
        "chargers under each node and the fail-safe budget per circuit and phase. Exit 0 when valid, "
        "2 when not (with the key path and the reason).",
    )
    p.add_argument("file", help="the site configuration (TOML)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    site = load_site(args.file)
    print(render_site(site))
    return 0


def _fmt_limit(v: float, unit: str) -> str:
    if unit == "W":
        return f"{v / 1000:g} kW"
    return f"{v:g} A"


def _fmt_service(site: Site) -> str:
    svc = site.service
    lines = "/".join(electrical.line_names(svc.wiring))
    v_ln = electrical.line_to_neutral_v(svc)
    if svc.wiring == "single-phase":
        return f"single-phase {svc.voltage_ll_v:g} V ({lines})"
    if svc.wiring == "split-phase":
        return f"split-phase {v_ln:.0f}/{svc.voltage_ll_v:g} V (legs {lines})"
    return f"three-phase {svc.voltage_ll_v:g} V line-to-line, {v_ln:.0f} V line-to-neutral ({lines})"


def _fmt_wiring(site: Site, ch: ChargerConfig) -> str:
    """How a charger is connected: e.g. "L1-L2 line-to-line 240 V" or "L1/L2/L3 three-phase 400 V"."""
    svc = site.service
    w = electrical.load_wiring(svc, ch.line_phases)
    if w == "line-to-line":
        return f"{'-'.join(PHASES[p] for p in ch.line_phases)} line-to-line {svc.voltage_ll_v:g} V"
    on = "/".join(PHASES[p] for p in ch.line_phases)
    if w == "three-phase":
        return f"{on} three-phase {svc.voltage_ll_v:g} V"
    return f"{on} line-to-neutral {electrical.line_to_neutral_v(svc):.0f} V"


def render_site(site: Site) -> str:
    lines = [
        f"site {site.id} ({site.name}): {_fmt_service(site)}, "
        f"{len(site.circuits)} circuits, {len(site.chargers)} chargers, {len(site.meters)} meters",
        "",
    ]
    budget = site.failsafe_budget()
    phases = PHASES[: site.service.phases]

    def walk(cid: str, prefix: str, last: bool, depth: int) -> None:
        c = site.circuits[cid]
        branch = "" if depth == 0 else ("└─ " if last else "├─ ")
        meter = ", unmetered"
        if c.meter:
            meter = f", meter {c.meter} on {'/'.join(PHASES[p] for p in site.meters[c.meter].phase_map)}"
        lines.append(
            f"{prefix}{branch}{cid} [{c.kind}] limit {c.limit_a:g} A/phase, margin {c.margin_a:g} A, "
            f"worst-case non-EV {c.worst_case_non_ev_a:g} A{meter}"
        )
        child_prefix = prefix + ("" if depth == 0 else ("   " if last else "│  "))
        b = budget[cid]
        per = ", ".join(f"{ph} {amps:.1f}" for ph, amps in zip(phases, b, strict=True))
        worst = max(b)
        lines.append(f"{child_prefix}   fail-safe budget: {per} A of {c.limit_a:g} A ({worst / c.limit_a:.0%} worst)")
        direct = [ch for ch in site.chargers.values() if ch.circuit == cid]
        for ch in direct:
            lines.append(
                f"{child_prefix}   * {ch.id} {ch.kind.upper()} OCPP {ch.ocpp_version} {_fmt_wiring(site, ch)} "
                f"{_fmt_limit(ch.min_limit, ch.unit)}..{_fmt_limit(ch.max_limit, ch.unit)}, "
                f"fail-safe {_fmt_limit(ch.failsafe_limit, ch.unit)} "
                f"({site.to_line_a(ch, ch.failsafe_limit):.1f} A line), priority {ch.priority}"
            )
        kids = site.children[cid]
        for i, k in enumerate(kids):
            walk(k, child_prefix, i == len(kids) - 1, depth + 1)

    walk(site.root, "", True, 0)
    lines.extend(["", *describe_budget(site.budget, site.service)] if site.budget.active else [])
    lines.append("")
    lines.append("configuration OK")
    return "\n".join(lines)
