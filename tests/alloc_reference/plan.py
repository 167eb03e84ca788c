"""The static plan: arrays derived from the Site once and cached (the Site is immutable)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from gateway.config import PHASES, ChargerConfig, Site

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.intp]

EPS_A = 1e-6  # numerical slack in amperes, in every step
TOL_A = 1e-4  # the filling's bisection stops when levels differ by less than this; limits are floored with it


@dataclass(frozen=True)
class Plan:
    ids: tuple[str, ...]
    chargers: tuple[ChargerConfig, ...]
    circuit_ids: tuple[str, ...]
    n_phases: int
    unit_to_line: tuple[float, ...]  # A of line current per unit of limit (1 for AC, A/W for DC)
    mem_c: IntArray  # membership: charger index ...
    mem_k: IntArray  # ... loads constraint index (circuit * P + phase)
    mem_p: IntArray  # ... on this site phase
    cap: FloatArray  # per constraint: limit - margin
    worst_non_ev: FloatArray  # per constraint
    subtree_chargers: Mapping[str, IntArray]  # circuit -> indices of chargers beneath
    subtree_circuits: Mapping[str, tuple[str, ...]]
    measured_phases: Mapping[str, npt.NDArray[np.bool_]]  # metered circuit -> site phases its meter sees
    constraint_names: tuple[str, ...]  # "<circuit>/<phase>" per constraint
    metered_path: tuple[tuple[str, ...], ...]  # per charger: the metered circuits on its path to the service

    @property
    def n_constraints(self) -> int:
        return len(self.circuit_ids) * self.n_phases

    def per_constraint(self, per_charger: FloatArray) -> FloatArray:
        """Sum a per-charger line current over every circuit and phase it loads."""
        out = np.bincount(self.mem_k, weights=per_charger[self.mem_c], minlength=self.n_constraints)
        return np.asarray(out, dtype=np.float64)


_PLANS: dict[int, tuple[Site, Plan]] = {}


def plan_of(site: Site) -> Plan:
    hit = _PLANS.get(id(site))
    if hit is not None and hit[0] is site:
        return hit[1]
    p = _build(site)
    if len(_PLANS) > 8:
        _PLANS.clear()
    _PLANS[id(site)] = (site, p)
    return p


def _build(site: Site) -> Plan:
    P = site.service.phases
    ids = tuple(site.chargers)
    chargers = tuple(site.chargers.values())
    circuit_ids = tuple(site.circuits)
    cidx = {c: i for i, c in enumerate(circuit_ids)}
    mem_c: list[int] = []
    mem_k: list[int] = []
    mem_p: list[int] = []
    for i, ch in enumerate(chargers):
        for cid in site.path_to_root[ch.circuit]:
            for ph in ch.line_phases:
                mem_c.append(i)
                mem_k.append(cidx[cid] * P + ph)
                mem_p.append(ph)
    cap = np.empty(len(circuit_ids) * P)
    worst = np.empty(len(circuit_ids) * P)
    for j, cid in enumerate(circuit_ids):
        c = site.circuits[cid]
        cap[j * P : (j + 1) * P] = c.limit_a - c.margin_a
        worst[j * P : (j + 1) * P] = c.worst_case_non_ev_a
    index = {cid: i for i, cid in enumerate(ids)}
    return Plan(
        ids=ids,
        chargers=chargers,
        circuit_ids=circuit_ids,
        n_phases=P,
        unit_to_line=tuple(site.to_line_a(ch, 1.0) for ch in chargers),
        mem_c=np.array(mem_c, dtype=np.intp),
        mem_k=np.array(mem_k, dtype=np.intp),
        mem_p=np.array(mem_p, dtype=np.intp),
        cap=cap,
        worst_non_ev=worst,
        subtree_chargers={
            cid: np.array([index[x] for x in site.chargers_under[cid]], dtype=np.intp) for cid in circuit_ids
        },
        subtree_circuits={cid: tuple(k for k in circuit_ids if cid in site.path_to_root[k]) for cid in circuit_ids},
        measured_phases={
            m.circuit: np.array([p in m.phase_map for p in range(P)], dtype=bool) for m in site.meters.values()
        },
        constraint_names=tuple(f"{cid}/{PHASES[k]}" for cid in circuit_ids for k in range(P)),
        metered_path=tuple(
            tuple(c for c in site.path_to_root[ch.circuit] if site.circuits[c].meter is not None) for ch in chargers
        ),
    )
