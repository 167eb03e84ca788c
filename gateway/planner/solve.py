"""The departure-aware planner: one linear program over the horizon to the last departure (HiGHS via scipy).

Variables: each planned session's line current (A per loaded phase) in each slot until its departure, its
shortfall (Wh) and, with a demand target, the plan's excess over it (W). Constraints: every circuit and phase
in every slot (limit - margin - the forecast non-EV load - the reserve of sessions with unknown needs; on the
service also the budget caps now and a tariff period's cap), each session's maximum (charger, EV), its taper
(linear in the energy received, as in hil.ideal; where the EV tells none, an assumed one: ``assumed_taper``),
its energy at most its need.

The objective is lexicographic by weights: shortfall first (per Wh, weighted by the inverse of the session's
need times its priority weight, so a Wh that completes a small session counts more: as many sessions as
possible complete), then the demand target's excess, then the energy cost, then a tiny preference for
charging sooner (what is not needed later is not risked on a later slot); the allocator shares what the plan
leaves by max-min fairness (the "fairness among the rest"). The 6 A floor is not in the LP (it would make it
a MILP): the allocator rounds a share below the minimum to 0 or up to the minimum, and the next plan sees
what was delivered.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from gateway import electrical
from gateway.config import ChargerConfig, Site
from gateway.planner.model import (
    BudgetView,
    ChargerPlan,
    Forecast,
    Plan,
    PlannerConfig,
    PlannerState,
    PlanSession,
    Projection,
    Taper,
)

Arr = npt.NDArray[np.float64]

DEADLINE = "plan:deadline"
CHEAP = "plan:cheap-period"


@dataclass
class _Lp:
    c: list[float]
    ub: list[float]
    rows: list[npt.NDArray[np.intp]]
    cols: list[npt.NDArray[np.intp]]
    vals: list[Arr]
    rhs: list[float]
    n_rows: int = 0
    eq: _Lp | None = None  # the equality rows (same variables)

    def var(self, cost: float, upper: float) -> int:
        self.c.append(cost)
        self.ub.append(upper)
        return len(self.c) - 1

    def block(self, costs: Arr, upper: Arr) -> int:
        first = len(self.c)
        self.c.extend(costs.tolist())
        self.ub.extend(upper.tolist())
        return first

    def bulk(self, local_rows: npt.NDArray[np.intp], cols: npt.NDArray[np.intp], vals: Arr, rhs: Arr) -> None:
        """Many rows at once: ``local_rows`` index into ``rhs`` (0..len(rhs)-1)."""
        self.rows.append(local_rows.astype(np.intp) + self.n_rows)
        self.cols.append(cols.astype(np.intp))
        self.vals.append(vals.astype(np.float64))
        self.rhs.extend(rhs.tolist())
        self.n_rows += len(rhs)

    def row(self, cols: Sequence[int] | npt.NDArray[np.intp], vals: Sequence[float] | Arr, rhs: float) -> int:
        r = self.n_rows
        cols_a = np.asarray(cols, dtype=np.intp)
        self.rows.append(np.full(len(cols_a), r, dtype=np.intp))
        self.cols.append(cols_a)
        self.vals.append(np.asarray(vals, dtype=np.float64))
        self.rhs.append(rhs)
        self.n_rows += 1
        return r


def _phases(ch: ChargerConfig, s: PlanSession) -> tuple[int, ...]:
    """The phases the EV draws on (its energy); the constraints take every line of the charger, as the
    allocator does (a three-phase charger may draw on all three whatever the EV uses)."""
    if ch.kind == "ac" and ch.phases == 3 and s.ac_phases is not None:
        return ch.phase_map[: max(1, min(3, s.ac_phases))]
    return ch.line_phases


def _w_per_a(site: Site, ch: ChargerConfig, phases: tuple[int, ...]) -> float:
    """Power delivered to the EV per line A (nominal voltage; DC: efficiency and power factor)."""
    if ch.kind == "dc":
        return electrical.power_w(site.service, ch.line_phases, 1.0, efficiency=ch.efficiency,
                                  power_factor=ch.power_factor)
    return electrical.watts_per_line_a(site.service, phases)


def _max_a(site: Site, ch: ChargerConfig, s: PlanSession) -> float:
    hi = site.to_line_a(ch, ch.max_limit)
    if s.ev_max_a is not None and s.ev_max_a >= 0:
        hi = min(hi, s.ev_max_a)
    return max(hi, 0.0)


def _forecast_at(forecast: Forecast, t0: float, t1: float, circuit: str, P: int, worst: float) -> Arr:
    """The highest forecast load of a circuit subtree within [t0, t1) per phase (the worst case if none)."""
    pts = forecast.points
    if not pts:
        return np.full(P, worst)
    out = np.zeros(P)
    cur: Mapping[str, tuple[float, ...]] = pts[0][1]
    seen = False
    for t, load in pts:
        if t <= t0:
            cur = load
            continue
        if t >= t1:
            break
        if not seen:
            out = np.maximum(out, _vec(cur, circuit, P, worst))
            seen = True
        out = np.maximum(out, _vec(load, circuit, P, worst))
    if not seen:
        out = _vec(cur, circuit, P, worst)
    return out


def _vec(load: Mapping[str, tuple[float, ...]], circuit: str, P: int, worst: float) -> Arr:
    v = load.get(circuit)
    if v is None or len(v) != P or not all(math.isfinite(x) for x in v):
        return np.full(P, worst)  # unknown: the worst case (a data fault lowers, never raises)
    return np.maximum(np.asarray(v, dtype=np.float64), 0.0)


def _prices(view: BudgetView, edges: Arr) -> tuple[Arr, Arr]:
    """Per slot: the time-weighted price (0 where none) and the lowest tariff cap (kW, inf where none)."""
    T = len(edges) - 1
    price = np.zeros(T)
    cap = np.full(T, np.inf)
    for k in range(T):
        a, b = edges[k], edges[k + 1]
        acc = 0.0
        for sl in view.slots:
            ov = min(b, sl.end) - max(a, sl.start)
            if ov <= 0:
                continue
            if sl.price_per_kwh is not None:
                acc += sl.price_per_kwh * ov
            if sl.cap_kw is not None:
                cap[k] = min(cap[k], sl.cap_kw)
        price[k] = acc / (b - a)
    return price, cap


def plan(
    sessions: Sequence[PlanSession], site: Site, budget_view: BudgetView, forecast: Forecast,
    state: PlannerState | None, now: float, cfg: PlannerConfig | None = None,
) -> tuple[Plan, PlannerState]:
    """Each planned session's share for the next ticks, and its projection at departure (pure)."""
    cfg = cfg or PlannerConfig()
    state = state or PlannerState()
    planned = [s for s in sessions if s.charger_id in site.chargers and s.need_wh is not None
               and s.departure_at is not None and s.need_wh > 0 and s.departure_at > now]
    if not any(not s.expected for s in planned):
        return Plan(at=now, status="no-sessions", slot_s=cfg.slot_s, horizon_end=now), _next_state(state, {})
    try:
        return _solve(sessions, planned, site, budget_view, forecast, state, now, cfg)
    except (ValueError, ArithmeticError, MemoryError, ImportError) as exc:
        # a solver fault (or no scipy): no plan, the allocator falls back
        return Plan(at=now, status=f"failed:{type(exc).__name__}", slot_s=cfg.slot_s), state


