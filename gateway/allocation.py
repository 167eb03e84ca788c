"""The headroom allocator: a pure function of frozen values.

``allocate(snapshot, site, previous, now) -> Allocation`` does no IO and reads no clock.
It shares the current that every circuit can still carry among the chargers beneath it:

* Limits form a tree (service -> switchboards/transformers -> panels/cabinets -> chargers),
  one constraint per circuit and phase: allocated EV line current + fixed loads + non-EV
  load <= limit - margin. Non-EV load is the circuit's measured current minus the EV draw
  measured beneath it (clamped at 0); an unmetered circuit uses its configured worst case.
* A meter that is unknown, invalid or stale counts as an overload of its subtree: every
  charger beneath it gets its fail-safe limit (evcc's ``overloadOnError``).
* Each active session gets its minimum or 0 (paused), never a value in between. When not all
  minimums fit, the lowest priority is paused first and equals take turns (rotation).
* The rest is shared by priority-weighted max-min fairness (progressive filling), each
  charger capped by its maximum, by what its EV draws plus an allowance, and by the ramp
  rate for increases. Decreases apply at once. Small increases are held (hysteresis).
* Every charger's limit carries a machine-readable reason.

All arithmetic runs in line current per phase (A); DC power converts through the charger's
efficiency, power factor and the service voltage less its tolerance.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from gateway.config import PHASES, ChargerConfig, Site
from gateway.model import (
    Allocation,
    ChargerLimit,
    ChargerSnapshot,
    ChargerState,
    CircuitStatus,
    MeterReading,
    Snapshot,
)

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.intp]

_EPS_A = 1e-6  # numerical slack in amperes
_TOL_A = 1e-4  # bisection stops when levels differ by less than this (in amperes)
_DT_MAX_TICKS = 5.0  # an increase may use at most this many ticks of ramp after a gap


# --------------------------------------------------------------------------------------
# The static plan: arrays derived from the Site once and cached (the Site is immutable).
@dataclass(frozen=True)
class _Plan:
    ids: tuple[str, ...]
    chargers: tuple[ChargerConfig, ...]
    circuit_ids: tuple[str, ...]
    n_phases: int
    unit_to_line: FloatArray  # A of line current per unit of limit (1 for AC, A/W for DC)
    unit_to_line_list: tuple[float, ...]
    mem_c: IntArray  # membership: charger index ...
    mem_k: IntArray  # ... loads constraint index (circuit * P + phase)
    mem_p: IntArray  # ... on this site phase
    cap: FloatArray  # per constraint: limit - margin
    worst_non_ev: FloatArray  # per constraint
    subtree_chargers: Mapping[str, IntArray]  # circuit -> indices of chargers beneath
    subtree_circuits: Mapping[str, tuple[str, ...]]
    measured_phases: Mapping[str, npt.NDArray[np.bool_]]  # metered circuit -> site phases its meter sees


_PLANS: dict[int, tuple[Site, _Plan]] = {}


def _plan(site: Site) -> _Plan:
    hit = _PLANS.get(id(site))
    if hit is not None and hit[0] is site:
        return hit[1]
    p = _build_plan(site)
    if len(_PLANS) > 8:
        _PLANS.clear()
    _PLANS[id(site)] = (site, p)
    return p


def _build_plan(site: Site) -> _Plan:
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
    subtree_chargers = {
        cid: np.array([index[x] for x in site.chargers_under[cid]], dtype=np.intp) for cid in circuit_ids
    }
    subtree_circuits = {cid: tuple(k for k in circuit_ids if cid in site.path_to_root[k]) for cid in circuit_ids}
    measured_phases = {
        m.circuit: np.array([p in m.phase_map for p in range(P)], dtype=bool) for m in site.meters.values()
    }
    return _Plan(
        ids=ids,
        chargers=chargers,
        circuit_ids=circuit_ids,
        n_phases=P,
        unit_to_line=np.array([site.to_line_a(ch, 1.0) for ch in chargers], dtype=np.float64),
        unit_to_line_list=tuple(site.to_line_a(ch, 1.0) for ch in chargers),
        mem_c=np.array(mem_c, dtype=np.intp),
        mem_k=np.array(mem_k, dtype=np.intp),
        mem_p=np.array(mem_p, dtype=np.intp),
        cap=cap,
        worst_non_ev=worst,
        subtree_chargers=subtree_chargers,
        subtree_circuits=subtree_circuits,
        measured_phases=measured_phases,
    )


# --------------------------------------------------------------------------------------
def meter_problem(reading: MeterReading | None, stale_after_s: float, now: float) -> str | None:
    """Why a meter reading cannot be trusted (``"stale"``, ``"invalid"``), or None when it can."""
    if reading is None:
        return "stale"
    if not reading.valid:
        return "invalid"
    if now - reading.at > stale_after_s or reading.at > now + 1.0:
        return "stale"
    if any(not math.isfinite(a) for a in reading.current_a):
        return "invalid"
    return None


def _draw_per_phase(site: Site, ch: ChargerConfig, cs: ChargerSnapshot, P: int) -> list[float] | None:
    """Measured line current per site phase (A), or None when the charger reported none."""
    if cs.draw_a is not None and ch.kind == "ac":
        out = [0.0] * P
        for ph in ch.line_phases:
            if ph < len(cs.draw_a):
                v = cs.draw_a[ph]
                out[ph] = v if math.isfinite(v) and v > 0 else 0.0
        if len(ch.line_phases) == 2:  # line-to-line single phase: one current in two lines
            m = max(out[ph] for ph in ch.line_phases)
            for ph in ch.line_phases:
                out[ph] = m
        return out
    if cs.draw_w is not None and math.isfinite(cs.draw_w):
        w = max(cs.draw_w, 0.0)
        if ch.kind == "dc":
            a = site.to_line_a(ch, w)
        else:
            v_ll = site.service.voltage_ll_v
            if len(ch.line_phases) == 3:
                a = w / (math.sqrt(3.0) * v_ll)
            elif len(ch.line_phases) == 2 or P == 1:
                a = w / v_ll
            else:
                a = w / (v_ll / math.sqrt(3.0))
        out = [0.0] * P
        for ph in ch.line_phases:
            out[ph] = a
        return out
    return None


def _floor(v: float, step: float = 0.1) -> float:
    # the filling level is found to within _TOL_A: allow that much so an exact share is not
    # rounded down a whole step (the excess is below any meter's resolution)
    return math.floor((v + 2 * _TOL_A) / step) * step


def _draw_bound(prev: ChargerLimit, now: float) -> float:
    return max(prev.line_a, prev.draw_bound_a) if now <= prev.draw_bound_until else prev.line_a


def _next_draw_bound(prev: ChargerLimit, line: float, now: float, grace_until: float) -> tuple[float, float]:
    """The draw bound after this tick: a new, higher limit raises it; a decrease keeps the earlier
    limit as the bound for the grace period the EV has to follow it."""
    current = _draw_bound(prev, now)
    if line >= current:
        return line, grace_until
    if current > prev.line_a:  # an earlier decrease is still being followed
        return prev.draw_bound_a, prev.draw_bound_until
    return current, grace_until


@dataclass
class _Work:
    """Mutable scratch for one allocate() call."""

    limit: list[float]
    line: list[float]
    reason: list[str]


def allocate(snapshot: Snapshot, site: Site, previous: Allocation | None, now: float) -> Allocation:
    plan = _plan(site)
    P = plan.n_phases
    n = len(plan.ids)
    C = len(plan.circuit_ids)
    K = C * P
    ctl = site.control
    prev_limits = previous.limits if previous is not None else {}
    dt = 0.0
    if previous is not None:
        dt = min(max(now - previous.at, 0.0), _DT_MAX_TICKS * ctl.tick_s)

    # ---- 1. meters: which subtrees are in fail-safe ------------------------------------
    failsafe_reason: dict[int, str] = {}
    circuit_state = {cid: ("ok" if site.circuits[cid].meter else "unmetered") for cid in plan.circuit_ids}
    failsafe_meters: list[str] = []
    usable_reading: dict[str, MeterReading] = {}
    # deepest meters first, so a charger's fail-safe reason names the nearest untrusted meter
    for mid, m in sorted(site.meters.items(), key=lambda kv: -len(site.path_to_root[kv[1].circuit])):
        reading = snapshot.meters.get(mid)
        problem = meter_problem(reading, m.stale_after_s, now)
        if problem is None and reading is not None and len(reading.current_a) >= P:
            usable_reading[m.circuit] = reading
            continue
        problem = problem or "invalid"
        failsafe_meters.append(mid)
        circuit_state[m.circuit] = f"{problem}:{mid}"
        for sub in plan.subtree_circuits[m.circuit]:
            if sub != m.circuit and not circuit_state[sub].startswith(("stale:", "invalid:")):
                circuit_state[sub] = f"failsafe:{mid}"
        for i in plan.subtree_chargers[m.circuit]:
            failsafe_reason.setdefault(int(i), f"failsafe:{mid}-{problem}")

    # ---- 2. classify chargers (plain lists in the loop: numpy scalar access is slow) --------
    w = _Work(limit=[0.0] * n, line=[0.0] * n, reason=[""] * n)
    zero = [0.0] * P
    draw_l: list[list[float]] = [zero] * n  # EV draw subtracted from meters (A per site phase)
    fixed_l = [0.0] * n  # line current reserved for chargers not allocated this tick
    responding_l = [0.0] * n  # 1.0: still following a decrease
    active: list[int] = []
    lo_l = [0.0] * n
    hi_l = [0.0] * n
    hi_reason = [""] * n
    weight_l = [1.0] * n
    paused_since: list[float | None] = [None] * n
    running_since: list[float | None] = [None] * n
    offline_default = ChargerSnapshot(id="", online=False)
    u2l_l = plan.unit_to_line_list

    for i, (cid, ch) in enumerate(zip(plan.ids, plan.chargers, strict=True)):
        cs = snapshot.chargers.get(cid, offline_default)
        u2l = u2l_l[i]
        prev = prev_limits.get(cid)
        if prev is not None and now <= prev.draw_bound_until and prev.draw_bound_a > prev.line_a:
            responding_l[i] = 1.0
        draw = _draw_per_phase(site, ch, cs, P)
        draw_max = 0.0
        if draw is not None:
            # a reported draw above what the charger may draw is stale or non-compliant: only the
            # latter is believed, so that a stale report never hides non-EV load
            draw_max = max(draw)
            if prev is not None and not cs.noncompliant:
                bound = prev.line_a
                if now <= prev.draw_bound_until and prev.draw_bound_a > bound:
                    bound = prev.draw_bound_a
                if draw_max > bound:
                    draw = [min(v, bound) for v in draw]
                    draw_max = bound
            draw_l[i] = draw
        if i in failsafe_reason:
            fs_line = ch.failsafe_limit * u2l
            w.limit[i], w.line[i], w.reason[i] = ch.failsafe_limit, fs_line, failsafe_reason[i]
            fixed_l[i] = max(fs_line, draw_max if cs.noncompliant else 0.0)
            continue
        if not cs.online:
            held = max(prev.limit if prev is not None else 0.0, ch.failsafe_limit)
            w.limit[i], w.line[i], w.reason[i] = held, held * u2l, "offline:reserved"
            fixed_l[i] = held * u2l
            continue
        if cs.noncompliant:
            held = prev.limit if prev is not None else ch.min_limit
            w.limit[i], w.line[i], w.reason[i] = held, held * u2l, "noncompliant:fixed-load"
            fixed_l[i] = max(draw_max, held * u2l)
            continue
        if not cs.state.has_session:
            w.limit[i], w.line[i] = 0.0, 0.0
            w.reason[i] = "idle:no-ev" if cs.state == ChargerState.NO_EV else f"idle:{cs.state.value}"
            fixed_l[i] = draw_max  # whatever it still draws stays counted
            continue
        # an active session: allocatable
        active.append(i)
        prio = cs.session.priority if cs.session is not None and cs.session.priority in site.priorities else None
        weight_l[i] = site.priorities[prio or ch.priority].weight
        lo_i = ch.min_limit * u2l
        lo_l[i] = lo_i
        cap_line, cap_reason = ch.max_limit * u2l, "max:charger"
        if cs.state == ChargerState.SUSPENDED_EV:
            if lo_i < cap_line:
                cap_line, cap_reason = lo_i, "max:ev-suspended"
        elif cs.state == ChargerState.CHARGING and draw is not None and prev is not None and prev.limit > 0:
            # An EV that does not use its limit gives the rest to others, judged only on a draw measured a
            # response window after its limit last rose (reports lag: a ramping EV is not held back by
            # them). Once capped, the cap lifts when the EV draws within half the allowance of its limit.
            allowance = ctl.draw_allowance_a  # TEMP (elec): line A for AC and DC; the lead rewrites this
            if prev.reason == "max:ev-draw":
                capped = draw_max < prev.line_a - allowance / 2
            else:
                fresh = cs.draw_at is not None and cs.draw_at >= prev.raised_at + ctl.ev_response_s
                capped = fresh and draw_max < prev.line_a - allowance
            dcap = max(lo_i, draw_max + allowance)
            if capped and dcap < cap_line:
                cap_line, cap_reason = dcap, "max:ev-draw"
        # ramp: an increase is rate-limited from the previous limit
        start = prev.line_a if prev is not None and prev.limit > 0 else None
        if start is None and previous is None and draw is not None:
            start = draw_max  # first allocation after a (re)start: continue from the measured draw
        if start is None:
            ramp_cap = lo_i
        else:
            rate = ctl.ramp_up_a_per_s  # TEMP (elec): line A/s for AC and DC
            ramp_cap = max(lo_i, start + rate * dt)
        if ramp_cap < cap_line - _EPS_A:
            cap_line, cap_reason = ramp_cap, "ramp:rate-limit"
        hi_l[i], hi_reason[i] = cap_line, cap_reason
        if prev is not None:
            paused_since[i], running_since[i] = prev.paused_since, prev.running_since
        elif cs.session is not None:
            # a session we have not allocated yet waits its turn like a paused one
            paused_since[i] = min(now, cs.session.started_at)

    draw_est = np.array(draw_l, dtype=np.float64).reshape(n, P)
    fixed = np.array(fixed_l, dtype=np.float64)
    lo = np.array(lo_l, dtype=np.float64)
    hi = np.array(hi_l, dtype=np.float64)
    weight = np.array(weight_l, dtype=np.float64)

    # ---- 3. headroom per circuit and phase ---------------------------------------------
    ev_draw_k = np.bincount(plan.mem_k, weights=draw_est[plan.mem_c, plan.mem_p], minlength=K)
    # chargers still following a decrease (their earlier, higher limit is the draw bound until then)
    responding = np.array(responding_l, dtype=np.float64)
    responding_k = np.bincount(plan.mem_k, weights=responding[plan.mem_c], minlength=K) if n else np.zeros(K)
    fixed_k = np.bincount(plan.mem_k, weights=fixed[plan.mem_c], minlength=K)
    non_ev = plan.worst_non_ev.copy()
    measured: dict[str, tuple[float, ...]] = {}
    low_since: dict[str, tuple[float | None, ...]] = {}
    cap = plan.cap.copy()
    for j, cid in enumerate(plan.circuit_ids):
        reading = usable_reading.get(cid)
        if reading is None:
            continue
        cur = np.array(reading.current_a[:P], dtype=np.float64)
        measured[cid] = tuple(float(x) for x in cur)
        sl = slice(j * P, (j + 1) * P)
        seen = plan.measured_phases[cid]
        # a phase the meter does not measure is unknown, not 0 A: it keeps the worst-case non-EV load
        raw = np.where(seen, np.maximum(cur - ev_draw_k[sl], 0.0), plan.worst_non_ev[sl])
        # EV draws are reported seconds after the meter sees them: while chargers beneath follow a
        # decrease, "measured - reported EV draw" can understate the non-EV load (an EV that has
        # followed still reports its old draw). There, a rise is believed at once and a fall only once
        # it has lasted the EVs' response time; elsewhere the estimate follows the measurement.
        before = previous.circuits.get(cid) if previous is not None else None
        lows: list[float | None] = [None] * P
        if before is not None and before.state == "ok" and len(before.non_ev_a) == P:
            est = raw.tolist()
            for ph in range(P):
                if raw[ph] < before.non_ev_a[ph] - _EPS_A and responding_k[j * P + ph] > 0:
                    since = before.non_ev_low_since[ph] if len(before.non_ev_low_since) == P else None
                    since = now if since is None else since
                    if now - since < ctl.ev_response_s:
                        est[ph], lows[ph] = before.non_ev_a[ph], since
            raw = np.array(est)
        non_ev[sl] = raw
        low_since[cid] = tuple(lows)
    binding_name = [f"{cid}/{PHASES[k % P]}" for cid in plan.circuit_ids for k in range(P)]
    site_cap = snapshot.site_cap_a
    root_j = plan.circuit_ids.index(site.root)
    if site_cap is not None and math.isfinite(site_cap) and site_cap >= 0:
        root_c = site.circuits[site.root]
        cap_room = min(root_c.limit_a, site_cap) - root_c.margin_a
        for ph in range(P):
            if cap_room < cap[root_j * P + ph]:
                cap[root_j * P + ph] = cap_room
                binding_name[root_j * P + ph] = f"site-cap/{PHASES[ph]}"
    headroom = cap - non_ev
    room = headroom - fixed_k  # what the active sessions may share

    # ---- 4. minimums: pause what does not fit ------------------------------------------
    act = np.array(active, dtype=np.intp)
    is_active = np.zeros(n, dtype=bool)
    is_active[act] = True
    mmask = is_active[plan.mem_c]
    a_c, a_k = plan.mem_c[mmask], plan.mem_k[mmask]
    need = np.bincount(a_k, weights=lo[a_c], minlength=K)
    paused = np.zeros(n, dtype=bool)
    pause_cause: dict[int, int] = {}
    if (need > room + _EPS_A).any():
        members: dict[int, list[int]] = {}
        for c_i, k_i in zip(a_c.tolist(), a_k.tolist(), strict=True):
            members.setdefault(c_i, []).append(k_i)
        period = ctl.rotation_period_s
        dep_far = 1e18

        def order_key(i: int) -> tuple[float, int, float, float, str]:
            cs = snapshot.chargers[plan.ids[i]]
            ps, rs = paused_since[i], running_since[i]
            if ps is not None and now - ps < period:
                group, k2 = 0, now - ps  # still waiting its turn: stays paused first
            elif ps is None and rs is not None:
                group, k2 = 1, -(now - rs)  # running: the longest running pauses first
            elif ps is None:
                group, k2 = 1, 0.0
            else:
                group, k2 = 2, now - ps  # waited a whole period: resumes, the longest wait first
            dep = cs.session.departure_at if cs.session is not None else None
            return (float(weight[i]), group, k2, -(dep if dep is not None else dep_far), plan.ids[i])

        for i in sorted(active, key=order_key):
            over = [k for k in members[i] if need[k] > room[k] + _EPS_A]
            if not over:
                continue
            paused[i] = True
            pause_cause[i] = over[0]
            for k in members[i]:
                need[k] -= lo[i]
            if not (need > room + _EPS_A).any():
                break

    # ---- 5. progressive filling ---------------------------------------------------------
    x = np.zeros(n)
    grow = is_active & ~paused
    frozen_reason: dict[int, int] = {}
    usage_fixed = np.zeros(K)
    while grow.any():
        gmask = grow[plan.mem_c]
        g_c, g_k = plan.mem_c[gmask], plan.mem_k[gmask]
        t_hi_all = float(np.max(np.where(grow, hi / weight, 0.0)))

        def usage(
            t: float, g_c: IntArray = g_c, g_k: IntArray = g_k, base: FloatArray = usage_fixed
        ) -> FloatArray:
            xt = np.clip(weight * t, lo, hi)
            return base + np.bincount(g_k, weights=xt[g_c], minlength=K)

        # a constraint already full at t=0 (fixed loads alone; its members are paused) must not
        # hold back the others: it binds only its growing members, and it has none
        room_r = np.maximum(room, usage(0.0))
        if (usage(t_hi_all) <= room_r + _EPS_A).all():
            x[grow] = hi[grow]
            break
        t_lo, t_up = 0.0, t_hi_all
        wmax = float(np.max(weight[grow]))
        while (t_up - t_lo) * wmax > _TOL_A:
            t_mid = 0.5 * (t_lo + t_up)
            if (usage(t_mid) <= room_r + _EPS_A).all():
                t_lo = t_mid
            else:
                t_up = t_mid
        u_up = usage(t_up)
        sat = np.flatnonzero(u_up > room_r + _EPS_A)
        xt = np.clip(weight * t_lo, lo, hi)
        sat_set = np.zeros(K, dtype=bool)
        sat_set[sat] = True
        hit = np.zeros(n, dtype=bool)
        hit_k = np.full(n, -1, dtype=np.intp)
        sel = sat_set[g_k]
        hit[g_c[sel]] = True
        hit_k[g_c[sel][::-1]] = g_k[sel][::-1]  # the first (nearest circuit, lowest phase) wins
        newly = np.flatnonzero(hit & grow)
        if newly.size == 0:  # numerical corner: freeze everyone at the feasible level
            newly = np.flatnonzero(grow)
        for i in newly.tolist():
            x[i] = xt[i]
            if hit_k[i] >= 0:
                frozen_reason[i] = int(hit_k[i])
        grow[newly] = False
        fmask = np.zeros(n, dtype=bool)
        fmask[newly] = True
        fm = fmask[plan.mem_c]
        usage_fixed = usage_fixed + np.bincount(plan.mem_k[fm], weights=x[plan.mem_c[fm]], minlength=K)

    # ---- 6. limits, hysteresis, reasons, rotation bookkeeping --------------------------
    x_l, hi_l2, w_l, paused_l = x.tolist(), hi.tolist(), weight.tolist(), paused.tolist()
    running_weights = {w_l[i] for i in active if not paused_l[i]}
    for i in active:
        ch = plan.chargers[i]
        u2l = u2l_l[i]
        prev = prev_limits.get(plan.ids[i])
        if paused_l[i]:
            w.limit[i], w.line[i] = 0.0, 0.0
            if w_l[i] in running_weights:
                w.reason[i] = "paused:rotation"
            elif any(r > w_l[i] for r in running_weights):
                w.reason[i] = "paused:priority"
            else:
                w.reason[i] = f"paused:{binding_name[pause_cause[i]]}"
            paused_since[i] = paused_since[i] if paused_since[i] is not None else now
            running_since[i] = None
            continue
        xi = x_l[i]
        if i in frozen_reason and xi < hi_l2[i] - 1e-3:
            reason = f"capped:{binding_name[frozen_reason[i]]}"
        else:
            reason = hi_reason[i]
        limit = max(ch.min_limit, _floor(xi / u2l))
        if prev is not None and prev.limit >= ch.min_limit and limit > prev.limit:
            hyst = ctl.hysteresis_a / u2l  # TEMP (elec): line A -> the charger unit
            if limit - prev.limit < hyst:
                limit, reason = prev.limit, "hold:hysteresis"
        w.limit[i], w.line[i], w.reason[i] = limit, limit * u2l, reason
        running_since[i] = running_since[i] if (running_since[i] is not None and paused_since[i] is None) else now
        paused_since[i] = None

    limits: dict[str, ChargerLimit] = {}
    is_active_l = is_active.tolist()
    grace_until = now + ctl.ev_response_s
    for i, cid in enumerate(plan.ids):
        line, reason = w.line[i], w.reason[i]
        prev = prev_limits.get(cid)
        if prev is None or (line >= prev.line_a and not responding_l[i]):
            bound, until = line, grace_until  # not following a decrease, and none now: the limit is the bound
        else:
            bound, until = _next_draw_bound(prev, line, now, grace_until)
        raised = now if prev is None or w.limit[i] > prev.limit else prev.raised_at
        limits[cid] = ChargerLimit(
            w.limit[i],
            line,
            reason,
            paused_since[i] if reason.startswith("paused:") else None,
            running_since[i] if is_active_l[i] and not paused_l[i] else None,
            bound,
            until,
            raised,
        )

    # ---- 7. circuit status ---------------------------------------------------------------
    final_line = np.array(w.line) if n else np.zeros(0)
    reserve = np.where(is_active, final_line, np.maximum(final_line, fixed))
    alloc_k = np.bincount(plan.mem_k, weights=reserve[plan.mem_c], minlength=K) if n else np.zeros(K)
    circuits: dict[str, CircuitStatus] = {}
    for j, cid in enumerate(plan.circuit_ids):
        sl = slice(j * P, (j + 1) * P)
        margin = site.circuits[cid].margin_a
        circuits[cid] = CircuitStatus(
            limit_a=float(cap[j * P] + margin) if P else site.circuits[cid].limit_a,
            measured_a=measured.get(cid),
            non_ev_a=tuple(float(v) for v in non_ev[sl]),
            headroom_a=tuple(float(v) for v in headroom[sl]),
            allocated_a=tuple(float(v) for v in alloc_k[sl]),
            state=circuit_state[cid],
            non_ev_low_since=low_since.get(cid, ()),
        )
    root_meter = site.circuits[site.root].meter
    if root_meter is not None and root_meter in failsafe_meters:
        mode = "failsafe"
    elif failsafe_meters:
        mode = "partial-failsafe"
    else:
        mode = "normal"
    return Allocation(
        at=now,
        limits=limits,
        circuits=circuits,
        mode=mode,
        failsafe_meters=tuple(failsafe_meters),
    )
