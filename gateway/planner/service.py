"""The planner in the daemon: sessions from the snapshot and their needs, the budget view, the forecast, the
worker; the control loop calls ``targets(snapshot, allocation, now)`` once per tick (never waits).

* Needs per session, by precedence: an MQTT ``cmd/session_needs`` (``command``), the charger's tracker (the
  CMS's SessionNeeds, then the EV's NotifyEVChargingNeeds; ``needs_of``), then the config (vehicle profile by
  idToken, charger default, class default). Unknown needs: no plan for the session (max-min fairness).
* The forecast is the last allocation's non-EV load per circuit subtree (flat); the budget view is the tariff
  schedule (gateway.budget.tariff.schedule) and the demand target, and the caps in force now.
* Times: the planner runs on the monotonic clock; wall-clock departures are mapped with the tick's offset.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from gateway import electrical
from gateway.budget.remote import CommandRejected
from gateway.config import Site
from gateway.model import Allocation, ChargerSnapshot, ChargerTarget, Snapshot
from gateway.planner.config import PlannerSettings, configured_needs
from gateway.planner.model import BudgetView, Forecast, PlanSession, PriceSlot
from gateway.planner.needs import Needs, parse_needs_command
from gateway.planner.runner import PlannerWorker

NeedsOf = Callable[[str], Needs | None]


class PlannerService:
    def __init__(self, site: Site, settings: PlannerSettings, *, needs_of: NeedsOf | None = None,
                 wall: Callable[[], float] | None = None, worker: PlannerWorker | None = None) -> None:
        import time

        self.site = site
        self.settings = settings
        self.needs_of = needs_of or (lambda _cid: None)
        self.wall = wall or time.time
        self.worker = worker or PlannerWorker(site, settings)
        self.commanded: dict[str, Needs] = {}  # from cmd/session_needs, per charger, until its session ends
        self._started: dict[str, float] = {}  # session start per charger (its needs are the session's)
        # energy delivered per session: the charger's last energy report (Session.energy_wh at energy_at) plus the
        # measured draw integrated tick by tick since that report, or since the start before any report:
        # (Wh, last time, the report it counts from)
        self._delivered: dict[str, tuple[float, float, float | None]] = {}

    def command(self, payload: bytes, *, require_ts: bool) -> dict[str, object]:
        """``cmd/session_needs``: validated like the remote cap; the reply body."""
        try:
            cmd = parse_needs_command(payload, chargers=self.site.chargers, now_wall=self.wall(),
                                      require_ts=require_ts)
        except CommandRejected as exc:
            return {"id": exc.request_id, "ok": False, "reason": exc.reason}
        if cmd.needs is None:
            self.commanded.pop(cmd.charger, None)
        else:
            self.commanded[cmd.charger] = cmd.needs.fill(self.commanded.get(cmd.charger))
        return {"id": cmd.request_id, "ok": True, "charger": cmd.charger}

    def sessions(self, snapshot: Snapshot, now: float) -> list[PlanSession]:
        offset = self.wall() - now  # wall - monotonic
        out: list[PlanSession] = []
        live = set()
        for cid, cs in snapshot.chargers.items():
            ch = self.site.chargers.get(cid)
            if ch is None:
                continue
            prio = cs.session.priority if cs.session is not None and cs.session.priority else ch.priority
            weight = self.site.priorities[prio].weight if prio in self.site.priorities else 1.0
            if cs.session is None or not cs.state.has_session:
                d = self.settings.classes.get(ch.priority)
                if d is not None and d.expect_vehicles and d.energy_wh and d.departure_min is not None:
                    n = configured_needs(self.settings, charger=cid, priority=ch.priority, id_token=None,
                                         started_wall=self.wall())
                    if n is not None and n.complete:
                        out.append(PlanSession(cid, n.energy_wh, (n.departure_wall or 0.0) - offset, weight,
                                               expected=True))
                continue
            live.add(cid)
            prev = self._started.get(cid)
            if prev != cs.session.started_at:  # a new session: the old one's commanded needs go
                self._started[cid] = cs.session.started_at
                self._delivered[cid] = (0.0, now, None)
                if prev is not None:
                    self.commanded.pop(cid, None)
            delivered = self._integrate(cid, cs, now)
            n = self.commanded.get(cid)
            tracked = self.needs_of(cid)
            n = tracked if n is None else n.fill(tracked)
            conf = configured_needs(self.settings, charger=cid, priority=prio, id_token=cs.session.id_token,
                                    started_wall=cs.session.started_at + offset)
            n = conf if n is None else n.fill(conf)
            if n is not None and n.energy_wh is None and n.target_soc is not None and n.soc is not None \
                    and n.capacity_wh:
                n = Needs(max(0.0, n.target_soc - n.soc) * n.capacity_wh, n.departure_wall, n.source,
                          ev_max_a=n.ev_max_a, ac_phases=n.ac_phases)
            if n is None or not n.complete:
                out.append(PlanSession(cid, None, None, weight))
                continue
            need = max(0.0, (n.energy_wh or 0.0) - delivered)
            # the EV's own maximum where it says (ISO 15118): a plan that counts on 32 A from a 16 A on-board
            # charger holds room it cannot use and pauses others for it
            out.append(PlanSession(cid, need, (n.departure_wall or 0.0) - offset, weight, ev_max_a=n.ev_max_a,
                                   ac_phases=n.ac_phases, source=n.source, delivered_wh=delivered))
        for cid in [c for c in self._started if c not in live]:  # its session ended: so did its needs
            self._started.pop(cid, None)
            self.commanded.pop(cid, None)
            self._delivered.pop(cid, None)
        return out

    def _integrate(self, cid: str, cs: ChargerSnapshot, now: float) -> float:
        """The session's energy so far: the charger's last energy report, plus the measured power (or line current
        at the nominal voltage) over the time since it (since the start while it has reported none)."""
        wh, last, rep = self._delivered.get(cid, (0.0, now, None))
        s = cs.session
        if s is not None and s.energy_at is not None and s.energy_at != rep:  # a new report: count from it
            wh, last, rep = s.energy_wh, min(s.energy_at, now), s.energy_at
        w = cs.draw_w
        if w is None and cs.draw_a is not None:
            w = sum(cs.draw_a) * electrical.line_to_neutral_v(self.site.service)
        if w is not None and w == w and now > last:
            wh += max(w, 0.0) * (now - last) / 3600.0
        self._delivered[cid] = (wh, now, rep)
        return wh

    def budget_view(self, snapshot: Snapshot, now: float) -> BudgetView:
        b = self.site.budget
        slots: tuple[PriceSlot, ...] = ()
        wall = self.wall()
        if b.tariff is not None:
            from gateway.budget.tariff import schedule

            slots = tuple(PriceSlot(s.start - wall + now, s.end - wall + now, s.price_per_kwh, s.cap_kw)
                          for s in schedule(b.tariff, wall, 36 * 3600.0))
        caps = None
        if snapshot.caps:
            P = self.site.service.phases
            caps = tuple(min(c.limit_a[p] for c in snapshot.caps) for p in range(P))
        return BudgetView(slots, caps, b.demand.target_kw if b.demand is not None else None)

    def forecast(self, allocation: Allocation | None) -> Forecast:
        if allocation is None or not allocation.circuits:
            return Forecast()  # the circuits' worst case
        return Forecast.flat({cid: c.non_ev_a for cid, c in allocation.circuits.items()})

    def targets(self, snapshot: Snapshot, allocation: Allocation | None, now: float) -> Mapping[str, ChargerTarget]:
        if not self.settings.enabled:
            return {}
        sessions = self.sessions(snapshot, now)
        return self.worker.tick(sessions, self.budget_view(snapshot, now), self.forecast(allocation), now)

    def telemetry(self) -> dict[str, Any]:
        """Per session: the projected energy at departure and whether it is at risk; the plan's status."""
        p = self.worker.plan
        if p is None:
            return {"status": "none"}
        return {"status": p.status, "at": p.at, "sessions": {
            cid: {"projected_kwh": round(pr.projected_wh / 1000.0, 2), "need_kwh": round(pr.need_wh / 1000.0, 2),
                  "at_risk": pr.at_risk, "reason": p.targets[cid].reason if cid in p.targets else None}
            for cid, pr in p.projections.items()}}

    def any_at_risk(self) -> bool:
        """Whether the latest plan projects any session to miss its departure (for the OpenADR opt policy)."""
        p = self.worker.plan
        return p is not None and any(pr.at_risk for pr in p.projections.values())

    def take_events(self) -> list[tuple[str, Mapping[str, object]]]:
        """The session_at_risk events since the last call (for the telemetry's event stream)."""
        ev, self.worker.events = self.worker.events, []
        return ev

    def close(self) -> None:
        self.worker.close()
