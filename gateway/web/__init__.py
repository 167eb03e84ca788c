"""The local web page and JSON API: a read-only view of the control loop's frozen values, plus a few
technician actions routed to the mechanisms that own them (the remote site cap).

Nothing here decides anything: every figure is read from the ControlLoop's latest snapshot and
allocation (frozen values), built on request or in the live-update task, never on the tick.
``gateway.web.config`` is light (no aiohttp): the site configuration imports it.
"""