def _solve(
    sessions: Sequence[PlanSession], planned: list[PlanSession], site: Site, view: BudgetView,
    forecast: Forecast, state: PlannerState, now: float, cfg: PlannerConfig,
) -> tuple[Plan, PlannerState]:
    from scipy.optimize import linprog
    from scipy.sparse import coo_matrix

    P = site.service.phases
    step = cfg.slot_s
    end = min(max(s.departure_at or now for s in planned), now + cfg.max_horizon_s)
    T = max(1, math.ceil((end - now) / step - 1e-9))
    edges = now + step * np.arange(T + 1, dtype=np.float64)
    price, tcap_kw = _prices(view, edges)
    pmax = float(max(np.max(np.abs(price)), 0.0))
    circuits = list(site.circuits)
    cidx = {c: j for j, c in enumerate(circuits)}
    # room per circuit, slot, phase: limit - margin - forecast non-EV - the reserve of unknown sessions
    room = np.zeros((len(circuits), T, P))
    for c in circuits:
        cc = site.circuits[c]
        for k in range(T):
            room[cidx[c], k] = cc.limit_a - cc.margin_a - _forecast_at(
                forecast, edges[k], edges[k + 1], c, P, cc.worst_case_non_ev_a)
    svc = cidx.get(site.service.id, 0)
    sc = site.circuits[circuits[svc]]
    # a budget cap bounds the service's total (EV + non-EV), like its limit
    base_svc = np.array([_forecast_at(forecast, edges[k], edges[k + 1], circuits[svc], P, sc.worst_case_non_ev_a)
                         for k in range(T)])
    if view.caps_now_a is not None and len(view.caps_now_a) == P:
        cap0 = np.asarray(view.caps_now_a, dtype=np.float64) - sc.margin_a - base_svc[0]
        room[svc, 0] = np.minimum(room[svc, 0], cap0)
    for k in np.flatnonzero(np.isfinite(tcap_kw)).tolist():
        cap_a = electrical.service_line_current_a(site.service, tcap_kw[k] * 1000.0)
        room[svc, k] = np.minimum(room[svc, k], cap_a - sc.margin_a - base_svc[k])
    planned_ids = {s.charger_id for s in planned}
    for s in sessions:
        if s.charger_id in planned_ids or s.charger_id not in site.chargers:
            continue
        ch = site.chargers[s.charger_id]
        r = s.reserve_a if s.reserve_a is not None else site.to_line_a(ch, ch.min_limit)
        for c in site.path_to_root[ch.circuit]:
            for p in ch.line_phases:
                room[cidx[c], :, p] -= max(r, 0.0)
    room[:, 1:, :] *= cfg.future_room_fraction
    room = np.maximum(room, 0.0)

    lp = _Lp(c=[], ub=[], rows=[], cols=[], vals=[], rhs=[])
    needs = np.array([s.need_wh or 0.0 for s in planned])
    ref = float(np.max(needs))
    shortfall_cost = 0.1 * (pmax + 1.0)  # per Wh at the largest need: 100x the dearest energy
    eps = 1e-4 * (pmax + 1.0) / 1000.0  # per Wh per horizon: sooner is slightly preferred
    blocks: list[tuple[int, int, Arr, float]] = []  # per session: first x var, slots, Wh per A per slot, W/A
    short_vars: list[int] = []
    lp.eq = _Lp(c=[], ub=[], rows=[], cols=[], vals=[], rhs=[])
    ckeys: list[npt.NDArray[np.intp]] = []  # per circuit-phase-slot key (j*T + k)*P + p, the x column
    ccols: list[npt.NDArray[np.intp]] = []
    dcols: list[npt.NDArray[np.intp]] = []  # per slot, the x column and its W per A (the demand rows)
    dvals: list[Arr] = []
    for s in planned:
        ch = site.chargers[s.charger_id]
        phases = _phases(ch, s)
        w = _w_per_a(site, ch, phases)
        dep = min(float(s.departure_at or end), end)
        L = max(1, math.ceil((dep - now) / step - 1e-9))
        frac = (np.minimum(edges[1 : L + 1], dep) - edges[:L]) / step
        wh = w * frac * step / 3600.0
        hi = _max_a(site, ch, s)
        t_pref = np.arange(L) / max(T, 1)
        if cfg.laxity_weight > 0:
            t_pref = t_pref + cfg.laxity_weight * np.arange(L) / _laxity_slots(s, now, dep, w, hi, step)
        costs = wh * (price[:L] / 1000.0 + eps * t_pref)
        upper = np.full(L, hi)
        if s.expected:
            upper[0] = 0.0  # not here yet: it needs room later, never now
        x0 = lp.block(costs, upper)
        cols = np.arange(x0, x0 + L)
        prev = state.targets.get(s.charger_id)
        if prev is not None and cfg.stickiness > 0 and not s.expected:
            _stick(lp, x0, min(prev, hi), cfg.stickiness * eps * float(wh[0]))
        need = float(s.need_wh or 0.0) * (1.0 + cfg.need_margin)
        u = lp.var(shortfall_cost * max(s.weight, 1e-3) * ref / max(need, 1.0), need)
        short_vars.append(u)
        # delivered + shortfall >= need ; delivered <= need
        lp.row(np.append(cols, u), np.append(-wh, -1.0), -need)
        lp.row(cols, wh, need)
        tp = s.taper if s.taper is not None else assumed_taper(s, cfg)
        if tp is not None:
            _taper_rows(lp, tp, float(s.need_wh or 0.0), cols, wh, hi)
        ks = np.arange(L, dtype=np.intp)
        for c in site.path_to_root[ch.circuit]:
            for p in ch.line_phases:
                ckeys.append((cidx[c] * T + ks) * P + p)
                ccols.append(cols)
        dcols.append(cols)
        dvals.append(np.full(L, w))
        blocks.append((x0, L, wh, w))
    keys = np.concatenate(ckeys)
    uniq, inv = np.unique(keys, return_inverse=True)
    lp.bulk(inv, np.concatenate(ccols), np.ones(len(keys)), room.reshape(-1)[uniq])  # room[j, k, p] at key
    if view.demand_target_kw is not None:
        over = lp.var(0.01 * (pmax + 1.0), math.inf)  # per W of the plan's peak above the target
        v_ln = electrical.line_to_neutral_v(site.service)
        dslot = np.concatenate([c - c[0] for c in dcols])
        rhs = view.demand_target_kw * 1000.0 - base_svc.sum(axis=1) * v_ln
        lp.bulk(np.concatenate([dslot, np.arange(T, dtype=np.intp)]),
                np.concatenate([*dcols, np.full(T, over, dtype=np.intp)]),
                np.concatenate([*dvals, -np.ones(T)]), rhs)
    n = len(lp.c)
    A = coo_matrix((np.concatenate(lp.vals), (np.concatenate(lp.rows), np.concatenate(lp.cols))),
                   shape=(lp.n_rows, n)).tocsr()
    eq = lp.eq
    Aeq = beq = None
    if eq.n_rows:
        Aeq = coo_matrix((np.concatenate(eq.vals), (np.concatenate(eq.rows), np.concatenate(eq.cols))),
                         shape=(eq.n_rows, n)).tocsr()
        beq = np.array(eq.rhs)
    res = linprog(np.array(lp.c), A_ub=A, b_ub=np.array(lp.rhs), A_eq=Aeq, b_eq=beq, bounds=np.column_stack(
        [np.zeros(len(lp.ub)), np.array(lp.ub)]), method="highs", options={"time_limit": cfg.time_limit_s})
    if res.x is None or res.status not in (0, 1):
        return Plan(at=now, status=f"failed:{res.message}"[:120], slot_s=step), state
    if res.status == 1:
        return Plan(at=now, status="time-limit", slot_s=step), state
    return _result(planned, blocks, short_vars, res.x, price, site, view, forecast, state, now, edges, cfg)


