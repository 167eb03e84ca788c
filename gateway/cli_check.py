"""``ems-gateway check-config FILE``: validate a site config and print its tree and budgets."""

from __future__ import annotations

import argparse
from typing import Any

from gateway.config import PHASES, Site, load_site


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


def render_site(site: Site) -> str:
    lines = [
        f"site {site.id} ({site.name}): {site.service.phases}-phase {site.service.voltage_ll_v:g} V, "
        f"{len(site.circuits)} circuits, {len(site.chargers)} chargers, {len(site.meters)} meters",
        "",
    ]
    budget = site.failsafe_budget()
    phases = PHASES[: site.service.phases]

    def walk(cid: str, prefix: str, last: bool, depth: int) -> None:
        c = site.circuits[cid]
        branch = "" if depth == 0 else ("└─ " if last else "├─ ")
        meter = f", meter {c.meter}" if c.meter else ", unmetered"
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
            on = "/".join(PHASES[p] for p in ch.line_phases)
            lines.append(
                f"{child_prefix}   * {ch.id} {ch.kind.upper()} OCPP {ch.ocpp_version} {on} "
                f"{_fmt_limit(ch.min_limit, ch.unit)}..{_fmt_limit(ch.max_limit, ch.unit)}, "
                f"fail-safe {_fmt_limit(ch.failsafe_limit, ch.unit)} "
                f"({site.to_line_a(ch, ch.failsafe_limit):.1f} A line), priority {ch.priority}"
            )
        kids = site.children[cid]
        for i, k in enumerate(kids):
            walk(k, child_prefix, i == len(kids) - 1, depth + 1)

    walk(site.root, "", True, 0)
    lines.append("")
    lines.append("configuration OK")
    return "\n".join(lines)
