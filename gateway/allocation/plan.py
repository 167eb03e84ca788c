"""The static plan: arrays derived from the Site once and cached (the Site is immutable)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from gateway.config import PHASES, ChargerConfig, Site
from gateway.electrical import watts_per_line_a

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.intp]

EPS_A = 1e-6  # numerical slack in amperes, in every step
TOL_A = 1e-4  # the filling's bisection stops when levels differ by less than this; limits are floored with it


@dataclass(frozen=True)
class Plan:
    ids: tuple[str, ...]
    id_objects: npt.NDArray[np.object_]  # the same ids as an array (to pick some by index)
    chargers: tuple[ChargerConfig, ...]
    circuit_ids: tuple[str, ...]
    n_phases: int
    unit_to_line: tuple[float, ...]  # A of line current per unit of limit (1 for AC, A/W for DC)
    mem_c: IntArray  # membership: charger index ...
    mem_k: IntArray  # ... loads constraint index (circuit * P + phase)
    mem_p: IntArray  # ... on this site phase
    mem_cp: IntArray  # the (charger, phase) of each membership as a flat index into (chargers, phases)
    mem_start: IntArray  # each charger's first membership (they are in charger order)
    cap: FloatArray  # per constraint: limit - margin
    margin: FloatArray  # per circuit
    worst_non_ev: FloatArray  # per constraint
    subtree_chargers: Mapping[str, IntArray]  # circuit -> indices of chargers beneath
    subtree_circuits: Mapping[str, tuple[str, ...]]
    measured_phases: Mapping[str, npt.NDArray[np.bool_]]  # metered circuit -> site phases its meter sees
    metered_circuits: tuple[tuple[int, str], ...]  # (index, id) of every circuit with a meter, in order
    constraint_names: tuple[str, ...]  # "<circuit>/<phase>" per constraint
    capped_reasons: npt.NDArray[np.object_]  # "capped:<circuit>/<phase>" per constraint
    paused_reasons: npt.NDArray[np.object_]  # "paused:<circuit>/<phase>" per constraint
    # per charger, as arrays: line A per unit of limit, its limits (charger unit), line A at its maximum and
    # fail-safe limit, its class's weight, whether it is AC, the site lines it loads, whether across two lines,
    # and W per line A for a reported power (nominal voltage; DC with its efficiency and power factor)
    u2l: FloatArray
    min_limit: FloatArray
    max_limit: FloatArray
    failsafe_limit: FloatArray
    max_a: FloatArray
    failsafe_a: FloatArray
    weight: FloatArray
    is_ac: npt.NDArray[np.bool_]
    lines: npt.NDArray[np.bool_]  # (chargers, phases)
    line_to_line: npt.NDArray[np.bool_]
    w_per_a: FloatArray
    metered_paths: tuple[tuple[str, ...], ...]  # every distinct set of metered circuits on a path to the service
    path_index: IntArray  # per charger: its metered path (in metered_paths)
    index: Mapping[str, int]  # charger id -> its index
    circuit_index: Mapping[str, int]  # circuit id -> its index
    members: tuple[tuple[int, ...], ...]  # per charger: the constraints it loads, in membership order
    by_id: IntArray  # the chargers in the order of their ids (the pause order's last key, a tie-break)
    circuit_states: Mapping[str, str]  # circuit -> "ok" (metered) or "unmetered": its state with every meter trusted
    meter_order: tuple[tuple[str, str, float, float], ...]  # (meter, circuit, stale after s, poll s), deepest first

    @property
    def n_constraints(self) -> int:
        return len(self.circuit_ids) * self.n_phases

    def lowest_per_charger(self, per_membership: FloatArray) -> FloatArray:
        """The lowest of a per-membership figure over each charger's memberships (every charger has some)."""
        return np.asarray(np.minimum.reduceat(per_membership, self.mem_start), dtype=np.float64)

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
    starts = np.searchsorted(np.array(mem_c, dtype=np.intp), np.arange(len(chargers))).astype(np.intp)
    ends = [*starts.tolist()[1:], len(mem_k)] if chargers else []  # each charger's memberships: [start, end)
    metered = [tuple(c for c in site.path_to_root[ch.circuit] if site.circuits[c].meter is not None) for ch in chargers]
    paths = {p: k for k, p in enumerate(dict.fromkeys(metered))}
    u2l = np.array([site.to_line_a(ch, 1.0) for ch in chargers], dtype=np.float64)
    by_id = np.array(sorted(range(len(ids)), key=ids.__getitem__), dtype=np.intp).reshape(len(ids))

    def col(values: list[float]) -> FloatArray:
        return np.array(values, dtype=np.float64).reshape(len(chargers))

    return Plan(
        ids=ids,
        id_objects=np.array(ids, dtype=object).reshape(len(ids)),
        chargers=chargers,
        circuit_ids=circuit_ids,
        n_phases=P,
        unit_to_line=tuple(site.to_line_a(ch, 1.0) for ch in chargers),
        mem_c=np.array(mem_c, dtype=np.intp),
        mem_k=np.array(mem_k, dtype=np.intp),
        mem_p=np.array(mem_p, dtype=np.intp),
        mem_cp=np.array(mem_c, dtype=np.intp) * P + np.array(mem_p, dtype=np.intp),
        mem_start=starts,
        cap=cap,
        margin=np.array([site.circuits[cid].margin_a for cid in circuit_ids], dtype=np.float64),
        worst_non_ev=worst,
        subtree_chargers={
            cid: np.array([index[x] for x in site.chargers_under[cid]], dtype=np.intp) for cid in circuit_ids
        },
        subtree_circuits={cid: tuple(k for k in circuit_ids if cid in site.path_to_root[k]) for cid in circuit_ids},
        measured_phases={
            m.circuit: np.array([p in m.phase_map for p in range(P)], dtype=bool) for m in site.meters.values()
        },
        metered_circuits=tuple((j, cid) for j, cid in enumerate(circuit_ids) if site.circuits[cid].meter is not None),
        constraint_names=tuple(f"{cid}/{PHASES[k]}" for cid in circuit_ids for k in range(P)),
        capped_reasons=np.array([f"capped:{cid}/{PHASES[k]}" for cid in circuit_ids for k in range(P)], dtype=object),
        paused_reasons=np.array([f"paused:{cid}/{PHASES[k]}" for cid in circuit_ids for k in range(P)], dtype=object),
        u2l=u2l,
        min_limit=col([ch.min_limit for ch in chargers]),
        max_limit=col([ch.max_limit for ch in chargers]),
        failsafe_limit=col([ch.failsafe_limit for ch in chargers]),
        max_a=col([ch.max_limit for ch in chargers]) * u2l,
        failsafe_a=col([ch.failsafe_limit for ch in chargers]) * u2l,
        weight=col([site.priorities[ch.priority].weight for ch in chargers]),
        is_ac=np.array([ch.kind == "ac" for ch in chargers], dtype=bool).reshape(len(chargers)),
        lines=np.array([[p in ch.line_phases for p in range(P)] for ch in chargers], dtype=bool).reshape(-1, P),
        line_to_line=np.array([len(ch.line_phases) == 2 for ch in chargers], dtype=bool).reshape(len(chargers)),
        w_per_a=col([_w_per_a(site, ch) for ch in chargers]),
        metered_paths=tuple(paths),
        path_index=np.array([paths[p] for p in metered], dtype=np.intp).reshape(len(chargers)),
        index=index,
        circuit_index=cidx,
        members=tuple(tuple(mem_k[a:b]) for a, b in zip(starts.tolist(), ends, strict=True)),
        by_id=by_id,
        circuit_states={cid: ("ok" if site.circuits[cid].meter else "unmetered") for cid in circuit_ids},
        # deepest meters first, so a charger's fail-safe reason names the nearest untrusted meter
        meter_order=tuple((mid, m.circuit, m.stale_after_s, m.poll_interval_s) for mid, m in
                          sorted(site.meters.items(), key=lambda kv: -len(site.path_to_root[kv[1].circuit]))),
    )


def _w_per_a(site: Site, ch: ChargerConfig) -> float:
    """The divisor that turns a reported power into line A, as ``reserve.measured_draw`` did: W per line A at
    the nominal voltage (AC), times efficiency and power factor (DC)."""
    v_per_a = watts_per_line_a(site.service, ch.line_phases)
    return ch.efficiency * ch.power_factor * (v_per_a * 1.0) if ch.kind == "dc" else v_per_a
