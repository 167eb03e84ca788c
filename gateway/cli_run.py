"""``ems-gateway run --config FILE``: the daemon."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from gateway import logs
from gateway.config import Site, load_site

DEFAULT_CONFIG = "/etc/ems-gateway/gateway.toml"


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "run",
        help="run the gateway daemon (systemd Type=notify)",
        description="Run the gateway: read the meters, run the headroom loop, serve the chargers over OCPP "
        "and relay them to the CMS, publish telemetry. The configuration is validated first; an invalid one "
        "exits with status 2 before anything touches a charger.",
    )
    p.add_argument("--config", "-c", default=DEFAULT_CONFIG, help=f"site configuration (default {DEFAULT_CONFIG})")
    p.add_argument("--log-level", choices=("debug", "info", "warning", "error"), help="override [logging] level")
    p.add_argument("--log-format", choices=("auto", "json", "console"), help="override [logging] format")
    p.add_argument("--state-dir", help="override [site] state_dir")
    p.set_defaults(func=run)


def configure_logging(site: Site, *, level: str | None, fmt: str | None) -> None:
    """The daemon's logging: [logging], ``level`` and ``fmt`` from the command line over it (a level given
    there stays through reloads; [logging.loggers] follows the file)."""
    lc = site.logging
    logs.configure(level or lc.level, fmt or lc.format, journal=lc.journal, loggers=lc.loggers,
                   pin_level=level is not None)


def run(args: argparse.Namespace) -> int:
    site = load_site(args.config)  # ConfigError -> exit 2 in __main__, before any IO to chargers
    if args.state_dir:
        from dataclasses import replace

        from gateway.config import check_state_dir

        site = replace(site, state_dir=check_state_dir(args.state_dir, "--state-dir"))
    configure_logging(site, level=args.log_level, fmt=args.log_format)
    from gateway.app import App

    asyncio.run(App(site, config_path=args.config, tune_gc=True).run())
    return 0
