"""The issue-15 comparison table, shared by the pure harness (hil/bench/bench_planner.py) and the rig
(hil/planner_rig.py): the LP ideal's row, and the rows printed in columns with the planner's verdict."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any


def ideal_row(lp: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """The LP ideal's row from ideal_deadlines()'s result (``extra``: the caller's own columns)."""
    n = lp["sessions"]
    return {"run": "LP ideal (deadlines)", "complete": lp["complete"], "sessions": n,
            "complete_pct": round(100.0 * lp["complete"] / n, 1) if n else 0.0,
            "energy_kwh": lp.get("energy_kwh"), "cost": float(lp.get("cost", 0.0)), "peak_kw": None,
            "plan_median_ms": None, "plan_max_ms": None} | extra


def table(title: str, rows: list[dict[str, Any]], cols: Sequence[str], plan_note: Callable[[dict[str, Any]], str],
          planner: Callable[[str], bool], verdict: str) -> str:
    """The rows in columns, a note per row that planned (``plan_note``), and the verdict: the planner's row
    (the first ``planner(run)`` holds for) against the LP ideal (the 98 % target) and acnportal's best."""
    out = [title, "  ".join(f"{c:>14}" if i else f"{c:<30}" for i, c in enumerate(cols))]
    for r in rows:
        out.append("  ".join((f"{_fmt(r.get(c)):>14}" if i else f"{r[c]:<30}") for i, c in enumerate(cols)))
    out += [plan_note(r) for r in rows if r.get("plans")]
    ideal = next((r for r in rows if r["run"].startswith("LP ideal")), None)
    mine = next((r for r in rows if planner(r["run"])), None)
    if ideal and mine and ideal["complete"]:
        acn_best = max((r["complete"] for r in rows if r["run"].startswith("acnportal")), default=None)
        out.append(f"{verdict}: {100.0 * mine['complete'] / ideal['complete']:.1f} % of the sessions the LP ideal "
                   f"completes (target >= 98 %); ahead of every acnportal algorithm: "
                   f"{acn_best is None or mine['complete'] > acn_best}")
    return "\n".join(out)


def _fmt(v: Any) -> str:
    return "-" if v is None else str(v)
