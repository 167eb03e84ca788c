"""One charger's limit profile: what was decided and sent, what the charger answered (the actuation feedback)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from gateway.model import Actuation

# how a limit profile's CALL ended (for the actuation feedback)
ACCEPTED, REJECTED, UNANSWERED = 0, 1, 2


class LimitState:
    """One charger's limit profile: what was decided and sent, and what the charger answered.

    Kept by the controller across connections (an offline charger keeps its leased limit); the
    per-connection part (capabilities, fail-safe, a limit accepted on this socket) is reset on connect.
    """

    def __init__(self) -> None:
        self.target: float | None = None  # last allocation (charger unit)
        self.sent: float | None = None  # limit in the last profile written
        self.sent_at: float = 0.0  # clock() when written
        self.ok = False  # the charger accepted it
        self.retry_at: float = 0.0
        # actuation feedback (times are clock())
        self.caps_learned = False
        self.failsafe_ok = False
        self.confirmed = False  # a limit profile was accepted on this connection
        self.accepted: float | None = None
        self.accepted_at: float | None = None
        self.lease_until: float | None = None
        self.pending: float | None = None
        self.pending_since: float | None = None
        self.pending_id: str | None = None
        self.rejected_at: float | None = None
        self.unsure: tuple[float, float] | None = None  # (limit, queued at) of a CALL written, never answered
        self._act: Actuation | None = None
        self._act_online = False
        # the highest limit the charger may hold from us and until when (clock()), over what was sent and
        # what was accepted and has not lapsed; on_bound is told every change (the controller persists it)
        self.bound: tuple[float, float] | None = None
        self.failsafe_ever = False  # a fail-safe profile was accepted (in this life or an earlier one)
        self.on_bound: Callable[[LimitState], None] | None = None
        # whether a frame giving (limit, until, is a decrease) may go out now (None) or once the returned future
        # is done (its record committed: a restart then knows the charger may hold it); the lease keeper's
        self.durable: Callable[[float, float, bool], asyncio.Future[None] | None] | None = None

    def restore(self, limit: float, lease_until: float, failsafe: bool, now: float) -> None:
        """An earlier life's bound (or a charger's maximum when none is known): the charger may hold
        ``limit`` until ``lease_until``; it counts as accepted now, so a limit accepted later is a decrease
        the EV follows."""
        self.accepted, self.accepted_at, self.lease_until = limit, now, lease_until
        self.bound = (limit, lease_until)
        self.failsafe_ever = failsafe
        self._act = None

    def reserve(self, limit: float, until: float, now: float) -> None:
        """A limit CALL is built and will be written once its bound is durable: widen the bound now."""
        self._widen(limit, until, now)

    def _widen(self, limit: float, until: float, now: float) -> None:
        b = self.bound
        nb = (limit, until) if b is None or now >= b[1] else (max(b[0], limit), max(b[1], until))
        self._set_bound(nb)

    def _set_bound(self, nb: tuple[float, float]) -> None:
        if nb != self.bound:
            self.bound = nb
            if self.on_bound is not None:
                self.on_bound(self)

    def connected(self) -> None:
        """A new socket: nothing is known to be installed on it yet."""
        self.caps_learned = self.failsafe_ok = self.confirmed = False
        self._act = None

    def installing(self, caps_learned: bool) -> None:
        """The profiles are being (re)installed: not controlled until the charger accepted them again."""
        self.caps_learned = caps_learned
        self.failsafe_ok = self.confirmed = False
        self._act = None

    def learned(self, ok: bool) -> None:
        self.caps_learned = ok
        self._act = None

    def failsafe_answered(self, ok: bool) -> None:
        self.failsafe_ok = ok
        self._act = None
        if ok and not self.failsafe_ever:
            self.failsafe_ever = True
            if self.on_bound is not None:
                self.on_bound(self)

    def queued(self, message_id: str, limit: float, now: float, lease_until: float | None = None) -> None:
        """A limit CALL is about to be written; with ``lease_until`` (its lease end) it widens the bound
        before the frame leaves."""
        self.pending, self.pending_since, self.pending_id = limit, now, message_id
        self._act = None
        if lease_until is not None:
            self._widen(limit, lease_until, now)

    def answered(
        self, message_id: str, limit: float, queued_at: float, lease_until: float, outcome: int, now: float
    ) -> None:
        """A limit CALL ended. A CALL written but never answered may have been applied: its limit stays
        pending (unconfirmed) until a later acceptance tells what the charger holds."""
        if outcome == ACCEPTED:
            self.accepted, self.accepted_at, self.lease_until = limit, now, lease_until
            self.confirmed = True
            self.unsure = None
            if message_id == self.pending_id:  # nothing later is in flight: the charger holds this one
                self._set_bound((limit, lease_until))
        else:
            self.rejected_at = now
            if outcome == UNANSWERED:
                self.unsure = (limit, queued_at)
        if message_id == self.pending_id:
            if outcome == UNANSWERED:
                pass  # stays pending
            elif outcome == REJECTED and self.unsure is not None:
                self.pending, self.pending_since = self.unsure
                self.pending_id = None
            else:
                self.pending = self.pending_since = self.pending_id = None
        self._act = None

    def actuation(self, now: float, online: bool) -> Actuation:
        """The allocator's feedback (cached: rebuilt only on a change or when the lease lapses)."""
        act = self._act
        if act is not None and online == self._act_online and not (act.controlled and now >= (act.lease_until or 0.0)):
            return act
        controlled = (
            online
            and self.caps_learned
            and self.failsafe_ok
            and self.confirmed
            and self.lease_until is not None
            and now < self.lease_until
        )
        act = Actuation(
            controlled=controlled,
            # offline, the fail-safe profile an earlier connection (or life) installed is still on it
            failsafe_installed=self.failsafe_ok or (not online and self.failsafe_ever),
            accepted_limit=self.accepted,
            accepted_at=self.accepted_at,
            pending_limit=self.pending,
            pending_since=self.pending_since,
            rejected_at=self.rejected_at,
            lease_until=self.lease_until,
        )
        self._act, self._act_online = act, online
        return act
