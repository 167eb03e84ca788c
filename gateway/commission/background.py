"""A commissioning run inside the daemon (the web page's technician action), and the reports on disk.

:class:`Background` runs :func:`gateway.commission.runner.commission` as a task of its own, off the request
that started it, against the control socket's handler called in-process (a :class:`~gateway.commission.Link`).
One run at a time; the disruptive steps are refused while the site is not in normal operation (as the CLI's
steps refuse). A failing run never touches the daemon: it ends as ``failed`` with the reason. Cancelling it
(the daemon stopping) clears the test inputs on the way out (the runner's ``finally``).

:func:`list_reports` and :func:`report_file` read ``state_dir/commission/``: one directory per run
(``report-<stamp>`` or ``verify-<stamp>``) with report.html, report.pdf, report.json; a name outside that
layout is never served.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import structlog

from gateway.commission import CommissionError, Link

log = structlog.get_logger(__name__)

STEPS = ("inventory", "wiring", "load-test", "failsafe-test", "verify")
DISRUPTIVE = frozenset({"wiring", "load-test", "failsafe-test"})
REPORT_FILES = {"report.html": "text/html", "report.pdf": "application/pdf", "report.json": "application/json"}
_REPORT_ID = re.compile(r"^(report|verify)-\d{8}T\d{6}Z$")

EventSink = Callable[..., None]


class Refused(Exception):
    """The run cannot start: ``status`` is the HTTP-like code (400 a bad request, 409 busy or in fail-safe)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


class _EventLink:
    """The handler, with the runner's findings (``event`` commands) also told to ``on_event``."""

    def __init__(self, link: Link, on_event: EventSink) -> None:
        self.link, self.on_event = link, on_event

    async def handle(self, req: Mapping[str, Any]) -> dict[str, Any]:
        ans = await self.link.handle(req)
        if req.get("cmd") == "event" and ans.get("ok"):
            self.on_event(str(req.get("name")), **dict(req.get("fields") or {}))
        return ans


def parse_steps(body: Mapping[str, Any]) -> tuple[str, ...]:
    """The steps a request asks for (``{"steps": [...]}``; default ``["verify"]``). Raises Refused(400)."""
    steps = body.get("steps", ["verify"])
    if not isinstance(steps, list) or not steps or not all(isinstance(s, str) for s in steps):
        raise Refused(400, f"steps: a non-empty list of {', '.join(STEPS)}")
    unknown = sorted(set(steps) - set(STEPS))
    if unknown:
        raise Refused(400, f"steps: unknown {', '.join(unknown)} (known: {', '.join(STEPS)})")
    if "verify" in steps and len(set(steps)) > 1:
        raise Refused(400, "steps: verify runs alone (it is the non-disruptive re-check)")
    return tuple(s for s in STEPS if s in steps)


