"""The remote cap: a temporary, cloud-set limit on the service (demand response), one budget source.

Telemetry receives the command over MQTT and hands it to the budget service (`gateway.budget.service`), which
validates it here, holds the active cap, persists it and expires it. Its budget cap is named ``remote:<id>``
(``remote`` without an id), so a binding cap reads ``capped:remote:dr-42/L1``.

Command payload on ``<root>cmd/site_limit`` (JSON object):

* ``{"id": "dr-42", "limit_a": 2500, "duration_s": 900}``: cap every phase of the service at 2500 A
  for 900 s; ``limit_kw`` instead of ``limit_a`` gives the cap in kW of active power, and
  ``until`` (ISO 8601 with a UTC offset) instead of ``duration_s`` an absolute expiry.
* ``{"id": "dr-43", "clear": true}``: remove the active cap now.
* ``ts`` (ISO 8601 with a UTC offset, optional with MQTT 5, required with MQTT 3.1.1): when the command was
  sent; one older than MAX_COMMAND_AGE_S (or as far in the future) is refused as stale. MQTT 5 subscribes
  with retain-as-published, so a retained command is recognised and refused however it is delivered;
  MQTT 3.1.1 clears that flag on live delivery, so there the timestamp is what tells a fresh command.

A cap can only lower the limit: one above the configured service limit is refused. The
newest valid command replaces the previous cap. Anything else is refused with a reason.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from gateway import electrical
from gateway.errors import GatewayError
from gateway.model import BudgetCap

if TYPE_CHECKING:
    from gateway.config import ServiceConfig

MAX_DURATION_S = 86_400.0  # a cap lasts at most a day; the cloud re-sends to extend it
MAX_PAYLOAD_BYTES = 4096
MAX_ID_LEN = 64
MIN_DURATION_S = 1.0  # a shorter cap is a mistake (1e-300), not a command: refused, the active cap stands
MAX_COMMAND_AGE_S = 120.0  # a command whose ts is older than this (or as far ahead) is stale
MAX_ABS_NUMBER = 1e12
_KEYS = {"id", "limit_a", "limit_kw", "duration_s", "until", "clear", "ts"}
_ID_RE = re.compile(rb'"id"\s*:\s*"([^"\\]{1,64})"')


class CommandRejected(GatewayError):
    """A remote command was malformed or not allowed; ``reason`` says why."""

    def __init__(self, reason: str, request_id: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.request_id = request_id


@dataclass(frozen=True)
class CapRequest:
    """A validated site cap command."""

    request_id: str | None
    clear: bool = False
    limit_a: float | None = None  # as requested (one of limit_a / limit_kw)
    limit_kw: float | None = None
    duration_s: float = 0.0  # from now


@dataclass(frozen=True)
class RemoteCap:
    """The active cap. ``expires_at`` is on the monotonic clock, ``expires_wall`` on the wall clock."""

    limit_a: float  # per phase, converted, never above the service limit
    request_id: str | None
    requested_a: float | None
    requested_kw: float | None
    expires_at: float
    expires_wall: float
    set_wall: float


def kw_to_a(kw: float, service: ServiceConfig) -> float:
    """Active power (kW) spread over every line of the service -> current per line (A), nominal voltage.

    I = P / (sqrt(3) * V_LL) on three phases, P / V_LL on a split-phase service's two legs, P / V on one
    (`gateway.electrical.service_line_current_a`). At a power factor below 1 the real current for that
    power is higher, so this errs on the side of less current.
    """
    return electrical.service_line_current_a(service, kw * 1000.0)


def _number(obj: dict[str, Any], key: str, rid: str | None) -> float:
    v = obj[key]
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise CommandRejected(f"{key} must be a number, got {type(v).__name__}", rid)
    if isinstance(v, int) and abs(v) > MAX_ABS_NUMBER:
        raise CommandRejected(f"{key} out of range ({len(str(abs(v)))} digits)", rid)
    f = float(v)
    if not math.isfinite(f):
        raise CommandRejected(f"{key} must be a finite number", rid)
    if abs(f) > MAX_ABS_NUMBER:
        raise CommandRejected(f"{key} out of range ({f:g})", rid)
    return f


def request_id_of(payload: bytes) -> str | None:
    """The ``id`` of a command that cannot be parsed (too deep, a number too long, not JSON), if it has a
    readable one: a reply names its command whenever it can."""
    m = _ID_RE.search(payload[:MAX_PAYLOAD_BYTES])
    if m is None:
        return None
    try:
        return m.group(1).decode("utf-8")
    except UnicodeDecodeError:
        return None


def json_object(payload: bytes | str, limit: int = MAX_PAYLOAD_BYTES) -> dict[str, Any]:
    """A command's payload as a JSON object, bounded in size and depth (CommandRejected with the reason)."""
    raw = payload.encode() if isinstance(payload, str) else payload
    if len(raw) > limit:
        raise CommandRejected(f"payload too large ({len(raw)} bytes > {limit})", request_id_of(raw))
    try:
        obj = json.loads(raw.decode("utf-8"), parse_constant=reject_constant)
    except RecursionError:
        raise CommandRejected("not a JSON document: nested too deeply", request_id_of(raw)) from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise CommandRejected(f"not a JSON document: {str(exc)[:120]}", request_id_of(raw)) from None
    if not isinstance(obj, dict):
        raise CommandRejected(f"expected a JSON object, got {type(obj).__name__}")
    return obj


