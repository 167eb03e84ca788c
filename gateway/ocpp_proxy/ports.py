"""What a charger's session needs from its owner, as narrow ports (the session never sees the controller)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Protocol

Clock = Callable[[], float]  # monotonic seconds
Spawn = Callable[[Coroutine[Any, Any, Any]], "asyncio.Task[Any]"]  # a task owned by the session (cancelled on close)


class SessionEvents(Protocol):
    """Where a session reports: operator events, a charger whose snapshot changed, what its boot said."""

    def event(self, name: str, **fields: object) -> None: ...

    def changed(self, charger_id: str) -> None: ...

    def booted(self, charger_id: str, payload: dict[str, Any]) -> None: ...


@dataclass(frozen=True)
class EventHooks:
    """A :class:`SessionEvents` made of three callables."""

    on_event: Callable[[str, dict[str, object]], None]
    on_changed: Callable[[str], None]
    on_booted: Callable[[str, dict[str, Any]], None]

    def event(self, name: str, **fields: object) -> None:
        self.on_event(name, fields)

    def changed(self, charger_id: str) -> None:
        self.on_changed(charger_id)

    def booted(self, charger_id: str, payload: dict[str, Any]) -> None:
        self.on_booted(charger_id, payload)
