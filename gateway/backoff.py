"""The one backoff: exponential delays, capped, with optional full jitter.

Used by the task supervisor, the meter pollers (between polls of a failing meter and between a poll's
retries) and the CMS link (reconnects).
"""

from __future__ import annotations

import random


def exponential(base_s: float, attempt: int, cap_s: float) -> float:
    """``base_s * 2**attempt``, at most ``cap_s`` (attempt 0 is ``base_s``)."""
    return min(cap_s, base_s * 2.0 ** min(max(attempt, 0), 30))


class Backoff:
    """Exponential backoff between ``min_s`` and ``max_s``; with ``jitter`` each delay is drawn uniformly
    between half the minimum and the exponential delay (full jitter), so reconnecting peers spread out."""

    def __init__(self, min_s: float, max_s: float, *, jitter: bool = True, rng: random.Random | None = None) -> None:
        self.min_s = min_s
        self.max_s = max_s
        self.jitter = jitter
        self.attempt = 0
        self.rng = rng or random.Random()

    def reset(self) -> None:
        self.attempt = 0

    def next_delay(self) -> float:
        cap = exponential(self.min_s, self.attempt, self.max_s)
        self.attempt += 1
        return self.rng.uniform(self.min_s * 0.5, cap) if self.jitter else cap
