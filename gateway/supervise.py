"""Supervised tasks: a task that fails is logged and restarted after a delay.

Cancellation propagates (it is how the root TaskGroup stops everything); any other
exception is logged with the task's name and the task is started again after
``restart_delay_s``, growing up to ``max_delay_s`` while it keeps failing quickly.
With ``give_up_after``, that many quick failures in a row raise :class:`FatalError`:
the daemon then applies the fail-safe and exits non-zero (systemd restarts it).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import structlog

from gateway.backoff import Backoff

log = structlog.get_logger(__name__)


class FatalError(Exception):
    """The daemon cannot go on: it applies every charger's fail-safe limit, then exits non-zero."""


async def supervise(
    name: str,
    factory: Callable[[], Awaitable[None]],
    *,
    restart_delay_s: float = 1.0,
    max_delay_s: float = 30.0,
    healthy_after_s: float = 60.0,
    clock: Callable[[], float] | None = None,
    on_failure: Callable[[str, BaseException], None] | None = None,
    give_up_after: int | None = None,
) -> None:
    """Run ``factory()`` until cancelled, restarting it whenever it ends or raises."""
    loop = asyncio.get_running_loop()
    now = clock or loop.time
    backoff = Backoff(restart_delay_s, max_delay_s, jitter=False)
    delay = backoff.next_delay()
    failures = 0  # quick failures in a row
    while True:
        started = now()
        try:
            await factory()
            log.warning("task_ended", task=name, restart_in_s=delay)
        except asyncio.CancelledError:
            raise
        except FatalError:
            raise
        except Exception as exc:  # a supervised task must never take the daemon down by itself
            failures = 1 if now() - started >= healthy_after_s else failures + 1
            if give_up_after is not None and failures >= give_up_after:
                log.error("task_failed", task=name, error=repr(exc), failures=failures, exc_info=exc)
                raise FatalError(f"task {name} failed {failures} times in a row: {exc!r}") from exc
            log.error("task_failed", task=name, error=repr(exc), restart_in_s=delay, exc_info=exc)
            if on_failure is not None:
                try:
                    on_failure(name, exc)
                except Exception:  # pragma: no cover - a failing hook must not stop supervision
                    log.exception("task_failure_hook_failed", task=name)
        if now() - started >= healthy_after_s:
            backoff.reset()
            delay = backoff.next_delay()
        await asyncio.sleep(delay)
        delay = backoff.next_delay()