def _stick(lp: _Lp, x0: int, prev: float, cost: float) -> None:
    """x0 - prev = up - down, both >= 0, ``down`` at ``cost`` per A: the share now does not fall below the last
    plan's unless something better than a tie-break moves it (a rise is free: room nobody had is never held back,
    and a swap between two sessions costs the one that gives way)."""
    up, down = lp.var(0.0, math.inf), lp.var(cost, math.inf)
    assert lp.eq is not None
    lp.eq.row([x0, up, down], [1.0, -1.0, 1.0], prev)


def _laxity_slots(s: PlanSession, now: float, dep: float, w_per_a: float, hi: float, step: float) -> float:
    """The session's laxity in slots (at least one): the time to its departure less the time its need takes at
    its maximum. A delay costs a session with little laxity more (least laxity first among equal plans)."""
    need_s = (s.need_wh or 0.0) * 3600.0 / max(w_per_a * hi, 1e-9)
    return max(1.0, (dep - now - need_s) / step)


def assumed_taper(s: PlanSession, cfg: PlannerConfig) -> Taper | None:
    """The taper planned for an EV that does not tell its battery: the session fills a battery whose last
    ``assumed_taper_wh`` (at most ``assumed_taper_share`` of what the session wants in all) come at a falling
    rate (a taper from 80 % SoC). The battery follows from the session's total (delivered + still needed), so
    one session keeps one battery while its need shrinks."""
    if cfg.assumed_taper_wh <= 0 or cfg.assumed_taper_share <= 0 or not s.need_wh or s.need_wh <= 0:
        return None
    s0 = 0.8
    total = s.need_wh + max(s.delivered_wh, 0.0)
    cap = min(cfg.assumed_taper_wh, cfg.assumed_taper_share * total) / (1.0 - s0)
    cap = max(cap, total)  # a share above 20 %: the session starts from an empty battery
    return Taper(cap, 1.0 - s.need_wh / cap, s0, cfg.assumed_taper_end_fraction)


