"""Plots (matplotlib, PNG) and a self-contained HTML report of one HIL run.

``write_report(rec, card, out_dir, baseline=None)`` writes ``scorecard.json``, ``site_current.png``
(current per phase of every limited circuit against its limit, events marked), ``chargers.png``
(per-charger limit and draw) and ``report.html`` (both plots embedded, the scorecard as tables, the
static-derating baseline beside it when given).
"""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from gateway.config import PHASES
from hil.rig.runner import Recording
from hil.scorecard import format_card

_EVENT_COLOURS = {"load_step": "tab:red", "gateway_killed": "black", "gateway_restarted": "black"}


def _mark_events(ax: Any, rec: Recording, k: float) -> None:
    for te, kind, _ in rec.events:
        if kind in ("start", "end"):
            continue
        colour = _EVENT_COLOURS.get(kind, "tab:purple" if kind.endswith(("_begin", "_end")) else "grey")
        ax.axvline(te * k / 60.0, color=colour, lw=0.8, ls=":", alpha=0.8)
        ax.annotate(kind.replace("_", " "), (te * k / 60.0, 1.0), xycoords=("data", "axes fraction"), fontsize=6,
                    rotation=90, va="top", ha="right", color=colour)


def _mark_dr_levels(ax: Any, rec: Recording, k: float) -> None:
    """Each demand-response event the rig's VTN issued: its level at the service over its span (hil.scorecard_dr)."""
    if rec.scenario.dr is None:
        return
    from hil.dr import dr_config

    cfg = dr_config(rec.scenario)
    sent = {e["id"]: e for e in rec.dr.get("events", [])}
    for n, ev in enumerate(rec.scenario.dr.events):
        got, level = sent.get(ev.id), ev.level_a(cfg, rec.site.service)
        if got is None or got.get("issued_wall_s") is None or level is None:
            continue
        end = got["end_wall_s"] if got.get("cancelled_wall_s") is None else min(got["end_wall_s"],
                                                                                 got["cancelled_wall_s"])
        ax.hlines(level, got["start_wall_s"] * k / 60.0, end * k / 60.0, color="tab:purple", lw=1.4,
                  label="DR level" if n == 0 else None)
        ax.annotate(ev.id, (got["start_wall_s"] * k / 60.0, level), fontsize=6, color="tab:purple", va="bottom")


def plot_site(rec: Recording, path: Path, max_circuits: int = 6) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = rec.scenario.time_scale
    t_min = rec.times * k / 60.0
    P = rec.site.service.phases
    # the service first, then the circuits that came closest to their limit
    ratios = []
    for ci, cid in enumerate(rec.circuit_ids):
        lim = rec.site.circuits[cid].limit_a
        peak = float(rec.circuit_a[:, ci, :].max()) if len(rec.times) else 0.0
        ratios.append((cid != rec.site.root, -peak / lim, ci, cid))
    chosen = sorted(ratios)[:max_circuits]
    fig, axes = plt.subplots(len(chosen), 1, figsize=(11, 2.6 * len(chosen)), sharex=True, squeeze=False)
    for ax, (_, _, ci, cid) in zip(axes[:, 0], chosen, strict=True):
        c = rec.site.circuits[cid]
        for p in range(P):
            ax.plot(t_min, rec.circuit_a[:, ci, p], lw=0.8, label=PHASES[p])
        ax.axhline(c.limit_a, color="red", lw=1.0, label="limit")
        if c.margin_a:
            ax.axhline(c.limit_a - c.margin_a, color="orange", lw=0.8, ls="--", label="limit - margin")
        if cid == rec.site.root:
            _mark_dr_levels(ax, rec, k)
        ax.set_ylabel(f"{cid} (A)")
        dr = cid == rec.site.root and rec.scenario.dr is not None  # the service drops under the levels mid-run
        ax.legend(loc="center" if dr else "lower right", fontsize=7, ncol=P + 2 + dr)
        _mark_events(ax, rec, k)
    axes[-1, 0].set_xlabel("scenario time (min)")
    fig.suptitle(f"{rec.scenario.name} ({rec.mode}): current per phase against the limit")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_chargers(rec: Recording, path: Path, max_chargers: int = 12) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = rec.scenario.time_scale
    t_min = rec.times * k / 60.0
    n = len(rec.charger_ids)
    if n > max_chargers:  # the busiest ones
        energy = rec.charger_draw_a.sum(axis=0) if len(rec.times) else np.zeros(n)
        picks = sorted(np.argsort(-energy)[:max_chargers].tolist())
    else:
        picks = list(range(n))
    cols = 2 if len(picks) > 4 else 1
    rows = -(-len(picks) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(11, 1.9 * rows + 0.8), sharex=True, squeeze=False)
    for ax in axes.flat:
        ax.set_visible(False)
    for ax, j in zip(axes.flat, picks, strict=False):
        ax.set_visible(True)
        chid = rec.charger_ids[j]
        ax.plot(t_min, rec.charger_limit_a[:, j], lw=0.9, color="tab:orange", label="limit")
        ax.plot(t_min, rec.charger_draw_a[:, j], lw=0.9, color="tab:blue", label="draw")
        ax.set_ylabel(f"{chid} (A)", fontsize=8)
        ax.tick_params(labelsize=7)
        _mark_events(ax, rec, k)
    axes.flat[0].legend(fontsize=7, loc="upper right")
    for ax in axes[-1]:
        ax.set_xlabel("scenario time (min)")
    fig.suptitle(f"{rec.scenario.name} ({rec.mode}): per-charger limit and draw (line A per phase)"
                 + (f", {len(picks)} busiest of {n}" if n > len(picks) else ""))
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _img(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html.escape(path.name)}" src="data:image/png;base64,{data}" style="max-width:100%">'


