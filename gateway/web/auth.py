"""Sessions, CSRF tokens and the login rate limit (in memory: a restart logs everyone out)."""

from __future__ import annotations

import secrets
from collections import deque
from dataclasses import dataclass

from gateway.web.users import Role

SESSION_COOKIE = "ems_session"
MAX_SESSIONS = 1000


@dataclass(frozen=True)
class Session:
    user: str
    role: Role
    csrf: str
    expires_at: float  # monotonic


ANONYMOUS = Session(user="anonymous", role="viewer", csrf="", expires_at=float("inf"))


class Sessions:
    def __init__(self, lifetime_s: float) -> None:
        self.lifetime_s = lifetime_s
        self._by_token: dict[str, Session] = {}

    def create(self, user: str, role: Role, now: float) -> tuple[str, Session]:
        self._expire(now)
        if len(self._by_token) >= MAX_SESSIONS:  # the oldest goes
            self._by_token.pop(next(iter(self._by_token)))
        token = secrets.token_urlsafe(32)
        s = Session(user, role, secrets.token_urlsafe(24), now + self.lifetime_s)
        self._by_token[token] = s
        return token, s

    def get(self, token: str | None, now: float) -> Session | None:
        if not token:
            return None
        s = self._by_token.get(token)
        if s is None:
            return None
        if now >= s.expires_at:
            del self._by_token[token]
            return None
        return s

    def drop(self, token: str | None) -> None:
        if token:
            self._by_token.pop(token, None)

    def drop_user(self, user: str) -> None:
        for t in [t for t, s in self._by_token.items() if s.user == user]:
            del self._by_token[t]

    def _expire(self, now: float) -> None:
        for t in [t for t, s in self._by_token.items() if now >= s.expires_at]:
            del self._by_token[t]


class RateLimit:
    """At most ``per_min`` failed logins per key (client address, user name) in any 60 s."""

    def __init__(self, per_min: int, window_s: float = 60.0) -> None:
        self.per_min = per_min
        self.window_s = window_s
        self._fails: dict[str, deque[float]] = {}

    def retry_after(self, keys: tuple[str, ...], now: float) -> float:
        """0 when a login may be tried now, else the seconds to wait."""
        wait = 0.0
        for k in keys:
            q = self._fails.get(k)
            if q is None:
                continue
            while q and now - q[0] >= self.window_s:
                q.popleft()
            if len(q) >= self.per_min:
                wait = max(wait, self.window_s - (now - q[0]))
        return wait

    def failed(self, keys: tuple[str, ...], now: float) -> None:
        if len(self._fails) > 10_000:  # bounded: forget the quiet ones
            self._fails = {k: q for k, q in self._fails.items() if q and now - q[-1] < self.window_s}
        for k in keys:
            self._fails.setdefault(k, deque(maxlen=self.per_min * 2)).append(now)