def parse_cap_command(
    payload: bytes, *, service: ServiceConfig, now_wall: float, require_ts: bool = False
) -> CapRequest:
    """Validate a ``cmd/site_limit`` payload; raise CommandRejected with the reason."""
    obj = json_object(payload)
    rid_raw = obj.get("id")
    rid: str | None = None
    if rid_raw is not None:
        if not isinstance(rid_raw, str) or not 0 < len(rid_raw) <= MAX_ID_LEN:
            raise CommandRejected(f"id must be a string of 1..{MAX_ID_LEN} characters")
        rid = rid_raw
    unknown = sorted(set(obj) - _KEYS)
    if unknown:
        raise CommandRejected(f"unknown key(s): {', '.join(unknown)}", rid)
    check_fresh(obj, rid, now_wall, require_ts)
    obj.pop("ts", None)

    if "clear" in obj:
        if obj["clear"] is not True:
            raise CommandRejected("clear must be true", rid)
        extra = sorted(set(obj) - {"id", "clear", "ts"})
        if extra:
            raise CommandRejected(f"clear takes no other keys (got {', '.join(extra)})", rid)
        return CapRequest(request_id=rid, clear=True)

    has_a, has_kw = "limit_a" in obj, "limit_kw" in obj
    if has_a == has_kw:
        raise CommandRejected("give exactly one of limit_a or limit_kw", rid)
    limit_a: float | None = None
    limit_kw: float | None = None
    if has_a:
        limit_a = _number(obj, "limit_a", rid)
        if limit_a < 0:
            raise CommandRejected("limit_a must be >= 0", rid)
        amps = limit_a
    else:
        limit_kw = _number(obj, "limit_kw", rid)
        if limit_kw < 0:
            raise CommandRejected("limit_kw must be >= 0", rid)
        amps = kw_to_a(limit_kw, service)
    if amps > service.limit_a + 1e-9:
        raise CommandRejected(
            f"cap of {amps:.1f} A per phase exceeds the service limit of {service.limit_a:g} A: "
            "a remote cap can only lower the limit",
            rid,
        )

    has_d, has_u = "duration_s" in obj, "until" in obj
    if has_d == has_u:
        raise CommandRejected("give exactly one of duration_s or until", rid)
    if has_d:
        duration = _number(obj, "duration_s", rid)
    else:
        until = obj["until"]
        if not isinstance(until, str):
            raise CommandRejected("until must be an ISO 8601 date-time string", rid)
        try:
            dt = datetime.fromisoformat(until.replace("Z", "+00:00"))
        except ValueError:
            raise CommandRejected(f"until is not an ISO 8601 date-time: {until!r}", rid) from None
        if dt.tzinfo is None:
            raise CommandRejected("until needs a UTC offset (e.g. 'Z' or '+00:00')", rid)
        duration = dt.timestamp() - now_wall
    if duration <= 0:
        raise CommandRejected("the cap would already have expired (duration must be > 0)", rid)
    if duration < MIN_DURATION_S:
        raise CommandRejected(f"a cap lasts at least {MIN_DURATION_S:g} s (got {duration:g} s)", rid)
    if duration > MAX_DURATION_S:
        raise CommandRejected(f"a cap lasts at most {MAX_DURATION_S:g} s; re-send it to extend", rid)
    return CapRequest(request_id=rid, limit_a=limit_a, limit_kw=limit_kw, duration_s=duration)


