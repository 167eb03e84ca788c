"""The OpenAPI 3.1 description of the JSON API, served at /api/openapi.json."""

from __future__ import annotations

from typing import Any

_NUM = {"type": ["number", "null"]}
_PHASES = {"type": ["array", "null"], "items": _NUM, "description": "per service phase (L1, L2, L3), A"}


def _obj(props: dict[str, Any], desc: str = "") -> dict[str, Any]:
    d: dict[str, Any] = {"type": "object", "properties": props}
    if desc:
        d["description"] = desc
    return d


_SCHEMAS: dict[str, Any] = {
    "Budget": _obj({
        "source": {"type": "string", "description": "what binds the service: 'service' or a cap's name "
                   "(e.g. 'remote:<id>', 'demand-window', 'tariff:<period>')"},
        "per_phase": {"type": "array", "items": _obj({"phase": {"type": "string"}, "source": {"type": "string"},
                                                      "limit_a": _NUM})},
        "caps": {"type": "array", "items": _obj({"name": {"type": "string"}, "limit_a": _PHASES})},
    }),
    "Site": _obj({
        "id": {"type": "string"}, "name": {"type": "string"}, "wiring": {"type": "string"},
        "phases": {"type": "array", "items": {"type": "string"}},
        "mode": {"type": "string", "enum": ["starting", "normal", "partial-failsafe", "failsafe"]},
        "failsafe_meters": {"type": "array", "items": {"type": "string"}},
        "tick_age_s": _NUM,
        "service": _obj({"limit_a": _NUM, "margin_a": _NUM, "effective_limit_a": _NUM, "measured_a": _PHASES,
                         "allocated_a": _PHASES, "headroom_a": _PHASES, "non_ev_a": _PHASES,
                         "state": {"type": "string"}}),
        "budget": {"$ref": "#/components/schemas/Budget"},
        "binding": {"type": "object", "additionalProperties": {"type": "integer"},
                    "description": "constraint name -> chargers it caps"},
        "chargers": _obj({"configured": {"type": "integer"}, "online": {"type": "integer"},
                          "charging": {"type": "integer"}}),
    }),
    "Circuit": _obj({
        "id": {"type": "string"}, "kind": {"type": "string"}, "parent": {"type": ["string", "null"]},
        "meter": {"type": ["string", "null"]}, "limit_a": _NUM, "margin_a": _NUM, "measured_a": _PHASES,
        "allocated_a": _PHASES, "headroom_a": _PHASES, "non_ev_a": _PHASES,
        "state": {"type": "string", "description": "ok | unmetered | stale:<meter> | failsafe:<meter>"},
    }),
    "Charger": _obj({
        "id": {"type": "string"}, "circuit": {"type": "string"}, "kind": {"type": "string", "enum": ["ac", "dc"]},
        "unit": {"type": "string", "enum": ["A", "W"]}, "online": {"type": "boolean"},
        "state": {"type": "string"}, "controlled": {"type": ["boolean", "null"]},
        "limit": {**_NUM, "description": "in the charger's unit"}, "line_a": _NUM, "may_draw_a": _NUM,
        "reason": {"type": ["string", "null"]}, "draw_a": _PHASES, "draw_w": _NUM,
        "session_energy_wh": _NUM, "noncompliant": {"type": "boolean"},
    }),
    "Meter": _obj({
        "id": {"type": "string"}, "circuit": {"type": "string"},
        "health": {"type": "string", "enum": ["ok", "invalid", "stale", "missing"]},
        "reason": {"type": "string"}, "age_s": _NUM, "current_a": _PHASES, "stale_after_s": _NUM,
    }),
    "Tick": _obj({
        "age_s": _NUM, "trigger": {"type": "string"}, "snapshot_age_s": _NUM, "allocation_ms": _NUM,
        "actuation_ms": _NUM, "publish_ms": _NUM, "reading_to_actuated_ms": _NUM,
    }),
    "Event": _obj({
        "id": {"type": "integer"}, "ts": {"type": "number", "description": "Unix time (s)"},
        "kind": {"type": "string", "enum": ["failsafe", "meter", "compliance", "cms", "charger", "reload", "cap",
                                            "web", "commissioning", "other"]},
        "name": {"type": "string"}, "fields": {"type": "object"},
    }),
    "Error": _obj({"error": {"type": "string"}}),
    "Commissioning": _obj({
        "state": {"type": "string", "enum": ["unavailable", "idle", "running", "done", "failed", "cancelled"]},
        "steps": {"type": "array", "items": {"type": "string"}}, "user": {"type": "string"},
        "started_at": _NUM, "ended_at": _NUM, "current": {"type": ["string", "null"], "description": "step running"},
        "steps_done": {"type": "array", "items": _obj({"step": {"type": "string"}, "ok": {"type": "boolean"},
                                                      "s": {"type": "number"}, "error": {"type": "string"}})},
        "verdict": {"type": ["string", "null"], "enum": ["pass", "action needed", None]},
        "todo": {"type": "array", "items": {"type": "string"}, "description": "the actions needed"},
        "report": {"type": ["string", "null"], "description": "the report's id (see /api/commissioning/reports)"},
        "error": {"type": ["string", "null"]},
    }, "the web's commissioning run (the steps of `ems-gateway commission`, in the daemon); times are Unix s"),
    "Report": _obj({
        "id": {"type": "string", "description": "report-<UTC stamp> (commissioning) or verify-<UTC stamp>"},
        "kind": {"type": "string", "enum": ["report", "verify"]}, "date": {"type": ["string", "null"]},
        "verdict": {"type": ["string", "null"]}, "actions": {"type": ["integer", "null"]},
        "files": {"type": "array", "items": {"type": "string", "enum": ["report.html", "report.pdf", "report.json"]}},
    }),
    "Push": _obj({
        "type": {"type": "string", "enum": ["figures", "events"]}, "site": {"type": "string"},
        "ts": {"type": "string", "format": "date-time"},
        "figures": {"description": "with type figures: the Site document, service.power_kw (the service meter's "
                    "total active power) and charger_figures (id, state, online, limit, unit, line_a, draw_a, "
                    "draw_w, reason)", "allOf": [{"$ref": "#/components/schemas/Site"}]},
        "events": {"type": "array", "description": "with type events: at least once, in order; de-duplicate "
                   "by id", "items": _obj({"id": {"type": "string"}, "ts": {"type": "string"},
                                           "name": {"type": "string"}, "kind": {"type": "string"},
                                           "fields": {"type": "object"}})},
    }, "what [web.push] POSTs to its url (application/json; Authorization: Bearer <token> when set)"),
}


