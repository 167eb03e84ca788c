"""Command line: ``ems-gateway``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterable, Sequence
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from gateway import __version__
from gateway.errors import ConfigError
from gateway.supervise import FatalError

EXIT_FAILURE = 1
EXIT_CONFIG = 2

# Each command module offers add_parser(subparsers); the parser's ``func`` returns an exit code.
COMMAND_MODULES: tuple[str, ...] = (
    "gateway.cli_check",
    "gateway.cli_run",
    "gateway.meters.cli",
    "gateway.web.cli",
    "gateway.commission.cli",
    "gateway.budget.openadr_app",
)
# Commands other distributions provide: entry points in this group, named after the command, whose value is a
# module with the same add_parser(subparsers) (ems-gateway-sim's ``demo = "sitesim.demo"``). The gateway imports
# nothing of theirs by name.
PLUGIN_GROUP = "ems_gateway.commands"
# what to install for a plugin command that is not there
PLUGIN_HINTS: dict[str, tuple[str, str]] = {  # command -> (distribution, how to get it)
    "demo": ("ems-gateway-sim", "the simulated demo site is in the ems-gateway-sim distribution (sim/ in the source "
             "repository): run `./dev demo` from the repository, or `pip install ./sim` beside the gateway (its RTU "
             "meter needs socat); the Debian package ems-gateway includes it"),
}


def _add_plugins(sub: Any, plugins: Iterable[EntryPoint]) -> None:
    """The plugin commands (never one named like a built-in); a hinted one not installed, or one that fails to
    load, gets a stand-in that says so when it is run (a broken plugin never stops ``ems-gateway run``)."""
    builtin = set(sub.choices)
    found = {ep.name: ep for ep in plugins if ep.name not in builtin}
    for name in sorted(found.keys() | PLUGIN_HINTS.keys()):
        ep = found.get(name)
        if ep is None:
            dist, how = PLUGIN_HINTS[name]
            _add_missing(sub, name, f"(not installed: needs {dist})", f"not installed: {how}")
            continue
        try:
            ep.load().add_parser(sub)
        except Exception as exc:  # any error of another distribution's code: the gateway's commands go on
            dist = f" ({ep.dist.name})" if ep.dist is not None else ""
            _add_missing(sub, name, "(its plugin failed to load)",
                         f"its plugin {ep.value}{dist} failed to load: {type(exc).__name__}: {exc}")


def _add_missing(sub: Any, name: str, short: str, why: str) -> None:
    p = sub.add_parser(name, help=short, description=f"ems-gateway {name}: {why}")
    p.set_defaults(func=None, unavailable=f"ems-gateway {name}: {why}")


def build_parser(plugins: Iterable[EntryPoint] | None = None) -> argparse.ArgumentParser:
    """The command line; the plugin commands are the installed PLUGIN_GROUP entry points unless ``plugins``."""
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
    _add_plugins(sub, entry_points(group=PLUGIN_GROUP) if plugins is None else plugins)
    return parser


def _silence_stdout() -> None:
    """After a broken pipe: point stdout at /dev/null so the interpreter's final flush does not fail again."""
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def main(argv: Sequence[str] | None = None, *, plugins: Iterable[EntryPoint] | None = None) -> int:
    parser = build_parser(plugins)
    args, extra = parser.parse_known_args(argv)
    unavailable: str | None = getattr(args, "unavailable", None)
    if unavailable is not None:  # before the arguments: they are the missing command's
        print(unavailable, file=sys.stderr)
        return EXIT_CONFIG
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
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
