"""Command line: ``ems-gateway``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from gateway import __version__
from gateway.errors import ConfigError
from gateway.supervise import FatalError

EXIT_FAILURE = 1
EXIT_CONFIG = 2

# Each command module offers add_parser(subparsers); the parser's ``func`` returns an exit code.
COMMAND_MODULES: tuple[str, ...] = (
    "gateway.cli_check",
    "gateway.cli_run",
    "sitesim.demo",
    "gateway.meters.cli",
    "gateway.web.cli",
    "gateway.commission.cli",
    "gateway.budget.openadr_app",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ems-gateway",
        description="Site energy management gateway for EV charging: keeps every circuit within its "
        "limit, acts as the site's local OCPP controller and publishes telemetry over MQTT.",
    )
    parser.add_argument("--version", action="version", version=f"ems-gateway {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    import importlib

    for name in COMMAND_MODULES:
        importlib.import_module(name).add_parser(sub)
    return parser


def _silence_stdout() -> None:
    """After a broken pipe: point stdout at /dev/null so the interpreter's final flush does not fail again."""
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] | None = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 0
    try:
        return func(args)
    except BrokenPipeError:  # `ems-gateway check-config FILE | head`: the reader has gone, nothing to report
        _silence_stdout()
        return 0
    except ConfigError as exc:
        print(f"ems-gateway: invalid configuration: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except FatalError as exc:  # the daemon failed: it has applied the fail-safe; systemd restarts it
        print(f"ems-gateway: stopped after a failure: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