def parse_time(v: object, key: str, rid: str | None) -> float:
    """An ISO 8601 date-time with a UTC offset in a command, as a Unix time (CommandRejected otherwise)."""
    if not isinstance(v, str) or len(v) > 40:
        raise CommandRejected(f"{key} must be an ISO 8601 date-time string", rid)
    try:
        dt = datetime.fromisoformat(v.replace("Z", "+00:00"))
    except ValueError:
        raise CommandRejected(f"{key} is not an ISO 8601 date-time: {v!r}", rid) from None
    if dt.tzinfo is None:
        raise CommandRejected(f"{key} needs a UTC offset (e.g. 'Z' or '+00:00')", rid)
    return dt.timestamp()


def check_fresh(obj: dict[str, Any], rid: str | None, now_wall: float, required: bool) -> None:
    if "ts" not in obj:
        if required:
            raise CommandRejected("ts is required (MQTT 3.1.1 cannot tell a retained command from a fresh one)", rid)
        return
    age = now_wall - parse_time(obj["ts"], "ts", rid)
    if abs(age) > MAX_COMMAND_AGE_S:
        raise CommandRejected(
            f"stale command: ts is {age:+.0f} s from now (at most {MAX_COMMAND_AGE_S:g} s either way)", rid
        )


def reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not valid JSON")


def cap_amps(req_a: float | None, req_kw: float | None, service: ServiceConfig) -> float:
    """The requested cap in A per phase, clamped to the service limit."""
    amps = req_a if req_a is not None else kw_to_a(req_kw or 0.0, service)
    return min(amps, service.limit_a)


def cap_to_json(cap: RemoteCap) -> str:
    return json.dumps(
        {
            "id": cap.request_id,
            "limit_a": cap.requested_a,
            "limit_kw": cap.requested_kw,
            "expires_wall": cap.expires_wall,
            "set_wall": cap.set_wall,
        }
    )


def cap_from_json(text: str, *, service: ServiceConfig, now: float, now_wall: float) -> RemoteCap | None:
    """A persisted cap, re-anchored on the monotonic clock; None if it expired or is unreadable."""
    try:
        d = json.loads(text)
        expires_wall = float(d["expires_wall"])
        req_a = None if d.get("limit_a") is None else float(d["limit_a"])
        req_kw = None if d.get("limit_kw") is None else float(d["limit_kw"])
        set_wall = float(d.get("set_wall", now_wall))
        rid = d.get("id")
    except (ValueError, KeyError, TypeError):
        return None
    if (req_a is None) == (req_kw is None):
        return None
    remaining = expires_wall - now_wall
    if not math.isfinite(remaining) or remaining <= 0 or remaining > MAX_DURATION_S:
        return None
    return RemoteCap(
        limit_a=cap_amps(req_a, req_kw, service),
        request_id=rid if isinstance(rid, str) else None,
        requested_a=req_a,
        requested_kw=req_kw,
        expires_at=now + remaining,
        expires_wall=expires_wall,
        set_wall=set_wall,
    )


def remote_cap_of(req: CapRequest, service: ServiceConfig, now: float, now_wall: float) -> RemoteCap:
    """The cap a validated (non-clear) request sets, from now."""
    return RemoteCap(
        limit_a=cap_amps(req.limit_a, req.limit_kw, service),
        request_id=req.request_id,
        requested_a=req.limit_a,
        requested_kw=req.limit_kw,
        expires_at=now + req.duration_s,
        expires_wall=now_wall + req.duration_s,
        set_wall=now_wall,
    )


def cap_name(cap: RemoteCap) -> str:
    return f"remote:{cap.request_id}" if cap.request_id else "remote"


def budget_cap(cap: RemoteCap, service: ServiceConfig) -> BudgetCap:
    """The active cap as a budget source: the same current on every line of the service."""
    return BudgetCap(cap_name(cap), (min(cap.limit_a, service.limit_a),) * service.phases)