def _get(summary: str, schema: dict[str, Any], params: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "responses": {
        "200": {"description": "OK", "content": {"application/json": {"schema": schema}}},
        "401": {"description": "login required", "content": {"application/json": {"schema": _ref("Error")}}},
    }}
    if params:
        op["parameters"] = params
    return {"get": op}


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _arr(name: str) -> dict[str, Any]:
    return {"type": "array", "items": _ref(name)}


def _q(name: str, typ: str, desc: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": {"type": typ}, "description": desc}


def _post(summary: str, body: dict[str, Any], codes: dict[str, str]) -> dict[str, Any]:
    return {"post": {
        "summary": summary,
        "parameters": [{"name": "X-CSRF-Token", "in": "header", "required": True, "schema": {"type": "string"},
                        "description": "the session's token (from /api/session or the login's answer)"}],
        "requestBody": {"content": {"application/json": {"schema": body}}},
        "responses": {c: {"description": d} for c, d in codes.items()},
    }}


def openapi_document() -> dict[str, Any]:
    hours = _q("hours", "number", "how far back (h), at most the configured history_hours")
    paths: dict[str, Any] = {
        "/api/session": _get("the caller's session (user, role, CSRF token)", _obj({
            "authenticated": {"type": "boolean"}, "user": {"type": "string"}, "role": {"type": "string"},
            "csrf": {"type": "string"}})),
        "/api/login": {"post": {
            "summary": "log in: sets the session cookie (HttpOnly, Secure, SameSite=Strict)",
            "requestBody": {"content": {"application/json": {"schema": _obj({
                "user": {"type": "string"}, "password": {"type": "string"}})}}},
            "responses": {"200": {"description": "logged in; the answer carries the CSRF token"},
                          "401": {"description": "wrong user or password"},
                          "429": {"description": "too many failed logins (Retry-After)"}}}},
        "/api/logout": _post("log out", _obj({}), {"200": "logged out"}),
        "/api/live": _get("site, circuits, chargers, meters and recent events in one document", _obj({
            "site": _ref("Site"), "circuits": _arr("Circuit"), "chargers": _arr("Charger"),
            "meters": _arr("Meter"), "events": _arr("Event")})),
        "/api/stream": {"get": {"summary": "server-sent events: the /api/live document once a second",
                                "responses": {"200": {"description": "text/event-stream"}}}},
        "/api/site": _get("the service per phase against its limit, the effective budget source", _ref("Site")),
        "/api/circuits": _get("every circuit: current, allocated, headroom per phase, state", _arr("Circuit")),
        "/api/chargers": _get("every charger: state, limit, draw, reason, session energy, controlled",
                              _arr("Charger")),
        "/api/meters": _get("the meters' health", _arr("Meter")),
        "/api/failsafe": _get("the fail-safe mode and the fail-safe budget per circuit", _obj({
            "mode": {"type": "string"}, "meters": {"type": "array", "items": {"type": "string"}},
            "budget_a": {"type": "object", "additionalProperties": _PHASES}})),
        "/api/ticks": _get("the control loop's recent ticks", _arr("Tick"), [_q("n", "integer", "how many")]),
        "/api/history/site": _get("per-phase service current, allocated current and limit", _obj({
            "phases": {"type": "array", "items": {"type": "string"}}, "interval_s": {"type": "number"},
            "samples": {"type": "array", "items": _obj({"ts": {"type": "number"}, "measured_a": _PHASES,
                                                         "allocated_a": _PHASES, "limit_a": _PHASES})}}), [hours]),
        "/api/history/charger/{id}": _get("one charger's limit and draw", _obj({
            "charger": {"type": "string"}, "unit": {"type": "string"}, "interval_s": {"type": "number"},
            "samples": {"type": "array", "items": _obj({"ts": {"type": "number"}, "limit": _NUM, "draw": _NUM})}}),
            [{"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}, hours]),
        "/api/events": _get("the event log, newest first", _obj({"kinds": {"type": "array"}, "events": _arr("Event")}),
                            [_q("kind", "string", "comma-separated kinds"), _q("q", "string", "text in name or fields"),
                             _q("since", "number", "Unix time"), _q("limit", "integer", "at most 2000")]),
        "/api/config": _get("the active configuration, read-only, secrets masked", {"type": "object"}),
        "/api/site-cap": _post("technician: a temporary site cap (through the remote cap mechanism)", _obj({
            "limit_a": {"type": "number"}, "limit_kw": {"type": "number"}, "duration_s": {"type": "number"},
            "clear": {"type": "boolean"}}), {"200": "taken", "400": "refused (reason)", "403": "not a technician"}),
        "/api/commissioning": _get("the commissioning run's progress and result", _ref("Commissioning")),
        "/api/commissioning/start": _post(
            "technician: start a commissioning run in the daemon (the steps of `ems-gateway commission`)", _obj({
                "steps": {"type": "array", "items": {"type": "string", "enum": [
                    "inventory", "wiring", "load-test", "failsafe-test", "verify"]},
                    "description": "default [\"verify\"] (non-disruptive; runs alone); wiring, load-test and "
                    "failsafe-test act on the chargers and are refused unless the site is in normal operation"},
                "pdf": {"type": "boolean", "description": "also render the PDF (default true)"}}), {
                "202": "started: follow GET /api/commissioning", "400": "bad steps", "403": "not a technician",
                "409": "a run is in progress, or the site is not in normal operation for a disruptive step",
                "503": "no commissioning on this server"}),
        "/api/commissioning/cancel": _post("technician: cancel the run (its test inputs are cleared)", _obj({}), {
            "200": "cancelled", "403": "not a technician", "409": "no run in progress"}),
        "/api/commissioning/reports": _get("the commissioning reports under state_dir/commission, newest first",
                                           _obj({"reports": _arr("Report")})),
        "/api/commissioning/reports/{id}/{name}": {"get": {
            "summary": "one report's file (report.html, report.pdf or report.json), read-only",
            "parameters": [{"name": "id", "in": "path", "required": True, "schema": {"type": "string"}},
                           {"name": "name", "in": "path", "required": True, "schema": {
                               "type": "string", "enum": ["report.html", "report.pdf", "report.json"]}}],
            "responses": {"200": {"description": "text/html, application/pdf or application/json"},
                          "404": {"description": "no such report or file"}}}},
        "/api/openapi.json": _get("this description", {"type": "object"}),
        "/metrics": {"get": {"summary": "Prometheus exposition format", "responses": {"200": {"description": "text"}}}},
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "ems-gateway local API", "version": "1",
                 "description": "Read-only figures from the control loop's latest snapshot and allocation; "
                                "login with a session cookie (POSTs need X-CSRF-Token) or HTTP Basic for GETs."},
        "paths": paths,
        "components": {"schemas": _SCHEMAS},
    }
