"""The commissioning steps against the daemon, through a :class:`~gateway.commission.Link`.

Every step is optional, logged, and leaves the site as it found it: the test inputs it sets in the
daemon are time-limited there (they end by themselves if this process dies) and are cleared in a
``finally`` here (Ctrl-C, a timeout, an error).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog

from gateway.commission import CommissionError, Link, inventory, loadtest, wiring

log = structlog.get_logger(__name__)

# told when a step starts (name, None) and when it ends (name, its entry in result["steps"])
Progress = Callable[[str, "dict[str, Any] | None"], None]


@dataclass(frozen=True)
class Options:
    inventory: bool = True
    wiring: bool = False
    load_test: bool = False
    failsafe_test: bool = False
    poll_s: float = 0.5
    hold_s: float = 60.0  # how long a step waits for the chargers to follow (EVs: 5-11 s, reports 10-60 s)
    recover_s: float = 60.0
    load_a: float | None = None  # the simulated load (None: enough to cut the EV current to 40 %)
    sub_circuits: bool = True  # a load test per metered circuit below the service too
    sign_check: bool = False  # the non-disruptive part of the wiring step (--verify)
    lease_s: int = 10  # the fail-safe test's lease


async def ask(link: Link, cmd: str, **args: Any) -> dict[str, Any]:
    ans = await link.handle({"cmd": cmd, **args})
    if not ans.get("ok"):
        raise CommissionError(f"{cmd}: {ans.get('error')}")
    return ans


async def clear(link: Link, reason: str) -> None:
    """Clear every test input; survives a cancellation of the caller (Ctrl-C while clearing)."""
    with contextlib.suppress(Exception):
        await asyncio.shield(link.handle({"cmd": "clear", "reason": reason}))


async def run(link: Link, opts: Options, progress: Progress | None = None) -> dict[str, Any]:
    """All the selected steps; the result is what the report shows (JSON)."""
    info = await ask(link, "site")
    site = info["site"]
    result: dict[str, Any] = {
        "site": site,
        "version": info["version"],
        "config_hash": info["config_hash"],
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "steps": [],
    }
    status = await ask(link, "status")
    result["mode"] = status["mode"]
    result["status"] = {"circuits": status["circuits"]}
    try:
        if opts.inventory:
            with _step(result, "inventory", progress):
                result["inventory"] = {
                    "chargers": inventory.chargers(site, status),
                    "meters": inventory.meters(site, status),
                }
        if opts.sign_check and not opts.wiring:
            with _step(result, "wiring", progress):
                result["wiring"] = {"findings": [asdict(f) for f in wiring.sign_checks(site, status)], "steps": []}
        if opts.wiring:
            with _step(result, "wiring", progress):
                findings = wiring.sign_checks(site, status)
                steps = await phase_test(link, site, opts)
                findings += wiring.analyse_phase_steps(site, steps)
                result["wiring"] = {"findings": [asdict(f) for f in findings], "steps": [asdict(s) for s in steps]}
        if opts.load_test:
            with _step(result, "load_test", progress):
                result["load_tests"] = []
                for c in site["circuits"]:
                    if not c.get("meter") or (c["parent"] is not None and not opts.sub_circuits):
                        continue
                    result["load_tests"].append(await load_test(link, site, c, opts))
        if opts.failsafe_test:
            with _step(result, "failsafe_test", progress):
                result["failsafe_test"] = await failsafe_check(link, site, opts.lease_s)
    finally:
        await clear(link, "commissioning ended")
    return result


LAST = "last.json"


def last_path(state_dir: str | Path) -> Path:
    return Path(state_dir) / "commission" / LAST


async def commission(
    link: Link, opts: Options, *, report_dir: Path | None = None, verify: bool = False, pdf: bool = True,
    progress: Progress | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Run the steps, write the report (HTML, JSON, PDF) and, for a full commissioning, keep its JSON as the
    baseline under the state directory; with ``verify``, compare with that baseline (changes raise events)."""
    from gateway.commission import report
    from gateway.commission import verify as verify_mod

    if verify:
        opts = Options(inventory=True, sign_check=True, poll_s=opts.poll_s)
    result = await run(link, opts, progress)
    state_dir = Path(result["site"]["state_dir"])
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    base = last_path(state_dir)
    if verify:
        previous = _read_json(base)
        changes = verify_mod.compare(previous, result) if previous is not None else []
        result["verify"] = {"previous_date": previous.get("date") if previous else None,
                            "changes": [c["text"] for c in changes] if previous
                            else ["no earlier report to compare: run a full `ems-gateway commission` first"]}
        for c in changes:
            await link.handle({"cmd": "event", "name": "commission_change", "fields": c})
    out_dir = report_dir or state_dir / "commission" / (("verify-" if verify else "report-") + stamp)
    files = await report.write_report(result, out_dir, pdf=pdf)
    if not verify and opts.inventory:
        try:
            report.write_json(result, base)
            files["baseline"] = str(base)
        except OSError as exc:
            files["baseline_problem"] = f"{base}: {exc}"
    return result, files


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


