"""The daemon's OpenADR task and the commissioning check (``ems-gateway openadr-status``).

* `run_openadr(store)`: the supervised task (gateway.app): the 2.0b VEN or the 3.0 client for the config in
  force, restarted with a new one after a reload; idle while no [budget.openadr] is configured. It runs off
  the control loop: the loop only reads the store's caps each tick.
* `openadr_status(store, now_wall, service)`: a plain dict (registration, the VTN's last contact, the last
  event, the events held with their cap in A): for the commissioning inventory and the control socket.
* `status_from_state_dir(site, now_wall)`: the same from what the daemon persisted, for a separate process.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.budget.openadr import OpenADRStore

if TYPE_CHECKING:
    from gateway.budget.openadr_config import OpenADRConfig
    from gateway.config import ServiceConfig, Site

CONFIG_CHECK_S = 1.0


def client_for(cfg: OpenADRConfig, store: OpenADRStore) -> Any:
    if cfg.protocol == "3.0":
        from gateway.budget.openadr3 import Oadr3Client

        return Oadr3Client(cfg, store)
    from gateway.budget.openadr_ven import Ven2b

    return Ven2b(cfg, store)


async def run_openadr(store: OpenADRStore) -> None:
    """Run the protocol client for ``store.cfg``; a changed config (a reload) restarts it. A client that fails
    raises here, so the supervisor restarts it with its backoff."""
    while True:
        cfg = store.cfg
        if cfg is None:
            await asyncio.sleep(CONFIG_CHECK_S)
            continue
        task = asyncio.create_task(client_for(cfg, store).run(), name="openadr-client")
        try:
            while store.cfg == cfg and not task.done():
                await asyncio.wait({task}, timeout=CONFIG_CHECK_S)
            if task.done():
                task.result()  # raises the client's failure
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task


def openadr_status(store: OpenADRStore, now_wall: float, service: ServiceConfig | None = None) -> dict[str, object]:
    return store.status(now_wall, service)


class _ReadOnly:
    def __init__(self, directory: Path) -> None:
        self.dir = directory

    def put(self, name: str, text: str | None) -> None:
        pass

    def read(self, name: str) -> str | None:
        try:
            return (self.dir / name).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            return None


def status_from_state_dir(site: Site, now_wall: float) -> dict[str, object]:
    """The status as the daemon last persisted it (``registered`` as it was then: see ``last_contact_age_s``)."""
    reader = _ReadOnly(Path(site.state_dir) / "budget")
    store = OpenADRStore(reader, site.budget.openadr)
    out = store.status(now_wall, site.service)
    text = reader.read("openadr.json")
    with contextlib.suppress(ValueError, TypeError, AttributeError):
        out["registered"] = bool(json.loads(text or "{}").get("ven", {}).get("registered"))
    out["source"] = "state_dir"
    return out


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "openadr-status",
        help="show the OpenADR VEN's registration and the last demand-response event",
        description="Read the site config and what the daemon persisted under its state_dir: the VEN's "
        "registration with its VTN, the VTN's last contact, the last event received and the events held "
        "(with their cap in A at the service). Exit 0 when registered, 1 when not, 2 on a config error.",
    )
    p.add_argument("file", help="the site configuration (TOML)")
    p.set_defaults(func=_cli)


def _cli(args: argparse.Namespace) -> int:
    import sys

    from gateway.config import load_site
    from gateway.logs import configure

    configure("warning", stream=sys.stderr)  # stdout carries the JSON only
    site = load_site(args.file)
    st = status_from_state_dir(site, time.time())
    print(json.dumps(st, indent=2))
    return 0 if st["registered"] else 1


__all__ = ["add_parser", "client_for", "openadr_status", "run_openadr", "status_from_state_dir"]