def _taper_rows(lp: _Lp, tp: Taper, need_wh: float, cols: npt.NDArray[np.intp], wh: Arr, hi: float) -> None:
    """x_k + hi * slope / cap * E_after(k) <= hi * (1 - slope * (soc - s0)), with E_after = E_before + wh_k x_k
    and E_before a chain of cumulative-energy variables (a few non-zeros per row, as in hil.ideal)."""
    s0, e = tp.taper_start_soc, tp.end_fraction
    if s0 >= 1.0 or tp.capacity_wh <= 0 or tp.soc + need_wh / tp.capacity_wh <= s0:
        return  # it never reaches the taper
    slope = (1.0 - e) / (1.0 - s0)
    a = hi * slope / tp.capacity_wh
    L = len(cols)
    b = hi * (1.0 - slope * (tp.soc - s0))
    cum0 = lp.block(np.zeros(L), np.full(L, math.inf))  # energy after each slot
    cum = np.arange(cum0, cum0 + L, dtype=np.intp)
    k = np.arange(L, dtype=np.intp)
    g = 1.0 + a * wh  # the rate at the energy the EV has at the end of the slot (its rate falls within it)
    # g_k x_k + a cum_{k-1} <= b   (k = 0: g_0 x_0 <= b)
    lp.bulk(np.concatenate([k, k[1:]]), np.concatenate([cols, cum[:-1]]),
            np.concatenate([g, np.full(L - 1, a)]), np.full(L, max(b, 0.0)))
    # cum_k - cum_{k-1} - wh_k x_k = 0
    assert lp.eq is not None
    lp.eq.bulk(np.concatenate([k, k, k[1:]]), np.concatenate([cum, cols, cum[:-1]]),
               np.concatenate([np.ones(L), -wh, -np.ones(L - 1)]), np.zeros(L))