def _kv_table(rows: list[tuple[Any, ...]], heads: tuple[str, ...]) -> str:
    out = ["<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in heads) + "</tr>"]
    for r in rows:
        out.append("<tr>" + "".join(f"<td>{html.escape('' if v is None else str(v))}</td>" for v in r) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def write_html(card: Mapping[str, Any], images: list[Path], path: Path,
               baseline: Mapping[str, Any] | None = None, baseline_images: list[Path] | None = None) -> None:
    def row(key: str, label: str) -> tuple[Any, ...]:
        return (label, card.get(key), None if baseline is None else baseline.get(key))

    summary = _kv_table([
        row("energy_kwh", "energy delivered (kWh)"),
        ("energy % of the ideal bound", card.get("energy_pct_of_ideal"),
         None if baseline is None else baseline.get("energy_pct_of_ideal")),
        row("sessions_satisfied_share", "share of sessions that got their energy"),
        row("fairness_jain", "fairness (Jain's index per priority class)"),
        row("overload_episodes", "overload episodes"),
        row("overload_episodes_beyond_window", "overload episodes beyond the window"),
        row("overload_longest_wall_s", "longest overload (wall s)"),
        row("overload_peak_over_a", "peak overload (A above the limit)"),
        row("overload_a_s", "integrated overload (A*s, scenario time)"),
        row("self_inflicted_a_s", "self-inflicted overload (A*s, scenario time; must be 0)"),
        row("external_a_s", "overload after a base-load step (A*s, scenario time)"),
        row("external_episodes_beyond_window", "external overload episodes beyond the window"),
        row("failsafe_wall_s", "time in fail-safe (wall s)"),
        row("messages_lost", "transaction messages lost"),
    ], ("", "gateway" if card.get("mode") == "gateway" else str(card.get("mode")), "static derating"))
    steps = _kv_table([(s["circuit"], s["at_s"], s["step_a"], s["time_to_compliance_wall_s"],
                        s.get("time_to_lasting_compliance_s")) for s in card.get("load_steps", [])],
                      ("circuit", "at (scenario s)", "step (A)", "time to compliance (wall s)",
                       "to lasting compliance (scenario s)"))
    eps = _kv_table([(e["circuit"], e["phase"], e["start_s"], e["duration_wall_s"], e["peak_over_a"], e.get("kind"),
                      e["after"]) for e in card.get("episodes", [])[:50]],
                    ("circuit", "phase", "start (scenario s)", "duration (wall s)", "peak over (A)", "kind", "after"))
    gp = card.get("gateway_process") or {}
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>HIL report: {html.escape(str(card.get('scenario')))}</title>",
        "<style>body{font-family:sans-serif;max-width:1100px;margin:auto}table{border-collapse:collapse;"
        "margin:8px 0}td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px;text-align:left}"
        "pre{background:#f6f6f6;padding:8px;font-size:12px}</style></head><body>",
        f"<h1>HIL report: {html.escape(str(card.get('scenario')))}</h1>",
        f"<pre>{html.escape(format_card(card))}</pre>",
        "<h2>Summary</h2>", summary,
        f"<p>Allowed overload window: {card.get('allowed_window_wall_s')} s wall "
        f"({card.get('allowed_window_s')} s scenario). Gateway process: CPU {gp.get('cpu_pct')} % of one core, "
        f"RSS peak {gp.get('rss_peak_mb')} MB.</p>",
        "<h2>Load steps</h2>", steps, "<h2>Overload episodes</h2>", eps,
        "<h2>Plots</h2>", *[_img(p) for p in images],
    ]
    if baseline_images:
        parts += ["<h2>Static derating baseline</h2>", *[_img(p) for p in baseline_images]]
    parts += ["<h2>Scorecard (JSON)</h2>",
              f"<pre>{html.escape(json.dumps(card, indent=1, default=str)[:200_000])}</pre></body></html>"]
    path.write_text("\n".join(parts), encoding="utf-8")


def write_report(rec: Recording, card: Mapping[str, Any], out_dir: Path,
                 baseline: Mapping[str, Any] | None = None, baseline_dir: Path | None = None) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "scorecard.json", "site": out_dir / "site_current.png",
             "chargers": out_dir / "chargers.png", "html": out_dir / "report.html"}
    paths["json"].write_text(json.dumps(card, indent=1, default=str), encoding="utf-8")
    np.savez_compressed(out_dir / "recording.npz", times=rec.times, circuit_a=rec.circuit_a,
                        charger_limit_a=rec.charger_limit_a, charger_draw_a=rec.charger_draw_a,
                        circuit_ids=np.array(rec.circuit_ids), charger_ids=np.array(rec.charger_ids))
    plot_site(rec, paths["site"])
    plot_chargers(rec, paths["chargers"])
    b_imgs = None
    if baseline_dir is not None:
        b_imgs = [p for p in (baseline_dir / "site_current.png",) if p.exists()]
    write_html(card, [paths["site"], paths["chargers"]], paths["html"], baseline, b_imgs)
    return paths