@contextlib.contextmanager
def _step(result: dict[str, Any], name: str, progress: Progress | None = None) -> Any:
    t0 = time.monotonic()
    log.info("commission_step_started", step=name)
    if progress is not None:
        progress(name, None)
    try:
        yield
    except CommissionError as exc:
        log.warning("commission_step_failed", step=name, error=str(exc))
        entry: dict[str, Any] = {"step": name, "ok": False, "error": str(exc), "s": round(time.monotonic() - t0, 1)}
    else:
        log.info("commission_step_ended", step=name, s=round(time.monotonic() - t0, 1))
        entry = {"step": name, "ok": True, "s": round(time.monotonic() - t0, 1)}
    result["steps"].append(entry)
    if progress is not None:
        progress(name, entry)


class Recorder:
    """Samples the daemon's status every poll_s into ``samples`` while it runs."""

    def __init__(self, link: Link, site: dict[str, Any], meter: str | None, poll_s: float) -> None:
        self.link, self.site, self.meter, self.poll_s = link, site, meter, poll_s
        self.samples: list[dict[str, Any]] = []
        self.last: dict[str, Any] = {}
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Recorder:
        await self.sample()
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    async def sample(self) -> dict[str, Any]:
        st = await ask(self.link, "status")
        self.last = st
        self.samples.append(loadtest.sample_of(self.site, st, self.meter))
        return st

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.poll_s)
            with contextlib.suppress(CommissionError):
                await self.sample()

    def meter_mean(self, since: float) -> list[float] | None:
        rows = [s["meter_a"] for s in self.samples if s["t"] >= since and s["meter_a"] is not None]
        if not rows:
            return None
        return [sum(r[i] for r in rows) / len(rows) for i in range(len(rows[0]))]

    def steady(self, window_s: float, tolerance_a: float = 1.0) -> bool:
        """Over the last window_s: the meter's every phase moved less than tolerance_a, and no charger's limit
        or reported draw changed by more than that."""
        since = self.samples[-1]["t"] - window_s
        recent = [s for s in self.samples if s["t"] >= since]
        rows = [s["meter_a"] for s in recent if s["meter_a"] is not None]
        if len(rows) < 3 or self.samples[0]["t"] > since:
            return False
        if any(max(r[i] for r in rows) - min(r[i] for r in rows) > tolerance_a for i in range(len(rows[0]))):
            return False
        for ch in self.site["chargers"]:
            tol = tolerance_a if ch["unit"] == "A" else 0.02 * float(ch["max_limit"])
            for key in ("limit", "draw"):
                vals = [v for s in recent if (v := s["chargers"][ch["id"]][key]) is not None]
                if vals and max(vals) - min(vals) > tol:
                    return False
        return True

    async def wait(self, cond: Any, timeout_s: float) -> bool:
        """Until cond(last sample) holds; False after timeout_s."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                while not cond(self.samples[-1]):
                    await asyncio.sleep(self.poll_s)
                return True
        return False


async def load_test(link: Link, site: dict[str, Any], circuit: dict[str, Any], opts: Options) -> dict[str, Any]:
    """Inject a simulated load on the circuit's meter, time the chargers' response, remove it, time the recovery."""
    meter = circuit["meter"]
    test: dict[str, Any] = {"circuit": circuit["id"], "meter": meter, "samples": []}
    async with Recorder(link, site, meter, opts.poll_s) as pre:  # the previous step may still be settling
        window = max(3.0, 4 * opts.poll_s)
        await asyncio.sleep(window)
        test["steady_before"] = await pre.wait(
            lambda s: pre.steady(window) and estimate_settled(site, pre.last, circuit["id"]), opts.hold_s)
    st = await ask(link, "status")
    if st["mode"] != "normal":
        raise CommissionError(f"refused: the site is in {st['mode']}")
    cs = st["circuits"].get(circuit["id"])
    if cs is None or cs["measured_a"] is None:
        test["skipped"] = "no measurement on this circuit"
        return test
    ev_a = max(m - n for m, n in zip(cs["measured_a"], cs["non_ev_a"], strict=True))
    if opts.load_a is not None:
        load = opts.load_a
    else:
        if ev_a < 2.0:
            test["skipped"] = f"the chargers beneath draw {ev_a:.1f} A: the test needs EVs charging"
            return test
        load = max(1.0, min(cs["headroom_a"]) - 0.4 * ev_a)
    load = round(min(load, circuit["limit_a"]), 1)
    test.update(load_a=load, ev_before_a=ev_a, limit_a=circuit["limit_a"], margin_a=circuit["margin_a"])
    async with Recorder(link, site, meter, opts.poll_s) as rec:
        test["samples"] = rec.samples
        try:
            await asyncio.sleep(2 * opts.poll_s)
            ans = await ask(link, "test_load", meter=meter, load_a=load, duration_s=opts.hold_s + 30.0)
            test["t_on"] = ans["now"]
            log.info("commission_load_on", meter=meter, load_a=load)
            # at least the EVs' response allowance, so that the plot shows where the site settles
            await asyncio.sleep(min(opts.hold_s, max(3.0, float(site["control"]["ev_response_s"]))))
            await rec.wait(lambda s: loadtest.all_settled(site, test, s["t"]), opts.hold_s)
        finally:
            ans = await link.handle({"cmd": "clear", "reason": "load test done"})
        test["t_off"] = ans.get("now", rec.samples[-1]["t"])
        log.info("commission_load_off", meter=meter)
        await rec.wait(lambda s: loadtest.all_recovered(site, test), opts.recover_s)
        await asyncio.sleep(opts.poll_s)
    test["samples"] = list(rec.samples)
    test["results"] = loadtest.analyse(site, test)
    return test


def estimate_settled(site: dict[str, Any], status: dict[str, Any], circuit: str, tolerance_a: float = 2.0) -> bool:
    """The gateway's non-EV estimate of the circuit is the measured current less the chargers' draws again (it
    holds a drop for a while: a test load sized on a held estimate would be hidden by it)."""
    cs = status["circuits"].get(circuit)
    c = next((x for x in site["circuits"] if x["id"] == circuit), None)
    if cs is None or c is None or cs["measured_a"] is None:
        return True
    n = len(cs["measured_a"])
    chargers = {x["id"]: x for x in site["chargers"]}
    ev = [0.0] * n
    for cid in c["chargers"]:
        for p, a in enumerate(loadtest.line_draw_a(chargers[cid], status["chargers"].get(cid, {}), n)):
            ev[p] += a
    real = [m - e for m, e in zip(cs["measured_a"], ev, strict=True)]
    return all(abs(n - max(r, 0.0)) <= tolerance_a for n, r in zip(cs["non_ev_a"], real, strict=True))


async def phase_test(link: Link, site: dict[str, Any], opts: Options) -> list[wiring.PhaseStep]:
    """Hold each single-phase AC charger that is drawing at 0 A, then release it; see which meter phase moves.

    The other chargers are held at their current limits meanwhile (an override only lowers: none rises)."""
    steps: list[wiring.PhaseStep] = []
    st = await ask(link, "status")
    for ch in site["chargers"]:
        if ch["kind"] != "ac" or len(ch["line_phases"]) != 1:
            continue
        cst = st["chargers"].get(ch["id"], {})
        metered = wiring.metered_circuit(site, ch["circuit"])
        if metered is None or not cst.get("online"):
            continue
        draw = loadtest.draw_of(ch, cst) or 0.0
        if draw < wiring.MIN_STEP_A:
            continue
        try:
            steps.append(await _phase_step(link, site, ch, metered[1], opts))
        finally:
            await clear(link, "phase step done")
    return steps


async def _phase_step(
    link: Link, site: dict[str, Any], ch: dict[str, Any], meter: str, opts: Options
) -> wiring.PhaseStep:
    cid = ch["id"]
    async with Recorder(link, site, meter, opts.poll_s) as rec:
        st = rec.last
        hold = 2 * opts.hold_s + 30.0
        for other, ost in st["chargers"].items():
            if other != cid and ost.get("limit") is not None:
                await ask(link, "override", charger=other, limit=ost["limit"], duration_s=hold)
        settle = max(3.0, 4 * opts.poll_s)
        await asyncio.sleep(settle)
        await rec.wait(lambda s: rec.steady(settle), opts.hold_s)  # EVs still ramping would blur the step
        t0 = rec.samples[-1]["t"]
        before = rec.meter_mean(t0 - settle)
        draw_before = rec.samples[-1]["chargers"][cid]["draw"] or 0.0
        on = await ask(link, "override", charger=cid, limit=0.0, duration_s=hold)
        t_low = on["now"]
        dropped = await rec.wait(
            lambda s: (c := s["chargers"][cid])["draw_at"] is not None and c["draw_at"] > t_low
            and (c["draw"] or 0.0) < 1.0,
            opts.hold_s,
        )
        note = "" if dropped else f"its draw did not fall within {opts.hold_s:g} s of a 0 A limit: it ignores its limit"
        await asyncio.sleep(settle)
        t1 = rec.samples[-1]["t"]
        low = rec.meter_mean(t1 - settle + opts.poll_s)
        draw_low = rec.samples[-1]["chargers"][cid]["draw"] or 0.0
        off = await ask(link, "override", charger=cid, limit=None)
        t_up = off["now"]
        await rec.wait(
            lambda s: (c := s["chargers"][cid])["draw_at"] is not None and c["draw_at"] > t_up
            and (c["draw"] or 0.0) >= 0.8 * draw_before,
            opts.hold_s,
        )
        await asyncio.sleep(settle)
        await rec.wait(lambda s: rec.steady(settle), opts.hold_s)
        after = rec.meter_mean(rec.samples[-1]["t"] - settle + opts.poll_s)
    if before is None or low is None or after is None:
        return wiring.PhaseStep(cid, meter, ch["line_phases"][0], [], [], 0.0, note="no meter reading")
    return wiring.PhaseStep(cid, meter, ch["line_phases"][0], before, low, draw_before - draw_low, note=note)


async def failsafe_check(link: Link, site: dict[str, Any], lease_s: int = 10) -> list[dict[str, Any]]:
    """Every charger: its fail-safe profile installed (the daemon's feedback); then, one at a time, a short test
    lease: the limit profile lapses, the composite schedule must show the fail-safe limit, then the limit again."""
    st = await ask(link, "status")
    out = []
    for ch in site["chargers"]:
        cst = st["chargers"].get(ch["id"], {})
        act = cst.get("actuation") or {}
        row: dict[str, Any] = {
            "charger": ch["id"], "failsafe_limit": ch["failsafe_limit"], "unit": ch["unit"],
            "installed": bool(act.get("failsafe_installed")), "tested": False, "passed": False,
        }
        if not cst.get("online"):
            row["note"] = "offline"
        else:
            ans = await link.handle({"cmd": "failsafe_test", "charger": ch["id"], "lease_s": lease_s})
            for _ in range(2):  # a new limit went out meanwhile (the site moved): once the site settles, again
                if not (ans.get("ok") and not ans.get("tested") and "repeat" in str(ans.get("reason"))):
                    break
                await asyncio.sleep(lease_s)
                ans = await link.handle({"cmd": "failsafe_test", "charger": ch["id"], "lease_s": lease_s})
            if not ans.get("ok"):
                row["note"] = str(ans.get("error"))
            else:
                row.update({k: ans.get(k) for k in ("tested", "limit", "before", "during", "after", "lease_s")})
                row["note"] = ans.get("reason", "")
                if ans.get("tested"):
                    row["passed"] = _near(ans.get("during"), ch["failsafe_limit"]) and _near(
                        ans.get("after"), ans.get("limit"))
                    if ans.get("during") is None:
                        row["note"] = "no composite schedule read back"
        out.append(row)
    return out


def _near(a: Any, b: Any) -> bool:
    return a is not None and b is not None and abs(float(a) - float(b)) <= max(0.5, 0.01 * abs(float(b)))
