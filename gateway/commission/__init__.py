"""Commissioning: ``ems-gateway commission`` against the running daemon (issue 17).

The steps (:mod:`.runner`) talk to the daemon through a :class:`Link` (the control socket's client,
or :class:`gateway.ctl.CtlHandler` in-process); the analyses (:mod:`.inventory`, :mod:`.wiring`,
:mod:`.loadtest`, :mod:`.verify`) are pure functions of what was recorded; :mod:`.report` renders
the inspector's report (HTML with inline SVG, PDF through headless chromium).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol


class Link(Protocol):
    async def handle(self, req: Mapping[str, Any]) -> dict[str, Any]: ...


class CommissionError(Exception):
    """A step cannot run (the daemon refused, or the site is not in a state to test)."""