class Background:
    def __init__(self, link: Link, *, hold_s: float = 60.0, poll_s: float = 0.5, pdf: bool = True,
                 clock: Callable[[], float] = time.time) -> None:
        self.link = link
        self.hold_s, self.poll_s, self.pdf = hold_s, poll_s, pdf
        self.clock = clock
        self._task: asyncio.Task[None] | None = None
        self.state: dict[str, Any] = {"state": "idle"}

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def start(
        self, steps: Sequence[str], user: str, on_event: EventSink, *, pdf: bool | None = None
    ) -> dict[str, Any]:
        """Start a run (raises Refused); returns the state document."""
        if self.running:
            raise Refused(409, f"a commissioning run is in progress (started by {self.state.get('user')})")
        disruptive = sorted(DISRUPTIVE.intersection(steps))
        if disruptive:
            st = await self.link.handle({"cmd": "status"})
            mode = st.get("mode")
            if mode != "normal":
                raise Refused(409, f"refused: the site is in {mode}: {', '.join(disruptive)} need normal operation")
        self.state = {"state": "running", "steps": list(steps), "user": user, "started_at": self.clock(),
                      "current": None, "steps_done": [], "verdict": None, "todo": [], "report": None, "error": None}
        on_event("commissioning_started", user=user, steps=list(steps))
        log.warning("commissioning_started", user=user, steps=list(steps), via="web")
        self._task = asyncio.get_running_loop().create_task(
            self._run(tuple(steps), on_event, self.pdf if pdf is None else pdf), name="commissioning")
        return self.status()

    def status(self) -> dict[str, Any]:
        doc: dict[str, Any] = json.loads(json.dumps(self.state, default=str))  # a copy, safe to hand out
        return doc

    async def _run(self, steps: tuple[str, ...], on_event: EventSink, pdf: bool) -> None:
        from gateway.commission.report import verdict
        from gateway.commission.runner import Options, commission

        def progress(name: str, entry: dict[str, Any] | None) -> None:
            if entry is None:
                self.state["current"] = name
            else:
                self.state["current"] = None
                self.state["steps_done"].append(entry)

        verify = "verify" in steps
        opts = Options(inventory="inventory" in steps, wiring="wiring" in steps, load_test="load-test" in steps,
                       failsafe_test="failsafe-test" in steps, poll_s=self.poll_s, hold_s=self.hold_s,
                       recover_s=self.hold_s)
        end: dict[str, Any] = {}
        try:
            result, files = await commission(_EventLink(self.link, on_event), opts, verify=verify, pdf=pdf,
                                             progress=progress)
            ok, todo = verdict(result)
            report = Path(files["html"]).parent.name
            self.state.update(state="done", verdict="pass" if ok else "action needed", todo=todo, report=report,
                              pdf_problem=files.get("pdf_problem"))
            end = {"verdict": self.state["verdict"], "report": report, "actions": len(todo)}
        except asyncio.CancelledError:
            self.state.update(state="cancelled", error="cancelled (the daemon is stopping, or a technician)")
            end = {"verdict": None, "error": "cancelled"}
            raise
        except (CommissionError, Exception) as exc:  # a failing run never touches the daemon
            log.warning("commissioning_failed", error=repr(exc))
            self.state.update(state="failed", error=str(exc) or repr(exc))
            end = {"verdict": None, "error": self.state["error"]}
        finally:
            self.state["ended_at"] = self.clock()
            self.state["current"] = None
            with contextlib.suppress(Exception):
                on_event("commissioning_ended", user=self.state.get("user"), state=self.state["state"], **end)
            log.warning("commissioning_ended", state=self.state["state"], **end)

    async def cancel(self, timeout_s: float = 10.0) -> None:
        """Cancel a run and wait (bounded) for it to clear its test inputs."""
        task = self._task
        if task is None or task.done():
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, TimeoutError, Exception):
            async with asyncio.timeout(timeout_s):
                await task
        with contextlib.suppress(Exception):  # whatever the runner managed: nothing of the test stays
            await asyncio.shield(self.link.handle({"cmd": "clear", "reason": "commissioning cancelled"}))


def reports_dir(state_dir: str | Path) -> Path:
    return Path(state_dir) / "commission"


def list_reports(state_dir: str | Path, limit: int = 100) -> list[dict[str, Any]]:
    """The reports under state_dir/commission/, newest first: id, kind, date, verdict, files (blocking IO)."""
    from gateway.commission.report import verdict

    base = reports_dir(state_dir)
    try:
        dirs = sorted((p for p in base.iterdir() if _REPORT_ID.match(p.name) and p.is_dir()),
                      key=lambda p: p.name.split("-", 1)[1], reverse=True)[:limit]
    except OSError:
        return []
    out = []
    for d in dirs:
        row: dict[str, Any] = {"id": d.name, "kind": d.name.split("-", 1)[0], "date": None, "verdict": None,
                               "actions": None, "files": [f for f in REPORT_FILES if (d / f).is_file()]}
        try:
            result = json.loads((d / "report.json").read_text(encoding="utf-8"))
            ok, todo = verdict(result)
            row.update(date=result.get("date"), verdict="pass" if ok else "action needed", actions=len(todo))
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            pass
        out.append(row)
    return out


def report_file(state_dir: str | Path, report_id: str, name: str) -> Path | None:
    """The path of one report's file, or None: only ids and names of the layout, never a path from outside."""
    if not _REPORT_ID.match(report_id) or name not in REPORT_FILES:
        return None
    base = reports_dir(state_dir).resolve()
    p = (base / report_id / name).resolve()
    if p.parent.parent != base or not p.is_file():
        return None
    return p
