"""Run the OCPP controller alone: ``python -m gateway.ocpp_proxy SITE.toml``.

Prints ``ocpp_proxy_listening port=N [tls_port=M]`` on stdout once serving (tests, benchmarks).
"""

from __future__ import annotations

import asyncio
import sys

from gateway.config import load_site
from gateway.ocpp_proxy.controller import OcppController


async def _main(path: str) -> None:
    site = load_site(path)
    ctrl = OcppController(site)
    task = asyncio.create_task(ctrl.run())
    await ctrl.wait_started()
    extra = f" tls_port={ctrl.tls_port}" if ctrl.tls_port is not None else ""
    print(f"ocpp_proxy_listening port={ctrl.port}{extra}", flush=True)
    await task


def main() -> int:
    if len(sys.argv) != 2:
        print("usage: python -m gateway.ocpp_proxy SITE.toml", file=sys.stderr)
        return 2
    try:
        asyncio.run(_main(sys.argv[1]))
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
