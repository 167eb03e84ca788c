"""The limit actuator: the fail-safe and limit profiles a charger holds, written as SetChargingProfile CALLs.

The limit profile goes out when the allocation (merged with the CMS's limit) changes significantly, at
once for a decrease, and again before its lease lapses; the charger's answers feed the actuation
feedback (:class:`~gateway.ocpp_proxy.limits.LimitState`). One outstanding CALL per direction: a limit
profile queued behind a CALL in flight replaces an older one still waiting (key ``limit``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from structlog.typing import FilteringBoundLogger

from gateway.config import ChargerConfig
from gateway.ocpp_proxy import policy
from gateway.ocpp_proxy.capabilities import Capabilities
from gateway.ocpp_proxy.config import OcppConfig
from gateway.ocpp_proxy.frames import CALLRESULT, Frame
from gateway.ocpp_proxy.limits import ACCEPTED, REJECTED, UNANSWERED, LimitState
from gateway.ocpp_proxy.ports import Clock, SessionEvents, Spawn
from gateway.ocpp_proxy.relay import CallChannel, CallFailed, OutCall
from gateway.ocpp_proxy.typed import Call, OwnCall, OwnJsonCall

FAILSAFE_START = datetime(2020, 1, 1, tzinfo=UTC)
DUE_NOT, DUE_DECREASE, DUE_OTHER = 0, 1, 2


def _accepted(ans: Frame) -> bool:
    return ans.kind == CALLRESULT and ans.payload.get("status") == "Accepted"


@dataclass
class HeldLimit:
    """A limit frame waiting for its lease record's commit (``gate``): :meth:`release` writes it then, unless a
    newer frame replaced it or the charger went away; :meth:`drop` forgets it (its limit counts as not sent)."""

    actuator: LimitActuator
    gen: int
    call: tuple[str, str]  # action, payload JSON
    limit: float
    built_at: float
    gate: asyncio.Future[None]
    before: tuple[float | None, float]  # the limit sent, and when, before this one

    def release(self) -> None:
        a, gate = self.actuator, self.gate
        if self.gen != a._gen or not a._channel.connected:
            return
        if not gate.done():
            gate.add_done_callback(lambda _: self.release())
            return
        if gate.cancelled() or gate.exception() is not None:  # not durable: it does not go, it is retried
            a.limit.sent = None
            a.limit.retry_at = a._clock() + 5.0
            return
        a._write_limit(self.call, self.limit, self.built_at)

    def drop(self) -> None:
        a = self.actuator
        if self.gen == a._gen:
            a._gen += 1
            a.limit.sent, a.limit.sent_at = self.before


class LimitActuator:
    """``own_call`` queues one of the gateway's CALLs on ``channel`` (the charger's); ``cms_limit`` is the
    lowest limit of the CMS's merged profiles now (None: none), in the charger's unit."""

    def __init__(
        self,
        cfg: ChargerConfig,
        ocpp: OcppConfig,
        limit: LimitState,
        caps: Capabilities,
        events: SessionEvents,
        log: FilteringBoundLogger,
        *,
        own_call: OwnCall,
        own_json: OwnJsonCall,
        channel: CallChannel,
        cms_limit: Callable[[], float | None],
        clock: Clock,
        spawn: Spawn,
    ) -> None:
        self.cfg = cfg
        self.id = cfg.id
        self.version = cfg.ocpp_version
        self.ocpp = ocpp
        self.limit = limit
        self.caps = caps
        self.events = events
        self.log = log
        self._own_call = own_call
        self._own_json = own_json
        self._channel = channel
        self._cms_limit = cms_limit
        self._clock = clock
        self._spawn = spawn
        self.profiles_ready = asyncio.Event()
        self._gen = 0  # counts limit profiles built: a held frame goes out only if none replaced it

    # ------------------------------------------------------------------ the profiles
    def _profile(self, mode: str, *, profile_id: int, stack_level: int, limit: float, start: datetime,
                 duration_s: int | None) -> Call:
        return policy.set_profile(
            self.version, mode, profile_id=profile_id, stack_level=stack_level, unit=self.cfg.unit, limit=limit,
            start=start, duration_s=duration_s, connectors=self.cfg.connectors,
        )

    def failsafe_call(self, mode: str) -> Call:
        oc = self.ocpp
        return self._profile(mode, profile_id=oc.failsafe_profile_id, stack_level=oc.failsafe_stack_level,
                             limit=self.cfg.failsafe_limit, start=FAILSAFE_START, duration_s=None)

    def limit_call(self, mode: str, limit: float, duration_s: int | None = None) -> Call:
        oc = self.ocpp
        return self._profile(mode, profile_id=oc.limit_profile_id, stack_level=oc.limit_stack_level, limit=limit,
                             start=datetime.now(UTC), duration_s=int(oc.lease_s) if duration_s is None else duration_s)

    def limit_json(self, mode: str, limit: float) -> tuple[str, str]:
        """:meth:`limit_call` as (action, payload JSON), from the cached shape (the hot path: a limit pass)."""
        oc = self.ocpp
        return policy.set_profile_json(
            self.version, mode, profile_id=oc.limit_profile_id, stack_level=oc.limit_stack_level, unit=self.cfg.unit,
            limit=limit, start_iso=policy.iso_now(), duration_s=int(oc.lease_s), connectors=self.cfg.connectors,
        )

    async def _set_profile(
        self, call_for: Callable[[str], Call], key: str, wait: bool, limit: float | None = None
    ) -> bool | None:
        """Send a profile; on rejection fall back to the next purpose. None: sent, answer not awaited.
        With `limit`, it is a limit profile: its answer is recorded for the actuation feedback."""
        while True:
            built_at = self._clock()
            out = self._own_call(call_for(self.caps.mode), key)
            if limit is not None:
                self._track_limit(out, limit, built_at, self._limit_answered if not wait else None)
            if not wait:
                if self._channel.in_flight is out:
                    # written now; one queued behind a CMS CALL in flight goes out after its answer
                    await asyncio.wait({out.written}, timeout=self.ocpp.call_timeout_s)
                return None
            try:
                ans = await out.result
            except CallFailed:
                return False
            if _accepted(ans):
                return True
            if not self.caps.fall_back(ans):
                return False

    def _track_limit(
        self, out: OutCall, limit: float, built_at: float, then: Callable[[OutCall, Frame | None], None] | None
    ) -> None:
        """Record a limit profile as pending, and its answer when it comes (then call `then`). Its lease runs
        from the profile's start (when it was built), whenever the charger answers."""
        ls = self.limit
        queued_at = self._clock()
        lease_until = built_at + self.ocpp.lease_s
        ls.queued(out.message_id, limit, queued_at, lease_until)

        def answered(o: OutCall, ans: Frame | None) -> None:
            if ans is not None:
                outcome = ACCEPTED if _accepted(ans) else REJECTED
            else:
                w = o.written
                outcome = UNANSWERED if w.done() and not w.cancelled() and w.exception() is None else REJECTED
            ls.answered(o.message_id, limit, queued_at, lease_until, outcome, self._clock())
            if then is not None:
                then(o, ans)

        out.on_answer = answered

    def _limit_answered(self, out: OutCall, ans: Frame | None) -> None:
        if ans is not None and _accepted(ans):
            self.limit.ok = True
            return
        self.limit.ok = False
        self.limit.sent = None  # resend (after a fallback, or later)
        self.limit.retry_at = self._clock() + 5.0
        if ans is not None and self.caps.fall_back(ans):
            self.limit.retry_at = 0.0
            self._spawn(self.install_profiles())

    async def install_profiles(self) -> None:
        """The persistent fail-safe profile, then the current limit (at boot and after every reconnect).
        A rejected fail-safe profile does not stop the session; it is reported (not controlled)."""
        learned = self.caps.learned
        self.limit.installing(learned)
        ok = await self._set_profile(self.failsafe_call, "failsafe", wait=True)
        self.limit.failsafe_answered(bool(ok))
        if ok:
            self.log.info(
                "failsafe_installed",
                limit=self.cfg.failsafe_limit,
                purpose=policy.purpose(self.version, self.caps.mode),
            )
        else:
            self.log.warning("failsafe_not_installed", limit=self.cfg.failsafe_limit)
            self.events.event("failsafe_not_installed", charger=self.id)
        self.profiles_ready.set()
        self.limit.sent = None
        await self.push_limit(force=True)
        if not learned:  # the first attempt got no answer: once more (after the profiles), control needs them
            await self.caps.learn()
            self.limit.learned(self.caps.learned)

    def reinstall(self) -> None:
        """A ClearChargingProfile may have matched the gateway's own profiles: put them back."""
        self.limit.sent = None
        self._spawn(self.install_profiles())

    # ------------------------------------------------------------------ the limit
    def effective_limit(self) -> float | None:
        target = self.limit.target
        if target is None:
            return None
        cms = self._cms_limit()
        return policy.round_limit(target if cms is None else min(target, cms))

    def needs_send(self, now: float) -> bool:
        return self.due(now) != DUE_NOT

    def due(self, now: float) -> int:
        """Whether the limit profile must go out: DUE_DECREASE (at once, first), DUE_OTHER, DUE_NOT."""
        eff = self.effective_limit()
        st = self.limit
        if eff is None or not self.profiles_ready.is_set():
            return DUE_NOT
        if st.sent is None:
            return DUE_OTHER if now >= st.retry_at else DUE_NOT
        if eff < st.sent - 1e-9:
            return DUE_DECREASE
        sig = self.ocpp.significance_a if self.cfg.unit == "A" else self.ocpp.significance_w
        if eff - st.sent >= max(sig, 0.1) - 1e-9:
            return DUE_OTHER
        return DUE_OTHER if now >= st.sent_at + self.ocpp.lease_s - self.ocpp.renew_before_s else DUE_NOT

    async def push_limit(self, *, force: bool = False) -> None:
        written = self.submit_limit(self._clock(), force=force)
        if written is not None:
            await asyncio.wait({written}, timeout=self.ocpp.call_timeout_s)

    def push_soon(self) -> None:
        """The CMS's limit changed: the limit profile again (merged), as a task."""
        self._spawn(self.push_limit(force=True))

    def submit_limit(
        self, now: float, *, force: bool = False, held: list[HeldLimit] | None = None
    ) -> asyncio.Future[None] | None:
        """Queue the limit profile if it is due. Returns a future done when the frame went out (or when it
        followed the CALL in flight, or was superseded); None when nothing is due or it goes out behind a CALL
        in flight. A frame that raises the limit above what the store records, or lengthens the lease beyond
        it, waits until its lease record is committed (see :mod:`~gateway.ocpp_proxy.leases`); a decrease
        never does. With ``held``, such a frame is appended there for the caller to release (or drop) instead
        of going out by itself once committed."""
        if not force and not self.needs_send(now):
            return None
        eff = self.effective_limit()
        if eff is None or not self.profiles_ready.is_set():
            return None
        st = self.limit
        before = (st.sent, st.sent_at)
        decrease = st.sent is not None and eff < st.sent - 1e-9
        st.sent, st.sent_at, st.ok = eff, now, False
        call = self.limit_json(self.caps.mode, eff)  # built first: its lease starts no later than its record's
        self._gen += 1
        if st.durable is not None:
            lease_until = now + self.ocpp.lease_s
            st.reserve(eff, lease_until, now)
            gate = st.durable(eff, lease_until, decrease)
            if gate is not None:
                h = HeldLimit(self, self._gen, call, eff, now, gate, before)
                if held is not None:
                    held.append(h)
                else:
                    gate.add_done_callback(lambda _: h.release())
                return gate
        return self._write_limit(call, eff, now)

    def _write_limit(self, call: tuple[str, str], limit: float, built_at: float) -> asyncio.Future[None] | None:
        out = self._own_json(*call, "limit")
        self._track_limit(out, limit, built_at, self._limit_answered)
        return out.written if self._channel.in_flight is out else None

    async def failsafe_now(self) -> bool:
        """Set the limit profile to the fail-safe limit and wait for the answer."""
        self._gen += 1  # a held increase must not follow it
        self.limit.target = self.cfg.failsafe_limit
        self.limit.sent = self.cfg.failsafe_limit
        self.limit.sent_at = self._clock()
        limit = self.cfg.failsafe_limit
        return bool(await self._set_profile(lambda mode: self.limit_call(mode, limit), "limit", wait=True, limit=limit))

    async def test_lease(self, lease_s: int) -> bool:
        """Commissioning: the limit in force again, as a profile lasting only lease_s (then the fail-safe
        profile governs); the next allocation or renewal replaces it (see :meth:`resume_limit`)."""
        limit = self.limit.sent
        if limit is None:
            return False
        call = self.limit_call(self.caps.mode, limit, duration_s=int(lease_s))
        self._gen += 1
        self.limit.sent_at = self._clock()  # a renewal now would end the test: it is due a lease from now
        try:
            ans = await self._own_call(call, None).result
        except CallFailed:
            return False
        return _accepted(ans)

    async def resume_limit(self) -> None:
        """Send the limit profile again now (with its full lease)."""
        self.limit.sent = None
        await self.push_limit(force=True)