def _result(
    planned: list[PlanSession], blocks: list[tuple[int, int, Arr, float]], short_vars: list[int], x: Arr,
    price: Arr, site: Site, view: BudgetView, forecast: Forecast, state: PlannerState, now: float, edges: Arr,
    cfg: PlannerConfig,
) -> tuple[Plan, PlannerState]:
    targets: dict[str, ChargerPlan] = {}
    proj: dict[str, Projection] = {}
    cost = 0.0
    T = len(edges) - 1
    ev_w = np.zeros(T)
    for s, (x0, L, wh, w), _u in zip(planned, blocks, short_vars, strict=True):
        if s.expected:
            continue
        xs = np.maximum(x[x0 : x0 + L], 0.0)
        delivered = float(np.dot(xs, wh))
        cost += float(np.dot(xs * wh, price[:L])) / 1000.0
        ev_w[:L] += xs * w
        need = float(s.need_wh or 0.0)
        short = max(need - delivered, 0.0)
        risk = short > max(cfg.at_risk_wh, 0.01 * need)
        proj[s.charger_id] = Projection(delivered, need, risk, float(s.departure_at or now))
        ch = site.chargers[s.charger_id]
        hi = _max_a(site, ch, s)
        now_a = float(xs[0])
        cheaper_later = L > 1 and float(np.min(price[1:L])) < float(price[0]) - 1e-9
        if cheaper_later and now_a < hi - 1e-3 and not risk:
            targets[s.charger_id] = ChargerPlan(now_a, CHEAP, True)
        else:
            targets[s.charger_id] = ChargerPlan(now_a, DEADLINE, False)
    v_ln = electrical.line_to_neutral_v(site.service)
    svc = site.service.id
    P = site.service.phases
    base = np.array([float(np.sum(_forecast_at(forecast, edges[k], edges[k + 1], svc, P,
                                               site.circuits[svc].worst_case_non_ev_a))) * v_ln for k in range(T)])
    plan_ = Plan(at=now, status="optimal", targets=targets, projections=proj, slot_s=cfg.slot_s,
                 horizon_end=float(edges[-1]), cost=cost, peak_kw=float(np.max(ev_w + base)) / 1000.0)
    return plan_, _next_state(state, proj, {cid: t.target_a for cid, t in targets.items()})


def _next_state(state: PlannerState, proj: Mapping[str, Projection],
                targets: Mapping[str, float] | None = None) -> PlannerState:
    risky = {cid for cid, p in proj.items() if p.at_risk}
    events = tuple(
        ("session_at_risk", {"charger": cid, "projected_kwh": round((proj[cid].projected_wh) / 1000.0, 2),
                             "need_kwh": round(proj[cid].need_wh / 1000.0, 2), "departure_at": proj[cid].departure_at})
        for cid in sorted(risky - state.at_risk)
    )
    return PlannerState(at_risk=frozenset(risky), events=events, targets=dict(targets or {}))
